//! The request target as routes see it, one admission step (`policy::target`) for every
//! engine: a path is matched to `path_prefix` as a backend reads it (percent-decoded, slashes
//! merged, dot segments resolved), so `/x/../small`, `//small` and `/%73mall` get the
//! `/small` route's limits; a path that climbs above the root or a bad `%` is 400, and so is
//! a Host that is not one (RFC 9112 §3.2). Checked over HTTP/1.1, HTTP/2 and HTTP/3, each on
//! the lean engine and the general one; the backend gets the target as it came.

use crate::differential::{case, responses, run};
use crate::differential_h2::Req;
use crate::differential_h3::both_engines;
use crate::methods::on_every_engine;
use crate::support::scripted::{self, Origin};
use crate::support::{quic, Proxy};

/// The scripted config's `app.test` routes: `/` takes any body, `/small` at most 10 bytes.
/// Each case POSTs 12 bytes.
const CASES: [(&str, u16); 10] = [
    ("/small/x", 413),
    ("/x/../small/x", 413),
    ("//small/x", 413),
    ("/./small/x", 413),
    ("/%73mall/x", 413),
    ("/x/%2e%2E/small/x", 413),
    ("/../small/x", 400),
    ("/a/%2e%2e/../small", 400),
    ("/echo%zz", 400),
    ("/x/../echo", 200),
];

const BODY: &str = "0123456789AB";

/// Every engine and protocol takes a route by the path a backend will read, refuses a path
/// above the root or with a bad `%` (400), and forwards what it takes as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_see_the_path_as_a_backend_reads_it_on_every_engine() {
    let origin = Origin::start().await;
    let plain = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let (pki, tls) = both_engines("targets", &origin);
    let e = quic::endpoint(&pki);
    let mut wrong = Vec::new();
    for (path, status) in CASES {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: app.test\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let c = case("target", &raw);
        let r = Req {
            method: "POST",
            authority: "app.test",
            path,
            fields: vec![("content-length", BODY.len().to_string())],
            data: vec![BODY.as_bytes().to_vec()],
        };
        let got = on_every_engine(&plain, &tls, &e, &c, &r).await;
        let seen = origin.take();
        let want_reached = if status == 200 { got.len() } else { 0 };
        if seen.len() != want_reached {
            wrong.push(format!(
                "{path}: the origin saw {} requests, not {want_reached}",
                seen.len()
            ));
        }
        if let Some(s) = seen.iter().find(|s| s.target != path) {
            wrong.push(format!("{path}: the origin got the target {:?}", s.target));
        }
        for (how, a) in got {
            let got = a.as_ref().map(|a| a.status);
            if got != Some(status) {
                wrong.push(format!("{path} over {how}: {got:?}, not {status}"));
            }
        }
    }
    let logs = format!("{}\n--- HTTP/3 proxy ---\n{}", plain.log(), tls.log());
    assert!(wrong.is_empty(), "{}\n{logs}", wrong.join("\n"));
    assert!(
        plain
            .log()
            .contains("a path that climbs above the root: \"/../small/x\" (400)"),
        "{}",
        plain.log()
    );
}

/// A Host field that is not `uri-host [":" port]` is 400 on both HTTP/1.1 engines (the
/// general engine forwarded `a b` and `a:99999`, the lean one also `a@b`), and never reaches
/// the backend; an empty one and an IPv6 literal with a port pass admission (404: the config
/// routes `app.test` alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_one_is_400_on_both_engines() {
    let origin = Origin::start().await;
    let plain = Proxy::start(&scripted::config(origin.addr, "protocol: http"));
    let mut wrong = Vec::new();
    for (host, status) in [
        ("a b", 400),
        ("a@b", 400),
        ("a/b", 400),
        ("a:99999", 400),
        ("a:80x", 400),
        ("[::1", 400),
        ("", 404),
        ("[::1]:80", 404),
        ("app.test:8080", 200),
    ] {
        let raw = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let c = case("host", &raw);
        for (engine, i) in [("lean", 0), ("general", 1)] {
            let bytes = run(plain.addr_of(i), &c).await;
            let got = responses(&bytes, &c.heads).0.pop().map(|a| a.status);
            if got != Some(status) {
                wrong.push(format!("Host {host:?} on the {engine} engine: {got:?}"));
            }
        }
        let reached = origin.take().len();
        let want = if status == 200 { 2 } else { 0 };
        if reached != want {
            wrong.push(format!(
                "Host {host:?}: the origin saw {reached} requests, not {want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), plain.log());
    assert!(
        plain.log().contains("invalid Host \"a b\" (400)"),
        "{}",
        plain.log()
    );
}
