//! Chunked request bodies on the lean engine: decoded as they arrive and sent on in the
//! proxy's own framing (one chunk per read, no extension, no trailer, the last chunk), as
//! the general engine (Pingora) sends them, so that a chunked upload no longer leaves the
//! lean engine (it cost twice the CPU of the same upload with a Content-Length). Checked on
//! real sockets with the body arriving in several writes: what the backend gets, the
//! route's `max_body_size` counted over the decoded data, and the cases still left to the
//! general engine (a body a retry or a mirror would have to send again).

use crate::support::metrics::{metrics, series, wait_series};
use crate::support::raw::{chunked_body, read_until_close, statuses, RawBackend, Reply};
use crate::support::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FALLBACKS: &str = "stepstone_fast_path_fallbacks_total";
const TE: [&str; 1] = ["reason=\"transfer_encoding\""];
const WAIT: Duration = Duration::from_secs(10);

/// An http listener (`keys` added to it) with an admin listener on `{{port1}}`, one upstream
/// (`upstream` keys added) and routes `routes` (each `{listener: web, upstream: app, ...}`
/// with the given extra keys).
fn config(b: SocketAddr, keys: &str, upstream: &str, routes: &[&str]) -> String {
    let mut c = format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http{keys}}}\nupstreams:\n  - name: app\n    backends: [{{address: {b}}}]\n{upstream}  - name: shadow\n    backends: [{{address: {b}}}]\nroutes:\n"
    );
    for r in routes {
        c.push_str(&format!("  - {{listener: web, upstream: app{r}}}\n"));
    }
    c
}

