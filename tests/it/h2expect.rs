//! `Expect: 100-continue` over HTTP/2. A request the policy refuses for its declared size
//! (`max_body_size`) is answered 413 at once, before the client sends any DATA, on both
//! engines. (The 100 for a request that will be forwarded cannot be written: Pingora's
//! HTTP/2 server session drops informational heads; see policy::interim.)

use crate::support::scripted::{config, Origin};
use crate::support::Proxy;
use std::time::Duration;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_expect_over_the_body_limit_gets_413_before_any_data_on_both_engines() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(origin.addr, "protocol: http, h2c: true"));
    let mut problems = Vec::new();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let tcp = TcpStream::connect(proxy.addr_of(i)).await.expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut c = client.ready().await.expect("ready");
        // the route under /small takes at most 10 body bytes
        let req = http::Request::builder()
            .method("POST")
            .uri("http://app.test/small")
            .header("expect", "100-continue")
            .header("content-length", "100")
            .body(())
            .expect("request");
        let (resp, _tx) = c.send_request(req, false).expect("send");
        // no DATA is sent: the answer must come without it
        match tokio::time::timeout(Duration::from_secs(2), resp).await {
            Ok(Ok(r)) if r.status() == 413 => {}
            other => problems.push(format!("{engine}: {other:?}")),
        }
        task.abort();
    }
    assert!(
        problems.is_empty(),
        "{}\n--- log ---\n{}",
        problems.join("\n"),
        proxy.log()
    );
    assert!(
        origin.take().is_empty(),
        "a refused request reached the origin"
    );
}
