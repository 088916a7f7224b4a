//! Both directions of a TCP relay, with buffers that start small and grow.
//!
//! tokio's `copy_bidirectional_with_sizes` allocates and zeroes both buffers up front: with
//! 64 KiB each, 128 KiB of memset per connection, which for short connections (one request,
//! then close) was a visible part of their cost. Here a direction allocates 16 KiB (nginx's
//! `proxy_buffer_size`) when it first has something to read, uninitialised, and moves to
//! 256 KiB once a read fills it, so bulk transfers move large blocks per system call (with
//! 64 KiB, 1 MiB transfers ran at 0.85x nginx; with 256 KiB at 1.0x). A direction whose
//! reader has nothing more waits with no buffer where the reader can (our sockets: a read
//! with no room waits for readiness), so an idle connection keeps none, whatever it moved
//! before. A large buffer given back (at a pause, or when its direction ends) goes to a
//! few spares per thread, which the next bulk read takes. `max_connections` bounds the
//! total.
//! Half-close is passed on: when one side's reads end, the other side's write half is shut.
//! Except for the last direction to end when the caller closes that side right away
//! ([`Ending::closing_b`]): the close sends the same FIN, and the `shutdown` call is saved.
//! Or the first side to end ends both ([`Ending::at_first_close`], nginx's stream
//! default): once what it sent is delivered, the relay returns and the caller closes both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a tunnel last read a byte, on the coarse clock: its idle watchdog's only input. A
/// read marks it, so the precise clock (and an `Instant`'s arithmetic) was a cost per read.
pub struct LastRead(AtomicU64);

impl LastRead {
    /// Marked now: a tunnel starts as if it had just read.
    pub fn now() -> LastRead {
        LastRead(AtomicU64::new(crate::clock::coarse_ms()))
    }

    pub fn mark(&self) {
        self.0.store(crate::clock::coarse_ms(), Relaxed);
    }

    /// How long ago the last byte was read (to the coarse clock's step).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(crate::clock::coarse_ms().saturating_sub(self.0.load(Relaxed)))
    }
}

const FIRST: usize = 16 << 10;
const MAX: usize = 256 << 10;
/// Large buffers a thread keeps for its relays' next bulk reads: a direction that pauses
/// gives its large buffer back and takes one again when bytes come, which through the
/// allocator was a 256 KiB free and allocation (and its page faults) per pause.
const SPARE: usize = 8;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A large buffer: a spare of this thread's, else a new one.
fn take_large() -> Vec<u8> {
    SPARES
        .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(MAX))
}

/// Give `buf` back: a large one is kept as a spare while the thread has room for it.
fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() != MAX {
        return;
    }
    buf.clear();
    let _ = SPARES.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARE {
                s.push(buf);
            }
        }
    });
}

#[derive(Default)]
struct Half {
    buf: Vec<u8>,
    start: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
    grow: bool,
    /// The last read found less than it had room for: the reader's socket was emptied, so
    /// the next read likely waits. It waits first with no buffer (a read offered none),
    /// and the buffer is given back if that wait does not end at once.
    drained: bool,
    total: u64,
}

