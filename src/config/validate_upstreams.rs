//! Validation of `upstreams:` into [`UpstreamSpec`]s: backends, selection, health checks and
//! timeouts. The TLS keys are left to [`super::tls`]. A backend given by DNS name is
//! only parsed here, never resolved: resolving is left to the running proxy
//! (the upstream discovery service), so loading a config never waits on or fails for DNS.

use super::file::{HealthCheckType, SelectionFile, UpstreamFile};
use super::{
    dur, parse_addr, valid_hostname, BackendSpec, ConfigError, DnsBackendSpec, Errs, HashKey,
    HealthSpec, Selection, UpstreamSpec, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HC_HEALTHY,
    DEFAULT_HC_INTERVAL, DEFAULT_HC_TIMEOUT, DEFAULT_HC_UNHEALTHY, DEFAULT_READ_TIMEOUT,
    DEFAULT_RESOLVE_EVERY, DEFAULT_RETRIES, DEFAULT_UPSTREAM_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    MAX_WEIGHT,
};
use std::time::Duration;

pub(super) fn upstreams(e: &Errs, raw: &[UpstreamFile]) -> Result<Vec<UpstreamSpec>, ConfigError> {
    let mut upstreams = Vec::with_capacity(raw.len());
    for (i, u) in raw.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if u.name.trim().is_empty() {
            return Err(e.err(format!("{p}.name"), &u.name, "must not be empty"));
        }
        if upstreams.iter().any(|x: &UpstreamSpec| x.name == u.name) {
            return Err(e.err(format!("{p}.name"), &u.name, "duplicate upstream name"));
        }
        if u.backends.is_empty() {
            return Err(e.err(
                format!("{p}.backends"),
                "[]",
                "at least one backend is required",
            ));
        }
        let mut backends = Vec::with_capacity(u.backends.len());
        let mut dns_backends: Vec<DnsBackendSpec> = Vec::new();
        for (j, b) in u.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{j}]");
            let weight = b.weight.unwrap_or(1);
            if weight == 0 || weight > MAX_WEIGHT {
                return Err(e.err(
                    format!("{bp}.weight"),
                    weight,
                    format!("must be between 1 and {MAX_WEIGHT}"),
                ));
            }
            if let Some((host, port)) = dns_name_port(&b.address) {
                if dns_backends
                    .iter()
                    .any(|d| d.host == host && d.port == port)
                {
                    return Err(e.err(format!("{bp}.address"), &b.address, "duplicate backend"));
                }
                dns_backends.push(DnsBackendSpec { host, port, weight });
                continue;
            }
            let addr = parse_addr(e, &format!("{bp}.address"), &b.address).map_err(|mut err| {
                err.msg = "expected IP:PORT or NAME:PORT, for example 127.0.0.1:8080".into();
                err
            })?;
            if backends.iter().any(|x: &BackendSpec| x.addr == addr) {
                return Err(e.err(format!("{bp}.address"), &b.address, "duplicate backend"));
            }
            if let Some(0) = b.max_connections {
                return Err(e.err(
                    format!("{p}.backends[{j}].max_connections"),
                    0,
                    "must be at least 1",
                ));
            }
            backends.push(BackendSpec {
                addr,
                weight,
                max_connections: b.max_connections,
            });
        }
        let resolve_every = dur(u.resolve_every, DEFAULT_RESOLVE_EVERY);
        if resolve_every < Duration::from_millis(100) {
            return Err(e.err(
                format!("{p}.resolve_every"),
                format!("{resolve_every:?}"),
                "must be at least 100ms",
            ));
        }
        let selection = match u.selection {
            SelectionFile::RoundRobin => Selection::RoundRobin,
            SelectionFile::Random => Selection::Random,
            SelectionFile::LeastConnections => Selection::LeastConnections,
            SelectionFile::PowerOfTwo => Selection::PowerOfTwo,
            SelectionFile::ConsistentHash => Selection::ConsistentHash,
        };
        let hash_key = match u.hash_key.as_deref() {
            None | Some("client_ip") => HashKey::ClientIp,
            Some("uri") => HashKey::Uri,
            Some(k) => {
                if let Some(h) = k.strip_prefix("header:").filter(|h| !h.is_empty()) {
                    HashKey::Header(h.to_ascii_lowercase())
                } else if let Some(c) = k.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                    HashKey::Cookie(c.to_string())
                } else {
                    return Err(e.err(
                        format!("{p}.hash_key"),
                        k,
                        "expected client_ip, uri, header:NAME or cookie:NAME",
                    ));
                }
            }
        };
        if u.hash_key.is_some() && selection != Selection::ConsistentHash {
            return Err(e.err(
                format!("{p}.hash_key"),
                u.hash_key.as_deref().unwrap_or_default(),
                "only valid with selection: consistent_hash",
            ));
        }
        let health = match &u.health_check {
            None => None,
            Some(h) => {
                let hp = format!("{p}.health_check");
                let interval = dur(h.interval, DEFAULT_HC_INTERVAL);
                if interval < Duration::from_millis(10) {
                    return Err(e.err(
                        format!("{hp}.interval"),
                        format!("{interval:?}"),
                        "must be at least 10ms",
                    ));
                }
                let timeout = dur(h.timeout, DEFAULT_HC_TIMEOUT);
                if timeout.is_zero() {
                    return Err(e.err(format!("{hp}.timeout"), "0s", "must be greater than zero"));
                }
                let healthy_threshold = h.healthy_threshold.unwrap_or(DEFAULT_HC_HEALTHY);
                if healthy_threshold == 0 {
                    return Err(e.err(format!("{hp}.healthy_threshold"), 0, "must be at least 1"));
                }
                let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(DEFAULT_HC_UNHEALTHY);
                if unhealthy_threshold == 0 {
                    return Err(e.err(
                        format!("{hp}.unhealthy_threshold"),
                        0,
                        "must be at least 1",
                    ));
                }
                let expect_status = h.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    return Err(e.err(
                        format!("{hp}.expect_status"),
                        expect_status,
                        "must be an HTTP status (100-599)",
                    ));
                }
                let path = h.path.clone().unwrap_or_else(|| "/".into());
                if !path.starts_with('/')
                    || path.bytes().any(|b| b <= b' ' || b == 0x7f)
                    || http::uri::PathAndQuery::try_from(path.as_str()).is_err()
                {
                    return Err(e.err(
                        format!("{hp}.path"),
                        &path,
                        "must be a URI path (starting with /, no spaces)",
                    ));
                }
                if h.kind == HealthCheckType::Tcp
                    && (h.path.is_some()
                        || h.expect_status.is_some()
                        || h.reuse_connection.is_some())
                {
                    return Err(e.err(
                        format!("{hp}.type"),
                        "tcp",
                        "path, expect_status and reuse_connection need type: http",
                    ));
                }
                let host = h.host.clone().unwrap_or_else(|| "localhost".into());
                // an HTTP/2 check sends it as the :authority of an absolute URI
                if host.is_empty()
                    || host.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'@')
                    || http::uri::Authority::try_from(host.as_str()).is_err()
                {
                    return Err(e.err(
                        format!("{hp}.host"),
                        &host,
                        "must be a host name (and port), without spaces or control characters",
                    ));
                }
                if let Some(0) = h.port {
                    return Err(e.err(format!("{hp}.port"), 0, "must be a port number"));
                }
                Some(HealthSpec {
                    kind: h.kind,
                    path,
                    host,
                    expect_status,
                    port: h.port,
                    interval,
                    timeout,
                    healthy_threshold,
                    unhealthy_threshold,
                    reuse_connection: h.reuse_connection.unwrap_or(false),
                })
            }
        };
        let connect_timeout = dur(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(e.err(
                format!("{p}.connect_timeout"),
                "0s",
                "must be greater than zero",
            ));
        }
        let read_timeout = dur(u.read_timeout, DEFAULT_READ_TIMEOUT);
        if read_timeout.is_zero() {
            return Err(e.err(
                format!("{p}.read_timeout"),
                "0s",
                "must be greater than zero",
            ));
        }
        let retry_budget_percent = u
            .retry_budget_percent
            .unwrap_or(crate::config::DEFAULT_RETRY_BUDGET_PERCENT);
        if retry_budget_percent > 100 {
            return Err(e.err(
                format!("{p}.retry_budget_percent"),
                retry_budget_percent,
                "must be between 0 and 100",
            ));
        }
        let per_try_timeout = u.per_try_timeout.map(|d| d.0);
        if per_try_timeout.is_some_and(|d| d.is_zero()) {
            return Err(e.err(
                format!("{p}.per_try_timeout"),
                "0s",
                "must be greater than zero",
            ));
        }
        let (tls, http2) = super::tls::validate_upstream(e, &p, u)?;
        upstreams.push(UpstreamSpec {
            name: u.name.clone(),
            backends,
            selection,
            hash_key,
            health,
            connect_timeout,
            read_timeout,
            write_timeout: dur(u.write_timeout, DEFAULT_WRITE_TIMEOUT),
            idle_timeout: dur(u.idle_timeout, DEFAULT_UPSTREAM_IDLE_TIMEOUT),
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            retry_on: retry_on(e, &p, u.retry_on.as_deref())?,
            retry_budget_percent,
            per_try_timeout,
            tls,
            http2,
            send_proxy_protocol: u.send_proxy_protocol,
            dns_backends,
            resolve_every,
            outlier: outlier(e, &p, u.outlier_detection.as_ref())?,
            max_pending: u.max_pending.unwrap_or(crate::config::DEFAULT_MAX_PENDING),
            queue_timeout: dur(u.queue_timeout, crate::config::DEFAULT_QUEUE_TIMEOUT),
            slow_start: dur(u.slow_start, Duration::ZERO),
            sticky: sticky(e, &p, u.sticky.as_ref())?,
        });
    }
    Ok(upstreams)
}

