//! A plaintext client connection as Pingora's `IO`, registered with the reactor only when it
//! first has to wait.
//!
//! Pingora's L4 stream keeps 375 bytes of buffers and bookkeeping per connection, and a
//! tokio `TcpStream` registers its socket with epoll when it is made and removes it when it
//! is dropped: two `epoll_ctl` calls per connection. A request on a new connection usually
//! needs neither. By the time its task first reads, the request is already in the socket,
//! and the response fits in the socket's send buffer. So [`PlainTcp`] reads and writes the
//! socket directly, and registers it (`AsyncFd`, with the reactor of the thread that runs
//! the connection) only when a read or write would block, or when an idle connection waits
//! for its next request. A one-request connection that never waits costs no `epoll_ctl`
//! at all (HAProxy does the same: it polls an fd only after a read finds nothing). A read
//! that follows a short one registers at once: the short read emptied the receive queue,
//! so a `recv` or peek then would only find nothing (one system call of about 20 per L4
//! connection, and the peek before a new keep-alive connection's idle wait).

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::ReadBuf;

/// The socket's descriptor as the reactor sees it; the socket itself is [`PlainTcp::sock`].
#[derive(Debug)]
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A plaintext connection, accepted nonblocking and not yet registered with any reactor.
/// The socket digest, which Pingora's path reads for the client address, is made on first
/// use.
#[derive(Debug)]
pub struct PlainTcp {
    /// The registration, made on the first wait. Declared before `sock` so it is dropped
    /// (removed from epoll) before the socket closes.
    reg: OnceLock<AsyncFd<Fd>>,
    /// The last read, made before any registration, took less than it asked for: the
    /// receive queue was empty then, so the next read registers and waits rather than
    /// trying a `recv` (or peek) bound to find nothing.
    drained: AtomicBool,
    /// Accepted from a listener with TCP_DEFER_ACCEPT: the kernel handed it over because
    /// its client had sent something (or, rarely, after holding a silent one a second).
    deferred: bool,
    sock: std::net::TcpStream,
    /// From accept(): no getpeername per connection.
    peer: SocketAddr,
    digest: OnceLock<Arc<SocketDigest>>,
}

impl PlainTcp {
    /// `sock` must be in nonblocking mode.
    pub fn new(sock: std::net::TcpStream, peer: SocketAddr) -> PlainTcp {
        PlainTcp {
            reg: OnceLock::new(),
            drained: AtomicBool::new(false),
            deferred: false,
            sock,
            peer,
            digest: OnceLock::new(),
        }
    }

    /// Mark a connection accepted from a listener with TCP_DEFER_ACCEPT.
    pub fn deferred(mut self, on: bool) -> PlainTcp {
        self.deferred = on;
        self
    }

