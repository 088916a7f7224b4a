//! One HTTP/3 request stream, served through the one request policy and forwarded to the
//! backend as HTTP/1.1 by the lean engine's exchange (the same selection, retries, pooling,
//! header rules and own answers as its HTTP/2 streams).
//!
//! The request body streams from the QUIC stream into the exchange through a small pipe
//! ([`super::pipe`]); the response body streams back with QUIC's flow control as the
//! back-pressure. A body without a Content-Length (HTTP/3 does not need one) is read first,
//! within the route's `max_body_size`, and sent with its length: HTTP/1.1 backends are then
//! not asked to take chunked requests.

use super::pipe::{BodyPipe, PIPE_BUF};
use crate::http::fast::deframe::Deframe;
use crate::http::fast::exchange::{Down, Exchange, Failure};
use crate::http::fast::response::{Framing, RespHead};
use crate::http::guard::{Guarded, HeadLimits};
use crate::http::Listener;
use crate::observability::{self, ReqView, RequestObs};
use crate::policy::answer::Answer;
use crate::policy::{self, fields, Verdict};
use ::h3::server::RequestStream;
use bytes::{Buf, Bytes};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The request's QUIC connection, whose close ends the exchange at once (a client gone),
/// and, for a request read in 0-RTT, the handshake's outcome to come.
pub struct Conn<'a> {
    pub quic: &'a quinn::Connection,
    pub early: Option<tokio::sync::watch::Receiver<Option<bool>>>,
}

type Send = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type Recv = super::body::Body;

const BODY_BUF: usize = 64 * 1024;
/// The body pipe carries no head: its guard only passes bytes through.
const PASS: HeadLimits = HeadLimits {
    max_request_line: 0,
    max_header_size: 0,
    max_header_count: 0,
    header_timeout: std::time::Duration::ZERO,
};

/// What the access log needs once the stream is done.
fn view<'a>(
    req: &'a RequestHeader,
    client: Option<IpAddr>,
    bytes_in: usize,
    obs: &RequestObs,
) -> ReqView<'a> {
    crate::http::req_view(req, client, "HTTP/3", bytes_in, obs)
}

async fn page(
    send: &mut Send,
    a: &Answer,
    head_only: bool,
) -> Result<(), ::h3::error::StreamError> {
    let body = a.body();
    let mut r = http::Response::builder().status(a.status);
    // connection-specific fields have no place in HTTP/3 (RFC 9114 4.2)
    for (k, v) in a
        .fields(body.len())
        .into_iter()
        .filter(|(k, _)| *k != "connection")
    {
        r = r.header(k, v);
    }
    if let (Some(h), Ok(status)) = (r.headers_mut(), http::StatusCode::from_u16(a.status)) {
        crate::policy::edit::date_if_missing(status, h);
    }
    let Ok(r) = r.body(()) else {
        return Ok(());
    };
    send.send_response(r).await?;
    if !head_only && !body.is_empty() {
        send.send_data(body).await?;
    }
    send.finish().await
}

/// How reading ahead a request body without a Content-Length ended ([`read_ahead`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadAhead {
    /// The body ended: all of it is in the buffer.
    Whole,
    /// It passed the route's `max_body_size`.
    OverLimit,
    /// No piece came within the client timeout.
    Stalled,
    /// The stream failed.
    Broken,
}

/// Read a request body without a Content-Length (HTTP/3 does not need one) ahead into
/// `body`, for both engines, so that it goes to the backend with its length: within `limit`
/// bytes, each piece due within `per_read` of the one before (nginx's `client_body_timeout`
/// is the gap between reads, not the whole upload).
pub(super) async fn read_ahead(
    recv: &mut Recv,
    limit: u64,
    per_read: std::time::Duration,
    body: &mut Vec<u8>,
) -> ReadAhead {
    loop {
        match tokio::time::timeout(per_read, recv.data()).await {
            Ok(Ok(Some(mut b))) => {
                while b.has_remaining() {
                    let c = b.chunk();
                    body.extend_from_slice(c);
                    let n = c.len();
                    b.advance(n);
                }
                if body.len() as u64 > limit {
                    return ReadAhead::OverLimit;
                }
            }
            Ok(Ok(None)) => return ReadAhead::Whole,
            Ok(Err(_)) => return ReadAhead::Broken,
            Err(_) => return ReadAhead::Stalled,
        }
    }
}

