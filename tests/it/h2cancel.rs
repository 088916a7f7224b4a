//! A client that cancels an HTTP/2 stream (RST_STREAM CANCEL, as a gRPC cancel does) while
//! the backend is still working is a client-closed request on both engines: no 400 page,
//! no retry, no warning or error line, and it is counted in `/metrics` as client-closed.

use crate::support::scripted::Origin;
use crate::support::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn metrics(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_h2_stream_is_client_closed_on_both_engines() {
    let origin = Origin::start().await;
    let o = origin.addr;
    let cfg = format!(
        "admin: {{address: 127.0.0.1:{{{{port2}}}}}}
listeners:
  - {{name: fast, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}
  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, h2c: true, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: {o}}}], read_timeout: 10s}}
routes:
  - {{listener: fast, upstream: app}}
  - {{listener: general, upstream: app}}
"
    );
    let proxy = Proxy::start(&cfg);
    for i in [0, 1] {
        for method in ["GET", "POST"] {
            let tcp = TcpStream::connect(proxy.addr_of(i)).await.expect("connect");
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            // a first request leaves a pooled backend connection, which the cancelled one
            // reuses (a failed reused connection used to be warned about and retried)
            let warm = http::Request::builder()
                .uri("http://app.test/")
                .body(())
                .expect("request");
            let mut c = client.clone().ready().await.expect("ready");
            let (r, _) = c.send_request(warm, true).expect("send");
            let mut body = r.await.expect("warm-up response").into_body();
            while let Some(d) = body.data().await {
                let _ = d.expect("warm-up body");
            }
            let mut c = client.ready().await.expect("ready");
            let req = http::Request::builder()
                .method(method)
                .uri("http://app.test/slow")
                .body(())
                .expect("request");
            // a POST keeps its body open, as a streaming gRPC call does
            let (resp, mut tx) = c.send_request(req, method == "GET").expect("send");
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send_reset(h2::Reason::CANCEL);
            drop(resp);
            tokio::time::sleep(Duration::from_millis(300)).await;
            task.abort();
        }
    }
    // the origin takes 3 s; let every request end
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = proxy.log();
    let m = metrics(proxy.addr_of(2)).await;
    // (a bare "400" also matches ports and milliseconds in the log)
    assert!(
        !["answering 400", "400 Bad Request", " 400 "]
            .iter()
            .any(|p| log.contains(p)),
        "a cancel was answered 400:\n{log}"
    );
    // Pingora's connector logs this ERROR when a pooled connection's idle watcher has not
    // let go of it yet as a request takes it (a race it recovers from by connecting anew),
    // which a loaded machine makes likely; it says nothing about cancels.
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("pingora_core::connectors] failed to acquire reusable stream"))
        .collect();
    assert!(
        complaints.is_empty(),
        "a cancel logged a warning or error:\n{log}"
    );
    assert_eq!(
        sample(&m, "stepstone_client_closed_total", ""),
        4.0,
        "client-closed count:\n{m}\n--- log ---\n{log}"
    );
    // Each GET reached the origin once (no retry); the POSTs' bodies never ended, so the
    // origin never finished reading them.
    let seen = origin.take();
    let gets = seen
        .iter()
        .filter(|r| r.method == "GET" && r.target == "/slow")
        .count();
    assert_eq!(gets, 2, "a cancelled request was retried or lost: {seen:?}");
}
