//! Request mirroring: copies reach the shadow upstream without delaying the client, a body
//! over the replay bound is not copied, and copies over the mirror's bound are dropped;
//! each counted in `/metrics`, on both engines.

use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::time::{Duration, Instant};

fn config(fast_path: bool, app: std::net::SocketAddr, shadow: std::net::SocketAddr) -> String {
    format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n    backends: [{{address: {app}}}]\n  - name: shadow\n    read_timeout: 10s\n    backends: [{{address: {shadow}}}]\nroutes:\n  - {{listener: web, upstream: app, mirror: {{upstream: shadow, percent: 100}}}}\n"
    )
}

/// A counter from `/metrics`.
async fn metric(p: &Proxy, series: &str) -> u64 {
    let m = client::get(p.addr_of(1), "/metrics", &[])
        .await
        .expect("metrics")
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{m}"))
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn copies_without_delay(fast_path: bool) {
    let engine = if fast_path { "lean" } else { "general" };
    let app = OriginBuilder::new("app").run().await;
    let shadow = OriginBuilder::new("shadow")
        .delay(Duration::from_secs(1))
        .run()
        .await;
    let p = Proxy::start(&config(fast_path, app.addr, shadow.addr));
    let mut sent = Vec::new();
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let start = Instant::now();
    for i in 0..10 {
        let (method, path, body) = match i % 2 {
            0 => ("GET", format!("/get/{i}"), Vec::new()),
            _ => (
                "POST",
                format!("/post/{i}"),
                format!("body {i}").into_bytes(),
            ),
        };
        let r = c
            .request(method, &path, &[("X-Test", "t")], &body)
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{engine}");
        assert_eq!(
            r.text(),
            "app",
            "{engine}: the client gets the primary's answer"
        );
        sent.push((method.to_string(), path, body));
    }
    let took = start.elapsed();
    eprintln!("{engine}: 10 mirrored requests took {took:?} (the shadow answers each in 1 s)");
    // each copy's answer takes 1 s: had the client waited for one, 10 would take 10 s
    assert!(
        took < Duration::from_secs(1),
        "{engine}: 10 requests took {took:?}"
    );
    assert_eq!(app.requests(), 10);
    wait_for("the copies", || shadow.requests() == 10).await;
    let mut got: Vec<(String, String, Vec<u8>)> = shadow
        .recorded()
        .into_iter()
        .map(|r| {
            assert_eq!(r.header("x-test"), Some("t"), "{engine}: fields cross");
            assert_eq!(
                r.header("x-forwarded-for"),
                Some("127.0.0.1"),
                "{engine}: the policy's edits apply to the copy"
            );
            (r.method, r.path, r.body)
        })
        .collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "{engine}: method, path and body of every copy");
    assert_eq!(
        metric(&p, "stepstone_mirror_requests_total{upstream=\"shadow\"}").await,
        10
    );

    // a body over the replay bound: the request goes through, no copy
    let big = vec![b'x'; (64 << 10) + 1];
    let r = c
        .request("POST", "/big", &[], &big)
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{engine}");
    assert_eq!(app.last().map(|r| r.body.len()), Some(big.len()));
    let too_large = "stepstone_mirror_dropped_total{upstream=\"shadow\",reason=\"body_too_large\"}";
    assert_eq!(metric(&p, too_large).await, 1, "{engine}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shadow.requests(), 10, "{engine}: no copy of the big body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_every_request_without_delaying_the_client_on_the_lean_engine() {
    copies_without_delay(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_every_request_without_delaying_the_client_on_the_general_engine() {
    copies_without_delay(false).await;
}

async fn drops_over_the_bound(fast_path: bool) {
    let engine = if fast_path { "lean" } else { "general" };
    let app = OriginBuilder::new("app").run().await;
    // copies stay in flight for 3 s: the bound (64) fills up
    let shadow = OriginBuilder::new("shadow")
        .delay(Duration::from_secs(3))
        .run()
        .await;
    let p = Proxy::start(&config(fast_path, app.addr, shadow.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let start = Instant::now();
    for i in 0..80 {
        let r = c.get(&format!("/{i}"), &[]).await.expect("response");
        assert_eq!(r.status, 200, "{engine}");
    }
    let took = start.elapsed();
    eprintln!("{engine}: 80 requests with copies held 3 s took {took:?}");
    assert_eq!(app.requests(), 80);
    let dropped = "stepstone_mirror_dropped_total{upstream=\"shadow\",reason=\"concurrency\"}";
    let sent = "stepstone_mirror_requests_total{upstream=\"shadow\"}";
    // only meaningful while the first copies are still held by the shadow
    assert!(
        took < Duration::from_secs(3),
        "{engine}: 80 requests took {took:?}"
    );
    assert_eq!(metric(&p, sent).await, 64, "{engine}");
    assert_eq!(metric(&p, dropped).await, 16, "{engine}");
    wait_for("the copies in flight", || shadow.requests() == 64).await;
    // once they are answered, copies go out again
    wait_for("the shadow's answers", || {
        shadow
            .state
            .inflight
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c.get("/again", &[]).await.expect("response");
    assert_eq!(r.status, 200);
    wait_for("a copy after the bound freed", || shadow.requests() == 65).await;
    assert_eq!(metric(&p, dropped).await, 16, "{engine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_over_its_concurrency_bound_drops_and_counts_on_the_lean_engine() {
    drops_over_the_bound(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_over_its_concurrency_bound_drops_and_counts_on_the_general_engine() {
    drops_over_the_bound(false).await;
}

/// One request on its own stream of an h2c connection: status and body.
async fn h2_request(
    client: &h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut c = client.clone().ready().await.expect("ready");
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .expect("request");
    let (resp, mut tx) = c.send_request(req, body.is_empty()).expect("send");
    if !body.is_empty() {
        tx.send_data(bytes::Bytes::copy_from_slice(body), true)
            .expect("data");
    }
    let resp = resp.await.expect("response");
    let status = resp.status().as_u16();
    let mut b = resp.into_body();
    let data = crate::support::client::h2_body(&mut b).await.expect("body");
    (status, data)
}

/// HTTP/2 requests are copied as HTTP/1.1 with `Host` from `:authority`: bodiless ones on the
/// lean engine, one with a body on the general engine, and everything with `fast_path: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_http2_requests_on_both_engines() {
    for fast_path in [true, false] {
        let engine = if fast_path { "lean" } else { "general" };
        let app = OriginBuilder::new("app").run().await;
        let shadow = OriginBuilder::new("shadow")
            .delay(Duration::from_secs(1))
            .run()
            .await;
        let cfg = config(fast_path, app.addr, shadow.addr)
            .replace("protocol: http,", "protocol: http, h2c: true,");
        let p = Proxy::start(&cfg);
        let tcp = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
        let conn = tokio::spawn(conn);
        let start = Instant::now();
        let mut sent = Vec::new();
        for i in 0..4 {
            let (method, body) = match i % 2 {
                0 => ("GET", Vec::new()),
                _ => ("POST", format!("h2 body {i}").into_bytes()),
            };
            let path = format!("/h2/{i}");
            let uri = format!("http://app.test{path}");
            let (status, text) = h2_request(&client, method, &uri, &body).await;
            assert_eq!((status, text.as_slice()), (200, &b"app"[..]), "{engine}");
            sent.push((method.to_string(), path, body));
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{engine}: 4 requests took {took:?}"
        );
        wait_for("the copies", || shadow.requests() == 4).await;
        let mut got: Vec<(String, String, Vec<u8>)> = shadow
            .recorded()
            .into_iter()
            .map(|r| {
                assert_eq!(r.header("host"), Some("app.test"), "{engine}");
                (r.method, r.path, r.body)
            })
            .collect();
        got.sort();
        sent.sort();
        assert_eq!(got, sent, "{engine}");
        conn.abort();
    }
}
