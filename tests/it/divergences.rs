//! Divergences between the lean engine and Pingora's general proxy (or between the HTTP/1
//! and HTTP/2 paths) that the unified request policy fixed, one test each, on real sockets:
//!
//! 1. an HTTP/2 (h2c) connection takes a `max_connections` slot;
//! 2. `h2c: true` keeps the lean engine for the listener's HTTP/1 requests;
//! 3. a CONNECT tunnel is logged and counted with status 200 and the bytes it relayed;
//! 4. an HTTP/2 request's access-log host and X-Forwarded-Host are its `:authority`, on both
//!    engines;
//! 5. `limits.client_timeout` closes a connection whose request body stalls, on both engines
//!    (one test per engine);
//! 6. `limits.keepalive_requests` closes the connection after the Nth answer, counting the
//!    requests of both engines on one connection;
//! 7. refused request heads and connections are counted in `stepstone_refusals_total`;
//! 8. an idle CONNECT tunnel is closed when shutdown starts, and the process exits 0;
//! 9. `upstream_keepalive_pool_size` is one total across backends for the lean engine's pool.
//!
//! Metrics come from the admin listener's `/metrics` (no token needed), on `{{port1}}`.

use crate::support::client;
use crate::support::h2raw;
use crate::support::metrics::{metrics, series, wait_series};
use crate::support::proxy::{render, send_signal};
use crate::support::raw::read_until_close;
use crate::support::tcp::TcpBackend;
use crate::support::{scratch_dir, Conn, OriginBuilder, Proxy};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const ADMIN: &str = "admin: {address: 127.0.0.1:{{port1}}}\n";

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// Start the proxy and wait until the listeners `others` (by `{{portN}}` index, the admin
/// listener among them) accept connections too; `Proxy::start` waits for the first only.
fn start(cfg: &str, others: &[usize]) -> Proxy {
    let mut p = Proxy::start(cfg);
    for &i in others {
        let addr = p.addr_of(i);
        p.wait_ready(addr).unwrap_or_else(|e| panic!("{e}"));
    }
    p
}

const FALLBACKS: &str = "stepstone_fast_path_fallbacks_total";
const REFUSALS: &str = "stepstone_refusals_total";

type H2c = (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>);

async fn try_h2c(addr: SocketAddr) -> Result<H2c, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

/// An h2c (prior knowledge) client connection; the task drives it until aborted.
async fn h2c(addr: SocketAddr) -> H2c {
    try_h2c(addr).await.expect("h2c handshake")
}

/// Until `deadline`, call `f` until it gives `Some`: for a connection that must be admitted
/// on a `max_connections: 1` listener while the readiness probe's slot may still be taken.
async fn admitted<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: never admitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn h2_get(
    client: &h2::client::SendRequest<Bytes>,
    uri: &str,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let mut c = client.clone().ready().await?;
    let req = http::Request::builder().uri(uri).body(()).expect("request");
    let (resp, _) = c.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let data = client::h2_body(&mut resp.into_body()).await?;
    Ok((status, data))
}

