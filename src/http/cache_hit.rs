//! Fresh cache hits over HTTP/2 and HTTP/3, by the lean engine's rule (the HTTP/1 lean
//! engine's, in `fast`): a bodiless GET or HEAD on a cached route, without conditional,
//! `Range`, `Cache-Control`, `Pragma` or `Authorization` fields, whose key (the general
//! engine's key function) finds a complete fresh entry without `Vary`. The stored head gets
//! `Age`, the route's status header (`HIT`) and, where it has none, `Date`.
//!
//! Anything else on a cached route goes to the general engine, whose cache phases store what
//! the backend answers.

use crate::cache::{self, policy as cache_policy, storage::FastHit};
use crate::http::Listener;
use crate::policy::fields::{self, Field};
use crate::policy::route::Route;
use pingora_http::RequestHeader;

/// The hit for this request, if it may be answered from the store.
pub fn fresh_hit<'r>(
    l: &Listener,
    route: &'r Route,
    req: &RequestHeader,
    host: Option<&str>,
) -> Option<(FastHit, &'r cache::RouteCache)> {
    let c = route.cache.as_ref()?;
    let method = req.method.as_str();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let bodiless = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    let eligible = (method == "GET" || method == "HEAD")
        && bodiless
        && crate::http::fast::plain_target(target)
        && !req
            .headers
            .keys()
            .any(|k| fields::classify(k.as_str().as_bytes()) == Field::NotForHit);
    if !eligible {
        return None;
    }
    let key = cache_policy::cache_key_origin_form(&l.name, l.tls, host?, target);
    let h = cache::fast_hit(&key)?;
    (!h.has_header(&c.spec.status_header)).then_some((h, c))
}

/// The stored response as an HTTP/2 or HTTP/3 head: connection-specific fields left out
/// (RFC 9113 8.2.2, RFC 9114 4.2), `Age`, the status header and `Date` (unless stored)
/// added.
pub fn head(h: &FastHit, c: &cache::RouteCache) -> Option<http::Response<()>> {
    let mut raw = h.head().to_vec();
    raw.extend_from_slice(b"\r\n");
    let mut hdrs = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut hdrs);
    resp.parse(&raw).ok()?;
    let mut r = http::Response::builder().status(resp.code?);
    for f in resp.headers.iter() {
        match fields::classify(f.name.as_bytes()) {
            Field::Connection | Field::HopByHop | Field::TransferEncoding | Field::Upgrade => {
                continue
            }
            _ => {}
        }
        r = r.header(f.name, f.value);
    }
    r = r
        .header(http::header::AGE, h.age())
        .header(c.spec.status_header.clone(), "HIT");
    if !h.has_header(&http::header::DATE) {
        r = r.header(
            http::header::DATE,
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
    }
    r.body(()).ok()
}
