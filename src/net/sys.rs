//! Socket system calls made with `syscall(2)` rather than glibc's named wrappers.
//!
//! `recv`, `send`, `sendmsg` and `accept4` are POSIX cancellation points. In a process with
//! more than one thread glibc brackets each with two atomic compare-exchanges on the
//! calling thread's cancellation state (`__pthread_enable_asynccancel` and
//! `__pthread_disable_asynccancel`), for `pthread_cancel`, which nothing in this process
//! uses. A single-threaded nginx worker skips them; this process has worker and helper
//! threads and cannot. Measured on the 2-CPU test machine, a `recv` that finds nothing:
//! 154 ns by `syscall(2)`, 154 ns by `recv` single-threaded, 205 ns by `recv` with a second
//! thread. A proxied HTTP/1 request makes four such calls, an L4 connection about nine.
//! `syscall(2)` is not a cancellation point: the same system call, the same result and
//! errno, without the bracket.
//!
//! Each function takes a descriptor the caller keeps open for the duration of the call.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};

/// A system call's return: the count, or the error in errno.
fn check(r: libc::c_long) -> std::io::Result<usize> {
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    usize::try_from(r).map_err(|_| std::io::Error::other("negative count from the kernel"))
}

/// `recv(fd, buf, flags)`: bytes received into the front of `buf` (all of which the kernel
/// wrote), 0 at end of stream.
pub fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>], flags: libc::c_int) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes at `buf`; recv is recvfrom with
    // no address.
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            libc::c_long::from(fd),
            buf.as_mut_ptr(),
            buf.len(),
            libc::c_long::from(flags),
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    check(r)
}

/// `send(fd, data, MSG_NOSIGNAL | flags)`: bytes sent. A peer gone is `EPIPE`, never a
/// SIGPIPE, as with std's `TcpStream::write`.
pub fn send(fd: RawFd, data: &[u8], flags: libc::c_int) -> std::io::Result<usize> {
    // SAFETY: the kernel reads at most `data.len()` bytes at `data`; send is sendto with no
    // address.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            libc::c_long::from(fd),
            data.as_ptr(),
            data.len(),
            libc::c_long::from(flags | libc::MSG_NOSIGNAL),
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::c_long,
        )
    };
    check(r)
}

/// `sendmsg` of `bufs` in order (a gathered write, as `writev`), with `MSG_NOSIGNAL | flags`.
pub fn send_vectored(
    fd: RawFd,
    bufs: &[IoSlice<'_>],
    flags: libc::c_int,
) -> std::io::Result<usize> {
    // IoSlice is ABI-compatible with iovec (std guarantees it on Unix); the kernel caps the
    // count at IOV_MAX, as writev does.
    let n = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = n as _;
    // SAFETY: the kernel reads the `n` iovecs and the bytes they point at, which `bufs`
    // borrows for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            libc::c_long::from(fd),
            &msg as *const libc::msghdr,
            libc::c_long::from(flags | libc::MSG_NOSIGNAL),
        )
    };
    check(r)
}

