//! The HTTP proxy: one [`ProxyHttp`] implementation per listener.
//!
//! Most requests never reach it: plain HTTP/1.1 requests, WebSocket handshakes, fresh cache
//! hits and bodiless HTTP/2 streams are served by the fast path ([`fast`]) on the same
//! listener state. This phase map is Pingora's general path, for everything else.
//!
//! Phase map (Pingora calls them in this order):
//! - `request_filter`: route by Host and longest path prefix (404 when none), body limit,
//!   consistent-hash key.
//! - `upstream_peer`: select a backend from the route's pool; on a retry, a different one.
//! - `fail_to_connect`: mark connect failures retryable while the upstream's `retries` allow;
//!   the failed backend is skipped by the retry.
//! - `error_while_proxy`: a failure on a reused pooled connection is retried for idempotent
//!   methods only (Pingora's policy, with a log line); never a POST.
//!
//! Before any of these, the request-head guard ([`guard`], with [`strict`]) has refused
//! heads that are too large, too slow or ambiguous (smuggling forms) on HTTP/1.
//! - `upstream_request_filter`: X-Forwarded-* headers. Hop-by-hop headers (and those the
//!   client nominated in `Connection`) are stripped by Pingora's standard request policy.
//! - `fail_to_proxy`: the proxy's own error pages, which never name a backend.
//! - cache hooks (`request_cache_filter`, `cache_key_callback`, `response_cache_filter`,
//!   `cache_hit_filter`, `cache_vary_filter`, `should_serve_stale`, `response_filter`) and PURGE in
//!   `request_filter`: delegated to the route's [`cache::RouteCache`], if it has one.
//!
//! Forward-proxy listeners (`listener.forward`) delegate these phases, and the upstream
//! response filters, to [`crate::forward`]; see its module doc.

pub mod cache;
pub mod chunked;
pub mod fast;
pub mod guard;
pub mod listen;
pub mod router;
pub mod service;
pub mod strict;

use crate::config::{HashKey, ListenerSpec};
use crate::forward::{Forward, FwdCtx};
use crate::upstream::{bit, select::hash_bytes, Pick};
use async_trait::async_trait;
use bytes::Bytes;
use log::warn;
use pingora_cache::key::HashBinary;
use pingora_cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use router::Router;
use std::sync::Arc;

pub struct Listener {
    pub name: String,
    pub tls: bool,
    /// Redirect every request to https on this port (see `crate::tls::redirect`).
    pub redirect_https: Option<u16>,
    pub router: Router,
    /// Per-client-IP request rate over one-second windows, with its limit.
    rate: Option<(pingora_limits::rate::Rate, isize)>,
    pub forward: Option<Arc<Forward>>,
}

impl Listener {
    pub fn new(spec: &ListenerSpec, router: Router, tls: bool) -> Listener {
        Listener {
            name: spec.name.clone(),
            tls,
            redirect_https: spec.redirect_https,
            router,
            rate: spec.limits.rate_limit_per_ip.map(|n| {
                (
                    pingora_limits::rate::Rate::new(std::time::Duration::from_secs(1)),
                    n as isize,
                )
            }),
            forward: spec.forward.as_ref().map(|f| Forward::new(&spec.name, f)),
        }
    }
}

static XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

pub struct HttpProxy {
    /// Shared with the listener's HTTP/1 fast path.
    pub listener: Arc<Listener>,
}

#[derive(Default)]
pub struct Ctx {
    /// Index into the listener's router, set by `request_filter`.
    route: Option<usize>,
    pick: Option<Pick>,
    /// Backends that failed for this request (bit per slot index).
    tried: u64,
    attempts: u32,
    hash: u64,
    pub fwd: FwdCtx,
    body_bytes: u64,
    /// Metrics and access-log bookkeeping; counts the request in flight while it lives.
    obs: crate::observability::RequestObs,
}

impl HttpProxy {
    /// The cache for this request: the forward proxy's on a forward listener (CONNECT never
    /// gets this far), else the chosen route's.
    fn route_cache(&self, ctx: &Ctx) -> Option<&cache::RouteCache> {
        if let Some(f) = &self.listener.forward {
            return f.cache.as_ref();
        }
        ctx.route
            .and_then(|i| self.listener.router.get(i))
            .and_then(|r| r.cache.as_ref())
    }
}

impl Ctx {
    pub fn backend_label(&self) -> Option<&str> {
        self.pick.as_ref().map(|p| p.slot.label.as_str())
    }
}

