//! The forward proxy: a `protocol: http` listener with a `forward_proxy:` block acts for
//! its clients, as Squid does. It serves absolute-form requests (`GET http://host/ HTTP/1.1`)
//! and CONNECT tunnels, with access rules, Basic proxy auth, anonymity and content filters.
//!
//! Design. Everything goes through the one `ProxyHttp` implementation of the HTTP engines,
//! which delegates to [`Forward`] from a handful of phases when the listener is a forward
//! proxy:
//! - `request_filter` ([`Forward::request_filter`]): target parsing, auth, the access rules
//!   on the name, resolution (only for a request the name did not deny), the
//!   private-destination guard, the access rules with the addresses, URL filter; CONNECT is
//!   answered and tunnelled right here.
//! - `upstream_peer`: one `HttpPeer` per resolved address, so Pingora's connection pool
//!   keeps origin connections alive across requests and clients; a failed connect retries
//!   the next address.
//! - `upstream_request_filter`: origin-form request line, Host, then the one request edit of
//!   every listener ([`crate::policy::edit::request`], announcing what the anonymity mode
//!   allows) and the anonymity step. The peers' own Pingora request policy is `preserve`,
//!   as on reverse routes, so that edit is the only one.
//! - `upstream_response_filter` / `upstream_response_body_filter`: content filtering,
//!   before the cache and before anything reaches the client.
//! - `fail_to_proxy`: the proxy's own 403 page for a blocked response.
//! - the cache hooks: the HTTP engines hand them [`Forward::cache`], the shared cache with the
//!   routes' semantics. Its key is built from the absolute-form target (scheme, host, port,
//!   path, query; see `cache::policy::key_text`) under the listener's name, so two
//!   origins never share an entry. `PURGE http://host/path` is answered in `request_filter`
//!   (after proxy auth, before the destination rules), from `purge_from` clients only.
//!
//! Caching and content filtering: a hit is served without any upstream filter, so only
//! responses that passed the filters may be stored. Pingora runs the upstream response
//! filters on each piece before handing it to the cache: a blocked content type fails the
//! request before any cache metadata is written, and a blocked body chunk fails it before
//! that chunk is written, so the store's writer is dropped unfinished and the entry never
//! becomes visible (the store publishes only at `finish`). The URL filter runs in
//! `request_filter`, before the lookup, so it applies to hits as well.
//!
//! CONNECT over HTTP/2 (an `h2c: true` listener, RFC 9113 §8.5) passes the same checks
//! in `request_filter`; its tunnel is the request's stream (see [`tunnel`]), nothing is
//! taken over.
//!
//! CONNECT: Pingora answers CONNECT with 405 unless `allow_connect_method_proxying` is set,
//! and then treats it as an ordinary request to proxy to an upstream (for chaining proxies);
//! it has no tunnel. We set the option on forward listeners only, so CONNECT reaches
//! `request_filter`, where the checks run with the ordinary session (error pages, keep-alive
//! and logging all work as for any request), and only once the origin has accepted the TCP
//! connection do we take the client socket over from Pingora ([`tunnel::take_over`]) and
//! write the 200 ourselves. The alternative, a separate `ServerApp` that sniffs the method
//! before Pingora parses anything, would need its own HTTP/1 parser and keep-alive loop, and
//! a CONNECT arriving on a kept-alive connection after a GET would still land in Pingora.
//!
//! Content filtering and the response head: Pingora sends the response head to the client
//! as soon as the filters of its batch have run, usually before the first body byte has
//! arrived. Decisions on the head alone (content type, an encoding that cannot be
//! scanned) therefore always get the proxy's 403 page; a body pattern found after the head
//! was sent cuts the response: the chunk with the match is never forwarded and the
//! connection is closed without a proper end of body, so the client sees a truncated,
//! failed transfer. Only when the head and the matching piece arrive in the same batch is
//! the response replaced by the page. This needs no buffering of bodies at all.
//! `filter.hold_head_bytes` (default 0) widens that: the head and up to that many body
//! bytes are held back while they are scanned ([`hold`]), so a match among them gets the
//! page too; a match beyond them still cuts. A held response closes the client connection
//! after it.

pub mod acl;
pub mod anonymity;
pub mod auth;
pub mod filter;
pub mod hold;
pub mod tunnel;

