//! HTTP/2 requests with bodies on the lean engine. They all went to Pingora's general engine,
//! at twice HAProxy's CPU per request for a 1 KiB POST. A body of a declared length up to
//! 64 KiB is now read whole and sent with the request head (so a retry can send it again);
//! a larger one, or one of unknown length, still streams through the general engine.

use crate::support::metrics::{metrics, series, wait_series};
use crate::support::scripted::{Origin, Seen};
use crate::support::Proxy;
use bytes::Bytes;
use std::net::SocketAddr;

const FALLBACKS: &str = "stepstone_fast_path_fallbacks_total";
const BODY_BYTES: &str = "stepstone_http_body_bytes_total";

/// Bytes that differ along their length, so a reordered or shifted body shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

/// One request over a fresh h2c connection: the body sent in `pieces` DATA frames, with a
/// Content-Length field if `declared`. The status and the response body.
async fn send(
    addr: SocketAddr,
    method: &str,
    body: &[u8],
    pieces: usize,
    declared: bool,
) -> (u16, Vec<u8>) {
    let (mut client, task) = crate::support::client::h2c(addr).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri("http://app.test/upload");
    if declared {
        req = req.header("content-length", body.len().to_string());
    }
    let req = req.body(()).expect("request");
    let (resp, mut tx) = client
        .send_request(req, body.is_empty())
        .expect("send the head");
    if !body.is_empty() {
        let step = body.len().div_ceil(pieces);
        for (i, piece) in body.chunks(step).enumerate() {
            let last = (i + 1) * step >= body.len();
            tx.reserve_capacity(piece.len());
            let mut at = 0;
            while at < piece.len() {
                let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx))
                    .await
                    .expect("capacity")
                    .expect("capacity");
                let n = cap.min(piece.len() - at);
                let end = last && at + n == piece.len();
                tx.send_data(Bytes::copy_from_slice(&piece[at..at + n]), end)
                    .expect("send data");
                at += n;
            }
        }
    }
    let resp = resp.await.expect("response");
    let status = resp.status().as_u16();
    let mut rx = resp.into_body();
    let got = crate::support::client::h2_body(&mut rx)
        .await
        .expect("response body");
    task.abort();
    (status, got)
}

fn only(seen: Vec<Seen>) -> Seen {
    assert_eq!(seen.len(), 1, "the origin saw one request: {seen:?}");
    seen.into_iter().next().expect("one request")
}

fn field<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_of_a_declared_length_stay_on_the_lean_engine() {
    let origin = Origin::start().await;
    let mut p = Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        origin.addr
    ));
    let admin = p.addr_of(1);
    p.wait_ready(admin).unwrap_or_else(|e| panic!("{e}"));
    let all0 = series(&metrics(&p).await, FALLBACKS, &[]);

    // a POST of 40,000 bytes in five DATA frames, a 1 KiB PUT in one, a bodiless DELETE,
    // and the largest body held, 64 KiB: each reaches the origin whole, with its length
    for (method, len, pieces) in [
        ("POST", 40_000, 5),
        ("PUT", 1024, 1),
        ("DELETE", 0, 1),
        ("POST", 64 << 10, 3),
    ] {
        let body = pattern(len);
        let (status, _) = send(p.addr, method, &body, pieces, true).await;
        assert_eq!(status, 200, "{method} of {len} bytes");
        let seen = only(origin.take());
        assert_eq!(seen.method, method);
        assert!(seen.body == body, "{method}: the body arrived whole");
        assert_eq!(
            field(&seen, "content-length"),
            Some(len.to_string().as_str()),
            "{method}: the declared length went with it"
        );
    }
    // the bodies are counted in, as the general engine counts them (when the request ends,
    // which may be a moment after the client saw the answer)
    let held = (40_000 + 1024 + (64 << 10)) as f64;
    let body_in = ["direction=\"in\""];
    let m = wait_series(&p, BODY_BYTES, &body_in, held).await;
    assert_eq!(
        series(&m, BODY_BYTES, &body_in),
        held,
        "the route's body bytes in:\n{m}"
    );
    assert_eq!(
        series(&m, FALLBACKS, &[]),
        all0,
        "all of them on the lean engine:\n{m}"
    );

    // over 64 KiB, and a body of unknown length: the general engine's, whole all the same
    let h2_request = ["reason=\"h2_request\""];
    for (n, (len, declared)) in [((64 << 10) + 1, true), (5000, false)]
        .into_iter()
        .enumerate()
    {
        let body = pattern(len);
        let (status, _) = send(p.addr, "POST", &body, 4, declared).await;
        assert_eq!(status, 200, "POST of {len} bytes, declared: {declared}");
        let seen = only(origin.take());
        assert!(seen.body == body, "{len} bytes: the body arrived whole");
        let m = wait_series(&p, FALLBACKS, &h2_request, n as f64 + 1.0).await;
        assert_eq!(
            series(&m, FALLBACKS, &h2_request),
            n as f64 + 1.0,
            "{len} bytes (declared: {declared}) on the general engine:\n{m}"
        );
    }
}
