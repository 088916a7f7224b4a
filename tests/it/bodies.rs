//! Bodies on the lean engine with `splice: true`: a Content-Length body, request or
//! response, with at least 16 KiB left after its head's read, between a plain client socket
//! and the backend, goes from one socket into a pipe and on to the other with splice(2),
//! never through the process's buffers. What it must keep: the body byte-exact, its end (a
//! pipelined request after it is the next request, not body; a response's connections
//! kept), `client_timeout` on a stalled body, a backend connection that got a partial body
//! never reused, a response the backend cuts short cut for the client too, and the copy
//! where no pipe can be made. `stepstone_spliced_bytes_total` shows that the bytes took
//! that way.

use crate::support::client::get;
use crate::support::quic::{metric, metrics};
use crate::support::raw::read_until_close;
use crate::support::tcp::pattern;
use crate::support::{OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const SPLICED: &str = "stepstone_spliced_bytes_total ";

/// A plain http listener (lean engine) with `splice: true` and `client_timeout: 1s`, the
/// admin listener (port 1), one upstream.
fn config(backend: SocketAddr) -> String {
    format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, limits: {{client_timeout: 1s}}, splice: true}}\nupstreams:\n  - name: app\n    backends: [{{address: {backend}}}]\n    retries: 0\n    read_timeout: 30s\nroutes:\n  - {{listener: web, upstream: app}}\n"
    )
}

