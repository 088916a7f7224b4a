//! Lingering close, after nginx's `lingering_close`. When the proxy refuses a request while
//! the client is still sending it (a 413 before the body, a 431 or 400 on a large head), a
//! plain close with unread bytes in the socket makes the kernel answer with a reset, and a
//! reset can destroy the answer before the client has read it. Instead the write side is shut
//! (the answer, then FIN), what the client still sends is read and dropped for a bounded time,
//! and only then is the socket closed.

use async_trait::async_trait;
use pingora_core::protocols::{Shutdown, Stream};
use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest a refused connection is drained.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Longest wait for the client's next bytes while draining.
pub const LINGER_IDLE: Duration = Duration::from_secs(1);
/// Reads per wake-up of a draining connection, so that a client sending fast shares the
/// thread with the others.
const READS_PER_POLL: usize = 16;

thread_local! {
    /// Where draining connections read what they drop. A read fills it and is done with it
    /// within one poll, so one per thread serves them all: a lingering connection's task
    /// holds no buffer of its own (it held 4 KiB, in a 4.6 KiB task that tokio also copies
    /// whole into place when the task is made and ends).
    static SINK: RefCell<[u8; 4096]> = const { RefCell::new([0; 4096]) };
}

/// Drain `s` in the background and close it. Without a runtime (a drop outside one) the
/// socket is simply closed.
pub fn linger(mut s: Stream) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        s.shutdown().await;
        let idle = tokio::time::sleep(LINGER_IDLE);
        tokio::pin!(idle);
        let drained = std::future::poll_fn(|cx| drain(&mut s, idle.as_mut(), cx));
        let _ = tokio::time::timeout(LINGER_TIME, drained).await;
    });
}

/// Read and drop what has arrived; ready when the client has closed (or the read failed),
/// or after [`LINGER_IDLE`] without a byte.
fn drain(s: &mut Stream, mut idle: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    let done = SINK.with(|sink| {
        // a poll never runs inside another on one thread, so the buffer is free
        let Ok(mut sink) = sink.try_borrow_mut() else {
            return Some(true);
        };
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut sink[..]);
            match Pin::new(&mut *s).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    idle.as_mut().reset(Instant::now() + LINGER_IDLE);
                }
                // closed by the client, or failed: nothing left to wait for
                Poll::Ready(_) => return Some(true),
                Poll::Pending => return Some(false),
            }
        }
        None
    });
    match done {
        Some(true) => Poll::Ready(()),
        Some(false) => std::future::Future::poll(idle, cx),
        None => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
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
