//! Response compression (`routes[].compression`): each coding decoded and compared with the
//! origin's bytes, on both engines; what is never compressed; the cache serving one stored
//! identity response in three encodings; a streamed body flushed piece by piece.

use crate::support::{client, OriginBuilder, Proxy};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn text() -> Vec<u8> {
    (0..4000u32)
        .flat_map(|i| format!("row {i}: some text that compresses\n").into_bytes())
        .collect()
}

pub(crate) fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("gzip decodes");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("br decodes");
        }
        "zstd" => out = zstd::stream::decode_all(data).expect("zstd decodes"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// Listener `web` (lean engine by default) and `gen` (`fast_path: false`), both on a
/// compressing route; `/cached/` also caches.
fn config(origin: SocketAddr) -> String {
    let mut routes = String::new();
    for l in ["web", "gen"] {
        routes.push_str(&format!(
            "  - {{listener: {l}, upstream: app, compression: {{enabled: true}}}}\n  - {{listener: {l}, path_prefix: /cached/, upstream: app, compression: {{enabled: true}}, cache: {{enabled: true}}}}\n  - {{listener: {l}, path_prefix: /plain/, upstream: app}}\n"
        ));
    }
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n  - {{name: gen, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}\nupstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\n    retries: 0\nroutes:\n{routes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coding_decodes_to_the_origin_bytes_on_both_engines() {
    let body = text();
    let o = OriginBuilder::new("o")
        .on(
            "/t",
            &[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("ETag", "\"t1\""),
            ],
            body.clone(),
        )
        .on("/plain/t", &[("Content-Type", "text/plain")], body.clone())
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    for (engine, addr) in [("lean", p.addr), ("general", p.addr_of(1))] {
        for (ae, want) in [
            ("gzip, deflate, br, zstd", "br"),
            ("gzip;q=1, br;q=0.5", "gzip"),
            ("zstd", "zstd"),
        ] {
            let r = client::get(addr, "/t", &[("Accept-Encoding", ae)])
                .await
                .expect("response");
            assert_eq!(r.status, 200, "{engine} {ae}");
            assert_eq!(r.header("content-encoding"), Some(want), "{engine} {ae}");
            assert!(
                r.header("vary")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                "{engine} {ae}: Vary {:?}",
                r.header("vary")
            );
            assert_eq!(r.header("etag"), Some("W/\"t1\""), "{engine} {ae}");
            assert!(r.body.len() < body.len() / 4, "{engine} {ae}: compressed");
            assert_eq!(decode(want, &r.body), body, "{engine} {ae}");
        }
        // compressed responses keep the connection: two on one keep-alive connection
        let mut c = crate::support::Conn::connect(addr).await.expect("connect");
        for i in 0..2 {
            let r = c
                .get("/t", &[("Accept-Encoding", "gzip")])
                .await
                .expect("a compressed response, then another on the same connection");
            assert_eq!(
                r.header("transfer-encoding"),
                Some("chunked"),
                "{engine} {i}"
            );
            assert_eq!(decode("gzip", &r.body), body, "{engine} {i}");
        }
        // no Accept-Encoding, or only identity: the bytes as they are, still with Vary
        for ae in [None, Some("identity"), Some("gzip;q=0")] {
            let h: Vec<(&str, &str)> = ae.map(|v| ("Accept-Encoding", v)).into_iter().collect();
            let r = client::get(addr, "/t", &h).await.expect("response");
            assert_eq!(r.header("content-encoding"), None, "{engine} {ae:?}");
            assert_eq!(r.body, body, "{engine} {ae:?}");
            assert!(r.header("vary").is_some(), "{engine} {ae:?}");
        }
        // a route without compression
        let r = client::get(addr, "/plain/t", &[("Accept-Encoding", "gzip")])
            .await
            .expect("response");
        assert_eq!(
            (r.header("content-encoding"), r.body == body),
            (None, true),
            "{engine}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_never_compressed() {
    let body = text();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&body).expect("gzip");
        e.finish().expect("gzip")
    };
    let o = OriginBuilder::new("o")
        .on(
            "/nt",
            &[
                ("Content-Type", "text/plain"),
                ("Cache-Control", "no-transform"),
            ],
            body.clone(),
        )
        .on(
            "/enc",
            &[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
            gz.clone(),
        )
        .on("/small", &[("Content-Type", "text/plain")], "tiny body")
        .on("/png", &[("Content-Type", "image/png")], body.clone())
        .on("/t", &[("Content-Type", "text/plain")], body.clone())
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let ae = ("Accept-Encoding", "br, gzip");
    for (engine, addr) in [("lean", p.addr), ("general", p.addr_of(1))] {
        for (path, want) in [
            ("/nt", body.clone()),
            ("/enc", gz.clone()),
            ("/small", b"tiny body".to_vec()),
            ("/png", body.clone()),
        ] {
            let r = client::get(addr, path, &[ae]).await.expect("response");
            assert_eq!(r.status, 200, "{engine} {path}");
            assert_eq!(r.body, want, "{engine} {path}: as the origin sent it");
            let ce = r.header("content-encoding");
            assert!(
                ce.is_none() || ce == Some("gzip") && path == "/enc",
                "{engine} {path}"
            );
        }
        // a Range request gets its range of the identity
        let r = client::get(addr, "/t", &[ae, ("Range", "bytes=0-9")])
            .await
            .expect("response");
        assert_eq!(r.header("content-encoding"), None, "{engine} range");
        // HEAD: no coding either
        let mut c = crate::support::Conn::connect(addr).await.expect("connect");
        let r = c.request("HEAD", "/t", &[ae], b"").await.expect("head");
        assert_eq!(r.header("content-encoding"), None, "{engine} HEAD");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_route_serves_br_gzip_and_identity_from_one_origin_request() {
    let body = text();
    let o = OriginBuilder::new("o")
        .on(
            "/cached/t",
            &[
                ("Content-Type", "text/plain"),
                ("Cache-Control", "max-age=60"),
            ],
            body.clone(),
        )
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    for (i, (engine, addr)) in [("lean", p.addr), ("general", p.addr_of(1))]
        .into_iter()
        .enumerate()
    {
        for ae in ["br", "gzip", ""] {
            let h: Vec<(&str, &str)> = if ae.is_empty() {
                Vec::new()
            } else {
                vec![("Accept-Encoding", ae)]
            };
            let r = client::get(addr, "/cached/t", &h).await.expect("response");
            assert_eq!(r.status, 200, "{engine} {ae}");
            if ae.is_empty() {
                assert_eq!(r.header("content-encoding"), None, "{engine}");
                assert_eq!(r.body, body, "{engine} identity");
            } else {
                assert_eq!(r.header("content-encoding"), Some(ae), "{engine}");
                assert_eq!(decode(ae, &r.body), body, "{engine} {ae}");
            }
        }
        assert_eq!(
            o.requests(),
            i + 1,
            "{engine}: one origin request for three clients"
        );
    }
}

/// An origin that sends a text/event-stream body in two chunks and sends the second only
/// once the test says the first reached the client (or 3 s passed: then it was held back).
async fn two_piece_origin(
    release: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return false;
        };
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                _ => return false,
            }
        }
        let first = "data: the first event, sent on its own\n\n".repeat(20);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunk = format!("{head}{:x}\r\n{first}\r\n", first.len());
        if s.write_all(chunk.as_bytes()).await.is_err() {
            return false;
        }
        let mut release = release;
        let released = tokio::time::timeout(Duration::from_secs(3), release.wait_for(|r| *r))
            .await
            .is_ok();
        let second = "data: second\n\n";
        let rest = format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len());
        let _ = s.write_all(rest.as_bytes()).await;
        released
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_compressed_piece_by_piece() {
    for fast_path in [true, false] {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (origin, task) = two_piece_origin(rx).await;
        let cfg = format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\n    retries: 0\nroutes:\n  - {{listener: web, upstream: app, compression: {{algorithms: [gzip]}}}}\n"
        );
        let p = Proxy::start(&cfg);
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(b"GET /events HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n")
            .await
            .expect("send");
        // Read until the decoded body holds the first event: the gzip stream so far is
        // decoded as it arrives (chunked framing stripped by hand).
        let mut raw = Vec::new();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut fed = 0;
        let mut b = [0u8; 8192];
        let got_first = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = s.read(&mut b).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                raw.extend_from_slice(&b[..n]);
                let Some(start) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let body = dechunk(&raw[start + 4..]);
                let _ = decoder.write_all(&body[fed..]);
                fed = body.len();
                let _ = decoder.flush();
                if String::from_utf8_lossy(decoder.get_ref()).contains("the first event") {
                    return true;
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = tx.send(true);
        assert!(
            got_first,
            "fast_path {fast_path}: the first piece reached the client"
        );
        assert!(
            task.await.unwrap_or(false),
            "fast_path {fast_path}: the first piece arrived before the origin sent the second"
        );
        let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(
            head.contains("content-encoding: gzip"),
            "fast_path {fast_path}: {head}"
        );
    }
}

/// The data of the complete chunks in `b` (a chunked body as far as it arrived).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        if size == 0 || b.len() < eol + 2 + size + 2 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}
