//! Lingering close, after nginx's `lingering_close`. When the proxy refuses a request while
//! the client is still sending it (a 413 before the body, a 431 or 400 on a large head), a
//! plain close with unread bytes in the socket makes the kernel answer with a reset, and a
//! reset can destroy the answer before the client has read it. Instead the write side is shut
//! (the answer, then FIN), what the client still sends is read and dropped for a bounded time,
//! and only then is the socket closed.

use async_trait::async_trait;
use pingora_core::protocols::{Shutdown, Stream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest a refused connection is drained.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Longest wait for the client's next bytes while draining.
pub const LINGER_IDLE: Duration = Duration::from_secs(1);

/// Drain `s` in the background and close it. Without a runtime (a drop outside one) the
/// socket is simply closed. The task holds no buffer of its own (see [`super::discard`]).
pub fn linger(mut s: Stream) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        s.shutdown().await;
        let _ = super::discard::discard(&mut s, LINGER_IDLE, LINGER_TIME).await;
    });
}

/// A stream with nothing behind it, left in place of one that was handed to [`linger`].
#[derive(Debug)]
pub struct Closed;

impl AsyncRead for Closed {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Closed {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Closed {
    async fn shutdown(&mut self) {}
}

crate::socketless_io!(Closed);