/// `NAME:PORT` where NAME is a DNS name (not an IP literal), for DNS-discovered backends.
fn dns_name_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let starts_alpha = host.bytes().any(|b| b.is_ascii_alphabetic());
    (starts_alpha && valid_hostname(host) && host.parse::<std::net::IpAddr>().is_err())
        .then(|| (host.to_ascii_lowercase(), port))
}

/// `retry_on:`; without it, connect failures only.
fn retry_on(
    e: &Errs,
    p: &str,
    raw: Option<&[crate::config::file::RetryOnFile]>,
) -> Result<crate::config::RetryOn, ConfigError> {
    use crate::config::file::RetryOnFile;
    let mut on = crate::config::RetryOn::default();
    let Some(raw) = raw else {
        on.connect_failure = true;
        return Ok(on);
    };
    for (i, item) in raw.iter().enumerate() {
        let code = match item {
            RetryOnFile::Code(c) => Some(*c),
            RetryOnFile::Name(n) => match n.trim() {
                "connect_failure" => {
                    on.connect_failure = true;
                    None
                }
                "reset" => {
                    on.reset = true;
                    None
                }
                "timeout" => {
                    on.timeout = true;
                    None
                }
                "5xx" => {
                    on.any_5xx = true;
                    None
                }
                n => match n.parse::<u16>() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        return Err(e.err(
                            format!("{p}.retry_on[{i}]"),
                            n,
                            "expected connect_failure, reset, timeout, 5xx or a status code",
                        ))
                    }
                },
            },
        };
        if let Some(c) = code {
            if !(400..=599).contains(&c) {
                return Err(e.err(
                    format!("{p}.retry_on[{i}]"),
                    c,
                    "a retried status must be between 400 and 599",
                ));
            }
            on.add_status(c);
        }
    }
    Ok(on)
}

