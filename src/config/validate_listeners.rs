//! Validation of `listeners:` into [`ListenerSpec`]s. The parts that other sections settle
//! are left to them: the TLS keys to [`super::tls`], a forward proxy to
//! [`super::forward`], and the tcp/tls_passthrough settings to [`super::l4`], which needs the
//! upstreams first.

use super::file::{LimitsFile, ListenerFile};
use super::{
    cache, dur, forward, l4, parse_addr, units, ConfigError, Errs, ListenerLimits, ListenerSpec,
    RateStoreSpec, DEFAULT_RATE_STORE_POOL, DEFAULT_RATE_STORE_PREFIX, DEFAULT_RATE_STORE_TIMEOUT,
};
use std::time::Duration;

pub(super) fn listeners(
    e: &Errs,
    raw: &[ListenerFile],
    store: &mut cache::StoreSize,
) -> Result<Vec<ListenerSpec>, ConfigError> {
    let mut listeners = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            return Err(e.err(format!("{p}.name"), &l.name, "must not be empty"));
        }
        if listeners.iter().any(|x: &ListenerSpec| x.name == l.name) {
            return Err(e.err(format!("{p}.name"), &l.name, "duplicate listener name"));
        }
        let addr = parse_addr(e, &format!("{p}.address"), &l.address)?;
        if listeners.iter().any(|x: &ListenerSpec| x.addr == addr) {
            return Err(e.err(
                format!("{p}.address"),
                &l.address,
                "address used by another listener",
            ));
        }
        let (tls, redirect_https, h2c) = super::tls::validate_listener(e, &p, l)?;
        let forward = match &l.forward_proxy {
            Some(f) => Some(forward::validate(e, &p, l.protocol, f, store)?),
            None => None,
        };
        let lim = limits(e, &p, &l.limits)?;
        listeners.push(ListenerSpec {
            name: l.name.clone(),
            addr,
            protocol: l.protocol,
            tls,
            redirect_https,
            h2c,
            fast_path: l.fast_path.unwrap_or(true),
            defer_accept: l.defer_accept.unwrap_or(client_speaks_first(l)),
            splice: splice(e, &p, l)?,
            http3: super::quic::validate(e, &p, l, &lim)?,
            limits: lim,
            l4: None,
            proxy_protocol: l4::accept_proxy(e, &p, l)?,
            forward,
        });
    }
    Ok(listeners)
}

/// `splice`: not where bodies cannot meet a plain client socket (TLS, the forward proxy).
fn splice(e: &Errs, p: &str, l: &ListenerFile) -> Result<bool, ConfigError> {
    let Some(on) = l.splice else {
        return Ok(false);
    };
    let why = match (l.protocol, &l.forward_proxy) {
        (super::file::ListenerProtocol::Https, _) => "a TLS client's bytes must pass through the process to be decrypted: only for plain listeners (http, tcp, tls_passthrough)",
        (_, Some(_)) => "not for forward_proxy listeners (their bodies are relayed through the process)",
        _ => return Ok(on),
    };
    Err(e.err(format!("{p}.splice"), on, why))
}

/// Whether the listener's protocol has the client send first: HTTP, TLS (a ClientHello) and
/// a PROXY header do; a plain TCP service may greet first.
fn client_speaks_first(l: &ListenerFile) -> bool {
    use super::file::ListenerProtocol as P;
    match l.protocol {
        P::Http | P::Https | P::TlsPassthrough => true,
        P::Tcp => l.tls.is_some() || l.accept_proxy_protocol == Some(true),
    }
}

