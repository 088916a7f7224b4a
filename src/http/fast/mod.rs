//! The lean engine: requests served without Pingora's per-request machinery.
//!
//! Profiled (callgrind), a proxied keep-alive GET cost about 90K instructions, 80% of them
//! inside Pingora's generic HTTP/1 proxy: a large per-request future boxed and copied into
//! place, header maps built and grown for both sides, a watcher task spawned each time an
//! upstream connection went back into the pool. The common request needs none of that. Here
//! it is parsed in place (httparse, headers borrowed from the read buffer) and its head is
//! written to the backend in one buffer; the response head is rewritten the same way and the
//! body streamed through (chunked bodies too, with their framing checked as they pass). A
//! chunked request body is decoded as it arrives and sent on in the proxy's own framing.
//! Upstream connections come from a per-thread pool ([`crate::upstream::conns`]).
//!
//! Every decision is the policy's ([`crate::policy`]): whether this engine serves the request
//! at all ([`policy::engine`], counted by reason when it does not), admission and routing,
//! the header edits in both directions, the hash key, retries, the proxy's own answers and
//! keep-alive. What stays here is moving bytes. A request this engine does not take is handed
//! to Pingora's path before any side effect: the bytes read so far go back to the request-head
//! guard, which replays them to Pingora.
//!
//! On a cached route only fresh cache hits are served here, by the rule every protocol's
//! lean engine shares ([`cache_hit`]): a GET or HEAD without a body, conditional (`If-*`),
//! `Range`, `Cache-Control`, `Pragma` or `Authorization` fields, whose key (the general
//! path's key function) finds a complete entry without `Vary`, with a Content-Length
//! matching its body, that is fresh now and not predicted uncacheable. `Age` and the route's status header (`HIT`) are
//! added to the stored head, which keeps the origin's `Date` (one is added only when the
//! origin sent none); the body is the store's buffer.

mod answer;
pub(in crate::http) mod deframe;
pub(in crate::http) mod exchange;
mod fuzz;
mod h2;
mod parse;
mod read;
mod req;
pub(in crate::http) mod response;
mod write;
#[doc(hidden)]
pub use fuzz::{fuzz_request, FuzzPlan};
pub use parse::{agree_request, agree_response};
pub use read::{read_head, read_now};
#[doc(hidden)]
pub use response::{fuzz_response, FuzzHead};

use super::guard::Guarded;
use super::Listener;
use crate::cache;
use crate::http::{cache_hit, chunked};
use crate::lifecycle::idle::CoarseTimer;
use crate::observability::{self, ReqView, RequestObs};
use crate::policy::answer::{connection_line, Answer};
use crate::policy::engine::{self, Fallback, HeadTraits};
use crate::policy::fields::{self, Field};
use crate::policy::route::Route;
use crate::policy::{self, forwarded, RateCount, RequestHead, Verdict};
use answer::{finish_hit, finish_own};
use exchange::{Down, Exchange, Failure};
use pingora_core::server::ShutdownWatch;
use req::{Kept, Req};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use write::{end, write_last};

/// Header fields parsed per message; a head with more goes to Pingora's path (requests) or
/// is a 502 (responses). The guard's `max_header_count` (default 100) applies first.
const MAX_HEADERS: usize = 128;
/// First size of the request head buffer; it grows to the guard's `max_header_size`.
const HEAD_BUF: usize = 4096;
/// Response buffer: a small response comes in one read; bigger bodies stream through the
/// larger one.
const RESP_BUF: usize = 16 * 1024;
const BODY_BUF: usize = 64 * 1024;

pub struct FastPath {
    listener: Arc<Listener>,
    /// Idle upstream connections kept per thread (the listener's share of
    /// `upstream_keepalive_pool_size`).
    pool_max: usize,
}