use crate::cache::RouteCache;
use crate::config::forward::ForwardSpec;
use bytes::Bytes;
use log::{debug, info, warn};
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub struct Forward {
    listener: String,
    spec: ForwardSpec,
    auth: Option<auth::Auth>,
    filter: filter::Filter,
    /// The shared cache, when `cache.enabled`; the HTTP engines' cache hooks use it.
    pub cache: Option<RouteCache>,
}

/// Per-request state of a forward request, part of the HTTP engine's per-request context.
#[derive(Default)]
pub struct FwdCtx {
    /// Resolved destination addresses, in connect order.
    addrs: Vec<SocketAddr>,
    /// Next address `upstream_peer` will use.
    next: usize,
    /// `host[:port]` as the client wrote it, for the Host header.
    authority: String,
    /// Why the response was blocked, once it was.
    blocked: Option<String>,
    scan: Option<filter::BodyScan>,
    /// The response head and first body bytes held back while they are scanned.
    hold: Option<hold::Hold>,
    /// A CONNECT tunnel that was established: the bytes it carried up and down.
    pub tunnel: Option<(u64, u64)>,
}

struct Target {
    /// Lower case, IPv6 without brackets.
    host: String,
    port: u16,
    authority: String,
}

impl Forward {
    pub fn new(listener: &str, spec: &ForwardSpec) -> Arc<Forward> {
        Arc::new(Forward {
            listener: listener.to_string(),
            spec: spec.clone(),
            auth: spec
                .auth
                .as_ref()
                .map(|a| auth::Auth::new(&a.realm, &a.users)),
            filter: filter::Filter::new(&spec.filter),
            cache: spec.cache.clone().map(RouteCache::new),
        })
    }

    /// Pingora server options a forward listener needs: CONNECT must reach `request_filter`;
    /// `h2c` as the listener says (CONNECT over HTTP/2 is then served too).
    pub fn server_options(h2c: bool) -> pingora_core::apps::HttpServerOptions {
        let mut o = pingora_core::apps::HttpServerOptions::default();
        o.allow_connect_method_proxying = true;
        o.h2c = h2c;
        o
    }

    fn deny_log(&self, session: &Session, what: &str) {
        let req = session.req_header();
        warn!(
            "{}: {} {} {}: {what}",
            self.listener,
            client_ip(session)
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            req.method,
            String::from_utf8_lossy(req.raw_path())
        );
    }