/// `accept4(fd, addr, flags)`: the new descriptor, the peer's address written into `addr`
/// (at most its size).
pub fn accept4(
    fd: RawFd,
    addr: &mut libc::sockaddr_storage,
    flags: libc::c_int,
) -> std::io::Result<RawFd> {
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes of address into `addr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_accept4,
            libc::c_long::from(fd),
            (addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>(),
            &mut len as *mut libc::socklen_t,
            libc::c_long::from(flags),
        )
    };
    let n = check(r)?;
    RawFd::try_from(n).map_err(|_| std::io::Error::other("descriptor out of range"))
}

/// Read from a stream registered with tokio into `buf`'s spare capacity (64 bytes made if it
/// has none, as tokio's `read_buf` does): the count, 0 at end of stream. By [`recv`], so a
/// backend's answer is read without glibc's cancellation bracket, as a client's request is.
///
/// A read that fills less than it was offered leaves the socket drained, so tokio's word
/// that it is readable is cleared with it (as `TcpStream::poll_read` does): the next read
/// waits for readiness instead of making a `recv` that finds nothing.
pub async fn recv_buf(s: &tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    recv_buf_room(s, buf, 64).await
}

/// [`recv_buf`], making `room` bytes when `buf` has none, and only once the socket is
/// readable: a buffer that a read waiting for its backend's answer would take early
/// (a response buffer, empty until then) is allocated after the wait, when the allocator
/// hands back the block that the request finished last gave up, still in the cache.
pub async fn recv_buf_room(
    s: &tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
) -> std::io::Result<usize> {
    let fd = s.as_raw_fd();
    loop {
        std::future::poll_fn(|cx| s.poll_read_ready(cx)).await?;
        if buf.len() == buf.capacity() {
            buf.reserve(room.max(1));
        }
        let spare = buf.spare_capacity_mut();
        let offered = spare.len();
        let mut short = None;
        let got = s.try_io(tokio::io::Interest::READABLE, || {
            let n = recv(fd, spare, 0)?;
            if n > 0 && n < offered {
                // reported as "would block" so that try_io clears the readiness
                short = Some(n);
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match (got, short) {
            (_, Some(n)) | (Ok(n), None) => n,
            (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            (Err(e), None) => return Err(e),
        };
        // SAFETY: `recv` wrote the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

/// Write all of `data` to a stream registered with tokio, by [`send`] with `flags`: each call
/// goes out at once while tokio last saw room in the send buffer, and waits for its word
/// otherwise.
pub async fn send_all(
    s: &tokio::net::TcpStream,
    mut data: &[u8],
    flags: libc::c_int,
) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    while !data.is_empty() {
        match s.try_io(tokio::io::Interest::WRITABLE, || send(fd, data, flags)) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write all of `bufs` (in order, empty ones skipped) as [`send_all`] does, by
/// [`send_vectored`].
pub async fn send_all_vectored(
    s: &tokio::net::TcpStream,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match s.try_io(tokio::io::Interest::WRITABLE, || send_vectored(fd, bufs, 0)) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::FromRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        (a, b)
    }

    #[test]
    fn send_and_recv_move_the_bytes_and_report_would_block_and_the_end() {
        let (mut a, b) = pair();
        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        let e = recv(b.as_raw_fd(), &mut buf, 0).expect_err("nothing sent yet");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

        a.write_all(b"hello").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = recv(b.as_raw_fd(), &mut buf, libc::MSG_PEEK).expect("peek");
        assert_eq!(n, 5);
        let n = recv(b.as_raw_fd(), &mut buf, 0).expect("recv");
        // SAFETY: recv wrote the first n bytes
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"hello");

        let sent = send(b.as_raw_fd(), b"back", 0).expect("send");
        assert_eq!(sent, 4);
        let parts = [
            IoSlice::new(b"one "),
            IoSlice::new(b""),
            IoSlice::new(b"two"),
        ];
        assert_eq!(send_vectored(b.as_raw_fd(), &parts, 0).expect("sendmsg"), 7);
        let mut back = [0u8; 11];
        a.read_exact(&mut back).expect("read");
        assert_eq!(&back, b"backone two");

        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(recv(b.as_raw_fd(), &mut buf, 0).expect("eof"), 0);
        // the peer is gone: an error, not a SIGPIPE that would end the test process
        let mut failed = false;
        for _ in 0..10 {
            if send(b.as_raw_fd(), b"x", 0).is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(failed, "sending to a closed peer never failed");
    }

    #[test]
    fn accept4_gives_a_nonblocking_connection_and_its_peer() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        // SAFETY: all-zero is a valid sockaddr_storage
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let e = accept4(l.as_raw_fd(), &mut ss, libc::SOCK_NONBLOCK).expect_err("none yet");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let fd = accept4(
            l.as_raw_fd(),
            &mut ss,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
        .expect("accept4");
        // SAFETY: a new descriptor that nothing else owns
        let s = unsafe { TcpStream::from_raw_fd(fd) };
        assert_eq!(libc::c_int::from(ss.ss_family), libc::AF_INET);
        // SAFETY: the family is AF_INET, so the storage holds a sockaddr_in
        let sin = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        let port = u16::from_be(sin.sin_port);
        assert_eq!(port, c.local_addr().expect("local").port());
        let mut one = [0u8; 1];
        let e = (&s).read(&mut one).expect_err("nonblocking, nothing sent");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    /// A connected pair of tokio streams on loopback: `(ours, the peer)`.
    async fn tokio_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (peer, _) = l.accept().await.expect("accept");
        (up, peer)
    }

    #[tokio::test]
    async fn send_all_delivers_everything_through_a_full_send_buffer() {
        let (up, mut peer) = tokio_pair().await;
        // far more than a loopback socket buffers: the writes must wait for the reader
        let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
                .await
                .expect("read");
            got
        });
        let (a, b) = big.split_at(3_000_001);
        let mut parts = [
            IoSlice::new(a),
            IoSlice::new(&[]),
            IoSlice::new(&b[..1_000_000]),
        ];
        send_all_vectored(&up, &mut parts).await.expect("vectored");
        send_all(&up, &b[1_000_000..], 0).await.expect("send_all");
        drop(up);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), big.len());
        assert!(got == big, "bytes differ");
    }

    #[tokio::test]
    async fn recv_buf_reads_after_a_short_read_cleared_readiness_and_sees_the_end() {
        use tokio::io::AsyncWriteExt;
        let (up, mut peer) = tokio_pair().await;
        let mut buf = Vec::new();
        peer.write_all(b"first").await.expect("write");
        // a short read (5 of the 64 bytes offered) clears tokio's readiness
        assert_eq!(recv_buf(&up, &mut buf).await.expect("first"), 5);
        assert_eq!(buf, b"first");
        // the next bytes must still wake the read: readiness comes back with them
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            peer.write_all(b" second").await.expect("write");
            peer
        });
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), recv_buf(&up, &mut buf))
            .await
            .expect("the second read was never woken")
            .expect("second");
        assert_eq!(n, 7);
        assert_eq!(buf, b"first second");
        // a full read: exactly the spare capacity offered, the rest on the next read
        let mut peer = later.await.expect("writer");
        let big = vec![7u8; 300];
        peer.write_all(&big).await.expect("write");
        let mut small = Vec::with_capacity(100);
        let mut got = 0;
        while got < 300 {
            small.clear();
            small.reserve_exact(100);
            let want = small.capacity();
            let n = recv_buf(&up, &mut small).await.expect("piece");
            assert!(n > 0 && n <= want, "{n} of {want}");
            got += n;
        }
        assert_eq!(got, 300);
        drop(peer);
        assert_eq!(recv_buf(&up, &mut buf).await.expect("end"), 0);
    }
}
