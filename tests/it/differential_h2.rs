//! One policy, two engines, over HTTP/2: the `differential` matrix sent as cleartext HTTP/2
//! (prior knowledge, `h2c: true`) to a listener on the lean engine and one with
//! `fast_path: false`. The client sees the same status, fields and body (DATA frames joined)
//! from both, and the origin, an HTTP/1.1 server, the same requests (method, target, fields
//! with their repeats, body).
//!
//! The requests come from the `h2` crate on a fresh connection per case and listener, so every
//! request is one a real HTTP/2 client can send. Some of the HTTP/1 cases have no HTTP/2 form
//! and are left out: the version cases (HTTP/1.0 with and without Host, keep-alive), anything
//! with `Connection`, `Upgrade`, `Keep-Alive`, `Proxy-Connection` or `Transfer-Encoding`
//! (connection-specific fields are malformed in HTTP/2, RFC 9113 §8.2.2, and the client will
//! not send them: connection close/keep-alive, connection-nominated fields, non-websocket
//! upgrade, chunked bodies, Content-Length with Transfer-Encoding, Connection naming Host),
//! the absolute form (`:path` is origin-form; scheme and authority have their own pseudo
//! fields), and a request without `:authority` (the client then also leaves out `:scheme`,
//! which makes the request malformed before either engine sees it). Their HTTP/2 shapes are
//! here instead: several streams on one connection for pipelining, a body in several DATA
//! frames without Content-Length for a chunked body, a `host` field beside `:authority` for
//! two Host fields, a GET ending with an empty DATA frame.
//!
//! Besides the comparison, a few things must hold on both engines: the origin gets a `host`
//! field from `:authority` (when the client sent no `host` of its own), split `cookie` fields
//! reach it joined into one (RFC 9113 §8.2.3), and no stream fails on the client's side (the
//! `h2` client resets a stream whose response carries a connection-specific field, so
//! hop-by-hop fields reaching the client show up there) except where the case expects it.

use crate::differential_gen::Gen;
use crate::support::scripted::{self, field, normalized, Answer, Origin, Seen};
use crate::support::Proxy;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// One request, sent on its own stream.
#[derive(Clone)]
pub(crate) struct Req {
    pub(crate) method: &'static str,
    pub(crate) authority: &'static str,
    pub(crate) path: &'static str,
    pub(crate) fields: Vec<(&'static str, String)>,
    /// DATA frames, the last one with END_STREAM; none: END_STREAM on the HEADERS frame.
    pub(crate) data: Vec<Vec<u8>>,
}

fn req(method: &'static str, path: &'static str) -> Req {
    Req {
        method,
        authority: "app.test",
        path,
        fields: Vec::new(),
        data: Vec::new(),
    }
}

fn get(path: &'static str) -> Req {
    req("GET", path)
}

impl Req {
    /// The request in a line, for naming a generated case.
    pub(crate) fn label(&self) -> String {
        format!(
            "{} {}{} {:?} data {:?}",
            self.method, self.authority, self.path, self.fields, self.data
        )
    }

    fn authority(mut self, a: &'static str) -> Req {
        self.authority = a;
        self
    }

    fn field(mut self, name: &'static str, value: impl Into<String>) -> Req {
        self.fields.push((name, value.into()));
        self
    }

    fn data(mut self, frame: impl Into<Vec<u8>>) -> Req {
        self.data.push(frame.into());
        self
    }
}

/// What the client saw on one stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stream {
    /// 1xx responses before the final one.
    interim: Vec<Answer>,
    /// The final response, if one came; its body is the DATA frames joined.
    pub(crate) answer: Option<Answer>,
    /// Where the client failed (the request not sent, the stream reset, the body cut).
    error: Option<String>,
}

pub(crate) struct Case {
    name: &'static str,
    /// Sent one after the other on one connection, each on its own stream.
    reqs: Vec<Req>,
    /// Listener pair to use: 0 = the main pair, 1 = the rate-limited pair.
    pair: usize,
    /// The request is malformed in HTTP/2: the stream is refused before either engine.
    refused: bool,
}

