//! Validation of `routes:`. A route only names its listener and upstream, so it is checked
//! after both and stored with indices into them.

use super::file::RouteFile;
use super::{
    cache, l4, ConfigError, Errs, HostMatch, ListenerSpec, RouteSpec, UpstreamSpec,
    DEFAULT_MAX_BODY_SIZE,
};

pub(super) fn routes(
    e: &Errs,
    raw: &[RouteFile],
    listeners: &[ListenerSpec],
    upstreams: &[UpstreamSpec],
    store: &mut cache::StoreSize,
) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let p = format!("routes[{i}]");
        let listener = listeners
            .iter()
            .position(|l| l.name == r.listener)
            .ok_or_else(|| {
                e.err(
                    format!("{p}.listener"),
                    &r.listener,
                    "no listener has this name",
                )
            })?;
        if listeners[listener].forward.is_some() {
            return Err(e.err(
                format!("{p}.listener"),
                &r.listener,
                "a forward_proxy listener takes no routes",
            ));
        }
        let find = |key: String, name: &str| {
            upstreams
                .iter()
                .position(|u| u.name == name)
                .ok_or_else(|| e.err(key, name, "no upstream has this name"))
        };
        let (upstream, split) = match (&r.upstream, &r.split) {
            (Some(u), None) => (find(format!("{p}.upstream"), u)?, Vec::new()),
            (None, Some(s)) if !s.is_empty() => {
                let mut split = Vec::with_capacity(s.len());
                for (j, m) in s.iter().enumerate() {
                    let u = find(format!("{p}.split[{j}].upstream"), &m.upstream)?;
                    if !(1..=super::MAX_WEIGHT).contains(&m.weight) {
                        return Err(e.err(
                            format!("{p}.split[{j}].weight"),
                            m.weight,
                            format!("must be between 1 and {}", super::MAX_WEIGHT),
                        ));
                    }
                    split.push((u, m.weight));
                }
                (split[0].0, split)
            }
            (Some(_), Some(_)) => {
                return Err(e.err(
                    format!("{p}.split"),
                    "",
                    "give either upstream or split, not both",
                ))
            }
            _ => {
                return Err(e.err(
                    format!("{p}.upstream"),
                    "",
                    "required (or a non-empty split)",
                ))
            }
        };
        let mut match_headers = Vec::new();
        let mut match_cookies = Vec::new();
        if let Some(m) = &r.matches {
            for (k, v) in &m.headers {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err(e.err(format!("{p}.match.headers"), k, "not a header field name"));
                }
                match_headers.push((k.to_ascii_lowercase(), v.clone()));
            }
            for (k, v) in &m.cookies {
                if k.is_empty() || k.contains([';', '=', ' ']) {
                    return Err(e.err(format!("{p}.match.cookies"), k, "not a cookie name"));
                }
                match_cookies.push((k.clone(), v.clone()));
            }
        }
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => HostMatch::parse(h).map_err(|m| e.err(format!("{p}.host"), h, m))?,
        };
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            return Err(e.err(
                format!("{p}.path_prefix"),
                &path_prefix,
                "must start with /",
            ));
        }
        l4::check_route(e, &p, &listeners[listener], &upstreams[upstream])?;
        let mirror = match &r.mirror {
            None => None,
            Some(m) => {
                let upstream = find(format!("{p}.mirror.upstream"), &m.upstream)?;
                let u = &upstreams[upstream];
                if u.tls.is_some() || u.http2 || u.send_proxy_protocol.is_some() {
                    return Err(e.err(
                        format!("{p}.mirror.upstream"),
                        &m.upstream,
                        "mirror copies go over plain HTTP/1.1: an upstream without tls, http2 or send_proxy_protocol",
                    ));
                }
                if r.cache.as_ref().is_some_and(|c| c.enabled) {
                    return Err(e.err(
                        format!("{p}.mirror"),
                        &m.upstream,
                        "not on a route with a cache (a hit would be copied by one engine and not the other)",
                    ));
                }
                let percent = m.percent.unwrap_or(100);
                if percent > 100 {
                    return Err(e.err(
                        format!("{p}.mirror.percent"),
                        percent,
                        "must be between 0 and 100",
                    ));
                }
                Some(super::MirrorSpec { upstream, percent })
            }
        };
        let methods = match &r.methods {
            None => None,
            Some(list) => Some(methods(e, &format!("{p}.methods"), list)?),
        };
        routes.push(RouteSpec {
            methods,
            listener,
            host,
            path_prefix,
            upstream,
            split,
            match_headers,
            match_cookies,
            max_body_size: r
                .max_body_size
                .map(|s| s.0)
                .unwrap_or(DEFAULT_MAX_BODY_SIZE),
            cache: match &r.cache {
                Some(c) => cache::validate_cache(e.file, &format!("{p}.cache"), c, store)?,
                None => None,
            },
            mirror,
            compression: match &r.compression {
                Some(c) => super::compression::validate(e, &format!("{p}.compression"), c)?,
                None => None,
            },
        });
    }
    Ok(routes)
}

