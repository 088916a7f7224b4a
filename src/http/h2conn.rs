//! HTTP/2 connections, with their streams served inside the connection's own task.
//!
//! Pingora's HTTP/2 server spawns a task per stream. Each spawn allocates a task, moves the
//! stream's future into it and schedules it, and every frame for the stream then crosses
//! from the connection's task to the stream's and back. Here a connection's streams are
//! futures in a `FuturesUnordered` that the connection's task polls beside the codec: a
//! woken stream is polled in the same pass that reads and flushes its frames. The streams of
//! one connection share its thread, as nginx and HAProxy serve them; connections still
//! spread over the runtime's threads.
//!
//! The loop also bounds what Pingora's left open: the client's preface must arrive within the
//! listener's `header_timeout`, and a connection with no stream in flight is closed (after a
//! GOAWAY) once `keepalive_timeout` passes, as an idle HTTP/1 keep-alive connection is; after
//! `keepalive_requests` streams it gets a GOAWAY, as nginx applies that limit to HTTP/2.

use crate::lifecycle::idle::CoarseTimer;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Digest, Stream};
use pingora_core::server::ShutdownWatch;
use std::future::poll_fn;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Streams refused while being accepted (bad pseudo-headers, framing or authority) that a
/// connection may send before it is closed: a client that keeps sending them is abusing the
/// connection, not making mistakes. Pingora's own loop allows as many.
pub const MAX_REJECTED_STREAMS: usize = 32;

/// Streams cancelled as they opened (reset before the loop took them from h2) that a
/// connection may have beyond the streams it had served, before it is told ENHANCE_YOUR_CALM
/// and closed. h2 bounds such streams within one read (20); this bounds a client that spreads
/// them over many reads, each costing the proxy a stream's setup for no request. Clients do
/// cancel streams (a page navigated away from), but rarely before the server has taken them,
/// and not more often than they are served.
pub const MAX_CANCELLED_STREAMS: usize = 100;

/// After a GOAWAY with no stream in flight, how long the client has to acknowledge it
/// (h2 pings to learn the last stream the client sent) before the connection is dropped.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The bounds of one HTTP/2 connection, from its listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    /// For the client's preface (`header_timeout`).
    pub preface: Duration,
    /// With no stream in flight (`keepalive_timeout`).
    pub idle: Duration,
    /// Streams the connection serves before its GOAWAY (`keepalive_requests`, as nginx
    /// applies it to HTTP/2); `None`: unlimited. Streams the client opened before it saw the
    /// GOAWAY are still served.
    pub max_streams: Option<u32>,
}

/// What the connection's loop acts on; streams are taken and run inside its poll.
enum Step {
    Shutdown,
    /// A stream refused while being accepted (already answered or reset).
    Rejected,
    /// The connection closed cleanly (`None`: after the last GOAWAY) or failed.
    Ended(Option<Box<pingora_core::Error>>),
    Idle,
    /// The connection served its `max_streams`.
    Enough,
    /// More streams cancelled as they opened than [`MAX_CANCELLED_STREAMS`] allows.
    Cancels,
}

/// Whether the client already reset the stream h2 just handed over. h2 settles every frame
/// a read brought before it hands over a stream, so a stream opened and reset in one breath is
/// seen here, before any engine runs it. The poll uses a no-op waker: the stream's own future
/// registers its task when it waits on the stream.
fn cancelled(s: &mut HttpSession) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(&mut s.idle()).poll(&mut cx).is_ready()
}

