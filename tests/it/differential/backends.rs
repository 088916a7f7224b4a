//! What a backend sends and when, alike on both engines: an early hint before a retried
//! status, an unasked 101, a response chunked twice or not last, and `read_timeout` under a
//! slow upload.

use super::{case, get, responses, run, WAIT};
use crate::support::scripted::{self, Origin};
use crate::support::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend's 103 Early Hints before a status the upstream retries (`retry_on: ["503"]`)
/// does not stop the retry: an interim response is not the response, and whether one is
/// forwarded depends on the client's protocol (HTTP/2 clients get none), so counting it made
/// the retry depend on the protocol (found by
/// `differential_protocols::generated_requests_reach_the_origin_alike_over_every_protocol`:
/// an HTTP/2 request was retried, the same request over HTTP/1.1 not). Both engines retry,
/// and the client gets the hint and then the last try's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_hint_does_not_stop_a_retry() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let backend = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                   HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
    let hex: String = backend.bytes().map(|b| format!("{b:02x}")).collect();
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let raw = format!("GET /raw HTTP/1.1\r\nHost: retry.test\r\nX-Raw-Response: {hex}\r\n\r\n");
        let c = case("hint then 503", &raw);
        let got = run(addr, &c).await;
        let statuses: Vec<u16> = responses(&got, &c.heads)
            .0
            .iter()
            .map(|a| a.status)
            .collect();
        assert_eq!(statuses.first(), Some(&103), "{engine}: {statuses:?}");
        assert_eq!(statuses.last(), Some(&503), "{engine}: {statuses:?}");
        assert_eq!(origin.take().len(), 2, "{engine}: retried after the hint");
    }
}

/// A backend that switches protocols (101) for a request that asked for no upgrade, or for
/// an upgrade the proxy does not relay (h2c), is broken (RFC 9110 §15.2.2): 502 from both
/// engines, and nothing of the backend's new protocol reaches the client. Passed on, the
/// 101 would make the client's connection a raw tunnel to the backend, past the proxy's
/// checks on every later request (found by `generated_requests_are_answered_alike`: the
/// general engine passed it on). A relayed upgrade still switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_without_a_relayed_upgrade_is_refused() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let refused = [
        "",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    ];
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for extra in refused {
            let c = case("101", &get("/upgrade", "app.test", extra));
            let out = run(addr, &c).await;
            let (answers, _) = responses(&out, &c.heads);
            let text = String::from_utf8_lossy(&out);
            assert_eq!(
                answers.first().map(|a| a.status),
                Some(502),
                "{engine} {extra:?}: {text}"
            );
            assert!(
                !text.contains("foo-hello"),
                "{engine} {extra:?}: tunnelled: {text}"
            );
            origin.take();
        }
        let c = case(
            "relayed",
            &get(
                "/upgrade",
                "app.test",
                "Connection: Upgrade\r\nUpgrade: foo/1\r\n",
            ),
        );
        let out = run(addr, &c).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 101 "), "{engine}: {text}");
        assert!(text.ends_with("foo-hello"), "{engine}: {text}");
        origin.take();
    }
    assert!(
        p.log()
            .contains("backend switched protocols (101) for a request without a relayed upgrade"),
        "the log names the reason: {}",
        p.log()
    );
}

/// `read_timeout` is the backend's time, counted from the first try: a body the lean engine
/// holds for a retry (a PUT to an upstream that retries after sending) arriving over 2.4 s
/// does not spend a 1 s `read_timeout`, and a response 300 ms after it comes through on both
/// engines (the lean engine counted from the request's head and gave the backend 1 ms: a 504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_spend_the_backends_read_timeout() {
    let origin = Origin::start().await;
    let conf = scripted::config(origin.addr, "protocol: http");
    let retrying = "    retries: 1\n    retry_on:";
    assert!(
        conf.contains(retrying),
        "the scripted config changed: {conf}"
    );
    let conf = conf.replace(
        retrying,
        "    retries: 1\n    read_timeout: 1s\n    retry_on:",
    );
    let p = Proxy::start(&conf);
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = "PUT /echo-late HTTP/1.1\r\nHost: retry.test\r\nContent-Length: 8000\r\nConnection: close\r\n\r\n";
        s.write_all(head.as_bytes()).await.expect("send head");
        for piece in 0..8u8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.write_all(&[b'a' + piece; 1000])
                .await
                .unwrap_or_else(|err| panic!("{engine}: piece {piece}: {err}"));
        }
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "{engine}: no end of the response: {text}");
        assert!(text.starts_with("HTTP/1.1 200 "), "{engine}: {text}");
        assert!(text.ends_with("8000 bytes"), "{engine}: {text}");
        let seen = origin.take();
        assert_eq!(seen.len(), 1, "{engine}: tries: {}", seen.len());
        assert_eq!(seen[0].body.len(), 8000, "{engine}");
    }
}

/// A response whose Transfer-Encoding lists chunked before another coding (its body runs
/// to the close, and the proxy would chunk it a second time) or lists it twice is a broken
/// backend's: 502 from both engines, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_chunked_twice_or_not_last_is_refused() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for path in ["/te-not-last", "/te-twice"] {
            let c = case(path, &get(path, "app.test", ""));
            let out = run(addr, &c).await;
            let (answers, _) = responses(&out, &c.heads);
            let status = answers.first().map(|a| a.status);
            assert_eq!(
                status,
                Some(502),
                "{engine} {path}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    let log = p.log();
    assert!(
        log.contains("chunked listed twice or before another coding"),
        "the log names the reason: {log}"
    );
}