/// What a client connection keeps between requests.
/// What the lean engine keeps of a connection from request to request (kept by every idle
/// connection: the client's address is not, it is asked of the socket per request).
pub struct Conn {
    /// Requests served on this connection by either engine, for `keepalive_requests`.
    pub served: u32,
    /// The connection's waits, one at a time: its keep-alive wait, then its backend's
    /// answer and the other I/O limits of a request. One slot in the timer table for the
    /// connection's life, not one per wait.
    pub timer: CoarseTimer,
}

impl Default for Conn {
    fn default() -> Conn {
        Conn {
            served: 0,
            timer: CoarseTimer::unarmed(),
        }
    }
}

pub enum Outcome {
    /// The response is complete; the connection may carry the next request.
    KeepAlive,
    /// Close the connection (after a `Connection: close` answer, or an error).
    Close,
    /// Not for this engine: the bytes read were handed back to the guard for Pingora.
    Fallback,
}

/// Count a request the lean engine left to the general one.
fn fell_back(reason: Fallback) {
    observability::fast_path_fallback(reason.label());
}

impl FastPath {
    /// The listener (routes, limits) this engine was built with, for the HTTP/3 side.
    pub fn listener_arc(&self) -> Arc<Listener> {
        self.listener.clone()
    }

    /// The lean engine of a listener. `pool_max`: idle upstream connections per thread.
    pub fn new(listener: Arc<Listener>, pool_max: usize) -> FastPath {
        FastPath { listener, pool_max }
    }

