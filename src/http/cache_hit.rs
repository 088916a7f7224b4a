//! Fresh cache hits on the lean engine, one rule for HTTP/1, HTTP/2 and HTTP/3
//! ([`eligible`], [`lookup`]): a bodiless GET or HEAD on a cached route, with a plain
//! origin-form target and without conditional, `Range`, `Cache-Control`, `Pragma` or
//! `Authorization` fields, whose key (the general engine's key function) finds a complete
//! fresh entry without `Vary`. Each engine reads those traits off its own form of the head
//! (HTTP/1 from the raw head it scanned, which also needs exactly one printable `Host`). The
//! stored head gets `Age`, the route's status header (`HIT`) and, where it has none, `Date`.
//!
//! Anything else on a cached route goes to the general engine, whose cache phases store what
//! the backend answers.

use crate::cache::{self, policy as cache_policy, storage::FastHit};
use crate::http::Listener;
use crate::policy::fields::{self, Field};
use crate::policy::route::Route;
use pingora_http::RequestHeader;

/// Whether a request may be answered from the store at all. `not_for_hit`: it has a field
/// that asks more of the cache than a stored answer ([`Field::NotForHit`]).
pub fn eligible(get_or_head: bool, bodiless: bool, not_for_hit: bool, target: &str) -> bool {
    get_or_head && bodiless && !not_for_hit && crate::http::fast::plain_target(target)
}

/// The fresh entry for an [`eligible`] request to `route` (for `host` and `target`), if the
/// route caches and the store has one the lean engine may serve.
pub fn lookup<'r>(
    l: &Listener,
    route: &'r Route,
    host: &str,
    target: &str,
) -> Option<(FastHit, &'r cache::RouteCache)> {
    let c = route.cache.as_ref()?;
    let mut key = cache_policy::cache_key_origin_form(&l.name, l.tls, host, target);
    let h = cache::fast_hit(&mut key)?;
    (!h.has_header(&c.spec.status_header)).then_some((h, c))
}

/// The hit for an HTTP/2 or HTTP/3 request, if it may be answered from the store.
pub fn fresh_hit<'r>(
    l: &Listener,
    route: &'r Route,
    req: &RequestHeader,
    host: Option<&str>,
) -> Option<(FastHit, &'r cache::RouteCache)> {
    route.cache.as_ref()?;
    let method = req.method.as_str();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let bodiless = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    let not_for_hit = req
        .headers
        .keys()
        .any(|k| fields::classify(k.as_str().as_bytes()) == Field::NotForHit);
    if !eligible(
        method == "GET" || method == "HEAD",
        bodiless,
        not_for_hit,
        target,
    ) {
        return None;
    }
    lookup(l, route, host?, target)
}

/// The stored response as an HTTP/2 or HTTP/3 head, with `Age`, the status header and
/// `Date` (unless stored) added. The stored fields hold nothing connection-specific (RFC
/// 9113 8.2.2, RFC 9114 4.2): `Connection` and the fields it names, the other hop-by-hop
/// fields and `Upgrade` are dropped before a response is stored, and an entry framed by
/// `Transfer-Encoding` is never a fast hit; the HTTP/1 hit sends the same fields as they are.
pub fn head(h: &FastHit, c: &cache::RouteCache) -> Option<http::Response<()>> {
    let mut fields = h.fields().clone();
    fields.insert(http::header::AGE, http::HeaderValue::from(h.age()));
    fields.insert(
        c.spec.status_header.clone(),
        http::HeaderValue::from_static("HIT"),
    );
    if !h.has_header(&http::header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        fields.insert(http::header::DATE, http::HeaderValue::try_from(now).ok()?);
    }
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(h.status()).ok()?;
    *r.headers_mut() = fields;
    Some(r)
}
