//! One policy, two engines, beyond the hand-written matrix of `differential`: requests, and
//! backend responses, made by small generators from fixed seeds, each sent through a
//! listener on the lean engine and one with `fast_path: false`, must give the client and the
//! origin the same. A difference names the case's number and its bytes, so a finding can be
//! replayed and turned into a named test. Three were:
//! `differential::backends::a_101_without_a_relayed_upgrade_is_refused`,
//! `differential::connection::an_own_answer_keeps_the_connection_once_the_body_is_in` and
//! `fast::responses::chunked_response_is_byte_exact_but_for_its_trailers_and_both_connections_are_reused`.
//!
//! The last two tests hold the forward proxy to a reverse listener the same way (one request
//! edit, one response edit); their first run found
//! `forward::requests::a_length_list_reaches_the_origin_as_one_length_and_nothing_is_smuggled`.

use crate::differential::{case, responses, run, Case};
use crate::support::scripted::{self, Origin};
use crate::support::Proxy;

/// A small deterministic generator (xorshift), so that a generated case can be replayed.
pub(crate) struct Gen(pub(crate) u64);

impl Gen {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
    pub(crate) fn chance(&mut self, in_eight: u64) -> bool {
        self.next() % 8 < in_eight
    }
}

/// Paths the scripted origin answers in its own ways (chunked, 1xx first, hop-by-hop and
/// connection-named fields, a 101, a 204, a large body, ...), for the generators here and
/// in `differential_h2`.
pub(crate) const ORIGIN_PATHS: [&str; 14] = [
    "/",
    "/echo",
    "/chunked",
    "/cookies",
    "/hop",
    "/early",
    "/close-field",
    "/te-nominated",
    "/cl-list",
    "/nocontent",
    "/upgrade",
    "/small",
    "/a/b?x=1",
    "/big",
];

/// Request field names the policy treats specially (hop-by-hop ones, Connection with its
/// options, X-Forwarded-*, Cookie, Upgrade, Expect, framing), in odd case, for the request
/// generators.
const REQUEST_FIELD_NAMES: [&str; 28] = [
    "Connection",
    "connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Proxy-Connection",
    "Proxy-Authorization",
    "Upgrade",
    "X-Forwarded-For",
    "x-forwarded-for",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "Forwarded",
    "Via",
    "Cookie",
    "Expect",
    "X-A",
    "x-a",
    "X-B",
    "Close",
    "Accept-Encoding",
    "Max-Forwards",
    "Range",
    "If-None-Match",
    "HTTP2-Settings",
    "traceparent",
    "X_Under",
    "Content-Type",
];

/// Values for [`REQUEST_FIELD_NAMES`]: options, addresses, empty ones, obs-text.
const REQUEST_FIELD_VALUES: [&str; 29] = [
    "close",
    "keep-alive",
    "Keep-Alive, X-A",
    "upgrade",
    "Upgrade, X-B",
    "x-a, x-b",
    "close, x-a",
    "te",
    "websocket",
    "h2c",
    "foo/1",
    "203.0.113.7",
    "198.51.100.2, 192.0.2.1",
    "",
    " ",
    "a=1",
    "b=2; c=3",
    "100-continue",
    "trailers",
    "1",
    "bytes=0-1",
    "\"e\"",
    "https",
    "gzip, br",
    "for=192.0.2.60",
    "caf\u{e9}",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Transfer-Encoding",
    "content-length, x-a",
];

/// Up to seven fields drawn from [`REQUEST_FIELD_NAMES`] and [`REQUEST_FIELD_VALUES`], in
/// four spacings, appended to `head`.
fn generated_fields(g: &mut Gen, head: &mut String) {
    for _ in 0..(g.next() % 8) {
        let name = g.pick(&REQUEST_FIELD_NAMES);
        let value = g.pick(&REQUEST_FIELD_VALUES);
        let sep = g.pick(&[": ", ":", ":\t", ":  "]);
        head.push_str(&format!("{name}{sep}{value}\r\n"));
    }
}