fn post(path: &str, len: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

fn sha(b: &[u8]) -> String {
    crate::support::tcp::hex(&openssl::sha::sha256(b))
}

/// Read responses until `n` complete ones (each with a Content-Length body) are in; their
/// status codes and bodies, in order.
async fn responses(s: &mut TcpStream, n: usize) -> Vec<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    while out.len() < n {
        if let Some(p) = crate::support::client::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .unwrap_or(0);
            if buf.len() >= p + 4 + len {
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
                let status = status.unwrap_or_else(|| panic!("a status line: {head:?}"));
                out.push((status, buf[p + 4..p + 4 + len].to_vec()));
                buf.drain(..p + 4 + len);
                continue;
            }
        }
        let r = tokio::time::timeout(WAIT, s.read(&mut chunk)).await;
        let got = r.expect("responses in time").expect("read");
        assert!(got > 0, "closed after {} of {n} responses", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_spliced_byte_exact_and_a_pipelined_request_after_one_is_kept() {
    let o = OriginBuilder::new("o")
        .on("/small", &[], "small")
        .on("/big", &[], "big")
        .on("/next", &[], "next")
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let before = metric(&metrics(&p).await, SPLICED);

    // Below 16 KiB a body is copied: one write with its head is cheaper than a pipe.
    let small = pattern(10 << 10);
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut req = post("/small", small.len());
    req.extend_from_slice(&small);
    s.write_all(&req).await.expect("send");
    let r = responses(&mut s, 1).await;
    assert_eq!(r[0].0, 200);
    let after_small = metric(&metrics(&p).await, SPLICED);
    assert_eq!(after_small, before, "a 10 KiB body was spliced");

    // A 200 KiB body and a GET after it, in one write.
    let big = pattern(200 << 10);
    let mut req = post("/big", big.len());
    req.extend_from_slice(&big);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(&req).await.expect("send");
    let r = responses(&mut s, 2).await;
    let got: Vec<_> = r
        .iter()
        .map(|(st, b)| (*st, String::from_utf8_lossy(b).into_owned()))
        .collect();
    assert_eq!(
        got,
        [(200, "big".into()), (200, "next".into())],
        "both answers, in order, on the client connection"
    );

    let rec = o.recorded();
    let paths: Vec<_> = rec.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/small", "/big", "/next"],
        "requests at the backend"
    );
    assert_eq!(sha(&rec[0].body), sha(&small), "the small body");
    assert_eq!(
        rec[1].body.len(),
        big.len(),
        "the big body's length at the backend"
    );
    assert_eq!(sha(&rec[1].body), sha(&big), "the big body's SHA-256");
    assert!(
        rec[2].body.is_empty(),
        "the GET got bytes of the body before it"
    );

    // What the head's read took with it was copied; the rest (all but a few KiB) spliced.
    let spliced = metric(&metrics(&p).await, SPLICED) - after_small;
    let (lo, hi) = ((big.len() - (16 << 10)) as f64, big.len() as f64);
    assert!(
        (lo..=hi).contains(&spliced),
        "{spliced} bytes spliced of a {hi} byte body (expected at least {lo})"
    );

    // Without `splice: true` the same body is copied.
    let plain = Proxy::start(&config(o.addr).replace(", splice: true", ""));
    let mut s = TcpStream::connect(plain.addr).await.expect("connect");
    let mut req = post("/big", big.len());
    req.extend_from_slice(&big);
    s.write_all(&req).await.expect("send");
    let r = responses(&mut s, 1).await;
    assert_eq!(r[0].0, 200);
    assert_eq!(sha(&o.last().expect("request").body), sha(&big));
    let none = metric(&metrics(&plain).await, SPLICED);
    assert_eq!(none, 0.0, "bytes spliced without `splice: true`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_in_pieces_is_spliced_whole() {
    let o = OriginBuilder::new("o").on("/up", &[], "stored").run().await;
    let p = Proxy::start(&config(o.addr));
    let before = metric(&metrics(&p).await, SPLICED);
    let body = pattern(100 << 10);
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(&post("/up", body.len())).await.expect("head");
    // The proxy waits for each piece, the backend gets them as they come.
    for piece in body.chunks(10 << 10) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(piece).await.expect("piece");
    }
    let r = responses(&mut s, 1).await;
    assert_eq!((r[0].0, r[0].1.as_slice()), (200, &b"stored"[..]));
    let got = o.last().expect("the backend got the request");
    assert_eq!(got.body.len(), body.len(), "body length at the backend");
    assert_eq!(sha(&got.body), sha(&body), "body SHA-256");
    let spliced = metric(&metrics(&p).await, SPLICED) - before;
    assert_eq!(
        spliced,
        body.len() as f64,
        "the whole body, sent after its head, spliced"
    );
}

/// Send a head promising 100,000 body bytes, `sent` of them, then stall (or close, with
/// `close`). The proxy's answer and how long it took to close the connection.
async fn cut_body(addr: SocketAddr, sent: usize, close: bool) -> (Vec<u8>, Option<Duration>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut req = post("/up", 100_000);
    req.extend_from_slice(&pattern(sent));
    s.write_all(&req).await.expect("send");
    if close {
        s.shutdown().await.expect("shutdown");
    }
    let t0 = Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(8)).await;
    (out, closed.then(|| t0.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_body_that_stalls_gets_408_and_its_backend_connection_is_not_reused() {
    let o = OriginBuilder::new("o").on("/next", &[], "next").run().await;
    let p = Proxy::start(&config(o.addr));
    let (out, took) = cut_body(p.addr, 40_000, false).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(
        out.starts_with("HTTP/1.1 408 "),
        "answered {out:?}, not 408"
    );
    let took = took.expect("the proxy closed the stalled connection");
    assert!(
        took >= Duration::from_millis(800) && took <= WAIT,
        "closed {took:?} after the body stalled, not within 0.8s..5s (client_timeout 1s)"
    );
    next_on_a_new_backend_connection(&p, &o).await;
}

/// After a request whose body was cut: the backend never saw a whole request, and the
/// backend connection that holds part of a body is not reused for the next request.
async fn next_on_a_new_backend_connection(p: &Proxy, o: &crate::support::Origin) {
    assert_eq!(o.requests(), 0, "the backend saw a whole request");
    let r = get(p.addr, "/next", &[]).await.expect("next request");
    assert_eq!((r.status, r.text().as_str()), (200, "next"));
    assert_eq!(
        o.connections(),
        2,
        "the cut request's backend connection was reused"
    );
    assert_eq!(o.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_mid_body_leaves_the_proxy_serving() {
    let o = OriginBuilder::new("o").on("/next", &[], "next").run().await;
    let p = Proxy::start(&config(o.addr));
    let (out, took) = cut_body(p.addr, 60_000, true).await;
    assert!(took.is_some(), "the proxy kept a half-sent request open");
    assert!(
        out.is_empty(),
        "answered a client that went away: {:?}",
        String::from_utf8_lossy(&out)
    );
    next_on_a_new_backend_connection(&p, &o).await;
}

/// With the open-file limit reached, a body that cannot have a pipe is copied through a
/// buffer (logged once) and arrives whole: the proxy runs with a limit of 128 descriptors,
/// filled by idle client connections until two are free, which the test's connection and
/// its backend connection take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_copied_when_no_pipe_can_be_made() {
    const LIMIT: usize = 128;
    let o = OriginBuilder::new("o").on("/up", &[], "stored").run().await;
    let dir = crate::support::scratch_dir("nopipe-http");
    let pingora = format!(
        "pingora:\n  threads: 1\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  max_open_files: {LIMIT}\n",
        d = dir.display()
    );
    // accepted at once, silent as they are (no TCP_DEFER_ACCEPT hold)
    let cfg = config(o.addr).replace("splice: true", "splice: true, defer_accept: false");
    let p = Proxy::start_with_nofile(&format!("{pingora}{cfg}"), LIMIT as u64);
    let pid = p.child.id();
    let idle = crate::support::proxy::fill_fds(pid, LIMIT, p.addr, 2).await;
    assert!(!idle.is_empty(), "nothing filled the descriptor table");

    let body = pattern(200 << 10);
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut req = post("/up", body.len());
    req.extend_from_slice(&body);
    s.write_all(&req).await.expect("send");
    let r = responses(&mut s, 1).await;
    assert_eq!(
        (r[0].0, r[0].1.as_slice()),
        (200, &b"stored"[..]),
        "{}",
        p.log()
    );
    let got = o.last().expect("the backend got the request");
    assert_eq!(sha(&got.body), sha(&body), "body SHA-256");
    assert!(
        p.log().contains("no pipe for splice(2)"),
        "the fallback was never needed (or not logged)\n{}",
        p.log()
    );
    drop((s, idle));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spliced = metric(&metrics(&p).await, SPLICED);
    assert_eq!(spliced, 0.0, "bytes spliced without a pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_are_spliced_byte_exact_and_both_connections_are_kept() {
    let big = pattern(300 << 10);
    let o = OriginBuilder::new("o")
        .on("/big", &[], big.clone())
        .on("/small", &[], pattern(8 << 10))
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let before = metric(&metrics(&p).await, SPLICED);
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    for i in 0..2 {
        s.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("send");
        let r = responses(&mut s, 1).await;
        assert_eq!(r[0].0, 200, "response {i}");
        assert_eq!(r[0].1.len(), big.len(), "response {i}'s length");
        assert_eq!(sha(&r[0].1), sha(&big), "response {i}'s SHA-256");
    }
    s.write_all(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let r = responses(&mut s, 1).await;
    assert_eq!((r[0].0, r[0].1.len()), (200, 8 << 10), "the small response");
    assert_eq!(o.requests(), 3);
    assert_eq!(o.connections(), 1, "the backend connection was not kept");

    // what came with each head was copied, the rest spliced; the small one not at all
    let spliced = metric(&metrics(&p).await, SPLICED) - before;
    let (lo, hi) = (
        (2 * (big.len() - (64 << 10))) as f64,
        (2 * big.len()) as f64,
    );
    assert!(
        (lo..=hi).contains(&spliced),
        "{spliced} bytes spliced of two {} byte responses (expected at least {lo})",
        big.len()
    );
}

/// A backend that answers every connection with a head promising 200,000 bytes, sends
/// 100,000 of them and closes.
async fn cutting_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while crate::support::client::find(&got, b"\r\n\r\n").is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
                out.extend_from_slice(&pattern(100_000));
                let _ = s.write_all(&out).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_response_the_backend_cuts_short_is_cut_for_the_client() {
    let p = Proxy::start(&config(cutting_backend().await));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(8)).await;
    assert!(
        closed,
        "the client connection stayed open after a cut response"
    );
    let head_end = crate::support::client::find(&out, b"\r\n\r\n").expect("a response head") + 4;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out[..head_end])
    );
    assert_eq!(
        out.len() - head_end,
        100_000,
        "the body bytes the backend sent, and no more"
    );
}
