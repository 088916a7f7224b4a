//! Validation of the L4 keys (tcp and tls_passthrough listeners, PROXY protocol). Kept apart
//! from the general validation so that the L4 rules read in one place.

use super::cidr::Cidr;
use super::file::{ListenerFile, ListenerProtocol};
use super::{ConfigError, Errs, HostMatch, ListenerSpec, UpstreamSpec, DEFAULT_L4_IDLE_TIMEOUT};
use std::time::Duration;

/// Runtime settings of a tcp or tls_passthrough listener. Upstreams are indices into
/// `Config::upstreams`.
#[derive(Debug, Clone)]
pub struct L4Spec {
    /// tcp: the upstream of every connection.
    pub upstream: Option<usize>,
    /// tls_passthrough: most specific name first.
    pub sni_routes: Vec<(HostMatch, usize)>,
    pub default_upstream: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Duration,
    /// Pass a half-close on and keep the other direction; `false`: the first close ends both.
    pub half_close: bool,
}

fn is_l4(p: ListenerProtocol) -> bool {
    matches!(p, ListenerProtocol::Tcp | ListenerProtocol::TlsPassthrough)
}

fn upstream_index(
    e: &Errs,
    path: String,
    name: &str,
    upstreams: &[UpstreamSpec],
) -> Result<usize, ConfigError> {
    upstreams
        .iter()
        .position(|u| u.name == name)
        .ok_or_else(|| e.err(path, name, "no upstream has this name"))
}