/// One generated request: a method, a target among the origin's scripted answers (origin
/// or absolute form, some odd), a Host spelled one of several ways (or two, or none), and
/// up to seven fields drawn from those the policy treats specially (hop-by-hop ones,
/// Connection with its options, X-Forwarded-*, Cookie, Upgrade, Expect, framing), in odd
/// case and spacing, repeated or empty; a body framed by length or chunks, sometimes both.
fn generated(g: &mut Gen) -> (String, bool) {
    let method = g.pick(&[
        "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
    ]);
    // the origin's scripted answers, and a few odd targets
    let path = match g.next() % 4 {
        0 => g.pick(&["/cl-twice", "/continue", "/%7Ea/./b/../c", "//x?y=%20&z"]),
        _ => g.pick(&ORIGIN_PATHS),
    };
    let host = g.pick(&[
        "app.test",
        "APP.test",
        "app.test:80",
        "app.test:8080",
        "sticky.test",
        "app.test.",
        "nope.test",
        "retry.test",
        "dead.test",
        "methods.test",
    ]);
    let target = if g.chance(1) {
        format!("http://{host}{path}")
    } else {
        path.to_string()
    };
    let version = if g.chance(1) { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut head = format!("{method} {target} {version}\r\n");
    match g.next() % 16 {
        0 => {}
        1 => head.push_str(&format!("Host: {host}\r\nHost: {host}\r\n")),
        2 => head.push_str("Host:\r\n"),
        _ => head.push_str(&format!("Host: {host}\r\n")),
    }
    generated_fields(g, &mut head);
    let (framing, body) = generated_body(g, method);
    (format!("{head}{framing}\r\n{body}"), method == "HEAD")
}

/// A request body for `method` (always for POST, PUT and PATCH, one in eight otherwise):
/// the framing fields and the body, by length, a list of one repeated length, chunks, or
/// both framings.
fn generated_body(g: &mut Gen, method: &str) -> (String, String) {
    let has_body = matches!(method, "POST" | "PUT" | "PATCH") || g.chance(1);
    let n = (g.next() % 20) as usize;
    let body = "b".repeat(n);
    // the chunked form of the same body (a chunk of size 0 would end it early)
    let chunked = match n {
        0 => "0\r\n\r\n".to_string(),
        _ => format!("{n:x}\r\n{body}\r\n0\r\n\r\n"),
    };
    match (has_body, g.next() % 8) {
        (false, _) => (String::new(), String::new()),
        (true, 0) => ("Transfer-Encoding: chunked\r\n".into(), chunked),
        (true, 1) => (format!("Content-Length: {n}, {n}\r\n"), body),
        (true, 2) => (
            format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
            chunked,
        ),
        (true, _) => (format!("Content-Length: {n}\r\n"), body),
    }
}

/// Beyond the matrix: requests made by [`generated`] from a fixed seed, each through both
/// engines as the matrix's cases are, must give the client and the origin the same. A
/// difference names the case's number and its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_are_answered_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let mut g = Gen(0x05ee_d0f5_7e95_700e);
    let mut diffs = Vec::new();
    let mut answered = 0;
    const CASES: usize = 1000;
    for i in 0..CASES {
        // one in eight: two requests pipelined on the connection
        let (mut raw, head) = generated(&mut g);
        let mut heads = vec![head];
        if g.chance(1) {
            let (next, head) = generated(&mut g);
            raw.push_str(&next);
            heads.push(head);
        }
        // a body runs into the next request line, which `case` would not see
        let c = Case {
            heads,
            ..case("generated", &raw)
        };
        let a = run(fast, &c).await;
        let seen_a = origin.take();
        let b = run(general, &c).await;
        let seen_b = origin.take();
        let (ra, rb) = (responses(&a, &c.heads).0, responses(&b, &c.heads).0);
        answered += usize::from(!ra.is_empty());
        let name = format!("case {i} {raw:?}");
        scripted::differ(&mut diffs, &name, "client saw", &ra, &rb);
        scripted::differ_seen(&mut diffs, &name, &seen_a, &seen_b);
    }
    scripted::assert_answered_and_alike(&diffs, answered, CASES, "requests", &p.log());
}

