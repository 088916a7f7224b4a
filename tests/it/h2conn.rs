//! HTTP/2 connections run on a loop of Stepstone's own (`src/http/h2conn.rs`): the streams of
//! one connection are served side by side inside its task, a stream in flight keeps the
//! connection open past `keepalive_timeout`, and a connection with nothing in flight gets a
//! GOAWAY once `keepalive_timeout` passes and is closed, as an idle HTTP/1 connection is.

use crate::support::h2raw::{self, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS};
use crate::support::{OriginBuilder, Proxy};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the client saw on the connection, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Status(u32, u16),
    Reset(u32),
    GoAway { error: u32 },
    Closed,
}

fn get(id: u32, path: &str) -> Vec<u8> {
    let block = h2raw::block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"localhost"),
    ]);
    h2raw::frame(HEADERS, END_STREAM | END_HEADERS, id, &block)
}

/// Read frames until the proxy closes the connection or `wait` passes (then the list ends
/// without `Closed`). PINGs go unanswered, as from a client that has gone quiet.
async fn watch(s: &mut TcpStream, wait: Duration) -> Vec<Seen> {
    watch_until(s, wait, |_| false).await
}

/// [`watch`], ending early once `done` says so of what was seen.
async fn watch_until(
    s: &mut TcpStream,
    wait: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let f = match h2raw::read_frame(s, deadline).await {
            h2raw::Read::Frame(f) => f,
            h2raw::Read::Closed => {
                seen.push(Seen::Closed);
                return seen;
            }
            h2raw::Read::Late => return seen,
        };
        let (kind, flags, stream, p) = (f.kind, f.flags, f.stream, f.payload);
        match kind {
            SETTINGS if flags & 1 == 0 => {
                let _ = s.write_all(&h2raw::frame(SETTINGS, 1, 0, &[])).await;
            }
            HEADERS => seen.push(Seen::Status(stream, h2raw::status(&p).unwrap_or(0))),
            GOAWAY if p.len() >= 8 => seen.push(Seen::GoAway {
                error: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            }),
            RST_STREAM => seen.push(Seen::Reset(stream)),
            _ => {}
        }
        if done(&seen) {
            return seen;
        }
    }
}

/// A proxy with one h2c listener (with `limits`, YAML flow-map entries) in front of `app`.
fn h2c_proxy(app: std::net::SocketAddr, limits: &str) -> Proxy {
    Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true, limits: {{{limits}}}}}\nupstreams:\n  - name: app\n    backends: [{{address: {app}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n"
    ))
}