    pub async fn request_filter(&self, session: &mut Session, ctx: &mut FwdCtx) -> Result<bool> {
        let req = session.req_header();
        let connect = req.method == http::Method::CONNECT;
        let method = req.method.as_str().to_string();
        let t = match target(req) {
            Ok(t) => t,
            Err(why) => {
                self.deny_log(session, &format!("400: {why}"));
                page(session, 400, why, None, true).await?;
                return Ok(true);
            }
        };
        if connect && !self.spec.connect_ports.contains(&t.port) {
            let why = format!("CONNECT to port {} is not allowed", t.port);
            self.deny_log(session, &format!("403: {why}"));
            page(session, 403, &why, None, true).await?;
            return Ok(true);
        }
        if let Some(a) = &self.auth {
            let cred = session
                .req_header()
                .headers
                .get(http::header::PROXY_AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            if let Err(why) = a.check(cred.as_deref()).await {
                self.deny_log(session, &format!("407: {why}"));
                let challenge = format!("Basic realm=\"{}\"", a.realm);
                page(
                    session,
                    407,
                    "Proxy authentication required",
                    Some(("proxy-authenticate", challenge)),
                    connect,
                )
                .await?;
                return Ok(true);
            }
        }
        // PURGE names an absolute URL and never reaches the origin, so it is decided by
        // the cache's purge_from alone, not by the destination rules below.
        if let Some(c) = &self.cache {
            if crate::cache::purge::handle(c, session, &self.listener, false).await? {
                return Ok(true);
            }
        }
        // The rules first see the name alone: a denied name is answered without a lookup.
        let literal = t
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| [SocketAddr::new(ip, t.port)]);
        let mut subject = acl::Subject {
            client: client_ip(session),
            host: &t.host,
            addrs: literal.as_ref().map(|a| &a[..]),
            port: t.port,
            method: &method,
        };
        if let Some(Err(rule)) = acl::decide(&self.spec.access, &subject) {
            self.deny_log(session, &format!("403: denied by {rule}"));
            let why = format!("Access denied by {rule}");
            page(session, 403, &why, None, connect).await?;
            return Ok(true);
        }
        // Max-Forwards spent (RFC 9110 §7.6.2): answered as the final recipient once the
        // client passed authentication and the rules that see the name, and before any
        // lookup, since nothing is forwarded.
        if crate::policy::edit::max_forwards_spent(session.req_header()) {
            let a = crate::policy::answer::Answer::final_recipient();
            crate::net::respond::respond_answer(session, &a).await?;
            return Ok(true);
        }
        let addrs = match resolve(&self.listener, &t.host, t.port, self.spec.connect_timeout).await
        {
            Ok(a) => a,
            Err((code, why)) => {
                self.deny_log(session, &format!("{code}: {why}"));
                page(
                    session,
                    code,
                    "The destination could not be resolved",
                    None,
                    connect,
                )
                .await?;
                return Ok(true);
            }
        };
        if !self.spec.allow_private_destinations {
            if let Some(a) = addrs.iter().find(|a| acl::is_private(a.ip())) {
                self.deny_log(
                    session,
                    &format!("403: private destination {} ({})", t.host, a.ip()),
                );
                page(
                    session,
                    403,
                    "The destination is on a private network",
                    None,
                    true,
                )
                .await?;
                return Ok(true);
            }
        }
        // Again with the addresses: network rules decide now; with addresses the rules
        // always decide, `None` would be a bug and is a deny.
        subject.addrs = Some(&addrs);
        if let Err(rule) =
            acl::decide(&self.spec.access, &subject).unwrap_or(Err("the default rule (deny)"))
        {
            self.deny_log(session, &format!("403: denied by {rule}"));
            let why = format!("Access denied by {rule}");
            page(session, 403, &why, None, connect).await?;
            return Ok(true);
        }
        if connect {
            ctx.tunnel = self.tunnel(session, &t, &addrs).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let url = format!(
            "http://{}{}",
            t.authority,
            req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        if let Some(g) = self.filter.url_blocked(&url) {
            self.deny_log(
                session,
                &format!("403: URL matches block_url_patterns {g:?}"),
            );
            page(
                session,
                403,
                "The URL is blocked by the content filter",
                None,
                false,
            )
            .await?;
            return Ok(true);
        }
        ctx.addrs = addrs;
        ctx.authority = t.authority;
        Ok(false)
    }

    /// Answer a CONNECT and relay it; the bytes carried up and down once it was established.
    async fn tunnel(
        &self,
        session: &mut Session,
        t: &Target,
        addrs: &[SocketAddr],
    ) -> Result<Option<(u64, u64)>> {
        let up = match tunnel::connect(&self.listener, addrs, self.spec.connect_timeout).await {
            Ok(s) => s,
            Err((code, why)) => {
                self.deny_log(session, &format!("{code}: {why}"));
                page(
                    session,
                    code,
                    "The destination did not accept the connection",
                    None,
                    true,
                )
                .await?;
                return Ok(None);
            }
        };
        let client = client_ip(session);
        let log_closed = |sent: u64, recv: u64| {
            info!(
                "{}: {} CONNECT {}:{} closed, {sent} bytes up, {recv} bytes down",
                self.listener,
                client.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                t.host,
                t.port
            )
        };
        if let ServerSession::H2(h2) = &mut *session.downstream_session {
            // RFC 9113 §8.5: the 200 opens the tunnel on the CONNECT stream itself
            let ok = ResponseHeader::build(200, None)?;
            h2.write_response_header(Box::new(ok), false)?;
            let Some(send) = h2.take_response_body_writer() else {
                return Ok(None);
            };
            let ((sent, recv), clean) =
                tunnel::relay_h2(h2, send, up, self.spec.tunnel_idle_timeout).await;
            if !clean {
                h2.shutdown_with_reason(h2::Reason::CONNECT_ERROR);
            }
            log_closed(sent, recv);
            return Ok(Some((sent, recv)));
        }
        let Some((mut down, early)) = tunnel::take_over(session).await else {
            self.deny_log(session, "CONNECT needs HTTP/1.1");
            page(session, 405, "CONNECT needs HTTP/1.1", None, true).await?;
            return Ok(None);
        };
        if down
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
            || down.flush().await.is_err()
        {
            return Ok(None);
        }
        let (sent, recv) = tunnel::relay(down, early, up, self.spec.tunnel_idle_timeout).await;
        log_closed(sent, recv);
        Ok(Some((sent, recv)))
    }

    pub fn upstream_peer(&self, ctx: &mut FwdCtx) -> Result<Box<HttpPeer>> {
        let Some(addr) = ctx.addrs.get(ctx.next).copied() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no destination address left");
        };
        ctx.next += 1;
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.spec.connect_timeout);
        o.total_connection_timeout = Some(self.spec.connect_timeout);
        o.read_timeout = Some(self.spec.read_timeout);
        o.write_timeout = Some(self.spec.read_timeout);
        o.idle_timeout = Some(crate::config::DEFAULT_UPSTREAM_IDLE_TIMEOUT);
        // the request edit is the policy's (`upstream_request_filter`), as on reverse routes
        o.http_upstream_request_policy =
            pingora_core::upstreams::peer::HttpUpstreamRequestPolicy::preserve();
        Ok(Box::new(peer))
    }

