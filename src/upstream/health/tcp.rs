//! The TCP check of a plain (not TLS) backend: a connect, then a reset.

use async_trait::async_trait;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;

/// A TCP check without TLS: a connect, then a reset.
///
/// Pingora's `TcpHealthCheck` builds a `TransportConnector`, whose TLS context loads the
/// system's CA bundle, even for plain TCP: about 10 ms of CPU per upstream at start (1,000
/// upstreams took seconds before their first check), and each check went through the
/// connector's socket setup and a 64 KiB stream buffer. A socket connected and dropped is all
/// a TCP check needs.
///
/// The socket is closed with a reset (`SO_LINGER` 0), as HAProxy closes its TCP checks. A
/// plain close would leave it in TIME_WAIT on the proxy for a minute: at 1,000 checks a
/// second that is 60,000 sockets, more than the 28,000 ephemeral ports a source address has
/// for one backend (where `tcp_tw_reuse` does not apply, off loopback), so the checks
/// themselves would starve the proxy's connections to that backend of ports.
pub(super) struct PlainTcpCheck {
    pub(super) timeout: std::time::Duration,
    pub(super) thresholds: super::Thresholds,
}

#[async_trait]
impl HealthCheck for PlainTcpCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        use pingora_core::protocols::l4::socket::SocketAddr as Addr;
        use pingora_core::{Error, ErrorType};
        let connect = async {
            match &target.addr {
                Addr::Inet(a) => probe(*a).await,
                Addr::Unix(a) => match a.as_pathname() {
                    Some(p) => tokio::net::UnixStream::connect(p).await.map(drop),
                    None => Err(std::io::ErrorKind::InvalidInput.into()),
                },
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::because(ErrorType::ConnectError, "connect", e)),
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "connect timed out"),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.thresholds.pick(success)
    }
}

/// Connect to `a`, then reset the connection.
///
/// To a backend on the same host (loopback, a sidecar) the handshake completes within the
/// `connect` call, the kernel running the backend's side of it inline; the socket is then
/// checked at once and never registered with the event loop, which spares two `epoll_ctl`
/// calls and a wake-up per check. Otherwise it waits for the handshake as any connection.
async fn probe(a: std::net::SocketAddr) -> std::io::Result<()> {
    let (s, done) = start(a)?;
    if done {
        spare::give_back(s, socket2::Domain::for_address(a));
    } else {
        finish(s).await?;
    }
    Ok(())
}

/// Sockets of TCP checks that are over, reset and kept for the next checks' connects.
///
/// A connect to `AF_UNSPEC` ends a TCP connection as `SO_LINGER` 0 and a close do (with a
/// reset), and leaves the socket unconnected, its port released, ready to connect again. Kept
/// for the next check, it spares a `socket`, a `setsockopt` and a `close` per check, and the
/// kernel's making and freeing of a socket, a file and an inode: 5 system calls per check
/// instead of 7, and 5-12% less CPU at 1,000 checks a second (alternating pairs). Only sockets whose handshake ended within `connect`
/// come back; one that waited went through the event loop and is closed. A few are enough
/// for the checks that start at one instant, so the list stays short.
mod spare {
    use socket2::{Domain, Socket, Type};
    use std::sync::Mutex;

    /// The most sockets kept, per address family.
    const MAX: usize = 64;

    static V4: Mutex<Vec<Socket>> = Mutex::new(Vec::new());
    static V6: Mutex<Vec<Socket>> = Mutex::new(Vec::new());

    fn list(d: Domain) -> &'static Mutex<Vec<Socket>> {
        if d == Domain::IPV6 {
            &V6
        } else {
            &V4
        }
    }

    /// A kept socket of family `d`, or a new one: nonblocking, reset when closed.
    pub(super) fn take(d: Domain) -> std::io::Result<Socket> {
        let kept = list(d).lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(s) = kept {
            return Ok(s);
        }
        let s = Socket::new(d, Type::STREAM.nonblocking().cloexec(), None)?;
        s.set_linger(Some(std::time::Duration::ZERO))?;
        Ok(s)
    }

    /// Reset `s`'s connection and keep the socket (of family `d`), or close it when that
    /// fails or enough are kept.
    pub(super) fn give_back(s: Socket, d: Domain) {
        // The reset leaves ECONNRESET pending on the socket; the next check would read it as
        // its own.
        if !disconnect(&s) || s.take_error().is_err() {
            return;
        }
        let mut l = list(d).lock().unwrap_or_else(|e| e.into_inner());
        if l.len() < MAX {
            l.push(s);
        }
    }

    pub(super) fn disconnect(s: &Socket) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed sockaddr is a valid one of family AF_UNSPEC (0), passed with its
        // size to connect on an fd that `s` holds open.
        let r = unsafe {
            let mut unspec: libc::sockaddr = std::mem::zeroed();
            unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(
                s.as_raw_fd(),
                &unspec,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        r == 0
    }
}

