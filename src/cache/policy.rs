//! What may be stored, for how long, and under which key: RFC 9111 for a shared cache.
//!
//! Pingora's `filters::resp_cacheable` takes its default TTL from a plain `fn` pointer, so a
//! per-route `default_ttl` cannot be expressed with it; this module makes the whole decision
//! itself, reusing pingora-cache's Cache-Control parser and its `CacheMeta`.
//!
//! Decisions, in order:
//! - Only final, complete responses: no 1xx, 206 or 304.
//! - `no-store`, `private` (unqualified) and `Vary: *` are never stored.
//! - A request with `Authorization` is stored only when the response says `public`,
//!   `s-maxage` or `must-revalidate` (RFC 9111 §3.5).
//! - A response with `Set-Cookie` is stored only when it says `public`, and the stored copy
//!   loses its `Set-Cookie` so that one client's cookie is never replayed to another.
//! - Which field governs (RFC 9213): the route's `targeted_header` if the response has it with
//!   a valid, non-empty value, else `CDN-Cache-Control` likewise, else `Cache-Control` and
//!   `Expires`. A targeted field that governs makes this cache ignore `Cache-Control` and
//!   `Expires` entirely; both still reach the client unchanged.
//! - Freshness: `no-cache` means stored but always revalidated; then `s-maxage`, `max-age`,
//!   `Expires` (relative to the origin's `Date`). Only when none is present, and the status is
//!   cacheable by default (RFC 9110 §15.1), does the route's `default_ttl` apply; a zero
//!   `default_ttl` means such responses are not stored.
//! - Age (RFC 9111 §4.2.3): an `Age` the response arrived with is its initial age. The entry's
//!   epoch (`CacheMeta::epoch`, which both engines' `Age` is counted from) is set that far in
//!   the past, so a hit's `Age` is the received age plus the time resident, and the freshness
//!   lifetime is used up by both. An invalid `Age` (anything but digits, or several values)
//!   is ignored (§5.1). The apparent age from `Date` is not used: clocks disagree.
//! - `stale-while-revalidate` / `stale-if-error` windows come from the response and are
//!   closed by `must-revalidate`, `proxy-revalidate` and `s-maxage`.
//! - Never stored: the hop-by-hop fields and those the response's `Connection` names,
//!   `Set-Cookie`, `Age` (regenerated per hit).
//! - A 304 that revalidates an entry updates its stored fields ([`merge_not_modified`]).

use crate::config::cache::CacheSpec;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Headers that describe one connection or one client and must not be replayed from a store:
/// the hop-by-hop fields (RFC 9111 §3.1), `Set-Cookie` and `Age` (a hit generates its own).
const NOT_STORED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "set-cookie",
    "age",
];

/// Fields of a revalidating 304 that do not replace the stored ones (RFC 9111 §3.2): those
/// the stored body depends on (its framing and coding), `Vary` (the variant is kept as it
/// was stored), and `Set-Cookie`, which is one client's and never stored (merged in, it
/// would make a non-`public` entry uncacheable over a cookie nobody else gets).
const NOT_UPDATED: [&str; 6] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "vary",
    "set-cookie",
];

/// The fields a response's `Connection` names (other than the `close` / `keep-alive` /
/// `upgrade` options): hop-by-hop, so never stored (RFC 9110 §7.6.1).
fn connection_nominated(headers: &http::HeaderMap) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            if let Ok(n) = http::HeaderName::from_bytes(t.trim_ascii()) {
                out.push(n);
            }
        }
    }
    out
}

/// The `Age` a response arrived with, if valid: one value of digits only (RFC 9111 §5.1),
/// capped at 2^31 seconds as §1.2.2 allows. Anything else is ignored, so it can neither make
/// a stale response fresh nor a fresh one stale.
pub fn received_age(resp: &ResponseHeader) -> Option<Duration> {
    let mut all = resp.headers.get_all(http::header::AGE).iter();
    let v = all.next()?.as_bytes().trim_ascii();
    if all.next().is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = std::str::from_utf8(v)
        .ok()?
        .parse::<u64>()
        .unwrap_or(u64::MAX)
        .min(1 << 31);
    Some(Duration::from_secs(secs))
}

