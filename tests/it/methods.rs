//! `routes[].methods` and its default, one admission step (`ListenerPolicy::admit_on`) for
//! every engine: a method the route does not take is answered 405 and never reaches a
//! backend; without `methods`, that is TRACE alone (as nginx answers it). Checked over
//! HTTP/1.1, HTTP/2 and HTTP/3, each on the lean engine and the general one.

use crate::differential::{case, responses, run, Case};
use crate::differential_h2::{self as h2d, Req};
use crate::differential_h3::{self as h3d, both_engines};
use crate::support::scripted::{self, Answer, Origin};
use crate::support::{quic, Proxy};

/// `methods.test` is the scripted config's route with `methods: [GET, POST, TRACE]`.
const CASES: [(&str, &str, u16, Option<&str>); 7] = [
    ("TRACE", "app.test", 405, None),
    ("OPTIONS", "app.test", 200, None),
    ("DELETE", "app.test", 200, None),
    ("PUT", "methods.test", 405, Some("GET, POST, TRACE, HEAD")),
    ("HEAD", "methods.test", 200, None),
    ("TRACE", "methods.test", 200, None),
    ("POST", "methods.test", 200, None),
];

fn allow(a: &Answer) -> Option<&str> {
    a.fields
        .iter()
        .find(|(k, _)| k == "allow")
        .map(|(_, v)| v.as_str())
}

/// What one request got over HTTP/1.1 (`raw`, to the plain pair), HTTP/2 (`r`, h2c to the
/// plain pair) and HTTP/3 (`r`, to the TLS pair), each on the lean engine (the pair's first
/// listener) and the general one; the protocol and engine name each answer.
pub(crate) async fn on_every_engine(
    plain: &Proxy,
    tls: &Proxy,
    e: &quinn::Endpoint,
    raw: &Case,
    r: &Req,
) -> Vec<(String, Option<Answer>)> {
    let mut got = Vec::new();
    for (engine, i) in [("lean", 0), ("general", 1)] {
        let bytes = run(plain.addr_of(i), raw).await;
        let a = responses(&bytes, &raw.heads).0.pop();
        got.push((format!("HTTP/1.1 {engine}"), a));
        let s = h2d::run(plain.addr_of(i), &h2d::case(raw.name, r.clone())).await;
        let a = s.into_iter().next().and_then(|s| s.answer);
        got.push((format!("HTTP/2 {engine}"), a));
        let a = match h3d::exchange(e, tls.addr_of(i), r).await {
            h3d::Got::Answer(a) => Some(a),
            h3d::Got::Failed(_) => None,
        };
        got.push((format!("HTTP/3 {engine}"), a));
    }
    got
}

/// A method outside a route's `methods`, and TRACE on a route without them, is answered
/// 405 (with `Allow` where the route names its methods) on every engine and protocol, and
/// the origin never sees it; the methods a route takes pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_a_route_does_not_take_are_answered_405_everywhere() {
    let origin = Origin::start().await;
    let plain = Proxy::start(&scripted::config(origin.addr, "protocol: http, h2c: true"));
    let (pki, tls) = both_engines("methods", &origin);
    let e = quic::endpoint(&pki);
    let mut wrong = Vec::new();
    for (method, host, status, allowed) in CASES {
        let body = if method == "POST" || method == "PUT" {
            "content-length: 2\r\n\r\nhi".to_string()
        } else {
            "\r\n".to_string()
        };
        let raw = format!("{method} /echo HTTP/1.1\r\nHost: {host}\r\n{body}");
        let c = case("method", &raw);
        let r = Req {
            method,
            authority: host,
            path: "/echo",
            fields: Vec::new(),
            data: if body.ends_with("hi") {
                vec![b"hi".to_vec()]
            } else {
                Vec::new()
            },
        };
        let got = on_every_engine(&plain, &tls, &e, &c, &r).await;
        let reached = origin.take().len();
        let want_reached = if status == 405 { 0 } else { got.len() };
        if reached != want_reached {
            wrong.push(format!(
                "{method} {host}: the origin saw {reached} requests, not {want_reached}"
            ));
        }
        for (how, a) in got {
            let seen = a.as_ref().map(|a| (a.status, allow(a)));
            if seen != Some((status, allowed)) {
                wrong.push(format!(
                    "{method} {host} over {how}: (status, Allow) {seen:?}, not {:?}",
                    (status, allowed)
                ));
            }
        }
    }
    let logs = format!("{}\n--- HTTP/3 proxy ---\n{}", plain.log(), tls.log());
    assert!(wrong.is_empty(), "{}\n{logs}", wrong.join("\n"));
    assert!(
        plain
            .log()
            .contains("method TRACE refused by routes[0] (405)"),
        "{}",
        plain.log()
    );
}