/// A route's `methods`: a non-empty list of method tokens (RFC 9110 §9.1), HEAD added
/// where GET is (a HEAD is a GET without the body, as nginx's `limit_except GET` allows it).
fn methods(e: &Errs, path: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    if list.is_empty() {
        return Err(e.err(path, "[]", "must name at least one method"));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len() + 1);
    for (i, m) in list.iter().enumerate() {
        let token = !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(e.err(
                format!("{path}[{i}]"),
                m,
                "must be a method name (a token, such as GET)",
            ));
        }
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(e.err(
                format!("{path}[{i}]"),
                m,
                "methods are case-sensitive and the standard ones upper case (GET, not get)",
            ));
        }
        if m == "CONNECT" {
            return Err(e.err(
                format!("{path}[{i}]"),
                m,
                "CONNECT is for forward_proxy listeners, not routes",
            ));
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    if out.iter().any(|m| m == "GET") && !out.iter().any(|m| m == "HEAD") {
        out.push("HEAD".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn splits_and_matches_are_checked() {
        let ups = "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}, {name: b, backends: [{address: 127.0.0.1:2}]}]\n";
        let ok = format!("{BASE}{ups}routes: [{{listener: web, split: [{{upstream: a, weight: 9}}, {{upstream: b, weight: 1}}], match: {{headers: {{X-A: '1'}}, cookies: {{c: '2'}}}}}}]\n");
        let c = Config::from_yaml("x.yaml", &ok).unwrap();
        assert_eq!(c.routes[0].split, vec![(0, 9), (1, 1)]);
        assert_eq!(
            c.routes[0].match_headers,
            vec![("x-a".to_string(), "1".to_string())]
        );
        for (route, path, value) in [
            (
                "{listener: web, upstream: a, split: [{upstream: b, weight: 1}]}",
                "routes[0].split",
                "",
            ),
            (
                "{listener: web, split: [{upstream: a, weight: 0}]}",
                "routes[0].split[0].weight",
                "0",
            ),
            (
                "{listener: web, split: [{upstream: z, weight: 1}]}",
                "routes[0].split[0].upstream",
                "z",
            ),
            ("{listener: web}", "routes[0].upstream", ""),
            (
                "{listener: web, upstream: a, match: {headers: {'bad name': x}}}",
                "routes[0].match.headers",
                "bad name",
            ),
        ] {
            let y = format!("{BASE}{ups}routes: [{route}]\n");
            let err = Config::from_yaml("x.yaml", &y).unwrap_err();
            assert_eq!(
                (err.path.as_str(), err.value.as_str()),
                (path, value),
                "{route}"
            );
        }
    }

    #[test]
    fn mirrors_are_checked() {
        let ups = "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}, {name: s, backends: [{address: 127.0.0.1:2}]}, {name: t, tls: true, sni: x, backends: [{address: 127.0.0.1:3}]}]\n";
        let ok = format!(
            "{BASE}{ups}routes: [{{listener: web, upstream: a, mirror: {{upstream: s}}}}]\n"
        );
        let c = Config::from_yaml("x.yaml", &ok).unwrap();
        let m = c.routes[0].mirror.expect("mirror");
        assert_eq!((m.upstream, m.percent), (1, 100));
        for (mirror, path, value) in [
            (
                "{upstream: s, percent: 101}",
                "routes[0].mirror.percent",
                "101",
            ),
            ("{upstream: z}", "routes[0].mirror.upstream", "z"),
            ("{upstream: t}", "routes[0].mirror.upstream", "t"),
        ] {
            let y =
                format!("{BASE}{ups}routes: [{{listener: web, upstream: a, mirror: {mirror}}}]\n");
            let err = Config::from_yaml("x.yaml", &y).unwrap_err();
            assert_eq!(
                (err.path.as_str(), err.value.as_str()),
                (path, value),
                "{mirror}"
            );
        }
        let cached = format!("{BASE}{ups}routes: [{{listener: web, upstream: a, cache: {{enabled: true}}, mirror: {{upstream: s}}}}]\n");
        let err = Config::from_yaml("x.yaml", &cached).unwrap_err();
        assert_eq!(err.path, "routes[0].mirror");
        let unknown = format!("{BASE}{ups}routes: [{{listener: web, upstream: a, mirror: {{upstream: s, share: 1}}}}]\n");
        assert!(Config::from_yaml("x.yaml", &unknown).is_err());
    }

    #[test]
    fn methods_are_checked() {
        let ups = "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n";
        let route = |m: &str| {
            format!("{BASE}{ups}routes: [{{listener: web, upstream: a, methods: {m}}}]\n")
        };
        let c = Config::from_yaml("x.yaml", &route("[GET, POST, GET, PURGE]")).unwrap();
        let want = ["GET", "POST", "PURGE", "HEAD"].map(String::from).to_vec();
        assert_eq!(c.routes[0].methods, Some(want));
        let c = Config::from_yaml(
            "x.yaml",
            &format!("{BASE}{ups}routes: [{{listener: web, upstream: a}}]\n"),
        )
        .unwrap();
        assert_eq!(c.routes[0].methods, None);
        for (m, path, value) in [
            ("[]", "routes[0].methods", "[]"),
            ("[GET, get]", "routes[0].methods[1]", "get"),
            ("['GET POST']", "routes[0].methods[0]", "GET POST"),
            ("[CONNECT]", "routes[0].methods[0]", "CONNECT"),
        ] {
            let err = Config::from_yaml("x.yaml", &route(m)).unwrap_err();
            assert_eq!(
                (err.path.as_str(), err.value.as_str()),
                (path, value),
                "{m}"
            );
        }
    }

    #[test]
    fn missing_upstream_reference() {
        let y = format!("{BASE}routes: [{{listener: web, upstream: nope}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "routes[0].upstream");
        assert_eq!(err.value, "nope");
    }
}