/// The directives this cache obeys (RFC 9213 §2.2): the first of `targeted` (the route's
/// `targeted_header`) and `CDN-Cache-Control` present with a valid, non-empty value, else
/// `Cache-Control`. The flag says a targeted field governs, so `Expires` is ignored too.
fn governing(
    resp: &ResponseHeader,
    targeted: Option<&http::HeaderName>,
) -> (Option<CacheControl>, bool) {
    let cdn = http::HeaderName::from_static("cdn-cache-control");
    for name in targeted.into_iter().chain(std::iter::once(&cdn)) {
        let nonempty = resp
            .headers
            .get_all(name)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty());
        if !nonempty {
            continue;
        }
        if let Some(cc) = CacheControl::from_resp_headers_named(name.as_str(), resp) {
            return (Some(cc), true);
        }
    }
    (CacheControl::from_resp_headers(resp), false)
}

/// The stored response's head after a revalidating 304 (RFC 9111 §4.3.4): each field the
/// 304 carries replaces every stored instance of it, except those in [`NOT_UPDATED`];
/// everything else, and the status, stays as stored. [`response_cacheable`] then decides on
/// the result as on any response, which also drops what is never stored (`Set-Cookie`...).
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> ResponseHeader {
    let mut out = stored.clone();
    let names: Vec<&http::HeaderName> = not_modified
        .headers
        .keys()
        .filter(|n| !NOT_UPDATED.contains(&n.as_str()))
        .collect();
    for name in names {
        out.remove_header(name);
        for v in not_modified.headers.get_all(name) {
            // a value that came in a valid header map is valid again
            let _ = out.append_header(name.clone(), v.clone());
        }
    }
    out
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), minus 206,
/// which this cache never stores because it fetches whole objects.
fn cacheable_by_default(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether a request may use the cache at all. Other requests are BYPASS.
pub fn request_cacheable(req: &RequestHeader) -> bool {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return false;
    }
    // The client asked that nothing about this exchange be stored.
    !CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store())
}

/// The primary key: namespace (the listener, so two listeners never share entries), scheme,
/// host (lower-cased, default port dropped), path and query.
pub fn cache_key(namespace: &str, tls: bool, req: &RequestHeader) -> CacheKey {
    CacheKey::new(key_text(namespace, tls, req, None), "")
}

/// [`cache_key`] for an origin-form request (`target` starts with `/`) with this Host value,
/// from the raw parts the HTTP/1 fast path parsed. Same text, through [`key_text_parts`].
pub fn cache_key_origin_form(namespace: &str, tls: bool, host: &str, target: &str) -> CacheKey {
    CacheKey::new(key_text_parts(namespace, tls, None, Some(host), target), "")
}

/// The key text, optionally with the path and query replaced by `path` (used by purges).
///
/// Scheme and host come from an absolute-form target when there is one (a forward proxy's
/// `GET http://host:port/path`): Pingora keeps such a target verbatim in `raw_path` and
/// only the path and query in `uri`, so without this every origin's `/` would share a key
/// whenever a Host header disagreed with, or was missing from, the target.
pub fn key_text(namespace: &str, tls: bool, req: &RequestHeader, path: Option<&str>) -> String {
    use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
    let absolute = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => Some((
            String::from_utf8_lossy(scheme).into_owned(),
            String::from_utf8_lossy(authority).into_owned(),
        )),
        _ => None,
    };
    let scheme = absolute
        .as_ref()
        .map(|(s, _)| s.as_str())
        .or_else(|| req.uri.scheme_str());
    let host = absolute
        .as_ref()
        .map(|(_, a)| a.as_str())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
    let path = path.unwrap_or_else(|| req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    key_text_parts(namespace, tls, scheme, host, path)
}

