//! Load balancing that hides failure: outlier detection on both HTTP engines and at L4.

use crate::support::{client, OriginBuilder, Proxy};
use std::time::Duration;

/// `/metrics` value of a per-backend series.
async fn backend_metric(p: &Proxy, name: &str, backend: &str) -> u64 {
    let m = client::get(p.addr_of(1), "/metrics", &[])
        .await
        .expect("metrics")
        .text();
    let prefix = format!("{name}{{upstream=\"app\",backend=\"{backend}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{m}"))
}

async fn ejects_a_failing_backend(fast_path: bool) {
    let engine = if fast_path { "lean" } else { "general" };
    let bad = OriginBuilder::new("bad").status(500).run().await;
    let good = OriginBuilder::new("good").run().await;
    let p = Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n    retries: 0\n    outlier_detection: {{consecutive_failures: 3, base_ejection_time: 3s, max_ejection_time: 10s}}\n    backends: [{{address: {}}}, {{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        bad.addr, good.addr
    ));
    let bad_label = bad.addr.to_string();
    // round robin: the bad backend gets every other request until its third 500 in a row.
    // The ejection lasts 3 s so that the 40 requests end well within it on a loaded
    // machine (with 1 s, a slow run of the general engine readmitted it mid-loop).
    let mut errors = 0;
    for _ in 0..40 {
        let r = client::get(p.addr, "/", &[]).await.expect("response");
        if r.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(
        errors, 3,
        "{engine}: 500s seen by clients before the ejection"
    );
    assert_eq!(
        bad.requests(),
        3,
        "{engine}: requests to the ejected backend"
    );
    assert_eq!(
        backend_metric(&p, "stepstone_backend_ejected", &bad_label).await,
        1
    );
    assert_eq!(
        backend_metric(&p, "stepstone_backend_ejections_total", &bad_label).await,
        1
    );
    assert!(
        p.log().contains(&format!(
            "ejecting backend {bad_label} for 3.0s after 3 failures"
        )),
        "{engine}: {}",
        p.log()
    );
    // after base_ejection_time it is back, fails again, and is out twice as long
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for _ in 0..20 {
        let _ = client::get(p.addr, "/", &[]).await.expect("response");
    }
    assert_eq!(
        bad.requests(),
        6,
        "{engine}: the readmitted backend got traffic again"
    );
    assert_eq!(
        backend_metric(&p, "stepstone_backend_ejections_total", &bad_label).await,
        2
    );
    let log = p.log();
    assert!(
        log.contains(&format!("backend {bad_label}: ejection over, readmitted")),
        "{log}"
    );
    assert!(
        log.contains(&format!("ejecting backend {bad_label} for 6.0s")),
        "{log}"
    );
    assert_eq!(
        backend_metric(&p, "stepstone_backend_ejected", &good.addr.to_string()).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_backend_answering_500_on_the_lean_engine() {
    ejects_a_failing_backend(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_backend_answering_500_on_the_general_engine() {
    ejects_a_failing_backend(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_never_ejects_the_last_backend() {
    let bad = OriginBuilder::new("bad").status(500).run().await;
    let p = Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    retries: 0\n    outlier_detection: {{consecutive_failures: 2, base_ejection_time: 10s, max_ejection_percent: 100}}\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        bad.addr
    ));
    for _ in 0..10 {
        let r = client::get(p.addr, "/", &[]).await.expect("response");
        assert_eq!(
            r.status, 500,
            "the backend's own answer, never a 503 for an empty pool"
        );
    }
    assert_eq!(bad.requests(), 10);
    assert_eq!(
        backend_metric(
            &p,
            "stepstone_backend_ejections_total",
            &bad.addr.to_string()
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_and_a_header_or_cookie_match_pick_the_upstream() {
    let stable = OriginBuilder::new("stable").run().await;
    let canary = OriginBuilder::new("canary").run().await;
    for fast_path in [true, false] {
        let p = Proxy::start(&format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: stable\n    backends: [{{address: {}}}]\n  - name: canary\n    backends: [{{address: {}}}]\nroutes:\n  - listener: web\n    split: [{{upstream: stable, weight: 80}}, {{upstream: canary, weight: 20}}]\n  - listener: web\n    match: {{headers: {{X-Canary: \"1\"}}}}\n    upstream: canary\n  - listener: web\n    match: {{cookies: {{beta: \"1\"}}}}\n    upstream: canary\n",
            stable.addr, canary.addr
        ));
        let engine = if fast_path { "lean" } else { "general" };
        let (s0, c0) = (stable.requests(), canary.requests());
        let n = 2000;
        let mut conn = crate::support::Conn::connect(p.addr)
            .await
            .expect("connect");
        for i in 0..n {
            if i % 500 == 499 {
                // a connection carries at most keepalive_requests (1000)
                conn = crate::support::Conn::connect(p.addr)
                    .await
                    .expect("connect");
            }
            let r = conn.get("/", &[]).await.expect("response");
            assert_eq!(r.status, 200);
        }
        let to_canary = canary.requests() - c0;
        assert_eq!(stable.requests() - s0 + to_canary, n, "{engine}");
        let share = to_canary as f64 / n as f64;
        assert!(
            (0.16..=0.24).contains(&share),
            "{engine}: canary share {share}, want 0.20 ± 0.04"
        );
        // a route with a `match` ranks before the unconditional split at the same host and
        // prefix: it takes every request it matches, and none other
        let (s1, c1) = (stable.requests(), canary.requests());
        for _ in 0..20 {
            conn.get("/", &[("X-Canary", "1")])
                .await
                .expect("header match");
            conn.get("/", &[("Cookie", "a=b; beta=1")])
                .await
                .expect("cookie match");
        }
        assert_eq!(canary.requests() - c1, 40, "{engine}");
        assert_eq!(stable.requests(), s1, "{engine}");
    }
}

/// `n` concurrent GETs on their own connections: each answer's status and Retry-After.
async fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<(u16, Option<String>)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let r = client::get(addr, "/", &[]).await.expect("response");
            (r.status, r.header("retry-after").map(str::to_owned))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_a_backend_and_the_rest_queue_or_get_503() {
    for fast_path in [true, false] {
        let engine = if fast_path { "lean" } else { "general" };
        let slow = OriginBuilder::new("slow")
            .delay(Duration::from_millis(300))
            .run()
            .await;
        let cfg = |queue: &str| {
            format!(
                "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n    {queue}\n    backends: [{{address: {}, max_connections: 2}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
                slow.addr
            )
        };
        // a long enough queue: all ten are served, never more than two at the backend
        let p = Proxy::start(&cfg("queue_timeout: 10s"));
        let r = burst(p.addr, 10).await;
        assert_eq!(r.len(), 10);
        assert!(r.iter().all(|(s, _)| *s == 200), "{engine}: {r:?}");
        assert_eq!(
            slow.state.peak.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{engine}"
        );
        drop(p);
        // a short wait: those still queued after it get 503 with Retry-After
        let p = Proxy::start(&cfg("queue_timeout: 200ms"));
        let r = burst(p.addr, 10).await;
        let served = r.iter().filter(|(s, _)| *s == 200).count();
        let refused: Vec<_> = r.iter().filter(|(s, _)| *s == 503).collect();
        assert!((2..10).contains(&served), "{engine}: {r:?}");
        assert_eq!(served + refused.len(), 10, "{engine}: {r:?}");
        assert!(
            refused.iter().all(|(_, ra)| ra.as_deref() == Some("1")),
            "{engine}: {r:?}"
        );
        drop(p);
        // no queue: over the cap is an immediate 503
        let p = Proxy::start(&cfg("max_pending: 0"));
        let t = std::time::Instant::now();
        let r = burst(p.addr, 6).await;
        assert_eq!(
            r.iter().filter(|(s, _)| *s == 200).count(),
            2,
            "{engine}: {r:?}"
        );
        assert_eq!(
            r.iter().filter(|(s, _)| *s == 503).count(),
            4,
            "{engine}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{engine}: took {:?}",
            t.elapsed()
        );
        assert_eq!(
            slow.state.peak.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{engine}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_backend_that_came_back() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    slow_start: 3s\n    health_check: {{type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1}}\n    backends: [{{address: {}}}, {{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        a.addr, b.addr
    ));
    let wait_log = |what: String| {
        let p = &p;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !p.log().contains(&what) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no {what:?} in:\n{}",
                    p.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    b.set_health(500);
    wait_log(format!("backend {} is unhealthy", b.addr)).await;
    b.set_health(200);
    wait_log(format!("backend {} is healthy", b.addr)).await;
    // just back: a small share, growing from a tenth
    let b0 = b.requests();
    let mut c = crate::support::Conn::connect(p.addr)
        .await
        .expect("connect");
    for _ in 0..100 {
        assert_eq!(c.get("/", &[]).await.expect("response").status, 200);
    }
    let early = b.requests() - b0;
    assert!(
        (1..=35).contains(&early),
        "b took {early} of the first 100 requests"
    );
    // after the window: its whole weight again
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let b1 = b.requests();
    for _ in 0..200 {
        assert_eq!(c.get("/", &[]).await.expect("response").status, 200);
    }
    let late = b.requests() - b1;
    assert!(
        (80..=120).contains(&late),
        "b took {late} of 200 requests after its slow start"
    );
}
