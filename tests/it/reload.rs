//! Reload in place (SIGHUP, `-s reload`, `POST /api/reload`) and the runtime API for
//! backends, against the real binary.

use crate::support::proxy::{bin, run_cli, send_signal};
use crate::support::{client, free_port, scratch_dir, Conn, Origin, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "reload-t0ken";

/// A config with upstreams `a` and `b` (one origin each, or `app` with both), the route to
/// `target`, an admin listener, and `extra` appended.
struct Setup {
    dir: std::path::PathBuf,
    web: u16,
    admin: u16,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        Setup {
            dir: scratch_dir(tag),
            web: free_port(),
            admin: free_port(),
        }
    }

    fn text(&self, upstreams: &str, routes: &str, extra: &str) -> String {
        format!(
            "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n\
             listeners:\n  - {{name: web, address: 127.0.0.1:{web}, protocol: http}}\n{extra}\
             admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}\n\
             upstreams:\n{upstreams}routes:\n{routes}",
            d = self.dir.display(),
            web = self.web,
            admin = self.admin,
        )
    }

    fn start(&self, text: &str) -> Proxy {
        let p = Proxy::start_in(self.dir.clone(), text, vec![self.web, self.admin], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        p
    }

    fn admin(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.admin).into()
    }

    fn web(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.web).into()
    }
}

fn two_upstreams(a: &Origin, b: &Origin) -> String {
    format!(
        "  - {{name: a, backends: [{{address: {}}}]}}\n  - {{name: b, backends: [{{address: {}}}]}}\n",
        a.addr, b.addr
    )
}

fn route_to(up: &str) -> String {
    format!("  - {{listener: web, upstream: {up}}}\n")
}

async fn admin_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> client::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match Conn::connect(addr).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "admin never listened: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let auth = format!("Bearer {TOKEN}");
    c.request(method, path, &[("Authorization", &auth)], body.as_bytes())
        .await
        .expect("admin answers")
}