fn limits(e: &Errs, p: &str, l: &Option<LimitsFile>) -> Result<ListenerLimits, ConfigError> {
    let d = ListenerLimits::default();
    let Some(l) = l else {
        return Ok(d);
    };
    let size = |v: Option<units::Size>, def: usize, key: &str, min: u64, max: u64| {
        let n = v.map(|s| s.0).unwrap_or(def as u64);
        if n < min || n > max {
            Err(e.err(
                format!("{p}.limits.{key}"),
                n,
                format!("must be between {min} and {max} bytes"),
            ))
        } else {
            Ok(n as usize)
        }
    };
    let max_request_line = size(
        l.max_request_line,
        d.max_request_line,
        "max_request_line",
        64,
        1 << 20,
    )?;
    let max_header_size = size(
        l.max_header_size,
        d.max_header_size,
        "max_header_size",
        256,
        1 << 20,
    )?;
    let max_header_count = l.max_header_count.unwrap_or(d.max_header_count);
    if !(1..=256).contains(&max_header_count) {
        return Err(e.err(
            format!("{p}.limits.max_header_count"),
            max_header_count,
            "must be between 1 and 256",
        ));
    }
    let header_timeout = dur(l.header_timeout, d.header_timeout);
    if header_timeout.is_zero() {
        return Err(e.err(
            format!("{p}.limits.header_timeout"),
            "0s",
            "must be greater than zero",
        ));
    }
    let keepalive_timeout = dur(l.keepalive_timeout, d.keepalive_timeout);
    if keepalive_timeout < Duration::from_secs(1) {
        return Err(e.err(
            format!("{p}.limits.keepalive_timeout"),
            format!("{keepalive_timeout:?}"),
            "must be at least 1s",
        ));
    }
    if let Some(0) = l.max_connections {
        return Err(e.err(
            format!("{p}.limits.max_connections"),
            0,
            "must be at least 1",
        ));
    }
    if let Some(0) = l.rate_limit_per_ip {
        return Err(e.err(
            format!("{p}.limits.rate_limit_per_ip"),
            0,
            "must be at least 1",
        ));
    }
    let rate_limit_store = rate_store(e, p, l)?;
    let client_timeout = dur(l.client_timeout, d.client_timeout);
    if client_timeout < Duration::from_secs(1) {
        return Err(e.err(
            format!("{p}.limits.client_timeout"),
            format!("{client_timeout:?}"),
            "must be at least 1s",
        ));
    }
    let keepalive_requests = match l.keepalive_requests {
        Some(0) => None,
        Some(n) => Some(n),
        None => d.keepalive_requests,
    };
    Ok(ListenerLimits {
        max_request_line,
        max_header_size,
        max_header_count,
        header_timeout,
        keepalive_timeout,
        max_connections: l.max_connections,
        rate_limit_per_ip: l.rate_limit_per_ip,
        rate_limit_store,
        client_timeout,
        keepalive_requests,
    })
}

fn rate_store(e: &Errs, p: &str, l: &LimitsFile) -> Result<Option<RateStoreSpec>, ConfigError> {
    let Some(store) = &l.rate_limit_store else {
        return Ok(None);
    };
    let k = format!("{p}.limits.rate_limit_store");
    if l.rate_limit_per_ip.is_none() {
        return Err(e.err(
            &k,
            "",
            "needs limits.rate_limit_per_ip, the limit it counts for",
        ));
    }
    let Some(r) = &store.redis else {
        return Err(e.err(
            &k,
            "",
            "expected a store, for example redis: {address: 127.0.0.1:6379}",
        ));
    };
    let addr = parse_addr(e, &format!("{k}.redis.address"), &r.address)?;
    let timeout = dur(r.timeout, DEFAULT_RATE_STORE_TIMEOUT);
    if timeout.is_zero() || timeout > Duration::from_secs(1) {
        return Err(e.err(
            format!("{k}.redis.timeout"),
            format!("{timeout:?}"),
            "must be greater than zero and at most 1s",
        ));
    }
    let pool_size = r.pool_size.unwrap_or(DEFAULT_RATE_STORE_POOL);
    if !(1..=1024).contains(&pool_size) {
        return Err(e.err(
            format!("{k}.redis.pool_size"),
            pool_size,
            "must be between 1 and 1024",
        ));
    }
    Ok(Some(RateStoreSpec {
        addr,
        key_prefix: r
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_RATE_STORE_PREFIX.to_string()),
        timeout,
        pool_size,
    }))
}
