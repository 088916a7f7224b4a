//! Reloads themselves: routing switched under keep-alive load with nothing dropped, memory
//! and descriptors flat over a hundred, a bad file refused, and `-s reload` with nothing
//! running.

use super::{admin_call, body_of, metric, reload_cli, route_to, threads, two_upstreams, Setup};
use crate::support::proxy::send_signal;
use crate::support::{scratch_dir, Conn, OriginBuilder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll until `/` answers `want`; the time it took.
async fn until_body(addr: SocketAddr, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if body_of(addr).await == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "routing did not switch to {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

async fn keepalive_client(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut c = Conn::connect(addr).await.expect("connect");
    while !stop.load(SeqCst) {
        match c.get("/", &[]).await {
            Ok(r) if r.status == 200 && (r.text() == "A" || r.text() == "B") => {
                t.ok.fetch_add(1, SeqCst);
                // busy, not flat out: the 2-core test machine also runs the reloads
                tokio::time::sleep(Duration::from_millis(1)).await;
                // `keepalive_requests` ends a connection now and then, with notice
                if r.header("connection") == Some("close") {
                    c = Conn::connect(addr).await.expect("reconnect");
                }
            }
            Ok(r) => {
                eprintln!("unexpected answer {} {:?}", r.status, r.text());
                t.failed.fetch_add(1, SeqCst);
            }
            Err(e) => {
                eprintln!("request failed: {e}");
                t.failed.fetch_add(1, SeqCst);
                c = Conn::connect(addr).await.expect("reconnect");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_keepalive_load_switch_routing_and_drop_nothing() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-load");
    let ups = two_upstreams(&a, &b);
    let p = s.start(&s.text(&ups, &route_to("a"), ""));
    let pid = p.child.id();
    assert_eq!(body_of(s.web()).await, "A");

    // one reload first: the reload thread and other one-time state start with it
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keepalive_client(s.web(), stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut worst = Duration::ZERO;
    for n in 0..10usize {
        let to = if n.is_multiple_of(2) { "b" } else { "a" };
        std::fs::write(&p.config, s.text(&ups, &route_to(to), "")).expect("write config");
        let t0 = Instant::now();
        // the three ways in turn: SIGHUP, `-s reload`, the admin API
        match n % 3 {
            0 => send_signal(pid, libc::SIGHUP),
            1 => {
                let cfg = p.config.clone();
                let (code, out) = tokio::task::spawn_blocking(move || reload_cli(&cfg))
                    .await
                    .expect("cli");
                assert_eq!(code, 0, "-s reload failed: {out}");
                assert!(out.contains("revision"), "{out}");
            }
            _ => {
                let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
        until_body(s.web(), &to.to_uppercase(), Duration::from_secs(1)).await;
        eprintln!("reload {n} (way {}): applied in {:?}", n % 3, t0.elapsed());
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, failed) = (tally.ok.load(SeqCst), tally.failed.load(SeqCst));
    eprintln!("10 reloads: {ok} requests ok, {failed} failed, slowest reload applied in {worst:?}");
    assert_eq!(failed, 0, "requests failed across reloads");
    assert!(ok > 100, "the clients barely ran: {ok}");
    assert!(worst < Duration::from_secs(1), "a reload took {worst:?}");
    let m = admin_call(s.admin(), "GET", "/metrics", "").await.text();
    assert_eq!(metric(&m, "stepstone_config_revision"), Some(12.0), "{m}");
    assert_eq!(
        metric(&m, "stepstone_config_reloads_total{result=\"ok\"}"),
        Some(11.0)
    );
    let mut p = p;
    assert!(
        p.child.try_wait().expect("wait").is_none(),
        "the process exited"
    );
    assert_eq!(p.child.id(), pid);
    let pid_file = std::fs::read_to_string(s.dir.join("stepstone.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), pid.to_string(), "same process throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_keep_rss_and_fds_flat() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-leak");
    let ups = two_upstreams(&a, &b);
    let p = s.start(&s.text(&ups, &route_to("a"), ""));
    let pid = p.child.id();
    let mut c = Conn::connect(s.web()).await.expect("connect");
    let round = |n: usize| {
        let to = if n.is_multiple_of(2) { "b" } else { "a" };
        std::fs::write(&p.config, s.text(&ups, &route_to(to), "")).expect("write");
        to.to_uppercase()
    };
    // Warm up: lazily built state, allocator arenas, pooled connections. Which worker
    // threads first take work depends on timing, so RSS takes its first steps at varying
    // points: warm up until 25 reloads in a row leave RSS within 1%.
    let mut n = 0;
    let mut last = 0;
    while n < 400 {
        for _ in 0..25 {
            let want = round(n);
            let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(c.get("/", &[]).await.expect("get").text(), want);
            n += 1;
        }
        let now = crate::support::proxy::rss_kib(pid);
        if n >= 50 && (now as f64) <= last as f64 * 1.01 {
            break;
        }
        last = now;
    }
    eprintln!("warm after {n} reloads");
    // the same quiet moment at both measurements: the last admin connection closed
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss0, fd0) = (
        crate::support::proxy::rss_kib(pid),
        crate::support::proxy::open_fds(pid),
    );
    let th0 = threads(pid);
    for n in n..n + 100 {
        let want = round(n);
        let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(c.get("/", &[]).await.expect("get").text(), want);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss1, fd1) = (
        crate::support::proxy::rss_kib(pid),
        crate::support::proxy::open_fds(pid),
    );
    eprintln!(
        "100 reloads: RSS {rss0} kB -> {rss1} kB, fds {fd0} -> {fd1}, threads {th0} -> {}",
        threads(pid)
    );
    assert!(
        (rss1 as f64) <= rss0 as f64 * 1.05 && (rss1 as f64) >= rss0 as f64 * 0.95,
        "RSS moved more than 5%: {rss0} kB -> {rss1} kB"
    );
    // A leak of one descriptor per reload adds 100. Pooled backend connections (two
    // backends, per worker thread) and a closing admin connection come and go: 52 -> 55 was
    // seen once under the suite's load with nothing leaked, so the bound is absolute.
    assert!(
        fd1 <= fd0 + 8 && fd1 + 8 >= fd0,
        "open fds moved by more than 8 over 100 reloads: {fd0} -> {fd1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_and_the_old_routing_keeps_serving() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-bad");
    let ups = two_upstreams(&a, &b);
    let good = s.text(&ups, &route_to("a"), "");
    let p = s.start(&good);
    assert_eq!(body_of(s.web()).await, "A");

    // an invalid weight, and the route moved to b: none of it may apply
    let bad_ups = format!(
        "  - {{name: a, backends: [{{address: {}}}]}}\n  - {{name: b, backends: [{{address: {}, weight: 0}}]}}\n",
        a.addr, b.addr
    );
    std::fs::write(&p.config, s.text(&bad_ups, &route_to("b"), "")).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("upstreams[1].backends[0].weight"),
        "{}",
        r.text()
    );
    assert_eq!(body_of(s.web()).await, "A", "the old routing serves");

    let (code, out) = tokio::task::spawn_blocking({
        let cfg = p.config.clone();
        move || reload_cli(&cfg)
    })
    .await
    .expect("cli");
    assert_eq!(code, 1, "-s reload must fail on a bad file: {out}");
    assert!(out.contains("upstreams[1].backends[0].weight"), "{out}");

    let st = admin_call(s.admin(), "GET", "/status", "").await.text();
    let v: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
    assert_eq!(v["config"]["revision"], 1, "{st}");
    let err = v["config"]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("upstreams[1].backends[0].weight"), "{st}");

    // a change a reload cannot make says that an upgrade is needed
    let threads = s
        .text(&ups, &route_to("b"), "")
        .replace("threads: 2", "threads: 3");
    std::fs::write(&p.config, threads).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("pingora") && r.text().contains("-s upgrade"),
        "{}",
        r.text()
    );
    assert_eq!(body_of(s.web()).await, "A");

    let m = admin_call(s.admin(), "GET", "/metrics", "").await.text();
    assert_eq!(
        metric(&m, "stepstone_config_reloads_total{result=\"error\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(metric(&m, "stepstone_config_revision"), Some(1.0));

    // the good file again applies
    std::fs::write(&p.config, s.text(&ups, &route_to("b"), "")).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_of(s.web()).await, "B");
    let st = admin_call(s.admin(), "GET", "/status", "").await.text();
    let v: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
    assert_eq!(v["config"]["revision"], 2, "{st}");
    assert!(v["config"]["last_error"].is_null(), "{st}");
}

#[test]
fn signal_reload_without_a_running_instance_fails() {
    let dir = scratch_dir("reload-none");
    let cfg = dir.join("s.yaml");
    std::fs::write(
        &cfg,
        format!(
            "pingora: {{pid_file: {}/none.pid}}\nlisteners: [{{name: web, address: 127.0.0.1:1, protocol: http}}]\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}]}}]\nroutes: [{{listener: web, upstream: a}}]\n",
            dir.display()
        ),
    )
    .expect("write");
    let (code, out) = reload_cli(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no running instance"), "{out}");
}