impl Half {
    /// `closed_after`: the writer is a plain socket closed as soon as this direction ends,
    /// so its write half need not be shut first.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        closed_after: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.buf.len() && !self.read_done && self.drained {
                // A read with no room is a wait for something to read on our sockets (and
                // tokio's); a reader that cannot wait so answers at once, and the read
                // below waits holding the buffer, as before.
                match r.as_mut().poll_read(cx, &mut ReadBuf::new(&mut [])) {
                    Poll::Ready(Ok(())) => self.drained = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // idle: an open connection keeps no buffer while nothing moves; a
                        // bulk transfer's pause gets its large buffer back at the next read
                        self.grow = self.buf.capacity() >= MAX;
                        give_back(std::mem::take(&mut self.buf));
                        self.start = 0;
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.start == self.buf.len() && !self.read_done {
                if self.grow {
                    self.buf = take_large();
                    self.grow = false;
                } else if self.buf.capacity() == 0 {
                    self.buf.reserve_exact(FIRST);
                }
                self.buf.clear();
                self.start = 0;
                let cap = self.buf.capacity();
                let mut rb = ReadBuf::uninit(self.buf.spare_capacity_mut());
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            // SAFETY: `poll_read` initialised the first `n` bytes of the
                            // spare capacity (ReadBuf tracks this).
                            unsafe { self.buf.set_len(n) };
                            self.grow = n == cap && cap < MAX;
                            self.drained = n < cap;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.buf.len() {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.start..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.total += n as u64;
                self.need_flush = true;
            }
            if !self.buf.is_empty() {
                // a tunnel's progress keeps a busy-polling thread polling, as a request does
                crate::spin::active();
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                if !closed_after {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                }
                self.done = true;
                give_back(std::mem::take(&mut self.buf));
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// How a relay ends; shared by [`Relay`] and [`super::zerocopy::ZeroCopy`]. The default:
/// both directions until both ended, each ended by shutting its writer's write half.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ending {
    b_closes: bool,
    a_closes: bool,
    first_ends: bool,
}

impl Ending {
    /// `b` is a plain TCP socket that the caller closes as soon as the relay ends. When the
    /// a→b direction is the last to end (the client closing after the backend did, as on
    /// every connection-per-request), the close delivers its FIN, so the relay does not
    /// shut `b`'s write half first. (A TLS writer is never `b`: its close_notify is written
    /// by the shutdown.)
    pub fn closing_b() -> Ending {
        Ending {
            b_closes: true,
            ..Ending::default()
        }
    }

    /// End when the first direction ends (its reader closed and what it sent is written),
    /// without waiting for the other: no half-close is passed on. `a_closes`: `a` is also a
    /// plain socket closed right after, so a FIN it is owed comes with that close and no
    /// `shutdown` is called on it. Implies [`Self::closing_b`].
    pub fn at_first_close(a_closes: bool) -> Ending {
        Ending {
            b_closes: true,
            a_closes,
            first_ends: true,
        }
    }

    /// Whether the a→b direction, once ended, leaves `b` to the caller's close rather than
    /// shutting its write half, given whether b→a has ended.
    pub fn ab_closed_after(self, ba_done: bool) -> bool {
        self.b_closes && (ba_done || self.first_ends)
    }

    /// The same for the b→a direction and `a`.
    pub fn ba_closed_after(self) -> bool {
        self.first_ends && self.a_closes
    }

    /// Whether the relay is over, given which directions have ended.
    pub fn over(self, ab_done: bool, ba_done: bool) -> bool {
        (ab_done && ba_done) || (self.first_ends && (ab_done || ba_done))
    }
}

/// Relay between `a` and `b` until it ends as [`Ending`] says; the byte counts a→b and b→a.
pub struct Relay<'x, A: ?Sized, B: ?Sized> {
    a: &'x mut A,
    b: &'x mut B,
    ab: Half,
    ba: Half,
    ending: Ending,
}

pub fn relay<'x, A, B>(a: &'x mut A, b: &'x mut B, ending: Ending) -> Relay<'x, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay {
        a,
        b,
        ab: Half::default(),
        ba: Half::default(),
        ending,
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.ab.done {
            let last = this.ending.ab_closed_after(this.ba.done);
            if let Poll::Ready(Err(e)) =
                this.ab
                    .poll(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b), last)
            {
                return Poll::Ready(Err(e));
            }
        }
        if !this.ba.done {
            let a_last = this.ending.ba_closed_after();
            if let Poll::Ready(Err(e)) =
                this.ba
                    .poll(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a), a_last)
            {
                return Poll::Ready(Err(e));
            }
        }
        if this.ending.over(this.ab.done, this.ba.done) {
            Poll::Ready(Ok((this.ab.total, this.ba.total)))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sockopt::loopback_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The client's side of a relay whose backend answers and closes: what it reads until
    /// the FIN, then its own close.
    async fn read_then_close<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) -> Vec<u8> {
        let mut got = Vec::new();
        assert!(client.read_to_end(&mut got).await.is_ok());
        assert!(client.shutdown().await.is_ok());
        got
    }

