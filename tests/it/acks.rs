//! TCP acknowledgements on HTTP listeners. A connection's first request is acknowledged by
//! the response itself (the listener starts connections with delayed ACKs, as HAProxy's
//! HTTP frontends do), so a one-request connection costs one segment fewer, and on the fast
//! path the last answer of a plaintext connection carries its FIN. Counted on the client's
//! own socket (`TCP_INFO.tcpi_segs_in`).

use crate::support::{Conn, OriginBuilder, Proxy};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// Segments the socket has received so far.
fn segs_in(s: &impl AsRawFd) -> u32 {
    tcp_info(s).tcpi_segs_in
}

/// The socket's TCP_INFO.
pub(crate) fn tcp_info(s: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value; getsockopt writes
    // at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: an open TCP socket, and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(TCP_INFO)");
    info
}

async fn first_request_is_acknowledged_by_its_response(fast_path: bool) {
    let o = OriginBuilder::new("o").on("/ok", &[], "ok").run().await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        o.addr
    ));
    // A response later than the delayed-ACK timer (40 ms) would follow a bare ACK anyway,
    // which a loaded machine can cause now and then: such a connection proves nothing
    // either way, so a few are tried, and the quick ones must all show the ACK riding on
    // the response.
    //
    // Counted from just before the request is sent: the listener defers accepting until the
    // client speaks, and a client held up for a second between its handshake and its
    // request is sent the SYN-ACK again (the proxy's kernel dropped the handshake's ACK),
    // which is not what this test is about.
    let mut quick = Vec::new();
    for _ in 0..5 {
        let mut c = Conn::connect(p.addr).await.expect("connect");
        let before = segs_in(&c.stream);
        let t0 = std::time::Instant::now();
        let r = tokio::time::timeout(WAIT, c.get("/ok", &[]))
            .await
            .expect("response in time")
            .expect("response");
        let took = t0.elapsed();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        if took < Duration::from_millis(20) {
            // the response, carrying the ACK of the request (a connection in quick-ACK mode
            // gets a bare ACK first: 2)
            quick.push((before, segs_in(&c.stream) - before, took));
        }
    }
    assert!(!quick.is_empty(), "no response within 20 ms in 5 tries");
    assert!(
        quick.iter().all(|&(_, n, _)| n == 1),
        "(segments before the request, segments for it, its time) per connection; one \
         segment for the request is the response with the ACK: {quick:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_is_acknowledged_by_its_response_on_the_fast_path() {
    first_request_is_acknowledged_by_its_response(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_is_acknowledged_by_its_response_on_pingoras_path() {
    first_request_is_acknowledged_by_its_response(false).await;
}

/// A connection's last answer on the fast path leaves with the FIN in one segment (the
/// answer sent with `MSG_MORE`, then the shutdown): from the request to the end of the
/// stream the client takes one segment, where a send and then a close made two (and the
/// client acknowledged each). Proxied answers and the proxy's own pages, such as a 404 for
/// a host no route serves, end the same way. Only quick answers count, as in
/// [`first_request_is_acknowledged_by_its_response`]: a late one follows a bare ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_answer_carries_the_fin_on_the_fast_path() {
    let o = OriginBuilder::new("o").on("/ok", &[], "ok").run().await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app, host: a.test}}\n",
        o.addr
    ));
    for (host, want) in [("a.test", "HTTP/1.1 200 "), ("b.test", "HTTP/1.1 404 ")] {
        let mut quick = Vec::new();
        for _ in 0..5 {
            let mut s = tokio::net::TcpStream::connect(p.addr)
                .await
                .expect("connect");
            let before = segs_in(&s);
            let t0 = std::time::Instant::now();
            let req = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("request");
            let mut got = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut got))
                .await
                .expect("the answer and the end of the stream in time")
                .expect("read");
            let took = t0.elapsed();
            let text = String::from_utf8_lossy(&got).into_owned();
            assert!(text.starts_with(want), "{host}: {text}");
            if took < Duration::from_millis(20) {
                quick.push((segs_in(&s) - before, took));
            }
        }
        assert!(
            !quick.is_empty(),
            "{host}: no answer within 20 ms in 5 tries"
        );
        assert!(
            quick.iter().all(|&(n, _)| n == 1),
            "{host}: (segments from the request to the end of the stream, time) per \
             connection; one is the answer with its FIN: {quick:?}"
        );
    }
}
