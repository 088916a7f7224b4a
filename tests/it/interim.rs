//! Interim (1xx) responses (policy::interim): a backend's `103 Early Hints` reaches an
//! HTTP/1.1 client on both engines; a `100 Continue` the client did not ask for reaches
//! nobody; an HTTP/1.0 client gets no 1xx at all; HTTP/2 clients get none (Pingora's HTTP/2
//! server session cannot write them), on both engines alike. The scripted origin sends each
//! 1xx and the final answer in one write.

use crate::support::scripted::{config, Origin};
use crate::support::Proxy;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Send `raw` (which asks for the connection to close) and read all that comes back.
async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The status lines in what came back, in order.
fn statuses(text: &str) -> Vec<String> {
    text.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .map(|l| l.get(9..12).unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_reach_http11_clients_and_unrequested_continue_reaches_nobody() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(origin.addr, "protocol: http"));
    let mut problems = Vec::new();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let addr = proxy.addr_of(i);
        let cases: [(&str, String, &[&str]); 5] = [
            (
                "103 to HTTP/1.1",
                "GET /early HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into(),
                &["103", "200"],
            ),
            (
                "unrequested 100 to HTTP/1.1",
                "GET /continue HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into(),
                &["200"],
            ),
            (
                "103 to HTTP/1.0",
                "GET /early HTTP/1.0\r\nHost: app.test\r\n\r\n".into(),
                &["200"],
            ),
            (
                "100 to HTTP/1.0",
                "GET /continue HTTP/1.0\r\nHost: app.test\r\n\r\n".into(),
                &["200"],
            ),
            (
                "100 to an HTTP/1.1 expectation",
                "POST /continue HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi".into(),
                &["100", "200"],
            ),
        ];
        for (name, raw, want) in cases {
            let text = exchange(addr, &raw).await;
            let got = statuses(&text);
            if got != want {
                problems.push(format!(
                    "{engine}: {name}: statuses {got:?}, want {want:?}: {text:?}"
                ));
            }
            if name.starts_with("103 to HTTP/1.1") && !text.contains("Link: </s.css>; rel=preload")
            {
                problems.push(format!(
                    "{engine}: {name}: the hint's Link field is lost: {text:?}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- log ---\n{}",
        problems.join("\n"),
        proxy.log()
    );
}

/// Over h2c: the interim heads the client saw and the final status.
async fn h2c_get(addr: SocketAddr, path: &str) -> Result<(Vec<u16>, u16), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut c = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .uri(format!("http://app.test{path}"))
        .body(())
        .map_err(|e| e.to_string())?;
    let (mut resp, _) = c.send_request(req, true).map_err(|e| e.to_string())?;
    let mut interim = Vec::new();
    let r = tokio::time::timeout(WAIT, async {
        while let Some(i) = std::future::poll_fn(|cx| resp.poll_informational(cx)).await {
            interim.push(i.map_err(|e| e.to_string())?.status().as_u16());
        }
        let r = resp.await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let mut body = r.into_body();
        while let Some(d) = body.data().await {
            let d: Bytes = d.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(d.len());
        }
        Ok::<u16, String>(status)
    })
    .await
    .map_err(|_| "no answer in time".to_string())?;
    task.abort();
    Ok((interim, r?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_final_answer_and_no_interim_on_both_engines() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(origin.addr, "protocol: http, h2c: true"));
    let mut problems = Vec::new();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        for path in ["/early", "/continue"] {
            match h2c_get(proxy.addr_of(i), path).await {
                Ok((interim, 200)) if interim.is_empty() => {}
                other => problems.push(format!("{engine}: {path}: {other:?}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- log ---\n{}",
        problems.join("\n"),
        proxy.log()
    );
}
