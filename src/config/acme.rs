//! `tls.acme` of a listener: certificates ordered from an ACME CA (RFC 8555). Checked here
//! without any network access; the order itself runs in the tls layer.

use super::file::AcmeFile;
use super::tls::resolve;
use super::{valid_hostname, ConfigError, Errs};
use std::time::Duration;

pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const DEFAULT_STORAGE: &str = "/var/lib/stepstone/acme";
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token over plain HTTP on port 80 (RFC 8555 §8.3).
    Http01,
    /// A certificate offered for ALPN `acme-tls/1` on port 443 (RFC 8737).
    TlsAlpn01,
}

/// A validated `acme` block.
#[derive(Debug, Clone)]
pub struct AcmeSpec {
    pub directory: String,
    /// Absolute path of the PEM CAs trusted for the directory's TLS certificate.
    pub directory_ca_file: Option<String>,
    pub contact: Option<String>,
    /// Lowercase, in config order; the first names the stored files.
    pub names: Vec<String>,
    /// Absolute (or config-relative resolved) directory.
    pub storage: String,
    pub renew_before: Duration,
    pub challenge: Challenge,
}

/// `30d`, or any duration of the other keys (`12h`, `90m`); no upper bound of a year, since
/// a test CA's certificates may live for years.
pub fn parse_renew_before(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d') {
        let n: u64 = days
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected a whole number of days"))?;
        if n > 36_500 {
            return Err(format!("invalid duration {s:?}: at most 36500d"));
        }
        return Ok(Duration::from_secs(n * 86400));
    }
    super::units::parse_duration(t)
}

pub(crate) fn validate(e: &Errs, p: &str, a: &AcmeFile) -> Result<AcmeSpec, ConfigError> {
    let directory = a
        .directory
        .clone()
        .unwrap_or_else(|| DEFAULT_DIRECTORY.to_string());
    let uri: http::Uri = directory.parse().map_err(|err| {
        e.err(
            format!("{p}.directory"),
            &directory,
            format!("not a URL: {err}"),
        )
    })?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(e.err(
            format!("{p}.directory"),
            &directory,
            "expected an https:// URL (RFC 8555 requires TLS)",
        ));
    }
    let directory_ca_file = match &a.directory_ca_file {
        None => None,
        Some(f) => {
            let path = resolve(e.file, f);
            super::certs::load_ca(&path)
                .map_err(|m| e.err(format!("{p}.directory_ca_file"), f, m))?;
            Some(path)
        }
    };
    if let Some(c) = &a.contact {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            return Err(e.err(
                format!("{p}.contact"),
                c,
                "expected a mailto: URL, e.g. mailto:ops@example.com",
            ));
        }
    }
    if a.names.is_empty() {
        return Err(e.err(
            format!("{p}.names"),
            "[]",
            "at least one host name is required",
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(a.names.len());
    for (i, n) in a.names.iter().enumerate() {
        let lower = n.to_ascii_lowercase();
        if !valid_hostname(&lower) || lower.parse::<std::net::IpAddr>().is_ok() {
            return Err(e.err(
                format!("{p}.names[{i}]"),
                n,
                "expected a host name (no wildcard, no IP address)",
            ));
        }
        if names.contains(&lower) {
            return Err(e.err(format!("{p}.names[{i}]"), n, "name listed twice"));
        }
        names.push(lower);
    }
    let storage = resolve(e.file, a.storage.as_deref().unwrap_or(DEFAULT_STORAGE));
    if std::path::Path::new(&storage).exists() && !std::path::Path::new(&storage).is_dir() {
        return Err(e.err(
            format!("{p}.storage"),
            &storage,
            "exists and is not a directory",
        ));
    }
    let challenge = match a.challenge.as_deref() {
        None | Some("http-01") => Challenge::Http01,
        Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some(other) => {
            return Err(e.err(
                format!("{p}.challenge"),
                other,
                "expected http-01 or tls-alpn-01",
            ))
        }
    };
    let renew_before = match &a.renew_before {
        None => DEFAULT_RENEW_BEFORE,
        Some(r) => parse_renew_before(r).map_err(|m| e.err(format!("{p}.renew_before"), r, m))?,
    };
    Ok(AcmeSpec {
        directory,
        directory_ca_file,
        contact: a.contact.clone(),
        names,
        storage,
        renew_before,
        challenge,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(acme: &str) -> crate::config::ConfigError {
        let y = format!(
            "listeners: [{{name: s, address: 127.0.0.1:1, protocol: https, tls: {{acme: {acme}}}}}]\n"
        );
        Config::from_yaml("/etc/x.yaml", &y).unwrap_err()
    }

    #[test]
    fn acme_keys_are_checked() {
        assert_eq!(err("{names: []}").path, "listeners[0].tls.acme.names");
        assert_eq!(
            err("{names: ['*.a.test']}").path,
            "listeners[0].tls.acme.names[0]"
        );
        let e = err("{names: [a.test], directory: 'http://ca.test/dir'}");
        assert_eq!(e.path, "listeners[0].tls.acme.directory");
        let e = err("{names: [a.test], challenge: dns-01}");
        assert_eq!(e.path, "listeners[0].tls.acme.challenge");
        let e = err("{names: [a.test], renew_before: 3x}");
        assert_eq!(e.path, "listeners[0].tls.acme.renew_before");
        let e = err("{names: [a.test], contact: ops@example.com}");
        assert_eq!(e.path, "listeners[0].tls.acme.contact");
        let e = err("{names: [a.test], bogus: 1}");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn renew_before_takes_days() {
        assert_eq!(
            super::parse_renew_before("30d").unwrap(),
            std::time::Duration::from_secs(30 * 86400)
        );
        assert_eq!(
            super::parse_renew_before("2h").unwrap(),
            std::time::Duration::from_secs(7200)
        );
        assert!(super::parse_renew_before("36501d").is_err());
    }
}
