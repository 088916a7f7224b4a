//! Response framing on the fast path: chunked with trailers and close-delimited bodies, HEAD,
//! hop-by-hop fields, and a backend's broken chunked framing.

use super::{config, head_and_body, Scripted, Step, WAIT};
use crate::support::raw::read_until_close;
use crate::support::tcp::pattern;
use crate::support::{Conn, OriginBuilder, Proxy};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_is_byte_exact_but_for_its_trailers_and_both_connections_are_reused() {
    // Several chunks (one with an extension, one larger than the proxy's read buffer) and
    // trailer fields, written in pieces that split a chunk's data, a size line and the
    // trailers. The chunks pass byte for byte; the trailer fields do not pass (the policy
    // drops them on every engine), so the body ends `0\r\n\r\n`.
    let big = pattern(40_000);
    let mut body = b"5\r\nhello\r\n".to_vec();
    body.extend_from_slice(format!("{:x};name=value\r\n", big.len()).as_bytes());
    body.extend_from_slice(&big);
    body.extend_from_slice(b"\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n");
    let mut want = body.clone();
    want.extend_from_slice(b"0\r\n\r\n");
    body.extend_from_slice(b"0\r\nX-Checksum: 1234\r\nX-Other: yes\r\n\r\n");
    let sent = body.clone();
    let b = Scripted::start(move |_| {
        let split = sent.len() - 20;
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::Write(sent[..7].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[7..20_000].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[20_000..split].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[split..].to_vec()),
        ]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    for i in 1..=2 {
        s.write_all(format!("GET /chunked/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let (head, got) = head_and_body(&mut s, want.len()).await;
        assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "request {i}: {head}"
        );
        assert!(
            head.contains("\r\nx-kind: chunked\r\n"),
            "request {i}: {head}"
        );
        assert!(!head.contains("content-length"), "request {i}: {head}");
        assert!(!head.contains("connection: close"), "request {i}: {head}");
        assert_eq!(got.len(), want.len(), "request {i}: body length");
        assert!(got == want, "request {i}: body bytes differ");
    }
    let reqs = b.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].path(), "/chunked/1");
    assert_eq!(reqs[1].path(), "/chunked/2");
    assert_eq!(
        b.connections(),
        1,
        "backend saw {} connections for 2 requests on one client connection",
        b.connections()
    );
    assert!(reqs.iter().all(|r| r.conn == 1), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_is_rechunked_and_the_client_connection_kept() {
    let body = pattern(100_000);
    let sent = body.clone();
    let b = Scripted::start(move |_| {
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec(),
            ),
            Step::Write(sent[..30_000].to_vec()),
            Step::Pause(Duration::from_millis(20)),
            Step::Write(sent[30_000..].to_vec()),
            Step::Close,
        ]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    // The backend ends the body by closing; an HTTP/1.1 client gets it chunked, so its own
    // connection carries the next request (Pingora's path does the same).
    for i in 0..2 {
        let r = tokio::time::timeout(WAIT, c.get("/stream", &[]))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header("connection"),
            Some("keep-alive"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.body.len(), body.len(), "body length");
        assert!(r.body == body, "body bytes differ");
    }
    assert_eq!(b.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_has_content_length_no_body_and_the_connection_is_reused() {
    let o = OriginBuilder::new("o")
        .on("/doc", &[("Content-Type", "text/plain")], "eleven char")
        .run()
        .await;
    let p = Proxy::start(&config(o.addr));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    // The client helper reads no body after a HEAD: body bytes sent anyway would be taken
    // for the start of the next response, and that one would not parse.
    let r = tokio::time::timeout(WAIT, c.request("HEAD", "/doc", &[], b""))
        .await
        .expect("in time")
        .expect("response to HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("11"), "{:?}", r.headers);
    assert!(r.body.is_empty());
    assert_ne!(r.header("connection"), Some("close"));
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, c.get("/doc", &[]))
            .await
            .expect("in time")
            .expect("GET after HEAD on the same connection");
        assert_eq!((r.status, r.text().as_str()), (200, "eleven char"));
    }
    let methods: Vec<String> = o.recorded().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET", "GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_dropped_and_end_to_end_ones_kept() {
    let b = Scripted::start(|_| {
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\nCache-Control: max-age=7\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )]
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let (head, body) = head_and_body(&mut s, 2).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let fields: Vec<(&str, &str)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let has = |name: &str| fields.iter().any(|(k, _)| *k == name);
    assert!(
        !has("x-secret"),
        "nominated field reached the client: {head}"
    );
    assert!(!has("keep-alive"), "Keep-Alive reached the client: {head}");
    // a check that none names it: no Connection field at all rightly passes (the fields
    // themselves are there: the kept ones are checked below)
    assert!(
        !fields
            .iter()
            .any(|(k, v)| *k == "connection" && v.contains("x-secret")),
        "the backend's Connection field reached the client: {head}"
    );
    for (k, v) in [
        ("x-end", "kept"),
        ("cache-control", "max-age=7"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
    ] {
        assert!(fields.contains(&(k, v)), "{k}: {v} missing: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_response_is_never_completed_and_the_proxy_keeps_serving() {
    // /late: a good chunk, then (after the head went to the client) a bad chunk size.
    // /early: the bad size comes in the same write as the head.
    let b = Scripted::start(|g| {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        match g.path() {
            "/late" => {
                let mut first = head;
                first.extend_from_slice(b"5\r\nhello\r\n");
                vec![
                    Step::Write(first),
                    Step::Pause(Duration::from_millis(100)),
                    Step::Write(b"zz\r\nnot-a-chunk\r\n0\r\n\r\n".to_vec()),
                ]
            }
            "/early" => {
                let mut all = head;
                all.extend_from_slice(b"5\r\nhello\r\nzz\r\nnot-a-chunk\r\n0\r\n\r\n");
                vec![Step::Write(all)]
            }
            _ => vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine".to_vec(),
            )],
        }
    })
    .await;
    let p = Proxy::start(&config(b.addr));
    for path in ["/late", "/early"] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let (got, closed) = read_until_close(&mut s, WAIT).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed, "{path}: client connection left open: {text:?}");
        assert!(
            !text.contains("not-a-chunk"),
            "{path}: bytes after the bad chunk size reached the client: {text:?}"
        );
        assert!(
            !got.ends_with(b"0\r\n\r\n"),
            "{path}: a broken chunked body was terminated as complete: {text:?}"
        );
        let status = text.get(9..12).unwrap_or_default();
        match path {
            // the head and the good chunk went out; the body is cut
            "/late" => {
                assert_eq!(status, "200", "{text:?}");
                assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n"), "{text:?}");
            }
            // nothing went out yet: a 502 page, or a cut 200
            _ => assert!(status == "502" || status == "200", "{path}: {text:?}"),
        }
        // the proxy still serves, on a new connection
        let r = tokio::time::timeout(WAIT, crate::support::client::get(p.addr, "/ok", &[]))
            .await
            .expect("in time")
            .expect("a request after the broken response");
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "after {path}");
    }
}
