//! Unit tests of the request-head guard: its scanner's limits, and when it asks for ACKs.

use super::*;

fn g() -> Guarded {
    // a stream is not needed to test the scanner
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let s = rt.block_on(async { tokio::net::UnixStream::from_std(a).expect("tokio") });
    let l4: pingora_core::protocols::l4::stream::Stream = s.into();
    Guarded::new(
        Box::new(l4),
        HeadLimits {
            max_request_line: 16,
            max_header_size: 64,
            max_header_count: 2,
            header_timeout: Duration::from_secs(1),
        },
        None,
    )
}

#[test]
fn scanner_limits() {
    let mut x = g();
    assert_eq!(x.scan(b"GET / HTTP/1.0\r\nA: b\r\n\r\nBODY"), Ok(24));
    let mut x = g();
    assert_eq!(
        x.scan(b"GET /aaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n")
            .map_err(|e| e.0),
        Err(414)
    );
    let mut x = g();
    assert_eq!(
        x.scan(b"GET / HTTP/1.0\r\nA: b\r\nC: d\r\nE: f\r\n")
            .map_err(|e| e.0),
        Err(431)
    );
    let mut x = g();
    assert!(x
        .scan(b"GET / HTTP/1.0\r\nA: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n")
        .is_err());
    // split across reads
    let mut x = g();
    assert_eq!(x.scan(b"GET / HTTP/1.0\r\nA: b\r"), Ok(21));
    assert_eq!(x.scan(b"\n\r"), Ok(2));
    assert_eq!(x.scan(b"\nrest"), Ok(1));
    assert_eq!(x.phase, Phase::Body);
    assert!(x.partial.is_empty());
    // the strict checks run on the complete head, in one read or across several
    let mut x = g();
    assert_eq!(
        x.scan(b"GET / HTTP/1.1\r\nA : b\r\n\r\n").map_err(|e| e.0),
        Err(400)
    );
    let mut x = g();
    assert_eq!(x.scan(b"\r\nGET / HTTP/1.0\r\nA: b\r"), Ok(23));
    assert_eq!(x.scan(b"\n\tfolded\r\n\r\n").map_err(|e| e.0), Err(400));
    let mut x = g();
    assert_eq!(
        x.scan(b"GET / HTTP/1.1\nA: b\n\n").map_err(|e| e.0),
        Err(400)
    );
}

/// One poll of a read: `true` if it is pending.
async fn pends(g: &mut Guarded) -> bool {
    let mut b = [0u8; 256];
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut b);
        Poll::Ready(Pin::new(&mut *g).poll_read(cx, &mut rb).is_pending())
    })
    .await
}

/// A guard with roomy limits over the proxy's end of a loopback connection.
fn on_socket(a: tokio::net::TcpStream) -> Guarded {
    let l4: pingora_core::protocols::l4::stream::Stream = a.into();
    let limits = HeadLimits {
        max_request_line: 8192,
        max_header_size: 8192,
        max_header_count: 100,
        header_timeout: Duration::from_secs(10),
    };
    Guarded::new(Box::new(l4), limits, None)
}

async fn write(c: &mut tokio::net::TcpStream, b: &[u8]) {
    use tokio::io::AsyncWriteExt;
    assert!(c.write_all(b).await.is_ok(), "client write");
}

