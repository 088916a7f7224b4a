//! The HTTP/1 fast path: plain reverse-proxy requests served without Pingora's per-request
//! machinery.
//!
//! Profiled (callgrind), a proxied keep-alive GET cost about 90K instructions, 80% of them
//! inside Pingora's generic HTTP/1 proxy: a large per-request future boxed and copied into
//! place, header maps built and grown for both sides, a watcher task spawned each time an
//! upstream connection went back into the pool. nginx and HAProxy were 2.5× faster per core.
//! The common request, an HTTP/1.1 request with a Content-Length body (or none) for a
//! route without a cache, to plain HTTP/1 backends, needs none of that. Here it is parsed in
//! place (httparse, headers borrowed from the read buffer), routed, and its head is written
//! to the backend in one buffer with the hop-by-hop headers dropped and X-Forwarded-* set;
//! the response head is rewritten the same way and the body streamed through unchanged
//! (chunked bodies too, with their framing checked as they pass). Upstream connections come
//! from a per-thread pool ([`crate::upstream::conns`]).
//!
//! On a cached route only fresh cache hits are served here: a GET or HEAD without a body,
//! conditional (`If-*`), `Range`, `Cache-Control`, `Pragma` or `Authorization` fields, whose
//! key (built by [`policy::cache_key_origin_form`], the general path's key function) finds a
//! complete entry without `Vary`, with a Content-Length matching its body, that is fresh now
//! and not predicted uncacheable. The stored head was rendered once at admission as Pingora's
//! hit path sends it (`Accept-Ranges` on a 200); `Age`, the route's status header (`HIT`) and
//! `Date` are added, the body is the store's buffer, the LRU is touched and the request counted
//! as a hit. Every other request on a cached route (misses, stale entries, conditionals,
//! ranges, variants, PURGE, ...) goes to the general path as before.
//!
//! Everything else goes to Pingora's path ([`super::HttpProxy`]) untouched, decided before
//! any side effect: the bytes read so far are handed back to the request-head guard, which
//! replays them to Pingora. That is: cached routes (but for their fresh hits), TLS / HTTP/2 /
//! PROXY-protocol upstreams, forward-proxy and redirect listeners, HTTP/1.0, absolute-form
//! targets and CONNECT, `Transfer-Encoding` requests, `Expect`, `Upgrade`, a `Connection`
//! header that nominates other fields, requests without Host, and heads httparse would not
//! take.
//!
//! The behaviour matches the general path: the same head guard and strict checks (they ran
//! while the head was read), rate limit, 404/413/429/502/503/504 pages, connect retries on
//! another backend, one retry of an idempotent request whose reused connection turned out
//! stale, the same metrics and access-log line, `Connection: close` while draining.

use super::cache::{self, policy};
mod h2;

use super::guard::Guarded;
use super::router::{strip_port, Route};
use super::Listener;
use crate::config::{HashKey, Selection};
use crate::observability::{self, ReqView, RequestObs};
use crate::upstream::{bit, conns, select::hash_bytes, Pick, Pool};
use log::warn;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header fields parsed per message; a head with more goes to Pingora's path (requests) or
/// is a 502 (responses). The guard's `max_header_count` (default 100) applies first.
const MAX_HEADERS: usize = 128;
/// First size of the request head buffer; it grows to the guard's `max_header_size`.
const HEAD_BUF: usize = 4096;
/// Response buffer: a small response comes in one read; bigger bodies stream through the
/// larger one.
const RESP_BUF: usize = 16 * 1024;
const BODY_BUF: usize = 64 * 1024;
/// Bodies up to this size are sent to the client with their head in one write.
const SMALL_BODY: usize = 16 * 1024;
/// Longest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest wait for a client to take response bytes or send request body bytes (nginx's
/// `send_timeout` and `client_body_timeout` defaults).
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct FastPath {
    listener: Arc<Listener>,
    proto: &'static [u8],
    /// Requests per client connection (`keepalive_request_limit`), if limited.
    keepalive_limit: Option<u32>,
    /// Idle upstream connections kept per backend and thread.
    pool_max: usize,
}

/// What a client connection keeps between requests.
pub struct Conn {
    client: Option<IpAddr>,
    /// The client address as text, for X-Forwarded-For.
    client_text: Box<[u8]>,
    served: u32,
}

impl Conn {
    pub fn new(g: &Guarded) -> Conn {
        let client = super::listen::peer_ip(g.inner());
        Conn {
            client,
            client_text: client
                .map(|ip| ip.to_string().into_bytes().into_boxed_slice())
                .unwrap_or_default(),
            served: 0,
        }
    }
}

pub enum Outcome {
    /// The response is complete; the connection may carry the next request.
    KeepAlive,
    /// Close the connection (after a `Connection: close` answer, or an error).
    Close,
    /// Not for this path: the bytes read were handed back to the guard for Pingora.
    Fallback,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    ContentLength,
    Connection,
    /// Hop-by-hop fields that are dropped (RFC 9110 7.6.1 and Pingora's standard list).
    Hop,
    Xff,
    /// X-Forwarded-Proto and -Host: replaced by ours.
    XfReplaced,
    Referer,
    UserAgent,
    Cookie,
    /// `Upgrade`: a WebSocket handshake is served here, other protocols by the general path.
    Upgrade,
    /// Fields that keep a request on a cached route from being answered here as a fresh
    /// hit: conditionals, ranges, request cache directives, credentials.
    NotForHit,
    /// Fields that take a request to the general path.
    General,
    Other,
}