    /// Whether its first bytes are very likely in the socket already: deferred, and never
    /// read from or waited on.
    pub fn likely_has_data(&self) -> bool {
        self.deferred && self.reg.get().is_none() && !self.drained.load(Relaxed)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the digest was made (it then also holds the peer).
    pub fn has_digest(&self) -> bool {
        self.digest.get().is_some()
    }

    /// Register with the reactor now, while the caller waits on something else (an L4
    /// connection's backend connect), unless the first bytes are likely here already. A
    /// client that has not sent yet then costs no `recv` that finds nothing: its first
    /// read waits for the reactor's word, which comes in the same turn as the connect's.
    pub fn register_unless_likely_data(&self) -> std::io::Result<()> {
        if !self.likely_has_data() {
            self.reg()?;
        }
        Ok(())
    }

    /// The registration with the current thread's reactor, made now if need be.
    fn reg(&self) -> std::io::Result<&AsyncFd<Fd>> {
        if let Some(r) = self.reg.get() {
            return Ok(r);
        }
        // SAFETY: `sock`, which owns the descriptor, is dropped after `reg` (field order)
        // and never replaced, so the descriptor stays open and the same for as long as the
        // registration lives.
        let r = unsafe { AsyncFd::register(Fd(self.sock.as_raw_fd())) }?;
        // one task owns the connection: nothing else can have set it meanwhile
        let _ = self.reg.set(r);
        self.reg
            .get()
            .ok_or_else(|| std::io::Error::other("socket registration lost"))
    }

    /// Ready when the socket has something to read (or is closed), reading nothing: an idle
    /// keep-alive connection waits here without a buffer, on the socket's own reader slot
    /// (the waiting future keeps no waiter of its own).
    ///
    /// A connection that never waited is first asked with a one-byte peek: a new
    /// connection's first request is usually there already, and a peek costs less than
    /// registering and, at close, deregistering. (The fast path reads a deferred
    /// connection's first request without asking: see [`PlainTcp::likely_has_data`].)
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reg.get().is_none() && !self.drained.load(Relaxed) {
            let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            match super::sys::recv(self.sock.as_raw_fd(), &mut one, libc::MSG_PEEK) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // data, or EOF, or an error: the read that follows finds out which
                r => return Poll::Ready(r.map(|_| ())),
            }
        }
        let reg = self.reg()?;
        // readiness stays set: the read that follows clears it if it finds nothing
        let _ready = ready!(reg.poll_read_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Whether a read now is bound to find nothing: the socket is registered and the
    /// reactor has not said it is readable since a read last found it empty. Then the
    /// task's waker is kept for its readiness, as that read would have. `false` where that
    /// is not known (never registered: only a read finds out).
    pub fn read_would_wait(&self, cx: &mut Context<'_>) -> bool {
        match self.reg.get() {
            Some(reg) => reg.poll_read_ready(cx).is_pending(),
            None => false,
        }
    }

    /// `op` on the socket now; if it would block, again each time the reactor says the
    /// socket is ready for `write` (or reading). `want`: the bytes asked for. A stream
    /// socket that moves fewer (but some) has drained its receive queue or filled its send
    /// buffer, so the readiness is cleared then too, as tokio's own streams do: the next
    /// call waits for the reactor instead of trying a call bound to fail (for a keep-alive
    /// connection, a read per request).
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        want: usize,
        mut op: impl FnMut(&std::net::TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        if self.reg.get().is_none() && (write || !self.drained.load(Relaxed)) {
            match op(&self.sock) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(n) if !write && 0 < n && n < want => {
                    self.drained.store(true, Relaxed);
                    return Poll::Ready(Ok(n));
                }
                r => return Poll::Ready(r),
            }
        }
        let reg = self.reg()?;
        loop {
            let mut guard = if write {
                ready!(reg.poll_write_ready(cx))?
            } else {
                ready!(reg.poll_read_ready(cx))?
            };
            match guard.try_io(|_| op(&self.sock)) {
                Ok(Ok(n)) if 0 < n && n < want => {
                    guard.clear_ready();
                    return Poll::Ready(Ok(n));
                }
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
}

impl PlainTcp {
    /// splice(2) up to `len` bytes of what the socket has received into the pipe `to`,
    /// waiting for the socket to be readable. The pipe must be empty: then the call would
    /// block only for want of data. `Ok(0)`: the client ended its sending. No partial
    /// move clears the readiness (a pipe holds a few segments, not the whole queue).
    pub fn poll_splice_out(
        &self,
        cx: &mut Context<'_>,
        to: RawFd,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, false, 0, |s| {
            super::zerocopy::splice(s.as_raw_fd(), to, len)
        })
    }

    /// splice(2) up to `len` bytes from the pipe `from` into the socket, waiting for room
    /// in its send buffer. The pipe holds at least `len` bytes.
    pub fn poll_splice_in(
        &self,
        cx: &mut Context<'_>,
        from: RawFd,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, true, len, |s| {
            super::zerocopy::splice(from, s.as_raw_fd(), len)
        })
    }

    /// `recv` into `buf`'s unfilled part, waiting for the socket to be readable.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let want = buf.remaining();
        self.poll_io(cx, false, want, |s| recv(s, buf, 0))
    }

