//! Fields the proxy joins or answers, alike on both engines: the X-Forwarded-For chain, and
//! `Max-Forwards` counted down and, spent, answered only after admission.

use super::{case, get, responses, run};
use crate::support::scripted::{self, Origin};
use crate::support::Proxy;

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
