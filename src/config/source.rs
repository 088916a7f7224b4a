//! `config_source`: the fleet-wide part of the configuration (`upstreams` and `routes`) read
//! from etcd instead of the file, and merged into the file's local part (listeners, admin,
//! pingora, access log) to make one [`Config`], validated as a whole like any other.

use super::file::{ConfigSourceFile, FileConfig, RoutingFile};
use super::{validate, Config, ConfigError, Errs};

/// A validated `config_source.etcd` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// `(host, port)` of each member, tried in turn.
    pub endpoints: Vec<(String, u16)>,
    pub key: String,
    /// Resolved against the config file's directory.
    pub cache_file: Option<String>,
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
                "expected http://HOST:PORT (https is not supported)",
            )
        };
        let rest = ep.trim().strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        endpoints.push((host.to_string(), port));
    }
    if etcd.key.is_empty() {
        return Err(e.err("config_source.etcd.key", "", "must not be empty"));
    }
    let cache_file = etcd.cache_file.as_ref().map(|c| {
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
    });
    Ok(Some(EtcdSpec {
        endpoints,
        key: etcd.key.clone(),
        cache_file,
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