    /// The backend answers and closes, then the client closes: with `closing_b` the
    /// client's FIN reaches the backend by the caller's close, not by a shutdown first;
    /// without it, by the shutdown.
    #[tokio::test]
    async fn the_last_fin_to_a_closing_backend_is_left_to_its_close() {
        for closing in [true, false] {
            let (mut client, mut a) = loopback_pair(|_| true).await;
            let (mut b, mut backend) = loopback_pair(|_| true).await;
            assert!(backend.write_all(b"resp").await.is_ok());
            assert!(backend.shutdown().await.is_ok());
            let ending = if closing {
                Ending::closing_b()
            } else {
                Ending::default()
            };
            let r = relay(&mut a, &mut b, ending);
            let (moved, got) = tokio::join!(r, read_then_close(&mut client));
            assert_eq!(got, b"resp");
            assert_eq!(moved.ok(), Some((0, 4)));
            let mut one = [0u8; 1];
            if closing {
                assert!(
                    matches!(backend.try_read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                    "no FIN before the close"
                );
                drop(b);
            }
            let eof =
                tokio::time::timeout(std::time::Duration::from_secs(5), backend.read(&mut one));
            assert!(
                matches!(eof.await, Ok(Ok(0))),
                "the backend sees the client's FIN"
            );
        }
    }

    /// Each chunk relayed counts as progress for a busy-polling thread ([`crate::spin`]),
    /// as a completed request does: a thread that only relays tunnels keeps polling too.
    #[tokio::test]
    async fn a_relayed_chunk_is_progress_for_the_busy_poll() {
        let (mut client, mut a) = loopback_pair(|_| true).await;
        let (mut b, mut backend) = loopback_pair(|_| true).await;
        assert!(backend.write_all(b"resp").await.is_ok());
        assert!(backend.shutdown().await.is_ok());
        let before = crate::spin::progress();
        let r = relay(&mut a, &mut b, Ending::closing_b());
        let (moved, got) = tokio::join!(r, read_then_close(&mut client));
        assert_eq!((moved.ok(), got.as_slice()), (Some((0, 4)), &b"resp"[..]));
        assert_eq!(crate::spin::progress() - before, 1, "one chunk, one step");
    }

    /// Ending at the first close: the backend's FIN ends the relay while the client is still
    /// open, what the backend sent is delivered first, and with `a_closes` the client's FIN
    /// is left to the caller's close (no shutdown before it).
    #[tokio::test]
    async fn the_first_close_ends_both_directions_after_delivering() {
        for a_closes in [true, false] {
            let (mut client, mut a) = loopback_pair(|_| true).await;
            let (mut b, mut backend) = loopback_pair(|_| true).await;
            assert!(backend.write_all(b"resp").await.is_ok());
            assert!(backend.shutdown().await.is_ok());
            let moved = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                relay(&mut a, &mut b, Ending::at_first_close(a_closes)),
            )
            .await;
            assert_eq!(moved.ok().and_then(|r| r.ok()), Some((0, 4)));
            let mut got = [0u8; 4];
            assert!(client.read_exact(&mut got).await.is_ok());
            assert_eq!(&got, b"resp");
            let mut one = [0u8; 1];
            if a_closes {
                assert!(
                    matches!(client.try_read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                    "no FIN to the client before the close"
                );
            }
            drop((a, b));
            for (side, s) in [("client", &mut client), ("backend", &mut backend)] {
                let eof = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut one));
                assert!(matches!(eof.await, Ok(Ok(0))), "the {side} sees the close");
            }
        }
    }
}
