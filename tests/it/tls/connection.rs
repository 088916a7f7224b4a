//! What an established TLS connection holds and sends: idle memory, requests OpenSSL has
//! read ahead, session tickets, and the close_notify.

use super::{a_test_proxy, connect, h1, ClientOpts, Tls};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// An idle HTTPS keep-alive connection holds OpenSSL's connection state and little else:
/// between requests it waits on a 128-byte first read rather than a request head's 4 KiB
/// buffer, its handshake's state is freed once the handshake is done, and no L4 read buffer
/// sits under OpenSSL (Pingora's listener gave each TLS connection 64 KiB of address space).
/// This test on release builds: 47.6 KiB of RSS per connection through Pingora's listener,
/// 32.5 in our accept loop with the head buffer held, 28.3 now (OpenSSL's own state is about
/// 20 KiB of it, heaptrack says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_holds_no_request_buffer_or_handshake_state() {
    const N: usize = 400;
    let (_origin, pki, proxy) = a_test_proxy("tls-idle-rss", 43, "").await;
    let pid = proxy.child.id();
    let o = ClientOpts::new(&pki.ca_path, "a.test").alpn(&["http/1.1"]);
    // warm: the thread's pools, OpenSSL's tables and the allocator's first pages
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut s = connect(proxy.addr, &o).await.expect("connect");
        assert_eq!(
            h1(&mut s, "a.test", "/").await.expect("request").status,
            200
        );
        warm.push(s);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = crate::support::proxy::rss_kib(pid);
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = connect(proxy.addr, &o).await.expect("connect");
        let r = h1(&mut s, "a.test", "/").await.expect("request");
        assert_eq!(r.status, 200, "{}", r.head);
        idle.push(s);
    }
    crate::support::proxy::assert_rss_per_conn(pid, rss0, N, 31.0, "idle TLS connections").await;
    // and each is still served
    for s in idle.iter_mut().step_by(N / 8) {
        assert_eq!(h1(s, "a.test", "/").await.expect("request").status, 200);
    }
}

/// Two requests in two TLS records that reach the proxy in one segment: its read takes both
/// records into OpenSSL's buffer and returns the first request only. Between requests an
/// idle TLS connection waits on its socket's readiness unless OpenSSL holds bytes, so the
/// second request, already there, must be served without the client sending anything more
/// (a wait on the socket alone would hang until the keep-alive timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_openssl_has_read_ahead_is_served_without_more_from_the_client() {
    let (_origin, pki, proxy) = a_test_proxy("tls-held", 44, "").await;
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(&pki.ca_path).expect("ca");
    b.set_alpn_protos(b"\x08http/1.1").expect("alpn");
    let ssl = b
        .build()
        .configure()
        .and_then(|c| c.into_ssl("a.test"))
        .expect("ssl");
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    // what OpenSSL writes leaves at its flushes: both records in one send
    let mut s = SslStream::new(ssl, tokio::io::BufWriter::new(tcp)).expect("stream");
    Pin::new(&mut s).connect().await.expect("handshake");
    // the connection is idle first: the pair arrives while it waits
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("first record");
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("second record");
    s.flush().await.expect("one send");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the second request was not answered within 10 s; so far:\n{text}\n{}",
        proxy.log()
    );
    assert_eq!(
        text.matches("HTTP/1.1 200 ").count(),
        2,
        "two responses expected:\n{text}"
    );
}

/// A client of our own for the ticket test: it keeps every session ticket it is sent.
fn ticket_keeping_client(
    ca: &Path,
    max: Option<SslVersion>,
) -> (SslConnector, Arc<Mutex<Vec<openssl::ssl::SslSession>>>) {
    let tickets: Arc<Mutex<Vec<openssl::ssl::SslSession>>> = Arc::default();
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca).expect("ca");
    b.set_alpn_protos(b"\x08http/1.1").expect("alpn");
    b.set_max_proto_version(max).expect("max version");
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::CLIENT);
    let kept = tickets.clone();
    b.set_new_session_callback(move |_, s| kept.lock().expect("tickets").push(s));
    (b.build(), tickets)
}