async fn body_of(addr: SocketAddr) -> String {
    client::get(addr, "/", &[])
        .await
        .map(|r| r.text())
        .unwrap_or_default()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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

fn reload_cli(config: &Path) -> (i32, String) {
    run_cli(&["-s", "reload", "-c", &config.display().to_string()])
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

fn threads(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or_default()
        .trim()
        .to_string()
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

fn one_pool(a: &Origin, b: &Origin, read_timeout: &str) -> String {
    format!(
        "  - name: app\n    read_timeout: {read_timeout}\n    backends: [{{address: {}}}, {{address: {}}}]\n",
        a.addr, b.addr
    )
}

async fn share_of(addr: SocketAddr, n: usize, of: &str) -> f64 {
    let mut c = Conn::connect(addr).await.expect("connect");
    let mut hits = 0;
    for _ in 0..n {
        let r = c.get("/", &[]).await.expect("get");
        assert_eq!(r.status, 200);
        if r.text() == of {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

async fn backend_state(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let r = admin_call(admin, "GET", "/api/upstreams", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    v["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_drains_weights_and_keeps_state_across_reload_and_upgrade() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("runtime-api");
    let p = s.start(&s.text(&one_pool(&a, &b, "30s"), &route_to("app"), ""));
    let path_b = format!("/api/upstreams/app/backends/{}", b.addr);
    let path_a = format!("/api/upstreams/app/backends/{}", a.addr);

    let st = backend_state(s.admin(), b.addr).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["weight"], 1);
    assert_eq!(st["health"], "up");
    assert_eq!(st["outlier"], "ok");
    assert_eq!(st["in_flight"], 0);

    // drain: b gets none of the next 40
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "drain"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        share_of(s.web(), 40, "B").await,
        0.0,
        "a drained backend got requests"
    );

    // weights 3:1
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "ready"}"#).await;
    assert_eq!(r.status, 200);
    let r = admin_call(s.admin(), "PUT", &path_a, r#"{"weight": 3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let share = share_of(s.web(), 400, "A").await;
    eprintln!("weight 3:1 -> share of a {share:.3}");
    assert!((0.68..=0.82).contains(&share), "share of a {share}");
    let st = admin_call(s.admin(), "GET", "/status", "").await.text();
    let v: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
    let in_status = v["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|x| x["address"] == a.addr.to_string())
        .cloned()
        .unwrap_or_default();
    assert_eq!(in_status["weight"], 3, "{st}");
    let m = admin_call(s.admin(), "GET", "/metrics", "").await.text();
    let series = format!(
        "stepstone_backend_weight{{upstream=\"app\",backend=\"{}\"}}",
        a.addr
    );
    assert_eq!(metric(&m, &series), Some(3.0), "{m}");

    // each bad call: 400 with the reason, and nothing applied
    let bad_calls = [
        (
            "PUT",
            "/api/upstreams/nope/backends/127.0.0.1:1".to_string(),
            r#"{"weight": 2}"#,
            "unknown upstream",
        ),
        (
            "PUT",
            "/api/upstreams/app/backends/not-an-address".to_string(),
            r#"{"weight": 2}"#,
            "malformed address",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 0}"#,
            "weight out of range",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 5000}"#,
            "weight out of range",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 2, "state": "asleep"}"#,
            "unknown state",
        ),
        (
            "POST",
            "/api/upstreams/app/backends".to_string(),
            r#"{"address": "1.2.3", "weight": 1}"#,
            "malformed address",
        ),
        (
            "POST",
            "/api/upstreams/nope/backends".to_string(),
            r#"{"address": "127.0.0.1:9"}"#,
            "unknown upstream",
        ),
    ];
    for (method, path, body, reason) in bad_calls {
        let r = admin_call(s.admin(), method, &path, body).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        assert!(
            r.text().contains(reason),
            "{method} {path} {body}: {}",
            r.text()
        );
    }
    assert_eq!(
        backend_state(s.admin(), b.addr).await["weight"],
        1,
        "partial apply"
    );

    // maint, then a reload that replaces the pool: the changes stay
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "maint"}"#).await;
    assert_eq!(r.status, 200);
    std::fs::write(
        &p.config,
        s.text(&one_pool(&a, &b, "31s"), &route_to("app"), ""),
    )
    .expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend_state(s.admin(), a.addr).await["weight"], 3);
    assert_eq!(backend_state(s.admin(), b.addr).await["state"], "maint");
    assert_eq!(share_of(s.web(), 20, "B").await, 0.0);

    // add a backend, then take it out again
    let c = OriginBuilder::new("c").body("C").run().await;
    let r = admin_call(
        s.admin(),
        "POST",
        "/api/upstreams/app/backends",
        &format!(r#"{{"address": "{}", "weight": 1}}"#, c.addr),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        share_of(s.web(), 20, "C").await > 0.0,
        "an added backend gets requests"
    );
    let r = admin_call(
        s.admin(),
        "DELETE",
        &format!("/api/upstreams/app/backends/{}", c.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend_state(s.admin(), c.addr).await.is_null() {
        assert!(Instant::now() < deadline, "the removed backend stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(share_of(s.web(), 20, "C").await, 0.0);

    // an upgrade: the new process starts with the same changes
    let log = std::fs::File::create(s.dir.join("stderr-upgrade.log")).expect("log");
    let mut new = Command::new(bin())
        .arg("-u")
        .arg("-c")
        .arg(&p.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the new process");
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(p.child.id(), libc::SIGQUIT);
    let mut old = p;
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st_a = backend_state(s.admin(), a.addr).await;
    let st_b = backend_state(s.admin(), b.addr).await;
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(st_a["weight"], 3, "after the upgrade: {st_a}");
    assert_eq!(st_b["state"], "maint", "after the upgrade: {st_b}");
}

fn with_extra(s: &Setup, ups: &str, extra_port: Option<u16>) -> String {
    match extra_port {
        Some(p) => s.text(
            ups,
            &format!("{}  - {{listener: extra, upstream: b}}\n", route_to("a")),
            &format!("  - {{name: extra, address: 127.0.0.1:{p}, protocol: http}}\n"),
        ),
        None => s.text(ups, &route_to("a"), ""),
    }
}

async fn refuses(addr: SocketAddr, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_moved_and_removed_by_reload() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-listeners");
    let ups = two_upstreams(&a, &b);
    let p = s.start(&with_extra(&s, &ups, None));
    let (x, y) = (free_port(), free_port());
    let (at_x, at_y): (SocketAddr, SocketAddr) =
        (([127, 0, 0, 1], x).into(), ([127, 0, 0, 1], y).into());
    assert!(refuses(at_x, Duration::from_millis(100)).await);

    // added: it answers, on its own routes
    std::fs::write(&p.config, with_extra(&s, &ups, Some(x))).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_of(at_x).await, "B");
    assert_eq!(body_of(s.web()).await, "A");

    // moved to another address: the old one refuses new connections, while a keep-alive
    // connection opened before still completes a request
    let mut kept = Conn::connect(at_x).await.expect("connect");
    assert_eq!(kept.get("/", &[]).await.expect("get").text(), "B");
    std::fs::write(&p.config, with_extra(&s, &ups, Some(y))).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_of(at_y).await, "B");
    assert!(
        refuses(at_x, Duration::from_secs(1)).await,
        "the old address still accepts"
    );
    let r = kept
        .get("/", &[])
        .await
        .expect("the open connection is served");
    assert_eq!((r.status, r.text().as_str()), (200, "B"));

    // removed
    let mut kept = Conn::connect(at_y).await.expect("connect");
    assert_eq!(kept.get("/", &[]).await.expect("get").text(), "B");
    std::fs::write(&p.config, with_extra(&s, &ups, None)).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        refuses(at_y, Duration::from_secs(1)).await,
        "a removed listener accepts"
    );
    let r = kept
        .get("/", &[])
        .await
        .expect("the open connection is served");
    assert_eq!(r.status, 200);
    assert_eq!(
        body_of(s.web()).await,
        "A",
        "the other listener is untouched"
    );

    // an address already taken: refused, nothing applied
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    std::fs::write(&p.config, with_extra(&s, &ups, Some(port))).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("listeners[1]"), "{}", r.text());

    // another name at a kept address: the listener there is replaced, not refused for the
    // address in use
    std::fs::write(
        &p.config,
        with_extra(&s, &ups, None)
            .replace("{name: web,", "{name: web2,")
            .replace("{listener: web,", "{listener: web2,"),
    )
    .expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body_of(s.web()).await, "A");
}

/// A reload that changes a listener's settings at the same address applies them at once: the
/// new listener takes over the old one's sockets, so no connection is refused or reset while
/// it happens (ten reloads under a client that connects for every request), and a keep-alive
/// connection opened before a change is served on the settings it was accepted with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_listener_in_place_without_losing_a_connection() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-in-place");
    let ups = two_upstreams(&a, &b);
    // a socket per thread: every one of them is handed over
    let plain = s
        .text(&ups, &route_to("a"), "")
        .replace("  threads: 2\n", "  threads: 2\n  work_stealing: false\n");
    let small = plain.replace(
        "protocol: http}",
        "protocol: http, limits: {max_header_size: 1k}}",
    );
    let p = s.start(&plain);
    let big = "x".repeat(2000);
    let big_header = [("x-big", big.as_str())];
    let r = client::get(s.web(), "/", &big_header).await.expect("get");
    assert_eq!(r.status, 200, "a 2 KB header under the default limit");

    // a client that opens a connection for every request, through every reload
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, web) = (stop.clone(), ok.clone(), failed.clone(), s.web());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                match client::get(web, "/", &[]).await {
                    Ok(r) if r.status == 200 && r.text() == "A" => ok.fetch_add(1, SeqCst),
                    Ok(r) => {
                        eprintln!("during the reloads: {} {}", r.status, r.text());
                        failed.fetch_add(1, SeqCst)
                    }
                    Err(e) => {
                        eprintln!("during the reloads: {e}");
                        failed.fetch_add(1, SeqCst)
                    }
                };
            }
        })
    };
    let mut kept = Conn::connect(s.web()).await.expect("connect");
    assert_eq!(kept.get("/", &[]).await.expect("get").status, 200);
    for round in 0..10 {
        let text = if round % 2 == 0 { &small } else { &plain };
        std::fs::write(&p.config, text).expect("write");
        let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&p.config, &small).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, SeqCst);
    load.await.expect("the client task");
    let (ok, failed) = (ok.load(SeqCst), failed.load(SeqCst));
    eprintln!("requests during 11 reloads in place: {ok} ok, {failed} failed");
    assert!(ok >= 20, "too few requests to tell: {ok}");
    assert_eq!(failed, 0, "requests failed while the listener was replaced");

    // the new limit holds for new connections, and the connection from before keeps its own
    let r = client::get(s.web(), "/", &big_header).await.expect("get");
    assert_eq!(r.status, 431, "the reloaded max_header_size");
    let r = kept
        .get("/", &big_header)
        .await
        .expect("the connection from before is served");
    assert_eq!(r.status, 200, "the connection from before keeps its limits");
    let log = p.log();
    assert!(
        log.contains("http web: listening on")
            && log.contains("(2 socket(s), started by a reload)"),
        "both sockets of the group were not handed over:\n{log}"
    );
    assert!(!log.contains("could not take over"), "{log}");
}