/// Copy the request body from the QUIC stream into the pipe, counting into `n`; ends when
/// the body does or the exchange stops reading (the pipe's reader dropped).
async fn pump(recv: &mut Recv, mut to: tokio::io::DuplexStream, n: &AtomicUsize) {
    while let Ok(Some(mut b)) = recv.data().await {
        while b.has_remaining() {
            let c = b.chunk();
            if to.write_all(c).await.is_err() {
                return;
            }
            let k = c.len();
            n.fetch_add(k, Relaxed);
            b.advance(k);
        }
    }
}

/// Serve one request. `pool_max`: idle backend connections kept per thread; `general`: the
/// hand-off to the general engine, for the requests the policy sends there; `conn`: its QUIC
/// connection and, for a request read in 0-RTT, the handshake's outcome to come.
pub async fn serve(
    l: &Listener,
    pool_max: usize,
    client: Option<IpAddr>,
    general: Option<&super::general::Handoff>,
    req: http::Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    conn: Conn<'_>,
) {
    let Conn { quic: conn, early } = conn;
    let (parts, ()) = req.into_parts();
    let mut req = RequestHeader::from(parts);
    if let Some(mut handshake) = early {
        match policy::early::step(req.method.as_str()) {
            policy::early::Early::Forward => {
                let _ = req.insert_header(policy::early::EARLY_DATA_FIELD, "1");
            }
            policy::early::Early::AwaitHandshake => {
                let done = handshake.wait_for(|v| v.is_some()).await.map(|v| *v);
                if !matches!(done, Ok(Some(true))) {
                    // the handshake failed: likely a replay; nothing was done for it
                    let (mut send, _) = stream.split();
                    send.stop_stream(::h3::error::Code::H3_REQUEST_REJECTED);
                    return;
                }
            }
        }
    }
    if let Some(g) = general.filter(|g| g.wanted(l, &req)) {
        return g.serve(l, req, stream).await;
    }
    let (mut send, recv) = stream.split();
    // its end, however the request goes, is `Body`'s (see `super::body`)
    let mut recv = super::body::Body::new(recv);
    let method = req.method.as_str();
    let head_only = method == "HEAD";
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| fields::parse_len_list(v.as_bytes()));
    let head = crate::http::request_head(client, &req, declared, l.rate_count(client).await);
    let host = head.host;
    // the policy's trace step, as on the other engines: continue the client's trace or start one
    let trace = policy::trace::begin(
        req.headers
            .get_all(&fields::TRACEPARENT)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let traced = || {
        let mut obs = RequestObs::default();
        obs.trace = trace;
        obs
    };
    let verdict = match crate::policy::engine::h3_unsupported(method) {
        Some(code) => Verdict::Answer(Answer::new(code), None),
        None => l.admit(&head),
    };
    let own = match verdict {
        Verdict::Answer(a, route) => Some((a, route.map(|r| r.id), traced())),
        Verdict::Proxy(route) => {
            if let Some((h, c)) = crate::http::cache_hit::fresh_hit(l, route, &req, host) {
                let obs = traced();
                let (status, sent) = send_hit(&mut send, &h, c, head_only).await;
                let v = view(&req, client, 0, &obs);
                observability::fast_request_done(
                    &v,
                    Some(route.id),
                    None,
                    &obs,
                    status,
                    sent,
                    true,
                );
                return;
            }
            let down = Down3 {
                send: &mut send,
                recv: &mut recv,
                conn,
            };
            let (r, obs) = proxy(l, route, pool_max, client, &req, down, declared, traced()).await;
            match r {
                Ok((status, bytes_in, bytes_out, slot)) if status == CLIENT_CLOSED => {
                    log::info!(
                        "{}: client closed the HTTP/3 request for {} (backend {})",
                        l.name,
                        req.uri,
                        slot.as_ref().map(|s| s.label.as_str()).unwrap_or("-")
                    );
                    observability::client_closed(Some(route.id));
                    observability::fast_request_done(
                        &view(&req, client, bytes_in, &obs),
                        Some(route.id),
                        slot.as_deref(),
                        &obs,
                        0,
                        bytes_out,
                        false,
                    );
                    None
                }
                Ok((status, bytes_in, bytes_out, slot)) => {
                    observability::fast_request_done(
                        &view(&req, client, bytes_in, &obs),
                        Some(route.id),
                        slot.as_deref(),
                        &obs,
                        status,
                        bytes_out,
                        false,
                    );
                    None
                }
                Err(a) => Some((a, Some(route.id), obs)),
            }
        }
    };
    if let Some((a, route, obs)) = own {
        let status = a.status;
        let _ = page(&mut send, &a, head_only).await;
        let v = view(&req, client, 0, &obs);
        observability::fast_request_done(&v, route, None, &obs, status, 0, false);
    }
}