/// A nonblocking socket that is reset when closed (`SO_LINGER` 0), its connect to `a` begun;
/// `true` with it when the handshake is already over.
fn start(a: std::net::SocketAddr) -> std::io::Result<(socket2::Socket, bool)> {
    let (s, done) = begin(a, true)?;
    if done {
        return Ok((s, true));
    }
    // Connected means the handshake is over and succeeded; a refusal shows as not connected,
    // and [`finish`] reads its error.
    let done = s.peer_addr().is_ok();
    Ok((s, done))
}

/// [`start`] without looking whether the handshake is over: for a caller that writes next,
/// and so learns it from the write. `delay_ack`: for a check that sends nothing (below).
pub(super) fn begin(
    a: std::net::SocketAddr,
    delay_ack: bool,
) -> std::io::Result<(socket2::Socket, bool)> {
    use socket2::{Domain, Socket, Type};
    let s = if delay_ack {
        spare::take(Domain::for_address(a))?
    } else {
        let s = Socket::new(
            Domain::for_address(a),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        s.set_linger(Some(std::time::Duration::ZERO))?;
        s
    };
    // Delayed ACKs from the start, as HAProxy's checks that send nothing have them: the
    // handshake's last ACK then waits, and the reset makes it moot. A backend's kernel
    // completes the connection, and wakes the backend to accept it, only when that ACK
    // arrives, so a TCP check no longer makes its backend accept and close a connection, and
    // its `connect` no longer pays for that wake-up. A check that sends a request keeps quick
    // ACKs: with delayed ones, a backend that writes its answer in two pieces with Nagle's
    // algorithm on would hold the second until our delayed-ACK timer (40 ms or more). A
    // socket without the option only costs the ACK, so a failure to set it is not an error.
    // A kept socket needs it again: its last connection's end cleared it.
    if delay_ack {
        s.set_tcp_quickack(false).ok();
    }
    match s.connect(&a.into()) {
        Ok(()) => Ok((s, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((s, false)),
        Err(e) => Err(e),
    }
}

/// Wait for the handshake that [`start`] began.
async fn finish(s: socket2::Socket) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::from_std(std::net::TcpStream::from(s))?;
    s.writable().await?;
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A handshake that is not over when `connect` returns (here the backend's accept queue
    /// is full, so its SYN is dropped and resent a second later) is waited for; a refused
    /// one fails.
    #[tokio::test]
    async fn probe_waits_for_a_slow_handshake_and_fails_on_a_refusal() {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = sock.local_addr().expect("local addr");
        // a backlog of 0 holds one connection not yet accepted
        let l = sock.listen(0).expect("listen");
        let _queued = tokio::net::TcpStream::connect(addr).await.expect("first");
        let waiting = tokio::spawn(probe(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the probe ended while its SYN was dropped"
        );
        // room in the queue: the resent SYN completes the handshake
        let _first = l.accept().await.expect("accept");
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the probe never ended")
            .expect("join");
        assert!(r.is_ok(), "probe failed: {r:?}");

        let (_closed, closed_addr) = refusing();
        let r = probe(closed_addr).await;
        assert!(r.is_err(), "a probe of a closed port succeeded");
    }

    /// A port bound but not listening, which refuses connections, and the socket that keeps
    /// it: a port freed by dropping a listener could be handed to another test's listener
    /// before the probe.
    fn refusing() -> (socket2::Socket, std::net::SocketAddr) {
        let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        closed.bind(&any.into()).expect("bind");
        let addr = closed
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        (closed, addr)
    }

    /// Below Linux's shortest delayed-ACK wait (TCP_ATO_MIN, 40 ms), with a margin: a
    /// connect-to-reset this quick leaves the handshake's last ACK unsent.
    const ACK_DELAY_MIN: Duration = Duration::from_millis(30);

    /// Half-open connections toward `port` on 127.0.0.1 (SYN_RECV), from /proc/net/tcp.
    fn half_open(port: u16) -> usize {
        let t = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let local = format!("0100007F:{port:04X}");
        t.lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"03")
            })
            .count()
    }

    /// A socket given back is reset and connects again: the backend is left no half-open
    /// connection (the reset reached it) and nothing to accept.
    #[tokio::test]
    async fn a_kept_socket_resets_its_connection_and_connects_again() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local addr");
        // what the backend could accept now (loopback delivers a packet before the call
        // that sent it returns)
        let queued = || l.accept().ok();
        let s = spare::take(socket2::Domain::IPV4).expect("socket");
        // A round is conclusive only when the reset beat the delayed ACK, which waits at
        // least 40 ms (TCP_ATO_MIN): a loaded machine that stalls this thread between the
        // connect and the reset lets the ACK out first, and the backend then has a connection
        // to accept (already reset). Such a round is run again, its leftover drained.
        let mut conclusive = 0;
        for round in 0..20 {
            if conclusive == 2 {
                break;
            }
            let began = std::time::Instant::now();
            s.set_tcp_quickack(false).expect("TCP_QUICKACK");
            let r = s.connect(&addr.into());
            assert!(
                r.is_ok()
                    || r.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EINPROGRESS),
                "round {round}: {r:?}"
            );
            assert!(s.peer_addr().is_ok(), "round {round}: not connected");
            // half-open at the backend: its handshake's last ACK is held back
            let held = queued().is_none();
            assert!(
                spare::disconnect(&s),
                "round {round}: the disconnect failed"
            );
            let quick = began.elapsed() < ACK_DELAY_MIN;
            let left = queued();
            assert_eq!(half_open(addr.port()), 0, "round {round}: left half-open");
            if quick {
                assert!(held, "round {round}: the handshake completed at once");
                assert!(
                    left.is_none(),
                    "round {round}: a connection to accept: {left:?}"
                );
                conclusive += 1;
            }
        }
        assert_eq!(conclusive, 2, "every round was slower than the delayed ACK");
        std::thread::sleep(Duration::from_millis(200));
        let late = queued();
        assert!(late.is_none(), "a connection to accept: {late:?}");
        // kept sockets carry no verdict over: a refusal after a success fails, and a success
        // after the refusal passes
        spare::give_back(s, socket2::Domain::IPV4);
        let (_closed, closed_addr) = refusing();
        for _ in 0..3 {
            let ok = probe(addr).await;
            assert!(ok.is_ok(), "a probe of a listener failed: {ok:?}");
            let refused = probe(closed_addr).await;
            assert!(refused.is_err(), "a probe of a closed port succeeded");
        }
    }

    /// The handshake's last ACK waits for a write that never comes, and the reset ends the
    /// connection before the backend's kernel completed it: nothing is queued for the backend
    /// to accept. With the ACK sent at once, each probe left an accepted-then-reset connection.
    #[tokio::test]
    async fn a_probe_leaves_the_backend_nothing_to_accept() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("local addr");
        // as above: a probe stalled past the delayed ACK proves nothing, and is made again
        let mut conclusive = 0;
        for _ in 0..30 {
            if conclusive == 3 {
                break;
            }
            let began = std::time::Instant::now();
            let r = probe(addr).await;
            assert!(r.is_ok(), "probe failed: {r:?}");
            if began.elapsed() < ACK_DELAY_MIN {
                conclusive += 1;
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
            }
        }
        assert_eq!(conclusive, 3, "every probe was slower than the delayed ACK");
        let queued = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(
            queued.is_err(),
            "the backend had a connection to accept: {queued:?}"
        );
        // the listener still completes a connection that sends its ACK
        let _c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(5), l.accept()).await;
        assert!(matches!(accepted, Ok(Ok(_))), "no accept: {accepted:?}");
    }
}
