//! The wait of an idle HTTP/1 connection for its next request: a few words of the
//! connection's future, since an idle connection spends its life here (issue 17).

use super::guard::Guarded;
use crate::lifecycle::idle::IdleTimer;
use std::task::Poll;
use std::time::Duration;

/// Outcome of waiting on an idle connection.
pub(super) enum Idle {
    Ready,
    Closed,
}

/// Wait for the next request on an idle connection, holding no buffer: a plaintext socket
/// accepted by [`crate::net::listen`] is waited on for readiness, and the request is then
/// read once, by whichever engine serves it, into its own buffer (a TLS stream holds a
/// small one, see [`read_first`]).
///
/// The wait is a few words of the connection's future: the socket's own readiness slot
/// (no waiter of its own) and an [`IdleTimer`] for `wait` (the first request's
/// `header_timeout`, later `keepalive_timeout`) and the process's closing of idle connections (not shutdown itself: a request may be on its way, see
/// [`crate::lifecycle::Draining`]).
pub(super) fn wait_for_request(g: &mut Guarded, wait: Duration) -> IdleWait<'_> {
    if g.has_pending() {
        return IdleWait::Ready;
    }
    if g.inner().as_any().is::<crate::net::listen::PlainTcp>() {
        let Some(tcp) = g.inner().as_any().downcast_ref() else {
            return IdleWait::Ready;
        };
        return IdleWait::Plain(tcp, IdleTimer::new(wait));
    }
    // Boxed: only these connections pay for the first read's buffer while idle.
    IdleWait::Read(Box::pin(read_first(g, wait)))
}

/// [`wait_for_request`]'s future, written out: an `async fn` would keep its arguments too.
pub(super) enum IdleWait<'a> {
    Ready,
    Plain(&'a crate::net::listen::PlainTcp, IdleTimer),
    Read(std::pin::Pin<Box<dyn std::future::Future<Output = Idle> + Send + 'a>>),
}

impl std::future::Future for IdleWait<'_> {
    type Output = Idle;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Idle> {
        match &mut *self {
            IdleWait::Ready => Poll::Ready(Idle::Ready),
            IdleWait::Plain(tcp, timer) => match tcp.poll_readable(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Idle::Ready),
                Poll::Ready(Err(_)) => Poll::Ready(Idle::Closed),
                Poll::Pending => timer.poll_expired(cx).map(|()| Idle::Closed),
            },
            IdleWait::Read(f) => f.as_mut().poll(cx),
        }
    }
}

/// [`wait_for_request`] on a stream with no readiness of its own (a TLS stream, whose next
/// bytes OpenSSL may hold already; Pingora's L4 stream, on listeners that read a PROXY
/// header): what arrives is read here, a small first piece, and handed to the guard to be
/// read again. An idle TLS connection so holds 128 bytes, not a request head's buffer
/// (4 KiB) for as long as it idles.
async fn read_first(g: &mut Guarded, wait: Duration) -> Idle {
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; 128];
    tokio::select! {
        biased;
        r = g.inner_mut().read(&mut first) => match r {
            Ok(0) | Err(_) => Idle::Closed,
            Ok(n) => {
                g.unread(&first[..n]);
                Idle::Ready
            }
        },
        _ = IdleTimer::new(wait) => Idle::Closed,
    }
}