    /// Write some of `data`, waiting for room in the send buffer.
    pub fn poll_send(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, true, data.len(), |s| {
            super::sys::send(s.as_raw_fd(), data, 0)
        })
    }

    /// Write some of `bufs` as the connection's last bytes, waiting for room in the send
    /// buffer. Sent with `MSG_MORE`, the tail that does not fill a segment waits in the send
    /// queue, and the [`Self::shutdown_write`] that must follow sends it with the FIN, in
    /// one segment: the client takes one segment fewer and acknowledges the answer and the
    /// FIN at once (as an answer written whole and then closed on its own does not).
    pub fn poll_send_last(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, true, want, |s| match bufs {
            [one] => super::sys::send(s.as_raw_fd(), one, libc::MSG_MORE),
            _ => super::sys::send_vectored(s.as_raw_fd(), bufs, libc::MSG_MORE),
        })
    }

    /// End the sending side (a FIN), as [`tokio::io::AsyncWriteExt::shutdown`] does.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        shutdown_write(socket2::SockRef::from(&self.sock))
    }
}

/// Make a socket's close send a reset (SO_LINGER 0) rather than a FIN: for a relay cut off
/// by an error, so that its peer learns that what it got was cut off, not finished.
pub fn reset_on_close(sock: socket2::SockRef<'_>) {
    if let Err(e) = sock.set_linger(Some(std::time::Duration::ZERO)) {
        log::debug!("SO_LINGER 0 failed: {e}");
    }
}

/// Shut a socket's sending side (a FIN); a peer already gone is not an error.
pub fn shutdown_write(sock: socket2::SockRef<'_>) -> std::io::Result<()> {
    match sock.shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() != std::io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// `recv` into the unfilled part of `buf`, which need not be initialised.
pub(super) fn recv(
    s: &impl AsRawFd,
    buf: &mut ReadBuf<'_>,
    flags: libc::c_int,
) -> std::io::Result<usize> {
    // SAFETY: recv writes at most the unfilled part's length, never de-initialises, and the
    // bytes it reports written are then marked initialised and filled.
    let n = super::sys::recv(s.as_raw_fd(), unsafe { buf.unfilled_mut() }, flags)?;
    // SAFETY: the kernel wrote the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

impl tokio::io::AsyncRead for PlainTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() == 0 {
            // No room: a wait until a read would find something, as tokio's streams do for
            // an empty read (the relay idles so, holding no buffer).
            return self.poll_readable(cx);
        }
        self.poll_recv(cx, buf).map_ok(|_| ())
    }
}

impl tokio::io::AsyncWrite for PlainTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_send(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, true, want, |s| {
            super::sys::send_vectored(s.as_raw_fd(), bufs, 0)
        })
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[async_trait]
impl pingora_core::protocols::Shutdown for PlainTcp {
    async fn shutdown(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

impl pingora_core::protocols::UniqueID for PlainTcp {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.sock.as_raw_fd()
    }
}

impl pingora_core::protocols::Ssl for PlainTcp {}

impl AsRawFd for PlainTcp {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Peeking lets an `h2c: true` listener tell the HTTP/2 preface from an HTTP/1 request
/// without consuming either.
#[async_trait]
impl pingora_core::protocols::Peek for PlainTcp {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        loop {
            let n = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(buf);
                // a peek drains nothing: never a short read
                self.poll_io(cx, false, 0, |s| recv(s, &mut rb, libc::MSG_PEEK))
            })
            .await?;
            if n == 0 || n >= buf.len() {
                return Ok(n > 0);
            }
            // A short peek: wait for the rest only while what came could still be it.
            if buf[..n] != super::H2_PREFACE[..n.min(24)] {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl pingora_core::protocols::GetTimingDigest for PlainTcp {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        Vec::new()
    }
}

impl pingora_core::protocols::GetProxyDigest for PlainTcp {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PlainTcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(
            self.digest
                .get_or_init(|| {
                    let d = SocketDigest::from_raw_fd(self.sock.as_raw_fd());
                    let _ = d.peer_addr.set(Some(PSocketAddr::Inet(self.peer)));
                    Arc::new(d)
                })
                .clone(),
        )
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.digest = OnceLock::from(Arc::new(d));
    }
}

/// `accept4` on a nonblocking listener: the connection nonblocking and close-on-exec in one
/// call, not registered with any reactor, and its peer address.
pub fn accept(l: &impl AsRawFd) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::FromRawFd;
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let fd = super::sys::accept4(
        l.as_raw_fd(),
        &mut ss,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
    )?;
    // SAFETY: a new descriptor that nothing else owns.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    match peer(&ss) {
        Some(p) => Ok((s, p)),
        None => Err(std::io::Error::other(format!(
            "accepted a connection of address family {}",
            ss.ss_family
        ))),
    }
}

