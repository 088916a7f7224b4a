//! Other protocols through the fast path: HTTP/2 streams to an HTTP/1 backend, and WebSocket
//! and other upgrades (h2c dropped).

use super::{config, head_and_body, Scripted, Step, WAIT};
use crate::support::client::find;
use crate::support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_get_decoded_chunked_bodies_joined_cookies_and_a_reused_backend() {
    let b = Scripted::start(|got| {
        if got.path() == "/chunked" {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
                    .to_vec(),
            )]
        } else {
            let body = format!("seen {}", got.body.len());
            vec![Step::Write(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Kind: length\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )]
        }
    })
    .await;
    // one runtime thread: idle backend connections are kept per thread
    let cfg = format!(
        "pingora:\n  threads: 1\n{}",
        config(b.addr).replace("protocol: http}", "protocol: http, h2c: true}")
    );
    let p = Proxy::start(&cfg);
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);

    let send = |path: &str, method: &str, body: Option<&'static [u8]>| {
        let c = client.clone();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://app.test{path}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .expect("request");
        async move {
            let mut c = c.ready().await.expect("ready");
            let (resp, mut tx) = c.send_request(req, body.is_none()).expect("send");
            if let Some(b) = body {
                tx.send_data(bytes::Bytes::from_static(b), true)
                    .expect("body");
            }
            let resp = tokio::time::timeout(WAIT, resp)
                .await
                .expect("in time")
                .expect("response");
            let kind = resp
                .headers()
                .get("x-kind")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let conn_hdr = resp.headers().contains_key("connection");
            let data = crate::support::client::h2_body(&mut resp.into_body())
                .await
                .expect("data");
            (kind, conn_hdr, String::from_utf8_lossy(&data).into_owned())
        }
    };
    // sequential: each stream's backend connection goes back to the pool before the next
    let (kind, conn_hdr, body) = send("/chunked", "GET", None).await;
    assert_eq!(kind.as_deref(), Some("chunked"));
    assert!(
        !conn_hdr,
        "a connection-specific field reached an HTTP/2 client"
    );
    assert_eq!(body, "hello, world", "chunked body not decoded");
    let (kind, _, body) = send("/length", "GET", None).await;
    assert_eq!((kind.as_deref(), body.as_str()), (Some("length"), "seen 0"));
    // a body makes the stream take Pingora's path; it still works on the same connection
    let (kind, _, body) = send("/post", "POST", Some(b"four")).await;
    assert_eq!((kind.as_deref(), body.as_str()), (Some("length"), "seen 4"));

    let reqs = b.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let head = reqs[0].head.to_ascii_lowercase();
    assert!(head.starts_with("get /chunked http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: app.test\r\n"), "{head}");
    assert!(
        head.contains("\r\ncookie: a=1; b=2\r\n"),
        "cookies not joined: {head}"
    );
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert_eq!(
        reqs[0].conn, reqs[1].conn,
        "the two fast-path streams did not share the pooled backend connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_other_upgrades_are_relayed_and_h2c_is_dropped() {
    let b = Scripted::start(|got| {
        if got.path() == "/refuse" {
            // a backend that does not take the upgrade answers as usual
            vec![Step::Write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec(),
            )]
        } else if got.head.to_ascii_lowercase().contains("\r\nupgrade: websocket\r\n") {
            let mut w = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n".to_vec();
            // a frame right behind the 101, in the same write
            w.extend_from_slice(b"server-first");
            vec![Step::Write(w)]
        } else {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain".to_vec(),
            )]
        }
    })
    .await;
    let p = Proxy::start(&config(b.addr));

    // an Upgrade to another protocol is relayed too; this backend declines it with a 200
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 5).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nconnection: close\r\n"),
        "a declined upgrade closes: {head}"
    );
    assert_eq!(body, b"plain");
    // h2c is an upgrade of this hop only: dropped, the backend sees a plain request
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 5).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"plain");

    // a refused handshake is an ordinary response
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /refuse HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 2).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert_eq!(body, b"no");

    // an accepted one: 101 with its fields, then the backend's first bytes through the tunnel
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut b1 = [0u8; 512];
    while find(&got, b"server-first").is_none() {
        let n = tokio::time::timeout(WAIT, s.read(&mut b1))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b1[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("\r\nupgrade: websocket\r\n"), "{text}");
    assert!(text.contains("\r\nsec-websocket-accept: x\r\n"), "{text}");

    let reqs = b.requests();
    let other = reqs.iter().find(|r| r.path() == "/other").expect("/other");
    let oh = other.head.to_ascii_lowercase();
    assert!(oh.contains("\r\nupgrade: foo/1\r\n"), "{oh}");
    assert!(oh.contains("\r\nconnection: upgrade\r\n"), "{oh}");
    let h2c = reqs.iter().find(|r| r.path() == "/h2c").expect("/h2c");
    let hh = h2c.head.to_ascii_lowercase();
    assert!(
        !hh.contains("upgrade") && !hh.contains("http2-settings"),
        "an h2c upgrade reached the backend: {hh}"
    );
    let ws = reqs.iter().find(|r| r.path() == "/ws").expect("/ws");
    let wh = ws.head.to_ascii_lowercase();
    assert!(wh.contains("\r\nconnection: upgrade\r\n"), "{wh}");
    assert!(wh.contains("\r\nsec-websocket-key: "), "{wh}");
    assert!(!wh.contains("keep-alive"), "{wh}");
}
