//! Pingora's general proxy: the `ProxyHttp` phases, each a few lines over the policy.
//!
//! Phase map (Pingora calls them in this order):
//! - `request_filter`: redirect or forward-proxy listeners hand over; otherwise
//!   [`ListenerPolicy::admit`](crate::policy::ListenerPolicy::admit) (rate limit, route,
//!   methods, body limit), PURGE, the hash key, the sticky cookie, the mirror's copy (sent
//!   here, or at the end of the body in `request_body_filter`).
//! - `upstream_peer`: a backend from the route's pool; on a retry, another one. Each try's
//!   read timeout is [`crate::policy::retry::try_timeout`].
//! - `fail_to_connect` / `error_while_proxy`: [`crate::policy::retry`] (see `tries.rs`).
//! - `upstream_request_filter`: [`crate::policy::edit::request`]. Pingora's own header policy
//!   is set to `preserve` on our peers, so the policy's edits are the only ones, as on the
//!   lean engine.
//! - `upstream_response_filter`: a status outside 100-599, a 101 to a request whose upgrade
//!   the proxy did not relay, or transfer codings that [`crate::policy::fields::Codings`]
//!   refuses, is a 502, as on the lean engine; a status
//!   [`crate::policy::retry`] retries becomes a
//!   retryable error before anything goes downstream (Pingora's retry loop calls
//!   `upstream_peer` again and its retry buffer replays the body); otherwise
//!   [`crate::policy::edit::response`].
//! - `fail_to_proxy`: [`crate::policy::answer::Failure`] picks the status, the answer is
//!   rendered on the session.
//! - cache hooks: delegated to the route's [`cache::RouteCache`], if it has one.
//!
//! Forward-proxy listeners delegate these phases to [`crate::forward`]; see its module doc.

mod tries;

use super::{content_length, request_host, respond_answer, Ctx, HttpProxy};
use crate::cache;
use crate::policy::answer::{Answer, Failure};
use crate::policy::route::Route;
use crate::policy::{self, Verdict};
use crate::upstream::bit;
use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora_cache::key::HashBinary;
use pingora_cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tries::{failed_try, failure};

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

impl HttpProxy {
    /// The route's compression step ([`policy::compress`]) on a final response head: the
    /// head edits, and the encoder the body then goes through.
    fn compress(&self, session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let spec = self.route(ctx).and_then(|r| r.compression.clone());
        let req = session.req_header();
        let accept: Vec<&[u8]> = req
            .headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let request = policy::compress::Request {
            head: req.method == http::Method::HEAD,
            range: req.headers.contains_key(http::header::RANGE),
            accept_encoding: &accept,
        };
        let Some(coding) = policy::compress::decide(spec.as_deref(), &request, resp) else {
            return Ok(());
        };
        policy::compress::edit(resp, coding.map(|c| c.0))?;
        if let Some((c, level)) = coding {
            let e = super::encode::Encoder::new(c, level)
                .or_err(ErrorType::InternalError, "while starting the compressor")?;
            ctx.encoder = Some(e);
        }
        Ok(())
    }
}

/// The route's mirror step ([`policy::mirror`]), once the request is admitted: a sampled
/// request whose declared body fits gets its copy (the request after the policy's edits),
/// sent now if it has no body, else once the body is in (`request_body_filter`).
fn mirror_start(session: &mut Session, route: &Route, ctx: &mut Ctx, tls: bool) -> Result<()> {
    let Some(m) = route.mirror.as_ref() else {
        return Ok(());
    };
    let req = session.req_header();
    if !m.sample(ctx.upgrade.is_some()) || !m.fits(content_length(req).unwrap_or(0)) {
        return Ok(());
    }
    let host = request_host(req).map(str::to_owned);
    let mut copy = req.clone();
    // HTTP/3 fields come as HTTP/2's do (a split Cookie)
    let h2 = req.version >= http::Version::HTTP_2;
    let announce = policy::edit::Announce::Reverse {
        client: client_ip(session),
        tls,
        host: host.as_deref(),
    };
    policy::edit::request(&mut copy, None, announce, h2, false, ctx.obs.trace.as_ref())?;
    ctx.mirror = Some(policy::mirror::Pending::new(
        m.clone(),
        copy,
        host.as_deref(),
    ));
    if session.is_body_empty() {
        mirror_done(ctx);
    }
    Ok(())
}

