//! Validation of `listeners[].forward_proxy` into [`ForwardSpec`]. The users file is read
//! here so that `stepstone -t` catches a missing file or a password that is not a bcrypt
//! hash. The `cache:` block is the routes' block, validated by the same
//! [`validate_cache`](super::cache::validate_cache) into the same shared store size.

use super::cache::{CacheSpec, StoreSize};
use super::cidr::Cidr;
use super::file::{AccessAction, AnonymityFile, ForwardProxyFile, ListenerProtocol};
use super::{dur, ConfigError, Errs, HostMatch};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_CONNECT_PORTS: [u16; 1] = [443];
pub const DEFAULT_FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_REALM: &str = "stepstone";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymity {
    Off,
    Standard,
    Strict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Name(HostMatch),
    Net(Cidr),
}

#[derive(Debug, Clone)]
pub struct AccessRule {
    pub label: String,
    pub allow: bool,
    /// Empty means any, for each of these lists.
    pub clients: Vec<Cidr>,
    pub destinations: Vec<Destination>,
    pub ports: Vec<u16>,
    /// Upper-case method names.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuthSpec {
    pub realm: String,
    /// (user, bcrypt hash)
    pub users: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// Lower-case `type/sub` or `type/*`.
    pub content_types: Vec<String>,
    pub body_patterns: Vec<Vec<u8>>,
    pub url_patterns: Vec<String>,
    /// Body bytes held back with the response head while they are scanned (0: none).
    pub hold_head_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ForwardSpec {
    pub connect_ports: Vec<u16>,
    pub allow_private_destinations: bool,
    pub access: Vec<AccessRule>,
    pub auth: Option<AuthSpec>,
    pub anonymity: Anonymity,
    pub filter: FilterSpec,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// The shared cache for absolute-form responses, if enabled.
    pub cache: Option<CacheSpec>,
}

/// Longest body pattern; the scan window is one byte shorter.
pub const MAX_BODY_PATTERN: usize = 1024;
/// Largest `filter.hold_head_bytes`: what one response may keep in memory while held.
pub const MAX_HOLD_HEAD_BYTES: u64 = 1024 * 1024;

pub(super) fn validate(
    e: &Errs,
    p: &str,
    protocol: ListenerProtocol,
    f: &ForwardProxyFile,
    store: &mut StoreSize,
) -> Result<ForwardSpec, ConfigError> {
    let p = format!("{p}.forward_proxy");
    if !matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Https) {
        return Err(e.err(
            p,
            format!("{protocol:?}").to_ascii_lowercase(),
            "forward_proxy needs protocol: http or https",
        ));
    }
    let connect_ports = f
        .connect_ports
        .clone()
        .unwrap_or_else(|| DEFAULT_CONNECT_PORTS.to_vec());
    if let Some(i) = connect_ports.iter().position(|&x| x == 0) {
        return Err(e.err(
            format!("{p}.connect_ports[{i}]"),
            0,
            "must be a port number",
        ));
    }

