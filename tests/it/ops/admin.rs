//! The admin listener: metrics, status, token and backend drain, and the counters behind the
//! metrics (requests from two worker threads, cache outcomes, L4 connections, TLS handshakes).

use super::{admin_block, admin_get, admin_post, base, TOKEN};
use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::time::{Duration, Instant};

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Metrics are recorded in the `logging` phase, which runs after the response reached the
/// client, so a scrape right after the last response may be a moment early.
async fn wait_metric(p: &Proxy, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = admin_get(p, "/metrics", None).await.text();
        if metric(&text, series) == Some(want) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn admin_metrics_status_token_and_drain() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&base(&[&a, &b], &admin_block(), None));
    for _ in 0..10 {
        let mut c = Conn::connect(p.addr).await.expect("connect");
        for _ in 0..2 {
            assert_eq!(c.get("/", &[]).await.expect("proxied").status, 200);
        }
    }
    let r = client::get(p.addr, "/missing-route-is-still-routed", &[("Host", "x")])
        .await
        .expect("resp");
    assert_eq!(r.status, 200);

    // Without a token: /healthz and /metrics only.
    assert_eq!(admin_get(&p, "/healthz", None).await.status, 200);
    let m = admin_get(&p, "/metrics", None).await;
    assert_eq!(m.status, 200);
    for (path, post) in [
        ("/status", false),
        ("/", false),
        ("/upstreams/app/backends/x/drain", true),
    ] {
        let r = if post {
            admin_post(&p, path, None).await
        } else {
            admin_get(&p, path, None).await
        };
        assert_eq!(r.status, 401, "{path} without a token");
        let r = if post {
            admin_post(&p, path, Some("wrong")).await
        } else {
            admin_get(&p, path, Some("wrong")).await
        };
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }

    let route = "route=\"routes[0]\"";
    let text = wait_metric(
        &p,
        &format!("stepstone_request_duration_seconds_count{{{route},upstream=\"app\"}}"),
        21.0,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            &format!("stepstone_requests_total{{class=\"2xx\",{route},upstream=\"app\"}}")
        ),
        Some(21.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("stepstone_request_duration_seconds_count{{{route},upstream=\"app\"}}")
        ),
        Some(21.0)
    );
    let conns = metric(
        &text,
        "stepstone_upstream_connections_total{upstream=\"app\"}",
    )
    .expect("conns");
    let reused = metric(
        &text,
        "stepstone_upstream_connections_reused_total{upstream=\"app\"}",
    )
    .expect("reused");
    assert_eq!(conns, 21.0);
    assert!(reused > 0.0 && reused < conns, "reuse {reused}/{conns}");
    assert!(metric(
        &text,
        "stepstone_upstream_connect_duration_seconds_count{upstream=\"app\"}"
    )
    .is_some_and(|n| n == conns - reused));
    assert!(text.contains("stepstone_requests_in_flight 0"));
    for o in [&a, &b] {
        let up = format!(
            "stepstone_backend_up{{upstream=\"app\",backend=\"{}\"}}",
            o.addr
        );
        assert_eq!(metric(&text, &up), Some(1.0), "{text}");
        let inf = format!(
            "stepstone_backend_in_flight{{upstream=\"app\",backend=\"{}\"}}",
            o.addr
        );
        assert_eq!(metric(&text, &inf), Some(0.0));
    }
    assert!(metric(
        &text,
        &format!("stepstone_http_body_bytes_total{{direction=\"out\",{route}}}")
    )
    .is_some_and(|n| n > 0.0));
    for family in [
        "stepstone_cache_requests_total",
        "stepstone_upstream_connections_reused_total",
        "stepstone_upstream_connect_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }

    // /status describes the upstream and both backends.
    let s = admin_get(&p, "/status", Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&s.body).expect("json");
    let ups = v["upstreams"].as_array().expect("upstreams");
    assert_eq!(ups[0]["name"], "app");
    let backends = ups[0]["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for bk in backends {
        assert_eq!(bk["healthy"], true);
        assert_eq!(bk["weight"], 1);
        assert_eq!(bk["in_flight"], 0);
    }
    let page = admin_get(&p, &format!("/?token={TOKEN}"), None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script>"));

    // Drain a: it gets nothing new; undrain: it is back.
    let a_before = a.requests();
    let r = admin_post(
        &p,
        &format!("/upstreams/app/backends/{}/drain", a.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"drained\":true"));
    for _ in 0..10 {
        assert_eq!(
            client::get(p.addr, "/", &[]).await.expect("resp").status,
            200
        );
    }
    assert_eq!(a.requests(), a_before, "a drained backend got requests");
    let r = admin_post(
        &p,
        &format!("/upstreams/app/backends/{}/undrain", a.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    for _ in 0..10 {
        assert_eq!(
            client::get(p.addr, "/", &[]).await.expect("resp").status,
            200
        );
    }
    assert!(
        a.requests() > a_before,
        "an undrained backend got no requests"
    );
    let r = admin_post(&p, "/upstreams/app/backends/10.9.9.9:1/drain", Some(TOKEN)).await;
    assert_eq!(r.status, 404);
    let r = admin_get(
        &p,
        &format!("/upstreams/app/backends/{}/drain", a.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 405);
}

/// The request counters are striped per worker thread and summed when read: with two
/// threads, each with its own listening socket, serving 40 connections at once, every
/// series and the status API still count each request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_two_worker_threads_add_up_exactly_in_metrics_and_status() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&base(
        &[&a, &b],
        &admin_block(),
        Some("pingora: {threads: 2, work_stealing: false}\n"),
    ));
    let addr = p.addr;
    let clients: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Conn::connect(addr).await.expect("connect");
                let mut bytes = 0;
                for _ in 0..5 {
                    let r = c.get("/", &[]).await.expect("proxied");
                    assert_eq!(r.status, 200);
                    bytes += r.body.len();
                }
                bytes
            })
        })
        .collect();
    let mut bytes = 0;
    for c in clients {
        bytes += c.await.expect("client task");
    }
    let route = "route=\"routes[0]\",upstream=\"app\"";
    let text = wait_metric(
        &p,
        &format!("stepstone_request_duration_seconds_count{{{route}}}"),
        200.0,
    )
    .await;
    let m = |series: &str| metric(&text, series).unwrap_or(-1.0);
    assert_eq!(
        m(&format!(
            "stepstone_requests_total{{class=\"2xx\",{route}}}"
        )),
        200.0,
        "{text}"
    );
    assert_eq!(
        m(&format!(
            "stepstone_requests_total{{class=\"err\",{route}}}"
        )),
        0.0
    );
    assert_eq!(
        m(&format!(
            "stepstone_request_duration_seconds_count{{{route}}}"
        )),
        200.0
    );
    assert_eq!(
        m(&format!(
            "stepstone_request_duration_seconds_bucket{{{route},le=\"+Inf\"}}"
        )),
        200.0
    );
    assert_eq!(
        m("stepstone_http_body_bytes_total{direction=\"out\",route=\"routes[0]\"}"),
        bytes as f64
    );
    assert_eq!(
        m("stepstone_upstream_connections_total{upstream=\"app\"}"),
        200.0
    );
    assert_eq!(m("stepstone_requests_in_flight "), 0.0);
    let (mut sent, mut timed) = (0.0, 0.0);
    for o in [&a, &b] {
        let backend = format!("upstream=\"app\",backend=\"{}\"", o.addr);
        sent += m(&format!("stepstone_backend_requests_total{{{backend}}}"));
        timed += m(&format!(
            "stepstone_backend_response_seconds_count{{{backend}}}"
        ));
    }
    assert_eq!((sent, timed), (200.0, 200.0), "{text}");
    let s = admin_get(&p, "/status", Some(TOKEN)).await;
    let v: serde_json::Value = serde_json::from_slice(&s.body).expect("json");
    let backends = v["upstreams"][0]["backends"].as_array().expect("backends");
    let sum = |k: &str| backends.iter().filter_map(|b| b[k].as_u64()).sum::<u64>();
    assert_eq!((sum("requests"), sum("completed")), (200, 200), "{v}");
    assert_eq!(v["in_flight"].as_i64(), Some(0), "{v}");
}

