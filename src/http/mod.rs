//! The HTTP engines of a reverse-proxy listener, over one request policy
//! ([`crate::policy`]):
//! - the lean engine ([`fast`]): plain HTTP/1.1 requests, WebSocket handshakes, fresh cache
//!   hits and bodiless HTTP/2 streams, parsed in place and exchanged with plain HTTP/1
//!   backends;
//! - Pingora's general proxy ([`phases`]): everything else, through a `ProxyHttp` whose
//!   phases each call the policy in a few lines.
//!
//! Which engine serves a request is decided once, by [`crate::policy::engine`]. Before
//! either sees an HTTP/1 head, the request-head guard ([`guard`]) has applied the listener's
//! limits and the head checks ([`crate::policy::head`]).

pub mod cache_hit;
pub mod chunked;
pub mod encode;
pub mod fast;
pub mod guard;
pub mod h2conn;
pub mod h2scan;
pub mod h3;
mod idle;
pub mod phases;
pub mod redirect;
pub mod service;
pub mod staged;

use crate::cache;
use crate::config::ListenerSpec;
use crate::forward::{Forward, FwdCtx};
use crate::policy::route::{Route, Router};
use crate::policy::{ListenerPolicy, RateCount};
use crate::upstream::Pick;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;

/// An HTTP listener: its policy, and the forward proxy when it is one.
pub struct Listener {
    pub policy: ListenerPolicy,
    pub forward: Option<Arc<Forward>>,
    /// Where the per-IP rate limit is counted with the rest of the fleet.
    rate_store: Option<Arc<crate::net::ratestore::Store>>,
}

impl std::ops::Deref for Listener {
    type Target = ListenerPolicy;
    fn deref(&self) -> &ListenerPolicy {
        &self.policy
    }
}

impl Listener {
    pub fn new(spec: &ListenerSpec, router: Router, tls: bool) -> Listener {
        Listener {
            policy: ListenerPolicy::new(spec, router, tls),
            forward: spec.forward.as_ref().map(|f| Forward::new(&spec.name, f)),
            rate_store: spec
                .limits
                .rate_limit_store
                .as_ref()
                .map(crate::net::ratestore::Store::shared),
        }
    }

    /// The count the rate limit decides this client's request on: the shared store's, or
    /// this instance's when there is no store or it did not answer in time.
    pub async fn rate_count(&self, client: Option<IpAddr>) -> RateCount {
        match (&self.rate_store, client) {
            (Some(s), Some(ip)) => match s.count(&self.policy.name, ip).await {
                Some(n) => RateCount::Shared(n),
                None => RateCount::Local,
            },
            _ => RateCount::Local,
        }
    }
}

pub struct HttpProxy {
    /// Shared with the listener's lean engine.
    pub listener: Arc<Listener>,
}

#[derive(Default)]
pub struct Ctx {
    /// Position of the chosen route in the listener's router.
    route: Option<usize>,
    pick: Option<Pick>,
    /// Backends that failed for this request (bit per slot index).
    tried: u64,
    /// Those of them that refused the connection: never tried again for this request.
    refused: u64,
    attempts: u32,
    /// When the first try began (the whole of the tries is bounded by `read_timeout`).
    started: Option<std::time::Instant>,
    /// A final response head came through: nothing is retried since (a forwarded 1xx does
    /// not count: the final response may still come from another backend).
    head_seen: bool,
    /// `upstream_response_filter` turned the backend's answer into an error to retry.
    retrying: bool,
    /// The pool's queue was full or its wait ran out: the answer says when to retry.
    overloaded: bool,
    /// Connects this machine refused ([`crate::policy::shortage`]), and the pause before
    /// the next one.
    shortage: Option<crate::policy::shortage::Shortage>,
    pause: Option<std::time::Duration>,
    /// The last connect failure, for the answer when no backend is left.
    last_connect: Option<crate::policy::answer::Failure>,
    hash: u64,
    /// The request's sticky cookie ([`crate::policy::sticky`]).
    sticky: crate::policy::sticky::Affinity,
    /// The encoder of a response the policy compresses ([`crate::policy::compress`]).
    encoder: Option<encode::Encoder>,
    /// The copy for the route's mirror while the request body arrives.
    mirror: Option<crate::policy::mirror::Pending>,
    /// The `Upgrade` of a handshake the proxy relays (WebSocket or another protocol).
    upgrade: Option<http::HeaderValue>,
    pub fwd: FwdCtx,
    body_bytes: u64,
    /// A 304 that answered this request's revalidation of a stale entry, kept from
    /// `upstream_response_filter` for `response_cache_filter` ([`cache::RouteCache::revalidated`]).
    not_modified: Option<Box<pingora_http::ResponseHeader>>,
    /// Metrics and access-log bookkeeping; counts the request in flight while it lives.
    obs: crate::observability::RequestObs,
}

