//! Host and longest-prefix routing, resolved once per listener at start-up.

use crate::config::{HostMatch, RouteSpec};
use crate::upstream::Pool;
use std::sync::Arc;

pub struct Route {
    /// Position in the config's `routes`, used as the metrics and log label.
    pub id: usize,
    /// Position in its listener's router, for [`Router::get`].
    pub pos: usize,
    pub label: String,
    pub host: HostMatch,
    pub path_prefix: String,
    pub pool: Arc<Pool>,
    pub max_body_size: u64,
    pub cache: Option<crate::cache::RouteCache>,
}

impl Route {
    /// Whether the route's backends speak plain HTTP/1 (no TLS, no HTTP/2, no PROXY header):
    /// what the lean engine's upstream side writes.
    pub fn plain_backends(&self) -> bool {
        let s = &self.pool.spec;
        s.tls.is_none() && !s.http2 && s.send_proxy_protocol.is_none()
    }
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
                pos: 0,
                label: format!("routes[{id}]"),
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                pool: pools[r.upstream].clone(),
                max_body_size: r.max_body_size,
                cache: r.cache.clone().map(crate::cache::RouteCache::new),
            })
            .collect();
        routes.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        for (pos, r) in routes.iter_mut().enumerate() {
            r.pos = pos;
        }
        Router { routes }
    }

    /// `host` without port; `path` is the request path without its query.
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