/// Answer a fresh hit: its status and the body bytes sent.
async fn send_hit(
    send: &mut Send,
    h: &crate::cache::storage::FastHit,
    c: &crate::cache::RouteCache,
    head_only: bool,
) -> (u16, usize) {
    crate::cache::fast_hit_served(h);
    let Some(r) = crate::http::cache_hit::head(h, c) else {
        let _ = page(send, &Answer::new(500), head_only).await;
        return (500, 0);
    };
    let status = r.status().as_u16();
    if send.send_response(r).await.is_err() {
        return (status, 0);
    }
    let body = h.body().clone();
    let n = body.len();
    if !head_only && n > 0 && send.send_data(body).await.is_err() {
        return (status, 0);
    }
    let _ = send.finish().await;
    (status, if head_only { 0 } else { n })
}

type Done = (
    u16,
    usize,
    usize,
    Option<std::sync::Arc<crate::upstream::Slot>>,
);

/// The status recorded for a request whose client went away before its response ended
/// (nginx's 499): it is counted as client-closed, not as the backend's answer.
const CLIENT_CLOSED: u16 = 0;

/// The client side of one request: the stream's halves and its QUIC connection.
struct Down3<'a> {
    send: &'a mut Send,
    recv: &'a mut Recv,
    conn: &'a quinn::Connection,
}

/// Whether a failed write on the stream means the client went away: it stopped the stream
/// (STOP_SENDING / RESET_STREAM, e.g. H3_REQUEST_CANCELLED) or the connection is gone.
fn client_gone(e: &::h3::error::StreamError) -> bool {
    matches!(
        e,
        ::h3::error::StreamError::RemoteTerminate { .. }
            | ::h3::error::StreamError::ConnectionError { .. }
            | ::h3::error::StreamError::RemoteClosing { .. }
    )
}

