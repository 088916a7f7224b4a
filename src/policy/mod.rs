//! The one request policy: every decision about a request, made in one place that does no
//! I/O, for every engine (the lean HTTP/1 and HTTP/2 engines, Pingora's `ProxyHttp` phases,
//! the forward proxy, L4).
//!
//! The engines read and write bytes; they ask this layer:
//! - [`head`]: is this HTTP/1 request head acceptable at all (smuggling forms, Host)?
//! - [`target`]: is the Host one, and which path do routes see ([`target::route_path`])?
//! - [`ListenerPolicy::admit`]: rate limit, route, body limit: answer it ourselves, or
//!   proxy it to which route? With a shared rate-limit store the engine asks the store for
//!   the client's count first (I/O) and hands it in ([`RateCount`]).
//! - [`engine::choose`]: may the lean engine serve it, or why not ([`engine::Fallback`])?
//! - [`fields`] and [`forwarded`]: which header fields cross, in both directions, and the
//!   X-Forwarded-* the proxy adds.
//! - [`hash`]: the consistent-hash key; [`sticky`]: the sticky cookie's backend.
//! - [`retry`]: is a failed attempt tried again?
//! - [`answer`]: the proxy's own answers and the status each failure maps to.
//! - [`interim`]: which 1xx responses from a backend reach the client?
//! - [`mirror`]: is a copy of the request sent to a shadow upstream, and which bytes?
//! - [`keep_alive`]: does the client connection stay open?
//!
//! What a request did is recorded by the observability layer from the same values, so the
//! access log and metrics cannot tell the engines apart.

pub mod acme;
pub mod answer;
pub mod compress;
pub mod date;
pub mod early;
pub mod edit;
pub mod engine;
pub mod fields;
pub mod forwarded;
pub mod hash;
pub mod head;
pub mod interim;
pub mod mirror;
pub mod outlier;
pub mod retry;
pub mod route;
mod route_index;
pub mod scan;
pub mod shortage;
pub mod sticky;
pub mod target;
pub mod trace;

use crate::config::ListenerSpec;
use answer::Answer;
use route::{Route, Router};
use std::net::IpAddr;
use std::time::Duration;

/// One HTTP listener's policy, shared by every engine that serves it.
pub struct ListenerPolicy {
    pub name: String,
    pub tls: bool,
    /// Redirect every request to https on this port.
    pub redirect_https: Option<u16>,
    pub router: Router,
    /// Per-client-IP request rate over one-second windows, with its limit.
    rate: Option<(pingora_limits::rate::Rate, isize)>,
    /// A forward-proxy listener (no routes; the forward module decides).
    pub forward: bool,
    /// `fast_path: false` sends every request to the general engine.
    pub fast_path: bool,
    /// Requests per client connection, if limited.
    pub keepalive_requests: Option<u32>,
    pub keepalive_timeout: Duration,
    /// Longest a request's head (HTTP/3: its HEADERS frame) may take to arrive, from its
    /// first byte (HTTP/3: from the stream's opening).
    pub header_timeout: Duration,
    /// Longest wait for a client to send body bytes or take response bytes.
    pub client_timeout: Duration,
    /// `splice`: large bodies may go between a plain client socket and the backend with
    /// splice(2) ([`ListenerPolicy::splices_body`]).
    splice: bool,
    /// `Alt-Svc` of a listener that also serves HTTP/3 ([`edit::alt_svc`]).
    pub alt_svc: Option<http::HeaderValue>,
}

/// What [`ListenerPolicy::admit`] needs to know about a request.
pub struct RequestHead<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// The host asked for, port included ([`forwarded::request_host`]).
    pub host: Option<&'a str>,
    /// The path, without its query.
    pub path: &'a str,
    pub content_length: Option<u64>,
    /// The request's fields, for routes with a `match`.
    pub fields: &'a (dyn route::Fields + Sync),
    /// The count the per-IP rate limit decides on.
    pub rate: RateCount,
    /// A TRACE or OPTIONS whose `Max-Forwards` is spent ([`fields::max_forwards`]): once
    /// admitted like any other request, the proxy answers it as the final recipient.
    pub max_forwards_spent: bool,
}