    let mut access = Vec::with_capacity(f.access.len());
    for (i, r) in f.access.iter().enumerate() {
        let rp = format!("{p}.access[{i}]");
        let mut clients = Vec::new();
        for (j, c) in r.clients.iter().flatten().enumerate() {
            clients.push(Cidr::parse(c).map_err(|m| e.err(format!("{rp}.clients[{j}]"), c, m))?);
        }
        let mut destinations = Vec::new();
        for (j, d) in r.destinations.iter().flatten().enumerate() {
            let dest = match Cidr::parse(d) {
                Ok(n) => Destination::Net(n),
                Err(_) if d.contains('/') || d.contains(':') => {
                    return Err(e.err(
                        format!("{rp}.destinations[{j}]"),
                        d,
                        "expected a host name, *.suffix or an IP network",
                    ))
                }
                Err(_) => Destination::Name(
                    HostMatch::parse(d)
                        .map_err(|m| e.err(format!("{rp}.destinations[{j}]"), d, m))?,
                ),
            };
            destinations.push(dest);
        }
        let ports = r.ports.clone().unwrap_or_default();
        if let Some(j) = ports.iter().position(|&x| x == 0) {
            return Err(e.err(format!("{rp}.ports[{j}]"), 0, "must be a port number"));
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().flatten().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                return Err(e.err(format!("{rp}.methods[{j}]"), m, "expected a method name"));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let label = match &r.name {
            Some(n) if n.trim().is_empty() => {
                return Err(e.err(format!("{rp}.name"), n, "must not be empty"))
            }
            Some(n) => n.clone(),
            None => format!("access[{i}]"),
        };
        access.push(AccessRule {
            label,
            allow: r.action == AccessAction::Allow,
            clients,
            destinations,
            ports,
            methods,
        });
    }

    let auth = match &f.auth {
        None => None,
        Some(a) => {
            let realm = a.realm.clone().unwrap_or_else(|| DEFAULT_REALM.into());
            if realm.is_empty() || realm.bytes().any(|b| b == b'"' || b == b'\\' || b < b' ') {
                return Err(e.err(
                    format!("{p}.auth.realm"),
                    &realm,
                    "must be non-empty printable text without quotes",
                ));
            }
            let path = resolve_path(e.file, &a.users_file);
            let up = format!("{p}.auth.users_file");
            let text = std::fs::read_to_string(&path)
                .map_err(|err| e.err(&up, &a.users_file, format!("cannot read the file: {err}")))?;
            let users = parse_users(&text)
                .map_err(|(line, m)| e.err(&up, &a.users_file, format!("line {line}: {m}")))?;
            Some(AuthSpec { realm, users })
        }
    };

    let filter = match &f.filter {
        None => FilterSpec::default(),
        Some(fl) => {
            let fp = format!("{p}.filter");
            let mut content_types = Vec::new();
            for (j, t) in fl.block_content_types.iter().enumerate() {
                let t = t.trim().to_ascii_lowercase();
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && !t.contains(';') && !t.contains(' ')
                });
                if !ok {
                    return Err(e.err(
                        format!("{fp}.block_content_types[{j}]"),
                        &fl.block_content_types[j],
                        "expected a media type such as application/x-msdownload or video/*",
                    ));
                }
                content_types.push(t);
            }
            let mut body_patterns = Vec::new();
            for (j, b) in fl.block_body_patterns.iter().enumerate() {
                if b.is_empty() || b.len() > MAX_BODY_PATTERN {
                    return Err(e.err(
                        format!("{fp}.block_body_patterns[{j}]"),
                        b,
                        format!("must be 1 to {MAX_BODY_PATTERN} bytes"),
                    ));
                }
                body_patterns.push(b.as_bytes().to_ascii_lowercase());
            }
            for (j, u) in fl.block_url_patterns.iter().enumerate() {
                if u.trim().is_empty() {
                    return Err(e.err(
                        format!("{fp}.block_url_patterns[{j}]"),
                        u,
                        "must not be empty",
                    ));
                }
            }
            let hold = fl.hold_head_bytes.map(|s| s.0).unwrap_or(0);
            if hold > MAX_HOLD_HEAD_BYTES {
                return Err(e.err(
                    format!("{fp}.hold_head_bytes"),
                    hold,
                    format!("must be at most {MAX_HOLD_HEAD_BYTES} bytes (1MiB)"),
                ));
            }
            FilterSpec {
                content_types,
                body_patterns,
                url_patterns: fl.block_url_patterns.clone(),
                hold_head_bytes: hold as usize,
            }
        }
    };

    let cache = match &f.cache {
        Some(c) => super::cache::validate_cache(e.file, &format!("{p}.cache"), c, store)?,
        None => None,
    };

    let connect_timeout = dur(f.connect_timeout, DEFAULT_FORWARD_CONNECT_TIMEOUT);
    let read_timeout = dur(f.read_timeout, DEFAULT_FORWARD_READ_TIMEOUT);
    let tunnel_idle_timeout = dur(f.tunnel_idle_timeout, DEFAULT_TUNNEL_IDLE_TIMEOUT);
    for (k, v) in [
        ("connect_timeout", connect_timeout),
        ("read_timeout", read_timeout),
        ("tunnel_idle_timeout", tunnel_idle_timeout),
    ] {
        if v.is_zero() {
            return Err(e.err(format!("{p}.{k}"), "0s", "must be greater than zero"));
        }
    }

    Ok(ForwardSpec {
        connect_ports,
        allow_private_destinations: f.allow_private_destinations.unwrap_or(false),
        access,
        auth,
        anonymity: match f.anonymity.unwrap_or_default() {
            AnonymityFile::Off => Anonymity::Off,
            AnonymityFile::Standard => Anonymity::Standard,
            AnonymityFile::Strict => Anonymity::Strict,
        },
        filter,
        connect_timeout,
        read_timeout,
        tunnel_idle_timeout,
        cache,
    })
}

fn resolve_path(config_file: &str, p: &str) -> std::path::PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match Path::new(config_file).parent() {
        Some(dir) => dir.join(path),
        None => path.to_path_buf(),
    }
}

/// `user:hash` lines; `#` comments and blank lines are skipped. Only bcrypt hashes are
/// accepted, so a plain-text password is an error rather than a working credential.
pub fn parse_users(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut users: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err((n + 1, "expected user:bcrypt-hash".into()));
        };
        if user.is_empty() {
            return Err((n + 1, "empty user name".into()));
        }
        let is_bcrypt = hash.len() == 60
            && ["$2a$", "$2b$", "$2x$", "$2y$"]
                .iter()
                .any(|p| hash.starts_with(p));
        if !is_bcrypt {
            return Err((
                n + 1,
                format!("the password of {user:?} is not a bcrypt hash (use htpasswd -B)"),
            ));
        }
        if users.iter().any(|(u, _)| u == user) {
            return Err((n + 1, format!("duplicate user {user:?}")));
        }
        users.push((user.to_string(), hash.to_string()));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_refuses_plain_text() {
        let ok = format!("# comment\n\nalice:{}\n", bcrypt::hash("pw", 4).unwrap());
        assert_eq!(parse_users(&ok).unwrap().len(), 1);
        let err = parse_users("bob:secret\n").unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("bcrypt"), "{}", err.1);
    }
}
