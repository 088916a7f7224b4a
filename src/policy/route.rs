//! Host and longest-prefix routing, resolved once per listener at start-up, with the
//! optional conditions (`match`) and weighted splits of a route.

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
    /// Copies of the route's requests for a shadow upstream ([`super::mirror`]).
    pub mirror: Option<Arc<super::mirror::Mirror>>,
    /// Response compression ([`super::compress`]).
    pub compression: Option<Arc<crate::config::compression::CompressionSpec>>,
    /// `methods`: the ones the route takes (see [`Route::takes`]) and their `Allow` value.
    methods: Option<(Box<[String]>, Arc<str>)>,
    /// A split route: the positions of its members (this one first) and their weights.
    split: Vec<(usize, u32)>,
    match_headers: Vec<(String, String)>,
    match_cookies: Vec<(String, String)>,
}

impl Route {
    /// Whether the route's backends speak plain HTTP/1 (no TLS, no HTTP/2, no PROXY header):
    /// what the lean engine's upstream side writes.
    pub fn plain_backends(&self) -> bool {
        let s = &self.pool.spec;
        s.tls.is_none() && !s.http2 && s.send_proxy_protocol.is_none()
    }

    /// Whether the route takes a request of this method: one of its `methods`, or, without
    /// them, any but TRACE (answered 405, as nginx does: a backend that reflects a TRACE
    /// hands the request's cookies and credentials back to whatever script sent it).
    pub fn takes(&self, method: &str) -> bool {
        match &self.methods {
            Some((list, _)) => list.iter().any(|m| m == method),
            None => method != "TRACE",
        }
    }

    /// The `Allow` value of the route's 405: its `methods`, if it names them.
    pub fn allow(&self) -> Option<Arc<str>> {
        self.methods.as_ref().map(|(_, a)| a.clone())
    }

    fn matches(&self, f: &dyn Fields) -> bool {
        self.match_headers
            .iter()
            .all(|(k, v)| f.header(k) == Some(v.as_bytes()))
            && self
                .match_cookies
                .iter()
                .all(|(k, v)| f.cookie(k) == Some(v.as_bytes()))
    }
}

/// The request fields a route's `match` reads, from whatever form an engine holds them in.
pub trait Fields {
    /// The first field of this (lower-case) name.
    fn header(&self, name: &str) -> Option<&[u8]>;
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

/// No fields: for lookups that have none (benchmarks, tools).
pub struct NoFields;

impl Fields for NoFields {
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn cookie(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

impl Fields for pingora_http::RequestHeader {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| super::hash::cookie(v.as_bytes(), name))
    }
}

/// The fields of a head parsed in place.
pub struct ParsedFields<'a, 'b>(pub &'a [httparse::Header<'b>]);

impl Fields for ParsedFields<'_, '_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| super::hash::cookie(h.value, name))
    }
}

pub struct Router {
    /// Most specific host first, then longest prefix first; the first match wins. Then the
    /// members of split routes past their first, which are never scanned, only picked.
    routes: Vec<Route>,
    scanned: usize,
    index: super::route_index::Index,
}

impl Router {
    pub fn new(listener: usize, specs: &[RouteSpec], pools: &[Arc<Pool>]) -> Router {
        // one mirror per route in the config, its members' too
        let mirrors: Vec<Option<Arc<super::mirror::Mirror>>> = specs
            .iter()
            .map(|r| {
                let m = r.mirror?;
                Some(Arc::new(super::mirror::Mirror::new(
                    pools[m.upstream].clone(),
                    m.percent,
                )))
            })
            .collect();
        let route = |id: usize, r: &RouteSpec, upstream: usize| Route {
            mirror: mirrors[id].clone(),
            compression: r.compression.clone().map(Arc::new),
            id,
            pos: 0,
            label: format!("routes[{id}]"),
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            pool: pools[upstream].clone(),
            max_body_size: r.max_body_size,
            cache: r.cache.clone().map(crate::cache::RouteCache::new),
            methods: r
                .methods
                .as_ref()
                .map(|m| (m.clone().into_boxed_slice(), Arc::from(m.join(", ")))),
            split: Vec::new(),
            match_headers: r.match_headers.clone(),
            match_cookies: r.match_cookies.clone(),
        };
        let mine: Vec<(usize, &RouteSpec)> = specs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listener == listener)
            .collect();
        let mut routes: Vec<Route> = mine
            .iter()
            .map(|(id, r)| route(*id, r, r.upstream))
            .collect();
        // Among routes equal by host and prefix, one with `match` conditions is more specific
        // than one without; then config order decides (the sort is stable), so the first
        // whose `match` holds wins.
        let conditions = |r: &Route| r.match_headers.len() + r.match_cookies.len();
        routes.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
                .then((conditions(b) > 0).cmp(&(conditions(a) > 0)))
        });
        let scanned = routes.len();
        for (pos, r) in routes.iter_mut().enumerate() {
            r.pos = pos;
        }
        for pos in 0..scanned {
            let id = routes[pos].id;
            let Some((_, spec)) = mine.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            if spec.split.is_empty() {
                continue;
            }
            let mut members = vec![(pos, spec.split[0].1)];
            for &(upstream, weight) in &spec.split[1..] {
                let mut m = route(id, spec, upstream);
                m.pos = routes.len();
                members.push((m.pos, weight));
                routes.push(m);
            }
            routes[pos].split = members;
        }
        let index =
            super::route_index::Index::build(routes[..scanned].iter().map(|r| &r.host), &|p| {
                routes[p as usize].path_prefix.as_str()
            });
        Router {
            routes,
            scanned,
            index,
        }
    }

    /// `host` without port; `path` is the request path without its query; `fields` for
    /// routes with a `match`. Position of the first matching route, for [`Router::get`].
    #[inline]
    pub fn find(&self, host: &str, path: &str, fields: &(dyn Fields + Sync)) -> Option<usize> {
        let routes = &self.routes[..self.scanned];
        self.index.find(
            host,
            path,
            &|p| routes[p as usize].path_prefix.as_str(),
            &|p| {
                let r = &routes[p as usize];
                r.match_headers.is_empty() && r.match_cookies.is_empty() || r.matches(fields)
            },
        )
    }

    /// The route at `pos`; for a split route, one of its members: the one whose sticky
    /// upstream the request has a valid cookie of, else one chosen by weight.
    pub fn pick(&self, pos: usize, fields: &(dyn Fields + Sync)) -> Option<&Route> {
        let r = self.routes.get(pos)?;
        if r.split.is_empty() {
            return Some(r);
        }
        let mine = r.split.iter().find_map(|&(p, _)| {
            let m = self.routes.get(p)?;
            super::sticky::split_side(&m.pool, fields).then_some(m)
        });
        if mine.is_some() {
            return mine;
        }
        let total: u32 = r.split.iter().map(|(_, w)| w).sum();
        let mut at = rand::random::<u32>() % total.max(1);
        for &(p, w) in &r.split {
            if at < w {
                return self.routes.get(p);
            }
            at -= w;
        }
        Some(r)
    }

    #[inline]
    pub fn get(&self, pos: usize) -> Option<&Route> {
        self.routes.get(pos)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