/// What came until stream `id` was answered (or the connection closed); a loaded machine
/// gets 10 s.
async fn answered(s: &mut TcpStream, id: u32) -> Vec<Seen> {
    watch_until(s, Duration::from_secs(10), |seen| {
        seen.iter()
            .any(|x| matches!(x, Seen::Closed) || matches!(x, Seen::Status(i, _) if *i == id))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_run_side_by_side_and_an_idle_connection_gets_goaway_at_keepalive_timeout() {
    // the slow backend answers after the keep-alive timeout has passed twice over
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(2500))
        .run()
        .await;
    let fast = OriginBuilder::new("fast").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true, limits: {{keepalive_timeout: 1s}}}}\nupstreams:\n  - name: slow\n    backends: [{{address: {}}}]\n    read_timeout: 20s\n  - name: fast\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, path_prefix: /slow, upstream: slow}}\n  - {{listener: web, upstream: fast}}\n",
        slow.addr, fast.addr
    );
    let proxy = Proxy::start(&cfg);
    let mut s = h2raw::connect(proxy.addr).await;
    let mut both = get(1, "/slow");
    both.extend(get(3, "/fast"));
    s.write_all(&both).await.expect("send two streams");
    let seen = watch(&mut s, Duration::from_secs(15)).await;
    assert_eq!(
        seen,
        vec![
            // the fast stream is answered while the slow one waits on its backend
            Seen::Status(3, 200),
            // the slow stream outlived the keep-alive timeout: the connection was not idle
            Seen::Status(1, 200),
            // then nothing is in flight: GOAWAY (NO_ERROR) after the timeout, and the close
            Seen::GoAway { error: 0 },
            Seen::Closed,
        ],
        "proxy log:\n{}",
        proxy.log()
    );
    assert_eq!((slow.requests(), fast.requests()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_requests_coming_is_not_closed_as_idle() {
    let app = OriginBuilder::new("app").run().await;
    let proxy = h2c_proxy(app.addr, "keepalive_timeout: 1s");
    let mut s = h2raw::connect(proxy.addr).await;
    // a request 400 ms after each answer, seven times: each idle gap is shorter than the
    // timeout, their sum longer
    let mut seen = Vec::new();
    for i in 0..7u32 {
        let id = 1 + 2 * i;
        s.write_all(&get(id, "/")).await.expect("send");
        seen.extend(answered(&mut s, id).await);
        seen.extend(watch(&mut s, Duration::from_millis(400)).await);
    }
    let want: Vec<Seen> = (0..7u32).map(|i| Seen::Status(1 + 2 * i, 200)).collect();
    assert_eq!(seen, want, "proxy log:\n{}", proxy.log());
}

/// On SIGTERM (a 4 s grace period) the connection is told to go (GOAWAY) while its stream is
/// still running; that stream is answered in full, then the connection closes and the process
/// exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_and_lets_the_http2_stream_in_flight_finish() {
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(1000))
        .run()
        .await;
    let dir = crate::support::scratch_dir("h2-sigterm");
    let cfg = format!(
        "{}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\nupstreams:\n  - name: slow\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: slow}}\n",
        crate::ops::pingora_block(&dir, 4),
        slow.addr
    );
    let (text, ports) = crate::support::proxy::render(&cfg, &dir);
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let mut s = h2raw::connect(p.addr).await;
    s.write_all(&get(1, "/")).await.expect("send");
    // the request reaches the backend before the signal
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let inflight = || {
        slow.state
            .inflight
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    while inflight() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(inflight(), 1, "the request never reached the backend");
    p.signal(libc::SIGTERM);
    let seen = watch(&mut s, Duration::from_secs(15)).await;
    assert_eq!(
        seen,
        vec![
            Seen::GoAway { error: 0 },
            Seen::Status(1, 200),
            Seen::Closed
        ],
        "proxy log:\n{}",
        p.log()
    );
    let st = crate::ops::wait_exit(&mut p, Duration::from_secs(30)).await;
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
}

/// `keepalive_requests` bounds an HTTP/2 connection's streams as it does HTTP/1 requests (as
/// nginx applies it to both): the third stream is served, then GOAWAY and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_ends_an_http2_connection_with_goaway_after_its_last_stream() {
    let app = OriginBuilder::new("app").run().await;
    let proxy = h2c_proxy(app.addr, "keepalive_requests: 3");
    let mut s = h2raw::connect(proxy.addr).await;
    let mut seen = Vec::new();
    for id in [1u32, 3] {
        s.write_all(&get(id, "/")).await.expect("send");
        seen.extend(answered(&mut s, id).await);
    }
    s.write_all(&get(5, "/")).await.expect("send the third");
    seen.extend(watch(&mut s, Duration::from_secs(15)).await);
    assert_eq!(
        seen,
        vec![
            Seen::Status(1, 200),
            Seen::Status(3, 200),
            Seen::GoAway { error: 0 },
            Seen::Status(5, 200),
            Seen::Closed
        ],
        "proxy log:\n{}",
        proxy.log()
    );
    assert_eq!(app.requests(), 3);
}