/// The count the per-IP rate limit decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateCount {
    /// Counted in this instance: no shared store, or it did not answer in time.
    Local,
    /// The shared store's count of the client's requests in this second, this one included.
    Shared(u64),
    /// The engine asks the store after admission and decides with
    /// [`ListenerPolicy::rate_limited`] then (the lean HTTP/1 engine plans without awaiting).
    Deferred,
}

/// The policy's verdict on a request.
pub enum Verdict<'r> {
    /// Answer it ourselves, counted against the route if one was found.
    Answer(Answer, Option<&'r Route>),
    /// Proxy it on this route.
    Proxy(&'r Route),
}

/// The least of a request body, left after its head's read, that [`ListenerPolicy::splices_body`].
pub const SPLICE_BODY_MIN: u64 = 16 * 1024;

impl ListenerPolicy {
    pub fn new(spec: &ListenerSpec, router: Router, tls: bool) -> ListenerPolicy {
        ListenerPolicy {
            name: spec.name.clone(),
            tls,
            redirect_https: spec.redirect_https,
            router,
            rate: spec.limits.rate_limit_per_ip.map(|n| {
                (
                    pingora_limits::rate::Rate::new(Duration::from_secs(1)),
                    n as isize,
                )
            }),
            forward: spec.forward.is_some(),
            fast_path: spec.fast_path,
            keepalive_requests: spec.limits.keepalive_requests,
            keepalive_timeout: spec.limits.keepalive_timeout,
            header_timeout: spec.limits.header_timeout,
            client_timeout: spec.limits.client_timeout,
            splice: spec.splice,
            alt_svc: edit::alt_svc_value(spec),
        }
    }

    /// Whether a Content-Length body, request or response, with `left` bytes still to come
    /// after what was read with its head is moved with splice(2), where the engine can (a
    /// plain client socket, nothing buffered ahead of the body). Below [`SPLICE_BODY_MIN`] the pipe's two
    /// system calls cost more than the copies they save.
    pub fn splices_body(&self, left: u64) -> bool {
        self.splice && left >= SPLICE_BODY_MIN
    }

    /// The per-IP rate limit: `Some(answer)` when this request is over it, by the store's
    /// count, or by this instance's own when there is none.
    pub fn rate_limited(&self, client: Option<IpAddr>, count: RateCount) -> Option<Answer> {
        let ((rate, limit), ip) = (self.rate.as_ref()?, client?);
        let n = match count {
            RateCount::Deferred => return None,
            RateCount::Shared(n) => n.min(isize::MAX as u64) as isize,
            RateCount::Local => rate.observe(&ip, 1),
        };
        if n > *limit {
            log::warn!("{}: rate limit exceeded by {ip}", self.name);
            return Some(Answer::new(429).retry_after(1));
        }
        None
    }

    /// Admission and routing of a reverse-proxy request, in this order: a target that is
    /// not one (400, [`target`]: an invalid Host, a path above the root), the answer to a
    /// pending ACME HTTP-01 challenge, rate limit (429), route by host and longest path
    /// prefix (404), the route's methods (405, [`route::Route::takes`]), the route's body
    /// limit by the declared length (413, closing, since the body is not read), and last a
    /// spent `Max-Forwards` (the proxy's own empty 200). A streamed body is held to the same
    /// limit by [`body_over_limit`].
    pub fn admit(&self, r: &RequestHead) -> Verdict<'_> {
        self.admit_on(r, self.route(r))
    }

    /// The route a request is for, by host (port stripped), the longest path prefix of the
    /// path as a backend reads it ([`target::route_path`]) and the route's `match`; a split
    /// route's member is chosen here, by the sticky cookie of one of its upstreams or else by
    /// weight. None for a path [`target::route_path`] refuses ([`ListenerPolicy::admit_on`]
    /// answers it 400).
    pub fn route(&self, r: &RequestHead) -> Option<&Route> {
        let host = forwarded::strip_port(r.host.unwrap_or(""));
        let path = target::route_path(r.path).ok()?;
        self.router
            .find(host, &path, r.fields)
            .and_then(|p| self.router.pick(p, r.fields))
    }

    /// [`ListenerPolicy::admit`] for an engine that already looked the route up (to choose
    /// itself, see [`engine::route`]).
    pub fn admit_on<'r>(&'r self, r: &RequestHead, route: Option<&'r Route>) -> Verdict<'r> {
        if let Some(why) = self.bad_target(r, route.is_none()) {
            log::warn!("{}: {why} (400)", self.name);
            return Verdict::Answer(Answer::new(400), None);
        }
        if let Some(a) = acme::challenge(r.path) {
            return Verdict::Answer(a, None);
        }
        if let Some(a) = self.rate_limited(r.client, r.rate) {
            return Verdict::Answer(a, None);
        }
        let Some(route) = route else {
            return Verdict::Answer(Answer::new(404), None);
        };
        if !route.takes(r.method) {
            log::warn!(
                "{}: method {} refused by {} (405)",
                self.name,
                r.method,
                route.label
            );
            return Verdict::Answer(Answer::method_not_allowed(route.allow()), Some(route));
        }
        if let Some(len) = r.content_length {
            if len > route.max_body_size {
                log::warn!(
                    "{}: request body of {len} bytes exceeds the route's max_body_size {}",
                    self.name,
                    route.max_body_size
                );
                return Verdict::Answer(Answer::closing(413), Some(route));
            }
        }
        // After the refusals above: a spent count must not answer 200 where the request
        // itself would be refused (over the rate limit, no route, a method the route does
        // not take), as it did when engines checked it before admission.
        if r.max_forwards_spent {
            return Verdict::Answer(Answer::final_recipient(), Some(route));
        }
        Verdict::Proxy(route)
    }

    /// Why a request's target is refused, if it is: a Host that is not one, or (looked at
    /// only when no route was found, as [`ListenerPolicy::route`] finds none for it) a path
    /// [`target::route_path`] refuses.
    fn bad_target(&self, r: &RequestHead, unrouted: bool) -> Option<String> {
        if let Some(h) = r.host.filter(|h| !target::valid_host(h)) {
            return Some(format!("invalid Host {h:?}"));
        }
        if unrouted {
            if let Err(why) = target::route_path(r.path) {
                return Some(format!("{why}: {:?}", r.path));
            }
        }
        None
    }
}