impl Ctx {
    pub fn backend_label(&self) -> Option<&str> {
        self.pick.as_ref().map(|p| p.slot.label.as_str())
    }
}

impl HttpProxy {
    fn route(&self, ctx: &Ctx) -> Option<&Route> {
        ctx.route.and_then(|i| self.listener.router.get(i))
    }

    /// The cache for this request: the forward proxy's on a forward listener (CONNECT never
    /// gets this far), else the chosen route's.
    fn route_cache(&self, ctx: &Ctx) -> Option<&cache::RouteCache> {
        if let Some(f) = &self.listener.forward {
            return f.cache.as_ref();
        }
        self.route(ctx).and_then(|r| r.cache.as_ref())
    }
}

pub use crate::net::respond::{respond, respond_answer};

pub(crate) fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| crate::policy::fields::parse_len(v.as_bytes()))
}

/// What the backend is told of an HTTP/2 or HTTP/3 request body's length.
#[derive(Clone, Copy)]
pub enum BodyLength {
    /// The request's own Content-Length field, if it has one.
    AsSent,
    /// Nothing: the request's field, if any, is dropped.
    Dropped,
    /// This length, in place of the request's field.
    Is(u64),
}

/// The HTTP/1.1 head that an HTTP/2 or HTTP/3 request goes to its backend with, written by
/// [`UpstreamHead::write`]: one rendering for both lean engines.
pub struct UpstreamHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
    /// From `:authority`.
    pub host: Option<&'a str>,
    pub length: BodyLength,
    /// For the forwarding fields.
    pub client: Option<IpAddr>,
    pub tls: bool,
    /// The policy's trace: its `traceparent` replaces the client's.
    pub trace: Option<&'a crate::observability::tracing::TraceCtx>,
}

impl UpstreamHead<'_> {
    /// The request line; `host`; the client's fields but those the policy drops on requests
    /// (hop-by-hop ones), `host`, `transfer-encoding`, a `traceparent` the trace replaces and
    /// a `content-length` that [`BodyLength`] does not keep; the Cookie fields those
    /// protocols may split, joined into one line as HTTP/1.1 wants (RFC 9113 §8.2.3, RFC 9114
    /// §4.2.1); the length; the forwarding fields; the trace's line; the blank line.
    pub fn write(&self, req: &RequestHeader, out: &mut Vec<u8>) {
        use crate::policy::{fields, forwarded};
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(h) = self.host {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let own_length = matches!(self.length, BodyLength::AsSent);
        for (name, value) in req.headers.iter() {
            let name = name.as_str();
            let skip = matches!(name, "host" | "cookie" | "transfer-encoding")
                || (name == "content-length" && !own_length)
                || (name == "traceparent" && self.trace.is_some())
                || fields::drop_on_request(fields::classify(name.as_bytes()));
            if skip {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (i, c) in req.headers.get_all(http::header::COOKIE).iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"cookie: " } else { b"; " });
            out.extend_from_slice(c.as_bytes());
        }
        if req.headers.contains_key(http::header::COOKIE) {
            out.extend_from_slice(b"\r\n");
        }
        if let BodyLength::Is(n) = self.length {
            out.extend_from_slice(b"content-length: ");
            forwarded::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        let xff = req.headers.get_all(&fields::X_FORWARDED_FOR);
        let xff = xff.iter().map(|v| v.as_bytes());
        forwarded::h1_lines(
            out,
            xff,
            self.client,
            self.tls,
            self.host.map(str::as_bytes),
        );
        if let Some(t) = self.trace {
            crate::policy::trace::h1_line(out, t);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What the access log reads of a request the engine holds as Pingora's header (HTTP/2 and
/// HTTP/3 streams): `version` as logged, `bytes_in` of its body.
///
/// Its text fields are read only when something will show them (the access log or a sampled
/// span); otherwise they are `-`, which saves the header lookups of every request.
pub fn req_view<'a>(
    req: &'a RequestHeader,
    client: Option<std::net::IpAddr>,
    version: &'static str,
    bytes_in: usize,
    obs: &crate::observability::RequestObs,
) -> crate::observability::ReqView<'a> {
    if !crate::observability::text_shown(obs.trace.as_ref()) {
        return crate::observability::ReqView {
            client,
            method: req.method.as_str(),
            uri: "-",
            version,
            host: "-",
            referer: "-",
            user_agent: "-",
            bytes_in,
        };
    }
    let header = |n: http::header::HeaderName| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    crate::observability::ReqView {
        client,
        method: req.method.as_str(),
        uri: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        version,
        host: request_host(req).unwrap_or("-"),
        referer: header(http::header::REFERER),
        user_agent: header(http::header::USER_AGENT),
        bytes_in,
    }
}

/// The policy's view of a request head held as Pingora's header map (HTTP/2, HTTP/3 and
/// the general engine; the lean HTTP/1 engine reads its own parsed head).
pub fn request_head<'a>(
    client: Option<IpAddr>,
    req: &'a RequestHeader,
    content_length: Option<u64>,
    rate: RateCount,
) -> crate::policy::RequestHead<'a> {
    crate::policy::RequestHead {
        client,
        method: req.method.as_str(),
        host: request_host(req),
        path: req.uri.path(),
        content_length,
        fields: req,
        rate,
        max_forwards_spent: crate::policy::edit::max_forwards_spent(req),
    }
}