/// `accept_proxy_protocol` and `trusted_proxies` of any listener.
pub(super) fn accept_proxy(
    e: &Errs,
    p: &str,
    l: &ListenerFile,
) -> Result<Option<Vec<Cidr>>, ConfigError> {
    let on = l.accept_proxy_protocol.unwrap_or(false);
    match (&l.trusted_proxies, on) {
        (None, false) => Ok(None),
        (Some(_), false) => Err(e.err(
            format!("{p}.trusted_proxies"),
            "",
            "only meaningful with accept_proxy_protocol: true",
        )),
        (None, true) => Err(e.err(
            format!("{p}.trusted_proxies"),
            "",
            "required with accept_proxy_protocol: true (the networks of the load balancers in front)",
        )),
        (Some(list), true) => {
            if list.is_empty() {
                return Err(e.err(
                    format!("{p}.trusted_proxies"),
                    "[]",
                    "at least one network is required",
                ));
            }
            list.iter()
                .enumerate()
                .map(|(j, c)| {
                    Cidr::parse(c).map_err(|m| e.err(format!("{p}.trusted_proxies[{j}]"), c, m))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
    }
}

pub(super) fn listener(
    e: &Errs,
    i: usize,
    l: &ListenerFile,
    upstreams: &[UpstreamSpec],
) -> Result<Option<L4Spec>, ConfigError> {
    let p = format!("listeners[{i}]");
    if !is_l4(l.protocol) {
        let set = [
            ("upstream", l.upstream.is_some()),
            ("sni_routes", l.sni_routes.is_some()),
            ("default_upstream", l.default_upstream.is_some()),
            ("max_connections", l.max_connections.is_some()),
            ("idle_timeout", l.idle_timeout.is_some()),
            ("half_close", l.half_close.is_some()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, on)| *on) {
            return Err(e.err(
                format!("{p}.{k}"),
                "",
                "only for tcp and tls_passthrough listeners (http listeners use routes)",
            ));
        }
        return Ok(None);
    }
    let mut spec = L4Spec {
        upstream: None,
        sni_routes: Vec::new(),
        default_upstream: None,
        max_connections: None,
        idle_timeout: l
            .idle_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_L4_IDLE_TIMEOUT),
        half_close: l.half_close.unwrap_or(true),
    };
    if spec.idle_timeout.is_zero() {
        return Err(e.err(
            format!("{p}.idle_timeout"),
            "0s",
            "must be greater than zero",
        ));
    }
    if let Some(n) = l.max_connections {
        if n == 0 {
            return Err(e.err(format!("{p}.max_connections"), 0, "must be at least 1"));
        }
        spec.max_connections = Some(n as usize);
    }
    if l.protocol == ListenerProtocol::Tcp {
        if l.sni_routes.is_some() || l.default_upstream.is_some() {
            return Err(e.err(
                format!("{p}.sni_routes"),
                "",
                "sni_routes and default_upstream need protocol: tls_passthrough",
            ));
        }
        let Some(name) = &l.upstream else {
            return Err(e.err(format!("{p}.upstream"), "", "required for protocol: tcp"));
        };
        spec.upstream = Some(upstream_index(e, format!("{p}.upstream"), name, upstreams)?);
        return Ok(Some(spec));
    }
    // tls_passthrough
    if l.upstream.is_some() {
        return Err(e.err(
            format!("{p}.upstream"),
            "",
            "tls_passthrough picks upstreams by sni_routes and default_upstream",
        ));
    }
    if let Some(name) = &l.default_upstream {
        spec.default_upstream = Some(upstream_index(
            e,
            format!("{p}.default_upstream"),
            name,
            upstreams,
        )?);
    }
    for (pattern, name) in l.sni_routes.iter().flatten() {
        let rp = format!("{p}.sni_routes.{pattern:?}");
        let host = match HostMatch::parse(pattern) {
            Ok(HostMatch::Any) => {
                return Err(e.err(rp, pattern, "use default_upstream for any name"))
            }
            Ok(h) => h,
            Err(m) => return Err(e.err(rp, pattern, m)),
        };
        if spec.sni_routes.iter().any(|(h, _)| *h == host) {
            return Err(e.err(rp, pattern, "duplicate name"));
        }
        let up = upstream_index(e, rp, name, upstreams)?;
        spec.sni_routes.push((host, up));
    }
    if spec.sni_routes.is_empty() && spec.default_upstream.is_none() {
        return Err(e.err(
            format!("{p}.sni_routes"),
            "",
            "tls_passthrough needs sni_routes, default_upstream or both",
        ));
    }
    spec.sni_routes
        .sort_by_key(|(h, _)| std::cmp::Reverse(h.specificity()));
    Ok(Some(spec))
}

/// Routes belong to HTTP listeners, and the PROXY protocol towards backends is an L4 feature:
/// an HTTP upstream connection is pooled and shared by many clients, so one header per
/// connection cannot name the client of each request.
pub(super) fn check_route(
    e: &Errs,
    p: &str,
    listener: &ListenerSpec,
    upstream: &UpstreamSpec,
) -> Result<(), ConfigError> {
    if is_l4(listener.protocol) {
        return Err(e.err(
            format!("{p}.listener"),
            &listener.name,
            "routes are for http and https listeners; a tcp listener names its upstream, a tls_passthrough listener has sni_routes",
        ));
    }
    if upstream.send_proxy_protocol.is_some() {
        return Err(e.err(
            format!("{p}.upstream"),
            &upstream.name,
            "this upstream has send_proxy_protocol, which only tcp and tls_passthrough listeners support",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(y: &str) -> String {
        Config::from_yaml("x.yaml", y).unwrap_err().to_string()
    }

    const UP: &str = "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}, {name: b, send_proxy_protocol: v2, backends: [{address: 127.0.0.1:2}]}]\n";

    #[test]
    fn tcp_listener() {
        let ok = format!("listeners: [{{name: t, address: 127.0.0.1:1, protocol: tcp, upstream: b, max_connections: 5, idle_timeout: 30s}}]\n{UP}");
        let c = Config::from_yaml("x.yaml", &ok).unwrap();
        let l4 = c.listeners[0].l4.clone().unwrap();
        assert_eq!(l4.upstream, Some(1));
        assert_eq!(l4.max_connections, Some(5));
        assert!(
            l4.half_close,
            "half-close is passed on unless said otherwise"
        );
        assert!(!c.listeners[0].splice, "splice(2) is off unless asked for");
        let off = ok.replace("idle_timeout: 30s", "half_close: false");
        let c = Config::from_yaml("x.yaml", &off).unwrap();
        assert!(!c.listeners[0].l4.clone().unwrap().half_close);
        let on = ok.replace("idle_timeout: 30s", "splice: true");
        let c = Config::from_yaml("x.yaml", &on).unwrap();
        assert!(c.listeners[0].splice);
        // http: request bodies; not where the bytes must pass through the process
        let c = Config::from_yaml(
            "x.yaml",
            &format!("listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, splice: true}}]\n{UP}"),
        )
        .unwrap();
        assert!(c.listeners[0].splice);
        let e = err(&format!(
            "listeners: [{{name: f, address: 127.0.0.1:1, protocol: http, splice: true, forward_proxy: {{}}}}]\n{UP}"
        ));
        assert!(
            e.contains("listeners[0].splice") && e.contains("forward_proxy"),
            "{e}"
        );
        let e = err(&format!(
            "listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, half_close: false}}]\n{UP}"
        ));
        assert!(e.contains("listeners[0].half_close"), "{e}");
        let e = err(&format!(
            "listeners: [{{name: t, address: 127.0.0.1:1, protocol: tcp}}]\n{UP}"
        ));
        assert!(e.contains("listeners[0].upstream: required"), "{e}");
        let e = err(&format!(
            "listeners: [{{name: t, address: 127.0.0.1:1, protocol: tcp, upstream: nope}}]\n{UP}"
        ));
        assert!(e.contains("\"nope\""), "{e}");
        let e = err(&format!("listeners: [{{name: t, address: 127.0.0.1:1, protocol: tcp, upstream: a, max_connections: 0}}]\n{UP}"));
        assert!(e.contains("listeners[0].max_connections"), "{e}");
        let e = err(&format!("listeners: [{{name: t, address: 127.0.0.1:1, protocol: tcp, upstream: a}}]\n{UP}routes: [{{listener: t, upstream: a}}]\n"));
        assert!(e.contains("routes[0].listener"), "{e}");
    }

    #[test]
    fn passthrough_listener() {
        let ok = format!("listeners: [{{name: p, address: 127.0.0.1:1, protocol: tls_passthrough, sni_routes: {{'*.example.com': a, 'x.example.com': b}}}}]\n{UP}");
        let c = Config::from_yaml("x.yaml", &ok).unwrap();
        let l4 = c.listeners[0].l4.clone().unwrap();
        // exact name first
        assert_eq!(l4.sni_routes[0].1, 1);
        let e = err(&format!(
            "listeners: [{{name: p, address: 127.0.0.1:1, protocol: tls_passthrough}}]\n{UP}"
        ));
        assert!(e.contains("listeners[0].sni_routes"), "{e}");
        let e = err(&format!("listeners: [{{name: p, address: 127.0.0.1:1, protocol: tls_passthrough, sni_routes: {{'bad name': a}}}}]\n{UP}"));
        assert!(e.contains("sni_routes.\"bad name\""), "{e}");
    }

    #[test]
    fn proxy_protocol_keys() {
        let ok = format!("listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, accept_proxy_protocol: true, trusted_proxies: [10.0.0.0/8, 127.0.0.1]}}]\n{UP}");
        let c = Config::from_yaml("x.yaml", &ok).unwrap();
        assert_eq!(
            c.listeners[0].proxy_protocol.as_ref().map(|v| v.len()),
            Some(2)
        );
        let e = err(&format!("listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, accept_proxy_protocol: true}}]\n{UP}"));
        assert!(e.contains("listeners[0].trusted_proxies: required"), "{e}");
        let e = err(&format!("listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, accept_proxy_protocol: true, trusted_proxies: [10.0.0.0/40]}}]\n{UP}"));
        assert!(e.contains("listeners[0].trusted_proxies[0]"), "{e}");
        let e = err(&format!(
            "listeners: [{{name: w, address: 127.0.0.1:1, protocol: http, upstream: a}}]\n{UP}"
        ));
        assert!(e.contains("listeners[0].upstream: only for tcp"), "{e}");
        let e = err(&format!(
            "listeners: [{{name: w, address: 127.0.0.1:1, protocol: http}}]\n{UP}routes: [{{listener: w, upstream: b}}]\n"
        ));
        assert!(
            e.contains("routes[0].upstream") && e.contains("send_proxy_protocol"),
            "{e}"
        );
        let e = err("listeners: [{name: t, address: 127.0.0.1:1, protocol: tcp, upstream: a}]\nupstreams: [{name: a, send_proxy_protocol: v3, backends: [{address: 127.0.0.1:1}]}]\n");
        assert!(e.contains("upstreams[0].send_proxy_protocol"), "{e}");
    }
}
