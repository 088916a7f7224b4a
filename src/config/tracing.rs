//! `tracing`: the file type, its validation and the runtime spec of span export (OTLP/HTTP).

use super::ConfigError;
use super::Errs;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The `service.name` resource attribute when none is given.
pub const DEFAULT_SERVICE_NAME: &str = "stepstone";
/// Share of new traces (those without a sampled parent) that are recorded: 1%, Envoy's
/// `random_sampling` default is 100%, but at the edge every request is a root and 1% keeps
/// the export cost small while still showing the traffic's shape.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// `http://HOST:PORT[/prefix]` of an OTLP/HTTP collector; spans go to `{it}/v1/traces`.
    pub otlp_endpoint: String,
    /// Default: stepstone
    pub service_name: Option<String>,
    /// 0.0-1.0. Default: 0.01
    pub sample_ratio: Option<f64>,
    /// Extra fields sent with each export (e.g. an API key). Default: none
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct TracingSpec {
    /// `host:port`, as sent in the Host field.
    pub authority: String,
    /// The collector's address (resolved at start).
    pub addr: SocketAddr,
    /// `{prefix}/v1/traces`
    pub path: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub headers: Vec<(String, String)>,
}

pub(super) fn validate(
    e: &Errs,
    raw: Option<&TracingFile>,
) -> Result<Option<TracingSpec>, ConfigError> {
    let Some(t) = raw else { return Ok(None) };
    let ep = t.otlp_endpoint.trim();
    let bad = |msg: &str| e.err("tracing.otlp_endpoint", &t.otlp_endpoint, msg);
    let Some(rest) = ep.strip_prefix("http://") else {
        return Err(bad(
            "must be http://HOST:PORT[/path] (OTLP/HTTP; https is not supported)",
        ));
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:4318")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad("does not resolve to an address"))?;
    let sample_ratio = t.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(e.err(
            "tracing.sample_ratio",
            sample_ratio,
            "must be between 0 and 1",
        ));
    }
    let service_name = t
        .service_name
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    if service_name.trim().is_empty() {
        return Err(e.err("tracing.service_name", &service_name, "must not be empty"));
    }
    let mut headers = Vec::new();
    for (k, v) in &t.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(e.err(format!("tracing.headers.{k}"), k, "is not a header name"));
        }
        if http::HeaderValue::from_str(v).is_err() || v.contains(['\r', '\n']) {
            return Err(e.err(format!("tracing.headers.{k}"), v, "is not a header value"));
        }
        headers.push((k.clone(), v.clone()));
    }
    Ok(Some(TracingSpec {
        authority: with_port,
        addr,
        path: format!("{prefix}/v1/traces"),
        service_name,
        sample_ratio,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_yaml("x.yaml", BASE).unwrap();
        assert!(c.tracing.is_none());
        let y = format!("{BASE}tracing: {{otlp_endpoint: 'http://127.0.0.1:4318/'}}\n");
        let t = Config::from_yaml("x.yaml", &y).unwrap().tracing.unwrap();
        assert_eq!(t.path, "/v1/traces");
        assert_eq!(t.service_name, "stepstone");
        assert_eq!(t.sample_ratio, 0.01);
        let y =
            format!("{BASE}tracing: {{otlp_endpoint: 'http://127.0.0.1/otel', sample_ratio: 1}}\n");
        let t = Config::from_yaml("x.yaml", &y).unwrap().tracing.unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:4318", "/otel/v1/traces")
        );
        for (bad, key) in [
            (
                "{otlp_endpoint: 'https://127.0.0.1:4318'}",
                "tracing.otlp_endpoint",
            ),
            (
                "{otlp_endpoint: 'http://127.0.0.1:1', sample_ratio: 2}",
                "tracing.sample_ratio",
            ),
            (
                "{otlp_endpoint: 'http://127.0.0.1:1', headers: {'a b': x}}",
                "tracing.headers.a b",
            ),
            (
                "{otlp_endpoint: 'http://127.0.0.1:1', colour: red}",
                "tracing",
            ),
        ] {
            let err = Config::from_yaml("x.yaml", &format!("{BASE}tracing: {bad}\n")).unwrap_err();
            assert_eq!(err.file, "x.yaml");
            assert!(err.path.starts_with(key), "{bad}: {err:?}");
        }
    }
}
