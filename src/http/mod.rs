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

pub mod chunked;
pub mod fast;
pub mod guard;
pub mod listen;
pub mod phases;
pub mod service;

use crate::cache;
use crate::config::ListenerSpec;
use crate::forward::{Forward, FwdCtx};
use crate::policy::answer::Answer;
use crate::policy::route::{Route, Router};
use crate::policy::ListenerPolicy;
use crate::upstream::Pick;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;

/// An HTTP listener: its policy, and the forward proxy when it is one.
pub struct Listener {
    pub policy: ListenerPolicy,
    pub forward: Option<Arc<Forward>>,
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
    attempts: u32,
    /// The last connect failure, for the answer when no backend is left.
    last_connect: Option<crate::policy::answer::Failure>,
    hash: u64,
    /// A WebSocket handshake, relayed with its upgrade fields.
    websocket: bool,
    pub fwd: FwdCtx,
    body_bytes: u64,
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

/// A small page of our own. It names the status, never a backend.
pub fn error_page(code: u16) -> Bytes {
    crate::policy::answer::page(code)
}

/// Answer from the proxy itself, with a body and a content length.
pub async fn respond(session: &mut Session, code: u16, close: bool) -> Result<()> {
    let a = if close {
        Answer::closing(code)
    } else {
        Answer::new(code)
    };
    respond_answer(session, &a).await
}

/// Write one of the policy's answers on a Pingora session.
pub async fn respond_answer(session: &mut Session, a: &Answer) -> Result<()> {
    let body = a.body();
    let fields = a.fields(body.len());
    write_page(session, a.status, body, &fields, a.close).await
}

/// Write one of the proxy's own pages: HTML body, length, `no-store`, extra headers, and
/// `Connection: close` when the connection must not be reused.
pub async fn respond_page(
    session: &mut Session,
    code: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
    close: bool,
) -> Result<()> {
    let mut fields: Vec<(&'static str, String)> = extra.to_vec();
    fields.push(("content-type", "text/html; charset=utf-8".into()));
    fields.push(("content-length", body.len().to_string()));
    fields.push(("cache-control", "no-store".into()));
    write_page(session, code, body, &fields, close).await
}

async fn write_page(
    session: &mut Session,
    code: u16,
    body: Bytes,
    fields: &[(&'static str, String)],
    close: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(fields.len() + 1))?;
    for (k, v) in fields {
        resp.insert_header(*k, v.as_str())?;
    }
    if close {
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| crate::policy::fields::parse_len(v.as_bytes()))
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
