//! The HTTP/1 fast path (`src/http/fast.rs`) end to end: plain HTTP/1.1 requests for an
//! uncached route to a plain HTTP/1 backend are served by our own code, not Pingora's
//! HttpProxy, so the framing, keep-alive and hop-by-hop rules Pingora gave us for free are
//! checked here on real sockets: chunked (with trailers) and close-delimited response
//! bodies, pipelining, a large request body, HEAD, response hop-by-hop headers, a backend's
//! broken chunked framing, idle upstream connections the backend closed, and a request that
//! falls back to Pingora's path between fast-path ones on the same client connection.
//!
//! Backends whose exact response bytes matter are [`Scripted`]: each request it parses is
//! answered by steps the test writes (bytes, pauses, a close).

mod protocols;
mod requests;
mod responses;

use crate::support::client::find;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const WAIT: Duration = Duration::from_secs(5);

/// One plain http listener, one upstream over `backend`, one route without a cache: the
/// requests the fast path takes.
fn config(backend: SocketAddr) -> String {
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends:\n      - address: {backend}\nroutes:\n  - {{listener: web, upstream: app}}\n"
    )
}

// ---------------------------------------------------------------------------------------
// A backend answering with bytes the test writes
// ---------------------------------------------------------------------------------------

/// A request as the backend received it.
#[derive(Debug, Clone)]
struct Got {
    /// Which accepted connection it came on (1 for the first).
    conn: usize,
    head: String,
    /// The body, de-chunked when it came chunked.
    body: Vec<u8>,
}

impl Got {
    fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or_default()
    }
}

enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Close the connection (FIN), without having said `Connection: close`.
    Close,
}

type Answer = Arc<dyn Fn(&Got) -> Vec<Step> + Send + Sync>;

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: Mutex<Vec<Got>>,
}

struct Scripted {
    addr: SocketAddr,
    seen: Arc<Seen>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Scripted {
    async fn start(answer: impl Fn(&Got) -> Vec<Step> + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let answer: Answer = Arc::new(answer);
        let (st, ts) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let n = st.connections.fetch_add(1, SeqCst) + 1;
                let h = tokio::spawn(serve(s, n, answer.clone(), st.clone()));
                ts.lock().expect("tasks").push(h.abort_handle());
            }
        });
        tasks.lock().expect("tasks").push(accept.abort_handle());
        Scripted { addr, seen, tasks }
    }

    fn connections(&self) -> usize {
        self.seen.connections.load(SeqCst)
    }

    fn requests(&self) -> Vec<Got> {
        self.seen.requests.lock().expect("requests").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        for h in self.tasks.lock().expect("tasks").drain(..) {
            h.abort();
        }
    }
}

async fn serve(mut s: TcpStream, conn: usize, answer: Answer, seen: Arc<Seen>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(got) = read_request(&mut s, &mut buf, conn).await {
        let steps = answer(&got);
        seen.requests.lock().expect("requests").push(got);
        for step in steps {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Close => {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
    }
}

pub(crate) async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The end of the next line in `buf` (index of its CR), reading more as needed.
async fn line_end(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(p) = find(buf, b"\r\n") {
            return Some(p);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

/// One request: a head, then a body by Content-Length or chunks. `None` at EOF or on
/// anything that does not parse.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Got> {
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let field = |name: &str| {
        lower
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let mut body = Vec::new();
    if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let le = line_end(s, buf).await?;
            let line = String::from_utf8_lossy(&buf[..le]).into_owned();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..le + 2);
            if size == 0 {
                // trailer lines, up to the empty one
                loop {
                    let le = line_end(s, buf).await?;
                    buf.drain(..le + 2);
                    if le == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                if !fill(s, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().ok()?;
        while buf.len() < n {
            if !fill(s, buf).await {
                return None;
            }
        }
        body = buf.drain(..n).collect();
    }
    Some(Got { conn, head, body })
}

// ---------------------------------------------------------------------------------------
// Raw client helpers
// ---------------------------------------------------------------------------------------

/// Read a response head and at least `body_len` bytes after it. Returns the head
/// (lower-cased) and every byte read after it, so extra bytes show.
async fn head_and_body(s: &mut TcpStream, body_len: usize) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            if buf.len() >= p + 4 + body_len {
                let head = String::from_utf8_lossy(&buf[..p + 4]).to_ascii_lowercase();
                return (head, buf[p + 4..].to_vec());
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed after {} bytes: {:?}",
            buf.len(),
            String::from_utf8_lossy(&buf[..buf.len().min(400)])
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
