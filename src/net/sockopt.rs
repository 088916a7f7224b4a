//! TCP options set once on a listening socket, which Linux copies to every connection
//! accepted from it, and the per-connection calls the HTTP guard needs.
//!
//! Delayed ACKs on HTTP listeners: a new connection starts in Linux's quick-ACK mode, so the
//! kernel acknowledges the first request as soon as the proxy reads it, and the response
//! follows in a second segment a few microseconds later. With `TCP_QUICKACK` off on the
//! listener (as HAProxy does on its HTTP frontends), the acknowledgement rides on the
//! response: one segment fewer per connection (10 against 11 for a one-request connection,
//! counted on lo). The cost would fall on a client with Nagle's algorithm on that sends a
//! request in two writes: its second write waits for the ACK of the first, up to the
//! delayed-ACK timer (40 ms or more). [`ack_now`] is for that case: the guard calls it when
//! a read finds the request incomplete, once per request. The same stall can hit any
//! keep-alive connection once Linux has switched it to delayed ACKs on its own, so this
//! helps connections on every listener, not only those accepted with delayed ACKs.

use std::os::fd::{AsRawFd, RawFd};

fn set_tcp(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    // SAFETY: plain setsockopt on an fd the caller holds open, with a pointer to a c_int
    // and its size; an fd that is not a TCP socket only makes the call fail.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Set TCP_NODELAY on the listening socket for every connection accepted from it: one
/// `setsockopt` per listener instead of one per connection (a tenth of the system calls of a
/// request on a new connection). `false`: each connection needs its own (another OS, or the
/// call failed).
pub fn nodelay_for_all(l: &impl AsRawFd) -> bool {
    set_tcp(l.as_raw_fd(), libc::TCP_NODELAY, 1)
}

/// Start every connection accepted from `l` with delayed ACKs (see the module's comment).
pub fn delay_acks_for_all(l: &impl AsRawFd) -> bool {
    set_tcp(l.as_raw_fd(), libc::TCP_QUICKACK, 0)
}

/// Seconds a connection whose client sends nothing waits in the kernel before it is
/// accepted anyway (HAProxy's `defer-accept` value). Linux counts it in SYN-ACK
/// retransmissions: the handshake's last ACK is dropped, the SYN-ACK resent after a second,
/// and the client's second ACK accepted.
pub const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Hand connections accepted from `l` over only once their client has sent data (`on`), or
/// at once. Set either way: a socket inherited on an upgrade keeps the old process's setting.
/// A new connection's request is then already in its socket when the proxy first reads: no
/// registration with epoll, no wait, for a connection that asks once and closes.
pub fn defer_accept(l: &impl AsRawFd, on: bool) -> bool {
    set_tcp(
        l.as_raw_fd(),
        libc::TCP_DEFER_ACCEPT,
        if on { DEFER_ACCEPT_SECS } else { 0 },
    )
}

/// Acknowledge what was received now, and keep acknowledging at once until the proxy next
/// sends (Linux then decides again): for a request that is still arriving.
pub fn ack_now(fd: RawFd) -> bool {
    set_tcp(fd, libc::TCP_QUICKACK, 1)
}

/// Whether the peer has sent bytes not read yet (a one-byte peek that does not wait): a
/// socket closed with them is reset, not closed with a FIN. `false` for an fd that is not
/// a socket.
pub fn has_unread(fd: RawFd) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // on an fd that is not an open socket the call only fails
    super::sys::recv(fd, &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT).is_ok_and(|n| n > 0)
}

/// Linux reports TCP_QUICKACK as "not in delayed-ACK (ping-pong) mode".
#[cfg(test)]
pub(crate) fn quickack(fd: RawFd) -> libc::c_int {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int with its size, on an open socket.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(TCP_QUICKACK)");
    v
}

/// A connection on loopback, the client's end and the accepted one, from a listener that
/// `set` prepared first (`|_| true` for none). For the tests of the socket-level code.
#[cfg(test)]
pub(crate) async fn loopback_pair(
    set: impl Fn(&tokio::net::TcpListener) -> bool,
) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("cannot listen on 127.0.0.1:0");
    };
    assert!(set(&l), "setsockopt on the listener failed");
    let Ok(addr) = l.local_addr() else {
        panic!("listener address");
    };
    let (c, a) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let (Ok(c), Ok((a, _))) = (c, a) else {
        panic!("connect/accept on loopback failed");
    };
    (c, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted from a listener with TCP_NODELAY has it without a call of its
    /// own (what lets the accept loop skip the per-connection `setsockopt`).
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let (_c, a) = loopback_pair(nodelay_for_all).await;
        assert_eq!(a.nodelay().ok(), Some(true));
    }

    /// Connections from a delayed-ACK listener start with delayed ACKs (a plain listener's
    /// start in quick-ACK mode), and `ack_now` switches one back.
    #[tokio::test]
    async fn accepted_connections_inherit_delayed_acks_until_ack_now() {
        let (_c, plain) = loopback_pair(|_| true).await;
        assert_eq!(
            quickack(plain.as_raw_fd()),
            1,
            "a plain listener's connection"
        );
        let (_c, a) = loopback_pair(delay_acks_for_all).await;
        assert_eq!(quickack(a.as_raw_fd()), 0, "inherited from the listener");
        assert!(ack_now(a.as_raw_fd()));
        assert_eq!(quickack(a.as_raw_fd()), 1, "after ack_now");
    }

    /// A deferring listener keeps a silent client's connection from accept() and hands it
    /// over, its data already readable, as soon as the client writes; a listener set back
    /// to off (as on an upgrade that turns it off) accepts at once.
    #[tokio::test]
    async fn deferred_connections_are_accepted_with_their_first_bytes() {
        use std::time::Duration;
        use tokio::io::AsyncWriteExt;
        let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("cannot listen on 127.0.0.1:0");
        };
        assert!(defer_accept(&l, true), "setsockopt(TCP_DEFER_ACCEPT)");
        let Ok(addr) = l.local_addr() else {
            panic!("listener address");
        };
        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
            panic!("connect");
        };
        let early = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(early.is_err(), "a silent client was accepted");
        let Ok(()) = c.write_all(b"GET / HTTP/1.1\r\n").await else {
            panic!("write");
        };
        let Ok(Ok((a, _))) = tokio::time::timeout(Duration::from_secs(5), l.accept()).await else {
            panic!("the client's first bytes did not release its connection");
        };
        let mut buf = [0u8; 64];
        assert_eq!(
            a.try_read(&mut buf).ok(),
            Some(16),
            "the bytes are there at accept"
        );

        assert!(defer_accept(&l, false), "setsockopt(TCP_DEFER_ACCEPT, 0)");
        let Ok(_c2) = tokio::net::TcpStream::connect(addr).await else {
            panic!("connect");
        };
        let now = tokio::time::timeout(Duration::from_secs(5), l.accept()).await;
        assert!(matches!(now, Ok(Ok(_))), "accepted without data once off");
    }
}