async fn handshake(
    c: &SslConnector,
    addr: SocketAddr,
    resume: Option<&openssl::ssl::SslSession>,
) -> Tls {
    let mut ssl = c
        .configure()
        .expect("configure")
        .into_ssl("a.test")
        .expect("ssl");
    if let Some(t) = resume {
        // SAFETY: the session came from a connector of the same context
        unsafe { ssl.set_session(t) }.expect("set session");
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut s = SslStream::new(ssl, tcp).expect("stream");
    Pin::new(&mut s).connect().await.expect("handshake");
    s
}

/// A TLS 1.3 server's session tickets are its last handshake writes, each flushed on its
/// own. They leave in one send, before the read that waits for the first request: the
/// listener acknowledges late, and a client with Nagle's algorithm on (as this one, a tokio
/// socket's default) holds its request until its Finished is acknowledged, which the
/// tickets do; held for the first response, they left such a client waiting for the
/// delayed-ACK timer, 40 ms, on every new connection. The client gets both, and one resumes
/// a later connection. TLS 1.2, whose client waits for the server's last flight (its
/// Finished) before it sends a request, gets that flight at once and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_leave_before_the_first_request_and_resume_a_connection() {
    let (_origin, pki, proxy) = a_test_proxy("tls-tickets", 44, "").await;
    let (c, tickets) = ticket_keeping_client(&pki.ca_path, None);
    let mut s = handshake(&c, proxy.addr, None).await;
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    let mut b = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(5), s.get_ref().peek(&mut b)).await;
    assert!(
        matches!(early, Ok(Ok(1))),
        "nothing arrived before the request (tickets held for the response?): {early:?}"
    );
    let r = h1(&mut s, "a.test", "/").await.expect("request");
    assert_eq!(r.status, 200, "{}", r.head);
    let got: Vec<_> = tickets.lock().expect("tickets").clone();
    assert_eq!(got.len(), 2, "session tickets with the first response");
    let mut again = handshake(&c, proxy.addr, Some(&got[0])).await;
    assert!(again.ssl().session_reused(), "the ticket did not resume");
    assert_eq!(
        h1(&mut again, "a.test", "/").await.expect("request").status,
        200
    );

    let (c12, tickets12) = ticket_keeping_client(&pki.ca_path, Some(SslVersion::TLS1_2));
    let mut s = handshake(&c12, proxy.addr, None).await;
    assert_eq!(s.ssl().version_str(), "TLSv1.2");
    let r = tokio::time::timeout(Duration::from_secs(5), h1(&mut s, "a.test", "/"))
        .await
        .expect("TLS 1.2: no answer (the server's last flight held back?)")
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.head);
    let t12 = tickets12.lock().expect("tickets")[0].clone();
    let mut again = handshake(&c12, proxy.addr, Some(&t12)).await;
    assert!(
        again.ssl().session_reused(),
        "the TLS 1.2 ticket did not resume"
    );
    assert_eq!(
        h1(&mut again, "a.test", "/").await.expect("request").status,
        200
    );
}

/// The last response of a TLS connection that closes (here the client asked it to) and the
/// close_notify behind it leave in one send: one segment with data reaches the client, not
/// two. (The response is not flushed on its own when the shutdown that follows flushes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_tls_response_and_its_close_notify_leave_in_one_segment() {
    let (_origin, pki, proxy) = a_test_proxy("tls-close-notify", 45, "").await;
    let o = ClientOpts::new(&pki.ca_path, "a.test").alpn(&["http/1.1"]);
    let mut s = connect(proxy.addr, &o).await.expect("connect");
    // the first response carries the handshake's session tickets: out of the count
    assert_eq!(
        h1(&mut s, "a.test", "/").await.expect("request").status,
        200
    );
    let before = crate::acks::tcp_info(s.get_ref()).tcpi_data_segs_in;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("no end: the close_notify did not come")
        .expect("read to the close_notify");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("onnection: close"), "{text}");
    let segs = crate::acks::tcp_info(s.get_ref()).tcpi_data_segs_in - before;
    assert_eq!(
        segs, 1,
        "segments with data for the response and its close_notify"
    );
}
