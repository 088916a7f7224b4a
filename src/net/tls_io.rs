//! The TCP stream under OpenSSL on our TLS listeners: small reads are served from one
//! larger read, writes made between two flushes leave in one send.
//!
//! OpenSSL reads a record's 5-byte header, then its body, and during the handshake it does
//! so even with read-ahead on (read-ahead applies from the first application-data record,
//! which OpenSSL then reads with room for a whole record, 16,713 bytes). A read asking for
//! less than a record is served from a buffer filled by one read, so a ClientHello or a
//! client's second flight is one system call instead of four to six; a larger read goes
//! straight through.
//!
//! OpenSSL writes each TLS record to its transport as soon as it is made and flushes at the
//! end of a flight: a TLS 1.3 server's first flight is six records (ServerHello,
//! ChangeCipherSpec, EncryptedExtensions, Certificate, CertificateVerify, Finished), and the
//! general engine writes a response's head and body as two. Pingora's listener put a
//! 1460-byte buffer under OpenSSL for the connection's life; without one, a handshake took
//! about six more system calls (30.0 per handshake-per-request connection against 23.5).
//! Here the buffer holds up to one full record and exists only while bytes wait in it, so an
//! idle connection keeps none.
//!
//! Until the handshake is done, a flush only marks what is gathered as owed: it leaves when a
//! read finds nothing to read (the peer may be waiting for it), at the next flush after the
//! handshake, or at shutdown. Every flight a peer must see before it answers is followed by
//! a read that waits, so nothing it needs is held. What a TLS 1.3 server writes last, its two
//! session tickets (each flushed on its own), leave in one send: with the first response
//! when the request is in by then, else before the read that waits for it (a client may be
//! waiting for their ACK, see [`Gathered::handshake_done`]). What is owed when the stream is
//! dropped (an alert before a failed handshake closes the socket) is sent without waiting.

use async_trait::async_trait;
use pingora_core::protocols::{Peek, Shutdown, Ssl, IO};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are sent: a full TLS record (16 KiB of plaintext, its header
/// and AEAD overhead) fits, a larger write goes out as it is.
const GATHER_MAX: usize = 16 * 1024 + 256;

/// A read asking for less than this is served from one read of this size.
const READ_AHEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct Gathered {
    /// The socket: our [`super::listen::PlainTcp`], or Pingora's L4 stream where a pre-TLS
    /// step (a PROXY header) needs it.
    inner: pingora_core::protocols::Stream,
    fd: RawFd,
    /// Written by OpenSSL, not yet sent; empty (no allocation) between flushes.
    out: Vec<u8>,
    /// How much of `out` is sent already.
    sent: usize,
    /// Read and not yet taken; no allocation once taken.
    ahead: super::held::Held,
    /// Flushes only mark `out` as owed (see the module's comment).
    handshaking: bool,
    /// A flush found `out` while handshaking: it is sent before a read waits.
    owed: bool,
}

impl Gathered {
    pub fn new<S: IO + AsRawFd + 'static>(inner: S) -> Self {
        Gathered {
            fd: inner.as_raw_fd(),
            inner: Box::new(inner),
            out: Vec::new(),
            sent: 0,
            ahead: Default::default(),
            handshaking: true,
            owed: false,
        }
    }

    /// The handshake is done: flushes send again. What its last flushes left gathered goes
    /// with the next flush, at shutdown, or before a read waits: the peer may be waiting for
    /// it. A TLS 1.2 client waits for the server's Finished. A TLS 1.3 client waits for
    /// nothing of the server's last writes (its session tickets) but may wait for their
    /// ACK: the listener acknowledges late (delayed ACKs, [`crate::net::sockopt`]), and a
    /// client with Nagle's algorithm on holds its request until its Finished is
    /// acknowledged, 40 ms later without them. When the request is already in, they still go
    /// with the response.
    pub fn handshake_done(&mut self) {
        self.handshaking = false;
    }

    /// Wait for the peer's first bytes and read them ahead (a ClientHello's first records):
    /// how many, 0 at end of stream.
    pub async fn read_ahead(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Make `ahead` hold bytes, by one read of up to [`READ_AHEAD`] when it holds none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if !self.ahead.is_empty() {
            return Poll::Ready(Ok(self.ahead.rest().len()));
        }
        let mut ahead: Vec<u8> = Vec::with_capacity(READ_AHEAD);
        let mut rb = ReadBuf::uninit(ahead.spare_capacity_mut());
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: the read initialised the first `n` bytes of the spare capacity.
        unsafe { ahead.set_len(n) };
        self.ahead.set(ahead);
        Poll::Ready(Ok(n))
    }

    /// Send what is gathered, then give the buffer back.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out = Vec::new();
        self.sent = 0;
        self.owed = false;
        Poll::Ready(Ok(()))
    }
}

