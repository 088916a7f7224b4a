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
//! Closing: when one side ends its stream we shut down our write half toward the other
//! (a TCP half-close), so each side sees a clean end of stream; the tunnel ends once both
//! directions are done, or when neither direction has moved a byte for the idle timeout.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_proxy::Session;
use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Connect to the first address that answers, all within `timeout`.
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, (u16, String)> {
    let attempt = async {
        let mut last = String::from("no address");
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err((502, last))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err((504, format!("connect timed out after {timeout:?}"))),
    }
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

/// Splice until both directions have ended or nothing moved for `idle`. Returns the bytes
/// sent (client to origin, origin to client).
pub async fn splice(
    down: Stream,
    early: Option<BytesMut>,
    up: TcpStream,
    idle: Duration,
) -> (u64, u64) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (mut dr, mut dw) = tokio::io::split(down);
    let (mut ur, mut uw) = up.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let recv = Arc::new(AtomicU64::new(0));

    let c2o = {
        let last = last.clone();
        let sent = sent.clone();
        async move {
            if let Some(e) = early.filter(|e| !e.is_empty()) {
                if uw.write_all(&e).await.is_err() {
                    return;
                }
                sent.fetch_add(e.len() as u64, Ordering::Relaxed);
            }
            pump(&mut dr, &mut uw, &last, start, &sent).await;
            let _ = uw.shutdown().await;
        }
    };
    let o2c = {
        let last = last.clone();
        let recv = recv.clone();
        async move {
            pump(&mut ur, &mut dw, &last, start, &recv).await;
            let _ = dw.shutdown().await;
        }
    };
    let watchdog = async {
        loop {
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(c2o, o2c) } => {}
        _ = watchdog => {}
    }
    (sent.load(Ordering::Relaxed), recv.load(Ordering::Relaxed))
}

async fn pump<R, W>(r: &mut R, w: &mut W, last: &AtomicU64, start: Instant, count: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
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
impl UniqueID for Detached {
    fn id(&self) -> UniqueIDType {
        -1
    }
}
impl Ssl for Detached {}
impl GetTimingDigest for Detached {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![]
    }
}
impl GetProxyDigest for Detached {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Detached {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }
}
impl Peek for Detached {}