/// The first access-log line (JSON) for which `pred` holds, waiting for the writer thread.
async fn log_line(
    file: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pred(v));
        if let Some(v) = found {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {what} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read one response head (through the blank line) byte by byte, leaving the rest.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("a response head in time")
            .expect("read head");
        assert!(
            n > 0,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn upstream_app(origin: SocketAddr) -> String {
    format!("upstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\n    retries: 0\n")
}

// ---------------------------------------------------------------------------------------
// 1. HTTP/2 connections take a max_connections slot
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_take_a_max_connections_slot() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true, limits: {{max_connections: 1}}}}\n{}routes:\n  - {{listener: web, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1]);

    // One HTTP/2 connection, held open (it has served a request, so it is admitted).
    let (h2, h2_task) = admitted("the first h2c connection", || async {
        let (h2, task) = try_h2c(p.addr).await.ok()?;
        match h2_get(&h2, "http://localhost/held").await {
            Ok((200, body)) if body == b"app" => Some((h2, task)),
            _ => {
                task.abort();
                None
            }
        }
    })
    .await;
    let refused0 = series(
        &metrics(&p).await,
        REFUSALS,
        &["listener=\"web\"", "reason=\"max_connections\""],
    );

    // A second connection speaking HTTP/1.1 is refused: 503 with Retry-After, then closed.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let (out, closed) = read_until_close(&mut s, WAIT).await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 503"),
        "an HTTP/1.1 connection beside a held HTTP/2 one was not refused with 503: {text:?}"
    );
    assert!(
        text.contains("\r\nretry-after:"),
        "no Retry-After: {text:?}"
    );
    assert!(closed, "the refused HTTP/1.1 connection was left open");

    // A second h2c connection is refused too: closed, never answered.
    let requests_before = origin.requests();
    let mut s = h2raw::connect(p.addr).await;
    let block = h2raw::block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/second"),
        (b":authority", b"localhost"),
    ]);
    let _ = s
        .write_all(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &block,
        ))
        .await;
    let outcome = h2raw::outcome(&mut s, 1, WAIT).await;
    assert_eq!(
        outcome,
        h2raw::Outcome::Closed,
        "a second h2c connection beside a held one was not refused"
    );
    assert_eq!(
        origin.requests(),
        requests_before,
        "the refused h2c connection's request reached the origin"
    );

    let text = wait_series(
        &p,
        REFUSALS,
        &["listener=\"web\"", "reason=\"max_connections\""],
        refused0 + 2.0,
    )
    .await;
    assert_eq!(
        series(
            &text,
            REFUSALS,
            &["listener=\"web\"", "reason=\"max_connections\""]
        ),
        refused0 + 2.0,
        "the two refusals were not counted:\n{text}"
    );

    // The held HTTP/2 connection still works, and closing it gives the slot back.
    let (status, _) = h2_get(&h2, "http://localhost/again")
        .await
        .expect("the held h2c connection still serves");
    assert_eq!(status, 200);
    drop(h2);
    h2_task.abort();
    let _ = h2_task.await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = client::get(p.addr, "/after", &[]).await;
        if matches!(&r, Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of the closed h2c connection was not given back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 2. h2c listeners keep the lean engine for HTTP/1
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_serves_http1_on_the_lean_engine() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n{}routes:\n  - {{listener: web, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1]);
    let m = metrics(&p).await;
    let all0 = series(&m, FALLBACKS, &[]);
    let opt = ["reason=\"connection_option\""];
    let opt0 = series(&m, FALLBACKS, &opt);

    // Plain HTTP/1.1 GETs, keep-alive and on new connections: the lean engine takes them all.
    let mut c = Conn::connect(p.addr).await.expect("connect");
    for i in 0..3 {
        let r = c.get(&format!("/ka{i}"), &[]).await.expect("answer");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "app"),
            "keep-alive {i}"
        );
    }
    for i in 0..2 {
        let r = client::get(p.addr, &format!("/new{i}"), &[])
            .await
            .expect("answer");
        assert_eq!((r.status, r.text().as_str()), (200, "app"), "new conn {i}");
    }
    let m = metrics(&p).await;
    assert_eq!(
        series(&m, FALLBACKS, &[]),
        all0,
        "plain HTTP/1.1 GETs on an h2c listener were left to the general engine:\n{m}"
    );

    // The lean engine does look at this listener's HTTP/1 requests: one it does not take (a
    // Connection field naming another) is counted as its fallback, which only the lean
    // engine's decision does.
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(b"GET /named HTTP/1.1\r\nHost: localhost\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n")
        .await
        .expect("send");
    let r = c.read_response(false).await.expect("answer");
    assert_eq!(r.status, 200);
    let m = wait_series(&p, FALLBACKS, &opt, opt0 + 1.0).await;
    assert_eq!(
        series(&m, FALLBACKS, &opt),
        opt0 + 1.0,
        "HTTP/1 requests on an h2c listener never reach the lean engine's decision:\n{m}"
    );
    assert_eq!(series(&m, FALLBACKS, &[]), all0 + 1.0, "{m}");

    // h2c still works on the same listener.
    let (h2, task) = h2c(p.addr).await;
    let (status, body) = h2_get(&h2, "http://localhost/h2")
        .await
        .expect("h2c request");
    assert_eq!((status, body.as_slice()), (200, &b"app"[..]));
    task.abort();

    let paths: Vec<String> = origin.recorded().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/ka0", "/ka1", "/ka2", "/new0", "/new1", "/named", "/h2"],
        "the origin's requests"
    );
}

