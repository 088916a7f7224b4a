//! Hardening: the listener limits, request smuggling and malformed input sent as raw bytes,
//! and broken backends. Smuggling cases run against a
//! [`RawBackend`](crate::support::raw::RawBackend) that counts every request head it parses
//! and keeps every byte it received, so each case can check that the backend saw exactly the
//! requests the client sent and nothing it must not see.

mod faults;
mod limits;
mod smuggling;

use crate::support::raw::statuses;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// One http listener (`limits` is the inside of a flow map, may be empty), one upstream over
/// `backends` (`upstream` adds keys), one route (`route` adds keys).
fn config(backends: &[SocketAddr], limits: &str, upstream: &str, route: &str) -> String {
    let mut s = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, limits: {{{limits}}}}}\nupstreams:\n  - name: app\n    backends:\n"
    );
    for b in backends {
        s.push_str(&format!("      - address: {b}\n"));
    }
    for l in upstream.lines() {
        s.push_str(&format!("    {l}\n"));
    }
    s.push_str(&format!(
        "routes:\n  - {{listener: web, upstream: app{}{route}}}\n",
        if route.is_empty() { "" } else { ", " }
    ));
    s
}

fn status_of(bytes: &[u8]) -> u16 {
    statuses(bytes).first().copied().unwrap_or(0)
}