pub(crate) fn case(name: &'static str, r: Req) -> Case {
    Case {
        name,
        reqs: vec![r],
        pair: 0,
        refused: false,
    }
}

fn matrix() -> Vec<Case> {
    let hello = b"hello world".to_vec();
    let hundred = "x".repeat(100);
    let mut m = vec![
        case("get", get("/")),
        case("get with query", get("/a/b?x=1&y=%20")),
        case(
            "get with port in authority",
            get("/").authority("app.test:8080"),
        ),
        case("get upper-case authority", get("/").authority("APP.test")),
        case("head", req("HEAD", "/")),
        case("head chunked", req("HEAD", "/chunked")),
        case(
            "post content-length",
            req("POST", "/echo")
                .field("content-length", "11")
                .field("content-type", "text/plain")
                .data(hello.clone()),
        ),
        case(
            "post empty body",
            req("POST", "/echo").field("content-length", "0"),
        ),
        case(
            "post in data frames without content-length",
            req("POST", "/echo").data("hello").data(" world"),
        ),
        case(
            "put",
            req("PUT", "/echo").field("content-length", "3").data("abc"),
        ),
        case("delete", req("DELETE", "/x")),
        case("options", req("OPTIONS", "/x")),
        case(
            "expect 100-continue",
            req("POST", "/echo")
                .field("content-length", "4")
                .field("expect", "100-continue")
                .data("abcd"),
        ),
        case(
            "get with a body",
            get("/echo").field("content-length", "3").data("abc"),
        ),
        case("get ending with an empty data frame", get("/").data("")),
        Case {
            reqs: vec![get("/one"), get("/two")],
            ..case("two streams on one connection", get("/"))
        },
        Case {
            reqs: vec![
                req("POST", "/echo").field("content-length", "2").data("hi"),
                get("/after"),
            ],
            ..case("post then get on one connection", get("/"))
        },
        case(
            // what of the HTTP/1 case HTTP/2 allows
            "request hop-by-hop",
            get("/")
                .field("te", "trailers")
                .field("trailer", "x-t")
                .field("proxy-authorization", "Basic eDp5"),
        ),
        case(
            "incoming x-forwarded chain",
            get("/")
                .field("x-forwarded-for", "203.0.113.7, 198.51.100.2")
                .field("x-forwarded-proto", "https")
                .field("x-forwarded-host", "evil.test"),
        ),
        case(
            "two x-forwarded-for fields",
            get("/")
                .field("x-forwarded-for", "203.0.113.7")
                .field("x-forwarded-for", "198.51.100.2"),
        ),
        case(
            "repeated request field",
            get("/")
                .field("accept", "text/html")
                .field("accept", "application/json"),
        ),
        case(
            "split cookies",
            get("/").field("cookie", "a=1").field("cookie", "b=2"),
        ),
        case(
            "post with split cookies",
            req("POST", "/echo")
                .field("cookie", "a=1")
                .field("cookie", "b=2")
                .field("content-length", "2")
                .data("hi"),
        ),
        case(
            "host field equal to :authority",
            get("/").field("host", "app.test"),
        ),
        case(
            "host field other than :authority",
            get("/").field("host", "other.test"),
        ),
        case("chunked response", get("/chunked")),
        case("repeated set-cookie", get("/cookies")),
        case("hop-by-hop response fields", get("/hop")),
        case("a 101 to a stream", get("/upgrade")),
        case(
            "head to a dead backend",
            req("HEAD", "/").authority("dead.test"),
        ),
        case(
            "head answered with a status outside 100-599",
            req("HEAD", "/status-600"),
        ),
        case("1xx before the final answer", get("/early")),
        case("unrequested 100 before the final answer", get("/continue")),
        case("origin closes (close-delimited)", get("/close")),
        case("204 response", get("/nocontent")),
        case("large response", get("/big")),
        case("unrouted authority", get("/").authority("nope.test")),
        case(
            "body over the limit",
            req("POST", "/small")
                .field("content-length", "100")
                .data(hundred.clone()),
        ),
        case(
            "body over the limit without content-length",
            req("POST", "/small")
                .data(&hundred[..50])
                .data(&hundred[50..]),
        ),
        case("dead backend", get("/").authority("dead.test")),
        case("timeout", get("/slow")),
        Case {
            refused: true,
            ..case(
                "bad content-length",
                req("POST", "/echo").field("content-length", "1x").data("a"),
            )
        },
    ];
    m.push(Case {
        reqs: vec![get("/"), get("/")],
        pair: 1,
        ..case("rate limit", get("/"))
    });
    m
}

