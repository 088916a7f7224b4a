//! Reverse proxy and load balancing (the spine): routing, weights, consistent hashing,
//! load awareness, health checks, retries, proxy headers and upstream keep-alive.

use crate::support::{client, Conn, Origin, OriginBuilder, Proxy};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn upstream(name: &str, origins: &[(&Origin, u32)], extra: &str) -> String {
    let mut s = format!("  - name: {name}\n    backends:\n");
    for (o, w) in origins {
        s.push_str(&format!("      - {{address: {}, weight: {w}}}\n", o.addr));
    }
    for line in extra.lines() {
        s.push_str(&format!("    {line}\n"));
    }
    s
}

fn simple(origins: &[(&Origin, u32)], extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n{}routes:\n  - {{listener: web, upstream: app}}\n",
        upstream("app", origins, extra)
    )
}

/// Send `n` GETs over `conns` parallel keep-alive connections; count answers by X-Origin.
async fn spread(
    addr: SocketAddr,
    n: usize,
    conns: usize,
    headers: Vec<(String, String)>,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let headers = headers.clone();
        let per = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await.expect("connect");
            let mut m: HashMap<String, usize> = HashMap::new();
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            for _ in 0..per {
                let r = conn.get("/", &h).await.expect("response");
                assert_eq!(r.status, 200, "{}", r.text());
                *m.entry(r.header("x-origin").unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            m
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("task") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix_and_404s_unmatched() {
    let api = OriginBuilder::new("api").run().await;
    let apiv2 = OriginBuilder::new("apiv2").run().await;
    let www = OriginBuilder::new("www").run().await;
    let any = OriginBuilder::new("any").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n  - {{name: other, address: 127.0.0.1:{{{{port1}}}}, protocol: http}}\nupstreams:\n{}{}{}{}routes:\n  - {{listener: web, host: '*.example.com', path_prefix: /api, upstream: api}}\n  - {{listener: web, host: '*.example.com', path_prefix: /api/v2, upstream: apiv2}}\n  - {{listener: web, host: www.example.com, upstream: www}}\n  - {{listener: other, upstream: any}}\n",
        upstream("api", &[(&api, 1)], ""),
        upstream("apiv2", &[(&apiv2, 1)], ""),
        upstream("www", &[(&www, 1)], ""),
        upstream("any", &[(&any, 1)], ""),
    );
    let p = Proxy::start(&cfg);
    let cases = [
        ("a.example.com", "/api/x", 200, "api"),
        ("a.example.com:8080", "/api/v2/y", 200, "apiv2"),
        ("www.example.com", "/", 200, "www"),
        // nginx-like: the most specific host wins first, then the longest prefix within it
        ("www.example.com", "/api/z", 200, "www"),
        ("WWW.Example.COM", "/index", 200, "www"),
        ("a.example.com", "/other", 404, ""),
        ("example.org", "/api", 404, ""),
    ];
    for (host, path, status, origin) in cases {
        let r = client::get(p.addr, path, &[("Host", host)])
            .await
            .expect("answer");
        assert_eq!(r.status, status, "{host}{path}");
        if status == 200 {
            assert_eq!(r.header("x-origin"), Some(origin), "{host}{path}");
        }
    }
    // the second listener has its own routes
    let r = client::get(p.addr_of(1), "/api/x", &[("Host", "a.example.com")])
        .await
        .expect("answer");
    assert_eq!(r.header("x-origin"), Some("any"));
    // unmatched requests never reached a backend
    assert_eq!(api.requests() + apiv2.requests() + www.requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_and_random_follow_weights() {
    for selection in ["round_robin", "random"] {
        let a = OriginBuilder::new("a").run().await;
        let b = OriginBuilder::new("b").run().await;
        let p = Proxy::start(&simple(
            &[(&a, 3), (&b, 1)],
            &format!("selection: {selection}"),
        ));
        let m = spread(p.addr, 3000, 8, vec![]).await;
        let sa = m.get("a").copied().unwrap_or(0) as f64 / 3000.0;
        assert!(
            (sa - 0.75).abs() < 0.04,
            "{selection}: share of a = {sa:.3}, {m:?}"
        );
        assert_eq!(m.values().sum::<usize>(), 3000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_and_moves_about_one_nth() {
    let origins = [
        OriginBuilder::new("h0").run().await,
        OriginBuilder::new("h1").run().await,
        OriginBuilder::new("h2").run().await,
        OriginBuilder::new("h3").run().await,
    ];
    let refs: Vec<(&Origin, u32)> = origins.iter().map(|o| (o, 1)).collect();
    let p = Proxy::start(&simple(
        &refs,
        "selection: consistent_hash\nhash_key: header:X-User\nhealth_check: {type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1}",
    ));
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut conn = Conn::connect(p.addr).await.expect("connect");
    let mut before = Vec::new();
    for k in &keys {
        let r = conn.get("/", &[("X-User", k)]).await.expect("answer");
        before.push(r.header("x-origin").unwrap_or_default().to_string());
    }
    // sticky
    for (k, b) in keys.iter().zip(&before).take(50) {
        let r = conn.get("/", &[("X-User", k)]).await.expect("answer");
        assert_eq!(r.header("x-origin"), Some(b.as_str()), "key {k} moved");
    }
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(used.len(), 4, "keys should spread over all backends");
    // one backend leaves
    origins[2].set_health(503);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut moved = 0;
    for (k, b) in keys.iter().zip(&before) {
        let r = conn.get("/", &[("X-User", k)]).await.expect("answer");
        let now = r.header("x-origin").unwrap_or_default();
        assert_ne!(now, "h2");
        if now != b {
            assert_eq!(b, "h2", "key {k} moved from a healthy backend");
            moved += 1;
        }
    }
    assert!(
        (20..=90).contains(&moved),
        "moved {moved} of 200, expected about 50"
    );
}

async fn load_share(selection: &str) -> f64 {
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(300))
        .run()
        .await;
    let f1 = OriginBuilder::new("f1")
        .delay(Duration::from_millis(5))
        .run()
        .await;
    let f2 = OriginBuilder::new("f2")
        .delay(Duration::from_millis(5))
        .run()
        .await;
    let p = Proxy::start(&simple(
        &[(&slow, 1), (&f1, 1), (&f2, 1)],
        &format!("selection: {selection}"),
    ));
    let addr = p.addr;
    // 12 clients, each sending requests back to back for 2 seconds
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await.expect("connect");
            let end = Instant::now() + Duration::from_secs(2);
            let mut m: HashMap<String, usize> = HashMap::new();
            while Instant::now() < end {
                let r = conn.get("/", &[]).await.expect("answer");
                *m.entry(r.header("x-origin").unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            m
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("task") {
            *total.entry(k).or_default() += v;
        }
    }
    let all: usize = total.values().sum();
    total.get("slow").copied().unwrap_or(0) as f64 / all as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_and_power_of_two_avoid_a_slow_backend() {
    for sel in ["least_connections", "power_of_two"] {
        let share = load_share(sel).await;
        // Round robin gives the slow backend a third of the requests. Unloaded, both
        // algorithms give it under 15%; a full suite on two cores once stretched the fast
        // backends' 5 ms enough for 15.7% (power of two), so the bound leaves room for that
        // and stays well under a third.
        assert!(
            share < 0.2,
            "{sel}: slow backend got {:.1}% of requests",
            share * 100.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_eject_and_readmit_a_backend() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&simple(
        &[(&a, 1), (&b, 1)],
        "health_check: {type: http, path: /healthz, interval: 200ms, unhealthy_threshold: 2, healthy_threshold: 1}",
    ));
    let m = spread(p.addr, 20, 1, vec![]).await;
    assert_eq!(m.get("b"), Some(&10));
    b.set_health(500);
    // interval x unhealthy_threshold = 400ms; allow slack for a loaded machine
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = spread(p.addr, 20, 1, vec![]).await;
    assert_eq!(m.get("a"), Some(&20), "{m:?}");
    b.set_health(200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = spread(p.addr, 20, 1, vec![]).await;
    assert_eq!(m.get("b"), Some(&10), "{m:?}");
    // a TCP check notices a closed port
    let c = OriginBuilder::new("c").run().await;
    let d = OriginBuilder::new("d").run().await;
    let p2 = Proxy::start(&simple(
        &[(&c, 1), (&d, 1)],
        "health_check: {type: tcp, interval: 200ms, unhealthy_threshold: 1}",
    ));
    d.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = spread(p2.addr, 10, 1, vec![]).await;
    assert_eq!(m.get("c"), Some(&10), "{m:?}");
    d.restart().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = spread(p2.addr, 10, 1, vec![]).await;
    assert_eq!(m.get("d"), Some(&5), "{m:?}");
}

/// A bare listener for a test that plays the backend itself, and its address.
async fn raw_backend() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let Ok(backend) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("cannot listen on 127.0.0.1:0");
    };
    let Ok(addr) = backend.local_addr() else {
        panic!("backend address");
    };
    (backend, addr)
}

/// A TCP check completes the handshake on the proxy's side and resets the connection before
/// its last ACK leaves (as HAProxy's checks do): the backend's kernel answers each check's SYN,
/// and the backend itself never has a connection to accept and close. A FIN instead of the
/// reset would also leave each check's socket in TIME_WAIT on the proxy, a minute per check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_checks_reach_the_backends_kernel_and_leave_it_nothing_to_accept() {
    let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
        panic!("socket");
    };
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    sock.bind(any).expect("bind");
    let addr = sock.local_addr().expect("local addr");
    // A backlog of 0 holds one connection not yet accepted: with it taken, the kernel drops
    // the checks' SYNs, and the checks fail.
    let backend = sock.listen(0).expect("listen");
    let filler = tokio::net::TcpStream::connect(addr).await.expect("filler");
    let p = Proxy::start_logging(
        &format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {addr}}}]\n    health_check: {{type: tcp, interval: 100ms, timeout: 300ms, unhealthy_threshold: 1}}\nroutes:\n  - {{listener: web, upstream: app}}\n"
        ),
        "info",
    );
    until("the checks of a backend that answers no SYN fail", || {
        p.log().contains("is unhealthy")
    })
    .await;
    // Room in the queue: the checks' SYNs are answered, and the checks pass.
    let (first, _) = tokio::time::timeout(Duration::from_secs(5), backend.accept())
        .await
        .expect("the filler was not accepted within 5 s")
        .expect("accept");
    until("the checks pass once the backend answers", || {
        p.log().contains("is healthy")
    })
    .await;
    drop((first, filler));
    // Checks went on every 100 ms meanwhile; none left a connection to accept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = tokio::time::timeout(Duration::from_millis(300), backend.accept()).await;
    assert!(
        queued.is_err(),
        "a check left the backend a connection to accept: {queued:?}"
    );
    let healthy = p.log().matches("is healthy").count();
    assert_eq!(healthy, 1, "the verdict flapped:\n{}", p.log());
}

/// Waits until `f` holds, for at most 10 s.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// By default an HTTP check opens a connection of its own and asks the backend to close it
/// (as HAProxy's and nginx's checks do, which also proves that the backend still accepts
/// connections); with `reuse_connection: true` every check goes over one kept connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_open_a_connection_each_or_keep_one() {
    let fresh = OriginBuilder::new("fresh").run().await;
    let kept = OriginBuilder::new("kept").run().await;
    let _p1 = Proxy::start(&simple(
        &[(&fresh, 1)],
        "health_check: {type: http, path: /healthz, interval: 100ms}",
    ));
    let _p2 = Proxy::start(&simple(
        &[(&kept, 1)],
        "health_check: {type: http, path: /healthz, interval: 100ms, reuse_connection: true}",
    ));
    until("6 checks of each backend", || {
        fresh.health_checks().0 >= 6 && kept.health_checks().0 >= 6
    })
    .await;
    let (checks, closes) = fresh.health_checks();
    assert_eq!(closes, checks, "every check asks to close its connection");
    assert!(
        fresh.connections() >= checks,
        "{checks} checks over {} connections",
        fresh.connections()
    );
    let (checks, closes) = kept.health_checks();
    assert_eq!(closes, 0, "a kept connection asked to close");
    assert_eq!(
        kept.connections(),
        1,
        "{checks} checks over more than one connection"
    );
}

/// `health_check.port` sends every kind of check to that port, not the traffic port: here
/// the traffic port refuses and the check port answers, and the backends stay healthy. A TCP
/// check leaves the backend no connection to count (it resets before the handshake's last
/// ACK), so an upstream `c` of the same refusing backend without `port` shows that the TCP
/// checks ran: it is marked down, while `t`, checked at the side port, stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_port_is_checked_by_tcp_and_http_checks() {
    let origin = OriginBuilder::new("side").run().await;
    let dead = crate::support::dead_addr();
    let side = origin.addr.port();
    let p = Proxy::start_logging(
        &format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: t\n    backends: [{{address: {dead}}}]\n    health_check: {{type: tcp, port: {side}, interval: 100ms, unhealthy_threshold: 1}}\n  - name: c\n    backends: [{{address: {dead}}}]\n    health_check: {{type: tcp, interval: 100ms, unhealthy_threshold: 1}}\n  - name: h\n    backends: [{{address: {dead}}}]\n    health_check: {{type: http, path: /healthz, port: {side}, interval: 100ms, unhealthy_threshold: 1}}\nroutes:\n  - {{listener: web, upstream: h}}\n"
        ),
        "info",
    );
    until("three HTTP checks at the check port", || {
        origin.health_checks().0 >= 3
    })
    .await;
    until("the TCP checks of the traffic port fail", || {
        p.log().contains("upstream c: backend")
    })
    .await;
    // a few more intervals of `t`'s checks
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log = p.log();
    assert!(
        !log.contains("upstream t:") && !log.contains("upstream h:"),
        "a check of the side port failed:\n{log}"
    );
}

