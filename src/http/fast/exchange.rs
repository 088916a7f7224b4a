//! The backend side of a lean-engine request: a backend from the route's pool, the request
//! written on a pooled or new connection, the response head read and handed back, the body
//! streamed to the client, the connection given back to the pool when the body ended cleanly.
//! Retries are [`crate::policy::retry`]'s decisions; failures are named for the policy
//! ([`crate::policy::answer::Failure`]), which picks the status.
//!
//! This file picks, connects and sends; `body` moves the request body, `respond` the
//! response (head, body relay, upgrade tunnel), `spliced` bodies that bypass the process.

use super::response::{parse_response, Parsed, RespHead};
use super::write::write_flush;
use super::{Guarded, Listener, BODY_BUF, RESP_BUF};
use crate::lifecycle::idle::CoarseTimer;
use crate::net::connect;
use crate::net::sys::recv_buf_room;
use crate::observability::RequestObs;
use crate::policy::answer::Failure as Why;
use crate::policy::retry::{self, Cause};
use crate::policy::route::Route;
use crate::upstream::{bit, conns, NoBackend, Pick, Pool};
use log::warn;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

mod body;
mod respond;
mod spliced;
use body::write_both;
use spliced::write_head_more;

/// Bodies up to this size are sent to the client with their head in one write.
const SMALL_BODY: usize = 16 * 1024;
/// Longest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why the backend exchange failed.
pub enum Failure {
    /// Answer the client with the policy's page for this failure; a reason for the log.
    Answer(Why, String),
    /// The client went away or the response was cut after its head was sent: close.
    Cut,
}

/// How a try's wait for the response head ended.
enum Next {
    Head(RespHead),
    /// A reused connection the backend had closed: again on a fresh one.
    Stale,
    /// A failure [`retry`] sends to another backend.
    Retry,
}

/// Who the response goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// An HTTP/1 client; `http10`: one speaking HTTP/1.0, which takes no chunked body.
    H1 {
        want_keep: bool,
        upgrade: bool,
        http10: bool,
    },
    H2,
}

/// `f` within `d` on the request's timer (its connection's, see [`super::Conn::timer`]).
async fn timed<T>(
    timer: &mut CoarseTimer,
    d: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, (bool, std::io::Error)> {
    match crate::net::deadline::within_on(timer, d, f).await {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err((false, e)),
        None => Err((true, std::io::ErrorKind::TimedOut.into())),
    }
}

/// The backend side of one request.
pub struct Exchange<'a> {
    l: &'a Listener,
    route: &'a Route,
    pool: &'a Pool,
    pool_max: usize,
    pub obs: RequestObs,
    pub pick: Option<Pick>,
    pub status: u16,
    pub bytes_out: usize,
    /// The request body's length (Content-Length), for holding it for a retry.
    pub body_len: u64,
    /// How long each read from the backend may wait in the current try.
    try_timeout: Duration,
    /// For the tunnel of an upgraded (WebSocket) connection, which ends early on shutdown.
    shutdown: Option<&'a ShutdownWatch>,
    /// The request's sticky cookie, for the choice of backend and the response's cookie.
    pub sticky: crate::policy::sticky::Affinity,
    /// Where forwarded interim (1xx) heads go, raw, for a client that takes them but is not
    /// written through the guard (an HTTP/3 stream).
    pub interim: Option<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>,
    /// When the tries began, if the engine waited for the client after the request's head
    /// (a body read ahead or held for a retry); else the request's start.
    pub tries_from: Option<Instant>,
    /// A chunked request body still arriving after what went with the head.
    pub chunked: Option<ChunkedBody>,
    /// The limits on the request's waits, one at a time (see [`timed`]).
    pub(super) timer: &'a mut CoarseTimer,
}

/// A chunked request body on its way: decoded as it arrives
/// ([`crate::http::chunked::ChunkedScanner::data_pieces`]) and sent on in the proxy's own
/// framing, its data counted against the route's `max_body_size`.
pub struct ChunkedBody {
    pub scan: crate::http::chunked::ChunkedScanner,
    /// Data bytes so far, those that came with the head included.
    pub data: u64,
    pub limit: u64,
    pub ended: bool,
}