/// The host a Pingora request is for ([`crate::policy::forwarded::request_host`]).
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    crate::policy::forwarded::request_host(
        req.uri.authority().map(|a| a.as_str()),
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::tracing::TraceCtx;

    fn request() -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/up?x=1", None).expect("request");
        // (HTTP/2 and HTTP/3 refuse connection-specific fields such as Connection before a
        // request gets here; TE: trailers is the one hop-by-hop field they carry)
        for (k, v) in [
            ("te", "trailers"),
            ("host", "ignored.test"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-forwarded-for", "192.0.2.1"),
        ] {
            r.append_header(k, v).expect("field");
        }
        r
    }

    fn head(length: BodyLength, trace: Option<&TraceCtx>) -> String {
        let mut out = Vec::new();
        let h = UpstreamHead {
            method: "POST",
            target: "/up?x=1",
            host: Some("site.test"),
            length,
            client: Some("198.51.100.7".parse().expect("ip")),
            tls: true,
            trace,
        };
        h.write(&request(), &mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn the_backend_head_keeps_end_to_end_fields_and_drops_hop_by_hop_ones() {
        let h = head(BodyLength::AsSent, None);
        assert!(
            h.starts_with("POST /up?x=1 HTTP/1.1\r\nhost: site.test\r\n"),
            "{h}"
        );
        assert!(h.ends_with("\r\n\r\n"), "{h}");
        for kept in [
            "accept: */*\r\n",
            "content-length: 5\r\n",
            "cookie: a=1; b=2\r\n",
        ] {
            assert!(h.contains(kept), "{kept:?} missing: {h}");
        }
        assert!(
            h.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-"),
            "{h}"
        );
        assert!(
            h.contains("x-forwarded-for: 192.0.2.1, 198.51.100.7\r\n"),
            "{h}"
        );
        for dropped in ["te:", "ignored.test", "transfer-encoding"] {
            assert!(!h.contains(dropped), "{dropped:?} forwarded: {h}");
        }
    }

    #[test]
    fn the_length_is_the_request_s_own_or_replaced_or_dropped() {
        let is = head(BodyLength::Is(7), None);
        assert!(is.contains("content-length: 7\r\n"), "{is}");
        assert!(!is.contains("content-length: 5"), "{is}");
        let dropped = head(BodyLength::Dropped, None);
        assert!(!dropped.contains("content-length"), "{dropped}");
    }

    #[test]
    fn the_policy_s_trace_replaces_the_client_s_traceparent() {
        let t = TraceCtx {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent: None,
            sampled: true,
        };
        let h = head(BodyLength::AsSent, Some(&t));
        assert_eq!(h.matches("traceparent").count(), 1, "{h}");
        assert!(
            h.contains("traceparent: 00-11111111111111111111111111111111-"),
            "{h}"
        );
    }
}