/// One generated backend response: maybe an interim response first, a status with an odd
/// reason or none, HTTP/1.1 or 1.0, up to seven fields drawn from those the policy treats
/// specially in responses (hop-by-hop ones, Connection with its options, Set-Cookie
/// repeated, Via, Age, caching and framing fields), and a body framed by length (or a list
/// of equal lengths), chunks (with an extension or a trailer) or the connection's end.
/// Returns the bytes and whether the origin closes after them.
pub(crate) fn generated_response(g: &mut Gen) -> (Vec<u8>, bool) {
    let mut out = String::new();
    match g.next() % 8 {
        0 => out.push_str("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"),
        1 => out.push_str("HTTP/1.1 100 Continue\r\n\r\n"),
        _ => {}
    }
    let status = g.pick(&[
        "200 OK",
        "200 OK",
        "201 Created",
        "204 No Content",
        "206 Partial",
        "301 Moved",
        "304 Not Modified",
        "404 Not Found",
        "500 Oops",
        "503 Unavailable",
        "299 ",
        "200",
    ]);
    let version = if g.chance(1) { "HTTP/1.0" } else { "HTTP/1.1" };
    out.push_str(&format!("{version} {status}\r\n"));
    let names = [
        "Connection",
        "connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Trailer",
        "TE",
        "Upgrade",
        "Set-Cookie",
        "set-cookie",
        "X-A",
        "x-a",
        "X-B",
        "Close",
        "Server",
        "Via",
        "Age",
        "Cache-Control",
        "Content-Type",
        "Vary",
        "Content-Encoding",
        "Alt-Svc",
        "ETag",
        "Location",
        "WWW-Authenticate",
    ];
    let values = [
        "close",
        "keep-alive",
        "x-a",
        "X-A, x-b",
        "close, x-a",
        "Transfer-Encoding",
        "Content-Length",
        "upgrade",
        "timeout=5",
        "a=1; Path=/",
        "b=2; HttpOnly",
        "",
        " ",
        "1.1 other",
        "no-store",
        "max-age=60",
        "text/plain",
        "gzip",
        "\"e1\"",
        "/next",
        "caf\u{e9}",
        "h3=\":443\"",
        "Basic realm=x",
        "Accept-Encoding",
    ];
    for _ in 0..(g.next() % 8) {
        let name = g.pick(&names);
        let value = g.pick(&values);
        let sep = g.pick(&[": ", ":", ":\t"]);
        out.push_str(&format!("{name}{sep}{value}\r\n"));
    }
    let n = (g.next() % 24) as usize;
    let body = "r".repeat(n);
    let chunks = match n {
        0 => "0\r\n\r\n".to_string(),
        _ => format!("{n:x}\r\n{body}\r\n0\r\n\r\n"),
    };
    let (framing, close) = match g.next() % 8 {
        0 => (format!("Transfer-Encoding: chunked\r\n\r\n{chunks}"), false),
        1 => (
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{n:x};ext=1\r\n{body}\r\n0\r\nX-T: 1\r\n\r\n"
            ),
            false,
        ),
        2 => (format!("\r\n{body}"), true),
        3 => (format!("Content-Length: {n}, {n}\r\n\r\n{body}"), false),
        _ => (format!("Content-Length: {n}\r\n\r\n{body}"), g.chance(1)),
    };
    out.push_str(&framing);
    (out.into_bytes(), close)
}

/// A body with its framing: the framing field, the blank line, and the body by length or
/// in one chunk (the end chunk alone for an empty body).
pub(crate) fn framed(body: &str, chunked: bool) -> String {
    if !chunked {
        return format!("Content-Length: {}\r\n\r\n{body}", body.len());
    }
    let chunks = match body.len() {
        0 => "0\r\n\r\n".to_string(),
        n => format!("{n:x}\r\n{body}\r\n0\r\n\r\n"),
    };
    format!("Transfer-Encoding: chunked\r\n\r\n{chunks}")
}

