//! Streamed responses are not held back: an origin sends five Server-Sent Events in a
//! chunked body, each only once the client has seen the one before (the origin and the
//! client share a counter in this process). A proxy that holds events back makes the origin
//! wait in vain; after `HOLD` it sends on, and the test names the event that was stuck. So
//! the verdict does not depend on how loaded the machine is. Over plain HTTP/1.1, HTTPS
//! (whose TLS stream buffers writes), h2c and a cached route, on both engines.

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
/// How long the origin waits for the client to see an event before it sends the next anyway.
const HOLD: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

/// The response under way (one at a time): events written, events the client has seen, and
/// the events the origin had to send before the client saw the one before.
struct Progress {
    sent: Mutex<usize>,
    seen: tokio::sync::watch::Sender<usize>,
    forced: Mutex<Vec<usize>>,
}
type Sent = Arc<Progress>;

/// An origin answering every request with a chunked event stream, one event per chunk, each
/// after the client saw the previous one (or `HOLD` passed).
async fn sse_origin() -> (SocketAddr, Sent) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let sent: Sent = Arc::new(Progress {
        sent: Mutex::new(0),
        seen: tokio::sync::watch::channel(0).0,
        forced: Mutex::new(Vec::new()),
    });
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
                if let Ok(mut v) = log.sent.lock() {
                    *v = 0;
                }
                if let Ok(mut v) = log.forced.lock() {
                    v.clear();
                }
                log.seen.send_replace(0);
                let mut seen = log.seen.subscribe();
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..EVENTS {
                    if i > 0 {
                        let arrived = seen.wait_for(|n| *n >= i);
                        if tokio::time::timeout(HOLD, arrived).await.is_err() {
                            if let Ok(mut v) = log.forced.lock() {
                                v.push(i - 1);
                            }
                        }
                    }
                    let ev = format!("data: event-{i}\n\n");
                    let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                    if let Ok(mut v) = log.sent.lock() {
                        *v += 1;
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

/// The events found in a byte stream so far, told to the origin as they arrive.
struct Arrivals {
    seen: usize,
    buf: Vec<u8>,
    progress: Sent,
}

impl Arrivals {
    fn new(progress: &Sent) -> Arrivals {
        Arrivals {
            seen: 0,
            buf: Vec::new(),
            progress: progress.clone(),
        }
    }
    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        while self.seen < EVENTS {
            let want = format!("data: event-{}", self.seen);
            if !self.buf.windows(want.len()).any(|w| w == want.as_bytes()) {
                break;
            }
            self.seen += 1;
        }
        self.progress.seen.send_replace(self.seen);
    }
    fn done(&self) -> bool {
        self.seen == EVENTS
    }
}

/// Every event arrived, each before the origin had to give up waiting for it.
fn check(what: &str, a: &Arrivals, sent: &Sent, problems: &mut Vec<String>) {
    let written = sent.sent.lock().map(|v| *v).unwrap_or_default();
    if !a.done() || written != EVENTS {
        problems.push(format!(
            "{what}: {} of {EVENTS} events arrived, {written} sent: {:?}",
            a.seen,
            String::from_utf8_lossy(&a.buf)
        ));
        return;
    }
    let forced = sent.forced.lock().map(|v| v.clone()).unwrap_or_default();
    if !forced.is_empty() {
        problems.push(format!(
            "{what}: events held back: event(s) {forced:?} had not reached the client {} s after the origin wrote them",
            HOLD.as_secs()
        ));
    }
}

/// GET `path` over HTTP/1.1 on `s` and note event arrivals until the body ends.
async fn h1_events<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    sent: &Sent,
) -> Arrivals {
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n");
    let mut a = Arrivals::new(sent);
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

async fn h2_events(addr: SocketAddr, path: &str, sent: &Sent) -> Arrivals {
    let mut a = Arrivals::new(sent);
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
                Ok(s) => h1_events(s, path, &sent).await,
                Err(_) => Arrivals::new(&sent),
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
                Some(s) => h1_events(s, path, &sent).await,
                None => Arrivals::new(&sent),
            };
            check(
                &format!("https/1.1 {engine} {path}"),
                &a,
                &sent,
                &mut problems,
            );
        }
        for (engine, i) in [("lean", 4), ("general", 5)] {
            let a = h2_events(proxy.addr_of(i), path, &sent).await;
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
