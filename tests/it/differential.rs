//! One policy, two engines: the same requests through a listener on the lean engine and one
//! with `fast_path: false` (Pingora's general proxy for everything) must give the client the
//! same status, header fields and body, and the origin the same requests (method, target,
//! header fields with their repeats, body).
//!
//! Both listeners route to the same scripted origin (`support::scripted`), which answers by
//! path with the response shapes an edge meets (chunked, repeated Set-Cookie, hop-by-hop
//! fields, 1xx before the final answer, close-delimited, slow) and records each request as it
//! arrived. `Date` is compared by presence only, and a few fields that carry the proxy's own
//! per-listener values (the X-Forwarded-For chain's port-free client address is the same;
//! nothing else differs) need no masking. Each case runs on a fresh connection to each
//! listener.

use crate::support::scripted::{self, field, find, normalized, Answer, Origin};
use crate::support::Proxy;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Split what the proxy wrote on one connection into responses. Bodies are framed by
/// Content-Length, chunked (kept raw) or the end of the bytes; `heads_only`: responses to HEAD.
/// Also says whether every response to the requests sent is complete.
pub(crate) fn responses(mut bytes: &[u8], heads_only: &[bool]) -> (Vec<Answer>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    let mut complete = true;
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let fields: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some(field(k, v))
            })
            .collect();
        if (100..200).contains(&status) && status != 101 {
            out.push(Answer {
                status,
                fields: normalized(fields),
                body: Vec::new(),
            });
            continue;
        }
        let head_only = heads_only.get(i).copied().unwrap_or(false);
        i += 1;
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (length, chunked) = (get("content-length"), get("transfer-encoding").is_some());
        let mut fields = fields;
        let body: Vec<u8> = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = length.and_then(|v| v.parse::<usize>().ok()) {
            complete &= bytes.len() >= len;
            let len = len.min(bytes.len());
            let b = bytes[..len].to_vec();
            bytes = &bytes[len..];
            b
        } else if chunked {
            // chunk boundaries are not the message: compare the decoded body, and the
            // trailer fields as fields named `trailer <name>`
            let (b, used, trailers) = dechunk(bytes);
            fields.extend(
                trailers
                    .into_iter()
                    .map(|(k, v)| (format!("trailer {k}"), v)),
            );
            complete &= used.is_some();
            bytes = &bytes[used.unwrap_or(bytes.len())..];
            b
        } else {
            // ends with the connection
            complete = false;
            let b = bytes.to_vec();
            bytes = &[];
            b
        };
        out.push(Answer {
            status,
            fields: normalized(fields),
            body,
        });
    }
    (out, complete && i >= heads_only.len())
}

/// Decode a chunked body: the data, how many bytes it took (`None`: incomplete), and its
/// trailer fields.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, Option<usize>, Vec<(String, String)>) {
    let total = b.len();
    let mut out = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return (out, None, trailers);
        };
        let size_text = String::from_utf8_lossy(&b[..eol]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, None, trailers);
        };
        b = &b[eol + 2..];
        if size == 0 {
            // trailer lines, then the final CRLF
            loop {
                let Some(eol) = find(b, b"\r\n") else {
                    return (out, None, trailers);
                };
                if eol == 0 {
                    return (out, Some(total - b.len() + 2), trailers);
                }
                let line = String::from_utf8_lossy(&b[..eol]).into_owned();
                if let Some((k, v)) = line.split_once(':') {
                    trailers.push(field(k, v));
                }
                b = &b[eol + 2..];
            }
        }
        if b.len() < size + 2 {
            return (out, None, trailers);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    /// The raw request bytes; `{host}` is replaced by the listener's authority.
    pub(crate) raw: String,
    /// Which of the requests are HEAD, in order.
    pub(crate) heads: Vec<bool>,
    /// Listener pair to use: 0 = the main pair, 1 = the rate-limited pair.
    pub(crate) pair: usize,
    /// Requests the origin must see from each engine (the retry cases), when given.
    pub(crate) tries: Option<usize>,
}

