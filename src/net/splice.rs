//! One relay for every tunnel the process relays itself: L4 connections, the lean engine's
//! upgraded (WebSocket) HTTP/1 connections and CONNECT tunnels. Both directions run until
//! both are done ([`super::relay`]), or the first, as [`Ends`] says, with an idle watchdog;
//! once the process starts draining, a tunnel that has gone quiet for a second is closed
//! rather than waited for.

use super::plain::PlainTcp;
use super::relay::{self, LastRead};
use crate::lifecycle::idle::{self, CoarseTimer};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// While draining, a tunnel idle this long is closed.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// How a tunnel ends.
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    /// When one side ends its sending, pass that on and keep the other direction until it
    /// ends too; `false`: the first side to close ends both.
    pub half_close: bool,
    /// The client side is a plain socket, closed as soon as the splice returns.
    pub client_closes: bool,
}

impl Ends {
    /// Half-close passed on: CONNECT tunnels, and L4 by default.
    pub const HALF_CLOSE: Ends = Ends {
        half_close: true,
        client_closes: false,
    };

    /// The relay's [`relay::Ending`]: the caller closes the backend right after either way.
    fn ending(self) -> relay::Ending {
        if self.half_close {
            relay::Ending::closing_b()
        } else {
            relay::Ending::at_first_close(self.client_closes)
        }
    }
}

pub enum Splice {
    Done(u64, u64),
    Idle,
    Drained,
    Failed(std::io::Error),
}

/// The client side of a tunnel: any stream, relayed through buffers, or a socket of our
/// accept loop with nothing buffered ahead of it, relayed with splice(2)
/// ([`super::zerocopy`]): its bytes do not pass through the process.
pub enum Client<'a, C: ?Sized> {
    /// `reset`: the socket under the stream (its descriptor, Pingora's `UniqueID`), to be
    /// reset if the relay fails; `None` where the stream has its own error to give (an
    /// HTTP/2 stream's reset).
    Stream(&'a mut C, Option<RawFd>),
    Socket(&'a PlainTcp),
}

impl<'a, C: pingora_core::protocols::UniqueID + ?Sized> Client<'a, C> {
    /// A stream over a socket of ours, which a failed relay resets.
    pub fn over_socket(s: &'a mut C) -> Client<'a, C> {
        let fd = s.id();
        // a stream with no socket under it gives a placeholder id (0 or below)
        Client::Stream(s, (fd > 2).then_some(fd))
    }
}

/// Both directions until both are done (or the first, as `ends` says), with the idle
/// watchdog. Also the tunnel of an upgraded (WebSocket) HTTP/1 connection. The caller
/// closes `backend` when this returns: if the client's side ends last, that close is what
/// passes its FIN on; if the relay failed, the close is a reset.
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    client: Client<'_, C>,
    backend: &mut TcpStream,
    idle_timeout: Duration,
    ends: Ends,
) -> Splice {
    let last = LastRead::now();
    let (out, client_socket) = match client {
        Client::Stream(client, reset) => {
            let mut a = Tracked {
                inner: client,
                last: &last,
                wait: None,
            };
            // an empty read waits on tokio's readiness alone, without its recv(0)
            let mut b = Tracked {
                inner: &mut *backend,
                last: &last,
                wait: Some(|s: &&mut TcpStream, cx| s.poll_read_ready(cx)),
            };
            let copy = relay::relay(&mut a, &mut b, ends.ending());
            (watch(copy, &last, idle_timeout).await, reset)
        }
        Client::Socket(client) => {
            let copy = super::zerocopy::relay(client, backend, ends.ending(), &last);
            (
                watch(copy, &last, idle_timeout).await,
                Some(pingora_core::protocols::UniqueID::id(client)),
            )
        }
    };
    if let Splice::Failed(_) = out {
        // One side failed (a reset, or a CONNECT stream reset over HTTP/2): the other learns
        // it by a reset too, as RFC 9113 §8.5 asks of an HTTP/2 CONNECT proxy, rather than by
        // a FIN that would make a cut-off stream look finished. (An HTTP/2 client's stream
        // gets its own error instead: the caller resets it with CONNECT_ERROR.)
        super::plain::reset_on_close(socket2::SockRef::from(&*backend));
        if let Some(fd) = client_socket {
            // SAFETY: the descriptor is the client's socket, which the caller holds open
            // (borrowed by `client`) until after this returns.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            super::plain::reset_on_close(socket2::SockRef::from(&fd));
        }
    }
    out
}

/// Run `copy` under the idle watchdog: `last` is when it last read a byte.
///
/// The watchdog's timer is a [`CoarseTimer`], not tokio's: each short connection (one
/// request, then close) made and dropped one, and an idle timeout is seconds or more. Its
/// tunnel kind also ends when the process starts draining ([`idle::drain_tunnels`]), which
/// is how a tunnel learns of the drain: no wait on the shutdown watch per tunnel (a clone
/// and a registration with its notifier, about 400 instructions per L4 connection).
async fn watch(
    copy: impl std::future::Future<Output = std::io::Result<(u64, u64)>>,
    last: &LastRead,
    idle_timeout: Duration,
) -> Splice {
    tokio::pin!(copy);
    loop {
        let draining = idle::tunnels_draining();
        let limit = if draining {
            idle_timeout.min(DRAIN_IDLE)
        } else {
            idle_timeout
        };
        let idle = last.idle();
        if idle >= limit {
            return if draining {
                Splice::Drained
            } else {
                Splice::Idle
            };
        }
        // once draining, a limit: a tunnel's timer would be ready at once
        let timer = if draining {
            CoarseTimer::limit(limit - idle)
        } else {
            CoarseTimer::tunnel(limit - idle)
        };
        tokio::select! {
            // the copy first: it is what wakes the task nearly every time
            biased;
            r = &mut copy => return match r {
                Ok((up, down)) => Splice::Done(up, down),
                Err(e) => Splice::Failed(e),
            },
            _ = timer => {}
        }
    }
}

/// A wait for something to read, without reading.
type WaitFn<S> = fn(&S, &mut Context<'_>) -> Poll<std::io::Result<()>>;

/// Records the time of the last byte read, for the idle watchdog. `wait`: what a read with
/// no room does instead of the stream's own read (the relay's idle wait).
struct Tracked<'a, S> {
    inner: S,
    last: &'a LastRead,
    wait: Option<WaitFn<S>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let (0, Some(wait)) = (buf.remaining(), self.wait) {
            return wait(&self.inner, cx);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.mark();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
