//! Streamed responses are not held back: an origin sends five Server-Sent Events 200 ms
//! apart in a chunked body, and the client notes when each arrives. Over plain HTTP/1.1,
//! HTTPS (whose TLS stream buffers writes), h2c and a cached route, on both engines, the
//! events must arrive spread out as they were sent, not all together at the end.

use crate::support::pki::Ca;
use crate::support::{scratch_dir, Proxy};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EVENTS: usize = 5;
const GAP: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(10);

/// When the origin wrote each event of the response under way (one at a time).
type Sent = Arc<Mutex<Vec<Instant>>>;

/// An origin answering every request with a chunked event stream, one event per chunk,
/// `GAP` apart, noting when it wrote each.
async fn sse_origin() -> (SocketAddr, Sent) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let sent: Sent = Arc::default();
    let log = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                }
                if let Ok(mut v) = log.lock() {
                    v.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..EVENTS {
                    if i > 0 {
                        tokio::time::sleep(GAP).await;
                    }
                    let ev = format!("data: event-{i}\n\n");
                    let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                    if let Ok(mut v) = log.lock() {
                        v.push(Instant::now());
                    }
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, sent)
}

/// The arrival times of the events in a byte stream, as they are found in it.
struct Arrivals {
    seen: Vec<Instant>,
    buf: Vec<u8>,
}

impl Arrivals {
    fn new() -> Arrivals {
        Arrivals {
            seen: Vec::new(),
            buf: Vec::new(),
        }
    }
    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let now = Instant::now();
        while self.seen.len() < EVENTS {
            let want = format!("data: event-{}", self.seen.len());
            if !self.buf.windows(want.len()).any(|w| w == want.as_bytes()) {
                break;
            }
            self.seen.push(now);
        }
    }
    fn done(&self) -> bool {
        self.seen.len() == EVENTS
    }
}

/// Each event arrived within 150 ms of the origin writing it (held back, the first ones
/// would arrive with the last, 800 ms later).
fn check(what: &str, a: &Arrivals, sent: &Sent, problems: &mut Vec<String>) {
    let sent = sent.lock().map(|v| v.clone()).unwrap_or_default();
    if !a.done() || sent.len() != EVENTS {
        problems.push(format!(
            "{what}: {} of {EVENTS} events arrived, {} sent: {:?}",
            a.seen.len(),
            sent.len(),
            String::from_utf8_lossy(&a.buf)
        ));
        return;
    }
    let late: Vec<u128> = a
        .seen
        .iter()
        .zip(&sent)
        .map(|(got, put)| got.saturating_duration_since(*put).as_millis())
        .collect();
    if late.iter().any(|ms| *ms > 150) {
        problems.push(format!(
            "{what}: events held back; ms from send to arrival: {late:?} (sent {} ms apart)",
            GAP.as_millis()
        ));
    }
}

/// GET `path` over HTTP/1.1 on `s` and note event arrivals until the body ends.
async fn h1_events<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, path: &str) -> Arrivals {
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n");
    let mut a = Arrivals::new();
    if s.write_all(req.as_bytes()).await.is_err() {
        return a;
    }
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !a.done() && Instant::now() < deadline {
        match tokio::time::timeout(WAIT, s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => a.feed(&b[..n]),
            _ => break,
        }
    }
    a
}

async fn h2_events(addr: SocketAddr, path: &str) -> Arrivals {
    let mut a = Arrivals::new();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return a;
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return a;
    };
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(format!("http://app.test{path}"))
        .body(())
        .expect("request");
    if let Ok(mut c) = client.ready().await {
        if let Ok((resp, _)) = c.send_request(req, true) {
            if let Ok(Ok(resp)) = tokio::time::timeout(WAIT, resp).await {
                let mut body = resp.into_body();
                while let Ok(Some(Ok(d))) = tokio::time::timeout(WAIT, body.data()).await {
                    let _ = body.flow_control().release_capacity(d.len());
                    a.feed(&d);
                    if a.done() {
                        break;
                    }
                }
            }
        }
    }
    task.abort();
    a
}

async fn tls(addr: SocketAddr) -> Option<tokio_openssl::SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x08http/1.1").ok()?;
    let ssl = b.build().configure().ok()?.into_ssl("app.test").ok()?;
    let tcp = TcpStream::connect(addr).await.ok()?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).ok()?;
    Pin::new(&mut s).connect().await.ok()?;
    Some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_arrive_as_sent_on_every_listener_kind_and_engine() {
    let (origin, sent) = sse_origin().await;
    let dir = scratch_dir("streaming");
    let ca = Ca::new("Stepstone Test CA");
    let (cert, key) = ca.server("app.test", &["app.test"], 2).write(&dir, "app");
    let (c, k) = (cert.display(), key.display());
    let mut routes = String::new();
    for l in ["http", "http_g", "tls", "tls_g", "h2c", "h2c_g"] {
        routes.push_str(&format!(
            "  - {{listener: {l}, upstream: app}}\n  - {{listener: {l}, path_prefix: /cached, upstream: app, cache: {{enabled: true}}}}\n"
        ));
    }
    let tls_l = |name: &str, port: &str, extra: &str| {
        format!("  - name: {name}\n    address: 127.0.0.1:{{{{{port}}}}}\n    protocol: https\n{extra}    tls:\n      certificates:\n        - {{cert: {c}, key: {k}}}\n")
    };
    let cfg = format!(
        "listeners:
  - {{name: http, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
  - {{name: http_g, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}
{}{}  - {{name: h2c, address: 127.0.0.1:{{{{port4}}}}, protocol: http, h2c: true}}
  - {{name: h2c_g, address: 127.0.0.1:{{{{port5}}}}, protocol: http, h2c: true, fast_path: false}}
upstreams:
  - name: app
    backends: [{{address: {origin}}}]
    retries: 0
routes:
{routes}",
        tls_l("tls", "port2", ""),
        tls_l("tls_g", "port3", "    fast_path: false\n"),
    );
    let proxy = Proxy::start(&cfg);
    let mut problems = Vec::new();
    for path in ["/events", "/cached/events"] {
        for (engine, i) in [("lean", 0), ("general", 1)] {
            let a = match TcpStream::connect(proxy.addr_of(i)).await {
                Ok(s) => h1_events(s, path).await,
                Err(_) => Arrivals::new(),
            };
            check(
                &format!("http/1.1 {engine} {path}"),
                &a,
                &sent,
                &mut problems,
            );
        }
        for (engine, i) in [("lean", 2), ("general", 3)] {
            let a = match tls(proxy.addr_of(i)).await {
                Some(s) => h1_events(s, path).await,
                None => Arrivals::new(),
            };
            check(
                &format!("https/1.1 {engine} {path}"),
                &a,
                &sent,
                &mut problems,
            );
        }
        for (engine, i) in [("lean", 4), ("general", 5)] {
            let a = h2_events(proxy.addr_of(i), path).await;
            check(&format!("h2c {engine} {path}"), &a, &sent, &mut problems);
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- proxy log ---\n{}",
        problems.join("\n"),
        proxy.log()
    );
}
