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

use crate::support::client::find;
use crate::support::raw::read_until_close;
use crate::support::tcp::pattern;
use crate::support::{Conn, OriginBuilder, Proxy};
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

fn sha256_hex(b: &[u8]) -> String {
    crate::support::tcp::hex(&openssl::sha::sha256(b))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_is_byte_exact_but_for_its_trailers_and_both_connections_are_reused() {
    // Several chunks (one with an extension, one larger than the proxy's read buffer) and
    // trailer fields, written in pieces that split a chunk's data, a size line and the
    // trailers. The chunks pass byte for byte; the trailer fields do not pass (the policy
    // drops them on every engine), so the body ends `0\r\n\r\n`.
    let big = pattern(40_000);
    let mut body = b"5\r\nhello\r\n".to_vec();
    body.extend_from_slice(format!("{:x};name=value\r\n", big.len()).as_bytes());
    body.extend_from_slice(&big);
    body.extend_from_slice(b"\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n");
    let mut want = body.clone();
    want.extend_from_slice(b"0\r\n\r\n");
    body.extend_from_slice(b"0\r\nX-Checksum: 1234\r\nX-Other: yes\r\n\r\n");
    let sent = body.clone();
    let b = Scripted::start(move |_| {
        let split = sent.len() - 20;
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::Write(sent[..7].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[7..20_000].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[20_000..split].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[split..].to_vec()),
        ]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    for i in 1..=2 {
        s.write_all(format!("GET /chunked/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let (head, got) = head_and_body(&mut s, want.len()).await;
        assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "request {i}: {head}"
        );
        assert!(
            head.contains("\r\nx-kind: chunked\r\n"),
            "request {i}: {head}"
        );
        assert!(!head.contains("content-length"), "request {i}: {head}");
        assert!(!head.contains("connection: close"), "request {i}: {head}");
        assert_eq!(got.len(), want.len(), "request {i}: body length");
        assert!(got == want, "request {i}: body bytes differ");
    }
    let reqs = b.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].path(), "/chunked/1");
    assert_eq!(reqs[1].path(), "/chunked/2");
    assert_eq!(
        b.connections(),
        1,
        "backend saw {} connections for 2 requests on one client connection",
        b.connections()
    );
    assert!(reqs.iter().all(|r| r.conn == 1), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_is_rechunked_and_the_client_connection_kept() {
    let body = pattern(100_000);
    let sent = body.clone();
    let b = Scripted::start(move |_| {
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec(),
            ),
            Step::Write(sent[..30_000].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[30_000..].to_vec()),
            Step::Close,
        ]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    // The backend ends the body by closing; an HTTP/1.1 client gets it chunked, so its own
    // connection carries the next request (Pingora's path does the same).
    for i in 0..2 {
        let r = tokio::time::timeout(WAIT, c.get("/stream", &[]))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header("connection"),
            Some("keep-alive"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.body.len(), body.len(), "body length");
        assert!(r.body == body, "body bytes differ");
    }
    assert_eq!(b.requests().len(), 2);
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
async fn head_response_has_content_length_no_body_and_the_connection_is_reused() {
    let o = OriginBuilder::new("o")
        .on("/doc", &[("Content-Type", "text/plain")], "eleven char")
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    // The client helper reads no body after a HEAD: body bytes sent anyway would be taken
    // for the start of the next response, and that one would not parse.
    let r = tokio::time::timeout(WAIT, c.request("HEAD", "/doc", &[], b""))
        .await
        .expect("in time")
        .expect("response to HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("11"), "{:?}", r.headers);
    assert!(r.body.is_empty());
    assert_ne!(r.header("connection"), Some("close"));
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, c.get("/doc", &[]))
            .await
            .expect("in time")
            .expect("GET after HEAD on the same connection");
        assert_eq!((r.status, r.text().as_str()), (200, "eleven char"));
    }
    let methods: Vec<String> = o.recorded().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET", "GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_dropped_and_end_to_end_ones_kept() {
    let b = Scripted::start(|_| {
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\nCache-Control: max-age=7\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 2).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let fields: Vec<(&str, &str)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let has = |name: &str| fields.iter().any(|(k, _)| *k == name);
    assert!(
        !has("x-secret"),
        "nominated field reached the client: {head}"
    );
    assert!(!has("keep-alive"), "Keep-Alive reached the client: {head}");
    // a check that none names it: no Connection field at all rightly passes (the fields
    // themselves are there: the kept ones are checked below)
    assert!(
        !fields
            .iter()
            .any(|(k, v)| *k == "connection" && v.contains("x-secret")),
        "the backend's Connection field reached the client: {head}"
    );
    for (k, v) in [
        ("x-end", "kept"),
        ("cache-control", "max-age=7"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
    ] {
        assert!(fields.contains(&(k, v)), "{k}: {v} missing: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_response_is_never_completed_and_the_proxy_keeps_serving() {
    // /late: a good chunk, then (after the head went to the client) a bad chunk size.
    // /early: the bad size comes in the same write as the head.
    let b = Scripted::start(|g| {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        match g.path() {
            "/late" => {
                let mut first = head;
                first.extend_from_slice(b"5\r\nhello\r\n");
                vec![
                    Step::Write(first),
                    Step::Pause(Duration::from_millis(100)),
                    Step::Write(b"zz\r\nnot-a-chunk\r\n0\r\n\r\n".to_vec()),
                ]
            }
            "/early" => {
                let mut all = head;
                all.extend_from_slice(b"5\r\nhello\r\nzz\r\nnot-a-chunk\r\n0\r\n\r\n");
                vec![Step::Write(all)]
            }
            _ => vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine".to_vec(),
            )],
        }
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    for path in ["/late", "/early"] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let (got, closed) = read_until_close(&mut s, WAIT).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed, "{path}: client connection left open: {text:?}");
        assert!(
            !text.contains("not-a-chunk"),
            "{path}: bytes after the bad chunk size reached the client: {text:?}"
        );
        assert!(
            !got.ends_with(b"0\r\n\r\n"),
            "{path}: a broken chunked body was terminated as complete: {text:?}"
        );
        let status = text.get(9..12).unwrap_or_default();
        match path {
            // the head and the good chunk went out; the body is cut
            "/late" => {
                assert_eq!(status, "200", "{text:?}");
                assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n"), "{text:?}");
            }
            // nothing went out yet: a 502 page, or a cut 200
            _ => assert!(status == "502" || status == "200", "{path}: {text:?}"),
        }
        // the proxy still serves, on a new connection
        let r = tokio::time::timeout(WAIT, crate::support::client::get(p.addr, "/ok", &[]))
            .await
            .expect("in time")
            .expect("a request after the broken response");
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "after {path}");
    }
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
async fn http2_streams_get_decoded_chunked_bodies_joined_cookies_and_a_reused_backend() {
    let b = Scripted::start(|got| {
        if got.path() == "/chunked" {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
                    .to_vec(),
            )]
        } else {
            let body = format!("seen {}", got.body.len());
            vec![Step::Write(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Kind: length\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )]
        }
    })
    .await;
    // one runtime thread: idle backend connections are kept per thread
    let cfg = format!(
        "pingora:\n  threads: 1\n{}",
        config(b.addr).replace("protocol: http}", "protocol: http, h2c: true}")
    );
    let p = Proxy::start(&cfg);
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);

    let send = |path: &str, method: &str, body: Option<&'static [u8]>| {
        let c = client.clone();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://app.test{path}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .expect("request");
        async move {
            let mut c = c.ready().await.expect("ready");
            let (resp, mut tx) = c.send_request(req, body.is_none()).expect("send");
            if let Some(b) = body {
                tx.send_data(bytes::Bytes::from_static(b), true)
                    .expect("body");
            }
            let resp = tokio::time::timeout(WAIT, resp)
                .await
                .expect("in time")
                .expect("response");
            let kind = resp
                .headers()
                .get("x-kind")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let conn_hdr = resp.headers().contains_key("connection");
            let data = crate::support::client::h2_body(&mut resp.into_body())
                .await
                .expect("data");
            (kind, conn_hdr, String::from_utf8_lossy(&data).into_owned())
        }
    };
    // sequential: each stream's backend connection goes back to the pool before the next
    let (kind, conn_hdr, body) = send("/chunked", "GET", None).await;
    assert_eq!(kind.as_deref(), Some("chunked"));
    assert!(
        !conn_hdr,
        "a connection-specific field reached an HTTP/2 client"
    );
    assert_eq!(body, "hello, world", "chunked body not decoded");
    let (kind, _, body) = send("/length", "GET", None).await;
    assert_eq!((kind.as_deref(), body.as_str()), (Some("length"), "seen 0"));
    // a body makes the stream take Pingora's path; it still works on the same connection
    let (kind, _, body) = send("/post", "POST", Some(b"four")).await;
    assert_eq!((kind.as_deref(), body.as_str()), (Some("length"), "seen 4"));

    let reqs = b.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let head = reqs[0].head.to_ascii_lowercase();
    assert!(head.starts_with("get /chunked http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: app.test\r\n"), "{head}");
    assert!(
        head.contains("\r\ncookie: a=1; b=2\r\n"),
        "cookies not joined: {head}"
    );
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert_eq!(
        reqs[0].conn, reqs[1].conn,
        "the two fast-path streams did not share the pooled backend connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_other_upgrades_are_relayed_and_h2c_is_dropped() {
    let b = Scripted::start(|got| {
        if got.path() == "/refuse" {
            // a backend that does not take the upgrade answers as usual
            vec![Step::Write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec(),
            )]
        } else if got.head.to_ascii_lowercase().contains("\r\nupgrade: websocket\r\n") {
            let mut w = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n".to_vec();
            // a frame right behind the 101, in the same write
            w.extend_from_slice(b"server-first");
            vec![Step::Write(w)]
        } else {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain".to_vec(),
            )]
        }
    })
    .await;
    let p = Proxy::start(&config(b.addr));

    // an Upgrade to another protocol is relayed too; this backend declines it with a 200
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 5).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nconnection: close\r\n"),
        "a declined upgrade closes: {head}"
    );
    assert_eq!(body, b"plain");
    // h2c is an upgrade of this hop only: dropped, the backend sees a plain request
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 5).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"plain");

    // a refused handshake is an ordinary response
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /refuse HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 2).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert_eq!(body, b"no");

    // an accepted one: 101 with its fields, then the backend's first bytes through the tunnel
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut b1 = [0u8; 512];
    while find(&got, b"server-first").is_none() {
        let n = tokio::time::timeout(WAIT, s.read(&mut b1))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b1[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("\r\nupgrade: websocket\r\n"), "{text}");
    assert!(text.contains("\r\nsec-websocket-accept: x\r\n"), "{text}");

    let reqs = b.requests();
    let other = reqs.iter().find(|r| r.path() == "/other").expect("/other");
    let oh = other.head.to_ascii_lowercase();
    assert!(oh.contains("\r\nupgrade: foo/1\r\n"), "{oh}");
    assert!(oh.contains("\r\nconnection: upgrade\r\n"), "{oh}");
    let h2c = reqs.iter().find(|r| r.path() == "/h2c").expect("/h2c");
    let hh = h2c.head.to_ascii_lowercase();
    assert!(
        !hh.contains("upgrade") && !hh.contains("http2-settings"),
        "an h2c upgrade reached the backend: {hh}"
    );
    let ws = reqs.iter().find(|r| r.path() == "/ws").expect("/ws");
    let wh = ws.head.to_ascii_lowercase();
    assert!(wh.contains("\r\nconnection: upgrade\r\n"), "{wh}");
    assert!(wh.contains("\r\nsec-websocket-key: "), "{wh}");
    assert!(!wh.contains("keep-alive"), "{wh}");
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