impl<'a> Exchange<'a> {
    pub fn new(
        l: &'a Listener,
        route: &'a Route,
        pool_max: usize,
        obs: RequestObs,
        shutdown: Option<&'a ShutdownWatch>,
        timer: &'a mut CoarseTimer,
    ) -> Exchange<'a> {
        Exchange {
            l,
            route,
            pool: &route.pool,
            pool_max,
            obs,
            pick: None,
            status: 0,
            bytes_out: 0,
            body_len: 0,
            try_timeout: route.pool.read_timeout,
            shutdown,
            sticky: Default::default(),
            interim: None,
            tries_from: None,
            chunked: None,
            timer,
        }
    }

    /// Forward the request (`out`: head and the body bytes already read; `body_left`: body
    /// bytes still to read from the client) and stream the response back. `Ok(keep)`: the
    /// response is complete and the client connection may be reused. `out` is emptied once
    /// no try can send it again ([`Self::exchange`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &mut self,
        g: &mut Guarded,
        out: &mut Vec<u8>,
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

    /// Send the request to a backend (selection, retries as [`retry`] decides, one retry of
    /// a stale pooled connection) and read the response head; a retried answer's head is
    /// dropped here, before anything of it reaches the client. Returns the connection, the bytes read
    /// (head and the start of the body) and the parsed head rendered for `down`. A body that
    /// a retry may send again is read into `out` first; a streamed one is never sent twice,
    /// so `out` is emptied once it is sent, not held through the wait for the answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn exchange(
        &mut self,
        mut g: Option<&mut Guarded>,
        out: &mut Vec<u8>,
        body_left: u64,
        hash: u64,
        (method, uri): (&str, &str),
        head_only: bool,
        down: Down,
    ) -> Result<(TcpStream, Vec<u8>, RespHead), Failure> {
        let pool = self.pool;
        let spec = &pool.spec;
        retry::begin(pool);
        // A body that a retry may send again is read first and held with the head.
        let body_left = match g.as_deref_mut() {
            Some(c) if body_left > 0 && retry::hold_body(pool, method, self.body_len) => {
                out.reserve(body_left as usize);
                self.hold_request_body(c, out, body_left).await?;
                self.tries_from = Some(Instant::now());
                0
            }
            _ => body_left,
        };
        // `read_timeout` is for the tries together, counted from the first (as the general
        // engine counts it): time spent reading the client's body first is not in it. With
        // no such wait the request's start stands in (no clock reading of its own).
        let started = self.tries_from.unwrap_or_else(|| self.obs.started());
        // Any retry after sending, and one on a stale pooled connection, need the whole
        // request in `out`.
        let replayable = body_left == 0 && self.chunked.is_none();
        let retryable = retry::after_stale_connection(method, replayable, true);
        // Nothing of the response went to the client before a retry is decided: a forwarded
        // 1xx is not the response (`policy::retry::Try::response_started`).
        let failed = |cause, attempts| retry::Try {
            method,
            cause,
            attempts,
            body_replayable: replayable,
            response_started: false,
            started,
        };
        let mut tried = 0u64;
        let mut refused = 0u64;
        let mut attempts = 0u32;
        let mut fresh_only = false;
        let mut last_connect = None;
        // A streamed body's first piece, read once, sent with the head (kept for a new try).
        let mut piece: Option<Vec<u8>> = None;
        loop {
            attempts += 1;
            self.obs.peer_selected();
            self.pick = None;
            let mut picked = pool.select_queued_for(self.sticky.pin, hash, tried).await;
            if let (Err(NoBackend::None), Some(skip)) = (&picked, retry::skip_fewer(tried, refused))
            {
                tried = skip;
                picked = pool.select_queued_for(self.sticky.pin, hash, tried).await;
            }
            let pick = match picked {
                Ok(p) => p,
                Err(no) => {
                    warn!(
                        "{}: upstream {}: no backend for {} ({no:?})",
                        self.l.name, pool.name, self.route.label
                    );
                    let why = retry::no_backend(no, last_connect);
                    return Err(Failure::Answer(why, "no backend for the request".into()));
                }
            };
            self.obs.picked(&pick.slot.label);
            let addr = pick.slot.addr;
            let pooled = if fresh_only {
                None
            } else {
                conns::checkout(addr)
            };
            let (mut up, reused) = match pooled {
                Some(s) => (s, true),
                None => match {
                    self.obs.connecting();
                    let (l, label) = (&self.l.name, &pick.slot.label);
                    let pooled = || (!fresh_only).then(|| conns::checkout(addr)).flatten();
                    connect::backend(l, label, addr, pool.connect_timeout, pooled)
                }
                .await
                {
                    Ok(s) => s,
                    Err(connect::Error::Shortage(e)) => {
                        // not the backend's doing: it is neither blamed nor skipped
                        self.pick = Some(pick);
                        return Err(Failure::Answer(
                            Why::Overloaded,
                            format!("no local resources for a backend connection: {e}"),
                        ));
                    }
                    Err(e) => {
                        let (timed_out, e) = match e {
                            connect::Error::Failed(e) => (false, e),
                            _ => (true, std::io::ErrorKind::TimedOut.into()),
                        };
                        pick.slot.failures.fetch_add(1, Relaxed);
                        crate::policy::outlier::observe(pool, &pick.slot, true);
                        tried |= bit(pick.slot.index);
                        refused |= bit(pick.slot.index);
                        warn!(
                            "{}: connect to backend {} failed (attempt {attempts}): {e}",
                            self.l.name, pick.slot.label
                        );
                        self.pick = Some(pick);
                        let why = if timed_out {
                            Why::ConnectTimeout
                        } else {
                            Why::ConnectFailed
                        };
                        last_connect = Some(why);
                        if retry::retry(pool, failed(Cause::ConnectFailure, attempts)) {
                            continue;
                        }
                        return Err(Failure::Answer(why, format!("connect failed: {e}")));
                    }
                },
            };
            self.obs.connected(Some(self.route.id), reused);
            self.pick = Some(pick);
            // a first try on a pooled connection starts when the request did (no clock read)
            let elapsed = if reused && attempts == 1 {
                Duration::ZERO
            } else {
                started.elapsed()
            };
            self.try_timeout = retry::try_timeout(pool, elapsed);

            // Send the request: the head with the body bytes read so far, in one write.
            // A body spliced to the backend is read after the head is sent, none of it here.
            let spliced = self.l.splices_body(body_left)
                && g.as_deref()
                    .is_some_and(|c| c.body_socket(body_left).is_some());
            // A chunked body still arriving goes out with the head in its first write, its
            // data not copied: it is never sent twice (a body that a try could resend is the
            // general engine's), so none of it is kept for another try.
            let chunked_more = self.chunked.as_ref().is_some_and(|c| !c.ended);
            let first = match (g.as_deref_mut(), &piece) {
                (Some(c), None) if body_left > 0 && !spliced => {
                    let want = BODY_BUF.min(body_left as usize);
                    let mut b = Vec::with_capacity(want);
                    self.read_client(c, &mut b, want).await?;
                    &piece.insert(b)[..]
                }
                (_, p) => p.as_deref().unwrap_or_default(),
            };
            let sent = if spliced {
                timed(self.timer, spec.write_timeout, write_head_more(&up, out)).await
            } else if chunked_more {
                Ok(()) // with the body's next piece, below
            } else {
                timed(
                    self.timer,
                    spec.write_timeout,
                    write_both(&mut up, out, first),
                )
                .await
            };
            if let Err((_, e)) = sent {
                if reused {
                    self.stale(method, uri, &e, retryable);
                }
                if reused && retryable {
                    attempts -= 1;
                    fresh_only = true;
                    continue;
                }
                return Err(Failure::Answer(
                    Why::BadResponse,
                    format!("sending the request: {e}"),
                ));
            }
            if spliced {
                if let Some(g) = g.as_deref_mut() {
                    self.splice_request_body(g, &up, body_left).await?;
                }
            } else if chunked_more {
                let Some(g) = g.as_deref_mut() else {
                    return Err(Failure::Answer(
                        Why::Internal,
                        "request body without a reader".into(),
                    ));
                };
                self.stream_chunked_body(g, &mut up, out).await?;
            } else if body_left > 0 {
                let (Some(g), Some(b)) = (g.as_deref_mut(), piece.as_mut()) else {
                    return Err(Failure::Answer(
                        Why::Internal,
                        "request body without a reader".into(),
                    ));
                };
                let left = body_left - b.len() as u64;
                self.stream_request_body(g, &mut up, b, left).await?;
            }
            // A streamed body is never sent twice (`replayable` is false with one), so its
            // buffer goes back now rather than through the wait for the answer: the next
            // request's body is then read into the same block, still in the cache, where
            // one held per request in flight made each copy in and out touch cold memory.
            // Nor is the head sent with it: no try follows a sent request whose body is not
            // replayable (`retry::retry`, `retry::after_stale_connection`).
            piece = None;
            if !replayable {
                *out = Vec::new();
            }

            // Read the response head. What is buffered is parsed before reading again: a
            // 1xx and the final head often arrive in one segment. The buffer is made when
            // the answer is there to read (`recv_buf_room`), not held through the wait.
            let mut rbuf: Vec<u8> = Vec::new();
            let mut got_any = false;
            let next = 'head: loop {
                while !rbuf.is_empty() {
                    match parse_response(&rbuf, head_only, down)? {
                        Parsed::Partial => break,
                        Parsed::Informational(n, code) => {
                            // The lean engine's HTTP/1 clients are HTTP/1.1 without an
                            // expectation (engine::choose); HTTP/2 ones take no 1xx,
                            // HTTP/3 ones (`interim`) do.
                            let to = crate::policy::interim::Client {
                                h2: down == Down::H2 && self.interim.is_none(),
                                http10: matches!(down, Down::H1 { http10: true, .. }),
                                ..Default::default()
                            };
                            let fwd = crate::policy::interim::forwarded(code, to);
                            if let (Some(tx), true) = (self.interim.as_ref(), fwd) {
                                let head = bytes::Bytes::copy_from_slice(&rbuf[..n]);
                                let _ = tx.send(head);
                            } else if let (Some(g), true) = (g.as_deref_mut(), fwd) {
                                let t = self.l.client_timeout;
                                if write_flush(g, &rbuf[..n], t).await.is_err() {
                                    return Err(Failure::Cut);
                                }
                            }
                            rbuf.drain(..n);
                        }
                        Parsed::Head(h) => break 'head Next::Head(h),
                    }
                }
                if rbuf.len() == rbuf.capacity() {
                    if rbuf.len() >= MAX_RESPONSE_HEAD {
                        return Err(Failure::Answer(
                            Why::BadResponse,
                            "response head too large".into(),
                        ));
                    }
                    rbuf.reserve(rbuf.capacity());
                }
                let read = recv_buf_room(&up, &mut rbuf, RESP_BUF);
                let (cause, why) = match timed(self.timer, self.try_timeout, read).await {
                    Ok(0) => {
                        if !got_any && reused {
                            let e = std::io::ErrorKind::UnexpectedEof.into();
                            self.stale(method, uri, &e, retryable);
                            if retryable {
                                break Next::Stale;
                            }
                        }
                        let e = "backend closed the connection before a complete response head";
                        (Cause::Reset, Failure::Answer(Why::BadResponse, e.into()))
                    }
                    Ok(_) => {
                        got_any = true;
                        continue;
                    }
                    Err((true, _)) => {
                        let e = "response read timed out".into();
                        (Cause::Timeout, Failure::Answer(Why::ResponseTimeout, e))
                    }
                    Err((false, e)) => {
                        if !got_any && reused {
                            self.stale(method, uri, &e, retryable);
                            if retryable {
                                break Next::Stale;
                            }
                        }
                        let e = format!("reading the response: {e}");
                        (Cause::Reset, Failure::Answer(Why::BadResponse, e))
                    }
                };
                if !retry::retry(pool, failed(cause, attempts)) {
                    return Err(why);
                }
                tried |= self.retried(method, uri, cause);
                break Next::Retry;
            };
            let head = match next {
                Next::Head(h) => h,
                // a stale pooled connection: the same backend, on a fresh connection
                Next::Stale => {
                    attempts -= 1;
                    fresh_only = true;
                    continue;
                }
                Next::Retry => continue,
            };
            let cause = Cause::Status(head.code);
            if retry::retry(pool, failed(cause, attempts)) {
                tried |= self.retried(method, uri, cause);
                continue;
            }
            return Ok((up, rbuf, head));
        }
    }

    /// A try that is retried on another backend: counted against the backend for outlier
    /// detection, logged, and its backend's bit for the `tried` mask returned. Its
    /// connection is dropped, not pooled: the rest of the answer is never read.
    fn retried(&self, method: &str, uri: &str, cause: Cause) -> u64 {
        let Some(p) = &self.pick else {
            return 0;
        };
        crate::policy::outlier::observe(self.pool, &p.slot, true);
        warn!(
            "{}: backend {} failed {method} {uri} ({cause:?}): retrying on another backend",
            self.l.name, p.slot.label
        );
        bit(p.slot.index)
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

    /// Tell outlier detection how the backend did (connect failures were told as they
    /// happened).
    pub fn observe_outcome(&self, res: &Result<impl Sized, Failure>) {
        let Some(p) = &self.pick else {
            return;
        };
        let failed = match res {
            Ok(_) => crate::policy::outlier::failed_answer(self.pool, self.status),
            Err(Failure::Answer(Why::BadResponse | Why::ResponseTimeout, _)) => true,
            Err(_) => return,
        };
        crate::policy::outlier::observe(self.pool, &p.slot, failed);
    }

    /// The listener the request came in on.
    pub fn listener(&self) -> &Listener {
        self.l
    }

    /// The `Set-Cookie` of a sticky upstream for the response of the backend chosen.
    pub fn sticky_cookie(&self) -> Option<String> {
        let p = self.pick.as_ref()?;
        crate::policy::sticky::set_cookie(self.pool, &self.sticky, &p.slot, self.l.tls)
    }

    /// Keep a backend connection whose response ended cleanly for the next request.
    pub fn give_back(&self, up: TcpStream) {
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