/// Fields HTTP/2 forbids in a response (RFC 9113 §8.2.2); the `h2` client rejects a response
/// carrying one, so this only keeps the comparison to what a response may hold.
fn forbidden(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

pub(crate) fn answer(status: u16, headers: &http::HeaderMap, body: Vec<u8>) -> Answer {
    // `iter` yields every value, the repeats of a name together and in order
    let fields = headers
        .iter()
        .filter(|(k, _)| !forbidden(k.as_str()))
        .map(|(k, v)| field(k.as_str(), &String::from_utf8_lossy(v.as_bytes())))
        .collect();
    Answer {
        status,
        fields: normalized(fields),
        body,
    }
}

/// Send one request on a new stream and read what comes back.
async fn exchange(client: &h2::client::SendRequest<Bytes>, r: &Req) -> Stream {
    let mut st = Stream {
        interim: Vec::new(),
        answer: None,
        error: None,
    };
    let fail = |st: &mut Stream, at: &str, e: h2::Error| {
        st.error = Some(format!("{at}: {e}"));
    };
    let mut c = match client.clone().ready().await {
        Ok(c) => c,
        Err(e) => {
            fail(&mut st, "ready", e);
            return st;
        }
    };
    let mut b = http::Request::builder()
        .method(r.method)
        .uri(format!("http://{}{}", r.authority, r.path));
    for (k, v) in &r.fields {
        b = b.header(*k, v.as_str());
    }
    let request = b.body(()).expect("request");
    let (mut resp, mut tx) = match c.send_request(request, r.data.is_empty()) {
        Ok(x) => x,
        Err(e) => {
            fail(&mut st, "send", e);
            return st;
        }
    };
    // The proxy may answer (413) and end the stream before the body is all sent (RFC 9113
    // §8.1 lets a server answer a request it has not read whole): a send that fails then is
    // the client's failure only if no whole answer comes.
    let mut send_failed = None;
    for (i, d) in r.data.iter().enumerate() {
        let last = i + 1 == r.data.len();
        if let Err(e) = tx.send_data(Bytes::from(d.clone()), last) {
            send_failed = Some(format!("send data: {e}"));
            break;
        }
    }
    if let Some(e) = send_failed.clone() {
        st.error = Some(e);
    }
    loop {
        match std::future::poll_fn(|cx| resp.poll_informational(cx)).await {
            Some(Ok(i)) => st
                .interim
                .push(answer(i.status().as_u16(), i.headers(), Vec::new())),
            Some(Err(e)) => {
                fail(&mut st, "informational", e);
                return st;
            }
            None => break,
        }
    }
    let resp = match resp.await {
        Ok(resp) => resp,
        Err(e) => {
            fail(&mut st, "response", e);
            return st;
        }
    };
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(e) => {
                fail(&mut st, "body", e);
                break;
            }
        }
    }
    st.answer = Some(answer(parts.status.as_u16(), &parts.headers, data));
    // a whole answer came: a send that failed before it was the stream ending early
    if st.error == send_failed {
        st.error = None;
    }
    st
}

/// Run a case on a new connection: its requests one after the other, each given `WAIT`.
pub(crate) async fn run(addr: SocketAddr, c: &Case) -> Vec<Stream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (client, conn) = tokio::time::timeout(WAIT, h2::client::handshake(tcp))
        .await
        .expect("h2c handshake in time")
        .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let mut out = Vec::new();
    for r in &c.reqs {
        let st = tokio::time::timeout(WAIT, exchange(&client, r))
            .await
            .unwrap_or(Stream {
                interim: Vec::new(),
                answer: None,
                error: Some("no answer in time".into()),
            });
        out.push(st);
    }
    drop(client);
    conn.abort();
    out
}

