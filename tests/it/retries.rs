//! Retries on both HTTP engines: what is retried (statuses, resets, timeouts, connect
//! failures), what never is (a POST that reached a backend, a body over the replay bound), the
//! per-upstream retry budget, per_try_timeout, and retries with outlier detection.

use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::time::Duration;

fn engine(fast_path: bool) -> &'static str {
    if fast_path {
        "lean"
    } else {
        "general"
    }
}

/// A proxy with an admin listener and one `app` upstream; `upstream` is the rest of the
/// upstream's entry (indented four spaces), its backends included.
fn proxy(fast_path: bool, upstream: &str) -> Proxy {
    Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path}}}\nupstreams:\n  - name: app\n{upstream}routes:\n  - {{listener: web, upstream: app}}\n"
    ))
}

fn backends(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("{{address: {a}}}")).collect();
    format!("    backends: [{}]\n", list.join(", "))
}

/// The value of a `/metrics` line that starts with `series` (name and labels).
async fn metric(p: &Proxy, series: &str) -> u64 {
    let m = client::get(p.addr_of(1), "/metrics", &[])
        .await
        .expect("metrics")
        .text();
    let prefix = format!("{series} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{m}"))
}

async fn retries_metric(p: &Proxy, reason: &str) -> u64 {
    metric(
        p,
        &format!("stepstone_retries_total{{upstream=\"app\",reason=\"{reason}\"}}"),
    )
    .await
}

async fn request(p: &Proxy, method: &str, body: &[u8]) -> client::Response {
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.request(method, "/", &[], body).await.expect("response")
}

