//! CONNECT tunnels: take the client connection over from Pingora, then splice bytes both
//! ways until both sides have closed or the tunnel has been idle too long.
//!
//! Taking over: the request is already parsed by Pingora's HTTP/1 session, which owns the
//! socket. We swap that session for a stand-in session over [`Detached`] (an I/O object that
//! replays the request head and swallows writes), so that Pingora's bookkeeping after
//! `request_filter` (logging, `finish`) still finds a parsed CONNECT request, and finish
//! the real session with pipelining enabled. Pingora then hands back the socket together
//! with any bytes the client sent after the CONNECT head (a client may send its TLS
//! ClientHello without waiting for our 200), which go to the origin first.
//!
//! Relaying: the one relay of every tunnel ([`crate::net::splice`]): half-closes passed on,
//! a failure passed on as a reset, the idle timeout, and on shutdown a quiet tunnel is
//! closed like an L4 connection.
//!
//! HTTP/2 (RFC 9113 §8.5, clients of an `h2c: true` listener): the tunnel is the CONNECT
//! request's stream. Nothing is taken over: the 200 is written on the stream without
//! ending it, and [`H2Stream`] makes the stream's DATA frames a byte stream for the same
//! relay; END_STREAM is the half-close each way. A tunnel that ends in an error is reset
//! with CONNECT_ERROR, and its origin connection with a TCP reset (§8.5).

use crate::net::splice::{Client, Ends};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::v2::server::HttpSession as SessionV2;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Shutdown, SocketDigest, Stream};
use pingora_proxy::Session;
use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Connect to the first address that answers, all within `timeout`. A connect this machine
/// refuses waits ([`crate::policy::shortage`]); one that still cannot be made is the proxy's
/// overload (503), not the destination's failure.
pub async fn connect(
    listener: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, (u16, String)> {
    use crate::net::connect::{backend, Error};
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no address");
    for a in addrs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match backend(listener, &a.to_string(), *a, left, || None).await {
            Ok((s, _)) => return Ok(s),
            Err(e @ Error::Shortage(_)) => return Err((503, format!("{a}: {e}"))),
            Err(Error::TimedOut) => {
                return Err((504, format!("connect timed out after {timeout:?}")))
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err((502, last))
}

/// Detach the client connection from Pingora. `None` if this is not an HTTP/1 session or
/// the stream cannot be taken back.
pub async fn take_over(session: &mut Session) -> Option<(Stream, Option<BytesMut>)> {
    let h1 = session.as_http1()?;
    let mut stand_in = ServerSession::new_http1(Box::new(Detached {
        head: Cursor::new(h1.get_headers_raw_bytes().to_vec()),
        socket: h1.digest().socket_digest.clone(),
    }));
    stand_in.read_request().await.ok()?;
    stand_in.set_keepalive(None);
    let mut real = std::mem::replace(&mut *session.downstream_session, stand_in);
    // keep-alive so that `finish` returns the stream instead of closing it; pipelining so
    // that bytes after the CONNECT head come back with it instead of being dropped
    real.set_keepalive(Some(60));
    real.set_pipelining_enabled(true);
    let reusable = real.finish().await.ok()??;
    Some(reusable.into_parts())
}

/// Relay until both directions have ended, nothing moved for `idle`, or shutdown found the
/// tunnel quiet ([`crate::net::splice`], the relay of every tunnel). `early`: bytes the client
/// sent after the CONNECT head, which go to the origin first. Returns the bytes sent (client
/// to origin, origin to client).
pub async fn relay(
    mut down: Stream,
    early: Option<BytesMut>,
    mut up: TcpStream,
    idle: Duration,
) -> (u64, u64) {
    let mut first = 0;
    if let Some(e) = early.filter(|e| !e.is_empty()) {
        if up.write_all(&e).await.is_err() {
            return (0, 0);
        }
        first = e.len() as u64;
    }
    let side = Client::over_socket(down.as_mut());
    match crate::net::splice::splice(side, &mut up, idle, Ends::HALF_CLOSE).await {
        crate::net::splice::Splice::Done(sent, recv) => (first + sent, recv),
        _ => (first, 0),
    }
}

/// Relay a CONNECT over HTTP/2 whose 200 has been written: the stream's request body is
/// the client's side of the tunnel, `send` (the response body) the origin's. Returns the
/// bytes sent and received, and whether the relay ended cleanly.
pub async fn relay_h2(
    session: &mut SessionV2,
    send: h2::SendStream<Bytes>,
    mut up: TcpStream,
    idle: Duration,
) -> ((u64, u64), bool) {
    let mut s = H2Stream {
        session,
        send,
        rest: Bytes::new(),
        ended: false,
    };
    let side = Client::Stream(&mut s, None);
    match crate::net::splice::splice(side, &mut up, idle, Ends::HALF_CLOSE).await {
        crate::net::splice::Splice::Done(sent, recv) => ((sent, recv), true),
        _ => ((0, 0), false),
    }
}

/// An HTTP/2 stream as a byte stream: reads are the request's DATA frames (END_STREAM is
/// the end of input), writes go out as response DATA frames within the flow-control window,
/// shutdown sends END_STREAM.
pub struct H2Stream<'a> {
    session: &'a mut SessionV2,
    send: h2::SendStream<Bytes>,
    /// What is left of the last DATA frame read.
    rest: Bytes,
    ended: bool,
}

fn h2_io(e: h2::Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl AsyncRead for H2Stream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.rest.is_empty() {
            match ready!(self.session.poll_read_body_bytes(cx)) {
                Some(Ok(b)) => self.rest = b,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.rest.len().min(buf.remaining());
        buf.put_slice(&self.rest.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(b.len());
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                let n = cap.min(b.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&b[..n]), false)
                    .map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The stand-in socket behind the session Pingora keeps after a takeover: it replays the
/// request head once, then never yields more data; writes are discarded.
#[derive(Debug)]
struct Detached {
    head: Cursor<Vec<u8>>,
    /// The real connection's addresses, so that logging still sees the client.
    socket: Option<Arc<SocketDigest>>,
}

impl AsyncRead for Detached {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.head.position() < self.head.get_ref().len() as u64 {
            Pin::new(&mut self.head).poll_read(cx, buf)
        } else {
            Poll::Pending
        }
    }
}

impl AsyncWrite for Detached {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Detached {
    async fn shutdown(&mut self) {}
}

crate::socketless_io!(Detached, |s| s.socket.clone());
