//! The `request` fuzz target's way in (fuzz/fuzz_targets/request.rs): the lean engine's plan
//! for one client request head, which decides everything about it without I/O, on a fixed
//! listener. The target checks what would go to the backend against properties of its own.
//! Not an API: nothing in the binary calls it.

use super::{Conn, FastPath, Plan};
use crate::config::Config;
use crate::http::Listener;
use crate::policy::route::Router;
use crate::upstream::Upstreams;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// The listener the target's requests reach: routes by host, path and header, a body limit
/// (a 413 of the policy's own), no route for other hosts (a 404), and three requests per
/// connection. Backends are never connected to: a plan does no I/O.
const CONFIG: &str = "\
listeners:
  - {name: web, address: 127.0.0.1:8080, protocol: http, limits: {keepalive_requests: 3}}
upstreams:
  - {name: app, backends: [{address: 127.0.0.1:9001}]}
  - {name: api, backends: [{address: 127.0.0.1:9002}], selection: consistent_hash, hash_key: header:X-User}
  - {name: canary, backends: [{address: 127.0.0.1:9003}]}
routes:
  - {listener: web, host: '*.example.com', path_prefix: /api, upstream: api, max_body_size: 1KiB}
  - {listener: web, host: a.test, upstream: app}
  - {listener: web, host: a.test, match: {headers: {X-Canary: '1'}}, upstream: canary}
";

/// What the lean engine would do with a request, as the target sees it.
#[doc(hidden)]
#[derive(Debug)]
pub enum FuzzPlan {
    /// Left to Pingora's engine, untouched.
    Fallback,
    /// One of the policy's own answers (a 404, a 413, ...), and the body bytes the client
    /// has still to send, which an answer does not read.
    Answer {
        status: u16,
        keep: bool,
        body_left: u64,
        /// A chunked body of which more is to come.
        chunks_left: bool,
    },
    /// Forwarded: the bytes written to the backend first (the head, then the body bytes
    /// that came with it), the body bytes still to relay, and how many bytes of the input
    /// are left for the next request.
    Proxy {
        out: Vec<u8>,
        body_left: u64,
        /// A chunked body of which more is to come (relayed in the proxy's own framing).
        chunks_left: bool,
        pipelined: usize,
        upgrade: bool,
        want_keep: bool,
    },
}

fn engine() -> &'static FastPath {
    static ENGINE: OnceLock<FastPath> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cfg = Config::from_yaml("fuzz.yaml", CONFIG)
            .unwrap_or_else(|e| panic!("the fuzz listener's config: {e}"));
        let pools = Upstreams::new(&cfg.upstreams).pools;
        let router = Router::new(0, &cfg.routes, &pools);
        FastPath::new(Arc::new(Listener::new(&cfg.listeners[0], router, false)), 1)
    })
}

/// The lean engine's plan for `bytes` (a head the guard let through, and what followed it
/// in the same read) from `client`, as the `served`+1-th request of its connection, while
/// the process is `draining` or not.
#[doc(hidden)]
pub fn fuzz_request(bytes: &[u8], client: Option<IpAddr>, served: u32, draining: bool) -> FuzzPlan {
    let mut conn = Conn {
        served,
        ..Conn::default()
    };
    match engine().plan(bytes, &mut conn, client, draining) {
        Plan::Fallback => FuzzPlan::Fallback,
        Plan::Page(r, a, _, keep) => FuzzPlan::Answer {
            status: a.status,
            keep,
            body_left: r.body_left,
            chunks_left: r.chunks.is_some(),
        },
        Plan::Hit { code, keep, .. } => FuzzPlan::Answer {
            status: code,
            keep,
            body_left: 0,
            chunks_left: false,
        },
        Plan::Proxy {
            req,
            out,
            upgrade,
            want_keep,
            ..
        } => FuzzPlan::Proxy {
            out,
            body_left: req.body_left,
            chunks_left: req.chunks.is_some(),
            pipelined: req.pipelined.len(),
            upgrade,
            want_keep,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));

    #[test]
    fn the_fuzz_listener_forwards_answers_and_falls_back() {
        let req = b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nab";
        match fuzz_request(req, CLIENT, 0, false) {
            FuzzPlan::Proxy {
                out,
                body_left,
                pipelined,
                ..
            } => {
                let text = String::from_utf8_lossy(&out);
                assert!(
                    text.starts_with("POST /x HTTP/1.1\r\nHost: a.test\r\n"),
                    "{text}"
                );
                assert!(text.contains("x-forwarded-for: 192.0.2.7\r\n"), "{text}");
                assert!(text.ends_with("\r\n\r\nab"), "{text}");
                assert_eq!((body_left, pipelined), (3, 0));
            }
            other => panic!("{other:?}"),
        }
        let other_host = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";
        assert!(matches!(
            fuzz_request(other_host, CLIENT, 0, false),
            FuzzPlan::Answer { status: 404, .. }
        ));
        let big = b"POST /api/x HTTP/1.1\r\nHost: w.example.com\r\nContent-Length: 2000\r\n\r\n";
        // the body is not read: the connection cannot carry another request
        assert!(matches!(
            fuzz_request(big, CLIENT, 0, false),
            FuzzPlan::Answer {
                status: 413,
                keep: false,
                body_left: 2000,
                ..
            }
        ));
        let get = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        for (served, draining, keep) in [(0, false, true), (0, true, false), (2, false, false)] {
            match fuzz_request(get, CLIENT, served, draining) {
                FuzzPlan::Proxy { want_keep, .. } => {
                    assert_eq!(want_keep, keep, "served {served}, draining {draining}")
                }
                other => panic!("{other:?}"),
            }
        }
        // a chunked body goes on in the proxy's own framing, extensions and trailers dropped
        let chunked = b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let whole = [
            &chunked[..],
            b"3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        ]
        .concat();
        match fuzz_request(&whole, CLIENT, 0, false) {
            FuzzPlan::Proxy {
                out,
                body_left: 0,
                chunks_left: false,
                pipelined: 0,
                ..
            } => {
                let text = String::from_utf8_lossy(&out);
                assert!(
                    text.contains("\r\ntransfer-encoding: chunked\r\n"),
                    "{text}"
                );
                assert!(!text.contains("Transfer-Encoding"), "{text}");
                assert!(text.ends_with("\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        let part = [&chunked[..], b"3\r\nab"].concat();
        match fuzz_request(&part, CLIENT, 0, false) {
            FuzzPlan::Proxy {
                out,
                chunks_left: true,
                pipelined: 0,
                ..
            } => assert!(out.ends_with(b"\r\n\r\n2\r\nab\r\n"), "{out:?}"),
            other => panic!("{other:?}"),
        }
        // over the route's max_body_size (1 KiB) in what came with the head: a 413, closing
        let big = format!(
            "POST /api/x HTTP/1.1\r\nHost: w.example.com\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n{}",
            "x".repeat(1025)
        );
        assert!(matches!(
            fuzz_request(big.as_bytes(), CLIENT, 0, false),
            FuzzPlan::Answer {
                status: 413,
                keep: false,
                chunks_left: true,
                ..
            }
        ));
    }
}
