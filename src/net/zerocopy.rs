//! Moving bytes between two plain TCP sockets with splice(2): the L4 relay ([`relay`]) and
//! an HTTP body of known length ([`transfer`]). The bytes go from one socket into a pipe
//! and from the pipe into the other without being copied into the process and out again.
//! On this kernel that costs the proxy 0.6x the relay through a buffer per byte moved
//! (`benches/relaycost`), as HAProxy's `option splice-auto` does; a receiver on the same
//! host pays more for its own copy (benches/RESULTS.md, 2026-12-04 19:40).
//!
//! A direction holds a pipe only while bytes are in it: the pipe comes from a per-thread
//! pool when the reader has something and goes back once it is empty, so an idle
//! connection holds none (each pipe is two descriptors and a kernel buffer). Pipes that are
//! not empty when their direction ends (an error) are closed, never pooled.
//!
//! Where no pipe can be made (the open-file limit reached), a transfer moves its bytes
//! through a buffer instead, as the copying relay does, and goes on: a busy process slows
//! down rather than closing connections.
//!
//! Its semantics are [`super::relay`]'s: half-close passed on, or the first side to end
//! ending both, and the byte counts of both directions.

use super::plain::PlainTcp;
use super::relay::{Ending, LastRead};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// The size a pipe is asked to have: the copying relay's largest buffer, so that a bulk
/// transfer moves as much per system call. Where the kernel refuses (a user past
/// `pipe-user-pages-soft`), a pipe keeps its default 64 KiB.
const PIPE_SIZE: usize = 256 << 10;
const PIPE_DEFAULT: usize = 64 << 10;
/// Empty pipes a thread keeps for its next transfers.
const POOL: usize = 64;
/// The buffer a transfer copies through when no pipe can be made.
const FALLBACK_BUF: usize = 64 << 10;

/// splice(2) `len` bytes from `from` to `to`, one of them a pipe, without blocking.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and no offsets; the kernel checks that one end is a pipe.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A pipe's two ends, and how much it holds.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns; it returns the size set.
        let set =
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        let cap = if set > 0 { set as usize } else { PIPE_DEFAULT };
        Ok(Pipe { r, w, cap })
    }
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Set while transfers copy for want of pipes: the warning is logged once per such spell.
static COPYING: AtomicBool = AtomicBool::new(false);

fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => {
            let p = Pipe::new()?;
            // pipes are made rarely (the pool keeps them): the shared flag costs nothing here
            if COPYING.load(Relaxed) && COPYING.swap(false, Relaxed) {
                log::info!("pipes for splice(2) can be made again");
            }
            Ok(p)
        }
    }
}

/// Back to the pool; only an empty pipe may come back.
fn give_pipe(p: Pipe) {
    PIPES.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL {
            pool.push(p);
        }
    });
}