#[tokio::test]
async fn drained_backend_finishes_its_in_flight_requests() {
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(800))
        .run()
        .await;
    let p = Proxy::start(&base(&[&slow], &admin_block(), None));
    let addr = p.addr;
    let inflight = tokio::spawn(async move { client::get(addr, "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = admin_get(&p, "/status", Some(TOKEN)).await;
    let v: serde_json::Value = serde_json::from_slice(&s.body).expect("json");
    assert_eq!(v["upstreams"][0]["backends"][0]["in_flight"], 1);
    let r = admin_post(
        &p,
        &format!("/upstreams/app/backends/{}/drain", slow.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = inflight.await.expect("task").expect("in-flight completes");
    assert_eq!(r.status, 200);
    // Nothing else to send to: a new request gets the proxy's 503.
    assert_eq!(client::get(addr, "/", &[]).await.expect("resp").status, 503);
}

#[tokio::test]
async fn cache_outcomes_reach_metrics_and_the_access_log() {
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("cached")
        .run()
        .await;
    let yaml = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends:\n      - {{address: {}}}\nroutes:\n  - {{listener: web, upstream: app, cache: {{enabled: true}}}}\n{}access_log: {{format: json}}\n",
        a.addr,
        admin_block()
    );
    let p = Proxy::start(&yaml);
    for _ in 0..3 {
        assert_eq!(
            client::get(p.addr, "/c", &[]).await.expect("resp").status,
            200
        );
    }
    assert_eq!(a.requests(), 1, "the cache did not serve the repeats");
    // A miss is counted when its request ends, after its cache write, which may be after
    // the hits that followed it: wait for each count.
    wait_metric(&p, "stepstone_cache_requests_total{status=\"miss\"}", 1.0).await;
    let text = wait_metric(&p, "stepstone_cache_requests_total{status=\"hit\"}", 2.0).await;
    assert_eq!(
        metric(&text, "stepstone_cache_requests_total{status=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "stepstone_cache_requests_total{status=\"hit\"}"),
        Some(2.0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stdout().lines().count() < 3 {
        assert!(Instant::now() < deadline, "access log:\n{}", p.stdout());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A miss is logged once its cache write finished, which can be after the hits that
    // followed it, so compare the outcomes, not their order.
    let mut caches: Vec<String> = p
        .stdout()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["cache"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    caches.sort();
    assert_eq!(caches, ["hit", "hit", "miss"]);
}

#[tokio::test]
async fn l4_connections_and_bytes_are_counted() {
    let a = OriginBuilder::new("a").run().await;
    let yaml = format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u}}\nupstreams:\n  - name: u\n    backends: [{{address: {}}}]\n{}",
        a.addr,
        admin_block()
    );
    let p = Proxy::start(&yaml);
    for _ in 0..2 {
        // An HTTP exchange carried through the TCP listener.
        let r = client::get(p.addr, "/", &[])
            .await
            .expect("through the tunnel");
        assert_eq!(r.status, 200);
    }
    // The launcher's readiness probe is a connection too, so at least 2.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = admin_get(&p, "/metrics", None).await.text();
        let n = metric(&text, "stepstone_l4_connections_total{listener=\"t\"}").unwrap_or(0.0);
        // bytes are counted when a spliced connection ends
        let up = metric(
            &text,
            "stepstone_l4_bytes_total{direction=\"in\",listener=\"t\"}",
        )
        .unwrap_or(0.0);
        let down = metric(
            &text,
            "stepstone_l4_bytes_total{direction=\"out\",listener=\"t\"}",
        )
        .unwrap_or(0.0);
        if n >= 2.0 && up > 0.0 && down > 0.0 {
            assert!(text.contains("stepstone_l4_connections_active{listener=\"t\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tls_handshakes_are_counted() {
    let a = OriginBuilder::new("a").run().await;
    let dir = crate::support::scratch_dir("tlsmetric");
    let ca = crate::support::pki::Ca::new("metrics test CA");
    let (cert, key) = ca.server("localhost", &["localhost"], 7).write(&dir, "srv");
    let yaml = format!(
        "listeners:\n  - name: s\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: https\n    tls: {{certificates: [{{cert: {}, key: {}}}]}}\nupstreams:\n  - name: u\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: s, upstream: u}}\n{}",
        cert.display(),
        key.display(),
        a.addr,
        admin_block()
    );
    let p = Proxy::start(&yaml);
    let url = format!("https://127.0.0.1:{}/", p.port(0));
    for _ in 0..3 {
        // async, so the origin on this test's runtime keeps serving meanwhile
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .await
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    // The launcher's readiness probe is a plain TCP connect, not a handshake.
    let series = "stepstone_tls_handshakes_total{listener=\"s\",result=\"ok\"}";
    let text = wait_metric(&p, series, 3.0).await;
    assert_eq!(metric(&text, series), Some(3.0), "{text}");
    // each waited in line for its turn (at least the pacer's one yield), and none waits now
    let waited = metric(&text, "stepstone_tls_handshake_wait_seconds_total");
    assert!(waited.is_some_and(|w| w > 0.0), "{text}");
    assert_eq!(
        metric(&text, "stepstone_tls_handshakes_waiting"),
        Some(0.0),
        "{text}"
    );
}
