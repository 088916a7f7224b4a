//! TCP acknowledgements on HTTP listeners. A connection's first request is acknowledged by
//! the response itself (the listener starts connections with delayed ACKs, as HAProxy's
//! HTTP frontends do), so a one-request connection costs one segment fewer. Counted on the
//! client's own socket (`TCP_INFO.tcpi_segs_in`), with both engines.

use crate::support::{Conn, OriginBuilder, Proxy};
use std::os::fd::AsRawFd;
use std::time::Duration;

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
