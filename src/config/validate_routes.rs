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
        let upstream = upstreams
            .iter()
            .position(|u| u.name == r.upstream)
            .ok_or_else(|| {
                e.err(
                    format!("{p}.upstream"),
                    &r.upstream,
                    "no upstream has this name",
                )
            })?;
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
        routes.push(RouteSpec {
            listener,
            host,
            path_prefix,
            upstream,
            max_body_size: r
                .max_body_size
                .map(|s| s.0)
                .unwrap_or(DEFAULT_MAX_BODY_SIZE),
            cache: match &r.cache {
                Some(c) => cache::validate_cache(e.file, &format!("{p}.cache"), c, store)?,
                None => None,
            },
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn missing_upstream_reference() {
        let y = format!("{BASE}routes: [{{listener: web, upstream: nope}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "routes[0].upstream");
        assert_eq!(err.value, "nope");
    }
}