/// Field names compared case-insensitively; lengths first, so most names cost one compare.
fn kind(name: &[u8]) -> Kind {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => Kind::Hop,
        4 if is(b"host") => Kind::Host,
        5 if is(b"range") => Kind::NotForHit,
        6 if is(b"cookie") => Kind::Cookie,
        6 if is(b"expect") => Kind::General,
        6 if is(b"pragma") => Kind::NotForHit,
        7 if is(b"referer") => Kind::Referer,
        7 if is(b"upgrade") => Kind::Upgrade,
        7 if is(b"trailer") => Kind::Hop,
        8 if is(b"if-match") || is(b"if-range") => Kind::NotForHit,
        10 if is(b"connection") => Kind::Connection,
        10 if is(b"keep-alive") => Kind::Hop,
        10 if is(b"user-agent") => Kind::UserAgent,
        13 if is(b"cache-control") || is(b"if-none-match") || is(b"authorization") => {
            Kind::NotForHit
        }
        14 if is(b"content-length") => Kind::ContentLength,
        14 if is(b"http2-settings") => Kind::General,
        15 if is(b"x-forwarded-for") => Kind::Xff,
        16 if is(b"proxy-connection") => Kind::Hop,
        16 if is(b"x-forwarded-host") => Kind::XfReplaced,
        17 if is(b"transfer-encoding") => Kind::General,
        17 if is(b"x-forwarded-proto") => Kind::XfReplaced,
        17 if is(b"if-modified-since") => Kind::NotForHit,
        18 if is(b"proxy-authenticate") => Kind::Hop,
        19 if is(b"proxy-authorization") => Kind::Hop,
        19 if is(b"if-unmodified-since") => Kind::NotForHit,
        _ => Kind::Other,
    }
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// Why the backend exchange failed, and so which page the client gets.
enum Failure {
    /// 502/503/504 to the client, with a reason for the log.
    Answer(u16, String),
    /// The client went away or the response was cut after its head was sent: close.
    Cut,
}

impl FastPath {
    /// The fast path for a listener, or `None` when none of its requests can take it.
    pub fn new(
        listener: Arc<Listener>,
        keepalive_limit: Option<u32>,
        pool_max: usize,
    ) -> Option<FastPath> {
        if listener.forward.is_some() || listener.redirect_https.is_some() {
            return None;
        }
        Some(FastPath {
            proto: if listener.tls { b"https" } else { b"http" },
            listener,
            keepalive_limit,
            pool_max,
        })
    }

    /// Whether a route's requests can be proxied on this path: no cache, plain HTTP/1
    /// backends. (A cached route's fresh hits are served here whatever its backends.)
    fn route_ok(route: &Route) -> bool {
        let s = &route.pool.spec;
        route.cache.is_none() && s.tls.is_none() && !s.http2 && s.send_proxy_protocol.is_none()
    }

