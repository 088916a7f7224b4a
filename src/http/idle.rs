//! The wait of an idle HTTP/1 connection for its next request: a few words of the
//! connection's future, since an idle connection spends its life here (issue 17).

use super::guard::Guarded;
use crate::lifecycle::idle::CoarseTimer;
use crate::net::tls_io::{self, TlsIdle, TlsStream};
use std::task::Poll;
use std::time::Duration;

/// Outcome of waiting on an idle connection.
pub(super) enum Idle {
    Ready,
    Closed,
}

/// Wait for the next request on an idle connection, holding no buffer: a plaintext socket
/// accepted by [`crate::net::listen`], bare or under TLS with nothing held by OpenSSL
/// ([`tls_io::idle`]), is waited on for readiness, and the request is then read once, by
/// whichever engine serves it, into its own buffer (other streams hold a small one, see
/// [`read_first`]).
///
/// The wait is a few words of the connection's future: the socket's own readiness slot
/// (no waiter of its own) and the connection's [`CoarseTimer`], armed for `wait` (the first
/// request's `header_timeout`, later `keepalive_timeout`) and the process's closing of idle
/// connections (not shutdown itself: a request may be on its way, see
/// [`crate::lifecycle::Draining`]).
pub(super) fn wait_for_request<'a>(
    g: &'a mut Guarded,
    timer: &'a mut CoarseTimer,
    wait: Duration,
) -> IdleWait<'a> {
    if g.has_pending() {
        return IdleWait::Ready;
    }
    if g.inner().as_any().is::<crate::net::listen::PlainTcp>() {
        let Some(tcp) = g.inner().as_any().downcast_ref() else {
            return IdleWait::Ready;
        };
        timer.arm(wait, false);
        return IdleWait::Plain(tcp, timer);
    }
    // A TLS stream over our socket waits on the socket too, when OpenSSL holds nothing.
    match tls_idle(g) {
        Some(TlsIdle::Held) => return IdleWait::Ready,
        Some(TlsIdle::Socket(_)) => {
            // asked again for the borrow this wait keeps (both only read the stream's state)
            let Some(TlsIdle::Socket(tcp)) = tls_idle(g) else {
                return IdleWait::Ready;
            };
            timer.arm(wait, false);
            return IdleWait::Plain(tcp, timer);
        }
        Some(TlsIdle::Read) | None => {}
    }
    // Boxed: only these connections pay for the first read's buffer while idle.
    IdleWait::Read(Box::pin(read_first(g, wait)))
}

fn tls_idle(g: &Guarded) -> Option<TlsIdle<'_>> {
    let s = g.inner().as_any().downcast_ref::<TlsStream>()?;
    Some(tls_io::idle(s))
}

/// [`wait_for_request`]'s future, written out: an `async fn` would keep its arguments too.
pub(super) enum IdleWait<'a> {
    Ready,
    Plain(&'a crate::net::listen::PlainTcp, &'a mut CoarseTimer),
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

/// [`wait_for_request`] on a stream with no readiness of its own (Pingora's L4 stream, on
/// listeners that read a PROXY header, bare or under TLS; a TLS stream that owes its peer
/// the end of a handshake): what arrives is read here, a small first piece, and handed to
/// the guard to be read again. Such an idle connection so holds 128 bytes, not a request
/// head's buffer (4 KiB) for as long as it idles.
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
        _ = CoarseTimer::idle(wait) => Idle::Closed,
    }
}
