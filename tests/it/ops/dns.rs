//! Backends given by name: resolved, and a name that fails keeps the pool serving.

use super::{admin_block, admin_get, TOKEN};
use crate::support::{client, OriginBuilder, Proxy};
use std::time::Duration;

/// A backend given as `localhost:PORT` is resolved (through the system resolver: /etc/hosts)
/// and traffic reaches the origin through the addresses it resolved to; a name that does not
/// resolve adds no backend, is retried every `resolve_every` and logged, and leaves the pool
/// serving. (A name that resolved once and then stops resolving keeps its last good addresses:
/// that needs the resolver's answer to change under a running proxy, which this machine offers
/// no way to do without editing /etc/hosts; `src/upstream/discovery.rs` tests it.)
#[tokio::test]
async fn dns_backends_resolve_and_a_failing_name_keeps_the_pool() {
    use std::net::ToSocketAddrs;
    let a = OriginBuilder::new("a").run().await;
    let port = a.addr.port();
    // What the proxy's resolver will say about localhost, asked the same way.
    let resolved: std::collections::BTreeSet<String> = ("localhost", port)
        .to_socket_addrs()
        .expect("localhost resolves on this machine")
        .map(|s| s.to_string())
        .collect();
    assert!(
        resolved.contains(&a.addr.to_string()),
        "localhost does not resolve to the origin's {}: {resolved:?}",
        a.addr
    );
    let yaml = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    resolve_every: 200ms\n    backends:\n      - {{address: 'localhost:{port}'}}\n      - {{address: 'nonexistent.invalid:{port}'}}\n    health_check: {{type: tcp, interval: 200ms}}\nroutes:\n  - {{listener: web, upstream: app}}\n{}",
        admin_block()
    );
    let p = Proxy::start(&yaml);
    // Several resolution rounds pass; requests keep flowing to what localhost resolved to.
    for i in 0..8 {
        let r = client::get(p.addr, "/", &[]).await.expect("resp");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-origin"), Some("a"), "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        a.requests(),
        8,
        "the origin behind localhost was not reached"
    );
    let s = admin_get(&p, "/status", Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&s.body).expect("json");
    let backends = v["upstreams"][0]["backends"].as_array().expect("backends");
    // Exactly what localhost resolved to: the unresolvable name added nothing.
    let addrs: std::collections::BTreeSet<String> = backends
        .iter()
        .map(|b| b["address"].as_str().expect("address").to_string())
        .collect();
    assert_eq!(addrs, resolved, "{v}");
    let origin = backends
        .iter()
        .find(|b| b["address"] == a.addr.to_string())
        .expect("the origin's backend");
    assert_eq!(origin["requests"], 8, "{origin}");
    // Retried and logged by the re-resolution rounds, not only by the start-up lookup.
    let log = p.log();
    assert!(
        log.lines().any(
            |l| l.contains(&format!("cannot resolve nonexistent.invalid:{port}: "))
                && l.contains("keeping the last good set (0 addresses)")
        ),
        "the failing name was not retried by discovery:\n{log}"
    );
}