/// Whether a streamed request body has passed the route's limit after `seen` bytes.
pub fn body_over_limit(route: &Route, seen: u64) -> bool {
    seen > route.max_body_size
}

/// Whether the client connection may carry another request after a response to an upgrade
/// the proxy relayed. A 101 turns it into a tunnel; any other answer closes it: a client
/// that sent the new protocol's bytes without waiting for the 101 would otherwise have them
/// read as a request (the smuggling of a refused WebSocket handshake).
pub fn keep_after_upgrade(upgrade_relayed: bool, switched: bool) -> bool {
    !upgrade_relayed || switched
}

/// Whether the tunnel of a relayed protocol switch (a 101 to an upgrade) passes one side's
/// close on as a half-close and runs until the other side closes too, as CONNECT tunnels and
/// L4 relays do. It does not: it ends at the first side's close, once what that side sent is
/// delivered (nginx's way). Every engine must end a tunnel alike, and the general engine's
/// (Pingora's relay of an upgraded connection) can only end both at the first close;
/// WebSocket ends with its own close handshake before either side closes, so it loses nothing.
pub const UPGRADE_HALF_CLOSE: bool = false;

/// Whether the client connection stays open after this response. `client_close`: the
/// client asked to close (or spoke HTTP/1.0 without keep-alive); `unread_body`: part of the
/// request body was never read, so the next request's start is unknown; `served`: requests
/// on this connection so far, this one included.
pub fn keep_alive(
    l: &ListenerPolicy,
    client_close: bool,
    draining: bool,
    unread_body: bool,
    served: u32,
) -> bool {
    !client_close && !draining && !unread_body && l.keepalive_requests.is_none_or(|n| served < n)
}