fn checked_pool(backends: &[&Origin]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|o| format!("{{address: {}}}", o.addr))
        .collect();
    format!(
        "  - name: app\n    health_check: {{type: http, path: /healthz, interval: 200ms, healthy_threshold: 1, unhealthy_threshold: 3}}\n    backends: [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_health_verdict_of_backends_that_stay() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let c = OriginBuilder::new("c").body("C").run().await;
    b.set_health(503);
    let s = Setup::new("reload-health");
    let p = s.start(&s.text(&checked_pool(&[&a, &b]), &route_to("app"), ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(s.admin(), b.addr).await["health"] != "down" {
        assert!(Instant::now() < deadline, "b never went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a third backend in the file: the pool stays, b stays down (a fresh check would start
    // it up, as Pingora's checks start every backend healthy)
    std::fs::write(
        &p.config,
        s.text(&checked_pool(&[&a, &b, &c]), &route_to("app"), ""),
    )
    .expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..10 {
        assert_eq!(backend_state(s.admin(), b.addr).await["health"], "down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        share_of(s.web(), 30, "B").await,
        0.0,
        "a down backend got requests"
    );
    assert!(
        share_of(s.web(), 30, "C").await > 0.0,
        "the new backend gets requests"
    );

    // maintenance pauses c's health checks (each probe is a new connection; no request
    // reaches c meanwhile)
    let path_c = format!("/api/upstreams/app/backends/{}", c.addr);
    let r = admin_call(s.admin(), "PUT", &path_c, r#"{"state": "maint"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = c.connections();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        c.connections(),
        probes,
        "a backend in maintenance was probed"
    );
    let r = admin_call(s.admin(), "PUT", &path_c, r#"{"state": "ready"}"#).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(c.connections() > probes, "checks resume after maintenance");
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

/// A reload rotates the admin token: the reload asked with the old token applies, and from
/// the next request only the new one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_admin_token() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-token");
    let text = s.text(&two_upstreams(&a, &b), &route_to("a"), "");
    let p = s.start(&text);
    let admin = s.admin();
    let with = |token: &'static str| async move {
        client::admin_as(admin, "GET", "/status", token)
            .await
            .status
    };
    assert_eq!(with(TOKEN).await, 200);
    assert_eq!(with("n3w-t0ken").await, 401);

    std::fs::write(&p.config, text.replace(TOKEN, "n3w-t0ken")).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(with(TOKEN).await, 401, "the old token still works");
    assert_eq!(with("n3w-t0ken").await, 200, "the new token is refused");
}

/// A reload moves the admin listener: the new address listens before the old one stops
/// (the request that asked for the move is answered on the old one), removes it and adds it
/// back; an address in use refuses the reload, naming `admin.address`, and the admin
/// listener in force goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_removes_and_adds_the_admin_listener() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-admin");
    let text = s.text(&two_upstreams(&a, &b), &route_to("a"), "");
    let p = s.start(&text);
    let (old, new) = (s.admin(), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let at = |addr: SocketAddr| text.replace(&old.to_string(), &addr.to_string());
    let status = |addr: SocketAddr| async move {
        client::admin_as(addr, "GET", "/status", TOKEN).await.status
    };
    assert_eq!(status(old).await, 200);

    std::fs::write(&p.config, at(new)).expect("write");
    let r = admin_call(old, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(new).await, 200, "the new address serves the API");
    let health = client::get(new, "/healthz", &[]).await.expect("healthz");
    assert_eq!(health.status, 200);
    assert!(
        refuses(old, Duration::from_secs(5)).await,
        "the old address still listens"
    );
    assert_eq!(body_of(s.web()).await, "A", "the proxy serves on");

    // taken by another socket: refused, and the admin listener stays where it is, with its
    // token
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = at(taken.local_addr().expect("addr")).replace(TOKEN, "0ther-t0ken");
    std::fs::write(&p.config, refused).expect("write");
    let r = client::admin_as(new, "POST", "/api/reload", TOKEN).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("admin.address"), "{}", r.text());
    assert_eq!(status(new).await, 200, "the refused file's token took over");

    // removed (the reload asked by signal: there is no API to ask), then added back
    let none = text
        .lines()
        .filter(|l| !l.starts_with("admin:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(none, text, "the admin line is gone");
    std::fs::write(&p.config, format!("{none}\n")).expect("write");
    let (code, out) = reload_cli(&p.config);
    assert_eq!(code, 0, "{out}");
    assert!(
        refuses(new, Duration::from_secs(5)).await,
        "removed, it still listens"
    );
    std::fs::write(&p.config, &text).expect("write");
    let (code, out) = reload_cli(&p.config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(old).await, 200, "added back at its first address");
}

/// A listener replaced by a reload (here its `max_header_size` changed) counts the
/// connections still open on the one it replaces against its `max_connections`: with 2
/// allowed and 2 open from before, a third is refused (503) where the new listener used to
/// count from zero and take it; once one of the old ones closes, a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_listener_counts_the_connections_of_the_one_it_replaces() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-maxconn");
    let base = s.text(&two_upstreams(&a, &b), &route_to("a"), "");
    let limited = |header: u32| {
        let l =
            format!("protocol: http, limits: {{max_connections: 2, max_header_size: {header}}}}}");
        let t = base.replacen("protocol: http}", &l, 1);
        assert_ne!(t, base, "the web listener's line changed");
        t
    };
    let p = s.start(&limited(8192));
    let web = s.web();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let status = |r: &[u8]| {
        String::from_utf8_lossy(r)
            .split(' ')
            .nth(1)
            .map(str::to_string)
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::connect(web).await.expect("connect");
        assert_eq!(c.get("/", &[]).await.expect("answer").text(), "A");
        open.push(c);
    }
    let (r, _) = crate::support::raw::exchange(web, get, Duration::from_secs(5)).await;
    assert_eq!(status(&r).as_deref(), Some("503"), "full before the reload");

    std::fs::write(&p.config, limited(16384)).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, _) = crate::support::raw::exchange(web, get, Duration::from_secs(5)).await;
    assert_eq!(
        status(&r).as_deref(),
        Some("503"),
        "the replacement took a third connection: {}",
        String::from_utf8_lossy(&r)
    );
    for c in &mut open {
        assert_eq!(c.get("/", &[]).await.expect("still served").text(), "A");
    }
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (r, _) = crate::support::raw::exchange(web, get, Duration::from_secs(5)).await;
        if status(&r).as_deref() == Some("200") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