/// What must hold on each engine by itself.
fn check(c: &Case, engine: &str, got: &[Stream], seen: &[Seen], problems: &mut Vec<String>) {
    let mut bad = |what: String| problems.push(format!("{}: {engine}: {what}", c.name));
    for st in got {
        match (&st.error, c.refused) {
            (Some(e), false) => bad(format!("the client failed: {e}")),
            (None, true) => bad(format!("a malformed request was not refused: {st:?}")),
            _ => {}
        }
    }
    for s in seen {
        let values = |n: &str| {
            s.fields
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        let sent = c
            .reqs
            .iter()
            .find(|r| r.path == s.target)
            .or(c.reqs.first());
        if let Some(r) = sent {
            let own_host = r.fields.iter().any(|(k, _)| *k == "host");
            let host = values("host");
            if !own_host && (host.len() != 1 || !host[0].eq_ignore_ascii_case(r.authority)) {
                bad(format!(
                    "the origin got host {host:?} for :authority {}",
                    r.authority
                ));
            }
            // the chain split over fields reaches the origin joined, the client last
            let sent_xff: Vec<&str> = (r.fields.iter())
                .filter(|(k, _)| *k == "x-forwarded-for")
                .map(|(_, v)| v.as_str())
                .chain(["127.0.0.1"])
                .collect();
            if values("x-forwarded-for") != [sent_xff.join(", ")] {
                bad(format!(
                    "the origin got x-forwarded-for {:?} for {sent_xff:?}",
                    values("x-forwarded-for")
                ));
            }
            if r.fields.iter().any(|(k, _)| *k == "cookie") && values("cookie") != ["a=1; b=2"] {
                bad(format!(
                    "the origin got cookie {:?}, not one joined field",
                    values("cookie")
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_engines_answer_http2_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let pairs = [(p.addr_of(0), p.addr_of(1)), (p.addr_of(2), p.addr_of(3))];
    let cases = matrix();
    assert!(cases.len() >= 25, "the matrix has {} cases", cases.len());
    let mut diffs = Vec::new();
    for c in &cases {
        let (fast, general) = pairs[c.pair];
        let a = run(fast, c).await;
        let seen_a = origin.take();
        let b = run(general, c).await;
        let seen_b = origin.take();
        let answered = |s: &[Stream]| s.iter().any(|s| s.answer.is_some());
        if !c.refused && !answered(&a) && !answered(&b) {
            diffs.push(format!("{}: no answer from either engine", c.name));
        }
        scripted::differ(&mut diffs, c.name, "client saw", &a, &b);
        scripted::differ_seen(&mut diffs, c.name, &seen_a, &seen_b);
        check(c, "lean", &a, &seen_a, &mut diffs);
        check(c, "general", &b, &seen_b, &mut diffs);
    }
    scripted::differ_route_counters(&mut diffs, &p).await;
    scripted::assert_alike(&diffs, cases.len(), &p.log());
}

/// The sticky cookie over HTTP/2: set alike for a client without one or with a forged one,
/// kept alike for a valid one (sent in a cookie field of its own, as HTTP/2 may split them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_engines_set_sticky_cookies_alike_over_http2() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let sticky = || get("/").authority("sticky.test");
    let first = run(fast, &case("sticky without a cookie", sticky())).await;
    let token = first
        .first()
        .and_then(|s| s.answer.as_ref())
        .and_then(|a| a.fields.iter().find(|(k, _)| k == "set-cookie"))
        .and_then(|(_, v)| v.split(';').next())
        .map(str::to_string)
        .expect("a sticky cookie");
    let _ = origin.take();
    let cases = [
        case("sticky without a cookie", sticky()),
        case(
            "sticky with a forged cookie",
            sticky().field("cookie", "SRV=forged"),
        ),
        case(
            "sticky with a valid cookie",
            sticky()
                .field("cookie", "a=1")
                .field("cookie", token.clone()),
        ),
    ];
    let mut diffs = Vec::new();
    for c in &cases {
        let a = run(fast, c).await;
        let seen_a = origin.take();
        let b = run(general, c).await;
        let seen_b = origin.take();
        let cookies = |s: &[Stream]| {
            s.iter()
                .filter_map(|s| s.answer.as_ref())
                .flat_map(|a| a.fields.iter().filter(|(k, _)| k == "set-cookie"))
                .count()
        };
        let want = usize::from(!c.name.contains("valid"));
        if cookies(&a) != want || cookies(&b) != want {
            diffs.push(format!("{}: {want} set-cookie expected", c.name));
        }
        scripted::differ(&mut diffs, c.name, "client saw", &a, &b);
        scripted::differ_seen(&mut diffs, c.name, &seen_a, &seen_b);
    }
    scripted::assert_alike(&diffs, cases.len(), &p.log());
}

/// One generated HTTP/2 request: a method, a path among the origin's scripted answers (or
/// `/raw` with a generated backend response), an authority spelled one of several ways,
/// up to six fields from those the policy treats specially (X-Forwarded-*, split cookies,
/// `te: trailers`, a `host` beside `:authority`, tracing, an underscore name), and for some
/// a body in DATA frames, with or without its length.
pub(crate) fn generated(g: &mut Gen) -> Req {
    let method = g.pick(&[
        "GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE",
    ]);
    let path = match g.next() % 8 {
        0 | 1 => "/raw",
        _ => g.pick(&crate::differential_gen::ORIGIN_PATHS),
    };
    let authority = g.pick(&[
        "app.test",
        "APP.test",
        "app.test:8080",
        "sticky.test",
        "nope.test",
        "retry.test",
        "dead.test",
        "methods.test",
    ]);
    let mut r = req(method, path).authority(authority);
    if path == "/raw" {
        let (resp, close) = crate::differential_gen::generated_response(g);
        r = r.field(
            "x-raw-response",
            resp.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        );
        if close {
            r = r.field("x-raw-close", "1");
        }
    }
    let names = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "via",
        "cookie",
        "cookie",
        "te",
        "accept-encoding",
        "x-a",
        "range",
        "if-none-match",
        "traceparent",
        "host",
        "content-type",
        "x_under",
        "max-forwards",
        "x-b",
    ];
    let values = [
        "203.0.113.7",
        "198.51.100.2, 192.0.2.1",
        "",
        "a=1",
        "b=2",
        "trailers",
        "gzip, br",
        "bytes=0-1",
        "\"e\"",
        "https",
        "app.test",
        "other.test",
        "text/plain",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "close",
        "1",
    ];
    for _ in 0..(g.next() % 7) {
        let name = g.pick(&names);
        let value = if name == "te" {
            "trailers"
        } else {
            g.pick(&values)
        };
        r = r.field(name, value);
    }
    if matches!(method, "POST" | "PUT") && !g.chance(2) {
        let n = (g.next() % 20) as usize;
        if g.chance(4) {
            r = r.field("content-length", n.to_string());
        }
        r = r.data("d".repeat(n));
    }
    r
}

/// Beyond the matrix, over HTTP/2: requests made by [`generated`] from a fixed seed, each on
/// a new connection to both engines, must give the client and the origin the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_http2_requests_are_answered_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let mut g = Gen(0x0042_6832_6765_6e73);
    let mut diffs = Vec::new();
    let mut answered = 0;
    const CASES: usize = 600;
    for i in 0..CASES {
        let c = case("generated", generated(&mut g));
        // an answer that comes while the body is still being sent (a 400, a 413) ends the
        // stream, and whether the client's last DATA frame was already out is a race
        let settle = |mut st: Vec<Stream>| {
            for s in &mut st {
                if s.answer.is_some()
                    && s.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("send data"))
                {
                    s.error = None;
                }
            }
            st
        };
        let a = settle(run(fast, &c).await);
        let seen_a = origin.take();
        let b = settle(run(general, &c).await);
        let seen_b = origin.take();
        answered += usize::from(a.iter().any(|s| s.answer.is_some()));
        let r = &c.reqs[0];
        let name = format!("case {i} {}", r.label());
        scripted::differ(&mut diffs, &name, "client saw", &a, &b);
        scripted::differ_seen(&mut diffs, &name, &seen_a, &seen_b);
    }
    scripted::assert_answered_and_alike(&diffs, answered, CASES, "requests", &p.log());
}