/// The TLS stream of our TLS listeners.
pub type TlsStream = pingora_core::protocols::tls::SslStream<Gathered>;

/// How an idle TLS connection waits for its next request ([`idle`]).
pub enum TlsIdle<'a> {
    /// Bytes are held already (by OpenSSL, or read ahead): the next read finds them.
    Held,
    /// Nothing held, nothing owed to the peer: wait on the socket's readiness, as on a
    /// plaintext connection's, without a read through OpenSSL that can only find nothing.
    Socket(&'a super::listen::PlainTcp),
    /// Wait by reading: Pingora's L4 stream is under it (no readiness of its own), or a
    /// flight the peer may be waiting for goes with the read.
    Read,
}

/// How `s`, idle between requests, waits for the next. A read through OpenSSL that finds
/// nothing costs about as much as one that decrypts a request (the record layer's calls,
/// an error queue cleared before and read after, Pingora's wrappers): on a keep-alive
/// connection that was one of the two reads of every request.
pub fn idle(s: &TlsStream) -> TlsIdle<'_> {
    let g = s.get_ref();
    if !g.ahead.is_empty() || has_pending(s.ssl()) {
        return TlsIdle::Held;
    }
    match g.inner.as_any().downcast_ref() {
        Some(tcp) if !g.owed => TlsIdle::Socket(tcp),
        _ => TlsIdle::Read,
    }
}

/// Whether a read of `s` through OpenSSL is bound to find nothing: OpenSSL holds nothing,
/// nothing is read ahead or owed to the peer, and our socket below has not been readable
/// since a read last emptied it; the task's waker is then kept for the socket, as that read
/// would have. Such a read costs OpenSSL's record layer, its error queue cleared before
/// and asked after (Pingora's stream, `SSL_get_error`), about 900 instructions: an HTTP/2
/// connection's codec reads until a read finds nothing each time any of its streams wakes
/// it, 1.5 times per request (callgrind, 10 streams on a connection).
pub fn read_would_wait(s: &pingora_core::protocols::Stream, cx: &mut Context<'_>) -> bool {
    match s.as_any().downcast_ref::<TlsStream>().map(idle) {
        Some(TlsIdle::Socket(tcp)) => tcp.read_would_wait(cx),
        _ => false,
    }
}