    /// A stale pooled connection failed: the next try goes to the same address again, on a
    /// fresh connection (it is not the address that failed).
    pub fn same_address_again(&self, ctx: &mut FwdCtx) {
        ctx.next = ctx.next.saturating_sub(1);
    }

    /// Try the next resolved address, if there is one.
    pub fn fail_to_connect(&self, ctx: &FwdCtx, peer: &HttpPeer, e: &mut Error) {
        warn!(
            "{}: connect to {} for {} failed: {e}",
            self.listener, peer._address, ctx.authority
        );
        if ctx.next < ctx.addrs.len() {
            e.set_retry(true);
        }
    }

    /// The request to the origin: origin-form target, the client's authority as Host, and
    /// the one request edit of every listener ([`crate::policy::edit::request`]: hop-by-hop
    /// and nominated fields, upgrades, Content-Length, underscored names), announcing what
    /// the listener's anonymity allows; then the anonymity step removes what could still
    /// name the client. `upgrade`: the request's relayed upgrade, if any; `trace`: its
    /// trace, when tracing is on (the origin gets the proxy's span as `traceparent`).
    pub fn upstream_request_filter(
        &self,
        session: &Session,
        up: &mut RequestHeader,
        upgrade: Option<&http::HeaderValue>,
        from_h2: bool,
        trace: Option<&crate::observability::tracing::TraceCtx>,
        ctx: &FwdCtx,
    ) -> Result<()> {
        let pq = up
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let uri = http::Uri::try_from(pq).or_err(ErrorType::InvalidHTTPHeader, "request path")?;
        up.set_uri(uri);
        let announce = anonymity::announce(self.spec.anonymity, client_ip(session));
        crate::policy::edit::request(up, upgrade, announce, from_h2, false, trace)?;
        up.insert_header(http::header::HOST, ctx.authority.as_str())?;
        anonymity::apply(up, self.spec.anonymity);
        if self.filter.scans_bodies() {
            // Offer only what the body scan can decode.
            let gzip = up
                .headers
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
            if gzip {
                up.insert_header(http::header::ACCEPT_ENCODING, "gzip")?;
            } else {
                up.remove_header(&http::header::ACCEPT_ENCODING);
            }
        }
        Ok(())
    }