/// Send `parts` on a new connection, 30 ms apart (so the body comes in several reads), and
/// read until the proxy closes: the answers' statuses and the bytes.
async fn upload(addr: SocketAddr, parts: &[Vec<u8>]) -> (Vec<u16>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for p in parts {
        s.write_all(p).await.expect("send");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (answer, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "the proxy kept the connection open");
    (
        statuses(&answer),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

fn head(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_stays_on_the_lean_engine_and_reaches_the_backend_reframed() {
    let big = vec![b'b'; 20_000];
    let mut data = b"hello world".to_vec();
    data.extend_from_slice(&big);
    data.extend_from_slice(b"!");
    let mut wrong = Vec::new();
    for (engine, keys) in [("lean", ""), ("general", ", fast_path: false")] {
        let b = RawBackend::start(Reply::Ok).await;
        let mut p = Proxy::start(&config(b.addr, keys, "", &[""]));
        let admin = p.addr_of(1);
        p.wait_ready(admin).unwrap_or_else(|e| panic!("{e}"));
        let m = metrics(&p).await;
        let (all0, te0) = (series(&m, FALLBACKS, &[]), series(&m, FALLBACKS, &TE));
        let parts = vec![
            [
                head("POST", "/up"),
                b"5;name=value\r\nhello\r\n6\r\n wor".to_vec(),
            ]
            .concat(),
            b"ld\r\n4e20\r\n".to_vec(),
            [&big[..5000], b""].concat(),
            [&big[5000..], b"\r\n1;x\r\n!\r\n0\r\nX-Sum: 1\r\n\r\n"].concat(),
            b"GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".to_vec(),
        ];
        let (st, text) = upload(p.addr, &parts).await;
        if st != [200, 200] {
            wrong.push(format!("{engine}: answers {st:?}: {text}"));
        }
        let heads = b.heads();
        if heads.len() != 2 || !heads[1].starts_with("GET /next ") {
            wrong.push(format!("{engine}: the backend saw {heads:?}"));
        }
        let first = heads
            .first()
            .map(|h| h.to_ascii_lowercase())
            .unwrap_or_default();
        if !first.contains("\r\ntransfer-encoding: chunked\r\n") || first.contains("content-length")
        {
            wrong.push(format!("{engine}: the upload's framing field: {first:?}"));
        }
        match chunked_body(&b.raw()) {
            Some((lines, got, rest)) => {
                if got != data {
                    wrong.push(format!("{engine}: {} bytes of data arrived", got.len()));
                }
                // the proxy's own framing: plain sizes, nothing after the last chunk's line
                // but the blank line
                if lines.iter().any(|l| l.contains(';')) || !rest.starts_with(b"\r\nGET /next") {
                    wrong.push(format!(
                        "{engine}: size lines {lines:?}, then {:?}",
                        String::from_utf8_lossy(&rest[..rest.len().min(30)])
                    ));
                }
            }
            None => wrong.push(format!("{engine}: no chunked body reached the backend")),
        }
        // which engine served it: the lean one counts no fallback; the general one counts
        // its `disabled` for both requests
        let want_all = if engine == "lean" { all0 } else { all0 + 2.0 };
        let m = wait_series(&p, FALLBACKS, &[], want_all).await;
        if series(&m, FALLBACKS, &[]) != want_all || series(&m, FALLBACKS, &TE) != te0 {
            wrong.push(format!(
                "{engine}: fallbacks {}",
                series(&m, FALLBACKS, &[])
            ));
        }
        if !wrong.is_empty() {
            wrong.push(p.log());
            break;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `max_body_size` bounds a chunked body's data as it streams: past it, 413 and a close,
/// after the head and the first pieces went to the backend (a length is not known first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_past_max_body_size_is_a_413_on_both_engines() {
    let piece = [b"1000\r\n".to_vec(), vec![b'x'; 4096], b"\r\n".to_vec()].concat();
    let mut wrong = Vec::new();
    for (engine, keys) in [("lean", ""), ("general", ", fast_path: false")] {
        let b = RawBackend::start(Reply::Ok).await;
        let p = Proxy::start(&config(b.addr, keys, "", &[", max_body_size: 10KiB"]));
        let parts = vec![
            [head("POST", "/up"), piece.clone()].concat(),
            piece.clone(),
            piece.clone(),
            b"0\r\n\r\n".to_vec(),
        ];
        let (st, text) = upload(p.addr, &parts).await;
        if st != [413] {
            wrong.push(format!("{engine}: answers {st:?}: {text}"));
        }
        let raw = b.raw();
        if raw.ends_with(b"0\r\n\r\n") || b.requests() > 1 {
            wrong.push(format!(
                "{engine}: the backend got a whole request ({} bytes, {} requests)",
                raw.len(),
                b.requests()
            ));
        }
        if !p.log().contains("exceeds max_body_size") {
            wrong.push(format!("{engine}: no log line: {}", p.log()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A chunked body that a retry after sending (an idempotent method on an upstream that
/// retries on answers) or a mirror would need whole goes to the general engine, which keeps
/// a copy; a POST on the same upstream stays on the lean engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_a_retry_or_mirror_would_resend_is_left_to_the_general_engine() {
    let b = RawBackend::start(Reply::Ok).await;
    let routes = [
        ", path_prefix: /mirrored, mirror: {upstream: shadow, percent: 100}",
        "",
    ];
    let retrying = "    retries: 1\n    retry_on: [\"503\"]\n";
    let mut p = Proxy::start(&config(b.addr, "", retrying, &routes));
    let admin = p.addr_of(1);
    p.wait_ready(admin).unwrap_or_else(|e| panic!("{e}"));
    let te0 = series(&metrics(&p).await, FALLBACKS, &TE);
    let body = b"3\r\nabc\r\n0\r\n\r\n";
    let mut wrong = Vec::new();
    for (method, path, falls_back) in [
        ("POST", "/plain", false),
        ("PUT", "/plain", true),
        ("POST", "/mirrored", true),
    ] {
        let before = series(&metrics(&p).await, FALLBACKS, &TE);
        let mut h = head(method, path);
        h.extend_from_slice(body);
        h.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        let (st, text) = upload(p.addr, &[h]).await;
        if st != [200, 200] {
            wrong.push(format!("{method} {path}: answers {st:?}: {text}"));
        }
        let want = before + f64::from(u8::from(falls_back));
        let m = wait_series(&p, FALLBACKS, &TE, want).await;
        if series(&m, FALLBACKS, &TE) != want {
            wrong.push(format!(
                "{method} {path}: transfer_encoding fallbacks {} (want {want})",
                series(&m, FALLBACKS, &TE)
            ));
        }
    }
    let m = metrics(&p).await;
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), p.log());
    assert_eq!(series(&m, FALLBACKS, &TE), te0 + 2.0, "{m}");
}
