//! Connection options and the client connection, alike on both engines: a `Connection` that
//! names the framing field or a field called `close`, `close` in any `Connection` field, and
//! the connection kept after the proxy's own answer.

use super::{case, get, responses, run, Case, WAIT};
use crate::support::scripted::{self, Origin};
use crate::support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend's `Connection` naming `Transfer-Encoding` on a chunked response (found by the
/// `response` fuzz target): the lean engine passes the chunks on as they came, so it must
/// keep the field that frames them, or the client, told neither length nor coding on a
/// kept-alive connection, reads chunk sizes as body until a timeout. The other nominated
/// field still goes, and the connection serves a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_keeps_its_framing_when_connection_names_it() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for round in ["first", "second"] {
            s.write_all(get("/te-nominated", "app.test", "").as_bytes())
                .await
                .expect("send");
            let mut out = Vec::new();
            let mut chunk = [0u8; 4096];
            let answers = loop {
                let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{engine}, {round} request: no complete response in {WAIT:?}: {:?}",
                            String::from_utf8_lossy(&out)
                        )
                    })
                    .expect("read");
                assert!(
                    n > 0,
                    "{engine}, {round} request: closed after {:?}",
                    String::from_utf8_lossy(&out)
                );
                out.extend_from_slice(&chunk[..n]);
                let (answers, complete) = responses(&out, &[false]);
                if complete && !answers.is_empty() {
                    break answers;
                }
            };
            let a = &answers[0];
            assert_eq!(a.status, 200, "{engine}, {round} request");
            assert_eq!(
                a.body, b"hello world",
                "{engine}, {round} request: the body as the client frames it"
            );
            assert!(
                !a.fields.iter().any(|(k, _)| k == "x-drop"),
                "{engine}, {round} request: a field the backend's Connection named was passed on: {:?}",
                a.fields
            );
        }
    }
}

/// `Connection: close` is a connection option like any other: a field called `close` is
/// hop-by-hop beside it (RFC 9110 §7.6.1), in a request (found by the `request` fuzz target:
/// both engines passed it on) and in a response (the general engine passed it on). Both
/// engines drop it both ways and keep the fields beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_named_close_is_dropped_beside_connection_close() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let sent = get(
            "/",
            "app.test",
            "Connection: close\r\nClose: x-named\r\nX-Keep: 2\r\n",
        );
        let (answers, _) = responses(&run(addr, &case("request", &sent)).await, &[false]);
        assert_eq!(answers.first().map(|a| a.status), Some(200), "{engine}");
        let seen = origin.take();
        assert_eq!(seen.len(), 1, "{engine}");
        let names: Vec<&str> = seen[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"x-keep"), "{engine}: {names:?}");
        assert!(
            !names.contains(&"close"),
            "{engine}: the request's close field passed on: {names:?}"
        );

        let got = run(
            addr,
            &case("response", &get("/close-field", "app.test", "")),
        )
        .await;
        let (answers, _) = responses(&got, &[false]);
        let a = answers
            .first()
            .unwrap_or_else(|| panic!("{engine}: no answer"));
        assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]), "{engine}");
        assert!(
            a.fields.iter().any(|(k, _)| k == "x-public"),
            "{engine}: {:?}",
            a.fields
        );
        assert!(
            !a.fields.iter().any(|(k, _)| k == "close"),
            "{engine}: the response's close field passed on: {:?}",
            a.fields
        );
        origin.take();
    }
}

/// An answer of the proxy's own (here a 404 for an unrouted host) to a request whose body
/// has arrived keeps the connection, on both engines: the body is read and dropped, and the
/// next request is served (the general engine closed it, found by
/// `generated_requests_are_answered_alike`). A body still on its way is not waited for: the
/// answer comes at once and the connection closes, its unread bytes never taken for a
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_answer_keeps_the_connection_once_the_body_is_in() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let raw = format!(
            "POST /x HTTP/1.1\r\nHost: nope.test\r\nContent-Length: 5\r\n\r\nhello{}",
            get("/after", "app.test", "")
        );
        let c = Case {
            heads: vec![false, false],
            ..case("body in", &raw)
        };
        let (answers, complete) = responses(&run(addr, &c).await, &c.heads);
        let got: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(got, [404, 200], "{engine}");
        assert!(complete, "{engine}");
        let seen = origin.take();
        assert_eq!(seen.len(), 1, "{engine}");
        assert_eq!(seen[0].target, "/after", "{engine}");

        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /x HTTP/1.1\r\nHost: nope.test\r\nContent-Length: 1000\r\n\r\nonly part",
        )
        .await
        .expect("send");
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "{engine}: the connection stayed open: {text}");
        assert!(text.starts_with("HTTP/1.1 404 "), "{engine}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{engine}: {text}"
        );
        assert!(origin.take().is_empty(), "{engine}");
    }
}

/// `close` in a request's second `Connection` field closes the connection after the answer,
/// proxied or the proxy's own, on both engines (the general engine kept it open: Pingora
/// reads the first field only; found by `generated_requests_are_answered_alike`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_in_any_connection_field_closes_the_connection() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for host in ["app.test", "nope.test"] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let req = get("/", host, "Connection: keep-alive\r\nconnection: close\r\n");
            s.write_all(req.as_bytes()).await.expect("send");
            let mut out = Vec::new();
            let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
            let text = String::from_utf8_lossy(&out);
            assert!(
                read.is_ok(),
                "{engine} {host}: the connection stayed open: {text}"
            );
            assert!(
                text.to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "{engine} {host}: {text}"
            );
        }
        origin.take();
    }
}