/// A request still arriving gets its ACK asked for at once, once; a complete one never.
#[tokio::test]
async fn incomplete_requests_are_acknowledged_at_once() {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;
    let (mut c, a) =
        crate::net::sockopt::loopback_pair(crate::net::sockopt::delay_acks_for_all).await;
    let fd = a.as_raw_fd();
    let mut g = on_socket(a);
    let mut buf = [0u8; 256];

    // a complete head: nothing to ask for, before or after
    write(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(g.read(&mut buf).await.is_ok_and(|n| n > 0));
    assert!(g.head_done());
    assert!(pends(&mut g).await, "the complete request holds the rest");
    assert!(!g.acked);

    // the next head in two pieces
    g.arm();
    write(&mut c, b"POST / HTTP/1.1\r\nHost: a\r\n").await;
    assert!(g.read(&mut buf).await.is_ok_and(|n| n > 0));
    assert!(!g.head_done());
    assert!(
        !g.acked,
        "asked for only when the rest has to be waited for"
    );
    assert!(pends(&mut g).await);
    assert!(g.acked);
    assert_eq!(crate::net::sockopt::quickack(fd), 1);

    // its body in two pieces: already asked for this request
    write(&mut c, b"Content-Length: 6\r\n\r\nabc").await;
    assert!(g.read(&mut buf).await.is_ok_and(|n| n > 0));
    assert!(g.head_done());
    assert!(g.acked);

    // the next request: a head in one piece, its body in two
    write(&mut c, b"def").await;
    assert!(g.read(&mut buf).await.is_ok_and(|n| n == 3));
    g.arm();
    write(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab",
    )
    .await;
    assert!(g.read(&mut buf).await.is_ok_and(|n| n > 0));
    assert!(g.head_done(), "one write, one read");
    assert!(!g.acked);
    assert!(pends(&mut g).await);
    assert!(g.acked, "the body is still arriving");
}

/// A read of tiny chunks comes out of the guard as one chunk, and the thousands of chunk
/// spans it took to merge them are not kept past the read.
#[tokio::test]
async fn a_read_of_tiny_chunks_is_merged_and_its_spans_given_back() {
    use tokio::io::AsyncReadExt;
    let (mut c, a) = crate::net::sockopt::loopback_pair(|_| true).await;
    let mut g = on_socket(a);
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut sent = head.to_vec();
    sent.extend_from_slice(&b"1\r\nz\r\n".repeat(5000));
    write(&mut c, &sent).await;
    // what the guard hands on, past the head, until all the data came
    let (mut body, mut data) = (Vec::new(), Vec::new());
    let mut scan = crate::http::chunked::ChunkedScanner::default();
    let mut head_left = head.len();
    let mut buf = vec![0u8; 1 << 16];
    while data.len() < 5000 {
        let n = g.read(&mut buf).await.expect("read");
        assert!(n > 0, "the guard ended the body early");
        let skip = head_left.min(n);
        head_left -= skip;
        let piece = &buf[skip..n];
        body.extend_from_slice(piece);
        scan.scan_into(piece, Some(&mut data))
            .expect("a valid chunked body");
    }
    assert_eq!(data, vec![b'z'; 5000]);
    // 30,000 bytes sent; merged, the framing is a few bytes per read
    assert!(body.len() < 6000, "{} bytes of body", body.len());
    match &g.body {
        Body::Chunked(c) => assert!(
            c.1.capacity() <= SPANS_KEPT,
            "{} spans kept",
            c.1.capacity()
        ),
        other => panic!("the body is {other:?}"),
    }
}

/// A flush with nothing written, read or handed out since the last one stays in the guard
/// (h2 flushes each time its connection is polled); bytes written straight to the stream
/// below, as the fast path's writers do, still leave at the guard's flush.
#[tokio::test]
async fn a_flush_reaches_the_stream_below_only_when_it_may_hold_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (s, mut client) = crate::net::tls_io::fixture::tls_pair().await;
    let limits = HeadLimits {
        max_request_line: 8192,
        max_header_size: 8192,
        max_header_count: 100,
        header_timeout: Duration::from_secs(10),
    };
    let mut g = Guarded::new(s, limits, None);
    let mut got = [0u8; 3];
    g.write_all(b"abc").await.expect("write through the guard");
    g.flush().await.expect("flush");
    assert!(!g.unflushed, "a flush left the stream below marked");
    client.read_exact(&mut got).await.expect("client read");
    assert_eq!(&got, b"abc");

    g.inner_mut()
        .write_all(b"def")
        .await
        .expect("write below the guard");
    assert!(g.unflushed, "bytes written below the guard were not marked");
    g.flush().await.expect("flush");
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(3))),
        "what was written below did not leave: {read:?}"
    );
    assert_eq!(&got, b"def");
    assert!(!g.unflushed);
}

/// Every idle HTTP/1 connection holds its guard in a box of its own: mimalloc serves it from
/// the 192-byte size class, 64 bytes per connection less than the next one (issue 17).
#[test]
fn an_idle_connections_guard_fits_192_bytes() {
    let n = std::mem::size_of::<Guarded>();
    assert!(n <= 192, "the guard grew to {n} bytes");
}