/// An HTTP check of a backend that refuses connections fails, and says that the connect did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_of_a_refusing_backend_fails() {
    let dead = crate::support::dead_addr();
    // over HTTP/1.1, and over h2c, where the refusal shows on the preface's write
    for extra in ["", "    http2: true\n"] {
        let p = Proxy::start_logging(
            &format!(
                "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {dead}}}]\n{extra}    health_check: {{type: http, interval: 100ms, unhealthy_threshold: 1}}\nroutes:\n  - {{listener: web, upstream: app}}\n"
            ),
            "info",
        );
        until("the backend marked unhealthy", || {
            p.log().contains(&format!("backend {dead} is unhealthy"))
        })
        .await;
        let log = p.log();
        assert!(
            log.contains("context: connect cause: Connection refused"),
            "{extra:?}: the failure is not logged as the connect's:\n{log}"
        );
    }
}

/// A kept check connection that the backend closed while it idled (its keep-alive timeout)
/// is replaced within the same check: with `unhealthy_threshold: 1` one failed check would
/// take the backend out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_check_connection_closed_by_the_backend_is_not_a_failure() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, addr) = raw_backend().await;
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    // each connection answers one request as if it were kept, then closes
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            let mut buf = [0u8; 1024];
            if let Ok(n) = s.read(&mut buf).await {
                if n > 0 {
                    let ok = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    if ok.is_ok() {
                        count.fetch_add(1, SeqCst);
                    }
                }
            }
        }
    });
    let p = Proxy::start_logging(
        &format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {addr}}}]\n    health_check: {{type: http, interval: 100ms, unhealthy_threshold: 1, reuse_connection: true}}\nroutes:\n  - {{listener: web, upstream: app}}\n"
        ),
        "info",
    );
    until("6 answered checks", || answered.load(SeqCst) >= 6).await;
    server.abort();
    let log = p.log();
    assert!(
        !log.contains("is unhealthy"),
        "a closed kept connection failed a check:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_elsewhere_and_all_down_is_a_fast_502() {
    let a = OriginBuilder::new("a").run().await;
    let dead = OriginBuilder::new("dead").run().await;
    dead.stop();
    let p = Proxy::start(&simple(&[(&a, 1), (&dead, 1)], "retries: 2"));
    let m = spread(p.addr, 50, 2, vec![]).await;
    assert_eq!(m.get("a"), Some(&50), "{m:?}");

    let d1 = OriginBuilder::new("d1").run().await;
    let d2 = OriginBuilder::new("d2").run().await;
    d1.stop_refusing().await;
    d2.stop_refusing().await;
    let p = Proxy::start(&simple(&[(&d1, 1), (&d2, 1)], "retries: 2"));
    let t = Instant::now();
    let r = client::get(p.addr, "/", &[]).await.expect("answer");
    // every backend refused the connection: 502 (503 is for a pool with nothing to try)
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let body = r.text();
    assert!(!r.headers.is_empty(), "no response headers to check");
    for o in [&d1, &d2] {
        assert!(
            !body.contains(&o.addr.port().to_string()),
            "error page leaks a backend: {body}"
        );
        assert!(r
            .headers
            .values()
            .all(|v| !v.contains(&o.addr.port().to_string())));
    }

    // with health checks, an all-unhealthy pool answers 503 without trying
    let h1 = OriginBuilder::new("h1").run().await;
    h1.set_health(500);
    let p = Proxy::start(&simple(
        &[(&h1, 1)],
        "health_check: {type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1}",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client::get(p.addr, "/", &[]).await.expect("answer");
    assert_eq!(r.status, 503);
    assert_eq!(h1.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_stripped() {
    let a = OriginBuilder::new("a").run().await;
    let p = Proxy::start(&simple(&[(&a, 1)], ""));
    let r = client::get(
        p.addr,
        "/h",
        &[
            ("Host", "shop.example.com"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-Kept", "yes"),
        ],
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200);
    let rec = a.last().expect("request recorded");
    assert_eq!(
        rec.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    assert_eq!(rec.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(rec.header("host"), Some("shop.example.com"));
    assert_eq!(rec.header("x-kept"), Some("yes"));
    for h in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(rec.header(h), None, "{h} was forwarded");
    }
    if let Some(c) = rec.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-secret-hop"),
            "connection: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = OriginBuilder::new("a").run().await;
    let p = Proxy::start(&simple(&[(&a, 1)], ""));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .expect("send");
    let r = c.read_response(true).await.expect("101");
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    c.stream
        .write_all(b"ping-through-tunnel")
        .await
        .expect("write");
    let mut got = vec![0u8; 19];
    tokio::time::timeout(Duration::from_secs(20), c.stream.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"ping-through-tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let a = OriginBuilder::new("a").run().await;
    // Idle upstream connections are kept per runtime thread (as nginx keeps them per worker),
    // so the figure depends on the thread count: fix it at one, whatever the machine has.
    let cfg = format!(
        "pingora:\n  threads: 1\n  pid_file: {{{{dir}}}}/stepstone.pid\n  upgrade_sock: {{{{dir}}}}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{}",
        simple(&[(&a, 1)], "")
    );
    let p = Proxy::start(&cfg);
    let mut conn = Conn::connect(p.addr).await.expect("connect");
    for _ in 0..50 {
        assert_eq!(conn.get("/", &[]).await.expect("answer").status, 200);
    }
    // new client connections, sequential, still reuse the pooled upstream connection
    for _ in 0..20 {
        assert_eq!(
            client::get(p.addr, "/", &[]).await.expect("answer").status,
            200
        );
    }
    assert_eq!(a.requests(), 70);
    // One thread, requests one after the other: every one of them on the same connection.
    assert_eq!(
        a.connections(),
        1,
        "backend accepted {} connections for 70 sequential requests on one thread",
        a.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_over_route_limit_is_413_before_forwarding() {
    let a = OriginBuilder::new("a").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n{}routes:\n  - {{listener: web, upstream: app, max_body_size: 1KiB}}\n",
        upstream("app", &[(&a, 1)], "")
    );
    let p = Proxy::start(&cfg);
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c
        .request("POST", "/up", &[], &[b'x'; 2048])
        .await
        .expect("answer");
    assert_eq!(r.status, 413);
    let r = client::Conn::connect(p.addr)
        .await
        .expect("c")
        .request("POST", "/up", &[], &[b'x'; 512])
        .await
        .expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(a.requests(), 1);
    assert_eq!(a.last().expect("rec").body.len(), 512);
}