/// One end of the relay: the client's socket (our accept loop's) or the backend's.
#[derive(Clone, Copy)]
pub enum End<'a> {
    Client(&'a PlainTcp),
    Backend(&'a TcpStream),
}

impl End<'_> {
    fn poll_out(&self, cx: &mut Context<'_>, pipe: RawFd, len: usize) -> Poll<io::Result<usize>> {
        match self {
            End::Client(s) => s.poll_splice_out(cx, pipe, len),
            End::Backend(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                match s.try_io(Interest::READABLE, || splice(s.as_raw_fd(), pipe, len)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
        }
    }

    fn poll_in(&self, cx: &mut Context<'_>, pipe: RawFd, len: usize) -> Poll<io::Result<usize>> {
        match self {
            End::Client(s) => s.poll_splice_in(cx, pipe, len),
            End::Backend(s) => loop {
                ready!(s.poll_write_ready(cx))?;
                match s.try_io(Interest::WRITABLE, || splice(pipe, s.as_raw_fd(), len)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
        }
    }

    /// `recv` into `buf`, for the copy a transfer falls back to.
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        match self {
            End::Client(s) => s.poll_recv(cx, buf),
            End::Backend(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                let r = s.try_io(Interest::READABLE, || super::plain::recv(*s, buf, 0));
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
        }
    }

    /// Write some of `data`, for the copy a transfer falls back to.
    fn poll_send(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            End::Client(s) => s.poll_send(cx, data),
            End::Backend(s) => loop {
                ready!(s.poll_write_ready(cx))?;
                match s.try_write(data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            End::Client(s) => s.shutdown_write(),
            End::Backend(s) => super::plain::shutdown_write(socket2::SockRef::from(*s)),
        }
    }
}

/// What holds a transfer's bytes between its reader and its writer: a pipe, or where none
/// can be made, a buffer (the copy the relay would otherwise make).
enum Carrier {
    Pipe(Pipe),
    Buf(Vec<u8>),
}

impl Carrier {
    /// A pipe from the pool; a buffer if no pipe can be made.
    fn take() -> Carrier {
        match take_pipe() {
            Ok(p) => Carrier::Pipe(p),
            Err(e) => {
                if !COPYING.swap(true, Relaxed) {
                    log::warn!(
                        "no pipe for splice(2) ({e}): copying through buffers until pipes can be made again"
                    );
                }
                Carrier::Buf(Vec::with_capacity(FALLBACK_BUF))
            }
        }
    }

    /// Take up to `len` bytes from `r` into an empty carrier.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        r: End<'_>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Carrier::Pipe(p) => r.poll_out(cx, p.w.as_raw_fd(), len.min(p.cap)),
            Carrier::Buf(b) => {
                b.clear();
                let room = len.min(b.capacity());
                let mut rb = ReadBuf::uninit(&mut b.spare_capacity_mut()[..room]);
                let n = ready!(r.poll_recv(cx, &mut rb))?;
                // SAFETY: recv initialised and filled the first `n` bytes of the spare room.
                unsafe { b.set_len(n) };
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Give some of the `held` bytes it holds to `w`; how many went.
    fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        w: End<'_>,
        held: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Carrier::Pipe(p) => w.poll_in(cx, p.r.as_raw_fd(), held),
            Carrier::Buf(b) => w.poll_send(cx, &b[b.len() - held..]),
        }
    }

    /// Done with an empty carrier: a pipe goes back to the pool, a buffer is freed.
    fn give_back(self) {
        if let Carrier::Pipe(p) = self {
            give_pipe(p);
        }
    }
}

/// One direction: what is in its carrier, if it holds one.
#[derive(Default)]
struct Dir {
    pipe: Option<Carrier>,
    in_pipe: usize,
    read_done: bool,
    done: bool,
    total: u64,
}

impl Dir {
    /// `closed_after`: the writer is a plain socket closed as soon as this direction ends,
    /// so its write half need not be shut first. `last`: marked at each read, for the
    /// caller's idle watchdog.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        r: End<'_>,
        w: End<'_>,
        closed_after: bool,
        last: &LastRead,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.in_pipe == 0 && !self.read_done {
                let mut pipe = match self.pipe.take() {
                    Some(p) => p,
                    None => Carrier::take(),
                };
                match pipe.poll_fill(cx, r, usize::MAX) {
                    Poll::Ready(Ok(0)) => {
                        pipe.give_back();
                        self.read_done = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pipe = Some(pipe);
                        self.in_pipe = n;
                        last.mark();
                    }
                    Poll::Ready(Err(e)) => {
                        pipe.give_back();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        // nothing went in: the pipe is empty, and waits in the pool
                        pipe.give_back();
                        return Poll::Pending;
                    }
                }
            }
            while self.in_pipe > 0 {
                let Some(pipe) = self.pipe.as_mut() else {
                    return Poll::Ready(Err(io::Error::other("bytes in a pipe that is gone")));
                };
                let n = ready!(pipe.poll_drain(cx, w, self.in_pipe))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.in_pipe -= n;
                self.total += n as u64;
                // progress for a busy-polling thread, as in the buffered relay
                crate::spin::active();
                if matches!(pipe, Carrier::Pipe(_)) {
                    crate::observability::SPLICED_BYTES.inc_by(n as u64);
                }
            }
            if let Some(p) = self.pipe.take() {
                p.give_back();
            }
            if self.read_done {
                if !closed_after {
                    w.shutdown_write()?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relay between the client `a` and the backend `b` until it ends as `ending` says; the
/// byte counts a→b and b→a.
pub struct ZeroCopy<'x> {
    a: End<'x>,
    b: End<'x>,
    ab: Dir,
    ba: Dir,
    ending: Ending,
    last: &'x LastRead,
}

/// `last`: marked at each read.
pub fn relay<'x>(
    a: &'x PlainTcp,
    b: &'x TcpStream,
    ending: Ending,
    last: &'x LastRead,
) -> ZeroCopy<'x> {
    ZeroCopy {
        a: End::Client(a),
        b: End::Backend(b),
        ab: Dir::default(),
        ba: Dir::default(),
        ending,
        last,
    }
}

impl Future for ZeroCopy<'_> {
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let seen = this.last;
        if !this.ab.done {
            let last = this.ending.ab_closed_after(this.ba.done);
            if let Poll::Ready(Err(e)) = this.ab.poll(cx, this.a, this.b, last, seen) {
                return Poll::Ready(Err(e));
            }
        }
        if !this.ba.done {
            let a_last = this.ending.ba_closed_after();
            if let Poll::Ready(Err(e)) = this.ba.poll(cx, this.b, this.a, a_last, seen) {
                return Poll::Ready(Err(e));
            }
        }
        if this.ending.over(this.ab.done, this.ba.done) {
            return Poll::Ready(Ok((this.ab.total, this.ba.total)));
        }
        Poll::Pending
    }
}

/// Why a [`transfer`] stopped short.
#[derive(Debug)]
pub enum Short {
    /// The sending side ended its sending (or failed) before all the bytes came.
    Ended,
    /// The sending side sent nothing for the read timeout.
    ReadTimeout,
    /// Writing to the receiving side failed, or timed out (`true`).
    Write(bool, io::Error),
}

/// What [`transfer`] did.
#[derive(Debug)]
pub struct Spliced {
    pub result: Result<(), Short>,
    /// Bytes taken from the sending side (all of them written, unless `result` says not).
    pub taken: u64,
    /// Whether the kernel was asked to acknowledge the client's bytes.
    pub acked: bool,
}

/// Move exactly `len` bytes from `from` to `to` with splice(2) (a body of known length:
/// what follows it is not its own), through a pipe held only while bytes are in it, or a
/// buffer where none can be made. Each wait for `from` is limited by `read_timeout`, each
/// for `to` by `write_timeout`. When `from` is the client, the first time it has nothing
/// yet the kernel is asked to acknowledge what came (the guard's quick-ACK on an
/// incomplete body).
pub async fn transfer(
    from: End<'_>,
    to: End<'_>,
    len: u64,
    (read_timeout, write_timeout): (std::time::Duration, std::time::Duration),
) -> Spliced {
    let mut s = Spliced {
        result: Ok(()),
        taken: 0,
        acked: false,
    };
    let timeouts = (read_timeout, write_timeout);
    s.result = move_exactly(from, to, len, timeouts, &mut s.taken, &mut s.acked).await;
    s
}

async fn move_exactly(
    from: End<'_>,
    to: End<'_>,
    mut left: u64,
    (read_timeout, write_timeout): (std::time::Duration, std::time::Duration),
    taken: &mut u64,
    acked: &mut bool,
) -> Result<(), Short> {
    use super::deadline::within;
    while left > 0 {
        let mut held: Option<Carrier> = None;
        let want = left.min(usize::MAX as u64) as usize;
        let read = std::future::poll_fn(|cx| {
            let mut pipe = Carrier::take();
            match pipe.poll_fill(cx, from, want) {
                Poll::Ready(Ok(n)) => {
                    held = Some(pipe);
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => {
                    pipe.give_back();
                    Poll::Ready(Err(e))
                }
                Poll::Pending => {
                    pipe.give_back();
                    if let (End::Client(c), false) = (from, *acked) {
                        *acked = true;
                        super::sockopt::ack_now(pingora_core::protocols::UniqueID::id(c));
                    }
                    Poll::Pending
                }
            }
        });
        let n = match within(read_timeout, read).await {
            Some(Ok(n)) if n > 0 => n,
            None => return Err(Short::ReadTimeout),
            Some(_) => return Err(Short::Ended),
        };
        *taken += n as u64;
        let Some(mut pipe) = held else {
            let e = io::Error::other("spliced bytes without their pipe");
            return Err(Short::Write(false, e));
        };
        let mut in_pipe = n;
        while in_pipe > 0 {
            let w = std::future::poll_fn(|cx| pipe.poll_drain(cx, to, in_pipe));
            // a pipe left holding bytes is dropped (closed), never pooled
            match within(write_timeout, w).await {
                Some(Ok(0)) => return Err(Short::Write(false, io::ErrorKind::WriteZero.into())),
                Some(Ok(m)) => in_pipe -= m,
                Some(Err(e)) => return Err(Short::Write(false, e)),
                None => return Err(Short::Write(true, io::ErrorKind::TimedOut.into())),
            }
        }
        if matches!(pipe, Carrier::Pipe(_)) {
            crate::observability::SPLICED_BYTES.inc_by(n as u64);
        }
        pipe.give_back();
        left -= n as u64;
    }
    Ok(())
}
