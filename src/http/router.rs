//! Host and longest-prefix routing, resolved once per listener at start-up.

use crate::config::{HostMatch, RouteSpec};
use crate::upstream::Pool;
use std::sync::Arc;

pub struct Route {
    /// Position in the config's `routes`, used as the metrics and log label.
    pub id: usize,
    pub label: String,
    pub host: HostMatch,
    pub path_prefix: String,
    pub pool: Arc<Pool>,
    pub max_body_size: u64,
    pub cache: Option<super::cache::RouteCache>,
}

pub struct Router {
    /// Most specific host first, then longest prefix first; the first match wins.
    routes: Vec<Route>,
}

impl Router {
    pub fn new(listener: usize, specs: &[RouteSpec], pools: &[Arc<Pool>]) -> Router {
        let mut routes: Vec<Route> = specs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listener == listener)
            .map(|(id, r)| Route {
                id,
                label: format!("routes[{id}]"),
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                pool: pools[r.upstream].clone(),
                max_body_size: r.max_body_size,
                cache: r.cache.clone().map(super::cache::RouteCache::new),
            })
            .collect();
        routes.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        Router { routes }
    }

    /// `host` without port; `path` is the request path (query included is fine).
    /// Position of the first matching route, for [`Router::get`].
    #[inline]
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.host.matches(host) && path.starts_with(r.path_prefix.as_str()))
    }

    #[inline]
    pub fn get(&self, pos: usize) -> Option<&Route> {
        self.routes.get(pos)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The host a request is for, without port: the URI authority (HTTP/2, absolute form) or
/// the Host header.
pub fn request_host(req: &pingora_http::RequestHeader) -> &str {
    let raw = req
        .uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    strip_port(raw)
}

pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