pub(crate) fn case(name: &'static str, raw: &str) -> Case {
    // one entry per request line in the bytes
    let heads = raw
        .split("\r\n")
        .filter(|l| {
            let mut w = l.split(' ');
            let m = w.next().unwrap_or("");
            !m.is_empty()
                && m.bytes().all(|b| b.is_ascii_uppercase())
                && w.next_back().is_some_and(|v| v.starts_with("HTTP/1."))
        })
        .map(|l| l.starts_with("HEAD "))
        .collect();
    Case {
        name,
        raw: raw.to_string(),
        heads,
        pair: 0,
        tries: None,
    }
}

/// A case whose request the origin must see `n` times from each engine.
fn tries(n: usize, c: Case) -> Case {
    Case {
        tries: Some(n),
        ..c
    }
}

pub(crate) fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

fn matrix() -> Vec<Case> {
    let app = "app.test";
    let mut m = vec![
        case("get", &get("/", app, "")),
        case("get with query", &get("/a/b?x=1&y=%20", app, "")),
        case("get with port in host", &get("/", "app.test:8080", "")),
        case("get upper-case host", &get("/", "APP.test", "")),
        case("head", &format!("HEAD / HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("head chunked", &format!("HEAD /chunked HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("post content-length", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world")),
        case("post empty body", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 0\r\n\r\n")),
        case("post chunked", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")),
        case("put", &format!("PUT /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 3\r\n\r\nabc")),
        case("delete", &format!("DELETE /x HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("options", &format!("OPTIONS /x HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("expect 100-continue", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nabcd")),
        case("http/1.0", &format!("GET / HTTP/1.0\r\nHost: {app}\r\n\r\n")),
        case("http/1.0 keep-alive", &format!("GET / HTTP/1.0\r\nHost: {app}\r\nConnection: keep-alive\r\n\r\n")),
        case("http/1.0 without host", "GET / HTTP/1.0\r\n\r\n"),
        case("pipelined", &format!("{}{}", get("/one", app, ""), get("/two", app, "Connection: close\r\n"))),
        Case {
            // the body runs into the next request line, which `case` would not see
            heads: vec![false, false],
            ..case("pipelined after post", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 2\r\n\r\nhi{}", get("/after", app, "Connection: close\r\n")))
        },
        case("connection close", &get("/", app, "Connection: close\r\n")),
        case("connection keep-alive", &get("/", app, "Connection: keep-alive\r\n")),
        case("close in a second connection field", &get("/", app, "Connection: keep-alive\r\nconnection: close\r\n")),
        case("request hop-by-hop", &get("/", app, "Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nProxy-Authorization: Basic eDp5\r\n")),
        case("connection-nominated field", &get("/", app, "Connection: X-Drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n")),
        case("connection close names a field", &get("/", app, "Connection: close\r\nClose: x-named\r\nX-Keep: 2\r\n")),
        case("response connection close names a field", &get("/close-field", app, "")),
        case("incoming x-forwarded chain", &get("/", app, "X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n")),
        case("two x-forwarded-for fields", &get("/", app, "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\n")),
        case("repeated request field", &get("/", app, "Accept: text/html\r\nAccept: application/json\r\n")),
        case("cookies", &get("/", app, "Cookie: a=1\r\nCookie: b=2\r\n")),
        case("non-websocket upgrade", &get("/", app, "Connection: Upgrade\r\nUpgrade: foo/1\r\n")),
        case("upgrade to another protocol", &get("/upgrade", app, "Connection: Upgrade\r\nUpgrade: foo/1\r\n")),
        case("h2c upgrade is not relayed", &get("/", app, "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n")),
        case("underscore fields", &get("/", app, "Transfer_Encoding: chunked\r\nX_User: a\r\nX-Normal: b\r\n")),
        case("listed content-length", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 3, 3\r\n\r\nabc")),
        case("two equal content-length fields", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")),
        case("content-length with a leading zero", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 03\r\n\r\nabc")),
        case("response with a listed content-length", &get("/cl-list", app, "")),
        case("response with two content-length fields", &get("/cl-twice", app, "")),
        case("status outside 100-599", &get("/status-600", app, "")),
        case("space in the target", &format!("GET /a b HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("two spaces before the target", &format!("GET  /a HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("absolute form", &format!("GET http://{app}/abs HTTP/1.1\r\nHost: {app}\r\n\r\n")),
        case("chunked response", &get("/chunked", app, "")),
        case("repeated set-cookie", &get("/cookies", app, "")),
        case("response connection names transfer-encoding", &get("/te-nominated", app, "")),
        case("response chunked before another coding", &get("/te-not-last", app, "")),
        case("response chunked twice", &get("/te-twice", app, "")),
        case("hop-by-hop response fields", &get("/hop", app, "")),
        case("1xx before the final answer", &get("/early", app, "")),
        case("unrequested 100 before the final answer", &get("/continue", app, "")),
        case("1xx to an HTTP/1.0 client", &format!("GET /early HTTP/1.0\r\nHost: {app}\r\n\r\n")),
        case("origin closes (close-delimited)", &get("/close", app, "")),
        case("204 response", &get("/nocontent", app, "")),
        case("large response", &get("/big", app, "")),
        case("unrouted host", &get("/", "nope.test", "")),
        case("missing host", "GET / HTTP/1.1\r\n\r\n"),
        case("two host fields", &get("/", app, "Host: other.test\r\n")),
        case("connection nominates host", &get("/", app, "Connection: Host\r\n")),
        case("body over the limit", &format!("POST /small HTTP/1.1\r\nHost: {app}\r\nContent-Length: 100\r\n\r\n{}", "x".repeat(100))),
        case("chunked body over the limit", &format!("POST /small HTTP/1.1\r\nHost: {app}\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n{}\r\n0\r\n\r\n", "x".repeat(100))),
        case("dead backend", &get("/", "dead.test", "")),
        case("timeout", &get("/slow", app, "")),
        tries(2, case("retried 503", &get("/503", "retry.test", ""))),
        tries(2, case("retried 503 replays the body", "PUT /503 HTTP/1.1\r\nHost: retry.test\r\nContent-Length: 5\r\n\r\nhello")),
        tries(1, case("503 to a post is not retried", "POST /503 HTTP/1.1\r\nHost: retry.test\r\nContent-Length: 5\r\n\r\nhello")),
        tries(1, case("503 with a body over the replay bound is not retried", &format!("PUT /503 HTTP/1.1\r\nHost: retry.test\r\nContent-Length: 70000\r\n\r\n{}", "b".repeat(70_000)))),
        // the first try reuses the connection the case before left in the pool: closed before
        // an answer, it is sent again on a fresh one (not a retry), then retried once
        tries(3, case("reset before the head is retried", &get("/reset", "retry.test", ""))),
        case("content-length and transfer-encoding", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        case("bad content-length", &format!("POST /echo HTTP/1.1\r\nHost: {app}\r\nContent-Length: 1x\r\n\r\n")),
    ];
    let mut rl = case(
        "rate limit",
        &format!(
            "{}{}",
            get("/", app, ""),
            get("/", app, "Connection: close\r\n")
        ),
    );
    rl.pair = 1;
    m.push(rl);
    m
}

/// Send a case's bytes on a new connection and read until every response is complete, the
/// proxy closes, or `WAIT` passes.
pub(crate) async fn run(addr: SocketAddr, c: &Case) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(c.raw.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
        if responses(&out, &c.heads).1 {
            return out;
        }
    }
}

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

/// A request with its X-Forwarded-For chain split over several fields reaches the backend
/// with one field, the incoming ones joined in order and the client last, from both engines
/// (nginx joins them too); a joined chain over the bound is dropped whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_x_forwarded_for_field_joins_the_chain() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let long = "a".repeat(250);
    let cases = [
        (
            "X-Forwarded-For: 203.0.113.7\r\nX-Kept: 1\r\nX-Forwarded-For: 198.51.100.2, 192.0.2.1\r\n".to_string(),
            "203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1",
        ),
        (
            "X-Forwarded-For: \r\nX-Forwarded-For: 198.51.100.2\r\n".to_string(),
            "198.51.100.2, 127.0.0.1",
        ),
        (
            format!("X-Forwarded-For: {long}\r\nX-Forwarded-For: {long}\r\n"),
            "127.0.0.1",
        ),
    ];
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for (fields, want) in &cases {
            let sent = get("/", "app.test", fields);
            let (answers, _) = responses(&run(addr, &case("xff", &sent)).await, &[false]);
            assert_eq!(answers.first().map(|a| a.status), Some(200), "{engine}");
            let seen = origin.take();
            assert_eq!(seen.len(), 1, "{engine}");
            let xff: Vec<&str> = (seen[0].fields.iter())
                .filter(|(k, _)| k == "x-forwarded-for")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(xff, [*want], "{engine}: sent {fields:?}");
        }
    }
}

/// `Max-Forwards` on TRACE and OPTIONS (RFC 9110 §7.6.2), on both engines: a count is
/// passed on less one, a spent count (0) is answered by the proxy as the final recipient (an
/// empty 200, nothing reaches the origin), and on other methods the field passes as it
/// came. The lean engine hands such requests to the general one (`max_forwards` fallback).
/// A forwarded TRACE goes to `methods.test`, a route that takes TRACE (others refuse it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_is_counted_down_and_a_spent_count_answered() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for (method, sent, answered, seen) in [
            ("OPTIONS", "3", 200, Some("2")),
            ("TRACE", "1", 200, Some("0")),
            ("OPTIONS", "0", 200, None),
            ("TRACE", "0", 200, None),
            ("GET", "0", 200, Some("0")),
        ] {
            let host = if method == "TRACE" {
                "methods.test"
            } else {
                "app.test"
            };
            let raw =
                format!("{method} / HTTP/1.1\r\nHost: {host}\r\nMax-Forwards: {sent}\r\n\r\n");
            let c = case("max-forwards", &raw);
            let got = run(addr, &c).await;
            let answers = responses(&got, &c.heads).0;
            let what = format!("{engine}: {method} with Max-Forwards {sent}");
            assert_eq!(answers.first().map(|a| a.status), Some(answered), "{what}");
            let at_origin = origin.take();
            match seen {
                None => {
                    assert!(at_origin.is_empty(), "{what}: forwarded {at_origin:?}");
                    let body = answers.first().map(|a| a.body.len());
                    assert_eq!(body, Some(0), "{what}: the proxy's own empty answer");
                }
                Some(v) => {
                    let r = at_origin
                        .first()
                        .unwrap_or_else(|| panic!("{what}: not forwarded"));
                    let f = r.fields.iter().find(|(k, _)| k == "max-forwards");
                    assert_eq!(f.map(|(_, x)| x.as_str()), Some(v), "{what}");
                }
            }
        }
    }
}

/// A spent `Max-Forwards` is answered only once the request is admitted, on both engines:
/// a method the route does not take is still 405, a host without a route 404, and a client
/// over its rate limit 429, where the proxy used to answer them all 200 as the final
/// recipient. None reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_max_forwards_is_answered_only_after_admission() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    for (engine, addr, limited) in [
        ("lean", p.addr_of(0), p.addr_of(2)),
        ("general", p.addr_of(1), p.addr_of(3)),
    ] {
        for (method, host, answered) in [
            ("TRACE", "app.test", 405),
            ("OPTIONS", "methods.test", 405),
            ("OPTIONS", "nowhere.test", 404),
            ("OPTIONS", "app.test", 200),
        ] {
            let raw = format!("{method} / HTTP/1.1\r\nHost: {host}\r\nMax-Forwards: 0\r\n\r\n");
            let c = case("max-forwards-admission", &raw);
            let got = run(addr, &c).await;
            let status = responses(&got, &c.heads).0.first().map(|a| a.status);
            assert_eq!(status, Some(answered), "{engine}: {method} to {host}");
        }
        // one request a second on these listeners: three in a row, the later ones refused
        let one = "OPTIONS / HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: 0\r\n\r\n";
        let c = case("max-forwards-rate", &one.repeat(3));
        let got = run(limited, &c).await;
        let statuses: Vec<u16> = responses(&got, &c.heads)
            .0
            .iter()
            .map(|a| a.status)
            .collect();
        assert!(
            statuses.contains(&429),
            "{engine}: over the rate limit, a spent count answered {statuses:?}"
        );
        let at_origin = origin.take();
        assert!(at_origin.is_empty(), "{engine}: forwarded {at_origin:?}");
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_engines_answer_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let pairs = [(p.addr_of(0), p.addr_of(1)), (p.addr_of(2), p.addr_of(3))];
    let cases = matrix();
    assert!(cases.len() >= 40, "the matrix has {} cases", cases.len());
    let mut diffs = Vec::new();
    for c in &cases {
        let (fast, general) = pairs[c.pair];
        let a = run(fast, c).await;
        let seen_a = origin.take();
        let b = run(general, c).await;
        let seen_b = origin.take();
        let (ra, rb) = (responses(&a, &c.heads).0, responses(&b, &c.heads).0);
        if ra.is_empty() && rb.is_empty() {
            diffs.push(format!("{}: no answer from either engine", c.name));
        }
        scripted::differ(&mut diffs, c.name, "client saw", &ra, &rb);
        scripted::differ_seen(&mut diffs, c.name, &seen_a, &seen_b);
        if let Some(n) = c.tries {
            for (engine, seen) in [("lean", &seen_a), ("general", &seen_b)] {
                if seen.len() != n {
                    diffs.push(format!(
                        "{}: {engine}: {} tries, not {n}",
                        c.name,
                        seen.len()
                    ));
                }
            }
        }
    }
    scripted::differ_route_counters(&mut diffs, &p).await;
    scripted::assert_alike(&diffs, cases.len(), &p.log());
}

/// The sticky cookie: set alike for a client without one or with a forged one, and kept
/// alike (no new cookie) for a valid one, on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_engines_set_sticky_cookies_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let host = "sticky.test";
    let first = run(fast, &case("sticky without a cookie", &get("/", host, ""))).await;
    let set = responses(&first, &[false]).0;
    let token = set
        .first()
        .and_then(|a| a.fields.iter().find(|(k, _)| k == "set-cookie"))
        .and_then(|(_, v)| v.split(';').next())
        .map(str::to_string)
        .expect("a sticky cookie");
    let _ = origin.take();
    let cases = [
        case("sticky without a cookie", &get("/", host, "")),
        case(
            "sticky with a forged cookie",
            &get("/", host, "Cookie: SRV=forged\r\n"),
        ),
        case(
            "sticky with a valid cookie",
            &get("/", host, &format!("Cookie: a=1; {token}\r\n")),
        ),
    ];
    let mut diffs = Vec::new();
    for c in &cases {
        let a = run(fast, c).await;
        let seen_a = origin.take();
        let b = run(general, c).await;
        let seen_b = origin.take();
        let (ra, rb) = (responses(&a, &c.heads).0, responses(&b, &c.heads).0);
        let cookies = |r: &[Answer]| {
            r.iter()
                .flat_map(|a| a.fields.iter().filter(|(k, _)| k == "set-cookie"))
                .count()
        };
        let want = usize::from(!c.name.contains("valid"));
        if cookies(&ra) != want || cookies(&rb) != want {
            diffs.push(format!("{}: {want} set-cookie expected", c.name));
        }
        scripted::differ(&mut diffs, c.name, "client saw", &ra, &rb);
        scripted::differ_seen(&mut diffs, c.name, &seen_a, &seen_b);
    }
    scripted::assert_alike(&diffs, cases.len(), &p.log());
}