/// Forward to the route's backends and stream the response back. `Err(answer)`: nothing was
/// sent yet and the proxy answers itself.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    l: &Listener,
    route: &crate::policy::route::Route,
    pool_max: usize,
    client: Option<IpAddr>,
    req: &RequestHeader,
    down: Down3<'_>,
    declared: Option<u64>,
    obs: RequestObs,
) -> (Result<Done, Answer>, RequestObs) {
    let Down3 { send, recv, conn } = down;
    let method = req.method.as_str();
    let head_only = method == "HEAD";
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let host = crate::http::request_host(req);
    // A body without a declared length is read first (see the module doc).
    let whole = match declared {
        Some(_) => None,
        None => {
            let mut b = Vec::new();
            match read_ahead(recv, route.max_body_size, l.client_timeout, &mut b).await {
                ReadAhead::Whole => Some(b),
                ReadAhead::OverLimit => return (Err(Answer::closing(413)), obs),
                ReadAhead::Broken => return (Err(Answer::new(400)), obs),
                ReadAhead::Stalled => return (Err(Answer::new(408)), obs),
            }
        }
    };
    let body_len = declared.unwrap_or_else(|| whole.as_ref().map_or(0, |b| b.len() as u64));

    let mut out = Vec::with_capacity(512);
    let head = crate::http::UpstreamHead {
        method,
        target,
        host,
        length: if body_len > 0 || declared.is_some() {
            crate::http::BodyLength::Is(body_len)
        } else {
            crate::http::BodyLength::Dropped
        },
        client,
        tls: true,
        trace: obs.trace.as_ref(),
    };
    head.write(req, &mut out);
    if let Some(b) = &whole {
        out.extend_from_slice(b);
    }
    let hash = policy::hash::of_request(&route.pool, client, req);

    // the stream's own: its waits are one at a time
    let mut timer = crate::lifecycle::idle::CoarseTimer::unarmed();
    let mut ex = Exchange::new(l, route, pool_max, obs, None, &mut timer);
    ex.sticky = policy::sticky::affinity(&route.pool, req);
    let (itx, mut heads) = tokio::sync::mpsc::unbounded_channel();
    ex.interim = Some(itx);
    ex.body_len = body_len;
    if whole.is_some() {
        ex.tries_from = Some(std::time::Instant::now());
    }
    let streamed = if whole.is_some() { 0 } else { body_len };
    let (mine, theirs) = tokio::io::duplex(PIPE_BUF);
    let g = Guarded::new(Box::new(BodyPipe(mine)), PASS, None).passthrough();
    let exchange = async {
        let mut g = g;
        let r = ex
            .exchange(
                Some(&mut g),
                &mut out,
                streamed,
                hash,
                (method, target),
                head_only,
                Down::H2,
            )
            .await;
        drop(g);
        r
    };
    let exchange = super::interim::alongside(exchange, &mut heads, send);
    // The client's connection closing (its app went away, its network did) ends the
    // exchange at once, as HTTP/2's stream reset does; a stream-level cancel shows when the
    // response is written.
    let mut gone = false;
    let both = async {
        if streamed > 0 {
            // The exchange ends the request, body read or not (a backend that failed first, a
            // client that stalled mid-body): the pump stops with it instead of waiting on the
            // client for the rest.
            let read = AtomicUsize::new(0);
            let pumping = pump(recv, theirs, &read);
            tokio::pin!(exchange, pumping);
            let mut pumped = false;
            let res = loop {
                tokio::select! {
                    r = &mut exchange => break r,
                    _ = &mut pumping, if !pumped => pumped = true,
                }
            };
            (res, read.load(Relaxed))
        } else {
            drop(theirs);
            (exchange.await, body_len as usize)
        }
    };
    let (res, bytes_in) = tokio::select! {
        r = both => r,
        _ = conn.closed() => {
            gone = true;
            (Err(Failure::Cut), 0)
        }
    };
    let res = match res {
        Ok((up, rbuf, head)) => {
            // the route's compression step, as the general engine runs it
            let accept: Vec<&[u8]> = req
                .headers
                .get_all(http::header::ACCEPT_ENCODING)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            let creq = crate::policy::compress::Request {
                head: head_only,
                range: req.headers.contains_key(http::header::RANGE),
                accept_encoding: &accept,
            };
            let spec = route.compression.as_deref();
            respond(&mut ex, send, up, rbuf, head, (spec, &creq), &mut gone).await
        }
        Err(e) => Err(e),
    };
    if !gone {
        ex.observe_outcome(&res);
    }
    let slot = ex.pick.as_ref().map(|p| p.slot.clone());
    let r = match res {
        Ok(()) => Ok((ex.status, bytes_in, ex.bytes_out, slot)),
        Err(Failure::Cut) if gone => Ok((CLIENT_CLOSED, bytes_in, ex.bytes_out, slot)),
        Err(Failure::Answer(why_status, why)) => {
            let code = why_status.status();
            log::warn!(
                "{}: answering {code} for {} over HTTP/3 (backend {}): {why}",
                l.name,
                req.uri,
                slot.as_ref().map(|s| s.label.as_str()).unwrap_or("-")
            );
            Err(why_status.answer().unwrap_or_else(|| Answer::new(code)))
        }
        Err(Failure::Cut) => {
            // the response was cut after its head: reset the stream rather than end it
            send.stop_stream(::h3::error::Code::H3_INTERNAL_ERROR);
            Ok((ex.status, bytes_in, ex.bytes_out, slot))
        }
    };
    (r, ex.obs)
}

