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

/// The fields a response's `Connection` names, by every option, `close` included (a field
/// called `close`): hop-by-hop, so never stored (RFC 9110 §7.6.1).
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
#[path = "policy_tests.rs"]
mod tests;