fn peer(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(
        bind: &str,
    ) -> (
        tokio::net::TcpStream,
        PlainTcp,
        AsyncFd<std::net::TcpListener>,
    ) {
        let Ok(l) = std::net::TcpListener::bind(bind) else {
            panic!("cannot listen on {bind}");
        };
        assert!(l.set_nonblocking(true).is_ok());
        let Ok(addr) = l.local_addr() else {
            panic!("listener address");
        };
        // SAFETY: the AsyncFd owns the listener.
        let Ok(l) = (unsafe { AsyncFd::register(l) }) else {
            panic!("listener registration");
        };
        let Ok(c) = tokio::net::TcpStream::connect(addr).await else {
            panic!("connect to {addr}");
        };
        let (s, p) = loop {
            let Ok(mut g) = l.readable().await else {
                panic!("listener readiness");
            };
            if let Ok(r) = g.try_io(|l| accept(l.get_ref())) {
                break r.unwrap_or_else(|e| panic!("accept: {e}"));
            }
        };
        assert_eq!(
            Some(p),
            c.local_addr().ok(),
            "the peer is the client's address"
        );
        (c, PlainTcp::new(s, p), l)
    }

    /// Data already there is seen, read and answered without registering the socket; a
    /// read that has to wait registers it and is woken by the data.
    #[tokio::test]
    async fn registers_only_when_it_has_to_wait() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (mut c, mut s, _l) = pair(bind).await;
            assert!(c.write_all(b"ping").await.is_ok());
            // until the bytes are in the socket (loopback may take a moment under load)
            let mut tries = 0;
            while s.sock.peek(&mut [0u8; 4]).map_or(true, |n| n < 4) {
                tries += 1;
                assert!(tries < 5000, "the client's bytes never arrived");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let ready = std::future::poll_fn(|cx| Poll::Ready(s.poll_readable(cx)));
            assert!(
                matches!(ready.await, Poll::Ready(Ok(()))),
                "readable at once"
            );
            let mut got = [0u8; 16];
            let n = s.read(&mut got).await.unwrap_or(0);
            assert_eq!(&got[..n], b"ping");
            assert!(s.write_all(b"pong").await.is_ok());
            assert!(s.reg.get().is_none(), "nothing waited: no registration");
            let mut back = [0u8; 4];
            assert!(c.read_exact(&mut back).await.is_ok());
            assert_eq!(&back, b"pong");

            // nothing to read: the read waits, registered, until the client writes
            let mut got = [0u8; 16];
            let waits = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut got);
                Poll::Ready(
                    tokio::io::AsyncRead::poll_read(Pin::new(&mut s), cx, &mut rb).is_pending(),
                )
            });
            assert!(waits.await, "nothing to read yet");
            assert!(
                s.reg.get().is_some(),
                "a read that waits registers the socket"
            );
            assert!(c.write_all(b"later").await.is_ok());
            let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut got)).await {
                Ok(Ok(n)) => n,
                r => panic!("the waiting read was not woken: {r:?}"),
            };
            assert_eq!(&got[..n], b"later");
            // that read was short, so it drained the socket: waiting again must not wake
            // at once on stale readiness (a read bound to fail)
            let stale = std::future::poll_fn(|cx| Poll::Ready(s.poll_readable(cx).is_ready()));
            assert!(!stale.await, "readiness left set after a short read");
        }
    }

    /// A socket that never waited is closed on drop (the client sees EOF), as is one that did.
    #[tokio::test]
    async fn drop_closes_registered_or_not() {
        let (mut c, s, _l) = pair("127.0.0.1:0").await;
        assert!(s.reg.get().is_none());
        drop(s);
        let mut b = [0u8; 1];
        assert!(matches!(c.read(&mut b).await, Ok(0)));

        let (mut c, s, _l) = pair("127.0.0.1:0").await;
        let ready = std::future::poll_fn(|cx| Poll::Ready(s.poll_readable(cx).is_pending()));
        assert!(ready.await, "nothing to read yet");
        assert!(s.reg.get().is_some());
        drop(s);
        assert!(matches!(c.read(&mut b).await, Ok(0)));
    }
}
