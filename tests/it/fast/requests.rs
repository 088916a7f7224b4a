//! Requests and the connections they share: pipelining, a large request body, a request that
//! falls back to Pingora's path between fast ones, idle upstream connections the backend
//! closed, and routing by the path without its query.

use super::{config, Scripted, Step, WAIT};
use crate::support::tcp::pattern;
use crate::support::{Conn, OriginBuilder, Proxy};
use std::time::Duration;

fn sha256_hex(b: &[u8]) -> String {
    crate::support::tcp::hex(&openssl::sha::sha256(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_get_their_responses_in_order() {
    // The first answer is the slower one, so order cannot come from the backend's timing.
    let b = Scripted::start(|g| {
        let (pause, text): (u64, &[u8]) = if g.path() == "/first" {
            (150, b"first")
        } else {
            (0, b"second")
        };
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
        r.extend_from_slice(text);
        vec![Step::Pause(Duration::from_millis(pause)), Step::Write(r)]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let r1 = tokio::time::timeout(WAIT, c.read_response(false))
        .await
        .expect("first response in time")
        .expect("first response");
    let r2 = tokio::time::timeout(WAIT, c.read_response(false))
        .await
        .expect("second response in time")
        .expect("second response");
    assert_eq!((r1.status, r1.text().as_str()), (200, "first"));
    assert_eq!((r2.status, r2.text().as_str()), (200, "second"));
    let paths: Vec<String> = b.requests().iter().map(|g| g.path().to_string()).collect();
    assert_eq!(paths, ["/first", "/second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_post_with_content_length_reaches_the_backend_byte_exact() {
    let o = OriginBuilder::new("o")
        .on("/upload", &[], "stored")
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let body = pattern(1 << 20);
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = tokio::time::timeout(WAIT, c.request("POST", "/upload", &[], &body))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!((r.status, r.text().as_str()), (200, "stored"));
    let got = o.last().expect("the backend got the request");
    assert_eq!(got.method, "POST");
    assert_eq!(got.header("content-length"), Some("1048576"));
    assert_eq!(got.body.len(), body.len(), "body length at the backend");
    assert_eq!(sha256_hex(&got.body), sha256_hex(&body), "body SHA-256");
    assert_eq!(o.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_taking_pingoras_path_shares_a_keepalive_connection_with_fast_ones() {
    let o = OriginBuilder::new("o")
        .on("/one", &[], "one")
        .on("/two", &[], "two")
        .on("/three", &[], "three")
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let local = c.stream.local_addr().expect("local addr");

    let r = tokio::time::timeout(WAIT, c.get("/one", &[]))
        .await
        .expect("in time")
        .expect("response to GET /one");
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
    assert_ne!(r.header("connection"), Some("close"));

    // Transfer-Encoding in a request: the fast path hands it back to Pingora's.
    c.send_raw(b"POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .expect("send chunked POST");
    let r = tokio::time::timeout(WAIT, c.read_response(false))
        .await
        .expect("in time")
        .expect("response to the chunked POST");
    assert_eq!((r.status, r.text().as_str()), (200, "two"));
    assert_ne!(r.header("connection"), Some("close"));

    let r = tokio::time::timeout(WAIT, c.get("/three", &[]))
        .await
        .expect("in time")
        .expect("response to GET /three");
    assert_eq!((r.status, r.text().as_str()), (200, "three"));

    assert_eq!(c.stream.local_addr().expect("local addr"), local);
    let rec = o.recorded();
    let seen: Vec<(&str, &str)> = rec
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(seen, [("GET", "/one"), ("POST", "/two"), ("GET", "/three")]);
    assert_eq!(rec[1].body, b"hello world", "chunked body at the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_closed_by_the_backend_are_never_used() {
    // Each response says nothing about closing; the backend closes right after it.
    let b = Scripted::start(|_| {
        vec![
            Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
            Step::Close,
        ]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    // GETs would be retried on a fresh connection after a stale one failed; POSTs are not,
    // so a POST answered 200 shows the closed connection was not picked at all.
    for (i, method) in ["GET", "GET", "GET", "GET", "GET", "POST", "POST", "POST"]
        .iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let path = format!("/{i}");
        let body: &[u8] = if *method == "POST" { b"x" } else { b"" };
        let r = tokio::time::timeout(WAIT, c.request(method, &path, &[], body))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", p.log()));
        assert_eq!(r.status, 200, "{method} {path}: {}\n{}", r.text(), p.log());
        assert_eq!(r.text(), "ok");
    }
    let reqs = b.requests();
    assert_eq!(reqs.len(), 8);
    for g in &reqs {
        let want: &[u8] = if g.head.starts_with("POST") {
            b"x"
        } else {
            b""
        };
        assert_eq!(g.body, want, "body at the backend for {}", g.head);
    }
    assert_eq!(b.connections(), 8, "one backend connection per request");
    let log = p.log();
    assert!(
        !log.contains("reused upstream connection failed"),
        "a connection the backend had closed was used: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_uses_the_path_without_its_query_as_the_general_path_does() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    // a prefix with a query in it can never match a path (the general path's rule)
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: a\n    backends:\n      - address: {}\n  - name: b\n    backends:\n      - address: {}\nroutes:\n  - {{listener: web, upstream: a, path_prefix: \"/search?q=cats\"}}\n  - {{listener: web, upstream: b}}\n",
        a.addr, b.addr
    );
    let p = Proxy::start(&cfg);
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c.get("/search?q=cats", &[]).await.expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(
        (a.requests(), b.requests()),
        (0, 1),
        "routed by path and query"
    );
}

/// A worker thread that busy-polls with naps (`busy_poll`, `busy_poll_nap`) still answers
/// every request of connections that keep it busy, bodies whole: what arrives while it naps
/// waits in the kernel for the next poll and is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_naps_between_polls_answers_every_request_whole() {
    let b = Scripted::start(|g| {
        let text = sha256_hex(&g.body);
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        vec![Step::Write(r.into_bytes())]
    })
    .await;
    let yaml = format!(
        "pingora: {{threads: 1, work_stealing: false, busy_poll: 300us, busy_poll_nap: 100us}}\n{}",
        config(b.addr)
    );
    let p = Proxy::start(&yaml);
    let body = pattern(64 << 10);
    let want = sha256_hex(&body);
    let empty = sha256_hex(b"");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addr, body, want, empty) = (p.addr, body.clone(), want.clone(), empty.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await.expect("connect");
                for i in 0..50 {
                    let post = i % 2 == 1;
                    let (method, sent, expect) = if post {
                        ("POST", &body[..], &want)
                    } else {
                        ("GET", &b""[..], &empty)
                    };
                    let r = tokio::time::timeout(
                        WAIT,
                        conn.request(method, &format!("/c{c}/{i}"), &[], sent),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("connection {c} request {i}: no answer in time"))
                    .unwrap_or_else(|e| panic!("connection {c} request {i}: {e}"));
                    assert_eq!(r.status, 200, "connection {c} request {i}");
                    assert_eq!(&r.text(), expect, "connection {c} request {i}: body");
                }
            })
        })
        .collect();
    for t in clients {
        t.await.expect("client");
    }
    assert_eq!(b.requests().len(), 200, "the backend's count");
}