/// The key text from a request's parts: the scheme and host the target named (or `None`),
/// else the Host header's value, and the path and query. [`key_text`] (the general path) and
/// the HTTP/1 fast path both build keys here, so the two can never disagree.
pub fn key_text_parts(
    namespace: &str,
    tls: bool,
    scheme: Option<&str>,
    host: Option<&str>,
    path: &str,
) -> String {
    let scheme = scheme.unwrap_or(if tls { "https" } else { "http" });
    let host = host.unwrap_or("").trim();
    let mut out =
        String::with_capacity(namespace.len() + scheme.len() + host.len() + path.len() + 4);
    out.push_str(namespace);
    out.push(' ');
    let s0 = out.len();
    out.push_str(scheme);
    out[s0..].make_ascii_lowercase();
    let https = &out[s0..] == "https";
    out.push_str("://");
    let h0 = out.len();
    out.push_str(host);
    out[h0..].make_ascii_lowercase();
    let default_port = if https { ":443" } else { ":80" };
    if out[h0..].ends_with(default_port) {
        out.truncate(out.len() - default_port.len());
    }
    out.push_str(path);
    out
}

/// The variant a request selects among the responses stored for its URL: the values of the
/// request headers the response named in `Vary`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for v in meta.headers().get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for name in v.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    let mut b = VarianceBuilder::new();
    for name in names {
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(v.as_bytes());
        }
        b.add_owned_name_value(name, value);
    }
    b.finalize()
}

fn uncacheable() -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)
}