/// Write the response on the HTTP/3 stream (chunked bodies decoded) and give the backend
/// connection back to the pool when its body ended cleanly.
async fn respond(
    ex: &mut Exchange<'_>,
    send: &mut Send,
    mut up: TcpStream,
    rbuf: Vec<u8>,
    h: RespHead,
    (spec, creq): (
        Option<&crate::config::compression::CompressionSpec>,
        &crate::policy::compress::Request<'_>,
    ),
    gone: &mut bool,
) -> Result<(), Failure> {
    // a failed write: the client went away, or the stream broke
    let mut cut = |e: ::h3::error::StreamError| {
        *gone |= client_gone(&e);
        Failure::Cut
    };
    ex.status = h.code;
    let Some(mut resp) = h.h2 else {
        return Err(Failure::Answer(
            crate::policy::answer::Failure::Internal,
            "no response head".into(),
        ));
    };
    let mut encoder = None;
    if let Some(coding) = crate::policy::compress::decide(spec, creq, &resp) {
        let edited = crate::policy::compress::edit(&mut resp, coding.map(|c| c.0));
        // HTTP/3 frames the body itself: no Transfer-Encoding
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        let started = coding.map(|(c, level)| crate::http::encode::Encoder::new(c, level));
        match (edited, started.transpose()) {
            (Ok(()), Ok(e)) => encoder = e,
            _ => {
                return Err(Failure::Answer(
                    crate::policy::answer::Failure::Internal,
                    "cannot start the compressor".into(),
                ))
            }
        }
    }
    let mut r = http::Response::builder().status(resp.status);
    if let Some(hm) = r.headers_mut() {
        for (k, v) in resp.headers.iter() {
            hm.append(k.clone(), v.clone());
        }
        if let Some(c) = ex
            .sticky_cookie()
            .and_then(|c| http::HeaderValue::from_str(&c).ok())
        {
            hm.append(http::header::SET_COOKIE, c);
        }
        if let (Framing::Length(n), None) = (h.framing, &encoder) {
            hm.insert(http::header::CONTENT_LENGTH, n.into());
        }
        if let Some(v) = crate::policy::edit::alt_svc(ex.listener()) {
            hm.insert(http::header::ALT_SVC, v.clone());
        }
        crate::policy::edit::date_if_missing(resp.status, hm);
    }
    let Ok(r) = r.body(()) else {
        return Err(Failure::Answer(
            crate::policy::answer::Failure::BadResponse,
            "response head not valid for HTTP/3".into(),
        ));
    };
    if let Err(e) = send.send_response(r).await {
        return Err(cut(e));
    }
    let mut body = Deframe::new(h.framing, h.upstream_keep);
    // the body bytes that came with the head first, then reads; each piece copied once
    let head_buf = rbuf;
    let mut buf = Vec::with_capacity(BODY_BUF);
    let mut first = true;
    while !body.done() {
        let piece: &[u8] = if std::mem::take(&mut first) {
            &head_buf[h.head_len..]
        } else {
            match ex.read_body(&mut up, &mut buf, h.framing).await? {
                Some(n) => &buf[..n],
                None => {
                    body.closed();
                    break;
                }
            }
        };
        let mut d = Vec::with_capacity(piece.len());
        body.take(piece, &mut d).map_err(|e| ex.bad_chunk(e))?;
        if d.is_empty() {
            continue;
        }
        let chunk = Bytes::from(d);
        let chunk = match encoder.as_mut() {
            Some(e) => e.push(&chunk, false).map_err(|_| Failure::Cut)?,
            None => chunk,
        };
        ex.bytes_out += chunk.len();
        if !chunk.is_empty() {
            send.send_data(chunk).await.map_err(&mut cut)?;
        }
    }
    if let Some(mut e) = encoder {
        let tail = e.push(b"", true).map_err(|_| Failure::Cut)?;
        ex.bytes_out += tail.len();
        if !tail.is_empty() {
            send.send_data(tail).await.map_err(&mut cut)?;
        }
    }
    send.finish().await.map_err(&mut cut)?;
    if body.keep() {
        ex.give_back(up);
    }
    Ok(())
}
