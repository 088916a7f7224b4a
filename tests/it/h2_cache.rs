//! Fresh cache hits over HTTP/2 on the lean engine. They went to Pingora's general engine
//! (every HTTP/2 request on a cached route did), so a browser's hits over HTTPS paid the
//! general engine's cost while an HTTP/1 client's did not. A bodiless GET or HEAD that finds
//! a fresh entry is now answered by the lean engine, with what the general engine's hit
//! carries.

use crate::support::{client, Proxy};
use std::net::SocketAddr;

/// Requests on a cached route left to the general engine, from `/metrics`.
async fn cache_fallbacks(p: &Proxy) -> u64 {
    let m = client::get(p.addr_of(1), "/metrics", &[])
        .await
        .expect("admin /metrics answers")
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix("stepstone_fast_path_fallbacks_total{reason=\"cache\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache fallback counter in /metrics:\n{m}"))
}

struct H2Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl H2Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The fields that do not change between two answers of one entry.
    fn stable(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-cache-status" | "age" | "date"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        h.sort();
        h
    }
}

/// One request over a fresh h2c connection, with `fields`.
async fn h2(addr: SocketAddr, method: &str, path: &str, fields: &[(&str, &str)]) -> H2Answer {
    let (mut client, task) = crate::support::client::h2c(addr).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"));
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let (resp, _) = client.send_request(req, true).expect("send the head");
    let resp = resp.await.expect("response");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let mut rx = resp.into_body();
    let body = crate::support::client::h2_body(&mut rx)
        .await
        .expect("response body");
    task.abort();
    H2Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fresh_hits_are_answered_by_the_lean_engine_as_the_general_one_answers_them() {
    let big = crate::cache::big_body();
    let o = crate::cache::two_object_origin().await;
    let cfg = format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}
listeners:
  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}
  - {{name: gen, address: 127.0.0.1:{{{{port2}}}}, protocol: http, h2c: true, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: '{}'}}], retries: 0}}
routes:
  - {{listener: web, upstream: app, cache: {{enabled: true}}}}
  - {{listener: gen, upstream: app, cache: {{enabled: true}}}}
",
        o.addr
    );
    let p = Proxy::start(&cfg);
    let (lean, general) = (p.addr, p.addr_of(2));

    let mut hits = Vec::new();
    for (engine, addr) in [("lean", lean), ("general", general)] {
        let miss = h2(addr, "GET", "/f", &[]).await;
        assert_eq!(
            (miss.status, miss.header("x-cache-status")),
            (200, Some("MISS")),
            "{engine}"
        );
        let before = cache_fallbacks(&p).await;
        let hit = h2(addr, "GET", "/f", &[]).await;
        assert_eq!(
            (hit.status, hit.header("x-cache-status")),
            (200, Some("HIT")),
            "{engine}: {:?}",
            hit.headers
        );
        assert_eq!(hit.body, b"fast body", "{engine}");
        assert_eq!(hit.stable(), miss.stable(), "{engine}: the miss's fields");
        assert!(
            hit.header("age").is_some_and(|a| a.parse::<u64>().is_ok()),
            "{engine}: an Age"
        );
        assert_eq!(hit.headers.get_all("date").iter().count(), 1, "{engine}");
        if engine == "lean" {
            assert_eq!(cache_fallbacks(&p).await, before, "the lean engine's hit");
        }
        hits.push(hit);
    }
    // each engine stored its own miss, which the origin numbered
    let unnumbered = |a: &H2Answer| {
        let mut h = a.stable();
        h.retain(|(k, _)| k != "x-seq");
        h
    };
    assert_eq!(
        unnumbered(&hits[0]),
        unnumbered(&hits[1]),
        "both engines' hits"
    );
    assert_eq!(
        o.requests(),
        2,
        "one origin request per engine, for the miss"
    );

    // HEAD: the fields (Content-Length too), no body, from the store
    let before = cache_fallbacks(&p).await;
    let head = h2(lean, "HEAD", "/f", &[]).await;
    assert_eq!(
        (head.status, head.header("x-cache-status")),
        (200, Some("HIT"))
    );
    assert_eq!(head.header("content-length"), Some("9"));
    assert!(head.body.is_empty());
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "the lean engine's HEAD hit"
    );

    // a body larger than a frame and the initial window, intact
    assert_eq!(
        h2(lean, "GET", "/big", &[]).await.header("x-cache-status"),
        Some("MISS")
    );
    let r = h2(lean, "GET", "/big", &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert!(r.body == big, "the large body is served intact");
    assert_eq!(r.header("content-length"), Some("100000"));

    // what the lean engine does not answer from the store still goes to the general one
    let before = cache_fallbacks(&p).await;
    let r = h2(lean, "GET", "/f", &[("if-none-match", "\"f1\"")]).await;
    assert_eq!(r.status, 304, "a conditional hit");
    assert_eq!(
        cache_fallbacks(&p).await,
        before + 1,
        "a conditional request is the general engine's"
    );
    assert_eq!(o.requests(), 3, "no origin request for the hits");
}
