//! Reading a request head before an engine is chosen for it, holding no buffer while the
//! connection idles.

use super::{Guarded, Outcome, HEAD_BUF};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A request head's first read, made now if the socket has something and not waited for:
/// `None` if it has nothing yet. The caller then waits for readiness holding no buffer (a
/// silent connection handed over by TCP_DEFER_ACCEPT after its hold keeps none while it
/// idles), and reads the head with [`read_head`]. A read that returns before the kernel has
/// anything registers the socket with the reactor, which that wait needs anyway.
pub fn read_now(g: &mut Guarded) -> Option<Result<Vec<u8>, Outcome>> {
    use std::future::Future;
    g.arm_now();
    let mut buf: Vec<u8> = Vec::with_capacity(HEAD_BUF);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = std::pin::pin!(g.read_buf(&mut buf)).poll(&mut cx);
    match polled {
        std::task::Poll::Pending => None,
        // the guard answered and logged
        std::task::Poll::Ready(Ok(0) | Err(_)) => Some(Err(Outcome::Close)),
        std::task::Poll::Ready(Ok(_)) => Some(Ok(buf)),
    }
}

/// Read a request head from `g`, before an engine is chosen for it: the caller loads the
/// engine in force only once the head is in, so a reload during an idle wait applies to the
/// request that ends it. `idle_wait`: how long to wait for its first byte (a TLS
/// connection's caller has not waited; a plaintext one's waited for readiness only, which
/// may have been for nothing). `first`: what [`read_now`] read, the head's first piece, or
/// empty. `Err`: the connection is done (closed, idle too long, or the guard refused the
/// head and answered).
pub async fn read_head(
    g: &mut Guarded,
    idle_wait: Option<Duration>,
    first: Vec<u8>,
) -> Result<Vec<u8>, Outcome> {
    if first.is_empty() {
        g.arm_now();
    } else if g.head_done() {
        return Ok(first);
    }
    let mut first_read = first.is_empty();
    let mut buf = if first_read {
        Vec::with_capacity(HEAD_BUF)
    } else {
        first
    };
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let r = match idle_wait {
            Some(wait) if first_read => {
                tokio::select! {
                    biased;
                    r = g.read_buf(&mut buf) => r,
                    _ = crate::lifecycle::idle::CoarseTimer::idle(wait) => return Err(Outcome::Close),
                }
            }
            _ => g.read_buf(&mut buf).await,
        };
        first_read = false;
        match r {
            Ok(0) | Err(_) => return Err(Outcome::Close), // the guard answered and logged
            Ok(_) => {}
        }
        if g.head_done() {
            return Ok(buf);
        }
    }
}