/// `sticky:`, with its defaults. The cookie name must be a token (RFC 6265 §4.1.1).
fn sticky(
    e: &Errs,
    p: &str,
    s: Option<&crate::config::file::StickyFile>,
) -> Result<Option<crate::config::StickySpec>, ConfigError> {
    use crate::config::{DEFAULT_STICKY_COOKIE, DEFAULT_STICKY_TTL};
    let Some(s) = s else {
        return Ok(None);
    };
    let cookie = s
        .cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_STICKY_COOKIE.into());
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if cookie.is_empty() || !cookie.bytes().all(token) {
        return Err(e.err(
            format!("{p}.sticky.cookie"),
            &cookie,
            "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    let key_file = match s.key_file.as_deref() {
        Some("") => return Err(e.err(format!("{p}.sticky.key_file"), "", "must not be empty")),
        Some(f) => Some(crate::config::relative_to(e.file, f)),
        None => None,
    };
    Ok(Some(crate::config::StickySpec {
        cookie,
        ttl: dur(s.ttl, DEFAULT_STICKY_TTL),
        key_file,
    }))
}

/// `outlier_detection:`, with its defaults.
fn outlier(
    e: &Errs,
    p: &str,
    o: Option<&crate::config::file::OutlierFile>,
) -> Result<Option<crate::config::OutlierSpec>, ConfigError> {
    use crate::config::{
        OutlierSpec, DEFAULT_OUTLIER_BASE_EJECTION, DEFAULT_OUTLIER_CONSECUTIVE,
        DEFAULT_OUTLIER_MAX_EJECTION, DEFAULT_OUTLIER_MAX_PERCENT,
    };
    let Some(o) = o else {
        return Ok(None);
    };
    let p = format!("{p}.outlier_detection");
    let consecutive_failures = o
        .consecutive_failures
        .unwrap_or(DEFAULT_OUTLIER_CONSECUTIVE);
    if !(1..=1000).contains(&consecutive_failures) {
        return Err(e.err(
            format!("{p}.consecutive_failures"),
            consecutive_failures,
            "must be between 1 and 1000",
        ));
    }
    let base_ejection_time = dur(o.base_ejection_time, DEFAULT_OUTLIER_BASE_EJECTION);
    if base_ejection_time < Duration::from_millis(100) {
        return Err(e.err(
            format!("{p}.base_ejection_time"),
            format!("{base_ejection_time:?}"),
            "must be at least 100ms",
        ));
    }
    let max_ejection_time = dur(o.max_ejection_time, DEFAULT_OUTLIER_MAX_EJECTION);
    if max_ejection_time < base_ejection_time {
        return Err(e.err(
            format!("{p}.max_ejection_time"),
            format!("{max_ejection_time:?}"),
            "must be at least base_ejection_time",
        ));
    }
    let max_ejection_percent = o
        .max_ejection_percent
        .unwrap_or(DEFAULT_OUTLIER_MAX_PERCENT);
    if max_ejection_percent > 100 {
        return Err(e.err(
            format!("{p}.max_ejection_percent"),
            max_ejection_percent,
            "must be between 0 and 100",
        ));
    }
    Ok(Some(OutlierSpec {
        consecutive_failures,
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DnsBackendSpec};
    use std::time::Duration;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn outlier_detection_defaults_and_bad_values() {
        let up = |o: &str| {
            format!("{BASE}upstreams: [{{name: a, outlier_detection: {o}, backends: [{{address: 127.0.0.1:1}}]}}]\n")
        };
        let c = Config::from_yaml("x.yaml", &up("{}")).unwrap();
        let o = c.upstreams[0].outlier.expect("on");
        assert_eq!(o.consecutive_failures, 5);
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_time, Duration::from_secs(300));
        assert_eq!(o.max_ejection_percent, 50);
        for (o, path, value) in [
            ("{consecutive_failures: 0}", "consecutive_failures", "0"),
            ("{max_ejection_percent: 101}", "max_ejection_percent", "101"),
            (
                "{base_ejection_time: 10s, max_ejection_time: 5s}",
                "max_ejection_time",
                "5s",
            ),
        ] {
            let err = Config::from_yaml("x.yaml", &up(o)).unwrap_err();
            assert_eq!(
                err.path,
                format!("upstreams[0].outlier_detection.{path}"),
                "{o}"
            );
            assert_eq!(err.value, value, "{o}");
        }
        let y = format!("{BASE}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:1, max_connections: 0}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "upstreams[0].backends[0].max_connections");
        let err = Config::from_yaml("x.yaml", &up("{consecutive: 3}")).unwrap_err();
        assert!(err.to_string().contains("consecutive"), "{err}");
    }

    #[test]
    fn retry_keys_defaults_and_bad_values() {
        let up = |k: &str| {
            format!("{BASE}upstreams: [{{name: a, {k}, backends: [{{address: 127.0.0.1:1}}]}}]\n")
        };
        let c = Config::from_yaml("x.yaml", &up("retries: 1")).unwrap();
        let u = &c.upstreams[0];
        assert!(u.retry_on.connect_failure && !u.retry_on.after_sending());
        assert_eq!(u.retry_budget_percent, 20);
        assert_eq!(u.per_try_timeout, None);
        let c = Config::from_yaml(
            "x.yaml",
            &up("retry_on: [reset, \"5xx\", 429, \"408\"], per_try_timeout: 2s"),
        )
        .unwrap();
        let on = c.upstreams[0].retry_on;
        assert!(on.reset && !on.connect_failure && !on.timeout);
        assert!(on.status(500) && on.status(599) && on.status(429) && on.status(408));
        assert!(!on.status(404) && !on.status(200));
        assert_eq!(c.upstreams[0].per_try_timeout, Some(Duration::from_secs(2)));
        for (k, path, value) in [
            ("retry_on: [refused]", "retry_on[0]", "refused"),
            ("retry_on: [reset, 302]", "retry_on[1]", "302"),
            ("retry_budget_percent: 101", "retry_budget_percent", "101"),
            ("per_try_timeout: 0s", "per_try_timeout", "0s"),
        ] {
            let err = Config::from_yaml("x.yaml", &up(k)).unwrap_err();
            assert_eq!(err.path, format!("upstreams[0].{path}"), "{k}");
            assert_eq!(err.value, value, "{k}");
        }
    }

    #[test]
    fn sticky_defaults_and_bad_values() {
        let up = |s: &str| {
            format!("{BASE}upstreams: [{{name: a, sticky: {s}, backends: [{{address: 127.0.0.1:1}}]}}]\n")
        };
        let c = Config::from_yaml("/etc/x.yaml", &up("{}")).unwrap();
        let s = c.upstreams[0].sticky.clone().expect("on");
        assert_eq!(
            (s.cookie.as_str(), s.ttl),
            ("SRV", Duration::from_secs(3600))
        );
        assert_eq!(s.key_file, None);
        let c = Config::from_yaml("/etc/x.yaml", &up("{key_file: k}")).unwrap();
        let s = c.upstreams[0].sticky.clone().expect("on");
        assert_eq!(s.key_file, Some(std::path::PathBuf::from("/etc/k")));
        let err = Config::from_yaml("x.yaml", &up("{cookie: 'a b'}")).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.value.as_str()),
            ("upstreams[0].sticky.cookie", "a b")
        );
        assert!(Config::from_yaml("x.yaml", &up("{cookies: a}")).is_err());
    }

    #[test]
    fn zero_weight_names_path_and_value() {
        let y = format!("{BASE}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2, weight: 0}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "upstreams[0].backends[1].weight");
        assert_eq!(err.value, "0");
        assert!(err
            .to_string()
            .starts_with("x.yaml: upstreams[0].backends[1].weight"));
    }

    #[test]
    fn dns_backend_names_are_accepted_and_ips_stay_ips() {
        let y = format!("{BASE}upstreams: [{{name: a, resolve_every: 2s, backends: [{{address: 127.0.0.1:1}}, {{address: app.internal:8080, weight: 2}}]}}]\n");
        let c = Config::from_yaml("x.yaml", &y).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.backends.len(), 1);
        assert_eq!(
            u.dns_backends,
            vec![DnsBackendSpec {
                host: "app.internal".into(),
                port: 8080,
                weight: 2
            }]
        );
        assert_eq!(u.resolve_every, Duration::from_secs(2));
        let bad =
            format!("{BASE}upstreams: [{{name: a, backends: [{{address: 'app internal:80'}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &bad).unwrap_err();
        assert_eq!(err.path, "upstreams[0].backends[0].address");
    }
}
