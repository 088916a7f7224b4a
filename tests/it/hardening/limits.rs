//! The listener's limits: request line, header size and count, body size, the header
//! deadline (slowloris), idle keep-alive connections, `max_connections` and the rate limit.

use super::{config, status_of, WAIT};
use crate::support::raw::{self, exchange, RawBackend, Reply};
use crate::support::{Conn, OriginBuilder, Proxy};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_header_size_and_count_limits_answer_414_and_431() {
    let b = RawBackend::start(Reply::Ok).await;
    let p = Proxy::start(&config(
        &[b.addr],
        "max_request_line: 1KiB, max_header_size: 4KiB, max_header_count: 10",
        "",
        "",
    ));
    let ok = |path: String, headers: String| {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
    };
    // under every limit: answered
    let (r, _) = exchange(
        p.addr,
        &ok(format!("/{}", "a".repeat(900)), "X-1: 1\r\n".repeat(8)),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status_of(&r), 200);
    assert_eq!(b.requests(), 1);

    let (r, closed) = exchange(
        p.addr,
        &ok(format!("/{}", "a".repeat(1100)), String::new()),
        WAIT,
    )
    .await;
    assert_eq!(status_of(&r), 414, "{}", String::from_utf8_lossy(&r));
    assert!(closed);

    let big = format!("X-Big: {}\r\n", "b".repeat(5000));
    let (r, closed) = exchange(p.addr, &ok("/".into(), big), WAIT).await;
    assert_eq!(status_of(&r), 431);
    assert!(closed);

    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    let (r, closed) = exchange(p.addr, &ok("/".into(), many), WAIT).await;
    assert_eq!(status_of(&r), 431);
    assert!(closed);

    assert_eq!(b.requests(), 1, "a refused head reached the backend");
    let log = p.log();
    assert!(log.contains("request line too long (414)"), "{log}");
    assert!(log.contains("too many header fields (431)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_route_limit_is_413_by_content_length_and_when_chunked() {
    let b = RawBackend::start(Reply::Ok).await;
    let p = Proxy::start(&config(&[b.addr], "", "", "max_body_size: 1KiB"));
    let body = vec![b'x'; 4096];
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c.request("POST", "/up", &[], &body).await.expect("answer");
    assert_eq!(r.status, 413);
    assert_eq!(b.requests(), 0, "the body was forwarded despite its length");

    // chunked: counted as it streams
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    let mut answered = Vec::new();
    for _ in 0..8 {
        let mut chunk = b"200\r\n".to_vec();
        chunk.extend(vec![b'y'; 512]);
        chunk.extend(b"\r\n");
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let (r, closed) = raw::read_until_close(&mut s, WAIT).await;
    answered.extend(r);
    assert_eq!(
        status_of(&answered),
        413,
        "{}",
        String::from_utf8_lossy(&answered)
    );
    assert!(closed);
    // The backend may have seen the head and the part of the body within the limit; the
    // piece that crossed the 1 KiB limit, and anything after it, is never forwarded.
    let raw = b.raw();
    let forwarded = raw.iter().filter(|&&c| c == b'y').count();
    assert!(
        forwarded <= 1024,
        "{forwarded} body bytes forwarded past the 1 KiB max_body_size"
    );
    assert!(!String::from_utf8_lossy(&raw).contains("\r\n0\r\n\r\n"));
    assert!(p.log().contains("exceeds max_body_size"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_deadline_while_others_are_served() {
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start(&config(&[o.addr], "header_timeout: 1s", "", ""));
    let addr = p.addr;

    // baseline latency of a normal client, for the report
    let mut normal = Conn::connect(addr).await.expect("connect");
    let mut idle = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(normal.get("/", &[]).await.expect("answer").status, 200);
        idle.push(t.elapsed());
    }

    // 50 clients trickle a header byte every 100 ms and never finish
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let start = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await
                .expect("first bytes");
            let mut got = Vec::new();
            loop {
                tokio::select! {
                    r = s.read_to_end(&mut got) => {
                        let _ = r;
                        return (start.elapsed(), got);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if s.write_all(b"a").await.is_err() {
                            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
                            return (start.elapsed(), got);
                        }
                        if start.elapsed() > Duration::from_secs(10) {
                            return (start.elapsed(), got);
                        }
                    }
                }
            }
        }));
    }
    // the normal client keeps getting answers meanwhile
    let mut loaded = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        assert_eq!(normal.get("/", &[]).await.expect("answer").status, 200);
        loaded.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in slow {
        let (held, got) = h.await.expect("slow client");
        assert!(
            held >= Duration::from_millis(900),
            "closed before the deadline: {held:?}"
        );
        assert!(held < Duration::from_secs(6), "held for {held:?}");
        assert_eq!(status_of(&got), 408, "{}", String::from_utf8_lossy(&got));
    }
    let p99 = |v: &mut Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    eprintln!(
        "slowloris: normal client p99 idle {:?}, with 50 slow clients {:?} ({} requests)",
        p99(&mut idle),
        p99(&mut loaded),
        loaded.len()
    );
    assert!(p.log().contains("header read deadline exceeded (408)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start(&config(&[o.addr], "keepalive_timeout: 1s", "", ""));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    for _ in 0..3 {
        assert_eq!(c.get("/", &[]).await.expect("answer").status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let t = Instant::now();
    assert!(c.closed_within(WAIT).await, "idle connection kept open");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_new_ones_and_leaves_existing_ones_alone() {
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start(&config(&[o.addr], "max_connections: 3", "", ""));
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::connect(p.addr).await.expect("connect");
        assert_eq!(c.get("/", &[]).await.expect("answer").status, 200);
        open.push(c);
    }
    for _ in 0..3 {
        let (r, closed) = exchange(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", WAIT).await;
        assert_eq!(status_of(&r), 503, "{}", String::from_utf8_lossy(&r));
        assert!(closed);
    }
    for c in &mut open {
        assert_eq!(c.get("/", &[]).await.expect("still served").status, 200);
    }
    assert_eq!(o.requests(), 6);
    // a slot freed is a slot for someone else
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let (r, _) = exchange(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        if status_of(&r) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.log().contains("max_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_ip_answers_429_with_retry_after() {
    let b = RawBackend::start(Reply::Ok).await;
    let p = Proxy::start(&config(&[b.addr], "rate_limit_per_ip: 5", "", ""));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let (mut ok, mut limited) = (0, 0);
    for i in 0..30 {
        let r = c.get("/", &[]).await.expect("answer");
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            s => panic!("request {i}: status {s}"),
        }
    }
    assert!(limited >= 10, "only {limited} of 30 limited");
    assert!(ok >= 5, "{ok}");
    assert_eq!(b.requests(), ok, "a limited request reached the backend");
    assert!(p.log().contains("rate limit exceeded"));
}
