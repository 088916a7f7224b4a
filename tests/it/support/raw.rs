//! A raw HTTP/1.1 backend for the hardening tests, and raw-socket helpers.
//!
//! [`RawBackend`] keeps every byte it receives, parses requests strictly (a head ends at
//! CRLF CRLF; the body is framed by Content-Length or by chunks with plain hex sizes) and
//! counts every request head it parses, so a test can say exactly how many requests crossed
//! the proxy and what bytes reached the backend. Anything it cannot parse closes that
//! connection. Its [`Reply`] picks the answer, including the broken ones of the faults table.
//! [`RawBackend::kill`] drops the listener and every open connection at once, as the kernel
//! does for a killed process.

use super::client::find;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 with `Content-Length` and the body `ok`, keep-alive.
    Ok,
    /// Read the request and never answer; keep the connection open.
    Silent,
    /// A response head that is not HTTP.
    Malformed,
    /// Promise [`CUT_TOTAL`] bytes (by Content-Length, or chunked), send [`CUT_SENT`] of them,
    /// then reset the connection.
    CutBody { chunked: bool },
    /// Answer the first request on each connection (keep-alive); on a later one, close
    /// without answering, as a backend that timed the idle connection out at that moment.
    StaleKeepAlive,
}

pub const CUT_TOTAL: usize = 100_000;
pub const CUT_SENT: usize = 1000;

#[derive(Default)]
pub struct RawState {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    /// Requests read and not yet answered.
    pub inflight: AtomicUsize,
    /// Every byte received, over all connections, in arrival order per read.
    pub raw: Mutex<Vec<u8>>,
    /// Each request head, as received.
    pub heads: Mutex<Vec<String>>,
}

pub struct RawBackend {
    pub addr: SocketAddr,
    pub state: Arc<RawState>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl RawBackend {
    pub async fn start(reply: Reply) -> RawBackend {
        Self::start_with(reply, Duration::ZERO).await
    }

    /// `delay`: time between reading a request and answering it.
    pub async fn start_with(reply: Reply, delay: Duration) -> RawBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(RawState::default());
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (st, ts) = (state.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, SeqCst);
                let h = tokio::spawn(serve(s, reply, delay, st.clone()));
                if let Ok(mut t) = ts.lock() {
                    t.push(h.abort_handle());
                }
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(accept.abort_handle());
        }
        RawBackend { addr, state, tasks }
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }
    pub fn inflight(&self) -> usize {
        self.state.inflight.load(SeqCst)
    }
    pub fn raw(&self) -> Vec<u8> {
        self.state.raw.lock().map(|r| r.clone()).unwrap_or_default()
    }
    pub fn raw_lossy_lower(&self) -> String {
        String::from_utf8_lossy(&self.raw()).to_ascii_lowercase()
    }
    pub fn heads(&self) -> Vec<String> {
        self.state
            .heads
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Close the listener and every connection, now.
    pub fn kill(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, st: &RawState) -> bool {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            if let Ok(mut r) = st.raw.lock() {
                r.extend_from_slice(&chunk[..n]);
            }
            true
        }
    }
}

/// Read one chunked body; false when it is malformed or the connection ends.
async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, st: &RawState) -> bool {
    loop {
        let Some(le) = find(buf, b"\r\n") else {
            if !read_more(s, buf, st).await {
                return false;
            }
            continue;
        };
        let line = &buf[..le];
        let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
        if size_part.is_empty()
            || size_part.len() > 15
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return false;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_part).unwrap_or("x"), 16)
            .unwrap_or(usize::MAX);
        if size == usize::MAX {
            return false;
        }
        if size == 0 {
            // trailers, then the empty line
            loop {
                if let Some(p) = find(&buf[le..], b"\r\n\r\n") {
                    buf.drain(..le + p + 4);
                    return true;
                }
                if !read_more(s, buf, st).await {
                    return false;
                }
            }
        }
        while buf.len() < le + 2 + size + 2 {
            if !read_more(s, buf, st).await {
                return false;
            }
        }
        if &buf[le + 2 + size..le + 2 + size + 2] != b"\r\n" {
            return false;
        }
        buf.drain(..le + 2 + size + 2);
    }
}

async fn serve(mut s: TcpStream, reply: Reply, delay: Duration, st: Arc<RawState>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut on_conn = 0usize;
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if !read_more(&mut s, &mut buf, &st).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        st.requests.fetch_add(1, SeqCst);
        on_conn += 1;
        if let Ok(mut h) = st.heads.lock() {
            h.push(head.clone());
        }
        let lower = head.to_ascii_lowercase();
        let field = |name: &str| {
            lower
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
                .collect::<Vec<_>>()
        };
        let te = field("transfer-encoding");
        let cl = field("content-length");
        if !te.is_empty() {
            if te.len() != 1 || te[0] != "chunked" || !cl.is_empty() {
                return;
            }
            if !read_chunked(&mut s, &mut buf, &st).await {
                return;
            }
        } else if !cl.is_empty() {
            let Some(n) = cl[0].parse::<usize>().ok().filter(|_| cl.len() == 1) else {
                return;
            };
            while buf.len() < n {
                if !read_more(&mut s, &mut buf, &st).await {
                    return;
                }
            }
            buf.drain(..n);
        }
        st.inflight.fetch_add(1, SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let out: Vec<u8> = match reply {
            Reply::Ok => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            Reply::StaleKeepAlive if on_conn == 1 => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
            Reply::StaleKeepAlive => {
                st.inflight.fetch_sub(1, SeqCst);
                return;
            }
            Reply::Silent => {
                // hold the connection until the peer goes away
                while read_more(&mut s, &mut buf, &st).await {}
                st.inflight.fetch_sub(1, SeqCst);
                return;
            }
            Reply::Malformed => b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\nok".to_vec(),
            Reply::CutBody { chunked } => {
                let mut o = if chunked {
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{CUT_SENT:x}\r\n")
                        .into_bytes()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {CUT_TOTAL}\r\n\r\n").into_bytes()
                };
                o.extend(super::tcp::pattern(CUT_SENT));
                let _ = s.write_all(&o).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // a zero linger resets instead of closing, and so never blocks on drop
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                st.inflight.fetch_sub(1, SeqCst);
                return;
            }
        };
        st.inflight.fetch_sub(1, SeqCst);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Send raw bytes on a new connection, then read everything until the proxy closes the
/// connection or `wait` passes. Returns (bytes read, closed by the proxy).
pub async fn exchange(addr: SocketAddr, raw: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("send");
    read_until_close(&mut s, wait).await
}

pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Status codes of the responses in `bytes`, in order (status lines only).
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The framing of the first chunked body in `raw` (a backend's input): each size line as
/// sent, the data, and the bytes after the last chunk's size line.
pub fn chunked_body(raw: &[u8]) -> Option<(Vec<String>, Vec<u8>, Vec<u8>)> {
    let start = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut p = start;
    let (mut lines, mut data) = (Vec::new(), Vec::new());
    loop {
        let le = p + raw[p..].windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8(raw[p..le].to_vec()).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?, 16).ok()?;
        lines.push(line);
        p = le + 2;
        if size == 0 {
            return Some((lines, data, raw[p..].to_vec()));
        }
        data.extend_from_slice(raw.get(p..p + size)?);
        p += size + 2;
    }
}