async fn a_failing_backend_is_hidden(fast_path: bool) {
    let e = engine(fast_path);
    let bad = OriginBuilder::new("bad").status(500).run().await;
    let mut good = Vec::new();
    for i in 0..3 {
        good.push(OriginBuilder::new(&format!("good{i}")).run().await);
    }
    let mut addrs = vec![bad.addr];
    addrs.extend(good.iter().map(|g| g.addr));
    let p = proxy(
        fast_path,
        &format!(
            "    retries: 2\n    retry_on: [\"5xx\"]\n    outlier_detection: {{consecutive_failures: 3, base_ejection_time: 60s}}\n{}",
            backends(&addrs)
        ),
    );
    let mut errors = 0;
    for _ in 0..400 {
        let r = request(&p, "GET", b"").await;
        if r.status != 200 {
            errors += 1;
        }
    }
    eprintln!(
        "{e}: {errors} errors seen by clients out of 400; the failing backend got {} requests",
        bad.requests()
    );
    assert!(errors <= 3, "{e}: {errors} errors out of 400");
    assert_eq!(
        bad.requests(),
        3,
        "{e}: the failing backend is ejected after 3 failures in a row"
    );
    let label = bad.addr.to_string();
    let ejected = format!("stepstone_backend_ejected{{upstream=\"app\",backend=\"{label}\"}}");
    assert_eq!(metric(&p, &ejected).await, 1, "{e}");
    assert_eq!(
        retries_metric(&p, "500").await,
        3 - errors,
        "{e}: each 500 was retried on another backend"
    );
    let served: usize = good.iter().map(|g| g.requests()).sum();
    assert_eq!(served, 400 - errors as usize, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_outlier_detection_hide_a_backend_answering_500_on_the_lean_engine() {
    a_failing_backend_is_hidden(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_outlier_detection_hide_a_backend_answering_500_on_the_general_engine() {
    a_failing_backend_is_hidden(false).await;
}

async fn the_budget_bounds_retries(fast_path: bool) {
    let e = engine(fast_path);
    let a = OriginBuilder::new("a").status(503).run().await;
    let b = OriginBuilder::new("b").status(503).run().await;
    let p = proxy(
        fast_path,
        &format!(
            "    retries: 3\n    retry_on: [\"503\"]\n    retry_budget_percent: 20\n{}",
            backends(&[a.addr, b.addr])
        ),
    );
    let n = 200;
    for _ in 0..n {
        let r = request(&p, "GET", b"").await;
        assert_eq!(r.status, 503, "{e}: the backends' own answer");
    }
    let origin = a.requests() + b.requests();
    // 20% of the requests, plus the floor of 3 retries a second over the 10 s window
    let allowed = n + n / 5 + 30;
    eprintln!(
        "{e}: {origin} origin requests for {n} client requests (budget {allowed}, without one {})",
        n * 4
    );
    assert!(
        origin <= allowed,
        "{e}: {origin} origin requests for {n} client requests"
    );
    assert!(
        origin >= n + 30,
        "{e}: the floor and the deposits were spent: {origin}"
    );
    let exhausted = "stepstone_retry_budget_exhausted_total{upstream=\"app\"}";
    assert!(metric(&p, exhausted).await > 0, "{e}");
    assert_eq!(retries_metric(&p, "503").await as usize, origin - n, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_when_every_answer_is_503_on_the_lean_engine() {
    the_budget_bounds_retries(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_when_every_answer_is_503_on_the_general_engine() {
    the_budget_bounds_retries(false).await;
}

async fn posts_are_retried_only_when_unsent(fast_path: bool) {
    let e = engine(fast_path);
    let bad = OriginBuilder::new("bad").status(503).run().await;
    let good = OriginBuilder::new("good").run().await;
    let conf = "    retries: 2\n    retry_on: [connect_failure, \"503\"]\n";
    let p = proxy(
        fast_path,
        &format!("{conf}{}", backends(&[bad.addr, good.addr])),
    );
    let mut refused = 0;
    for _ in 0..10 {
        if request(&p, "POST", b"order=1").await.status == 503 {
            refused += 1;
        }
    }
    assert_eq!(
        bad.requests() + good.requests(),
        10,
        "{e}: one try per POST"
    );
    assert_eq!(
        refused,
        bad.requests(),
        "{e}: each POST the bad backend answered"
    );
    assert!(
        refused > 0,
        "{e}: round robin sent POSTs to the bad backend"
    );
    // a GET in the same place is retried
    let before = bad.requests();
    for _ in 0..10 {
        assert_eq!(request(&p, "GET", b"").await.status, 200, "{e}");
    }
    assert!(bad.requests() > before, "{e}");
    assert_eq!(
        retries_metric(&p, "503").await as usize,
        bad.requests() - before,
        "{e}"
    );

    // a POST whose connection failed never reached a backend: retried
    let good = OriginBuilder::new("good").run().await;
    let dead = crate::support::dead_addr();
    let p = proxy(
        fast_path,
        &format!("{conf}{}", backends(&[dead, good.addr])),
    );
    for _ in 0..10 {
        let r = request(&p, "POST", b"order=1").await;
        assert_eq!(r.status, 200, "{e}: {}", r.text());
    }
    assert_eq!(good.requests(), 10, "{e}");
    assert!(good.recorded().iter().all(|r| r.body == b"order=1"), "{e}");
    assert!(retries_metric(&p, "connect_failure").await > 0, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_after_a_connect_failure_but_never_after_a_503_on_the_lean_engine() {
    posts_are_retried_only_when_unsent(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_after_a_connect_failure_but_never_after_a_503_on_the_general_engine() {
    posts_are_retried_only_when_unsent(false).await;
}

async fn bodies_are_replayed_within_the_bound(fast_path: bool) {
    let e = engine(fast_path);
    let bad = OriginBuilder::new("bad").status(503).run().await;
    let good = OriginBuilder::new("good").run().await;
    let p = proxy(
        fast_path,
        &format!(
            "    retries: 1\n    retry_on: [\"503\"]\n{}",
            backends(&[bad.addr, good.addr])
        ),
    );
    let small: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for _ in 0..10 {
        assert_eq!(request(&p, "GET", &small).await.status, 200, "{e}");
    }
    assert!(bad.requests() >= 5, "{e}: round robin tried the bad one");
    assert_eq!(good.requests(), 10, "{e}");
    for r in bad.recorded().iter().chain(good.recorded().iter()) {
        assert_eq!(r.body, small, "{e}: the body, sent again whole");
    }

    // over the replay bound (64 KiB), a 503 goes to the client
    let large = vec![b'z'; 70 * 1024];
    let (bad_before, good_before) = (bad.requests(), good.requests());
    let mut refused = 0;
    for _ in 0..4 {
        if request(&p, "GET", &large).await.status == 503 {
            refused += 1;
        }
    }
    assert_eq!(
        bad.requests() + good.requests() - bad_before - good_before,
        4,
        "{e}: one try each"
    );
    assert_eq!(refused, bad.requests() - bad_before, "{e}");
    assert!(refused > 0, "{e}");
    assert!(
        good.recorded()[good_before..]
            .iter()
            .all(|r| r.body == large),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_get_replays_its_body_up_to_the_bound_on_the_lean_engine() {
    bodies_are_replayed_within_the_bound(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_get_replays_its_body_up_to_the_bound_on_the_general_engine() {
    bodies_are_replayed_within_the_bound(false).await;
}

async fn a_stalled_try_moves_on(fast_path: bool) {
    let e = engine(fast_path);
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_secs(3))
        .body("slow")
        .run()
        .await;
    let fast = OriginBuilder::new("fast").body("fast").run().await;
    let p = proxy(
        fast_path,
        &format!(
            "    retries: 1\n    retry_on: [timeout]\n    per_try_timeout: 300ms\n    read_timeout: 10s\n{}",
            backends(&[slow.addr, fast.addr])
        ),
    );
    for _ in 0..4 {
        let r = request(&p, "GET", b"").await;
        assert_eq!(r.status, 200, "{e}");
        assert_eq!(r.text(), "fast", "{e}");
    }
    assert!(slow.requests() >= 1, "{e}: round robin tried the slow one");
    assert_eq!(fast.requests(), 4, "{e}");
    assert_eq!(
        retries_metric(&p, "timeout").await as usize,
        slow.requests(),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_a_stalled_request_to_another_backend_on_the_lean_engine() {
    a_stalled_try_moves_on(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_a_stalled_request_to_another_backend_on_the_general_engine() {
    a_stalled_try_moves_on(false).await;
}