/// Serve one HTTP/2 connection until it closes; each stream is `app`'s, as Pingora hands it.
pub async fn serve<A>(app: &Arc<A>, io: Stream, limits: H2Limits, shutdown: &ShutdownWatch)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: io.get_ssl_digest(),
        timing_digest: io.get_timing_digest(),
        proxy_digest: io.get_proxy_digest(),
        socket_digest: io.get_socket_digest(),
    });
    // for log lines only
    let peer = || {
        digest
            .socket_digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    };
    let mut conn =
        match tokio::time::timeout(limits.preface, server::handshake(io, app.h2_options())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                log::debug!("HTTP/2 handshake with {} failed: {e}", peer());
                return;
            }
            Err(_) => {
                log::info!(
                    "HTTP/2 client {} sent no preface within {:?}; closing",
                    peer(),
                    limits.preface
                );
                return;
            }
        };
    let mut watch = shutdown.clone();
    let mut closing = *watch.borrow();
    if closing {
        conn.graceful_shutdown();
    }
    // One wait for the whole connection: a `changed()` made afresh in each pass would join
    // and leave the watch's waiter list (a lock each way) for every event.
    let shut = watch.changed();
    tokio::pin!(shut);
    let mut streams = FuturesUnordered::new();
    let mut idle: Option<CoarseTimer> = None;
    let mut rejected = 0usize;
    let (mut cancels, mut taken, mut flooded) = (0usize, 0usize, false);
    let mut left = limits.max_streams;
    loop {
        let step = poll_fn(|cx| {
            if !closing && shut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Shutdown);
            }
            loop {
                // The codec: it reads what arrived, flushes what the streams wrote, and hands
                // over every new stream before any stream runs. Taking them all first, then
                // running the streams in a batch, keeps the codec's code and the streams'
                // each in cache, rather than alternating between them per stream.
                loop {
                    let accept =
                        std::pin::pin!(HttpSession::from_h2_conn(&mut conn, digest.clone()));
                    match accept.poll(cx) {
                        Poll::Ready(Ok(Some(H2Accept::Session(mut s)))) => {
                            idle = None;
                            if cancelled(&mut s) {
                                // a stream opened and reset in the same read (the "rapid
                                // reset" of CVE-2023-44487): h2 hands it over all the same,
                                // and no engine should send it on to a backend
                                log::debug!("HTTP/2 stream of {} reset as it opened", peer());
                                crate::observability::client_closed(None);
                                cancels += 1;
                                if cancels > MAX_CANCELLED_STREAMS + taken && !flooded {
                                    return Poll::Ready(Step::Cancels);
                                }
                                continue;
                            }
                            taken += 1;
                            streams
                                .push(app.process_new_http(ServerSession::new_http2(s), shutdown));
                            if let Some(n) = left.as_mut() {
                                *n = n.saturating_sub(1);
                                if *n == 0 && !closing {
                                    return Poll::Ready(Step::Enough);
                                }
                            }
                        }
                        Poll::Ready(Ok(Some(H2Accept::Rejected))) => {
                            return Poll::Ready(Step::Rejected)
                        }
                        Poll::Ready(Ok(None)) => return Poll::Ready(Step::Ended(None)),
                        Poll::Ready(Err(e)) => return Poll::Ready(Step::Ended(Some(e))),
                        Poll::Pending => break,
                    }
                }
                // The streams that were woken. One that finished has frames for the codec to
                // flush: go round again rather than wait for the codec's wake-up.
                let mut finished = false;
                while let Poll::Ready(Some(_)) = streams.poll_next_unpin(cx) {
                    finished = true;
                }
                if !finished {
                    break;
                }
            }
            if !streams.is_empty() {
                return Poll::Pending;
            }
            let wait = if closing {
                GOAWAY_GRACE.min(limits.idle)
            } else {
                limits.idle
            };
            match idle
                .get_or_insert_with(|| CoarseTimer::idle(wait))
                .poll_expired(cx)
            {
                Poll::Ready(()) => Poll::Ready(Step::Idle),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match step {
            Step::Shutdown => {}
            Step::Rejected => {
                rejected += 1;
                if rejected >= MAX_REJECTED_STREAMS {
                    log::warn!(
                        "closing the HTTP/2 connection of {}: {rejected} malformed requests",
                        peer()
                    );
                    break;
                }
                continue;
            }
            Step::Ended(None) => break,
            // it is common for a client to close without a GOAWAY
            Step::Ended(Some(e)) => {
                log::debug!("HTTP/2 connection of {} ended: {e}", peer());
                break;
            }
            Step::Enough => log::debug!(
                "HTTP/2 connection of {} served its {:?} streams; GOAWAY",
                peer(),
                limits.max_streams
            ),
            Step::Cancels => {
                log::warn!(
                    "closing the HTTP/2 connection of {}: {cancels} streams reset as they \
                     opened, {taken} served",
                    peer()
                );
                // the GOAWAY is flushed as the loop goes on; the grace bounds a client that
                // does not read it
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                flooded = true;
                closing = true;
                idle = None;
                continue;
            }
            Step::Idle if closing => break,
            Step::Idle => log::debug!(
                "HTTP/2 connection of {} idle for {:?}; closing",
                peer(),
                limits.idle
            ),
        }
        // Shutdown, enough streams or idle: tell the client to go. An idle wait running now
        // is replaced by the shorter grace.
        conn.graceful_shutdown();
        closing = true;
        idle = None;
    }
    // The codec is gone: streams still waiting on it see their stream reset and finish.
    drop(conn);
    while streams.next().await.is_some() {}
}
