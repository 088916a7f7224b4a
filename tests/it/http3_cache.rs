//! HTTP/3 requests through Pingora's general engine (h3::general): on a cached route a miss
//! is stored (and then a hit on either transport), concurrent misses reach the origin once,
//! and an interim 103 reaches the HTTP/3 client before the final head.

use crate::support::quic::*;
use crate::support::scripted;
use crate::support::OriginBuilder;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One https + HTTP/3 listener, one cached route to `origin`, a JSON access log.
fn cached(pki: &Pki, origin: SocketAddr) -> String {
    let top = "admin: {address: 127.0.0.1:{{port1}}}
access_log: {format: json, path: '{{dir}}/access.log'}
";
    site_config(pki, top, origin, ", cache: {enabled: true}")
}

fn status_of(got: &Got) -> Option<&str> {
    got.headers
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
}

/// The access log's lines so far, once there are at least `n`.
async fn log_lines(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let file = dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = t
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} access log lines, want {n}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A miss over HTTP/3 is stored: the next GET over HTTP/3 is a hit from the store, and so
/// is one over TLS/TCP. The origin saw the miss as the general engine forwards any request
/// (Host from `:authority`, `X-Forwarded-Proto: https`); the access log calls it HTTP/3
/// and the fallback counter took it as a cache fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_cache_miss_is_stored_and_hits_on_both_transports() {
    let made = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(5));
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .header("Date", &made)
        .body("stored over h3")
        .run()
        .await;
    let pki = Pki::new("h3-cache-fill");
    let proxy = start(&pki, &cached(&pki, a.addr));
    let before = metrics(&proxy).await;
    let fallbacks = |m: &str| metric(m, "stepstone_fast_path_fallbacks_total{reason=\"cache\"}");
    let f0 = fallbacks(&before);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;

    let got = request(&mut s, "GET", "https://a.test/page", &[], None)
        .await
        .expect("first GET over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"stored over h3");
    assert_eq!(status_of(&got), Some("MISS"));
    assert!(got.headers.get("connection").is_none());
    assert_eq!(a.requests(), 1);
    let seen = a.last().expect("the origin saw the miss");
    assert_eq!(seen.header("host"), Some("a.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    let got = request(&mut s, "GET", "https://a.test/page", &[], None)
        .await
        .expect("second GET over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"stored over h3");
    assert_eq!(status_of(&got), Some("HIT"));
    assert_eq!(a.requests(), 1, "the second GET went to the origin");
    // the stored Date, once (a second one, the time of the hit, was added to it before)
    let dates: Vec<_> = got.headers.get_all("date").iter().collect();
    assert_eq!(dates, [made.as_str()], "the hit's Date fields");

    let tcp = tls_get(proxy.addr, "a.test", "/page").await;
    assert!(tcp.starts_with("HTTP/1.1 200"), "{tcp}");
    assert!(
        tcp.to_ascii_lowercase().contains("x-cache-status: hit"),
        "{tcp}"
    );
    assert!(tcp.ends_with("stored over h3"), "{tcp}");
    assert_eq!(a.requests(), 1, "the TCP GET went to the origin");

    // the miss went to the general engine, counted as such; the hit did not
    let after = metrics(&proxy).await;
    assert_eq!(fallbacks(&after), f0 + 1.0);
    // (lines from different threads may land in either order)
    let lines = log_lines(&pki.dir, 3).await;
    let misses: Vec<_> = lines.iter().filter(|l| l["cache"] == "miss").collect();
    assert_eq!(misses.len(), 1, "{lines:?}");
    let miss = misses[0];
    assert_eq!(miss["version"], "HTTP/3", "{miss}");
    assert_eq!(miss["uri"], "/page", "{miss}");
    assert_eq!(miss["host"], "a.test", "{miss}");
    assert_eq!(miss["cache"], "miss", "{miss}");
    assert_eq!(miss["status"], 200, "{miss}");
    assert_eq!(miss["bytes_sent"], 14, "{miss}");
    assert_eq!(miss["backend"], a.addr.to_string(), "{miss}");
    let h3 = lines.iter().filter(|l| l["version"] == "HTTP/3").count();
    assert_eq!(h3, 2, "the miss and the hit over HTTP/3: {lines:?}");
}

/// Collapsed forwarding over HTTP/3: five concurrent GETs for a slow cacheable URL, on two
/// QUIC connections, reach the origin once (Pingora's cache lock); all five get the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_concurrent_misses_reach_the_origin_once() {
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("slow and shared")
        .delay(Duration::from_millis(1500))
        .run()
        .await;
    let pki = Pki::new("h3-cache-lock");
    let proxy = start(&pki, &cached(&pki, a.addr));
    let e = endpoint(&pki);
    let (_c1, s1) = connect(&e, proxy.addr, "a.test").await;
    let (_c2, s2) = connect(&e, proxy.addr, "a.test").await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.push(tokio::spawn(async move {
            request(&mut s, "GET", "https://a.test/slow", &[], None).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let got = t.await.expect("task").expect("GET over HTTP/3");
        assert_eq!(got.status, 200);
        assert_eq!(got.body, b"slow and shared");
        statuses.push(status_of(&got).unwrap_or("-").to_string());
    }
    assert_eq!(a.requests(), 1, "cache statuses {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );
}

/// An origin's `103 Early Hints` reaches the HTTP/3 client as an interim HEADERS frame,
/// with its Link field, before the final 200, on the general engine (a cached route) and
/// on the lean one (a route without a cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_early_hints_reach_the_client_before_the_final_head() {
    let origin = scripted::Origin::start().await;
    let pki = Pki::new("h3-early-hints");
    let (c, k) = pki.server("site", "a.test", &["a.test", "b.test"], 0x501);
    let template = format!(
        "listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
    tls:
      certificates: [{{cert: {}, key: {}}}]
upstreams:
  - {{name: app, backends: [{{address: {}}}]}}
routes:
  - {{listener: edge, host: a.test, upstream: app, cache: {{enabled: true}}}}
  - {{listener: edge, host: b.test, upstream: app}}
",
        p(&c),
        p(&k),
        origin.addr
    );
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let mut problems = Vec::new();
    for (engine, host) in [("general", "a.test"), ("lean", "b.test")] {
        let (_conn, mut s) = connect(&e, proxy.addr, host).await;
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("https://{host}/early"))
            .body(())
            .expect("request");
        let mut stream = s.send_request(req).await.expect("send");
        stream.finish().await.expect("finish");
        let first = stream.recv_response().await.expect("first head");
        if first.status() != 103 {
            problems.push(format!("{engine}: first head {}", first.status()));
            continue;
        }
        if first.headers().get("link").map(|v| v.as_bytes()) != Some(&b"</s.css>; rel=preload"[..])
        {
            problems.push(format!("{engine}: 103 without its Link: {first:?}"));
        }
        let last = stream.recv_response().await.expect("final head");
        if last.status() != 200 {
            problems.push(format!("{engine}: final head {}", last.status()));
        }
        let mut body = Vec::new();
        while let Some(mut c) = stream.recv_data().await.expect("body") {
            use bytes::Buf;
            while c.has_remaining() {
                let n = c.chunk().len();
                body.extend_from_slice(c.chunk());
                c.advance(n);
            }
        }
        if body != b"ok" {
            problems.push(format!("{engine}: body {body:?}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The general engine's phases hold for HTTP/3 requests on a cached route: a POST's body
/// (no Content-Length, as HTTP/3 allows) streams to the origin and the POST purges the
/// stored URL (the next GET is a miss); the route's `max_body_size` refuses a larger body
/// with 413, declared or streamed, before the origin sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_unsafe_methods_purge_and_bodies_keep_the_route_limit() {
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("page")
        .run()
        .await;
    let pki = Pki::new("h3-cache-post");
    let template = cached(&pki, a.addr).replace(
        "cache: {enabled: true}",
        "max_body_size: 64, cache: {enabled: true}",
    );
    assert!(template.contains("max_body_size: 64"), "{template}");
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let get = |s: &mut Sender| {
        let mut s = s.clone();
        async move {
            request(&mut s, "GET", "https://a.test/p", &[], None)
                .await
                .expect("GET over HTTP/3")
        }
    };
    assert_eq!(status_of(&get(&mut s).await), Some("MISS"));
    assert_eq!(status_of(&get(&mut s).await), Some("HIT"));
    assert_eq!(a.requests(), 1);

    let got = request(
        &mut s,
        "POST",
        "https://a.test/p",
        &[],
        Some(b"hello over h3".to_vec()),
    )
    .await
    .expect("POST over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(a.requests(), 2);
    let seen = a.last().expect("the origin saw the POST");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, b"hello over h3");
    assert_eq!(
        status_of(&get(&mut s).await),
        Some("MISS"),
        "the POST did not purge the stored GET"
    );
    assert_eq!(a.requests(), 3);

    let big = vec![b'x'; 200];
    let streamed = request(&mut s, "POST", "https://a.test/p", &[], Some(big.clone()))
        .await
        .expect("streamed POST");
    assert_eq!(streamed.status, 413);
    let declared = request(
        &mut s,
        "POST",
        "https://a.test/p",
        &[("content-length", "200")],
        Some(big),
    )
    .await
    .expect("declared POST");
    assert_eq!(declared.status, 413);
    assert_eq!(
        a.requests(),
        3,
        "a body over max_body_size reached the origin"
    );
}

/// A reload reaches HTTP/3 requests on the general engine: after the cached route's status
/// header is renamed, a miss over HTTP/3 carries the new name. A listener with
/// `fast_path: false` sends every HTTP/3 request to the general engine, as TCP ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_general_engine_follows_reloads_and_fast_path_false() {
    use crate::support::proxy::send_signal;
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("page")
        .run()
        .await;
    let pki = Pki::new("h3-cache-reload");
    let template = cached(&pki, a.addr);
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let got = request(&mut s, "GET", "https://a.test/one", &[], None)
        .await
        .expect("GET over HTTP/3");
    assert_eq!(status_of(&got), Some("MISS"));

    let text = std::fs::read_to_string(&proxy.config).expect("config");
    let renamed = text.replace(
        "cache: {enabled: true}",
        "cache: {enabled: true, status_header: X-Edge-Cache}",
    );
    assert_ne!(text, renamed, "{text}");
    std::fs::write(&proxy.config, renamed).expect("write config");
    send_signal(proxy.child.id(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let got = request(&mut s, "GET", &format!("https://a.test/r{n}"), &[], None)
            .await
            .expect("GET over HTTP/3");
        if got.headers.get("x-edge-cache").map(|v| v.as_bytes()) == Some(&b"MISS"[..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never reached HTTP/3: {:?}",
            got.headers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // fast_path: false, no cache: the general engine answers (its fallback is counted as
    // "disabled")
    let pki = Pki::new("h3-fast-path-false");
    let template = cached(&pki, a.addr)
        .replace("http3: true", "http3: true\n    fast_path: false")
        .replace(", cache: {enabled: true}", "");
    assert!(template.contains("fast_path: false"), "{template}");
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let disabled = |m: &str| {
        metric(
            m,
            "stepstone_fast_path_fallbacks_total{reason=\"disabled\"}",
        )
    };
    let d0 = disabled(&metrics(&proxy).await);
    let got = request(&mut s, "GET", "https://a.test/plain", &[], None)
        .await
        .expect("GET over HTTP/3");
    assert_eq!((got.status, &got.body[..]), (200, &b"page"[..]));
    assert_eq!(disabled(&metrics(&proxy).await), d0 + 1.0);
    let lines = log_lines(&pki.dir, 1).await;
    assert_eq!(lines[0]["version"], "HTTP/3", "{}", lines[0]);
}