fn http_date(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<SystemTime> {
    let mut all = resp.headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
}

/// Decide whether `resp` (the answer to `req`) is stored, and build its metadata.
pub fn response_cacheable(
    req: &RequestHeader,
    resp: &ResponseHeader,
    spec: &CacheSpec,
) -> RespCacheable {
    let status = resp.status.as_u16();
    if status < 200 || status == 206 || status == 304 {
        return uncacheable();
    }
    let (cc, targeted) = governing(resp, spec.targeted_header.as_ref());
    if cc.as_ref().is_some_and(|c| c.no_store() || c.private()) {
        return uncacheable();
    }
    let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|n| n.trim_ascii() == b"*")
    });
    if vary_star {
        return uncacheable();
    }
    let public = cc.as_ref().is_some_and(|c| c.public());
    if req.headers.contains_key(http::header::AUTHORIZATION)
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return uncacheable();
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) && !public {
        return uncacheable();
    }

    let now = SystemTime::now();
    // a governing targeted field makes Expires irrelevant (RFC 9213 §2.2)
    let expires = !targeted && resp.headers.contains_key(http::header::EXPIRES);
    let explicit = cc.as_ref().and_then(|c| c.fresh_duration()).or_else(|| {
        // RFC 9111 §5.3: an invalid Expires means "already expired".
        if !expires {
            return None;
        }
        let expires = http_date(resp, http::header::EXPIRES)?;
        let date = http_date(resp, http::header::DATE).unwrap_or(now);
        Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
    });
    let explicit = explicit.or_else(|| expires.then_some(Duration::ZERO));
    let ttl = match explicit {
        Some(t) => t,
        None if cacheable_by_default(status) && !spec.default_ttl.is_zero() => spec.default_ttl,
        None => return uncacheable(),
    };
    let age = received_age(resp).unwrap_or(Duration::ZERO);
    // the entry's age is counted from here: received Age plus time resident
    let epoch = now
        .checked_sub(age)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let ttl = ttl.saturating_sub(age);
    let fresh_until = if ttl.is_zero() {
        // stored, but stale from the start: every use revalidates
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    } else {
        now + ttl
    };
    let secs = |d: Option<Duration>| {
        d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0)
    };
    let swr = secs(
        cc.as_ref()
            .and_then(|c| c.serve_stale_while_revalidate_duration()),
    );
    let sie = secs(cc.as_ref().and_then(|c| c.serve_stale_if_error_duration()));

    let mut stored = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut stored);
    }
    for name in connection_nominated(&resp.headers) {
        stored.remove_header(&name);
    }
    for name in NOT_STORED {
        stored.remove_header(name);
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, stored);
    if epoch != now {
        meta.set_epoch_override(epoch);
    }
    RespCacheable::Cacheable(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;

    fn spec(default_ttl: u64) -> CacheSpec {
        CacheSpec {
            max_object_size: 1 << 20,
            default_ttl: Duration::from_secs(default_ttl),
            status_header: http::HeaderName::from_static("x-cache-status"),
            purge_from: vec![],
            targeted_header: None,
        }
    }

    fn get(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        r.insert_header("host", "Example.COM:80").unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(c: RespCacheable) -> Option<i64> {
        match c {
            RespCacheable::Cacheable(m) => Some(
                m.fresh_until()
                    .duration_since(SystemTime::now())
                    .map(|d| d.as_secs_f64().round() as i64)
                    .unwrap_or(0),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    fn decide(req: &[(&str, &str)], status: u16, h: &[(&str, &str)], ttl: u64) -> Option<i64> {
        fresh_secs(response_cacheable(&get(req), &resp(status, h), &spec(ttl)))
    }

    #[test]
    fn key_covers_scheme_host_path_and_query() {
        assert_eq!(
            key_text("web", false, &get(&[]), None),
            "web http://example.com/a?b=1"
        );
        assert_eq!(
            key_text("web", true, &get(&[]), None),
            "web https://example.com:80/a?b=1"
        );
    }

    #[test]
    fn origin_form_parts_give_the_general_key() {
        for (target, host, tls) in [
            ("/a?b=1", "Example.COM:80", false),
            ("/a?b=1", "Example.COM:80", true),
            ("/", "h.test:443", true),
            ("/x/%20y?q=a&r=b", " Mixed.Case:8080 ", false),
            ("/p", "[::1]:80", false),
        ] {
            let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            r.insert_header("host", host).unwrap();
            assert_eq!(
                cache_key("web", tls, &r).primary_bin(),
                cache_key_origin_form("web", tls, host, target).primary_bin(),
                "{target} {host} {tls}"
            );
            assert_eq!(
                key_text("web", tls, &r, None),
                key_text_parts("web", tls, None, Some(host), target)
            );
        }
    }

    #[test]
    fn freshness_sources() {
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=60")], 0),
            Some(60)
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=60, s-maxage=30")], 0),
            Some(30)
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("age", "20")],
                0
            ),
            Some(40)
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
                ],
                0
            ),
            Some(60)
        );
        assert_eq!(decide(&[], 200, &[("expires", "garbage")], 0), Some(0));
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-cache")], 0),
            Some(0)
        );
    }

    #[test]
    fn default_ttl_only_without_freshness_and_for_default_statuses() {
        assert_eq!(decide(&[], 200, &[], 0), None);
        assert_eq!(decide(&[], 200, &[], 30), Some(30));
        assert_eq!(decide(&[], 404, &[], 30), Some(30));
        assert_eq!(decide(&[], 302, &[], 30), None);
        assert_eq!(decide(&[], 500, &[], 30), None);
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=5")], 30),
            Some(5)
        );
    }

    #[test]
    fn never_stored() {
        let h = [("cache-control", "max-age=60")];
        assert_eq!(decide(&[], 206, &h, 0), None);
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-store, max-age=60")], 0),
            None
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "private, max-age=60")], 0),
            None
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                0
            ),
            None
        );
        assert_eq!(decide(&[("authorization", "x")], 200, &h, 0), None);
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                0
            ),
            None
        );
    }

    #[test]
    fn public_allows_authorization_and_cookies_but_drops_the_cookie() {
        let h = [
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "a=b"),
        ];
        let c = response_cacheable(&get(&[("authorization", "x")]), &resp(200, &h), &spec(0));
        let RespCacheable::Cacheable(m) = c else {
            panic!("should be stored")
        };
        assert!(m.headers().get("set-cookie").is_none());
    }

    fn stored(c: RespCacheable) -> CacheMeta {
        match c {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("not stored: {r:?}"),
        }
    }

    #[test]
    fn received_age_is_digits_only() {
        let age = |v: &[&str]| {
            let h: Vec<(&str, &str)> = v.iter().map(|v| ("age", *v)).collect();
            received_age(&resp(200, &h)).map(|d| d.as_secs())
        };
        assert_eq!(age(&["100"]), Some(100));
        assert_eq!(age(&[" 7 "]), Some(7));
        assert_eq!(age(&["99999999999999999999999"]), Some(1 << 31));
        for bad in ["10abc", "-1", "1.5", "", "0x10"] {
            assert_eq!(age(&[bad]), None, "{bad:?}");
        }
        assert_eq!(age(&["1", "2"]), None, "several values");
        assert_eq!(age(&[]), None);
        // an invalid Age neither shortens nor lengthens freshness
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=5"), ("age", "10abc")],
                0
            ),
            Some(5)
        );
    }

    #[test]
    fn the_received_age_is_where_the_entry_s_age_starts() {
        let m = stored(response_cacheable(
            &get(&[]),
            &resp(200, &[("cache-control", "max-age=3600"), ("age", "100")]),
            &spec(0),
        ));
        assert_eq!(m.age().as_secs(), 100);
        assert_eq!(
            m.fresh_sec(),
            3600,
            "the lifetime counts from the same epoch"
        );
        assert!(m.headers().get("age").is_none(), "Age is generated per hit");
        let m = stored(response_cacheable(
            &get(&[]),
            &resp(200, &[("cache-control", "max-age=60")]),
            &spec(0),
        ));
        assert_eq!(m.age().as_secs(), 0);
    }

    #[test]
    fn targeted_fields_govern_ahead_of_cache_control() {
        fn h(cc: &'static str, cdn: &'static str) -> Vec<(&'static str, &'static str)> {
            vec![("cache-control", cc), ("cdn-cache-control", cdn)]
        }
        assert_eq!(
            decide(&[], 200, &h("public, max-age=60", "no-store"), 0),
            None
        );
        assert_eq!(decide(&[], 200, &h("max-age=60", "private"), 0), None);
        assert_eq!(decide(&[], 200, &h("no-store", "max-age=30"), 0), Some(30));
        assert_eq!(
            decide(&[], 200, &h("private", "s-maxage=20, max-age=30"), 0),
            Some(20)
        );
        assert_eq!(decide(&[], 200, &h("max-age=60", "no-cache"), 0), Some(0));
        // an empty targeted field does not apply
        assert_eq!(decide(&[], 200, &h("max-age=60", " "), 0), Some(60));
        // a targeted field that governs makes Expires irrelevant as well
        let exp = [
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ("cdn-cache-control", "public"),
        ];
        assert_eq!(decide(&[], 200, &exp, 0), None);
        assert_eq!(decide(&[], 200, &exp, 10), Some(10));

        let mut sp = spec(0);
        sp.targeted_header = Some(http::HeaderName::from_static("stepstone-cache-control"));
        let with =
            |h: &[(&str, &str)]| fresh_secs(response_cacheable(&get(&[]), &resp(200, h), &sp));
        let mut t = h("max-age=60", "max-age=60");
        t.push(("stepstone-cache-control", "no-store"));
        assert_eq!(with(&t), None);
        let mut t = h("no-store", "no-store");
        t.push(("stepstone-cache-control", "max-age=40"));
        assert_eq!(with(&t), Some(40));
        // without the route's field, CDN-Cache-Control still governs
        assert_eq!(with(&h("max-age=60", "max-age=10")), Some(10));
        // the client still gets Cache-Control as sent
        let m = stored(response_cacheable(&get(&[]), &resp(200, &t), &sp));
        assert_eq!(m.headers().get("cache-control").unwrap(), "no-store");
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_not_stored() {
        let m = stored(response_cacheable(
            &get(&[]),
            &resp(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("connection", "x-private, close"),
                    ("x-private", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("trailer", "x-sum"),
                    ("upgrade", "foo"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-authorization", "Basic x"),
                    ("x-kept", "1"),
                ],
            ),
            &spec(0),
        ));
        let names: Vec<&str> = m.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["cache-control", "x-kept"]);
    }

    #[test]
    fn a_304_updates_every_stored_field_but_the_body_s() {
        let stored = resp(
            200,
            &[
                ("content-length", "5"),
                ("content-encoding", "gzip"),
                ("etag", "\"a\""),
                ("x-version", "1"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("x-same", "s"),
                ("vary", "accept"),
            ],
        );
        let nm = resp(
            304,
            &[
                ("content-length", "0"),
                ("content-encoding", "br"),
                ("etag", "\"b\""),
                ("x-version", "2"),
                ("x-multi", "c"),
                ("x-new", "n"),
                ("vary", "x"),
                ("set-cookie", "s=1"),
            ],
        );
        let m = merge_not_modified(&stored, &nm);
        let h = |n: &str| {
            m.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(m.status.as_u16(), 200);
        assert_eq!(h("content-length"), ["5"]);
        assert_eq!(h("content-encoding"), ["gzip"]);
        assert_eq!(h("vary"), ["accept"]);
        assert_eq!(h("etag"), ["\"b\""]);
        assert_eq!(h("x-version"), ["2"]);
        assert_eq!(h("x-multi"), ["c"]);
        assert_eq!(h("x-same"), ["s"]);
        assert_eq!(h("x-new"), ["n"]);
        assert!(h("set-cookie").is_empty());
        // a 304's cookie does not make the merged head uncacheable
        let fresh = merge_not_modified(
            &stored,
            &resp(
                304,
                &[("cache-control", "max-age=9"), ("set-cookie", "s=1")],
            ),
        );
        assert_eq!(
            fresh_secs(response_cacheable(&get(&[]), &fresh, &spec(0))),
            Some(9)
        );
    }

    #[test]
    fn stale_windows() {
        let c = response_cacheable(
            &get(&[]),
            &resp(
                200,
                &[(
                    "cache-control",
                    "max-age=1, stale-while-revalidate=5, stale-if-error=60",
                )],
            ),
            &spec(0),
        );
        let RespCacheable::Cacheable(m) = c else {
            panic!()
        };
        assert_eq!(m.stale_while_revalidate_sec(), 5);
        assert_eq!(m.stale_if_error_sec(), 60);
        let c = response_cacheable(
            &get(&[]),
            &resp(
                200,
                &[(
                    "cache-control",
                    "max-age=1, must-revalidate, stale-if-error=60",
                )],
            ),
            &spec(0),
        );
        let RespCacheable::Cacheable(m) = c else {
            panic!()
        };
        assert_eq!(m.stale_if_error_sec(), 0);
    }

    #[test]
    fn variance_follows_vary() {
        let RespCacheable::Cacheable(m) = response_cacheable(
            &get(&[]),
            &resp(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            ),
            &spec(0),
        ) else {
            panic!()
        };
        let en = variance(&m, &get(&[("accept-language", "en")]));
        let fr = variance(&m, &get(&[("accept-language", "fr")]));
        assert!(en.is_some());
        assert_ne!(en, fr);
        assert_eq!(
            en,
            variance(&m, &get(&[("accept-language", "en"), ("x", "y")]))
        );
    }

    #[test]
    fn absolute_form_targets_key_on_their_own_scheme_host_and_port() {
        let abs = |target: &[u8], host: Option<&str>| {
            let mut r = RequestHeader::build("GET", target, None).unwrap();
            if let Some(h) = host {
                r.insert_header("host", h).unwrap();
            }
            key_text("fwd", false, &r, None)
        };
        assert_eq!(
            abs(b"http://Origin.Test:8080/p?q=1", Some("origin.test:8080")),
            "fwd http://origin.test:8080/p?q=1"
        );
        // the default port is dropped, as for origin-form keys
        assert_eq!(abs(b"http://o.test:80/p", None), "fwd http://o.test/p");
        // two origins, same path: different keys, whatever Host says
        assert_ne!(
            abs(b"http://127.0.0.1:1001/same", Some("x.test")),
            abs(b"http://127.0.0.1:1002/same", Some("x.test"))
        );
    }
}
