//! Response cache: real origins that count their requests, the real binary, real sockets.
//! Each test names the behaviour it proves and asserts it through the origin's counter and
//! the `X-Cache-Status` header.

mod engines;
mod fast_path;
mod limits;
mod revalidation;
mod storage;

use crate::support::{client, Origin, OriginBuilder, Proxy};
use std::net::SocketAddr;

fn config(origin: &Origin, cache: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\n    retries: 0\nroutes:\n  - listener: web\n    upstream: app\n    cache: {cache}\n",
        origin.addr
    )
}

/// Requests on a cached route that the lean engine left to Pingora's path, from `/metrics`:
/// unchanged across a request means the lean engine answered it.
async fn cache_fallbacks(p: &Proxy) -> u64 {
    let m = get(p.addr_of(1), "/metrics", &[]).await.text();
    m.lines()
        .find_map(|l| l.strip_prefix("stepstone_fast_path_fallbacks_total{reason=\"cache\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache fallback counter in /metrics:\n{m}"))
}

const ON: &str = "{enabled: true, purge_from: [127.0.0.1/32]}";

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> client::Response {
    client::get(addr, path, headers).await.expect("response")
}

fn status(r: &client::Response) -> &str {
    r.header("x-cache-status").unwrap_or("(none)")
}

/// 100,000 bytes that differ along their length.
pub(crate) fn big_body() -> Vec<u8> {
    (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

/// An origin with two objects fresh for a minute: `/f` ("fast body", with an ETag and a
/// field of its own) and `/big` ([`big_body`]).
pub(crate) async fn two_object_origin() -> Origin {
    OriginBuilder::new("o")
        .on(
            "/f",
            &[
                ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/plain"),
                ("ETag", "\"f1\""),
                ("X-Custom", "kept"),
            ],
            "fast body",
        )
        .on("/big", &[("Cache-Control", "max-age=60")], big_body())
        .run()
        .await
}
