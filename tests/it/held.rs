//! Memory held while a connection waits: a request waiting for its backend's answer, an
//! upload whose body has gone on, a streamed answer between its pieces, an upgraded
//! (WebSocket) connection with nothing to relay. Each test holds a few hundred such
//! connections against a real backend, checks the proxy's RSS per connection (before this
//! was built each held a buffer through the wait, 12.6 to 243 KB), and then that every one
//! of them is still served.

use crate::fast::fill;
use crate::support::client::find;
use crate::support::raw::read_until_close;
use crate::support::{Conn, Proxy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

/// One plain http listener and one upstream over `backend` (the fast path's requests). The
/// tests open hundreds of backend connections at once from a loaded test process, whose
/// accepts may lag: a connect is given 10 s, not the default 1 s (CI, 2026-12-07: six of
/// 600 timed out).
fn config(backend: SocketAddr) -> String {
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    connect_timeout: 10s\n    backends:\n      - address: {backend}\nroutes:\n  - {{listener: web, upstream: app}}\n"
    )
}

/// A backend that reads each request head, answers with `first` at once and with `rest` only
/// once `release` says so; the count of heads it has read.
async fn held_backend(
    first: &'static [u8],
    rest: &'static [u8],
) -> (
    SocketAddr,
    tokio::sync::watch::Sender<bool>,
    Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release, released) = tokio::sync::watch::channel(false);
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (counted, mut released) = (counted.clone(), released.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        if !fill(&mut s, &mut buf).await {
                            return;
                        }
                        continue;
                    };
                    // a body stays unread: each connection here carries one request
                    buf.drain(..end + 4);
                    if s.write_all(first).await.is_err() {
                        return;
                    }
                    counted.fetch_add(1, SeqCst);
                    if released.wait_for(|r| *r).await.is_err() {
                        return;
                    }
                    if s.write_all(rest).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, release, heads)
}

const HELD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld";

/// `n` requests (`request`, each on its own connection) held by [`held_backend`] (answering
/// `first`, then `rest`) until all have reached it: the proxy's RSS they take each, checked
/// against `bound` KiB; then all released, and each answered in full: `ends` ends the answer.
async fn held_requests_take_under(
    request: &[u8],
    (first, rest, ends): (&'static [u8], &'static [u8], &str),
    n: usize,
    bound: f64,
    what: &str,
) {
    let (backend, release, heads) = held_backend(first, rest).await;
    let p = Proxy::start(&config(backend));
    let pid = p.child.id();
    // warm: one-time allocations (route tables, pools) come before the baseline
    release.send_replace(true);
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c.get("/warm", &[]).await.expect("the warm-up request");
    assert_eq!(r.status, 200, "{}", p.log());
    drop(c);
    release.send_replace(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = crate::support::proxy::rss_kib(pid);

    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        held.push(s);
    }
    let deadline = std::time::Instant::now() + 2 * WAIT;
    while heads.load(SeqCst) < n + 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached = heads.load(SeqCst) - 1;
    assert_eq!(reached, n, "{what} waiting at the backend:\n{}", p.log());
    crate::support::proxy::assert_rss_per_conn(pid, rss0, n, bound, what).await;

    release.send_replace(true);
    for s in held.iter_mut() {
        let (out, closed) = read_until_close(s, WAIT).await;
        let text = String::from_utf8_lossy(&out);
        assert!(closed, "the connection stayed open after: {text}");
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with(ends),
            "the answer to one of the {what}: {text}"
        );
    }
}

/// A request waiting for its backend's answer holds no response buffer (made when the
/// answer is there to read) and not its head's 4 KiB buffer (the few fields still needed
/// are copied out of it). Each held its 16 KiB response buffer's first page through the
/// wait at first: 12.7 KiB of RSS a request here; 8.7 with the head's buffer alone, 5.2
/// without it (the two sockets, the task and its future).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_their_backend_hold_no_response_or_head_buffer() {
    let get = b"GET /held HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let answer = (&b""[..], HELD, "held");
    held_requests_take_under(get, answer, 600, 7.0, "GETs in flight").await;
}

/// An upload's body, sent on to the backend, is not held while the answer is awaited: it is
/// never sent twice (the fast path streams it; a body a retry may resend is read whole
/// first), so its buffer is given back once sent, and so is the upstream request's head
/// with the body bytes that came with it (81.7 KiB an upload here at first, then 14.2 with
/// the head and those bytes, 11.1 with them alone, 7.0 now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_waiting_for_their_backend_hold_no_body_buffer() {
    let mut post =
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 65536\r\n\r\n"
            .to_vec();
    post.resize(post.len() + 65536, b'u');
    let answer = (&b""[..], HELD, "held");
    held_requests_take_under(&post, answer, 200, 9.0, "64 KiB uploads in flight").await;
}

/// A streamed answer waiting for its next piece holds no read buffer: the buffer is given
/// back when a read empties the backend's socket and made again when more arrives
/// (server-sent events, long polls and progress streams idle between pieces). Nor does it
/// hold its request head's buffer (8.8 KiB a stream here with it, 5.3 without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_waiting_for_their_next_piece_hold_no_buffer() {
    let get = b"GET /events HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    let answer = (
        &first[..],
        &b"4\r\nlast\r\n0\r\n\r\n"[..],
        "5\r\nfirst\r\n4\r\nlast\r\n0\r\n\r\n",
    );
    held_requests_take_under(get, answer, 600, 7.0, "streams between pieces").await;
}

/// A WebSocket connection to `addr` (through the proxy) whose backend echoes what follows
/// the 101: the stream after the 101's head, having echoed `msg` once.
async fn websocket_echoing(addr: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let mut head = Vec::new();
    while find(&head, b"\r\n\r\n").is_none() {
        assert!(fill(&mut s, &mut head).await, "closed before the 101");
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    assert!(
        crate::support::tcp::echo_round(&mut s, msg).await,
        "the first echo"
    );
    s
}

/// An upgraded (WebSocket) connection keeps no relay buffer while it idles, nor the
/// buffers of its handshake: connections that have each moved 256 KiB both ways and gone
/// quiet take under 6 KiB of the proxy's memory each (243 KiB when each kept both
/// directions' grown buffers, 9.3 KiB while each kept its request head's 4 KiB buffer), and
/// each still works when it is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_hold_no_relay_buffer() {
    const N: usize = 300;
    // a backend that takes every upgrade and echoes what follows
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let end = loop {
                    if let Some(e) = find(&buf, b"\r\n\r\n") {
                        break e + 4;
                    }
                    if !fill(&mut s, &mut buf).await {
                        return;
                    }
                };
                let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n".to_vec();
                out.extend_from_slice(&buf[end..]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let p = Proxy::start(&config(backend));
    let pid = p.child.id();
    let msg = crate::support::tcp::pattern(256 << 10);
    // warm: the first connection's one-time allocations come before the baseline
    drop(websocket_echoing(p.addr, &msg).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = crate::support::proxy::rss_kib(pid);

    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(websocket_echoing(p.addr, &msg).await);
    }
    crate::support::proxy::assert_rss_per_conn(pid, rss0, N, 7.5, "idle WebSockets").await;
    for s in conns.iter_mut().step_by(N / 5) {
        assert!(
            crate::support::tcp::echo_round(s, &msg).await,
            "an idle WebSocket used again\n{}",
            p.log()
        );
    }
    server.abort();
}