    /// Everything about a request that needs its parsed header fields, decided without
    /// awaiting (so the parse's field array never lives in the connection's future).
    fn plan<'s, 'a>(
        &'s self,
        buf: &'a [u8],
        conn: &mut Conn,
        client: Option<IpAddr>,
        draining: bool,
    ) -> Plan<'s, 'a> {
        let l = &*self.listener;
        let mut hdrs = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = parse::request(&mut req, buf, &mut hdrs);
        let mut t = HeadTraits::default();
        let head_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            // Pingora's parser gives the answer (and log line) for anything else.
            _ => return fallback(engine::choose(l, &t, None, false)),
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return fallback(engine::choose(l, &t, None, false));
        };
        t.parsed = true;
        t.http10 = version == 0;
        t.connect = method == "CONNECT";
        t.origin_form = target.starts_with('/');
        t.get = method == "GET";
        t.get_or_head = t.get || method == "HEAD";
        let mut host: Option<&[u8]> = None;
        let mut hosts = 0u32;
        let mut not_for_hit = false;
        let mut length: Option<u64> = None;
        let mut xff_fields = 0usize;
        let mut upgrade: Option<&[u8]> = None;
        let (mut referer, mut user_agent): (&[u8], &[u8]) = (b"-", b"-");
        // each field's kind, classified once for both passes below
        let mut kinds = [Field::Other; MAX_HEADERS];
        for (h, k) in req.headers.iter().zip(kinds.iter_mut()) {
            *k = fields::classify(h.name.as_bytes());
            match *k {
                Field::Host => {
                    host = Some(h.value);
                    hosts += 1;
                }
                Field::NotForHit => not_for_hit = true,
                // one normalised value goes upstream, however it was written (RFC 9110 8.6)
                Field::ContentLength => match fields::parse_len_list(h.value) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => t.parsed = false,
                },
                Field::Connection => t.connection.add(h.value),
                Field::XForwardedFor => xff_fields += 1,
                Field::Referer => referer = h.value,
                Field::UserAgent => user_agent = h.value,
                Field::Upgrade => {
                    t.upgrade = Some(fields::upgrade_relayable(h.value) && upgrade.is_none());
                    upgrade = Some(h.value);
                }
                // the guard lets through only one field, `chunked`; anything else is left
                // to the general engine's parser rather than assumed
                Field::TransferEncoding => {
                    if t.transfer_encoding || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked")
                    {
                        t.parsed = false;
                    }
                    t.transfer_encoding = true;
                }
                Field::Expect => t.expect = true,
                Field::MaxForwards => {
                    t.max_forwards = fields::max_forwards_applies(method.as_bytes())
                }
                Field::Http2Settings => t.upgrade = Some(false),
                _ => {}
            }
        }
        let is_chunked = t.transfer_encoding;
        if is_chunked && length.is_some() {
            t.parsed = false;
        }
        t.idempotent = policy::retry::idempotent(method);
        let body_len = length.unwrap_or(0);
        t.body = body_len > 0 || is_chunked;
        t.host = host.is_some();
        let host_text = match host.map(parse::utf8) {
            Some(Ok(h)) => Some(h),
            Some(Err(_)) => {
                t.parsed = false;
                return fallback(engine::choose(l, &t, None, false));
            }
            None => None,
        };
        let websocket = t.upgrade_relayed();
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let parsed_fields = crate::policy::route::ParsedFields(req.headers);
        let head = RequestHead {
            client,
            method,
            host: host_text,
            path,
            content_length: (!is_chunked).then_some(body_len),
            fields: &parsed_fields,
            // a TRACE or OPTIONS with Max-Forwards goes to the general engine (`t.max_forwards`)
            max_forwards_spent: false,
            // the store is asked in `request`, for requests that stay on this engine
            rate: if self.listener.rate_store.is_some() {
                RateCount::Deferred
            } else {
                RateCount::Local
            },
        };
        let route = l.route(&head);
        // A cached route's requests are served here only as fresh hits, looked up without
        // side effects; everything else about them is the general path's.
        let mut hit = None;
        if let Some(r) = route.filter(|r| r.cache.is_some()) {
            // HTTP/1's own part of the rule: the key's host is the one Host field, printable
            let one_host = hosts == 1
                && host.is_some_and(|h| h.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
            if one_host && cache_hit::eligible(t.get_or_head, !t.body, not_for_hit, target) {
                hit = cache_hit::lookup(l, r, host_text.unwrap_or(""), target);
            }
        }
        if let Err(reason) = engine::choose(l, &t, route, hit.is_some()) {
            return fallback(Err(reason));
        }
        // A chunked body's bytes that came with the head: where their data lies (sent on
        // after the head in the proxy's own framing); the scanner goes on with the rest, if
        // the body did not end here.
        let mut ranges = Vec::new();
        let (mut chunks, mut chunk_data, mut chunk_wire) = (None, 0, 0);
        let mut chunk_scan = chunked::Scan::More;
        if is_chunked {
            let mut scan = chunked::ChunkedScanner::default();
            match scan.data_pieces(&buf[head_len..], &mut ranges) {
                Ok((n, s)) => {
                    (chunk_data, chunk_scan) = (n, s);
                    chunk_wire = match s {
                        chunked::Scan::Done(k) => k,
                        chunked::Scan::More => {
                            chunks = Some(scan);
                            buf.len() - head_len
                        }
                    };
                }
                // the guard refuses such a body first; left to the general engine's answer
                Err(_) => return fallback(Ok(())),
            }
        }

        // From here on the request is ours.
        conn.served += 1;
        let in_buf = if is_chunked {
            chunk_wire
        } else {
            ((buf.len() - head_len) as u64).min(body_len) as usize
        };
        let trace = policy::trace::begin(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("traceparent"))
                .map(|h| h.value),
        );
        // the text only the access log and a sampled span show
        let shown = observability::text_shown(trace.as_ref());
        let text = |v: &'a [u8]| match shown {
            true => std::str::from_utf8(v).unwrap_or("-"),
            false => "-",
        };
        let r = Req {
            view: ReqView {
                client,
                method,
                uri: target,
                version: if t.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
                host: host_text.unwrap_or("-"),
                referer: text(referer),
                user_agent: text(user_agent),
                bytes_in: if is_chunked {
                    chunk_data as usize
                } else {
                    body_len as usize
                },
            },
            head_only: method == "HEAD",
            pipelined: &buf[head_len + in_buf..],
            body_left: if is_chunked {
                0
            } else {
                body_len - in_buf as u64
            },
            chunks,
            trace,
        };
        // an HTTP/1.0 connection stays open only when the client asked for it
        let close = t.connection.close || (t.http10 && !t.connection.keep_alive);
        let keep =
            |unread_body: bool| policy::keep_alive(l, close, draining, unread_body, conn.served);
        let route = match l.admit_on(&head, route) {
            Verdict::Answer(a, route) => {
                let keep = keep(r.body_unread()) && !a.close;
                let mut r = r;
                if !keep {
                    // answered from the head alone, and the connection closes: none of the
                    // body was taken (kept, it is read through and counted)
                    r.view.bytes_in = 0;
                }
                return Plan::Page(r, a, route.map(|r| r.id), keep);
            }
            Verdict::Proxy(route) => route,
        };
        if is_chunked && policy::body_over_limit(route, chunk_data) {
            log::warn!(
                "{}: request body exceeds max_body_size {}",
                l.name,
                route.max_body_size
            );
            return Plan::Page(r, Answer::closing(413), Some(route.id), false);
        }
        if let Some((h, c)) = hit {
            cache::fast_hit_served(&h);
            let keep = keep(false);
            let mut head = Vec::with_capacity(h.head().len() + 128);
            head.extend_from_slice(h.head());
            head.extend_from_slice(b"age: ");
            crate::policy::forwarded::push_u64(&mut head, h.age());
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(c.spec.status_header.as_str().as_bytes());
            head.extend_from_slice(b": HIT\r\n");
            if !h.has_header(&http::header::DATE) {
                head.extend_from_slice(b"date: ");
                policy::date::now(&mut head);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(connection_line(keep));
            head.extend_from_slice(b"\r\n");
            policy::edit::push_alt_svc_h1(l, &mut head);
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

        // The upstream request head, in one buffer with the body bytes already read.
        let mut out = Vec::with_capacity(head_len + 160 + in_buf);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (h, k) in req.headers.iter().zip(kinds) {
            if fields::drop_on_request(k)
                || matches!(k, Field::ContentLength | Field::TransferEncoding)
                || t.connection.names(h.name)
            {
                continue;
            }
            if trace.is_some() && h.name.eq_ignore_ascii_case("traceparent") {
                continue; // replaced by the proxy's own span below
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(n) = length {
            out.extend_from_slice(b"content-length: ");
            crate::policy::forwarded::push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        } else if is_chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if let (true, Some(u)) = (websocket, upgrade) {
            out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
            out.extend_from_slice(u.trim_ascii());
            out.extend_from_slice(b"\r\n");
        }
        let xff = (req.headers.iter().zip(kinds))
            .filter(|(_, k)| *k == Field::XForwardedFor)
            .map(|(h, _)| h.value)
            .take(xff_fields);
        forwarded::h1_lines(&mut out, xff, client, l.tls, host);
        if let Some(t) = &trace {
            policy::trace::h1_line(&mut out, t);
        }
        out.extend_from_slice(b"\r\n");
        if is_chunked {
            let wire = &buf[head_len..];
            chunked::frame_into(&mut out, wire, &ranges, chunk_data, chunk_scan);
        } else {
            out.extend_from_slice(&buf[head_len..head_len + in_buf]);
        }
        let hash = match route.pool.selection {
            crate::config::Selection::ConsistentHash => policy::hash::key(
                &route.pool.hash_key,
                client,
                target,
                |n| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(n))
                        .map(|h| h.value)
                },
                req.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                    .map(|h| h.value),
            ),
            _ => 0,
        };
        Plan::Proxy {
            want_keep: keep(false) && policy::keep_after_upgrade(websocket, false),
            upgrade: websocket,
            http10: t.http10,
            req: r,
            route,
            out,
            hash,
            sticky: policy::sticky::affinity(&route.pool, &parsed_fields),
        }
    }

    /// The rate limit by the fleet's count, asked of the store only once the request is
    /// known to stay on this engine (one that falls back is counted by the general engine).
    async fn shared_rate_limit<'s, 'a>(
        &self,
        p: Plan<'s, 'a>,
        client: Option<IpAddr>,
    ) -> Plan<'s, 'a> {
        let l = &*self.listener;
        let count = l.rate_count(client).await;
        let Some(a) = l.rate_limited(client, count) else {
            return p;
        };
        match p {
            Plan::Page(r, _, _, keep) | Plan::Hit { req: r, keep, .. } => {
                Plan::Page(r, a, None, keep)
            }
            Plan::Proxy { req, want_keep, .. } => {
                let keep = want_keep && !req.body_unread();
                Plan::Page(req, a, None, keep)
            }
            Plan::Fallback => Plan::Fallback,
        }
    }

    /// Serve the request whose head [`read_head`] read into `head`.
    ///
    /// One async fn, not a wrapper awaiting another: an awaited callee's future is made and
    /// then copied into its caller's state, here 3.4 KB per request.
    pub async fn serve(
        &self,
        g: &mut Guarded,
        conn: &mut Conn,
        draining: bool,
        head: Vec<u8>,
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        if let Err(reason) = engine::listener(&self.listener) {
            fell_back(reason);
            g.unread(&head);
            return Outcome::Fallback;
        }
        let buf = &head[..];
        let mut obs = RequestObs::default();
        let client = crate::net::listen::peer_ip(g.inner());
        let plan = match self.plan(buf, conn, client, draining) {
            Plan::Fallback => Plan::Fallback,
            p if self.listener.rate_store.is_some() => self.shared_rate_limit(p, client).await,
            p => p,
        };
        obs.trace = match &plan {
            Plan::Page(r, ..) | Plan::Hit { req: r, .. } | Plan::Proxy { req: r, .. } => r.trace,
            Plan::Fallback => None,
        };
        let (r, route, out, hash, want_keep, upgrade, http10, sticky) = match plan {
            Plan::Fallback => {
                g.unread(buf);
                return Outcome::Fallback;
            }
            Plan::Page(r, a, route, keep) => {
                let p = a.h1(r.head_only, keep);
                let timeout = self.listener.client_timeout;
                return finish_own(g, &r, route, &obs, a.status, p, keep, timeout).await;
            }
            Plan::Hit {
                req,
                route,
                code,
                head,
                body,
                keep,
            } => {
                let timeout = self.listener.client_timeout;
                return finish_hit(g, &req, route, &obs, code, head, body, keep, timeout).await;
            }
            Plan::Proxy {
                req,
                route,
                out,
                hash,
                want_keep,
                upgrade,
                http10,
                sticky,
            } => (req, route, out, hash, want_keep, upgrade, http10, sticky),
        };
        // what is left of the head goes with it, not the head's buffer
        let kept = Kept::of(&r);
        let mut r = kept.req(r);
        drop(head);
        let l = &*self.listener;
        let mut ex = Exchange::new(
            l,
            route,
            self.pool_max,
            obs,
            Some(shutdown),
            &mut conn.timer,
        );
        ex.body_len = r.view.bytes_in as u64;
        ex.sticky = sticky;
        ex.chunked = r.chunks.take().map(|scan| exchange::ChunkedBody {
            scan,
            data: ex.body_len,
            limit: route.max_body_size,
            ended: false,
        });
        let (mut out, mut body_left) = (out, r.body_left);
        let mirrored = mirror(
            g,
            route,
            upgrade,
            &mut out,
            &mut body_left,
            l.client_timeout,
        )
        .await;
        let res = match mirrored {
            Err(f) => Err(f),
            Ok(()) => {
                ex.run(
                    g,
                    &mut out,
                    body_left,
                    hash,
                    (r.view.method, r.view.uri),
                    r.head_only,
                    Down::H1 {
                        want_keep,
                        upgrade,
                        http10,
                    },
                )
                .await
            }
        };
        drop(out);
        if let Some(c) = &ex.chunked {
            r.view.bytes_in = c.data as usize;
        }
        ex.observe_outcome(&res);
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
            Err(Failure::Answer(f, why)) => {
                let code = f.status();
                log::warn!(
                    "{}: answering {code} for {} (backend {}): {why}",
                    l.name,
                    r.view.uri,
                    slot.map(|s| s.label.as_str()).unwrap_or("-")
                );
                let a = f.answer().unwrap_or_else(|| Answer::closing(code));
                let p = a.h1(r.head_only, false);
                let sent = match write_last(g, &p, l.client_timeout, false).await {
                    Ok(_) => answer::page_body_len(&p),
                    Err(_) => 0,
                };
                done(code, sent);
                Outcome::Close
            }
            Err(Failure::Cut) => {
                done(ex.status, ex.bytes_out);
                return Outcome::Close;
            }
        };
        end(g, l.client_timeout).await;
        outcome
    }
}