/// The request's copy for the route's mirror is complete: send it.
fn mirror_done(ctx: &mut Ctx) {
    if let Some((permit, copy)) = ctx.mirror.take().and_then(|m| m.finish()) {
        crate::net::mirror::send(permit, copy);
    }
}

#[async_trait]
impl ProxyHttp for HttpProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let l = &self.listener;
        let client = client_ip(session);
        let connection = session
            .req_header()
            .headers
            .get_all(http::header::CONNECTION);
        if policy::fields::asks_close(connection.iter().map(|v| v.as_bytes())) {
            session.set_keepalive(None);
        }
        // every listener kind's requests are traced: reverse routes, forward proxy, redirects
        ctx.obs.trace = policy::trace::begin(
            session
                .req_header()
                .headers
                .get_all(&crate::policy::fields::TRACEPARENT)
                .iter()
                .map(|v| v.as_bytes()),
        );
        // Before the redirect: a CA validates HTTP-01 on plain http, redirect or not.
        if let Some(a) = policy::acme::challenge(session.req_header().uri.path()) {
            respond_answer(session, &a).await?;
            return Ok(true);
        }
        if l.forward.is_some() || l.redirect_https.is_some() {
            if let Some(a) = l.rate_limited(client, l.rate_count(client).await) {
                respond_answer(session, &a).await?;
                return Ok(true);
            }
            if let Some(port) = l.redirect_https {
                super::redirect::redirect(session, port).await?;
                return Ok(true);
            }
            if let Some(f) = &l.forward {
                ctx.upgrade = policy::edit::relayed_upgrade(session.req_header());
                return f.request_filter(session, &mut ctx.fwd).await;
            }
        }
        let rate = l.rate_count(client).await;
        let req = session.req_header();
        let head = crate::http::request_head(client, req, content_length(req), rate);
        let route = match l.admit(&head) {
            Verdict::Answer(a, route) => {
                ctx.route = route.map(|r| r.pos);
                respond_answer(session, &a).await?;
                return Ok(true);
            }
            Verdict::Proxy(route) => route,
        };
        ctx.route = Some(route.pos);
        ctx.upgrade = policy::edit::relayed_upgrade(req);
        ctx.sticky = policy::sticky::affinity(&route.pool, req);
        mirror_start(session, route, ctx, l.tls)?;
        if let Some(c) = &route.cache {
            if cache::purge::handle(c, session, &l.name, l.tls).await? {
                return Ok(true);
            }
        }
        ctx.hash = policy::hash::of_request(&route.pool, client, session.req_header());
        Ok(false)
    }

    /// Bodies without a Content-Length (chunked) are counted as they stream; past the route's
    /// limit the request fails with 413 if nothing was answered yet, else it is cut.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(route)) = (&*body, self.route(ctx)) {
            ctx.body_bytes += b.len() as u64;
            if policy::body_over_limit(route, ctx.body_bytes) {
                warn!(
                    "{}: request body exceeds max_body_size {}",
                    self.listener.name, route.max_body_size
                );
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        if let Some(m) = &mut ctx.mirror {
            if !body.as_ref().is_none_or(|b| m.push(b)) {
                ctx.mirror = None;
            } else if end_of_stream {
                mirror_done(ctx);
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(pause) = ctx.pause.take() {
            // this machine refused the last connect (`fail_to_connect`)
            tokio::time::sleep(pause).await;
        }
        if let Some(f) = &self.listener.forward {
            return f.upstream_peer(&mut ctx.fwd);
        }
        let Some(route) = self.route(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let pool = &route.pool;
        // A retry after a failed connect skips that backend (marked in `fail_to_connect`); one
        // after a stale pooled connection may use the same backend on a fresh connection.
        ctx.pick = None;
        ctx.attempts += 1;
        ctx.obs.peer_selected();
        // Pingora connects (or takes a pooled connection) after this phase
        ctx.obs.connecting();
        let started = match ctx.started {
            Some(t) => t,
            None => {
                policy::retry::begin(pool);
                *ctx.started.insert(std::time::Instant::now())
            }
        };
        let mut picked = pool
            .select_queued_for(ctx.sticky.pin, ctx.hash, ctx.tried)
            .await;
        if let (Err(crate::upstream::NoBackend::None), Some(skip)) =
            (&picked, policy::retry::skip_fewer(ctx.tried, ctx.refused))
        {
            ctx.tried = skip;
            picked = pool
                .select_queued_for(ctx.sticky.pin, ctx.hash, ctx.tried)
                .await;
        }
        let pick = match picked {
            Ok(p) => p,
            Err(no) => {
                warn!(
                    "{}: upstream {}: no backend for {} ({no:?})",
                    self.listener.name, pool.name, route.label
                );
                let why = policy::retry::no_backend(no, ctx.last_connect);
                ctx.overloaded = why == Failure::Overloaded;
                return Error::e_explain(ErrorType::HTTPStatus(why.status()), "no backend");
            }
        };
        ctx.obs.picked(&pick.slot.label);
        let mut peer = crate::tls::upstream::http_peer(&pool.spec, pick.slot.addr);
        let o = &mut peer.options;
        o.connection_timeout = Some(pool.connect_timeout);
        o.total_connection_timeout = Some(pool.connect_timeout);
        o.read_timeout = Some(policy::retry::try_timeout(pool, started.elapsed()));
        o.write_timeout = Some(pool.spec.write_timeout);
        o.idle_timeout = Some(pool.spec.idle_timeout);
        // The policy's header edits are the only ones (see `upstream_request_filter`).
        o.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        ctx.pick = Some(pick);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(short) =
            crate::upstream::local::io_cause(&e).filter(|io| crate::upstream::local::refused(io))
        {
            // Not the backend's doing: it is neither blamed nor skipped, the try not counted;
            // `upstream_peer` waits the pause, then connects again.
            let backend = peer._address.to_string();
            policy::shortage::warn(&self.listener.name, &backend, short);
            let limit = peer
                .options
                .connection_timeout
                .unwrap_or(policy::shortage::DEFAULT_LIMIT);
            let shortage = ctx.shortage.get_or_insert_with(Default::default);
            match shortage.next(limit) {
                Some(pause) => {
                    ctx.pause = Some(pause);
                    ctx.attempts = ctx.attempts.saturating_sub(1);
                    if let Some(f) = &self.listener.forward {
                        f.same_address_again(&mut ctx.fwd);
                    }
                    e.set_retry(true);
                }
                None => {
                    ctx.overloaded = true;
                    e.etype = ErrorType::HTTPStatus(Failure::Overloaded.status());
                    e.set_retry(false);
                }
            }
            return e;
        }
        if let Some(f) = &self.listener.forward {
            f.fail_to_connect(&ctx.fwd, peer, &mut e);
            return e;
        }
        let route = self.route(ctx);
        if let Some(p) = &ctx.pick {
            p.slot
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.tried |= bit(p.slot.index);
            ctx.refused |= bit(p.slot.index);
            if let Some(r) = route {
                policy::outlier::observe(&r.pool, &p.slot, true);
            }
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
        ctx.last_connect = match failure(&e) {
            Ok(f @ (Failure::ConnectTimeout | Failure::ConnectFailed)) => Some(f),
            _ => Some(Failure::ConnectFailed),
        };
        let cause = policy::retry::Cause::ConnectFailure;
        if route.is_some_and(|r| self.retry(session, ctx, &r.pool, cause)) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.retrying) {
            // the backend's answer, which `upstream_response_filter` chose to retry
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            // The client's side failed (a cancelled stream, a closed connection): nothing
            // is retried for a client that is gone, and the backend is not to blame.
            e.set_retry(false);
            return e;
        }
        let method = session.req_header().method.as_str();
        let held = !session.as_ref().retry_buffer_truncated();
        let retry = policy::retry::after_stale_connection(method, held, client_reused);
        if retry {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        if e.retry() {
            // a stale pooled connection, the same backend again: not a retry of the policy's
            ctx.attempts = ctx.attempts.saturating_sub(1);
            if let Some(f) = &self.listener.forward {
                f.same_address_again(&mut ctx.fwd);
            }
        } else if let Some(cause) = failed_try(&e) {
            let pool = self.route(ctx).map(|r| r.pool.clone());
            if pool.is_some_and(|p| self.retry(session, ctx, &p, cause)) {
                self.retried(session, ctx, cause);
                e.set_retry(true);
                return e;
            }
        }
        if client_reused {
            warn!(
                "{}: reused upstream connection failed for {method} {}: {e}: {}",
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
        let from_h2 = session.req_header().version >= http::Version::HTTP_2;
        if let Some(f) = &self.listener.forward {
            let (upgrade, trace) = (ctx.upgrade.as_ref(), ctx.obs.trace.as_ref());
            return f.upstream_request_filter(
                session,
                upstream_request,
                upgrade,
                from_h2,
                trace,
                &ctx.fwd,
            );
        }
        let host = request_host(session.req_header()).map(str::to_owned);
        let announce = policy::edit::Announce::Reverse {
            client: client_ip(session),
            tls: self.listener.tls,
            host: host.as_deref(),
        };
        policy::edit::request(
            upstream_request,
            ctx.upgrade.as_ref(),
            announce,
            from_h2,
            self.route(ctx).is_some_and(|r| r.pool.spec.http2),
            ctx.obs.trace.as_ref(),
        )
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
        let not_modified = ctx.not_modified.take();
        Ok(match (self.route_cache(ctx), not_modified) {
            (Some(c), Some(nm)) => c.revalidated(session, resp, &nm),
            (Some(c), None) => c.response_cacheable(session, resp),
            (None, _) => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
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
        let code = resp.status.as_u16();
        if resp.status.is_informational() && code != 101 {
            // Pingora writes every 1xx unless told to ignore them; ignoring still lets a
            // 100 through to an HTTP/1.1 `Expect: 100-continue`, as the policy does.
            let req = session.req_header();
            let to = policy::interim::Client {
                http10: req.version < http::Version::HTTP_11,
                h2: session.is_http2(),
                expects_continue: req.version >= http::Version::HTTP_11
                    && req
                        .headers
                        .get(http::header::EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            };
            let forwarded = policy::interim::forwarded(code, to);
            session.set_ignore_info_resp(!forwarded);
            return Ok(());
        }
        if let Some(c) = self.route_cache(ctx) {
            c.response_filter(session, resp, &self.listener.name, self.listener.tls)?;
        }
        self.compress(session, resp, ctx)?;
        if let (Some(r), Some(p)) = (self.route(ctx), &ctx.pick) {
            let tls = self.listener.tls;
            if let Some(c) = policy::sticky::set_cookie(&r.pool, &ctx.sticky, &p.slot, tls) {
                resp.append_header(http::header::SET_COOKIE, c)?;
            }
        }
        if let Some(v) = policy::edit::alt_svc(&self.listener) {
            resp.insert_header(http::header::ALT_SVC, v.clone())?;
        }
        if !policy::keep_after_upgrade(ctx.upgrade.is_some(), resp.status.as_u16() == 101) {
            session.set_keepalive(None);
        }
        if session.req_header().version == http::Version::HTTP_10
            && !policy::edit::response_for_http10(resp)
        {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let code = upstream_response.status.as_u16();
        if let Some(why) = policy::answer::backend_status_refused(code, ctx.upgrade.is_some()) {
            return Error::e_explain(ErrorType::HTTPStatus(Failure::BadResponse.status()), why);
        }
        let mut codings = policy::fields::Codings::default();
        for v in upstream_response
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
        {
            codings.add(v.as_bytes());
        }
        if let Err(why) = codings.chunked() {
            return Error::e_explain(ErrorType::HTTPStatus(Failure::BadResponse.status()), why);
        }
        // Decided on the head, before any of it goes to the client.
        let cause = policy::retry::Cause::Status(code);
        let pool = self.route(ctx).map(|r| r.pool.clone());
        if self.listener.forward.is_none()
            && pool.is_some_and(|p| self.retry(session, ctx, &p, cause))
        {
            self.retried(session, ctx, cause);
            ctx.retrying = true;
            let mut e = Error::explain(ErrorType::HTTPStatus(code), "backend answer retried");
            e.set_retry(true);
            return Err(e);
        }
        ctx.head_seen |= !upstream_response.status.is_informational();
        policy::edit::response(upstream_response);
        // pingora merges only a few of a revalidating 304's fields into the stored head
        // before `response_cache_filter`; keep the 304 so that hook can merge them all
        if code == 304 && session.cache.phase() == CachePhase::Stale {
            ctx.not_modified = Some(Box::new(upstream_response.clone()));
        }
        match &self.listener.forward {
            Some(f) => {
                f.upstream_response_filter(session, upstream_response, &mut ctx.fwd)
                    .await
            }
            None => Ok(()),
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(e) = ctx.encoder.as_mut() {
            let data = body.as_deref().unwrap_or_default();
            let out = e
                .push(data, end_of_stream)
                .or_err(ErrorType::InternalError, "while compressing the response")?;
            *body = Some(out);
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(f) = &self.listener.forward {
            f.upstream_response_body_filter(body, end_of_stream, &mut ctx.fwd)?;
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
        let id = self.route(ctx).map(|r| r.id);
        ctx.obs.connected(id, reused);
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // fail_to_proxy logged it, once, at the level it deserves
        matches!(failure(e), Ok(Failure::ClientGone))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let route = self.route(ctx);
        // (a stream's cancel: HTTP/2, and HTTP/3 streams handed over as custom sessions)
        let multiplexed =
            session.is_http2() || session.req_header().version == http::Version::HTTP_3;
        if multiplexed && e.is_some_and(|e| matches!(failure(e), Ok(Failure::ClientGone))) {
            crate::observability::client_closed(route.map(|r| r.id));
        }
        let slot = ctx.pick.as_ref().map(|p| &*p.slot);
        // How the last backend did, for outlier detection (connect failures were told in
        // `fail_to_connect`).
        if let (Some(r), Some(s)) = (route, slot) {
            let failed = match e.map(failure) {
                Some(Ok(Failure::BadResponse | Failure::ResponseTimeout)) => Some(true),
                Some(_) => None,
                None => session
                    .response_written()
                    .map(|h| policy::outlier::failed_answer(&r.pool, h.status.as_u16())),
            };
            if let Some(f) = failed {
                policy::outlier::observe(&r.pool, s, f);
            }
        }
        crate::observability::request_done(
            session,
            e,
            route.map(|r| r.id),
            slot,
            &ctx.obs,
            ctx.fwd.tunnel,
        );
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(f) = &self.listener.forward {
            if let Some(r) = f.fail_to_proxy(session, &ctx.fwd).await {
                return r;
            }
        }
        let code = match failure(e) {
            Ok(f) => f.status(),
            Err(code) => code,
        };
        if code == 0 {
            info!(
                "{}: client closed the request for {} (backend {}): {e}",
                self.listener.name,
                session.req_header().uri,
                ctx.backend_label().unwrap_or("-")
            );
        } else {
            warn!(
                "{}: answering {code} for {} (backend {}): {e}",
                self.listener.name,
                session.req_header().uri,
                ctx.backend_label().unwrap_or("-")
            );
            // After a partial response the status line is gone; then the only safe move is to close.
            if session.response_written().is_none() {
                let a = match ctx.overloaded {
                    true => Failure::Overloaded.answer(),
                    false => None,
                };
                let a = a.unwrap_or_else(|| Answer::closing(code));
                let _ = respond_answer(session, &a).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