    /// Serve one request from `g`. `idle_wait`: how long to wait for its first byte when
    /// the caller has not already waited (TLS connections).
    pub async fn serve(
        &self,
        g: &mut Guarded,
        conn: &mut Conn,
        draining: bool,
        idle_wait: Option<Duration>,
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        g.arm_now();
        let mut buf: Vec<u8> = Vec::with_capacity(HEAD_BUF);
        let mut first = true;
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            let r = match idle_wait {
                Some(wait) if first => {
                    tokio::select! {
                        biased;
                        r = g.read_buf(&mut buf) => r,
                        _ = tokio::time::sleep(wait) => return Outcome::Close,
                        _ = crate::lifecycle::idle_connections_closing() => return Outcome::Close,
                    }
                }
                _ => g.read_buf(&mut buf).await,
            };
            first = false;
            match r {
                Ok(0) | Err(_) => return Outcome::Close, // the guard answered and logged
                Ok(_) => {}
            }
            if g.head_done() {
                break;
            }
        }
        self.request(g, conn, draining, &buf, shutdown).await
    }

    /// Everything about a request that needs its parsed header fields, decided without
    /// awaiting (so the parse's field array never lives in the connection's future).
    fn plan<'a>(&'a self, buf: &'a [u8], conn: &mut Conn, draining: bool) -> Plan<'a> {
        let mut hdrs = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut hdrs) {
            Ok(httparse::Status::Complete(n)) => n,
            // Pingora's parser gives the answer (and log line) for anything else.
            _ => return Plan::Fallback,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Plan::Fallback;
        };
        if method == "CONNECT" || !target.starts_with('/') {
            return Plan::Fallback;
        }
        let mut host: Option<&[u8]> = None;
        let mut hosts = 0u32;
        let mut not_for_hit = false;
        let mut body_len = 0u64;
        let mut client_close = false;
        let (mut conn_upgrade, mut websocket) = (false, false);
        let mut xff: Option<&[u8]> = None;
        let (mut referer, mut user_agent): (&[u8], &[u8]) = (b"-", b"-");
        // each field's kind, classified once for both passes below
        let mut kinds = [Kind::Other; MAX_HEADERS];
        for (h, k) in req.headers.iter().zip(kinds.iter_mut()) {
            *k = kind(h.name.as_bytes());
            match *k {
                Kind::Host => {
                    host = Some(h.value);
                    hosts += 1;
                }
                Kind::NotForHit => not_for_hit = true,
                Kind::ContentLength => match parse_len(h.value) {
                    Some(n) => body_len = n,
                    None => return Plan::Fallback,
                },
                Kind::Connection => {
                    for t in tokens(h.value) {
                        if t.eq_ignore_ascii_case(b"close") {
                            client_close = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            conn_upgrade = true;
                        } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                            return Plan::Fallback;
                        }
                    }
                }
                Kind::Xff => {
                    if xff.is_none() {
                        xff = Some(h.value);
                    }
                }
                Kind::Referer => referer = h.value,
                Kind::UserAgent => user_agent = h.value,
                Kind::Upgrade if h.value.trim_ascii().eq_ignore_ascii_case(b"websocket") => {
                    websocket = true
                }
                Kind::General | Kind::Upgrade => return Plan::Fallback,
                Kind::Hop | Kind::XfReplaced | Kind::Cookie | Kind::Other => {}
            }
        }
        // A WebSocket handshake is a bodiless GET naming the upgrade in Connection too; any
        // other use of Upgrade is left to the general path (which drops it).
        if websocket != conn_upgrade || (websocket && (method != "GET" || body_len != 0)) {
            return Plan::Fallback;
        }
        let Some(host_raw) = host else {
            return Plan::Fallback;
        };
        let Ok(host_text) = std::str::from_utf8(host_raw) else {
            return Plan::Fallback;
        };
        let l = &*self.listener;
        let route = l
            .router
            // by path, without the query, as the general path routes
            .find(
                strip_port(host_text),
                target.split_once('?').map_or(target, |(p, _)| p),
            )
            .and_then(|p| l.router.get(p));
        if websocket && route.is_none_or(|r| r.cache.is_some()) {
            return Plan::Fallback;
        }
        // A cached route's requests are served here only as fresh hits, looked up without
        // side effects; everything else about them is the general path's.
        let mut hit = None;
        if let Some(r) = route {
            match &r.cache {
                Some(c) => {
                    let eligible = (method == "GET" || method == "HEAD")
                        && body_len == 0
                        && !not_for_hit
                        && hosts == 1
                        && plain_target(target)
                        && host_raw
                            .iter()
                            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
                    if !eligible {
                        return Plan::Fallback;
                    }
                    let key = policy::cache_key_origin_form(&l.name, l.tls, host_text, target);
                    match cache::fast_hit(&key) {
                        Some(h) if !h.has_header(&c.spec.status_header) => hit = Some((h, c)),
                        _ => return Plan::Fallback,
                    }
                }
                None if !Self::route_ok(r) => return Plan::Fallback,
                None => {}
            }
        }

        // From here on the request is ours.
        conn.served += 1;
        let in_buf = ((buf.len() - head_len) as u64).min(body_len) as usize;
        let r = Req {
            view: ReqView {
                client: conn.client,
                method,
                uri: target,
                version: "HTTP/1.1",
                host: host_text,
                referer: std::str::from_utf8(referer).unwrap_or("-"),
                user_agent: std::str::from_utf8(user_agent).unwrap_or("-"),
                bytes_in: body_len as usize,
            },
            head_only: method == "HEAD",
            pipelined: &buf[head_len + in_buf..],
            body_left: body_len - in_buf as u64,
        };
        let keep = |unread_body: bool| {
            !client_close
                && !draining
                && !unread_body
                && self.keepalive_limit.is_none_or(|n| conn.served < n)
        };
        if let (Some((rate, limit)), Some(ip)) = (&l.rate, conn.client) {
            if rate.observe(&ip, 1) > *limit {
                warn!("{}: rate limit exceeded by {ip}", l.name);
                let keep = keep(r.body_left > 0);
                return Plan::Page(r, 429, None, keep);
            }
        }
        let Some(route) = route else {
            let keep = keep(r.body_left > 0);
            return Plan::Page(r, 404, None, keep);
        };
        if let Some((h, c)) = hit {
            cache::fast_hit_served(&h);
            let keep = keep(false);
            let mut head = Vec::with_capacity(h.head().len() + 128);
            head.extend_from_slice(h.head());
            head.extend_from_slice(b"age: ");
            head.extend_from_slice(h.age().to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(c.spec.status_header.as_str().as_bytes());
            head.extend_from_slice(b": HIT\r\ndate: ");
            date(&mut head);
            head.extend_from_slice(if keep {
                b"\r\n\r\n".as_slice()
            } else {
                b"\r\nconnection: close\r\n\r\n".as_slice()
            });
            let body = (!r.head_only).then(|| h.body().clone());
            return Plan::Hit {
                req: r,
                route: route.id,
                code: h.status(),
                head,
                body,
                keep,
            };
        }
        if body_len > route.max_body_size {
            warn!(
                "{}: request body of {body_len} bytes exceeds the route's max_body_size {}",
                l.name, route.max_body_size
            );
            return Plan::Page(r, 413, Some(route.id), false);
        }

        // The upstream request head, in one buffer with the body bytes already read.
        let mut out = Vec::with_capacity(head_len + 160 + in_buf);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (h, k) in req.headers.iter().zip(kinds) {
            match k {
                Kind::Hop | Kind::Connection | Kind::Upgrade | Kind::Xff | Kind::XfReplaced => {
                    continue
                }
                _ => {}
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if !conn.client_text.is_empty() {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = xff.filter(|p| !p.is_empty() && p.len() < 400) {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(&conn.client_text);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-proto: ");
        out.extend_from_slice(self.proto);
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(host_raw);
        out.extend_from_slice(if websocket {
            b"\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n".as_slice()
        } else {
            b"\r\n\r\n".as_slice()
        });
        out.extend_from_slice(&buf[head_len..head_len + in_buf]);
        let hash = match route.pool.selection {
            Selection::ConsistentHash => hash_key(&route.pool.hash_key, conn, target, req.headers),
            _ => 0,
        };
        Plan::Proxy {
            want_keep: keep(false) && !websocket,
            upgrade: websocket,
            req: r,
            route,
            out,
            hash,
        }
    }

    async fn request(
        &self,
        g: &mut Guarded,
        conn: &mut Conn,
        draining: bool,
        buf: &[u8],
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        let obs = RequestObs::default();
        let (r, route, out, hash, want_keep, upgrade) = match self.plan(buf, conn, draining) {
            Plan::Fallback => {
                g.unread(buf);
                return Outcome::Fallback;
            }
            Plan::Page(r, code, route, keep) => {
                let extra: &[(&str, &str)] = if code == 429 {
                    &[("retry-after", "1")]
                } else {
                    &[]
                };
                let p = page(code, extra, !keep, r.head_only);
                return finish_own(g, &r, route, &obs, code, p, keep).await;
            }
            Plan::Hit {
                req,
                route,
                code,
                head,
                body,
                keep,
            } => return finish_hit(g, &req, route, &obs, code, head, body, keep).await,
            Plan::Proxy {
                req,
                route,
                out,
                hash,
                want_keep,
                upgrade,
            } => (req, route, out, hash, want_keep, upgrade),
        };
        let l = &*self.listener;
        let mut ex = Exchange {
            l,
            route,
            pool: &route.pool,
            pool_max: self.pool_max,
            obs,
            pick: None,
            status: 0,
            bytes_out: 0,
            shutdown: Some(shutdown),
        };
        let res = ex
            .run(
                g,
                &out,
                r.body_left,
                hash,
                (r.view.method, r.view.uri),
                r.head_only,
                Down::H1 { want_keep, upgrade },
            )
            .await;
        drop(out);
        let slot = ex.pick.as_ref().map(|p| &*p.slot);
        let done = |status: u16, bytes_out: usize| {
            observability::fast_request_done(
                &r.view,
                Some(route.id),
                slot,
                &ex.obs,
                status,
                bytes_out,
                false,
            )
        };
        let outcome = match res {
            Ok(true) => {
                done(ex.status, ex.bytes_out);
                g.unread(r.pipelined);
                return Outcome::KeepAlive;
            }
            Ok(false) => {
                done(ex.status, ex.bytes_out);
                Outcome::Close
            }
            Err(Failure::Answer(code, why)) => {
                warn!(
                    "{}: answering {code} for {} (backend {}): {why}",
                    l.name,
                    r.view.uri,
                    slot.map(|s| s.label.as_str()).unwrap_or("-")
                );
                let p = page(code, &[], true, r.head_only);
                let _ = write_flush(g, &p).await;
                done(code, 0);
                Outcome::Close
            }
            Err(Failure::Cut) => {
                done(ex.status, ex.bytes_out);
                return Outcome::Close;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), g.shutdown()).await;
        outcome
    }
}

/// A request the fast path took, as far as the rest of its handling needs it.
struct Req<'a> {
    view: ReqView<'a>,
    head_only: bool,
    /// Bytes after this request's body: the next pipelined request, for the guard.
    pipelined: &'a [u8],
    /// Body bytes still to read from the client.
    body_left: u64,
}

enum Plan<'a> {
    Fallback,
    /// Answer with one of our pages: status, route, keep the connection.
    Page(Req<'a>, u16, Option<usize>, bool),
    /// Answer a fresh hit from the cache: the whole head, and the body unless HEAD.
    Hit {
        req: Req<'a>,
        route: usize,
        code: u16,
        head: Vec<u8>,
        body: Option<bytes::Bytes>,
        keep: bool,
    },
    Proxy {
        req: Req<'a>,
        route: &'a Route,
        out: Vec<u8>,
        hash: u64,
        want_keep: bool,
        /// A WebSocket handshake: after a 101 the connection becomes a tunnel.
        upgrade: bool,
    },
}

fn hash_key(key: &HashKey, conn: &Conn, target: &str, headers: &[httparse::Header]) -> u64 {
    match key {
        HashKey::ClientIp => match conn.client {
            Some(IpAddr::V4(v4)) => hash_bytes(&v4.octets()),
            Some(IpAddr::V6(v6)) => hash_bytes(&v6.octets()),
            None => 0,
        },
        HashKey::Uri => hash_bytes(target.as_bytes()),
        HashKey::Header(name) => headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| hash_bytes(h.value))
            .unwrap_or(0),
        HashKey::Cookie(name) => headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| {
                h.value.split(|&b| b == b';').find_map(|part| {
                    part.trim_ascii()
                        .strip_prefix(name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                })
            })
            .map(hash_bytes)
            .unwrap_or(0),
    }
}

/// One of the proxy's own pages, as bytes on the wire.
fn page(code: u16, extra: &[(&str, &str)], close: bool, head_only: bool) -> Vec<u8> {
    let body = super::error_page(code);
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut p = Vec::with_capacity(256 + body.len());
    p.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
    for (k, v) in extra {
        p.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    p.extend_from_slice(
        format!(
            "content-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\ndate: ",
            body.len()
        )
        .as_bytes(),
    );
    date(&mut p);
    p.extend_from_slice(if close {
        b"\r\nconnection: close\r\n\r\n".as_slice()
    } else {
        b"\r\n\r\n".as_slice()
    });
    if !head_only {
        p.extend_from_slice(&body);
    }
    p
}

/// Send one of our own pages and count the request.
async fn finish_own(
    g: &mut Guarded,
    r: &Req<'_>,
    route: Option<usize>,
    obs: &RequestObs,
    code: u16,
    page: Vec<u8>,
    keep: bool,
) -> Outcome {
    let ok = write_flush(g, &page).await.is_ok();
    observability::fast_request_done(&r.view, route, None, obs, code, 0, false);
    if ok && keep {
        g.unread(r.pipelined);
        return Outcome::KeepAlive;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), g.shutdown()).await;
    Outcome::Close
}

/// Send a cache hit and count the request. A small body goes out in the head's buffer; a
/// larger one is written from the store's buffer, never copied.
#[allow(clippy::too_many_arguments)]
async fn finish_hit(
    g: &mut Guarded,
    r: &Req<'_>,
    route: usize,
    obs: &RequestObs,
    code: u16,
    mut head: Vec<u8>,
    body: Option<bytes::Bytes>,
    keep: bool,
) -> Outcome {
    let body_len = body.as_ref().map_or(0, |b| b.len());
    let ok = match &body {
        Some(b) if b.len() > RESP_BUF => {
            let w = async {
                g.inner_mut().write_all(&head).await?;
                g.inner_mut().write_all(b).await?;
                g.inner_mut().flush().await
            };
            matches!(
                tokio::time::timeout(DEFAULT_CLIENT_TIMEOUT, w).await,
                Ok(Ok(()))
            )
        }
        _ => {
            if let Some(b) = &body {
                head.extend_from_slice(b);
            }
            write_flush(g, &head).await.is_ok()
        }
    };
    let sent = if ok { body_len } else { 0 };
    observability::fast_request_done(&r.view, Some(route), None, obs, code, sent, true);
    if ok && keep {
        g.unread(r.pipelined);
        return Outcome::KeepAlive;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), g.shutdown()).await;
    Outcome::Close
}

