//! The plaintext listener's side of TLS offload: the redirect to https, and h2c.

use super::{app_upstream, h2_get};
use crate::support::{OriginBuilder, Proxy};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_redirects_to_https() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, redirect_https: true, https_port: 8443}}\n  - {{name: std, address: 127.0.0.1:{{{{port1}}}}, protocol: http, redirect_https: true}}\n{}",
        app_upstream(origin.addr, "web")
    );
    let proxy = Proxy::start(&cfg);
    let mut c = crate::support::Conn::connect(proxy.addr)
        .await
        .expect("connect");
    let r = c
        .get("/a/b?x=1", &[("Host", "example.com")])
        .await
        .expect("response");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://example.com:8443/a/b?x=1")
    );
    // Keep-alive survives a GET redirect.
    let r = c
        .get("/", &[("Host", "example.com:80")])
        .await
        .expect("response");
    assert_eq!(r.header("location"), Some("https://example.com:8443/"));
    let r = c
        .request("POST", "/form", &[("Host", "example.com")], b"a=1")
        .await
        .expect("response");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.com:8443/form"));
    // a spent Max-Forwards is redirected as any request: the redirect is the final answer
    let mut c = crate::support::Conn::connect(proxy.addr)
        .await
        .expect("connect");
    let r = c
        .request(
            "OPTIONS",
            "/o",
            &[("Host", "example.com"), ("Max-Forwards", "0")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.com:8443/o"));
    let r = crate::support::client::get(proxy.addr_of(1), "/p", &[("Host", "www.example.org")])
        .await
        .expect("response");
    assert_eq!(r.header("location"), Some("https://www.example.org/p"));
    // A Host that cannot go into a URL is refused, not reflected.
    let r = crate::support::client::get(proxy.addr, "/", &[("Host", "evil.com/x")])
        .await
        .expect("response");
    assert_eq!(r.status, 400);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_serves_http2_and_http1() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n{}",
        app_upstream(origin.addr, "web")
    );
    let proxy = Proxy::start(&cfg);
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            h2_get(c, &format!("http://localhost/c{i}")).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("task").expect("h2c stream");
        assert_eq!((status, body.as_slice()), (200, &b"app"[..]));
    }
    let r = crate::support::client::get(proxy.addr, "/h1", &[])
        .await
        .expect("h1");
    assert_eq!(r.status, 200);
    let rec = origin.recorded();
    assert_eq!(rec.len(), 11);
    assert!(rec
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("http")));
}