/// The route's mirror step ([`policy::mirror`]), once the request is admitted: a sampled
/// request whose body fits the bound, and whose copy has a place among those in flight, has
/// the rest of its body read into `out` (so the copy and the primary request carry the same
/// bytes), and its copy handed to the sender.
async fn mirror(
    g: &mut Guarded,
    route: &Route,
    upgrade: bool,
    out: &mut Vec<u8>,
    body_left: &mut u64,
    timeout: Duration,
) -> Result<(), Failure> {
    let Some(m) = &route.mirror else {
        return Ok(());
    };
    let body = out.len()
        - out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
    if !m.sample(upgrade) || !m.fits(body as u64 + *body_left) {
        return Ok(());
    }
    // a copy dropped at the bound leaves the body streaming as usual
    let Some(permit) = m.admit() else {
        return Ok(());
    };
    let mut at = out.len();
    out.resize(at + *body_left as usize, 0);
    while at < out.len() {
        match tokio::time::timeout(timeout, g.read(&mut out[at..])).await {
            Ok(Ok(n)) if n > 0 => at += n,
            Err(_) => {
                let why = crate::policy::answer::Failure::ClientTimeout;
                return Err(Failure::Answer(why, "the client stalled mid-body".into()));
            }
            _ => return Err(Failure::Cut),
        }
    }
    *body_left = 0;
    crate::net::mirror::send(permit, policy::mirror::h1_copy(out));
    Ok(())
}

