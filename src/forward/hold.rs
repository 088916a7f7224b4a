//! Holding the response head (`filter.hold_head_bytes`): so that a body pattern found in
//! the first bytes of a body gets the proxy's 403 page instead of a cut response.
//!
//! Pingora writes the response head to the client as soon as its batch has been filtered,
//! and offers no hook that could delay it until body bytes arrive. So, as for CONNECT
//! ([`super::tunnel`]), the client connection is taken from Pingora's session when the
//! response head comes in, and a stand-in HTTP/1 session is put in its place whose socket is
//! a [`Held`]: it replays the request head once (Pingora's bookkeeping finds the parsed
//! request), and keeps everything Pingora writes (the serialized head and body) in memory
//! while the window is open. The body filter counts the body bytes it has scanned; once they
//! reach the limit or the body ends, clean, it releases: what was kept goes out, and from
//! then on writes pass straight through. On a match inside the window what was kept is
//! dropped and a fresh session over the same socket answers the 403 page. A match after
//! the release cuts the response, as without holding.
//!
//! A held response closes the client connection after it (`Connection: close`): the stand-in
//! owns the socket from then on, and handing it back to Pingora's keep-alive loop would
//! wrap it once more per request. Memory: at most the head, the limit and one piece more.

use async_trait::async_trait;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Shutdown, SocketDigest, Stream};
use pingora_proxy::Session;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the stand-in's socket does with writes.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Holding,
    Through,
}

struct Shared {
    /// The client connection; `None` once shut down.
    stream: Option<Stream>,
    mode: Mode,
    /// Holding: what Pingora wrote so far. Through: what is still to go out, from `pos`.
    kept: Vec<u8>,
    pos: usize,
}

impl Shared {
    /// Write out what is left of `kept`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(s) = self.stream.as_mut() else {
            self.kept.clear();
            return Poll::Ready(Ok(()));
        };
        while self.pos < self.kept.len() {
            let n = ready!(Pin::new(&mut *s).poll_write(cx, &self.kept[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.kept.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

/// The hold of one response, kept in the request context.
pub struct Hold {
    shared: Arc<Mutex<Shared>>,
    /// The request head as the client sent it, for a fresh session.
    head: Vec<u8>,
    socket: Option<Arc<SocketDigest>>,
    limit: usize,
    seen: usize,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hold {
    /// Take the client connection over from Pingora's session and hold what is written to it
    /// until `limit` body bytes have been seen. `None` (nothing changed) for a session that
    /// is not HTTP/1 or whose request body is still arriving.
    pub async fn begin(session: &mut Session, limit: usize) -> Option<Hold> {
        if !session.downstream_session.is_body_done() {
            return None;
        }
        let h1 = session.as_http1()?;
        let head = h1.get_headers_raw_bytes().to_vec();
        let socket = h1.digest().socket_digest.clone();
        let shared = Arc::new(Mutex::new(Shared {
            stream: None,
            mode: Mode::Holding,
            kept: Vec::new(),
            pos: 0,
        }));
        let hold = Hold {
            shared,
            head,
            socket,
            limit,
            seen: 0,
        };
        let stand_in = hold.session().await?;
        match std::mem::replace(&mut *session.downstream_session, stand_in) {
            ServerSession::H1(real) => {
                lock(&hold.shared).stream = Some(real.into_inner());
                Some(hold)
            }
            other => {
                // not reached: checked by as_http1 above; put it back unchanged
                *session.downstream_session = other;
                None
            }
        }
    }

    /// A session over the held socket that has read the request head, without keep-alive.
    async fn session(&self) -> Option<ServerSession> {
        let mut s = ServerSession::new_http1(Box::new(Held {
            head: Cursor::new(self.head.clone()),
            shared: self.shared.clone(),
            socket: self.socket.clone(),
        }));
        s.read_request().await.ok()?;
        s.set_keepalive(None);
        Some(s)
    }

    /// Count `n` scanned, clean body bytes; release once the window is full or the body ended.
    pub fn observe(&mut self, n: usize, end: bool) {
        self.seen = self.seen.saturating_add(n);
        if end || self.seen >= self.limit {
            let mut s = lock(&self.shared);
            s.mode = Mode::Through;
        }
    }

    /// After a block: when nothing was released yet, drop what was kept and put a fresh
    /// session in place, so that the proxy's page can be answered. `false` when the hold
    /// was already released (the response is then cut).
    pub async fn take_back(&self, session: &mut Session) -> bool {
        {
            let mut s = lock(&self.shared);
            if s.mode != Mode::Holding {
                return false;
            }
            s.kept.clear();
            s.pos = 0;
            s.mode = Mode::Through;
        }
        match self.session().await {
            Some(fresh) => {
                *session.downstream_session = fresh;
                true
            }
            None => false,
        }
    }
}

/// The stand-in session's socket.
struct Held {
    head: Cursor<Vec<u8>>,
    shared: Arc<Mutex<Shared>>,
    /// The real connection's addresses, so that logging still sees the client.
    socket: Option<Arc<SocketDigest>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.head.position() < self.head.get_ref().len() as u64 {
            return Pin::new(&mut self.head).poll_read(cx, buf);
        }
        // after the head, the client connection as it is (Pingora watches it for a close)
        let mut s = lock(&self.shared);
        match s.stream.as_mut() {
            Some(st) => Pin::new(st).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut s = lock(&self.shared);
        if s.mode == Mode::Holding {
            s.kept.extend_from_slice(b);
            return Poll::Ready(Ok(b.len()));
        }
        ready!(s.poll_drain(cx))?;
        match s.stream.as_mut() {
            Some(st) => Pin::new(st).poll_write(cx, b),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut s = lock(&self.shared);
        if s.mode == Mode::Holding {
            return Poll::Ready(Ok(()));
        }
        ready!(s.poll_drain(cx))?;
        match s.stream.as_mut() {
            Some(st) => Pin::new(st).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// The end of the exchange: what is still kept goes out (a body that ended inside the
    /// window, or a failure other than a block, which is then cut as without holding).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut s = lock(&self.shared);
        s.mode = Mode::Through;
        ready!(s.poll_drain(cx))?;
        match s.stream.as_mut() {
            Some(st) => {
                ready!(Pin::new(&mut *st).poll_flush(cx))?;
                Pin::new(st).poll_shutdown(cx)
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

#[async_trait]
impl Shutdown for Held {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_shutdown(cx)).await;
        // closes the connection
        drop(lock(&self.shared).stream.take());
    }
}

crate::socketless_io!(Held, |s| s.socket.clone());
