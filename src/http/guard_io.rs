//! The guard passes Pingora's stream traits through to the stream it wraps; only a peek
//! sees the bytes it holds back first. Its writes: small ones gathered until a flush, and on
//! HTTP/2 those after the client reset the connection absorbed.

use super::{Body, Guarded, WRITE_GATHER};
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, ALPN};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

#[async_trait::async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::flush(self).await;
        self.inner.shutdown().await
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

crate::passthrough_digests!(Guarded, inner);

#[async_trait::async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.has_pending() {
            let p = self.pending.rest();
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            return Ok(n == buf.len());
        }
        self.inner.try_peek(buf).await
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.reset {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = this.write_gathered(cx, buf);
        this.absorb_reset(r, buf.len())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.wbuf.is_empty() && !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        let flushed = self.poll_drain_then(cx, |s, cx| s.poll_flush(cx));
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.unflushed = false;
        }
        flushed
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_drain_then(cx, |s, cx| s.poll_shutdown(cx))
    }
}

impl Guarded {
    /// Write out the gathered bytes, then `last` on the stream below (its flush or its
    /// shutdown); a reset absorbed as for writes.
    fn poll_drain_then(
        &mut self,
        cx: &mut Context<'_>,
        last: fn(Pin<&mut Stream>, &mut Context<'_>) -> Poll<std::io::Result<()>>,
    ) -> Poll<std::io::Result<()>> {
        if self.reset {
            return Poll::Ready(Ok(()));
        }
        let r = match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => last(Pin::new(&mut self.inner), cx),
            other => other,
        };
        self.absorb_reset(r, ())
    }

    fn write_gathered(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.wbuf.len() + buf.len() > WRITE_GATHER {
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.wbuf.is_empty() {
                return Poll::Pending;
            }
        }
        if buf.len() >= WRITE_GATHER {
            self.unflushed = true;
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_GATHER);
        }
        self.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// HTTP/2: once a write finds the client's connection reset, that write and every later
    /// one are absorbed, so that h2 goes on to read the frames the client sent before its
    /// reset (the kernel keeps them readable) instead of failing the connection first. A
    /// client that closes its connection right after its last stream, with frames of ours
    /// unread (a WINDOW_UPDATE, a PING's ACK), is reset by its own kernel; h2 writes before it
    /// reads, so the end of that stream's upload, already in our socket, was lost. The reads
    /// end at the reset, as they would have.
    fn absorb_reset<T>(&mut self, r: Poll<std::io::Result<T>>, ok: T) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(Err(e))
                if matches!(self.body, Body::H2(_))
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                log::debug!("HTTP/2 client reset its connection; reading what it sent ({e})");
                self.reset = true;
                self.wbuf = Vec::new();
                Poll::Ready(Ok(ok))
            }
            r => r,
        }
    }
}