/// A generated backend response ([`generated_response`]) to be served by the scripted
/// origin's `/raw`: the response, the method that asks for it (one in eight HEAD), and the
/// request's fields after its Host (the response hex-encoded, the origin told to close after
/// it when it is close-delimited), ending with the blank line.
pub(crate) fn raw_ask(g: &mut Gen) -> (Vec<u8>, &'static str, String) {
    let (resp, close) = generated_response(g);
    let hex: String = resp.iter().map(|b| format!("{b:02x}")).collect();
    let method = if g.chance(1) { "HEAD" } else { "GET" };
    let closing = if close { "X-Raw-Close: 1\r\n" } else { "" };
    (
        resp,
        method,
        format!("X-Raw-Response: {hex}\r\n{closing}\r\n"),
    )
}

/// The response side: backend responses made by [`generated_response`] from a fixed seed,
/// each to a GET (one in eight a HEAD) through both engines, must reach the client the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_responses_are_passed_on_alike() {
    let origin = Origin::start().await;
    let p = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let mut g = Gen(0x00a5_5e55_ed0f_c0de);
    let mut diffs = Vec::new();
    let mut answered = 0;
    const CASES: usize = 1000;
    for i in 0..CASES {
        let (resp, method, ask) = raw_ask(&mut g);
        let raw = format!("{method} /raw HTTP/1.1\r\nHost: app.test\r\n{ask}");
        let c = case("generated response", &raw);
        let a = run(fast, &c).await;
        origin.take();
        let b = run(general, &c).await;
        origin.take();
        let (ra, rb) = (responses(&a, &c.heads).0, responses(&b, &c.heads).0);
        answered += usize::from(!ra.is_empty());
        let name = format!("case {i} {method} {:?}", String::from_utf8_lossy(&resp));
        scripted::differ(&mut diffs, &name, "client saw", &ra, &rb);
    }
    scripted::assert_answered_and_alike(&diffs, answered, CASES, "responses", &p.log());
}

/// A forward listener (`{{port}}`, `anonymity: off`) and a reverse one on the general engine
/// (`{{port1}}`), both to origin `o`.
fn forward_and_reverse(o: std::net::SocketAddr) -> String {
    format!(
        "listeners:
  - name: fwd
    address: 127.0.0.1:{{{{port}}}}
    protocol: http
    forward_proxy: {{allow_private_destinations: true, access: [{{action: allow}}], anonymity: 'off', read_timeout: 1s}}
  - {{name: rev, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: '{o}'}}], read_timeout: 1s, retries: 0}}
routes:
  - {{listener: rev, upstream: app}}
"
    )
}