fn hash_key(key: &HashKey, session: &Session) -> u64 {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => match session.client_addr().and_then(|a| a.as_inet()) {
            Some(a) => match a.ip() {
                std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
                std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
            },
            None => 0,
        },
        HashKey::Uri => hash_bytes(
            req.uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .as_bytes(),
        ),
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| hash_bytes(v.as_bytes()))
            .unwrap_or(0),
        HashKey::Cookie(name) => cookie_value(req, name).map(hash_bytes).unwrap_or(0),
    }
}

fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    for h in req.headers.get_all(http::header::COOKIE) {
        for part in h.as_bytes().split(|&b| b == b';') {
            let part = part.trim_ascii();
            if let Some(rest) = part.strip_prefix(name.as_bytes()) {
                if let Some(v) = rest.strip_prefix(b"=") {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// A small page of our own. It names the status, never a backend.
pub fn error_page(code: u16) -> Bytes {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1><hr><p>stepstone</p></body></html>\n"
    ))
}

/// Answer from the proxy itself, with a body and a content length.
pub async fn respond(session: &mut Session, code: u16, close: bool) -> Result<()> {
    respond_with(session, code, &[], close).await
}

pub async fn respond_with(
    session: &mut Session,
    code: u16,
    extra: &[(&'static str, &'static str)],
    close: bool,
) -> Result<()> {
    let extra: Vec<(&'static str, String)> =
        extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
    respond_page(session, code, error_page(code), &extra, close).await
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
    let mut resp = ResponseHeader::build(code, Some(4 + extra.len()))?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
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

#[async_trait]
impl ProxyHttp for HttpProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some((rate, limit)) = &self.listener.rate {
            if let Some(ip) = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
            {
                if rate.observe(&ip, 1) > *limit {
                    warn!("{}: rate limit exceeded by {ip}", self.listener.name);
                    respond_with(session, 429, &[("retry-after", "1")], false).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(port) = self.listener.redirect_https {
            crate::tls::redirect::redirect(session, port).await?;
            return Ok(true);
        }
        if let Some(f) = &self.listener.forward {
            return f.request_filter(session, ctx).await;
        }
        let req = session.req_header();
        let host = router::request_host(req);
        let path = req.uri.path();
        let Some((pos, route)) = self
            .listener
            .router
            .find(host, path)
            .and_then(|p| Some((p, self.listener.router.get(p)?)))
        else {
            respond(session, 404, false).await?;
            return Ok(true);
        };
        if let Some(len) = content_length(session.req_header()) {
            if len > route.max_body_size {
                warn!(
                    "{}: request body of {len} bytes exceeds the route's max_body_size {}",
                    self.listener.name, route.max_body_size
                );
                respond(session, 413, true).await?;
                return Ok(true);
            }
        }
        if let Some(c) = &route.cache {
            let (name, tls) = (&self.listener.name, self.listener.tls);
            if cache::purge::handle(c, session, name, tls).await? {
                return Ok(true);
            }
        }
        if route.pool.selection == crate::config::Selection::ConsistentHash {
            ctx.hash = hash_key(&route.pool.hash_key, session);
        }
        ctx.route = Some(pos);
        Ok(false)
    }

    /// Bodies without a Content-Length (chunked) are counted as they stream; past the route's
    /// limit the request fails with 413 if nothing was answered yet, else it is cut.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            let limit = ctx
                .route
                .and_then(|i| self.listener.router.get(i))
                .map(|r| r.max_body_size)
                .unwrap_or(u64::MAX);
            if ctx.body_bytes > limit {
                warn!(
                    "{}: request body exceeds max_body_size {limit}",
                    self.listener.name
                );
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(f) = &self.listener.forward {
            return f.upstream_peer(ctx);
        }
        let Some(route) = ctx.route.and_then(|i| self.listener.router.get(i)) else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let pool = &route.pool;
        // A retry after a failed connect skips that backend (marked in `fail_to_connect`); one
        // after a stale pooled connection may use the same backend on a fresh connection.
        ctx.pick = None;
        ctx.attempts += 1;
        ctx.obs.peer_selected();
        let Some(pick) = pool.select(ctx.hash, ctx.tried) else {
            warn!(
                "{}: upstream {}: no usable backend for {}",
                self.listener.name, pool.name, route.label
            );
            return Error::e_explain(ErrorType::HTTPStatus(503), "no usable backend");
        };
        let mut peer = crate::tls::upstream::http_peer(&pool.spec, pick.slot.addr);
        let o = &mut peer.options;
        o.connection_timeout = Some(pool.connect_timeout);
        o.total_connection_timeout = Some(pool.connect_timeout);
        o.read_timeout = Some(pool.read_timeout);
        o.write_timeout = Some(pool.spec.write_timeout);
        o.idle_timeout = Some(pool.spec.idle_timeout);
        ctx.pick = Some(pick);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(f) = &self.listener.forward {
            f.fail_to_connect(ctx, peer, &mut e);
            return e;
        }
        let route = ctx.route.and_then(|i| self.listener.router.get(i));
        let retries = route.map(|r| r.pool.retries).unwrap_or(0);
        if let Some(p) = &ctx.pick {
            p.slot
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.tried |= bit(p.slot.index);
        }
        let backend = peer._address.to_string();
        let tls_logged = route.is_some_and(|r| {
            crate::tls::upstream::log_connect_failure(
                &self.listener.name,
                &r.pool.spec,
                &backend,
                &e,
            )
        });
        if !tls_logged {
            warn!(
                "{}: connect to backend {} failed (attempt {}): {}",
                self.listener.name, peer._address, ctx.attempts, e
            );
        }
        if ctx.attempts <= retries {
            e.set_retry(true);
        }
        e
    }

    /// Pingora's policy, kept: retry only idempotent methods whose body is still buffered, and
    /// only when the failed connection was a reused one (the backend may have closed it while
    /// it sat idle in the pool). A POST is never sent twice.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = &session.req_header().method;
        if !method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if client_reused {
            warn!(
                "{}: reused upstream connection failed for {method} {}: {}",
                self.listener.name,
                session.req_header().uri,
                if e.retry() {
                    "retrying on a fresh connection"
                } else {
                    "not retried (method not idempotent or body not buffered)"
                }
            );
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(f) = &self.listener.forward {
            return f.upstream_request_filter(session, upstream_request, ctx);
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            // Built on the stack: this runs for every request.
            use std::io::Write;
            let mut buf = [0u8; 512];
            let mut w = &mut buf[..];
            if let Some(prev) = upstream_request
                .headers
                .get(&XFF)
                .filter(|p| !p.is_empty() && p.len() < 400)
            {
                let _ = w.write_all(prev.as_bytes());
                let _ = w.write_all(b", ");
            }
            let _ = write!(w, "{}", addr.ip());
            let len = 512 - w.len();
            if let Ok(v) = http::HeaderValue::from_bytes(&buf[..len]) {
                upstream_request.insert_header("x-forwarded-for", v)?;
            }
        }
        upstream_request.insert_header(
            "x-forwarded-proto",
            http::HeaderValue::from_static(if self.listener.tls { "https" } else { "http" }),
        )?;
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                session
                    .req_header()
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
        if let Some(h) = host {
            upstream_request.insert_header("x-forwarded-host", h)?;
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let Some(c) = self.route_cache(ctx) {
            c.enable(session);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        match self.route_cache(ctx) {
            Some(c) => Ok(c.key(session, &self.listener.name, self.listener.tls)),
            None => Error::e_explain(ErrorType::InternalError, "cache without a cached route"),
        }
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(match self.route_cache(ctx) {
            Some(c) => c.response_cacheable(session, resp),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        _ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        cache::on_hit(session);
        Ok(None)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::policy::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        cache::should_serve_stale(error)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(c) = self.route_cache(ctx) {
            c.response_filter(session, resp, &self.listener.name, self.listener.tls)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &self.listener.forward {
            Some(f) => f.upstream_response_filter(session, upstream_response, ctx),
            None => Ok(()),
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(f) = &self.listener.forward {
            f.upstream_response_body_filter(body, ctx)?;
        }
        Ok(None)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let route = ctx.route.and_then(|i| self.listener.router.get(i));
        ctx.obs.connected(route.map(|r| r.id), reused);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let route = ctx.route.and_then(|i| self.listener.router.get(i));
        let slot = ctx.pick.as_ref().map(|p| &*p.slot);
        crate::observability::request_done(session, e, route.map(|r| r.id), slot, &ctx.obs);
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(f) = &self.listener.forward {
            if let Some(r) = f.fail_to_proxy(session, ctx).await {
                return r;
            }
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            warn!(
                "{}: answering {code} for {} (backend {}): {e}",
                self.listener.name,
                session.req_header().uri,
                ctx.backend_label().unwrap_or("-")
            );
            // After a partial response the status line is gone; then the only safe move is to close.
            if session.response_written().is_none() {
                let _ = respond(session, code, true).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}
