//! One cache policy, two engines: a cached route on a listener on the lean engine (which
//! answers fresh hits itself) and on one with `fast_path: false` (Pingora's cache phases for
//! everything). Backend responses made by a generator from the fields that decide caching
//! (Cache-Control, Expires, Vary, validators, Set-Cookie, Age), each fetched and then asked
//! for again in one of several ways (plain, HEAD, conditional, ranged, no-cache, another
//! Accept-Encoding), must reach the client the same from both, miss and follow-up alike.
//! `Age` and `Date` are compared by presence.

use crate::differential::{case, responses, run};
use crate::differential_gen::{framed, Gen};
use crate::support::scripted::{self, Answer, Origin};
use crate::support::Proxy;

/// One cacheable-or-not backend response; its `ETag`, when it has one, is `"e1"`.
fn generated_response(g: &mut Gen) -> String {
    let status = g.pick(&[
        "200 OK",
        "200 OK",
        "200 OK",
        "203 Non-Authoritative",
        "301 Moved",
        "404 Not Found",
        "500 Oops",
    ]);
    let mut out = format!("HTTP/1.1 {status}\r\n");
    let fields: [(&str, &[&str]); 8] = [
        (
            "Cache-Control",
            &[
                "max-age=60",
                "max-age=60",
                "s-maxage=60",
                "no-store",
                "private",
                "no-cache",
                "public, max-age=60",
                "max-age=0",
                "max-age=60, must-revalidate",
                "max-age=60, no-transform",
            ],
        ),
        (
            "Expires",
            &[
                "Thu, 01 Jan 2099 00:00:00 GMT",
                "Thu, 01 Jan 1970 00:00:00 GMT",
                "0",
            ],
        ),
        ("Vary", &["Accept-Encoding", "Cookie", "*", "X-A"]),
        ("ETag", &["\"e1\"", "W/\"e1\""]),
        ("Last-Modified", &["Tue, 01 Dec 2026 00:00:00 GMT"]),
        ("Set-Cookie", &["a=1; Path=/"]),
        ("Age", &["10", "100"]),
        ("Content-Type", &["text/plain", "text/html"]),
    ];
    for (name, values) in fields {
        // Cache-Control most often, the rest now and then
        let odds = if name == "Cache-Control" { 6 } else { 2 };
        if g.chance(odds) {
            out.push_str(&format!("{name}: {}\r\n", g.pick(values)));
        }
    }
    let n = (g.next() % 24) as usize;
    out.push_str(&framed(&"c".repeat(n), g.chance(1)));
    out
}

/// `Age` and `Date` by presence: a second's tick between the engines' requests moves them.
fn masked(mut a: Vec<Answer>) -> Vec<Answer> {
    for r in &mut a {
        for (k, v) in &mut r.fields {
            if k == "age" {
                *v = "<age>".into();
            }
        }
    }
    a
}

/// Generated responses on a cached route, each fetched and asked for again, give the client
/// the same through the lean engine and the general one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cached_responses_are_served_alike() {
    let origin = Origin::start().await;
    let o = origin.addr;
    let cfg = format!(
        "listeners:
  - {{name: fast, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: '{o}'}}], read_timeout: 1s, retries: 0}}
routes:
  - {{listener: fast, upstream: app, cache: {{enabled: true}}}}
  - {{listener: general, upstream: app, cache: {{enabled: true}}}}
"
    );
    let p = Proxy::start(&cfg);
    let (fast, general) = (p.addr_of(0), p.addr_of(1));
    let mut g = Gen(0x00ca_c4ed_0000_0001);
    let mut diffs = Vec::new();
    let mut hits = 0;
    const CASES: usize = 400;
    for i in 0..CASES {
        let resp = generated_response(&mut g);
        let hex: String = resp.bytes().map(|b| format!("{b:02x}")).collect();
        let path = format!("/raw?case={i}");
        let first =
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Raw-Response: {hex}\r\n\r\n");
        let again = g.pick(&[
            "GET",
            "GET",
            "HEAD",
            "GET If-None-Match: \"e1\"",
            "GET If-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT",
            "GET Range: bytes=0-1",
            "GET Cache-Control: no-cache",
            "GET Accept-Encoding: gzip",
            "GET Cookie: a=2",
            "GET X-A: other",
        ]);
        let (method, extra) = again.split_once(' ').unwrap_or((again, ""));
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("{extra}\r\n")
        };
        let second = format!(
            "{method} {path} HTTP/1.1\r\nHost: app.test\r\nX-Raw-Response: {hex}\r\n{extra}\r\n"
        );
        let mut seen = Vec::new();
        for addr in [fast, general] {
            let mut answers = Vec::new();
            for raw in [&first, &second] {
                let c = case("generated cache", raw);
                let got = run(addr, &c).await;
                answers.extend(masked(responses(&got, &c.heads).0));
            }
            seen.push((answers, origin.take().len()));
        }
        hits += usize::from(seen[0].1 < 2);
        let name = format!("case {i} then {again:?} {resp:?}");
        scripted::differ(&mut diffs, &name, "client saw", &seen[0].0, &seen[1].0);
        scripted::differ(&mut diffs, &name, "origin requests", &seen[0].1, &seen[1].1);
    }
    assert!(
        hits > CASES / 5,
        "only {hits} of {CASES} follow-ups were hits"
    );
    scripted::assert_alike(&diffs, CASES, &p.log());
}
