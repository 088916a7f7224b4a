//! The matrix: every case through both engines must give the client and the origin the same,
//! and sticky cookies set and kept alike.

use super::{case, get, responses, run, Case};
use crate::support::scripted::{self, Answer, Origin};
use crate::support::Proxy;

/// A case whose request the origin must see `n` times from each engine.
fn tries(n: usize, c: Case) -> Case {
    Case {
        tries: Some(n),
        ..c
    }
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