/// A client that opens no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0) takes no
/// response bytes: its stream is reset once `client_timeout` passes, on both engines, rather
/// than holding the stream, its backend connection and the HTTP/2 connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_the_client_does_not_read_is_reset_at_client_timeout_on_both_engines() {
    let app = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true, limits: {{client_timeout: 1s}}}}\n  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, h2c: true, fast_path: false, limits: {{client_timeout: 1s}}}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
        app.addr
    );
    let proxy = Proxy::start(&cfg);
    for (engine, addr) in [("lean", proxy.addr_of(0)), ("general", proxy.addr_of(1))] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut hello = h2raw::PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0
        hello.extend(h2raw::frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
        hello.extend(get(1, "/"));
        s.write_all(&hello).await.expect("send");
        let seen = watch_until(&mut s, Duration::from_secs(15), |seen| {
            seen.contains(&Seen::Reset(1)) || seen.contains(&Seen::Closed)
        })
        .await;
        assert_eq!(
            seen,
            vec![Seen::Status(1, 200), Seen::Reset(1)],
            "{engine} engine; proxy log:\n{}",
            proxy.log()
        );
    }
}

/// Streams the client resets in the same breath as it opens them (the "rapid reset" of
/// CVE-2023-44487) reach no backend, on either engine, even with a pooled backend connection
/// ready to take them at once: h2 settles the frames one read brought before the connection's
/// loop takes streams from it, and a stream handed over already reset is dropped unserved. A
/// stream opened normally afterwards is served. A client that keeps doing it (here 50 at once)
/// is told ENHANCE_YOUR_CALM (h2's bound of 20 such streams) and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_they_open_reach_no_backend_and_a_flood_gets_enhance_your_calm() {
    let app = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, h2c: true, fast_path: false}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
        app.addr
    );
    let proxy = Proxy::start(&cfg);
    // streams `first`, `first + 2`, ... opened and cancelled, then one more opened normally
    let burst = |first: u32, n: u32| {
        let mut b = Vec::new();
        for i in 0..n {
            let id = first + 2 * i;
            b.extend(get(id, "/reset"));
            // CANCEL (8)
            b.extend(h2raw::frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        b.extend(get(first + 2 * n, "/after"));
        b
    };
    for (engine, addr) in [("lean", proxy.addr_of(0)), ("general", proxy.addr_of(1))] {
        let before = app.recorded().len();
        let mut s = h2raw::connect(addr).await;
        // a served stream first, so that a kept-alive backend connection waits in the pool
        // and a request let through would be written at once
        s.write_all(&get(1, "/warm")).await.expect("send");
        let seen = answered(&mut s, 1).await;
        assert!(seen.contains(&Seen::Status(1, 200)), "{engine}: {seen:?}");
        s.write_all(&burst(3, 10)).await.expect("send the burst");
        let seen = answered(&mut s, 23).await;
        assert!(
            seen.contains(&Seen::Status(23, 200)),
            "{engine}: the stream after the burst was not served: {seen:?}\nproxy log:\n{}",
            proxy.log()
        );
        let mut s = h2raw::connect(addr).await;
        s.write_all(&burst(1, 50))
            .await
            .expect("send the big burst");
        let seen = watch(&mut s, Duration::from_secs(15)).await;
        assert_eq!(
            seen,
            vec![Seen::GoAway { error: 11 }, Seen::Closed],
            "{engine}; proxy log:\n{}",
            proxy.log()
        );
        let paths: Vec<String> = app.recorded()[before..]
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(
            paths,
            ["/warm", "/after"],
            "{engine}: the backend saw {paths:?}"
        );
    }
}

/// Rapid reset spread over many reads, which h2's own bound (20 within one read) never sees:
/// once a connection has had more than 100 streams cancelled as they opened beyond those it
/// served, it is told ENHANCE_YOUR_CALM and closed, and none of them reached the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_they_open_over_many_reads_end_the_connection() {
    let app = OriginBuilder::new("app").run().await;
    let proxy = h2c_proxy(app.addr, "");
    let mut s = h2raw::connect(proxy.addr).await;
    s.write_all(&get(1, "/warm")).await.expect("send");
    let seen = answered(&mut s, 1).await;
    assert!(seen.contains(&Seen::Status(1, 200)), "{seen:?}");
    let mut sent = 0u32;
    for i in 0..150u32 {
        let id = 3 + 2 * i;
        let mut pair = get(id, "/reset");
        // CANCEL (8)
        pair.extend(h2raw::frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if s.write_all(&pair).await.is_err() {
            break;
        }
        sent += 1;
        // each pair in a read of its own, mostly
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = watch(&mut s, Duration::from_secs(15)).await;
    assert_eq!(
        seen,
        vec![Seen::GoAway { error: 11 }, Seen::Closed],
        "after {sent} pairs; proxy log:\n{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("streams reset as they opened"),
        "closed by h2's per-read bound, not the connection's; proxy log:\n{}",
        proxy.log()
    );
    let paths: Vec<String> = app.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/warm"], "the backend saw {paths:?}");
}

/// An HTTP/2 header block is held to `header_timeout`, as an HTTP/1 head is, and not to
/// `keepalive_timeout` (120 s here): a HEADERS frame sent in part, or sent without
/// END_HEADERS and then no CONTINUATION, closes the connection once 1 s passes. A connection
/// quiet between whole frames (after a served stream and a PING) is not cut by it, and
/// serves another stream after 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_block_left_incomplete_is_cut_at_header_timeout_and_an_idle_one_is_not() {
    let app = OriginBuilder::new("app").run().await;
    let proxy = h2c_proxy(app.addr, "header_timeout: 1s, keepalive_timeout: 120s");
    let whole = get(1, "/slow");
    let mut no_end = whole.clone();
    // the flags byte: END_STREAM without END_HEADERS
    no_end[4] = END_STREAM;
    for (case, bytes) in [
        ("a HEADERS frame sent in part", &whole[..whole.len() - 3]),
        ("HEADERS without END_HEADERS, no CONTINUATION", &no_end[..]),
    ] {
        let mut s = h2raw::connect(proxy.addr).await;
        // SETTINGS both ways first: an ACK written later would land inside the block
        let _ = watch(&mut s, Duration::from_millis(300)).await;
        s.write_all(bytes).await.expect("send");
        let t0 = std::time::Instant::now();
        let seen = watch_until(&mut s, Duration::from_secs(15), |seen| {
            seen.contains(&Seen::Closed)
        })
        .await;
        assert_eq!(
            seen.last(),
            Some(&Seen::Closed),
            "{case}: still open 15 s after a 1 s header timeout; proxy log:\n{}",
            proxy.log()
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{case}: closed after {:?}, before the timeout; proxy log:\n{}",
            t0.elapsed(),
            proxy.log()
        );
    }
    assert!(
        proxy.log().contains("a header block incomplete after 1s"),
        "no log line for the slow header blocks:\n{}",
        proxy.log()
    );
    assert!(app.recorded().is_empty(), "{:?}", app.recorded());

    let mut s = h2raw::connect(proxy.addr).await;
    s.write_all(&get(1, "/first")).await.expect("send");
    let seen = answered(&mut s, 1).await;
    assert!(seen.contains(&Seen::Status(1, 200)), "{seen:?}");
    // PING (6)
    s.write_all(&h2raw::frame(6, 0, 0, &[0; 8]))
        .await
        .expect("ping");
    let seen = watch(&mut s, Duration::from_secs(2)).await;
    assert!(
        !seen.contains(&Seen::Closed),
        "an idle connection was closed: {seen:?}\nproxy log:\n{}",
        proxy.log()
    );
    s.write_all(&get(3, "/second")).await.expect("send");
    let seen = answered(&mut s, 3).await;
    assert!(
        seen.contains(&Seen::Status(3, 200)),
        "{seen:?}\nproxy log:\n{}",
        proxy.log()
    );
}