    pub async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &ResponseHeader,
        ctx: &mut FwdCtx,
    ) -> Result<()> {
        let h = |n| {
            resp.headers
                .get(n)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        if let Some(ct) = h(http::header::CONTENT_TYPE) {
            if let Some(rule) = self.filter.content_type_blocked(ct) {
                return self.block(ctx, format!("content type {ct:?} matches {rule:?}"));
            }
        }
        let no_body = session.req_header().method == http::Method::HEAD
            || resp.status.is_informational()
            || resp.status == 204
            || resp.status == 304;
        if self.filter.scans_bodies() && !no_body {
            match self.filter.body_scan(h(http::header::CONTENT_ENCODING)) {
                Ok(s) => ctx.scan = Some(s),
                Err(why) => return self.block(ctx, why),
            }
            let limit = self.filter.hold_head_bytes();
            if limit > 0 {
                ctx.hold = hold::Hold::begin(session, limit).await;
            }
        }
        Ok(())
    }

    pub fn upstream_response_body_filter(
        &self,
        body: &Option<Bytes>,
        end: bool,
        ctx: &mut FwdCtx,
    ) -> Result<()> {
        let Some(scan) = ctx.scan.as_mut() else {
            return Ok(());
        };
        let n = body.as_ref().map_or(0, |b| b.len());
        match body.as_ref().map(|b| scan.feed(b)) {
            None | Some(Ok(None)) => {
                if let Some(h) = ctx.hold.as_mut() {
                    h.observe(n, end);
                }
                Ok(())
            }
            Some(Ok(Some(p))) => self.block(ctx, format!("body contains {p:?}")),
            Some(Err(why)) => self.block(ctx, why),
        }
    }

    fn block(&self, ctx: &mut FwdCtx, why: String) -> Result<()> {
        ctx.blocked = Some(why);
        ctx.scan = None;
        Error::e_explain(ErrorType::HTTPStatus(403), "blocked by the content filter")
    }

    /// The proxy's page for a blocked response, or `None` for other failures.
    pub async fn fail_to_proxy(&self, session: &mut Session, ctx: &FwdCtx) -> Option<FailToProxy> {
        let why = ctx.blocked.as_deref()?;
        // a held response that was not released yet: what was kept is dropped
        let held = match &ctx.hold {
            Some(h) => h.take_back(session).await,
            None => false,
        };
        if held || session.response_written().is_none() {
            self.deny_log(session, &format!("403: response blocked, {why}"));
            let _ = page(
                session,
                403,
                "The response is blocked by the content filter",
                None,
                true,
            )
            .await;
        } else {
            self.deny_log(session, &format!("response cut, {why}"));
        }
        Some(FailToProxy {
            error_code: 403,
            can_reuse_downstream: false,
        })
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The destination, from the raw request target: Pingora keeps only the path in `uri`
/// and the absolute-form target verbatim in `raw_path`.
fn target(req: &RequestHeader) -> std::result::Result<Target, &'static str> {
    use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
    let raw = req.raw_path();
    let (auth, default_port) =
        if req.method == http::Method::CONNECT {
            (raw, None)
        } else {
            match raw_target_authority(raw) {
                RawTargetAuthority::None => return Err(
                    "this is a forward proxy: the request needs an absolute URL (http://host/path)",
                ),
                RawTargetAuthority::AmbiguousAuthority => return Err("ambiguous request target"),
                RawTargetAuthority::Absolute {
                    scheme, authority, ..
                } => {
                    if !scheme.eq_ignore_ascii_case(b"http") {
                        return Err("only http:// URLs are proxied; use CONNECT for https");
                    }
                    (authority, Some(80))
                }
            }
        };
    let auth =
        http::uri::Authority::try_from(auth).map_err(|_| "the destination is not host:port")?;
    if auth.as_str().contains('@') {
        return Err("user information in the destination is not allowed");
    }
    let port = match (auth.port_u16(), default_port) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => return Err("CONNECT needs host:port"),
    };
    if port == 0 {
        return Err("the destination port is not valid");
    }
    Ok(Target {
        host: host_of(auth.host())?,
        port,
        authority: auth.as_str().to_string(),
    })
}

fn host_of(h: &str) -> std::result::Result<String, &'static str> {
    let h = h
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if h.parse::<IpAddr>().is_ok() || crate::config::valid_hostname(&h) {
        Ok(h)
    } else {
        Err("the destination host is not valid")
    }
}

/// Addresses of `host`, IP literals as they are, names through the system resolver (on
/// tokio's blocking pool, so it never stalls the event loop). Each lookup is logged at debug
/// level (`resolving NAME`).
async fn resolve(
    listener: &str,
    host: &str,
    port: u16,
    timeout: std::time::Duration,
) -> std::result::Result<Vec<SocketAddr>, (u16, String)> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    debug!("{listener}: resolving {host}");
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err((504, format!("resolving {host} timed out"))),
        Ok(Err(e)) => Err((502, format!("cannot resolve {host}: {e}"))),
        Ok(Ok(it)) => {
            let mut v: Vec<SocketAddr> = Vec::new();
            for a in it {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            if v.is_empty() {
                Err((502, format!("{host} has no addresses")))
            } else {
                Ok(v)
            }
        }
    }
}

/// The proxy's own answer ([`crate::policy::answer::Answer`]), its page naming the reason
/// (for a deny: the rule), never an origin detail beyond what the client asked for.
async fn page(
    session: &mut Session,
    code: u16,
    detail: &str,
    header: Option<(&'static str, String)>,
    close: bool,
) -> Result<()> {
    let mut a = crate::policy::answer::Answer::new(code).with_detail(detail);
    a.close = close;
    if let Some((name, value)) = header {
        a = a.with_field(name, value);
    }
    crate::net::respond::respond_answer(session, &a).await
}
