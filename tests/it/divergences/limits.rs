//! Divergences 5, 6, 7 and 9: `client_timeout` on a stalled body, `keepalive_requests` across
//! both engines, refusals counted, and `upstream_keepalive_pool_size` as one total.

use super::{admitted, start, upstream_app, ADMIN, FALLBACKS, REFUSALS, WAIT};
use crate::support::client;
use crate::support::metrics::{metrics, series, wait_series};
use crate::support::raw::read_until_close;
use crate::support::{Conn, OriginBuilder};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// 5. limits.client_timeout
// ---------------------------------------------------------------------------------------

/// Send a head promising 100 body bytes and 10 of them, then nothing: how long until the
/// proxy closes the connection (`None`: still open after 8s), and what it sent.
async fn stalled_body(addr: SocketAddr) -> (Option<Duration>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .expect("send");
    let t0 = Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(8)).await;
    (closed.then(|| t0.elapsed()), out)
}

/// One listener with `client_timeout: 1s`, on the lean engine or (`fast_path: false`) the
/// general one: a stalled request body is answered 408 (nginx's `client_body_timeout`) and
/// the connection closed after about a second.
async fn client_timeout_case(fast_path: bool) {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}, limits: {{client_timeout: 1s}}}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\n    retries: 0\n    read_timeout: 30s\nroutes:\n  - {{listener: web, upstream: app}}\n",
        origin.addr
    );
    let p = start(&cfg, &[]);
    let engine = if fast_path { "lean" } else { "general" };
    let (took, out) = stalled_body(p.addr).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    match took {
        Some(t) => assert!(
            t >= Duration::from_millis(800) && t <= WAIT,
            "{engine} engine: closed {t:?} after the body stalled, not within 0.8s..5s (client_timeout 1s; sent {out:?})"
        ),
        None => panic!(
            "{engine} engine: still open 8s after the body stalled (client_timeout 1s; sent {out:?})"
        ),
    }
    assert!(
        out.starts_with("HTTP/1.1 408 "),
        "{engine} engine: answered {out:?}, not 408"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_closes_a_stalled_request_body_on_the_lean_engine() {
    client_timeout_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_closes_a_stalled_request_body_on_the_general_engine() {
    client_timeout_case(false).await;
}

// ---------------------------------------------------------------------------------------
// 6. limits.keepalive_requests
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Req {
    Get,
    /// A GET whose Connection names another field: the lean engine leaves it to the general
    /// one.
    Nominating,
}

/// Send `reqs` on one connection; each answer's status and Connection field, and whether
/// the proxy closed the connection after the last one.
async fn sequence(addr: SocketAddr, reqs: &[Req]) -> (Vec<(u16, String)>, bool) {
    let mut c = Conn::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let raw = match r {
            Req::Get => format!("GET /r{i} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            Req::Nominating => format!(
                "GET /r{i} HTTP/1.1\r\nHost: localhost\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n"
            ),
        };
        c.send_raw(raw.as_bytes()).await.expect("send");
        let resp = tokio::time::timeout(WAIT, c.read_response(false))
            .await
            .unwrap_or_else(|_| panic!("request {i} ({r:?}): no answer in time"))
            .unwrap_or_else(|e| panic!("request {i} ({r:?}): {e}"));
        out.push((
            resp.status,
            resp.header("connection")
                .unwrap_or("-")
                .to_ascii_lowercase(),
        ));
    }
    let closed = c.closed_within(Duration::from_secs(3)).await;
    (out, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_closes_after_the_nth_answer_on_both_engines() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, limits: {{keepalive_requests: 3}}}}\n  - {{name: general, address: 127.0.0.1:{{{{port2}}}}, protocol: http, fast_path: false, limits: {{keepalive_requests: 3}}}}\n{}routes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1, 2]);
    let opt = ["reason=\"connection_option\""];
    let opt0 = series(&metrics(&p).await, FALLBACKS, &opt);
    let (lean, general) = (p.addr_of(0), p.addr_of(2));
    use Req::*;
    let cases: [(&str, SocketAddr, [Req; 3]); 5] = [
        ("lean: GET GET GET", lean, [Get, Get, Get]),
        ("general: GET GET GET", general, [Get, Get, Get]),
        // the second request is served by the general engine, the third by the lean one
        ("lean: GET nominating GET", lean, [Get, Nominating, Get]),
        // the third, which must close, is served by the general engine
        ("lean: GET GET nominating", lean, [Get, Get, Nominating]),
        (
            "general: GET nominating GET",
            general,
            [Get, Nominating, Get],
        ),
    ];
    let want = vec![
        (200, "keep-alive".to_string()),
        (200, "keep-alive".to_string()),
        (200, "close".to_string()),
    ];
    let mut bad = Vec::new();
    for (name, addr, reqs) in cases {
        let (got, closed) = sequence(addr, &reqs).await;
        if got != want || !closed {
            bad.push(format!(
                "{name}: answers {got:?} (want {want:?}), closed after the third: {closed}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert_eq!(origin.requests(), 15);
    // the two nominating requests on the lean listener did go to the general engine
    let m = wait_series(&p, FALLBACKS, &opt, opt0 + 2.0).await;
    assert_eq!(series(&m, FALLBACKS, &opt), opt0 + 2.0, "{m}");
}

// ---------------------------------------------------------------------------------------
// 7. refusals are counted
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_listener_and_reason() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n  - {{name: capped, address: 127.0.0.1:{{{{port2}}}}, protocol: http, limits: {{max_connections: 1}}}}\n{}routes:\n  - {{listener: web, upstream: app}}\n  - {{listener: capped, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1, 2]);
    let web400 = ["listener=\"web\"", "reason=\"400\""];
    let cap_max = ["listener=\"capped\"", "reason=\"max_connections\""];
    // One connection held on the capped listener (admitted once the readiness probe's
    // slot is free), then the counts before the refusals.
    let mut held = admitted("the held connection", || async {
        let mut c = Conn::connect(p.addr_of(2)).await.ok()?;
        let r = c.get("/", &[]).await.ok()?;
        (r.status == 200).then_some(c)
    })
    .await;
    // An attempt that gave up above may still be refused (and counted) once the proxy gets
    // to its connection: take the counts once they have stopped moving.
    let mut m = metrics(&p).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = metrics(&p).await;
        if series(&again, REFUSALS, &cap_max) == series(&m, REFUSALS, &cap_max) {
            break;
        }
        m = again;
    }
    let (a0, b0) = (
        series(&m, REFUSALS, &web400),
        series(&m, REFUSALS, &cap_max),
    );
    let all0 = series(&m, REFUSALS, &[]);

    // A smuggling-ambiguous head: Content-Length and Transfer-Encoding.
    let mut s = TcpStream::connect(p.addr_of(0)).await.expect("connect");
    s.write_all(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .expect("send");
    let (out, _) = read_until_close(&mut s, WAIT).await;
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let m = wait_series(&p, REFUSALS, &web400, a0 + 1.0).await;
    assert_eq!(
        series(&m, REFUSALS, &web400),
        a0 + 1.0,
        "400 not counted:\n{m}"
    );

    // max_connections: with one connection held, the next is refused.
    let mut s = TcpStream::connect(p.addr_of(2)).await.expect("connect");
    let (out, closed) = read_until_close(&mut s, WAIT).await;
    assert!(
        out.starts_with(b"HTTP/1.1 503") && closed,
        "not refused: {:?}",
        String::from_utf8_lossy(&out)
    );
    let m = wait_series(&p, REFUSALS, &cap_max, b0 + 1.0).await;
    assert_eq!(
        series(&m, REFUSALS, &cap_max),
        b0 + 1.0,
        "max_connections refusal not counted:\n{m}"
    );
    // each refusal counted once, under its own listener and reason
    assert_eq!(series(&m, REFUSALS, &[]), all0 + 2.0, "{m}");
    assert_eq!(series(&m, REFUSALS, &web400), a0 + 1.0, "{m}");
    assert_eq!(origin.requests(), 1, "a refused request reached the origin");
    // the held connection was not disturbed
    assert_eq!(held.get("/", &[]).await.expect("answer").status, 200);
}

// ---------------------------------------------------------------------------------------
// 9. upstream_keepalive_pool_size is one total
// ---------------------------------------------------------------------------------------

/// `n` concurrent GETs to `host`, each on its own client connection; all must be 200.
async fn burst(
    addr: SocketAddr,
    host: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                client::get(addr, "/", &[("Host", host)])
                    .await
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_upstream_pool_keeps_the_configured_total_across_backends() {
    let delay = Duration::from_millis(800);
    let a = OriginBuilder::new("a").delay(delay).run().await;
    let b = OriginBuilder::new("b").delay(delay).run().await;
    // One runtime thread: its pool's share is the whole total, 2.
    let cfg = format!(
        "pingora:\n  threads: 1\n  upstream_keepalive_pool_size: 2\n  pid_file: {{{{dir}}}}/stepstone.pid\n  upgrade_sock: {{{{dir}}}}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: a\n    backends: [{{address: {}}}]\n    retries: 0\n  - name: b\n    backends: [{{address: {}}}]\n    retries: 0\nroutes:\n  - {{listener: web, host: a.test, upstream: a}}\n  - {{listener: web, host: b.test, upstream: b}}\n",
        a.addr, b.addr
    );
    let p = start(&cfg, &[]);

    // 3 + 3 requests at once: six upstream connections, 3 to each backend.
    let mut tasks = burst(p.addr, "a.test", 3).await;
    tasks.extend(burst(p.addr, "b.test", 3).await);
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!((a.connections(), b.connections()), (3, 3));
    // Six connections went back to a pool that keeps two in all (each backend's own share
    // would have kept two per backend, four).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Again 3 + 3 at once: two of them reuse the two kept connections, four open new ones.
    let mut tasks = burst(p.addr, "a.test", 3).await;
    tasks.extend(burst(p.addr, "b.test", 3).await);
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!((a.requests(), b.requests()), (6, 6));
    assert_eq!(
        a.connections() + b.connections(),
        10,
        "after the pool kept {} connections (a: {}, b: {}); a total of 2 keeps 2, so 6 + 4",
        12 - (a.connections() + b.connections()),
        a.connections(),
        b.connections()
    );
}