// ---------------------------------------------------------------------------------------
// 3. CONNECT tunnels are logged and counted with status 200
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_are_logged_and_counted_with_status_200() {
    let echo = TcpBackend::start("echo", false).await;
    let port = echo.addr.port();
    let cfg = format!(
        "{ADMIN}access_log: {{format: json, path: '{{{{dir}}}}/access.log'}}\nlisteners:\n  - name: fwd\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: http\n    forward_proxy:\n      allow_private_destinations: true\n      access: [{{action: allow}}]\n      connect_ports: [{port}]\n"
    );
    let p = start(&cfg, &[1]);
    let m = metrics(&p).await;
    let ok0 = series(&m, "stepstone_requests_total", &["class=\"2xx\""]);
    let err0 = series(&m, "stepstone_requests_total", &["class=\"err\""]);

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // 17 bytes up; "hello tunnel" echoed, then "bye\n" after our EOF: 16 bytes down
    tcp.write_all(b"ECHO\nhello tunnel").await.expect("write");
    let mut got = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"hello tunnel");
    tcp.shutdown().await.expect("half-close");
    let (rest, closed) = read_until_close(&mut tcp, WAIT).await;
    assert_eq!(rest, b"bye\n");
    assert!(closed, "the tunnel did not close after both sides ended");

    let file = p.dir.join("access.log");
    let v = log_line(&file, "the CONNECT", |v| v["method"] == "CONNECT").await;
    assert_eq!(v["status"], 200, "CONNECT access log line: {v}");
    assert_eq!(v["bytes_received"], 17, "{v}");
    assert_eq!(v["bytes_sent"], 16, "{v}");

    let m = wait_series(
        &p,
        "stepstone_requests_total",
        &["class=\"2xx\""],
        ok0 + 1.0,
    )
    .await;
    assert_eq!(
        series(&m, "stepstone_requests_total", &["class=\"2xx\""]),
        ok0 + 1.0,
        "the CONNECT was not counted as a 2xx:\n{m}"
    );
    assert_eq!(
        series(&m, "stepstone_requests_total", &["class=\"err\""]),
        err0,
        "the CONNECT was counted as a request without a response:\n{m}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. HTTP/2 access-log host and X-Forwarded-Host, on both engines
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_log_and_forward_their_authority_on_both_engines() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}access_log: {{format: json, path: '{{{{dir}}}}/access.log'}}\nlisteners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n  - {{name: general, address: 127.0.0.1:{{{{port2}}}}, protocol: http, h2c: true, fast_path: false}}\n{}routes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1, 2]);
    let file = p.dir.join("access.log");
    let disabled = ["reason=\"disabled\""];
    for (name, addr, path) in [
        ("lean", p.addr_of(0), "/lean"),
        ("general", p.addr_of(2), "/general"),
    ] {
        let m = metrics(&p).await;
        let (all0, off0) = (series(&m, FALLBACKS, &[]), series(&m, FALLBACKS, &disabled));
        let authority = "app.test:8443";
        let (h2, task) = h2c(addr).await;
        let (status, body) = h2_get(&h2, &format!("http://{authority}{path}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: h2c request: {e}"));
        task.abort();
        assert_eq!((status, body.as_slice()), (200, &b"app"[..]), "{name}");

        // which engine served it: the general one counts its `disabled` fallback
        let want_off = if name == "general" { off0 + 1.0 } else { off0 };
        let m = wait_series(&p, FALLBACKS, &disabled, want_off).await;
        assert_eq!(series(&m, FALLBACKS, &disabled), want_off, "{name}:\n{m}");
        assert_eq!(
            series(&m, FALLBACKS, &[]),
            all0 + want_off - off0,
            "{name}:\n{m}"
        );

        let v = log_line(&file, path, |v| {
            v["uri"].as_str().is_some_and(|u| u.ends_with(path))
        })
        .await;
        assert_eq!(v["version"], "HTTP/2.0", "{name}: {v}");
        assert_eq!(v["status"], 200, "{name}: {v}");
        assert_eq!(
            v["host"], authority,
            "{name}: the access log's host of an HTTP/2 request is not its :authority: {v}"
        );
        let rec = origin
            .recorded()
            .into_iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{name}: the origin did not get {path}"));
        assert_eq!(
            rec.header("x-forwarded-host"),
            Some(authority),
            "{name}: X-Forwarded-Host: {:?}",
            rec.headers
        );
        assert_eq!(
            rec.header("host"),
            Some(authority),
            "{name}: {:?}",
            rec.headers
        );
    }
}

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
// 8. CONNECT tunnels close on shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connect_tunnel_is_closed_at_shutdown_and_the_process_exits_0() {
    let echo = TcpBackend::start("echo", false).await;
    let port = echo.addr.port();
    let dir = scratch_dir("connect-shutdown");
    // A grace period long enough that the runtime's teardown at its end cannot be what
    // closes the tunnel within the time asserted below.
    let template = format!(
        "pingora:\n  threads: 2\n  pid_file: {{{{dir}}}}/stepstone.pid\n  upgrade_sock: {{{{dir}}}}/upgrade.sock\n  grace_period_seconds: 8\n  graceful_shutdown_timeout_seconds: 2\nlisteners:\n  - name: fwd\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: http\n    forward_proxy:\n      allow_private_destinations: true\n      access: [{{action: allow}}]\n      connect_ports: [{port}]\n      tunnel_idle_timeout: 5m\n"
    );
    let (text, ports) = render(&template, &dir);
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"ECHO\nping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"ping");
    assert_eq!(echo.open(), 1);

    let t0 = Instant::now();
    send_signal(p.child.id(), libc::SIGTERM);
    let (rest, closed) = read_until_close(&mut tcp, Duration::from_secs(4)).await;
    assert!(
        closed,
        "the idle CONNECT tunnel was still open {:?} after SIGTERM (grace period 8s)",
        t0.elapsed()
    );
    assert!(
        rest.is_empty() || rest == b"bye\n",
        "unexpected bytes: {rest:?}"
    );
    eprintln!("tunnel closed {:?} after SIGTERM", t0.elapsed());

    let deadline = Instant::now() + Duration::from_secs(25);
    let st = loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}\n{}", p.log());
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