/// One request for [`generated_forward_requests_reach_the_origin_as_reverse_ones_do`], in
/// absolute form to origin `o` and in origin form, and whether it is a HEAD.
fn generated_pair(g: &mut Gen, o: std::net::SocketAddr) -> (String, String, bool) {
    let method = g.pick(&[
        "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    ]);
    let path = match g.next() % 4 {
        0 => g.pick(&["/continue", "/%7Ea/./b/../c", "//x?y=%20&z", "/cl-twice"]),
        _ => g.pick(&ORIGIN_PATHS),
    };
    let version = if g.chance(1) { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut fields = format!("Host: {o}\r\n");
    generated_fields(g, &mut fields);
    let (framing, body) = generated_body(g, method);
    let rest = format!("{fields}{framing}\r\n{body}");
    (
        format!("{method} http://{o}{path} {version}\r\n{rest}"),
        format!("{method} {path} {version}\r\n{rest}"),
        method == "HEAD",
    )
}

/// The forward proxy against a reverse listener: the same generated request (method, a path
/// the scripted origin answers, fields from [`REQUEST_FIELD_NAMES`], a body), once in
/// absolute form to a forward listener (`anonymity: off`) and once in origin form to a
/// reverse one, must reach the origin the same (but for what each proxy announces: the
/// forward proxy's Via, a reverse listener's X-Forwarded-Proto and -Host), and the client
/// must get the same answer from the origin; where the proxy answers itself, the same status.
/// Both run the one request edit, `policy::edit::request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_forward_requests_reach_the_origin_as_reverse_ones_do() {
    let origin = Origin::start().await;
    let o = origin.addr;
    let p = Proxy::start(&forward_and_reverse(o));
    let (fwd, rev) = (p.addr_of(0), p.addr_of(1));
    // what only one side adds
    let own = |s: Vec<scripted::Seen>| -> Vec<scripted::Seen> {
        s.into_iter()
            .map(|mut s| {
                s.fields.retain(|(k, v)| {
                    !(k == "x-forwarded-proto"
                        || k == "x-forwarded-host"
                        || k == "via" && v == "1.1 stepstone")
                });
                s
            })
            .collect()
    };
    let mut g = Gen(0x0f0e_a4d5_1de5_0001);
    let mut diffs = Vec::new();
    let mut reached = 0;
    const CASES: usize = 500;
    for i in 0..CASES {
        // one in eight: two requests pipelined on the connection
        let (mut to_fwd, mut to_rev, head) = generated_pair(&mut g, o);
        let mut heads = vec![head];
        if g.chance(1) {
            let (f, r, head) = generated_pair(&mut g, o);
            to_fwd.push_str(&f);
            to_rev.push_str(&r);
            heads.push(head);
        }
        let via_fwd = Case {
            heads: heads.clone(),
            ..case("generated forward", &to_fwd)
        };
        let via_rev = Case {
            heads,
            ..case("generated reverse", &to_rev)
        };
        let a = run(fwd, &via_fwd).await;
        let seen_a = own(origin.take());
        let b = run(rev, &via_rev).await;
        let seen_b = own(origin.take());
        let (ra, rb) = (
            responses(&a, &via_fwd.heads).0,
            responses(&b, &via_rev.heads).0,
        );
        let name = format!("case {i} {:?}", via_rev.raw);
        scripted::differ_seen(&mut diffs, &name, &seen_a, &seen_b);
        if seen_a.is_empty() && seen_b.is_empty() {
            // each proxy's own page: the statuses must agree
            let status = |r: &[scripted::Answer]| r.iter().map(|a| a.status).collect::<Vec<_>>();
            scripted::differ(&mut diffs, &name, "status", &status(&ra), &status(&rb));
        } else {
            reached += 1;
            scripted::differ(&mut diffs, &name, "client saw", &ra, &rb);
        }
    }
    assert!(
        reached > CASES * 3 / 4,
        "only {reached} of {CASES} generated requests reached the origin"
    );
    scripted::assert_alike(&diffs, CASES, &p.log());
}

/// The response side of the forward proxy against a reverse listener: backend responses made
/// by [`generated_response`] from a fixed seed must reach the client the same through both
/// (one response edit, `policy::edit::response`, and one 101 rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_responses_reach_forward_clients_as_reverse_ones_do() {
    let origin = Origin::start().await;
    let o = origin.addr;
    let p = Proxy::start(&forward_and_reverse(o));
    let (fwd, rev) = (p.addr_of(0), p.addr_of(1));
    let mut g = Gen(0x0f0e_a4d5_1de5_0002);
    let mut diffs = Vec::new();
    let mut answered = 0;
    const CASES: usize = 500;
    for i in 0..CASES {
        let (resp, method, ask) = raw_ask(&mut g);
        let rest = format!("HTTP/1.1\r\nHost: {o}\r\n{ask}");
        let via_fwd = case(
            "generated response",
            &format!("{method} http://{o}/raw {rest}"),
        );
        let via_rev = case("generated response", &format!("{method} /raw {rest}"));
        let a = run(fwd, &via_fwd).await;
        origin.take();
        let b = run(rev, &via_rev).await;
        origin.take();
        let (ra, rb) = (
            responses(&a, &via_fwd.heads).0,
            responses(&b, &via_rev.heads).0,
        );
        answered += usize::from(!ra.is_empty());
        let name = format!("case {i} {method} {:?}", String::from_utf8_lossy(&resp));
        scripted::differ(&mut diffs, &name, "client saw", &ra, &rb);
    }
    scripted::assert_answered_and_alike(&diffs, answered, CASES, "responses", &p.log());
}
