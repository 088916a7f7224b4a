//! Real HTTP/1.1 origins for the tests, in the style of linkerd2-proxy's test servers:
//! `OriginBuilder::new("a").delay(..).run().await`. Each counts the connections it accepted
//! and records every request head it received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct State {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub inflight: AtomicUsize,
    /// The most requests it ever had in flight at once.
    pub peak: AtomicUsize,
    pub health_status: AtomicU16,
    /// `/healthz` requests, and those of them that asked for `Connection: close`.
    pub health_checks: AtomicUsize,
    pub health_closes: AtomicUsize,
    pub dead: AtomicBool,
    pub recorded: Mutex<Vec<Recorded>>,
}

/// A canned answer for the paths that match it (exact, or a prefix when it ends with `*`).
#[derive(Clone, Debug, Default)]
pub struct PathResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Append the value of this request header to the body (to tell variants apart).
    pub echo_header: Option<String>,
    /// Send the body chunked instead of with Content-Length.
    pub chunked: bool,
}

#[derive(Clone)]
pub struct OriginBuilder {
    name: String,
    delay: Duration,
    status: u16,
    body: Option<Vec<u8>>,
    extra_headers: Vec<(String, String)>,
    paths: Vec<(String, PathResp)>,
}

impl OriginBuilder {
    pub fn new(name: &str) -> OriginBuilder {
        OriginBuilder {
            name: name.to_string(),
            delay: Duration::ZERO,
            status: 200,
            body: None,
            extra_headers: Vec::new(),
            paths: Vec::new(),
        }
    }
    /// Answer `path` (or every path starting with it, if it ends with `*`) with 200, these
    /// headers and this body. A response with an `ETag` answers a matching `If-None-Match`
    /// with 304. Every response carries `X-Seq: n`, the origin's request count.
    pub fn on(self, path: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        self.on_resp(
            path,
            PathResp {
                status: 200,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.into(),
                ..Default::default()
            },
        )
    }
    pub fn on_resp(mut self, path: &str, r: PathResp) -> Self {
        self.paths.push((path.to_string(), r));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(b.into());
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.extra_headers.push((k.to_string(), v.to_string()));
        self
    }

    pub async fn run(self) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(State::default());
        state.health_status.store(200, SeqCst);
        let b = Arc::new(self);
        let task = spawn_accept(listener, b.clone(), state.clone());
        Origin {
            addr,
            state,
            builder: b,
            task: Mutex::new(Some(task)),
        }
    }
}

pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    builder: Arc<OriginBuilder>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Origin {
    pub fn name(&self) -> &str {
        &self.builder.name
    }
    pub fn requests(&self) -> usize {
        self.state.requests.load(SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state
            .recorded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
    pub fn last(&self) -> Option<Recorded> {
        self.recorded().pop()
    }
    /// `/healthz` requests answered, and those that asked for `Connection: close`.
    pub fn health_checks(&self) -> (usize, usize) {
        (
            self.state.health_checks.load(SeqCst),
            self.state.health_closes.load(SeqCst),
        )
    }
    /// Status that `/healthz` answers with.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, SeqCst);
    }
    /// Close the listening socket and every open connection: the port refuses connections.
    pub fn stop(&self) {
        self.state.dead.store(true, SeqCst);
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
    /// [`Origin::stop`], then wait until connecting is refused: the listener is dropped by
    /// its aborted task, a moment later.
    pub async fn stop_refusing(&self) {
        self.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "origin {} still accepts after stop",
                self.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Listen again on the same address.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind origin");
        self.state.dead.store(false, SeqCst);
        let t = spawn_accept(listener, self.builder.clone(), self.state.clone());
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(t);
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_accept(listener: TcpListener, b: Arc<OriginBuilder>, state: Arc<State>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            state.connections.fetch_add(1, SeqCst);
            tokio::spawn(serve(s, b.clone(), state.clone()));
        }
    })
}

async fn serve(mut s: TcpStream, b: Arc<OriginBuilder>, state: Arc<State>) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = super::client::find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if state.dead.load(SeqCst) {
            return;
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let rl = lines.next().unwrap_or_default().to_string();
        let mut parts = rl.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        // body: content-length or chunked
        let mut body = Vec::new();
        if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < len {
                let mut chunk = [0u8; 65536];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            body.extend(buf.drain(..len));
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let Some(le) = super::client::find(&buf, b"\r\n") else {
                    let mut chunk = [0u8; 65536];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..le])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                if buf.len() < le + 2 + size + 2 {
                    let mut chunk = [0u8; 65536];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                }
                body.extend_from_slice(&buf[le + 2..le + 2 + size]);
                buf.drain(..le + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        let close = get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let upgrade = get("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let rec = Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body,
        };

        if path == "/healthz" {
            let st = state.health_status.load(SeqCst);
            state.health_checks.fetch_add(1, SeqCst);
            if close {
                state.health_closes.fetch_add(1, SeqCst);
            }
            let resp = format!("HTTP/1.1 {st} X\r\nContent-Length: 2\r\n\r\nok");
            if s.write_all(resp.as_bytes()).await.is_err() || close {
                return;
            }
            continue;
        }
        let seq = state.requests.fetch_add(1, SeqCst) + 1;
        if let Ok(mut r) = state.recorded.lock() {
            r.push(rec);
        }
        if upgrade {
            let key = get("sec-websocket-key").unwrap_or_default();
            let accept = websocket_accept(&key);
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            // echo everything from now on
            if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                return;
            }
            let mut chunk = [0u8; 8192];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let now = state.inflight.fetch_add(1, SeqCst) + 1;
        state.peak.fetch_max(now, SeqCst);
        if !b.delay.is_zero() {
            tokio::time::sleep(b.delay).await;
        }
        state.inflight.fetch_sub(1, SeqCst);
        let matched = b.paths.iter().find(|(p, _)| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => *p == path,
        });
        if let Some((_, pr)) = matched {
            let etag = pr
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
                .map(|(_, v)| v.clone());
            let not_modified = etag.is_some() && get("if-none-match") == etag;
            let status = if not_modified { 304 } else { pr.status };
            let mut body = pr.body.clone();
            if let Some(h) = &pr.echo_header {
                body.extend_from_slice(get(&h.to_ascii_lowercase()).unwrap_or_default().as_bytes());
            }
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\nX-Origin: {}\r\nX-Seq: {seq}\r\n",
                b.name
            );
            for (k, v) in &pr.headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            let send_body = !not_modified && method != "HEAD";
            if not_modified {
                // no body, no framing
            } else if pr.chunked {
                resp.push_str("Transfer-Encoding: chunked\r\n");
            } else {
                resp.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            if close {
                resp.push_str("Connection: close\r\n");
            }
            resp.push_str("\r\n");
            let mut out = resp.into_bytes();
            if send_body {
                if pr.chunked {
                    for c in body.chunks(16 << 10) {
                        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                        out.extend_from_slice(c);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                } else {
                    out.extend_from_slice(&body);
                }
            }
            if s.write_all(&out).await.is_err() || close {
                return;
            }
            continue;
        }
        let body = b
            .body
            .clone()
            .unwrap_or_else(|| b.name.clone().into_bytes());
        let mut resp = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nX-Origin: {}\r\n",
            b.status,
            body.len(),
            b.name
        );
        for (k, v) in &b.extra_headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            resp.push_str("Connection: close\r\n");
        }
        resp.push_str("\r\n");
        let mut out = resp.into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(&body);
        }
        if s.write_all(&out).await.is_err() || close {
            return;
        }
    }
}

fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let mut data = key.as_bytes().to_vec();
    data.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha1(&data))
}