/// An origin-form target made only of RFC 3986 path and query characters, which the
/// general path's `http::Uri` keeps verbatim in `path_and_query` (so both paths key it the
/// same); anything else (a fragment, raw spaces or non-ASCII, ...) is left to the general path.
fn plain_target(t: &str) -> bool {
    t.starts_with('/')
        && t.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

async fn write_flush(g: &mut Guarded, data: &[u8]) -> std::io::Result<()> {
    let w = async {
        g.inner_mut().write_all(data).await?;
        g.inner_mut().flush().await
    };
    match tokio::time::timeout(DEFAULT_CLIENT_TIMEOUT, w).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// The IMF-fixdate of now, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1[0] == 0 {
            let s = httpdate::fmt_http_date(now);
            let n = s.len().min(29);
            d.1[..n].copy_from_slice(&s.as_bytes()[..n]);
            d.0 = secs;
        }
        out.extend_from_slice(&d.1);
    });
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, (bool, std::io::Error)> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err((false, e)),
        Err(_) => Err((true, std::io::ErrorKind::TimedOut.into())),
    }
}

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, (bool, std::io::Error)> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((false, e)),
        Err(_) => Err((true, std::io::ErrorKind::TimedOut.into())),
    }
}

/// How the response body ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

/// The backend side of one request.
struct Exchange<'a> {
    l: &'a Listener,
    route: &'a Route,
    pool: &'a Pool,
    pool_max: usize,
    obs: RequestObs,
    pick: Option<Pick>,
    status: u16,
    bytes_out: usize,
    /// For the tunnel of an upgraded (WebSocket) connection, which ends early on shutdown.
    shutdown: Option<&'a ShutdownWatch>,
}

