//! Protocol correctness at the edge (RFC 9110, 9112), each on both engines: a listener on
//! the lean engine and one with `fast_path: false`, the same bytes to each, and the exact
//! answer and origin request asserted (the differential tests only require them equal).

use crate::support::raw::read_until_close;
use crate::support::scripted::{config, Origin, Seen};
use crate::support::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Send `raw` on a new connection; what came back until the proxy closed or 2 s passed.
async fn send(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("send");
    let (out, _) = read_until_close(&mut s, Duration::from_secs(2)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn field<'a>(seen: &'a Seen, name: &str) -> Vec<&'a str> {
    seen.fields
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Both listeners of the differential config: (engine name, address).
fn engines(p: &Proxy) -> [(&'static str, SocketAddr); 2] {
    [("lean", p.addr_of(0)), ("general", p.addr_of(1))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_fields_with_underscores_never_reach_the_backend() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        let out = send(
            addr,
            "GET / HTTP/1.1\r\nHost: app.test\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\nX_User: a\r\nX-Normal: b\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 "), "{engine}: {out}");
        let seen = origin.take();
        assert_eq!(seen.len(), 1, "{engine}: {seen:?}");
        assert!(
            seen[0].fields.iter().all(|(k, _)| !k.contains('_')),
            "{engine}: an underscore field reached the origin: {:?}",
            seen[0].fields
        );
        assert_eq!(field(&seen[0], "x-normal"), ["b"], "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_goes_upstream_as_one_value() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        for cl in [
            "Content-Length: 3, 3",
            "Content-Length: 3\r\nContent-Length: 3",
            "Content-Length: 003",
        ] {
            let out = send(
                addr,
                &format!(
                    "POST /echo HTTP/1.1\r\nHost: app.test\r\n{cl}\r\nConnection: close\r\n\r\nabc"
                ),
            )
            .await;
            assert!(out.starts_with("HTTP/1.1 200 "), "{engine} {cl:?}: {out}");
            assert!(out.ends_with("3 bytes"), "{engine} {cl:?}: {out}");
            let seen = origin.take();
            assert_eq!(seen.len(), 1, "{engine} {cl:?}");
            assert_eq!(field(&seen[0], "content-length"), ["3"], "{engine} {cl:?}");
            assert_eq!(seen[0].body, b"abc", "{engine} {cl:?}");
        }
        // differing values stay a 400 (smuggling-ambiguous), never forwarded
        let out = send(
            addr,
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3, 4\r\n\r\nabcd",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{engine}: {out}");
        assert!(origin.take().is_empty(), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_from_a_backend_reaches_the_client_as_one_value() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        for path in ["/cl-list", "/cl-twice"] {
            let out = send(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
            )
            .await;
            let lower = out.to_ascii_lowercase();
            assert!(out.starts_with("HTTP/1.1 200 "), "{engine} {path}: {out}");
            assert_eq!(
                lower.matches("content-length:").count(),
                1,
                "{engine} {path}: {out}"
            );
            assert!(
                lower.contains("\r\ncontent-length: 2\r\n"),
                "{engine} {path}: {out}"
            );
            assert!(out.ends_with("\r\n\r\nok"), "{engine} {path}: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_status_outside_100_to_599_is_a_502() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        let out = send(addr, "GET /status-600 HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 502 "), "{engine}: {out}");
        assert!(!out.contains("Weird"), "{engine}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_with_spaces_in_the_target_are_refused() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        for line in [
            "GET /a b HTTP/1.1",
            "GET  /a HTTP/1.1",
            "GET /a HTTP/1.1 ",
            "GET /a\tb HTTP/1.1",
        ] {
            let out = send(addr, &format!("{line}\r\nHost: app.test\r\n\r\n")).await;
            assert!(out.starts_with("HTTP/1.1 400 "), "{engine} {line:?}: {out}");
        }
        assert!(
            origin.take().is_empty(),
            "{engine}: a refused request reached the origin"
        );
    }
    // the refusal names itself in the log
    let log = p.log();
    assert!(
        log.contains("request line is not METHOD SP TARGET SP VERSION"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_and_trailers_outside_the_grammar_are_refused() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    let long = "x".repeat(10 << 10);
    let bodies = [
        "\r\nabc\r\n0\r\n\r\n".to_string(),
        "3;a\nb\r\nabc\r\n0\r\n\r\n".to_string(),
        "3;a\0b\r\nabc\r\n0\r\n\r\n".to_string(),
        format!("3;{long}\r\nabc\r\n0\r\n\r\n"),
        "3\r\nabc\r\n0\r\nX-T: a\x01\r\n\r\n".to_string(),
    ];
    for (engine, addr) in engines(&p) {
        // request bodies: 400 from the guard, nothing forwarded
        for body in &bodies {
            let out = send(
                addr,
                &format!("POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"),
            )
            .await;
            assert!(
                out.starts_with("HTTP/1.1 400 "),
                "{engine} {:?}: {out}",
                &body[..body.len().min(20)]
            );
        }
        let seen = origin.take();
        assert!(
            seen.is_empty(),
            "{engine}: a refused body reached the origin: {seen:?}"
        );
        // responses: never relayed. The lean engine, which passes chunks through byte for
        // byte, answers 502 before the head; Pingora's path decodes and re-chunks, dropping
        // the extension or trailer it could not pass on.
        for path in ["/bad-chunk-ext", "/bad-trailer"] {
            let out = send(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n"),
            )
            .await;
            if engine == "lean" {
                assert!(out.starts_with("HTTP/1.1 502 "), "{engine} {path}: {out:?}");
            } else {
                assert!(
                    out.starts_with("HTTP/1.1 502 ") || out.starts_with("HTTP/1.1 200 "),
                    "{engine} {path}: {out:?}"
                );
            }
            assert!(
                !out.contains('\u{1}') && !out.contains('\0'),
                "{engine} {path}: relayed {out:?}"
            );
        }
        origin.take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_never_get_chunked_and_keep_alive_only_with_a_length() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        // a chunked origin response reaches an HTTP/1.0 client close-delimited
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /chunked HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("send");
        let (out, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        let lower = out.to_ascii_lowercase();
        assert!(out.starts_with("HTTP/1.1 200 "), "{engine}: {out}");
        assert!(!lower.contains("transfer-encoding"), "{engine}: {out}");
        assert!(out.ends_with("\r\n\r\nhello world"), "{engine}: {out}");
        assert!(
            closed,
            "{engine}: a close-delimited answer left the connection open"
        );
        // with a length, an HTTP/1.0 keep-alive is honoured
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("send");
        let (out, closed) = read_until_close(&mut s, Duration::from_millis(500)).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(
            out.to_ascii_lowercase().contains("connection: keep-alive"),
            "{engine}: {out}"
        );
        assert!(
            !closed,
            "{engine}: closed a keep-alive HTTP/1.0 connection with a length"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_after_head_or_204_never_reaches_the_next_request() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        for method in ["HEAD", "GET"] {
            let out = send(
                addr,
                &format!(
                    "{method} /late-body HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            assert!(!out.contains("LATE!"), "{engine} {method}: {out}");
            // the next request, likely on the same pooled upstream connection, gets its own answer
            let out = send(
                addr,
                "GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(
                out.starts_with("HTTP/1.1 200 "),
                "{engine} after {method}: {out}"
            );
            assert!(out.ends_with("hello"), "{engine} after {method}: {out}");
        }
        origin.take();
    }
}

/// What a client that sends `head` and `body_len` bytes of body, reading only once it has
/// sent everything, saw: whether every write went through (the proxy drained what came
/// after its answer), what it read, and whether the read ended with a clean FIN.
async fn refused_while_sending(
    addr: SocketAddr,
    head: String,
    body_len: usize,
) -> (bool, String, bool) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let send = async {
        s.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<(), std::io::Error>(())
    };
    let sent = matches!(
        tokio::time::timeout(Duration::from_secs(4), send).await,
        Ok(Ok(()))
    );
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let clean = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            _ => break false,
        }
    };
    (sent, String::from_utf8_lossy(&out).into_owned(), clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_the_client_still_sends_closes_with_a_lingering_close() {
    let origin = Origin::start().await;
    let p = Proxy::start(&config(origin.addr, "protocol: http"));
    for (engine, addr) in engines(&p) {
        // 413 by the declared length, with 8 MiB of body on its way; then 431 for a head over
        // max_header_size with more of it on its way. The proxy answers, sends FIN, and keeps
        // reading (and dropping) what the client still sends, so the client's writes go
        // through and its read ends cleanly instead of on a reset.
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}",
            "y".repeat(1 << 20)
        );
        let cases = [
            (
                "413",
                "POST /small HTTP/1.1\r\nHost: app.test\r\nContent-Length: 8388608\r\n\r\n"
                    .to_string(),
                8 << 20,
            ),
            ("431", big_head, 4 << 20),
        ];
        for (want, head, len) in cases {
            let (sent, out, clean) = refused_while_sending(addr, head, len).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want} ")),
                "{engine} {want}: read {out:?}"
            );
            assert!(
                sent,
                "{engine} {want}: the client's writes failed (reset, no lingering close)"
            );
            assert!(
                clean,
                "{engine} {want}: the read ended on an error, not a FIN"
            );
        }
    }
}
