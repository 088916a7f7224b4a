//! `config_source`: the fleet-wide part of the configuration (`upstreams` and `routes`) read
//! from etcd instead of the file, and merged into the file's local part (listeners, admin,
//! pingora, access log) to make one [`Config`], validated as a whole like any other.

use super::file::{ConfigSourceFile, FileConfig, RoutingFile};
use super::{validate, Config, ConfigError, Errs};

/// A validated `config_source.etcd` block. Paths are resolved against the config file's
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// Each member, tried in turn.
    pub endpoints: Vec<EtcdEndpoint>,
    pub key: String,
    pub cache_file: Option<String>,
    pub ca_file: Option<String>,
    /// A client certificate and its key.
    pub client_cert: Option<(String, String)>,
    pub auth: Option<EtcdAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// A user and its password (read from `password_file` when the file is loaded).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdAuth({}, <password>)", self.username)
    }
}

/// A routing document and where it came from, for error messages.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Such as `etcd /stepstone/routing.yaml revision 7`.
    pub origin: String,
    pub text: String,
}

pub(super) fn etcd(
    e: &Errs,
    raw: &FileConfig,
    src: Option<&ConfigSourceFile>,
) -> Result<Option<EtcdSpec>, ConfigError> {
    let Some(src) = src else { return Ok(None) };
    let Some(etcd) = &src.etcd else {
        return Err(e.err(
            "config_source",
            "",
            "expected a store, for example etcd: {endpoints: [...], key: ...}",
        ));
    };
    if !raw.upstreams.is_empty() {
        return Err(e.err(
            "upstreams",
            "",
            "come from config_source.etcd; leave them out of the file",
        ));
    }
    if !raw.routes.is_empty() {
        return Err(e.err(
            "routes",
            "",
            "come from config_source.etcd; leave them out of the file",
        ));
    }
    if etcd.endpoints.is_empty() {
        return Err(e.err(
            "config_source.etcd.endpoints",
            "",
            "at least one endpoint is required",
        ));
    }
    let mut endpoints = Vec::new();
    for (i, ep) in etcd.endpoints.iter().enumerate() {
        let bad = || {
            e.err(
                format!("config_source.etcd.endpoints[{i}]"),
                ep,
                "expected http://HOST:PORT or https://HOST:PORT",
            )
        };
        let ep = ep.trim();
        let (tls, rest) = match (ep.strip_prefix("http://"), ep.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        endpoints.push(EtcdEndpoint {
            host: host.to_string(),
            port,
            tls,
        });
    }
    if etcd.key.is_empty() {
        return Err(e.err("config_source.etcd.key", "", "must not be empty"));
    }
    let resolve = |c: &String| {
        let p = std::path::Path::new(c);
        if p.is_absolute() {
            c.clone()
        } else {
            std::path::Path::new(e.file)
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(p)
                .display()
                .to_string()
        }
    };
    let readable = |key: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let path = resolve(v);
        std::fs::metadata(&path).map_err(|err| {
            e.err(
                format!("config_source.etcd.{key}"),
                v,
                format!("cannot read it: {err}"),
            )
        })?;
        Ok(Some(path))
    };
    let ca_file = readable("ca_file", &etcd.ca_file)?;
    let client_cert = match (
        readable("cert_file", &etcd.cert_file)?,
        readable("key_file", &etcd.key_file)?,
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(e.err(
                "config_source.etcd",
                "",
                "cert_file and key_file go together",
            ))
        }
    };
    let auth = match (&etcd.username, &etcd.password_file) {
        (Some(u), Some(f)) => {
            let text = std::fs::read_to_string(resolve(f)).map_err(|err| {
                e.err(
                    "config_source.etcd.password_file",
                    f,
                    format!("cannot read it: {err}"),
                )
            })?;
            Some(EtcdAuth {
                username: u.clone(),
                password: text.trim().to_string(),
            })
        }
        (None, None) => None,
        _ => {
            return Err(e.err(
                "config_source.etcd",
                "",
                "username and password_file go together",
            ))
        }
    };
    Ok(Some(EtcdSpec {
        endpoints,
        key: etcd.key.clone(),
        cache_file: etcd.cache_file.as_ref().map(resolve),
        ca_file,
        client_cert,
        auth,
    }))
}

impl Config {
    /// The file at `path` with `upstreams` and `routes` from `routing`, validated as one
    /// configuration. Errors in the routing document name its origin.
    pub fn load_with_routing(path: &str, routing: &Routing) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_string(),
            path: String::new(),
            value: String::new(),
            msg: format!("cannot read the file: {e}"),
        })?;
        let mut raw: FileConfig = super::parse(path, &text)?;
        // the file alone first: its own rules (no upstreams or routes of its own)
        validate(path, raw.clone())?;
        let doc: RoutingFile = super::parse(&routing.origin, &routing.text)?;
        raw.upstreams = doc.upstreams;
        raw.routes = doc.routes;
        // `config_source` forbids a file's own routes; these are the store's
        let src = raw.config_source.take();
        let mut cfg = validate(&routing.origin, raw)?;
        cfg.file = path.to_string();
        let e = Errs { file: path };
        cfg.config_source = etcd(&e, &FileConfig::default(), src.as_ref())?;
        Ok(cfg)
    }
}