/// Whether OpenSSL holds bytes of the connection, decrypted or not yet (read ahead).
fn has_pending(ssl: &pingora_core::tls::ssl::SslRef) -> bool {
    use foreign_types::ForeignTypeRef;
    extern "C" {
        // Not wrapped by openssl-sys; in libssl since 1.1.0.
        fn SSL_has_pending(s: *const openssl_sys::SSL) -> libc::c_int;
    }
    // SAFETY: `ssl` is a live SSL object for as long as the borrow; the call only reads
    // its record layer's state.
    unsafe { SSL_has_pending(ssl.as_ptr()) == 1 }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        if !self.owed || self.sent >= self.out.len() {
            return;
        }
        let rest = &self.out[self.sent..];
        // SAFETY: a send from a live buffer on the stream's own open descriptor (`inner`
        // is dropped after this); it does not wait, and what does not fit is dropped with
        // the connection.
        unsafe {
            libc::send(
                self.fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

impl AsyncRead for Gathered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.ahead.is_empty() {
            let direct = buf.remaining() >= READ_AHEAD;
            let read = match direct {
                true => Pin::new(&mut this.inner).poll_read(cx, buf),
                false => this.poll_fill(cx).map_ok(|_| ()),
            };
            if read.is_pending() {
                if this.owed {
                    // the peer may be waiting for what is owed before it sends more
                    ready!(this.poll_send_out(cx))?;
                }
                return Poll::Pending;
            }
            if direct || matches!(read, Poll::Ready(Err(_))) {
                return read;
            }
        }
        this.ahead.take_into(buf);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Gathered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if !this.out.is_empty() && this.out.len() + buf.len() > GATHER_MAX {
            ready!(this.poll_send_out(cx))?;
        }
        if this.out.is_empty() && buf.len() >= GATHER_MAX {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.out.is_empty() {
            this.out.reserve_exact(GATHER_MAX.min(buf.len().max(4096)));
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.handshaking {
            self.owed |= !self.out.is_empty();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Gathered {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            log::debug!("shutting down a TLS connection's socket: {e}");
        }
    }
}

impl Ssl for Gathered {}

#[async_trait]
impl Peek for Gathered {}

crate::passthrough_digests!(Gathered, inner);

#[cfg(test)]
pub(crate) mod fixture {
    //! A real TLS connection on loopback for unit tests: the server's side as our TLS
    //! listener makes it (OpenSSL over [`Gathered`] over our socket), the client's with
    //! tokio-openssl.
    use super::*;

    /// A server's TLS stream over our socket, as the listener makes it, and its client.
    pub(crate) async fn tls_pair() -> (
        pingora_core::protocols::Stream,
        tokio_openssl::SslStream<tokio::net::TcpStream>,
    ) {
        use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
        let (key, cert) = self_signed();
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        a.set_private_key(&key).unwrap();
        a.set_certificate(&cert).unwrap();
        let a = a.build();
        let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
        c.set_verify(SslVerifyMode::NONE);
        let c = c
            .build()
            .configure()
            .unwrap()
            .into_ssl("localhost")
            .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, from) = l.accept().await.unwrap();
        let plain = crate::net::listen::PlainTcp::new(server.into_std().unwrap(), from);
        let g = Gathered::new(plain);
        let ssl = openssl::ssl::Ssl::new(a.context()).unwrap();
        let mut s = pingora_core::protocols::tls::SslStream::new(ssl, g).unwrap();
        let mut client = tokio_openssl::SslStream::new(c, peer).unwrap();
        let (accepted, connected) = tokio::join!(s.accept(), Pin::new(&mut client).connect());
        accepted.unwrap();
        connected.unwrap();
        s.get_mut().handshake_done();
        (Box::new(s), client)
    }

    fn self_signed() -> (
        openssl::pkey::PKey<openssl::pkey::Private>,
        openssl::x509::X509,
    ) {
        use openssl::{asn1::Asn1Time, bn::BigNum, ec, hash::MessageDigest, nid::Nid};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = openssl::pkey::PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (key, b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A Gathered over our plaintext socket (`plain`) or Pingora's L4 stream, and its peer.
    async fn pair(plain: bool) -> (Gathered, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = l.accept().await.unwrap();
        let g = match plain {
            true => Gathered::new(crate::net::listen::PlainTcp::new(
                server.into_std().unwrap(),
                peer,
            )),
            false => Gathered::new(L4Stream::from(server)),
        };
        (g, client)
    }

    #[tokio::test]
    async fn writes_leave_together_at_the_flush_and_the_buffer_goes_with_them() {
        for plain in [false, true] {
            let (mut g, mut peer) = pair(plain).await;
            g.handshake_done();
            for record in [&b"hello"[..], b" tls", b" world"] {
                g.write_all(record).await.unwrap();
            }
            let mut got = [0u8; 64];
            let early = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut got)).await;
            assert!(early.is_err(), "bytes left before the flush: {early:?}");
            g.flush().await.unwrap();
            assert_eq!(g.out.capacity(), 0, "the buffer outlived the flush");
            let mut want = b"hello tls world".to_vec();
            let mut seen = Vec::new();
            while seen.len() < want.len() {
                let n = peer.read(&mut got).await.unwrap();
                seen.extend_from_slice(&got[..n]);
            }
            assert_eq!(seen, want);
            // a write as large as a record goes out at once, unbuffered
            want = vec![7u8; GATHER_MAX];
            g.write_all(&want).await.unwrap();
            assert_eq!(g.out.capacity(), 0);
            let mut seen = vec![0u8; GATHER_MAX];
            peer.read_exact(&mut seen).await.unwrap();
            assert_eq!(seen, want);
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_read() {
        for plain in [false, true] {
            let (mut g, mut peer) = pair(plain).await;
            let sent: Vec<u8> = (0..100u8).collect();
            peer.write_all(&sent).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut header = [0u8; 5];
            g.read_exact(&mut header).await.unwrap();
            assert_eq!(header[..], sent[..5]);
            // the rest came with that one read: nothing is left in the socket
            let mut queued: libc::c_int = -1;
            // SAFETY: FIONREAD writes one int; the descriptor is the test's own open socket.
            let r = unsafe { libc::ioctl(g.fd, libc::FIONREAD, &mut queued) };
            assert_eq!(
                (r, queued),
                (0, 0),
                "bytes left in the socket after a 5-byte read"
            );
            let mut rest = vec![0u8; 95];
            g.read_exact(&mut rest).await.unwrap();
            assert_eq!(rest[..], sent[5..]);
            assert_eq!(g.ahead.capacity(), 0, "the read buffer outlived its bytes");
        }
    }

    async fn write_flushed(g: &mut Gathered, b: &[u8]) {
        g.write_all(b).await.unwrap();
        g.flush().await.unwrap();
    }

    /// Whether bytes arrive at `peer` within 100 ms; what arrived.
    async fn arrives(peer: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        let mut got = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut got)).await;
        r.ok().map(|n| got[..n.unwrap()].to_vec())
    }

    #[tokio::test]
    async fn handshake_flushes_leave_when_a_read_waits_or_at_the_next_flush_after() {
        for plain in [false, true] {
            let (mut g, mut peer) = pair(plain).await;
            // a flight flushed during the handshake waits ...
            write_flushed(&mut g, b"flight").await;
            assert_eq!(
                arrives(&mut peer).await,
                None,
                "a handshake flush sent at once"
            );
            // ... until a read finds nothing to read: then it leaves, and the read waits
            let mut b = [0u8; 5];
            let read = tokio::time::timeout(Duration::from_millis(50), g.read(&mut b)).await;
            assert!(read.is_err(), "the read did not wait: {read:?}");
            assert_eq!(arrives(&mut peer).await.as_deref(), Some(&b"flight"[..]));
            // the last flushes of a handshake (session tickets) go with the first flush after it
            peer.write_all(b"hello").await.unwrap();
            g.read_exact(&mut b).await.unwrap();
            write_flushed(&mut g, b"ticket1").await;
            write_flushed(&mut g, b"ticket2").await;
            g.handshake_done();
            assert_eq!(arrives(&mut peer).await, None, "tickets left on their own");
            // when the request is in already, with the response (the pause lets the reactor
            // see the socket readable, so that the read does not wait)
            peer.write_all(b"req").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut r = [0u8; 3];
            g.read_exact(&mut r).await.unwrap();
            write_flushed(&mut g, b"response").await;
            assert_eq!(
                arrives(&mut peer).await.as_deref(),
                Some(&b"ticket1ticket2response"[..]),
                "not one send"
            );
            assert_eq!(g.out.capacity(), 0, "the buffer outlived the flush");
            // after the handshake a flush sends at once
            write_flushed(&mut g, b"more").await;
            assert_eq!(arrives(&mut peer).await.as_deref(), Some(&b"more"[..]));
        }
    }

    #[tokio::test]
    async fn a_last_flight_the_peer_waits_for_leaves_when_a_read_waits() {
        for plain in [false, true] {
            let (mut g, mut peer) = pair(plain).await;
            write_flushed(&mut g, b"finished").await;
            g.handshake_done();
            assert_eq!(arrives(&mut peer).await, None);
            let mut b = [0u8; 5];
            let read = tokio::time::timeout(Duration::from_millis(50), g.read(&mut b)).await;
            assert!(read.is_err(), "the read did not wait: {read:?}");
            assert_eq!(arrives(&mut peer).await.as_deref(), Some(&b"finished"[..]));
        }
    }

    #[tokio::test]
    async fn what_is_owed_is_sent_when_the_stream_is_dropped() {
        for plain in [false, true] {
            let (mut g, mut peer) = pair(plain).await;
            write_flushed(&mut g, b"alert").await;
            drop(g);
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"alert");
        }
    }

    struct Woken(std::sync::atomic::AtomicBool);
    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Bytes the client sends, each slice its own record, until they are in the socket.
    async fn send_records(
        client: &mut tokio_openssl::SslStream<tokio::net::TcpStream>,
        records: &[&[u8]],
    ) {
        for r in records {
            client.write_all(r).await.unwrap();
            client.flush().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_tls_read_bound_to_find_nothing_is_not_made_and_the_socket_wakes_the_task() {
        let (mut s, mut client) = super::fixture::tls_pair().await;
        let woken = std::sync::Arc::new(Woken(false.into()));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 64];
        // a read that finds nothing (it also sends what the handshake left owed)
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
        assert!(
            read_would_wait(&s, &mut cx),
            "an empty socket was to be read"
        );

        send_records(&mut client, &[b"hello"]).await;
        assert!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            "the waker was not kept"
        );
        assert!(
            !read_would_wait(&s, &mut cx),
            "a readable socket was not to be read"
        );
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(
            read_would_wait(&s, &mut cx),
            "a drained socket was to be read again"
        );

        // two records in the socket, one byte taken: OpenSSL holds the rest, the socket has
        // nothing more, and the next read must still be made
        send_records(&mut client, &[b"ab", b"cd"]).await;
        let mut one = [0u8; 1];
        assert_eq!(s.read(&mut one).await.unwrap(), 1);
        assert_eq!(&one, b"a");
        assert!(
            !read_would_wait(&s, &mut cx),
            "bytes held by OpenSSL were left unread"
        );
        let mut got = Vec::new();
        while got.len() < 3 {
            assert!(
                !read_would_wait(&s, &mut cx),
                "held bytes left after {got:?}"
            );
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"bcd");
        assert!(read_would_wait(&s, &mut cx));
    }

    use std::time::Duration;
}