/// What the response head said, taken out of the parse.
struct RespHead {
    code: u16,
    /// The head for an HTTP/1 client, as bytes.
    head: Vec<u8>,
    /// The head for an HTTP/2 client.
    h2: Option<Box<ResponseHeader>>,
    head_len: usize,
    framing: Framing,
    upstream_keep: bool,
    client_keep: bool,
    /// A 101 to a WebSocket handshake.
    upgraded: bool,
}

impl Exchange<'_> {
    /// Forward the request (`out`: head and the body bytes already read; `body_left`: body
    /// bytes still to read from the client) and stream the response back. `Ok(keep)`: the
    /// response is complete and the client connection may be reused.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        g: &mut Guarded,
        out: &[u8],
        body_left: u64,
        hash: u64,
        method_uri: (&str, &str),
        head_only: bool,
        down: Down,
    ) -> Result<bool, Failure> {
        let (up, rbuf, head) = self
            .exchange(
                Some(&mut *g),
                out,
                body_left,
                hash,
                method_uri,
                head_only,
                down,
            )
            .await?;
        self.respond(g, up, rbuf, head).await
    }

    /// Send the request to a backend (selection, connect retries, one retry of a stale
    /// pooled connection) and read the response head. Returns the connection, the bytes read
    /// (head and the start of the body) and the parsed head rendered for `down`.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        mut g: Option<&mut Guarded>,
        out: &[u8],
        body_left: u64,
        hash: u64,
        (method, uri): (&str, &str),
        head_only: bool,
        down: Down,
    ) -> Result<(TcpStream, Vec<u8>, RespHead), Failure> {
        let pool = self.pool;
        let spec = &pool.spec;
        // A retry on a stale pooled connection needs the whole request in `out`.
        let retryable = idempotent(method) && body_left == 0;
        let mut tried = 0u64;
        let mut attempts = 0u32;
        let mut fresh_only = false;
        loop {
            attempts += 1;
            self.obs.peer_selected();
            self.pick = None;
            let Some(pick) = pool.select(hash, tried) else {
                warn!(
                    "{}: upstream {}: no usable backend for {}",
                    self.l.name, pool.name, self.route.label
                );
                return Err(Failure::Answer(503, "no usable backend".into()));
            };
            let addr = pick.slot.addr;
            let pooled = if fresh_only {
                None
            } else {
                conns::checkout(addr)
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(s) => s,
                None => match connect(addr, pool.connect_timeout).await {
                    Ok(s) => s,
                    Err((timed_out, e)) => {
                        pick.slot.failures.fetch_add(1, Relaxed);
                        tried |= bit(pick.slot.index);
                        warn!(
                            "{}: connect to backend {} failed (attempt {attempts}): {e}",
                            self.l.name, pick.slot.label
                        );
                        self.pick = Some(pick);
                        if attempts <= pool.retries {
                            continue;
                        }
                        let code = if timed_out { 504 } else { 502 };
                        return Err(Failure::Answer(code, format!("connect failed: {e}")));
                    }
                },
            };
            self.obs.connected(Some(self.route.id), reused);
            self.pick = Some(pick);

            // Send the request.
            if let Err((_, e)) = timed(spec.write_timeout, up.write_all(out)).await {
                if reused {
                    self.stale(method, uri, &e, retryable);
                }
                if reused && retryable {
                    attempts -= 1;
                    fresh_only = true;
                    continue;
                }
                return Err(Failure::Answer(502, format!("sending the request: {e}")));
            }
            if body_left > 0 {
                let Some(g) = g.as_deref_mut() else {
                    return Err(Failure::Answer(500, "request body without a reader".into()));
                };
                self.stream_request_body(g, &mut up, body_left).await?;
            }

            // Read the response head.
            let mut rbuf: Vec<u8> = Vec::with_capacity(RESP_BUF);
            let head = loop {
                if rbuf.len() == rbuf.capacity() {
                    if rbuf.len() >= MAX_RESPONSE_HEAD {
                        return Err(Failure::Answer(502, "response head too large".into()));
                    }
                    rbuf.reserve(rbuf.capacity());
                }
                match timed(pool.read_timeout, up.read_buf(&mut rbuf)).await {
                    Ok(0) => {
                        if rbuf.is_empty() && reused {
                            let e = std::io::ErrorKind::UnexpectedEof.into();
                            self.stale(method, uri, &e, retryable);
                            if retryable {
                                break None;
                            }
                        }
                        return Err(Failure::Answer(
                            502,
                            "backend closed the connection before a complete response head".into(),
                        ));
                    }
                    Ok(_) => {}
                    Err((true, _)) => {
                        return Err(Failure::Answer(504, "response read timed out".into()))
                    }
                    Err((false, e)) => {
                        if rbuf.is_empty() && reused {
                            self.stale(method, uri, &e, retryable);
                            if retryable {
                                break None;
                            }
                        }
                        return Err(Failure::Answer(502, format!("reading the response: {e}")));
                    }
                }
                match parse_response(&rbuf, head_only, down)? {
                    Parsed::Partial => {}
                    Parsed::Informational(n) => {
                        rbuf.drain(..n);
                    }
                    Parsed::Head(h) => break Some(h),
                }
            };
            let Some(head) = head else {
                attempts -= 1;
                fresh_only = true;
                continue;
            };
            return Ok((up, rbuf, head));
        }
    }

    /// A reused connection failed before any response byte: the backend may have closed it
    /// while it sat in the pool. Retried (on a fresh connection) when the request allows.
    fn stale(&self, method: &str, uri: &str, e: &std::io::Error, retry: bool) {
        warn!(
            "{}: reused upstream connection failed for {method} {uri}: {e}: {}",
            self.l.name,
            if retry {
                "retrying on a fresh connection"
            } else {
                "not retried (method not idempotent or body not buffered)"
            }
        );
    }

    async fn stream_request_body(
        &mut self,
        g: &mut Guarded,
        up: &mut TcpStream,
        mut left: u64,
    ) -> Result<(), Failure> {
        let mut b = vec![0u8; BODY_BUF.min(left as usize)];
        while left > 0 {
            let want = b.len().min(left as usize);
            let n = match timed(DEFAULT_CLIENT_TIMEOUT, g.read(&mut b[..want])).await {
                Ok(0) | Err(_) => {
                    warn!("{}: client closed or stalled mid-body", self.l.name);
                    return Err(Failure::Cut);
                }
                Ok(n) => n,
            };
            left -= n as u64;
            if let Err((_, e)) = timed(self.pool.spec.write_timeout, up.write_all(&b[..n])).await {
                return Err(Failure::Answer(
                    502,
                    format!("sending the request body: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// Write the response head and stream the body; give the connection back to the pool
    /// when the body ended cleanly.
    async fn respond(
        &mut self,
        g: &mut Guarded,
        mut up: TcpStream,
        mut rbuf: Vec<u8>,
        h: RespHead,
    ) -> Result<bool, Failure> {
        self.status = h.code;
        if h.upgraded {
            return self.tunnel(g, up, rbuf, h).await;
        }
        // A small body the backend sent behind its head (often a second segment) is waited
        // for, so head and body leave in one write instead of two.
        if let Framing::Length(n) = h.framing {
            let want = h.head_len.saturating_add(n as usize);
            if n as usize <= SMALL_BODY && rbuf.len() < want {
                rbuf.reserve(want - rbuf.len());
                while rbuf.len() < want {
                    match timed(self.pool.read_timeout, up.read_buf(&mut rbuf)).await {
                        Ok(0) => {
                            return Err(Failure::Answer(
                                502,
                                "backend closed the connection before the body".into(),
                            ))
                        }
                        Ok(_) => {}
                        Err((true, _)) => {
                            return Err(Failure::Answer(504, "response body timed out".into()))
                        }
                        Err((false, e)) => {
                            return Err(Failure::Answer(502, format!("reading the body: {e}")))
                        }
                    }
                }
            }
        }
        let mut out = h.head;
        let mut upstream_keep = h.upstream_keep;
        let mut scanner = super::chunked::ChunkedScanner::default();
        let mut done = false;
        let mut left = 0u64;
        // the body bytes that came with the head
        let first = &rbuf[h.head_len..];
        let take = match h.framing {
            Framing::None => {
                done = true;
                upstream_keep &= first.is_empty();
                0
            }
            Framing::Length(n) => {
                let t = (first.len() as u64).min(n);
                left = n - t;
                done = left == 0;
                upstream_keep &= first.len() as u64 <= n;
                t as usize
            }
            Framing::Chunked => match scanner.scan(first) {
                Ok(super::chunked::Scan::Done(k)) => {
                    done = true;
                    upstream_keep &= k == first.len();
                    k
                }
                Ok(super::chunked::Scan::More) => first.len(),
                Err(e) => {
                    return Err(Failure::Answer(502, format!("bad chunked body: {}", e.0)));
                }
            },
            Framing::Close => first.len(),
        };
        out.extend_from_slice(&first[..take]);
        self.bytes_out = take;
        if done {
            if write_flush(g, &out).await.is_err() {
                return Err(Failure::Cut);
            }
            if upstream_keep {
                self.give_back(up);
            }
            return Ok(h.client_keep);
        }
        if timed(DEFAULT_CLIENT_TIMEOUT, g.inner_mut().write_all(&out))
            .await
            .is_err()
        {
            return Err(Failure::Cut);
        }
        drop(out);
        if h.framing != Framing::Length(0) && left > RESP_BUF as u64 || h.framing == Framing::Close
        {
            rbuf = Vec::with_capacity(BODY_BUF);
        }
        loop {
            let Some(n) = self.read_body(&mut up, &mut rbuf, h.framing).await? else {
                upstream_keep = false;
                break;
            };
            let chunk = &rbuf[..n];
            let (take, end) = match h.framing {
                Framing::Length(_) => {
                    let t = (n as u64).min(left);
                    left -= t;
                    upstream_keep &= n as u64 == t || left > 0;
                    (t as usize, left == 0)
                }
                Framing::Chunked => match scanner.scan(chunk) {
                    Ok(super::chunked::Scan::Done(k)) => {
                        upstream_keep &= k == n;
                        (k, true)
                    }
                    Ok(super::chunked::Scan::More) => (n, false),
                    Err(e) => return Err(self.bad_chunk(e)),
                },
                _ => (n, false),
            };
            if timed(
                DEFAULT_CLIENT_TIMEOUT,
                g.inner_mut().write_all(&chunk[..take]),
            )
            .await
            .is_err()
            {
                return Err(Failure::Cut);
            }
            self.bytes_out += take;
            if end {
                break;
            }
        }
        if timed(DEFAULT_CLIENT_TIMEOUT, g.inner_mut().flush())
            .await
            .is_err()
        {
            return Err(Failure::Cut);
        }
        if upstream_keep {
            self.give_back(up);
        }
        Ok(h.client_keep && h.framing != Framing::Close)
    }

    /// After a 101: the handshake's answer to the client, then bytes both ways until either
    /// side closes, the tunnel idles for the upstream's `read_timeout`, or shutdown.
    async fn tunnel(
        &mut self,
        g: &mut Guarded,
        mut up: TcpStream,
        rbuf: Vec<u8>,
        h: RespHead,
    ) -> Result<bool, Failure> {
        let mut out = h.head;
        // frames the backend sent right behind its 101
        out.extend_from_slice(&rbuf[h.head_len..]);
        if write_flush(g, &out).await.is_err() {
            return Err(Failure::Cut);
        }
        let Some(shutdown) = self.shutdown else {
            return Err(Failure::Cut);
        };
        if let crate::l4::Splice::Done(_, down) =
            crate::l4::splice(g, &mut up, self.pool.read_timeout, shutdown).await
        {
            self.bytes_out = down as usize;
        }
        Ok(false)
    }

    /// The next piece of a response body into `rbuf` (cleared first). `None`: the backend
    /// closed the connection, which ends a close-delimited body; for any other framing that
    /// is a cut response, as is a read error or timeout.
    async fn read_body(
        &self,
        up: &mut TcpStream,
        rbuf: &mut Vec<u8>,
        framing: Framing,
    ) -> Result<Option<usize>, Failure> {
        rbuf.clear();
        match timed(self.pool.read_timeout, up.read_buf(rbuf)).await {
            Ok(0) if framing == Framing::Close => Ok(None),
            Ok(0) => {
                warn!(
                    "{}: backend {} closed the connection mid-body",
                    self.l.name,
                    self.slot_label()
                );
                Err(Failure::Cut)
            }
            Ok(n) => Ok(Some(n)),
            Err((_, e)) => {
                warn!(
                    "{}: reading the body from backend {}: {e}",
                    self.l.name,
                    self.slot_label()
                );
                Err(Failure::Cut)
            }
        }
    }

    /// A chunked body that stopped parsing after the head was sent: the response is cut.
    fn bad_chunk(&self, e: super::chunked::BadChunk) -> Failure {
        warn!(
            "{}: bad chunked body from backend {}: {}",
            self.l.name,
            self.slot_label(),
            e.0
        );
        Failure::Cut
    }

    /// Keep a backend connection whose response ended cleanly for the next request.
    fn give_back(&self, up: TcpStream) {
        conns::checkin(
            self.slot_addr(),
            up,
            self.pool.spec.idle_timeout,
            self.pool_max,
        );
    }

    fn slot_addr(&self) -> SocketAddr {
        self.pick
            .as_ref()
            .map(|p| p.slot.addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn slot_label(&self) -> &str {
        self.pick
            .as_ref()
            .map(|p| p.slot.label.as_str())
            .unwrap_or("-")
    }
}

/// Who the response goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Down {
    H1 { want_keep: bool, upgrade: bool },
    H2,
}

enum Parsed {
    Partial,
    /// A 1xx other than 101, this long: skipped.
    Informational(usize),
    Head(RespHead),
}

/// Parse a response head and write the client's version of it.
fn parse_response(rbuf: &[u8], head_only: bool, down: Down) -> Result<Parsed, Failure> {
    let (want_keep, upgrade) = match down {
        Down::H1 { want_keep, upgrade } => (want_keep, upgrade),
        Down::H2 => (false, false),
    };
    let mut hdrs = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, rbuf, &mut hdrs)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(Failure::Answer(
                502,
                format!("malformed response head: {e}"),
            ))
        }
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(Failure::Answer(502, "malformed response head".into()));
    };
    if code == 101 && upgrade {
        // The handshake's answer goes through as it is (Connection and Upgrade included);
        // the connection is a tunnel from here on.
        let mut head = Vec::with_capacity(n + 64);
        head.extend_from_slice(b"HTTP/1.1 101 ");
        head.extend_from_slice(resp.reason.unwrap_or("Switching Protocols").as_bytes());
        head.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            if kind(h.name.as_bytes()) == Kind::Hop {
                continue;
            }
            head.extend_from_slice(h.name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        return Ok(Parsed::Head(RespHead {
            code,
            head,
            h2: None,
            head_len: n,
            framing: Framing::None,
            upstream_keep: false,
            client_keep: false,
            upgraded: true,
        }));
    }
    if code == 101 {
        return Err(Failure::Answer(
            502,
            "101 to a request without Upgrade".into(),
        ));
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Informational(n));
    }
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    let mut up_close = version == 0;
    let mut nominated = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        match kind(name) {
            Kind::ContentLength => match parse_len(h.value) {
                Some(v) if length.is_none_or(|l| l == v) => length = Some(v),
                _ => {
                    return Err(Failure::Answer(
                        502,
                        "bad Content-Length in response".into(),
                    ))
                }
            },
            Kind::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        up_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if version == 0 {
                            up_close = false;
                        }
                    } else {
                        nominated = true;
                    }
                }
            }
            Kind::General if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                te = true;
                chunked = tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
    let framing = if head_only || code == 204 || code == 304 {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let client_keep = want_keep && framing != Framing::Close;
    let upstream_keep = !up_close && framing != Framing::Close;

    if down == Down::H2 {
        // Pingora's HTTP/2 writer adds Date and drops the connection-specific fields.
        let mut r = ResponseHeader::build(code, Some(resp.headers.len()))
            .map_err(|e| Failure::Answer(502, format!("response head: {e}")))?;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            match kind(name) {
                Kind::Connection | Kind::Hop => continue,
                Kind::ContentLength if te => continue,
                Kind::Upgrade => continue,
                Kind::General if name.eq_ignore_ascii_case(b"transfer-encoding") => continue,
                _ => {}
            }
            if nominated
                && resp.headers.iter().any(|c| {
                    kind(c.name.as_bytes()) == Kind::Connection
                        && tokens(c.value).any(|t| t.eq_ignore_ascii_case(name))
                })
            {
                continue;
            }
            let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(h.value),
            ) else {
                return Err(Failure::Answer(
                    502,
                    "response header not valid for HTTP/2".into(),
                ));
            };
            let _ = r.append_header(k, v);
        }
        return Ok(Parsed::Head(RespHead {
            code,
            head: Vec::new(),
            h2: Some(Box::new(r)),
            head_len: n,
            framing,
            upstream_keep,
            client_keep: false,
            upgraded: false,
        }));
    }
    let h2 = None;
    let mut head = Vec::with_capacity(n + 64 + RESP_BUF.min(4096));
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut has_date = false;
    // The tokens a Connection field nominates are hop-by-hop too.
    let nominated_by = |name: &[u8]| {
        nominated
            && resp.headers.iter().any(|c| {
                kind(c.name.as_bytes()) == Kind::Connection
                    && tokens(c.value).any(|t| t.eq_ignore_ascii_case(name))
            })
    };
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        match kind(name) {
            Kind::Connection | Kind::Hop => continue,
            Kind::ContentLength if te => continue,
            Kind::Upgrade => continue,
            _ => {}
        }
        if name.len() == 4 && name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        }
        if nominated_by(name) {
            continue;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    if !has_date {
        head.extend_from_slice(b"date: ");
        date(&mut head);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(if client_keep {
        b"\r\n".as_slice()
    } else {
        b"connection: close\r\n\r\n".as_slice()
    });
    Ok(Parsed::Head(RespHead {
        code,
        head,
        h2,
        head_len: n,
        framing,
        upstream_keep,
        client_keep,
        upgraded: false,
    }))
}
