//! HTTP/3 requests the general engine serves: on a cached route, everything but a fresh hit,
//! and everything on a listener with `fast_path: false` ([`crate::policy::engine::h3`]). Each goes through the TCP side's general engine in force
//! (a reload swaps it) as a Pingora session of its own kind ([`super::session`]), so the
//! cache phases fill the store, collapse concurrent misses behind the cache lock,
//! revalidate with 304, serve stale on error, and purge after unsafe methods, exactly as
//! for HTTP/1 and HTTP/2 clients.

use super::session::{H3Session, Parts};
use crate::http::service::GeneralEngine;
use crate::http::Listener;
use crate::policy::{self, RateCount};
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::RequestHeader;
use std::net::SocketAddr;
use std::sync::Arc;

/// What one QUIC connection needs to hand a request to the general engine.
pub struct Handoff {
    pub engine: Arc<dyn GeneralEngine>,
    pub shutdown: ShutdownWatch,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Handoff {
    /// Does the general engine serve this request? Decided before the request is counted
    /// against the rate limit, which the engine that serves it does.
    pub fn wanted(&self, l: &Listener, req: &RequestHeader) -> bool {
        let method = req.method.as_str();
        if policy::engine::h3_unsupported(method).is_some() {
            return false;
        }
        // its count is rewritten or answered by the general engine, as for HTTP/1
        if policy::fields::max_forwards_applies(method.as_bytes())
            && req.headers.contains_key(http::header::MAX_FORWARDS)
        {
            crate::observability::fast_path_fallback(policy::engine::Fallback::MaxForwards.label());
            return true;
        }
        let head = crate::http::request_head(Some(self.client.ip()), req, None, RateCount::Local);
        let host = head.host;
        let route = l.route(&head);
        let fresh =
            route.is_some_and(|r| crate::http::cache_hit::fresh_hit(l, r, req, host).is_some());
        match policy::engine::h3(l, route, fresh) {
            Ok(()) => false,
            Err(reason) => {
                crate::observability::fast_path_fallback(reason.label());
                true
            }
        }
    }

    /// Serve the request on the general engine.
    pub async fn serve(
        &self,
        l: &Listener,
        mut req: RequestHeader,
        stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    ) {
        req.set_version(http::Version::HTTP_3);
        // HTTP/1.1 backends want a Host: `:authority` names it (RFC 9114 4.3.1)
        if let Some(a) = req.uri.authority().map(|a| a.as_str().to_owned()) {
            if !a.is_empty() && req.insert_header(http::header::HOST, a).is_err() {
                return;
            }
            // origin-form, as the lean path and HTTP/1 requests have it: the access log's
            // `uri` and the cache key read the same on every engine (the scheme is the
            // listener's, the host is in Host now)
            if let Some(pq) = req
                .uri
                .path_and_query()
                .and_then(|p| p.as_str().parse().ok())
            {
                req.set_uri(pq);
            }
        }
        let (send, recv) = stream.split();
        let mut recv = super::body::Body::new(recv);
        // A body without a Content-Length (HTTP/3 does not need one) is read first, within the
        // route's `max_body_size`, and sent with its length, as the lean engine does (see
        // `super::request`): HTTP/1.1 backends are not asked to take chunked requests. One
        // over the limit streams on as it came, and the engine's body limit answers 413.
        let (first, recv_done) = if req.headers.contains_key(http::header::CONTENT_LENGTH) {
            (None, false)
        } else {
            let head =
                crate::http::request_head(Some(self.client.ip()), &req, None, RateCount::Local);
            let limit = l.route(&head).map_or(u64::MAX, |r| r.max_body_size);
            let mut body = Vec::new();
            let read = super::request::read_ahead(&mut recv, limit, l.client_timeout, &mut body);
            match read.await {
                super::request::ReadAhead::Whole => {
                    if !body.is_empty()
                        && req
                            .insert_header(http::header::CONTENT_LENGTH, body.len())
                            .is_err()
                    {
                        return;
                    }
                    ((!body.is_empty()).then(|| Bytes::from(body)), true)
                }
                // over the limit, stalled or broken: what came so far goes first, and the
                // engine reads on (its own limit and timeouts answer, 413 or 408)
                _ => ((!body.is_empty()).then(|| Bytes::from(body)), false),
            }
        };
        let parts = Parts {
            first,
            recv_done,
            timeout: l.client_timeout,
            client: self.client,
            server: self.server,
        };
        let s = H3Session::new(req, send, recv, parts);
        let session = ServerSession::new_custom(Box::new(s));
        self.engine.serve(session, &self.shutdown).await;
    }
}