fn fallback<'s, 'a>(r: Result<(), Fallback>) -> Plan<'s, 'a> {
    if let Err(reason) = r {
        fell_back(reason);
    } else {
        fell_back(Fallback::Unparsed);
    }
    Plan::Fallback
}

/// `'s`: the engine's (routes); `'a`: the request head's buffer.
enum Plan<'s, 'a> {
    Fallback,
    /// Answer with one of the policy's answers: route id, keep the connection.
    Page(Req<'a>, Answer, Option<usize>, bool),
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
        route: &'s Route,
        out: Vec<u8>,
        hash: u64,
        want_keep: bool,
        /// A WebSocket handshake: after a 101 the connection becomes a tunnel.
        upgrade: bool,
        http10: bool,
        sticky: policy::sticky::Affinity,
    },
}

/// An origin-form target made only of RFC 3986 path and query characters, which the
/// general path's `http::Uri` keeps verbatim in `path_and_query` (so both paths key it the
/// same); anything else (a fragment, raw spaces or non-ASCII, ...) is left to the general path.
pub(in crate::http) fn plain_target(t: &str) -> bool {
    t.starts_with('/')
        && t.bytes().all(|b| {
            crate::policy::target::unreserved_or_sub_delim(b)
                || matches!(b, b':' | b'@' | b'/' | b'?' | b'%')
        })
}
