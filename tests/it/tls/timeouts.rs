//! Slow and silent TLS clients: the header timeout after the handshake (HTTP/1.1 and h2),
//! the handshake timeout, and the line stalled handshakes must not hold up.

use super::{a_test_proxy, app_upstream, connect, h1, https_listener, start, ClientOpts, Pki, Tls};
use crate::support::{OriginBuilder, Proxy};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An https listener with `header_timeout: 1s` (and `keepalive_timeout: 120s`, so a close
/// within 15 s is the header timeout's), and a client connected to it with ALPN `alpn`.
async fn client_with_a_1s_header_timeout(
    tag: &str,
    alpn: &'static str,
) -> (crate::support::Origin, Proxy, Tls) {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new(tag);
    let (c, k) = pki.server("a", "a.test", &["a.test"], 21);
    let cfg = format!(
        "{}    limits: {{header_timeout: 1s, keepalive_timeout: 120s}}\n{}",
        https_listener(&[(&c, &k, &["a.test"])], ""),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let s = connect(
        proxy.addr,
        &ClientOpts::new(&pki.ca_path, "a.test").alpn(&[alpn]),
    )
    .await
    .expect("handshake");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(alpn.as_bytes()));
    (origin, proxy, s)
}

async fn h2_client_with_a_1s_header_timeout(tag: &str) -> (crate::support::Origin, Proxy, Tls) {
    client_with_a_1s_header_timeout(tag, "h2").await
}

/// After its TLS handshake, a client that asks nothing is closed at `header_timeout` (1 s),
/// the first request's limit, not at `keepalive_timeout` (120 s), as on plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_client_that_asks_nothing_after_its_handshake_is_closed_at_the_header_timeout() {
    let (_origin, proxy, mut s) =
        client_with_a_1s_header_timeout("tls-silent-h1", "http/1.1").await;
    closed_at_the_header_timeout(&mut s, &proxy, None).await;
}

/// Read (and drop) until the proxy closes `s`; fails if it is open after 15 s, or closed in
/// under 0.9 s (before the 1 s timeout), or `line` (if any) is not in the log.
async fn closed_at_the_header_timeout(s: &mut Tls, proxy: &Proxy, line: Option<&str>) {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // the server's SETTINGS may come first; what matters is the close that follows
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open 15 s after a 1 s header timeout:\n{}",
        proxy.log()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout:\n{}",
        t0.elapsed(),
        proxy.log()
    );
    let Some(line) = line else { return };
    // the line is written just after the socket closes
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains(line) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.log().contains(line), "no log line:\n{}", proxy.log());
}

/// A client that negotiates h2 and then sends nothing holds a connection slot and a codec:
/// its preface is due within the listener's `header_timeout`, as an HTTP/1 request head is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_sends_no_preface_is_closed_at_the_header_timeout() {
    let (_origin, proxy, mut s) = h2_client_with_a_1s_header_timeout("tls-h2-preface").await;
    closed_at_the_header_timeout(&mut s, &proxy, Some("sent no preface within 1s")).await;
}

/// Over TLS (h2 by ALPN) as over h2c: a HEADERS frame sent in part is due within
/// `header_timeout`, not `keepalive_timeout`, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_inside_a_headers_frame_is_closed_at_the_header_timeout() {
    use crate::support::h2raw::{
        block, frame, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS,
    };
    use tokio::io::AsyncWriteExt;
    let (origin, proxy, mut s) = h2_client_with_a_1s_header_timeout("tls-h2-slow-headers").await;
    let fields = block(&[
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/slow"),
        (b":authority", b"a.test"),
    ]);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    let headers = frame(HEADERS, END_STREAM | END_HEADERS, 1, &fields);
    hello.extend(&headers[..headers.len() - 3]);
    s.write_all(&hello).await.expect("send");
    closed_at_the_header_timeout(&mut s, &proxy, Some("a header block incomplete after 1s")).await;
    assert!(origin.recorded().is_empty(), "{:?}", origin.recorded());
}

/// Handshakes start one per turn, in line (`tls::pace`); a connection takes its place in
/// that line only once its ClientHello has begun, and gives it up when its handshake starts.
/// So clients that stay silent, or stall halfway through a ClientHello, hold up nobody:
/// with them open and 30 s from their deadline, new clients still complete at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_hold_up_the_line() {
    let (_origin, pki, p) = a_test_proxy("tls-handshake-line", 40, "handshake_timeout: 30s").await;
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .await
                .expect("send");
        }
        stalled.push(s);
    }
    let o = ClientOpts::new(&pki.ca_path, "a.test");
    for n in 0..10 {
        let served = tokio::time::timeout(Duration::from_secs(10), async {
            let mut s = connect(p.addr, &o).await.expect("handshake");
            h1(&mut s, "a.test", "/").await.expect("request")
        })
        .await;
        match served {
            Ok(r) => assert_eq!(r.status, 200, "client {n}: {}", r.head),
            Err(_) => panic!("client {n}: no answer within 10 s behind 40 stalled handshakes"),
        }
    }
    // the stalled ones are still open (their deadline is 30 s away): they were in the way
    let mut b = [0u8; 1];
    for (i, s) in stalled.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await;
        assert!(r.is_err(), "stalled connection {i} was closed early: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_handshake_timeout_and_a_done_one_is_not() {
    let (_origin, pki, p) =
        a_test_proxy("tls-handshake-timeout", 40, "handshake_timeout: 1s").await;
    // silent after connecting, and stalled halfway through a ClientHello
    for first in [
        &b""[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(first).await.expect("send");
        let t0 = Instant::now();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b)).await;
        let took = t0.elapsed();
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "{first:?}: connection still open after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "{first:?}: closed after {took:?}, not about 1s"
        );
    }
    // a completed handshake is not bound by it: a keep-alive connection idle past it serves
    let o = ClientOpts::new(&pki.ca_path, "a.test");
    let mut s = connect(p.addr, &o).await.expect("handshake");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = h1(&mut s, "a.test", "/")
        .await
        .expect("request after the deadline");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        p.log().contains("TLS handshake not complete after 1s"),
        "{}",
        p.log()
    );
}
