//! The production daemon: zero-drop graceful upgrades, SIGTERM drain, the admin listener
//! (metrics, status, token, drain), the access log, DNS discovery, the status page in a real
//! headless browser, and the container image's build and run commands.

use crate::support::proxy::{bin, render, send_signal};
use crate::support::{client, free_port, scratch_dir, Conn, Origin, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken-for-tests";

pub(crate) fn base(origins: &[&Origin], extra_top: &str, pingora: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(p) = pingora {
        s.push_str(p);
    }
    s.push_str("listeners:\n  - {name: web, address: 127.0.0.1:{{port}}, protocol: http}\nupstreams:\n  - name: app\n    backends:\n");
    for o in origins {
        s.push_str(&format!("      - {{address: {}}}\n", o.addr));
    }
    s.push_str("routes:\n  - {listener: web, upstream: app}\n");
    s.push_str(extra_top);
    s
}

fn admin_block() -> String {
    format!("admin: {{address: 127.0.0.1:{{{{port1}}}}, token: {TOKEN}}}\n")
}

/// The admin listener starts beside the first one, which `Proxy::start` waited for: wait
/// for it too.
async fn admin_ready(p: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(p.addr_of(1)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the admin listener never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_get(p: &Proxy, path: &str, token: Option<&str>) -> client::Response {
    admin_ready(p).await;
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    client::get(p.addr_of(1), path, &h)
        .await
        .expect("admin answers")
}

async fn admin_post(p: &Proxy, path: &str, token: Option<&str>) -> client::Response {
    admin_ready(p).await;
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    let mut c = Conn::connect(p.addr_of(1)).await.expect("connect admin");
    c.request("POST", path, &h, b"")
        .await
        .expect("admin answers")
}

pub(crate) async fn wait_exit(p: &mut Proxy, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
pub(crate) struct Tally {
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
    pub reset: AtomicUsize,
    pub reconnects: AtomicUsize,
}

fn classify(t: &Tally, e: &std::io::Error, what: &str) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted) {
        t.reset.fetch_add(1, SeqCst);
    } else {
        t.failed.fetch_add(1, SeqCst);
    }
    eprintln!("load: {what} failed: {e}");
}

/// One client task until `stop`: keep-alive (reconnecting only when the proxy says
/// `Connection: close`) or a new connection per request. Every error counts; nothing retries.
/// A short pause between requests keeps the load continuous without starving the tests that
/// run beside this one on a small machine (or filling the ephemeral port range).
pub(crate) async fn load_task(
    addr: SocketAddr,
    keepalive: bool,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) {
    let pause = Duration::from_millis(if keepalive { 2 } else { 10 });
    let mut conn: Option<Conn> = None;
    while !stop.load(SeqCst) {
        tokio::time::sleep(pause).await;
        if conn.is_none() {
            match Conn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    classify(&t, &e, "connect");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let r = tokio::time::timeout(Duration::from_secs(20), c.get("/", &[])).await;
        match r {
            Ok(Ok(resp)) if resp.status == 200 => {
                t.ok.fetch_add(1, SeqCst);
                let close = resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !keepalive || close {
                    if keepalive {
                        t.reconnects.fetch_add(1, SeqCst);
                    }
                    conn = None;
                }
            }
            Ok(Ok(resp)) => {
                t.failed.fetch_add(1, SeqCst);
                eprintln!("load: status {}", resp.status);
                conn = None;
            }
            Ok(Err(e)) => {
                classify(
                    &t,
                    &e,
                    if keepalive {
                        "keep-alive request"
                    } else {
                        "request"
                    },
                );
                conn = None;
            }
            Err(_) => {
                t.failed.fetch_add(1, SeqCst);
                eprintln!("load: request timed out");
                conn = None;
            }
        }
    }
}

pub(crate) fn pingora_block(dir: &std::path::Path, grace: u64) -> String {
    format!(
        "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: {grace}\n  graceful_shutdown_timeout_seconds: 2\n",
        d = dir.display()
    )
}

pub(crate) fn spawn_upgrade(first: &Proxy, n: usize) -> Proxy {
    let log = std::fs::File::create(first.dir.join(format!("stderr-{n}.log"))).expect("log");
    let child = Command::new(bin())
        .arg("-u")
        .arg("-c")
        .arg(&first.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the new process");
    Proxy {
        child,
        dir: first.dir.clone(),
        config: first.config.clone(),
        addr: first.addr,
        ports: first.ports.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_graceful_upgrades_under_load_drop_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let first = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let addr = first.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(load_task(
            addr,
            i % 2 == 0,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut procs = vec![first];
    for n in 1..=5 {
        let before = tally.ok.load(SeqCst);
        let new = spawn_upgrade(&procs[0], n);
        // The new process waits on the upgrade socket; Pingora's sender retries until it
        // exists, so SIGQUIT may follow at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old_pid = procs[0].child.id();
        send_signal(old_pid, libc::SIGQUIT);
        let st = wait_exit(&mut procs[0], Duration::from_secs(60)).await;
        assert!(
            st.is_some_and(|s| s.success()),
            "upgrade {n}: old process did not exit cleanly: {st:?}\n{}",
            procs[0].log()
        );
        let new_log = std::fs::read_to_string(procs[0].dir.join(format!("stderr-{n}.log")))
            .unwrap_or_default();
        assert!(
            new_log.contains("Bootstrap done") && !new_log.contains("starting normally"),
            "upgrade {n}: the new process did not take the sockets over:\n{new_log}"
        );
        procs.insert(0, new);
        assert!(
            tally.ok.load(SeqCst) > before,
            "upgrade {n}: no request succeeded during the upgrade"
        );
        eprintln!(
            "upgrade {n} done: ok={} failed={} reset={}",
            tally.ok.load(SeqCst),
            tally.failed.load(SeqCst),
            tally.reset.load(SeqCst)
        );
    }
    // The last new process serves on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    let (ok, failed, reset, rec) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
        tally.reconnects.load(SeqCst),
    );
    eprintln!("five upgrades: {ok} requests ok, {failed} failed, {reset} reset, {rec} keep-alive reconnects on Connection: close");
    assert_eq!((failed, reset), (0, 0), "requests failed during upgrades");
    assert!(ok > 500, "too little load to prove anything: {ok}");
    assert!(rec > 0, "keep-alive clients were never asked to reconnect");
    assert!(
        procs[0].child.try_wait().ok().flatten().is_none(),
        "newest process died"
    );
    let r = client::get(addr, "/", &[])
        .await
        .expect("served after upgrades");
    assert_eq!(r.status, 200);
}

/// The documented upgrade command (`scripts/upgrade`) against a new process that takes longer
/// to start (6 s) than Pingora's socket handover waits (5 tries, 1 s apart): the old process
/// is told to hand over only once the new one waits for the sockets, so nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_script_waits_for_a_slow_new_process_and_drops_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-slow");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let mut first = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let addr = first.addr;
    let pidfile = first.dir.join("stepstone.pid");
    let old_pid = first.child.id();
    // The pid file is written in the foreground too: the script finds the instance there.
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pid file").trim(),
        old_pid.to_string()
    );
    // A new binary that starts slowly (the config check stays fast).
    let slow = first.dir.join("slow-stepstone");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \"$1\" in -t) ;; *) sleep 6 ;; esac\nexec {} \"$@\"\n",
            bin()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(load_task(
            addr,
            i % 2 == 0,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::File::create(first.dir.join("upgrade.log")).expect("log");
    let mut script = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade"))
        .arg(&first.config)
        .arg(&slow)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("scripts/upgrade");
    // Whatever happens below, the new process does not outlive the test.
    struct KillNew(std::path::PathBuf, u32);
    impl Drop for KillNew {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p != self.1)
                .and_then(|p| libc::pid_t::try_from(p).ok())
            {
                // SAFETY: kill(2) takes two integers; the process may be gone already.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _kill_new = KillNew(pidfile.clone(), old_pid);

    let st = wait_exit(&mut first, Duration::from_secs(60)).await;
    let script_log = || std::fs::read_to_string(first.dir.join("upgrade.log")).unwrap_or_default();
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\n{}",
        script_log()
    );
    let new_pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(new_pid, old_pid, "{}", script_log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    let r = client::get(addr, "/", &[]).await;
    send_signal(new_pid, libc::SIGTERM);
    let _ = script.wait();
    let log = script_log();
    assert!(log.contains("sent SIGQUIT"), "{log}");
    let (ok, failed, reset) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
    );
    eprintln!("slow upgrade: {ok} ok, {failed} failed, {reset} reset");
    assert_eq!(
        (failed, reset),
        (0, 0),
        "requests failed during the upgrade\n{log}"
    );
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(r.expect("served by the new process").status, 200);
}

#[tokio::test]
async fn upgrade_flag_without_a_running_instance_starts_normally() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-alone");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 0))), &dir);
    let p = Proxy::start_in(dir, &text, ports, &["-u"]).expect("-u alone starts");
    let r = client::get(p.addr, "/", &[]).await.expect("serves");
    assert_eq!(r.status, 200);
    assert!(p.log().contains("starting normally"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_and_closes_keepalive() {
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(1500))
        .run()
        .await;
    let dir = scratch_dir("sigterm");
    let (text, ports) = render(&base(&[&slow], "", Some(&pingora_block(&dir, 4))), &dir);
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let addr = p.addr;

    // An idle keep-alive connection, and a request in flight.
    let mut idle = Conn::connect(addr).await.expect("connect");
    let r = idle.get("/", &[]).await.expect("first");
    assert_eq!(r.status, 200);
    assert_ne!(r.header("connection"), Some("close"));
    let inflight = tokio::spawn(async move { client::get(addr, "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    p.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New connections are no longer accepted...
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        match Conn::connect(addr).await {
            Err(_) => true,
            Ok(mut c) => c.get("/", &[]).await.is_err(),
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "a new connection was served after SIGTERM");
    // ...the request in flight completes...
    let r = inflight
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(r.status, 200);
    // ...and the idle keep-alive connection is served once more, told to close.
    let r = idle
        .get("/", &[])
        .await
        .expect("keep-alive request during drain");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(idle.closed_within(Duration::from_secs(5)).await);

    let st = wait_exit(&mut p, Duration::from_secs(30)).await;
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
    eprintln!("SIGTERM drain took {:?}", t0.elapsed());
}

/// During a SIGTERM drain the admin listener still answers, `/healthz` with 503, so an
/// orchestrator sees the drain; and once the last request is done the process exits at once
/// instead of sleeping out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_keeps_admin_at_503_and_exits_when_idle() {
    let slow = OriginBuilder::new("slow")
        .delay(Duration::from_millis(1500))
        .run()
        .await;
    let dir = scratch_dir("sigterm-admin");
    let grace = 20;
    let (text, ports) = render(
        &base(&[&slow], &admin_block(), Some(&pingora_block(&dir, grace))),
        &dir,
    );
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    assert_eq!(admin_get(&p, "/healthz", None).await.status, 200);
    let addr = p.addr;
    let inflight = tokio::spawn(async move { client::get(addr, "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    p.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client::get(p.addr_of(1), "/healthz", &[])
        .await
        .expect("admin still answers during the drain");
    assert_eq!(r.status, 503);
    let r = inflight.await.expect("task").expect("in-flight request");
    assert_eq!(r.status, 200);
    let st = wait_exit(&mut p, Duration::from_secs(5)).await;
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(grace / 2),
        "waited {:?} with nothing in flight (grace {grace}s)",
        t0.elapsed()
    );
}

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
async fn access_log_json_to_a_file() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(
        &[&a],
        "access_log: {format: json, path: '{{dir}}/access.log'}\n",
        None,
    ));
    let r = client::get(p.addr, "/x?y=1", &[("User-Agent", "ops-test")])
        .await
        .expect("resp");
    assert_eq!(r.status, 200);
    let file = p.dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let t = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(l) = t.lines().next() {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["status"], 200);
    assert_eq!(v["uri"], "/x?y=1");
    assert_eq!(v["route"], "routes[0]");
    assert_eq!(v["upstream"], "app");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["bytes_sent"], 5);
    assert_eq!(v["user_agent"], "ops-test");
    assert_eq!(v["cache"], "-");
    assert!(v["duration"].as_f64().is_some_and(|d| d > 0.0));
    assert!(v["upstream_connect"].as_f64().is_some());
}

/// GET `path`, asserting a 200.
async fn get_ok(addr: SocketAddr, path: &str) {
    let r = client::get(addr, path, &[]).await.expect("resp");
    assert_eq!(r.status, 200, "{path}");
}

/// Wait until the log file `f` has a line containing `what`.
async fn wait_logged(f: &std::path::Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(f)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(Instant::now() < deadline, "{what} not in {}", f.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log rotation: once logrotate has moved the access log away, `stepstone -s reopen` (SIGUSR1)
/// makes the proxy write the next lines to a new file at the configured path, while the moved
/// file keeps every line from before (none lost, none split between the two).
#[tokio::test]
async fn reopen_writes_the_access_log_to_a_new_file_after_logrotate_moved_it() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(
        &[&a],
        "access_log: {format: json, path: '{{dir}}/access.log'}\n",
        None,
    ));
    let (file, moved) = (p.dir.join("access.log"), p.dir.join("access.log.1"));
    get_ok(p.addr, "/before").await;
    wait_logged(&file, "\"uri\":\"/before\"").await;
    // logrotate's rename: the proxy's open file goes with it
    std::fs::rename(&file, &moved).expect("rotate");
    get_ok(p.addr, "/moved").await;
    wait_logged(&moved, "\"uri\":\"/moved\"").await;

    let config = p.config.display().to_string();
    let (code, out) = crate::support::proxy::run_cli(&["-s", "reopen", "-c", &config]);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().contains("access log: reopened") {
        assert!(Instant::now() < deadline, "not reopened:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get_ok(p.addr, "/after").await;
    wait_logged(&file, "\"uri\":\"/after\"").await;
    let count = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(
        (count(&file), count(&moved)),
        (1, 2),
        "lines in the new and the moved file"
    );
}

/// A reload applies the access log's settings: it turns it on (JSON to a file), moves it to
/// another file in another format, and turns it off; a path that cannot be opened refuses
/// the reload, naming it, and the log goes on as it was; a reload that fails after opening
/// a new file removes the file it made.
#[tokio::test]
async fn a_reload_turns_the_access_log_on_changes_it_and_turns_it_off() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(&[&a], "", None));
    let first = std::fs::read_to_string(&p.config).expect("read the config");
    let config = p.config.display().to_string();
    let reload_with = |extra: String| {
        std::fs::write(&p.config, format!("{first}{extra}")).expect("write");
        crate::support::proxy::run_cli(&["-s", "reload", "-c", &config])
    };
    let (json, combined) = (p.dir.join("access.log"), p.dir.join("other.log"));
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();

    get_ok(p.addr, "/off").await;
    let (code, out) = reload_with(format!(
        "access_log: {{format: json, path: '{}'}}\n",
        json.display()
    ));
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/json").await;
    wait_logged(&json, "\"uri\":\"/json\"").await;

    let (code, out) = reload_with(format!(
        "access_log: {{format: combined, path: '{}'}}\n",
        combined.display()
    ));
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/combined").await;
    wait_logged(&combined, "\"GET /combined HTTP/1.1\" 200").await;

    let (code, out) = reload_with("access_log: {path: /nonexistent-dir/x.log}\n".into());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("access_log.path") && out.contains("/nonexistent-dir/x.log"),
        "{out}"
    );
    get_ok(p.addr, "/still").await;
    wait_logged(&combined, "\"GET /still HTTP/1.1\" 200").await;

    // a reload that fails after opening a new file (here at an admin address in use)
    // leaves no file behind
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let third = p.dir.join("third.log");
    let (code, out) = reload_with(format!(
        "access_log: {{path: '{}'}}\nadmin: {{address: '{}'}}\n",
        third.display(),
        taken.local_addr().expect("addr")
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.address"), "{out}");
    assert!(
        !third.exists(),
        "the failed reload left {} behind",
        third.display()
    );

    let (code, out) = reload_with(String::new());
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/quiet").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (j, c) = (read(&json), read(&combined));
    assert!(
        !j.contains("/off") && !c.contains("/off"),
        "logged while off"
    );
    assert!(
        !j.contains("/quiet") && !c.contains("/quiet"),
        "logged after off"
    );
    assert_eq!((j.lines().count(), c.lines().count()), (1, 2), "{j}\n{c}");
}

#[tokio::test]
async fn access_log_combined_to_stdout() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(&[&a], "access_log: {format: combined}\n", None));
    assert_eq!(
        client::get(p.addr, "/c", &[]).await.expect("resp").status,
        200
    );
    assert_eq!(
        client::get(p.addr, "/nope", &[("Host", "h")])
            .await
            .expect("resp")
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stdout().lines().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no access log lines:\n{}",
            p.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = p.stdout();
    // Each request logs when it is done, from the thread that served it: on a busy machine
    // the second request can be logged before the first, so the line is found by content.
    let l = out
        .lines()
        .find(|l| l.contains("\"GET /c "))
        .expect("a line for /c");
    assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
    assert!(l.contains("\"GET /c HTTP/1.1\" 200 5 "), "{l}");
    for field in [
        "route=routes[0]",
        "upstream=app",
        &format!("backend={}", a.addr),
        "duration=",
        "upstream_connect=",
        "cache=-",
    ] {
        assert!(l.contains(field), "{field} missing in {l}");
    }
}

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

/// The systemd unit and the config it expects (conf/ops.yaml) agree: the unit finds the main
/// process through the pid file the config writes, and both paths are in the unit's
/// RuntimeDirectory (the only writable run directory under ProtectSystem=strict). Its reload
/// is the config reload in place, and it documents `-s upgrade` for a new binary.
#[test]
fn systemd_unit_and_ops_config_agree_on_paths() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("conf/stepstone.service")).expect("unit");
    let ops = std::fs::read_to_string(root.join("conf/ops.yaml")).expect("ops.yaml");
    let directive = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in the unit"))
            .to_string()
    };
    let key = |k: &str| {
        ops.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{k}:")))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {k} in conf/ops.yaml"))
            .to_string()
    };
    assert_eq!(key("pid_file"), directive("PIDFile"));
    let run_dir = format!("/run/{}/", directive("RuntimeDirectory"));
    assert!(key("pid_file").starts_with(&run_dir), "{run_dir}");
    assert!(key("upgrade_sock").starts_with(&run_dir), "{run_dir}");
    // reload = config reload in place, on the file the service runs; the binary upgrade is
    // the documented command of its own, on the same file
    let conf = directive("ExecStart")
        .split_once(" -c ")
        .map(|(_, c)| c.trim().to_string())
        .expect("ExecStart has -c CONFIG");
    assert_eq!(
        directive("ExecReload"),
        format!("/usr/local/bin/stepstone -s reload -c {conf}")
    );
    assert!(
        unit.contains(&format!("#   stepstone -s upgrade -c {conf}\n")),
        "the unit's header documents the binary upgrade"
    );
}

// ---- container ----

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).expect("Dockerfile")
}

/// The JSON-array argument of an instruction, e.g. `CMD ["-c", "x"]`.
fn exec_form(df: &str, instr: &str) -> Vec<String> {
    let line = df
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{instr} ")))
        .unwrap_or_else(|| panic!("no {instr} in the Dockerfile"));
    serde_json::from_str(line[instr.len()..].trim()).expect("exec form")
}

#[test]
fn dockerfile_build_command_is_valid_for_this_tree() {
    let df = dockerfile();
    // The final build step: scripts/build-pgo by default, a plain cargo build with PGO=0; both
    // leave the binary where the runtime stage copies it from.
    let pgo = df
        .lines()
        .find(|l| l.contains("scripts/build-pgo --out "))
        .expect("a scripts/build-pgo step");
    let out = pgo
        .split_whitespace()
        .skip_while(|a| *a != "--out")
        .nth(1)
        .expect("--out PATH")
        .trim_end_matches(';');
    assert!(
        df.contains(&format!("COPY --from=build {out} ")),
        "the runtime stage does not copy {out}"
    );
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-pgo"),
    )
    .expect("read scripts/build-pgo");
    assert!(
        script.contains("cargo build --release --locked --bin stepstone"),
        "scripts/build-pgo builds without --locked --bin stepstone"
    );
    let run = df
        .lines()
        .find(|l| l.contains("else cargo build"))
        .expect("the PGO=0 cargo build step");
    assert!(
        run.contains(out),
        "the PGO=0 build does not leave {out}: {run}"
    );
    let args: Vec<&str> = run
        .split_whitespace()
        .skip_while(|a| *a != "cargo")
        .collect();
    assert_eq!(args[..2], ["cargo", "build"]);
    assert!(args.contains(&"--locked"), "{run}");
    let bin = args
        .iter()
        .position(|a| *a == "--bin")
        .map(|i| args[i + 1])
        .expect("--bin");
    // What `--locked --bin X` needs, without a release build on this shared machine: the lock
    // file is current and the binary target exists.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --locked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let bins: Vec<&str> = meta["packages"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(bins.contains(&bin), "--bin {bin} not among {bins:?}");
    // Everything the build stage copies exists.
    // (A source named by a build argument, the host-built binary, is not in the tree.)
    for l in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from") && !l.contains('$'))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
            assert!(p.exists(), "COPY source {src} missing");
        }
    }
}

#[tokio::test]
async fn container_image_config_starts_and_passes_its_healthcheck() {
    let df = dockerfile();
    let entry = exec_form(&df, "ENTRYPOINT");
    assert_eq!(entry, ["/usr/local/bin/stepstone"]);
    let cmd = exec_form(&df, "CMD");
    let conf_in_image = cmd
        .iter()
        .position(|a| a == "-c")
        .map(|i| cmd[i + 1].clone())
        .expect("CMD -c");
    // COPY conf/container.yaml <conf_in_image>
    let copy = df
        .lines()
        .find(|l| l.starts_with("COPY conf/") && l.trim_end().ends_with(&conf_in_image))
        .expect("the image config is copied from conf/");
    let src = copy.split_whitespace().nth(1).expect("source");
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    assert!(df.contains("USER stepstone"), "runs as non-root");
    let hc = df
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(hc.contains("$STEPSTONE_HEALTH_URL"), "{hc}");
    assert!(
        df.contains("ENV STEPSTONE_HEALTH_URL=http://127.0.0.1:9900/healthz"),
        "the health check's default URL is the admin /healthz"
    );

    // The image's command line, on the image's config: -t first.
    let mut args: Vec<String> = cmd.clone();
    let ci = args.iter().position(|a| a == "-c").expect("-c") + 1;
    args[ci] = conf.display().to_string();
    let mut t_args = vec!["-t".to_string()];
    t_args.extend(args.iter().cloned());
    let out = Command::new(bin()).args(&t_args).output().expect("run -t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Then a real start of a copy with loopback ports and a scratch run dir, and the
    // HEALTHCHECK's own command against it.
    let text = std::fs::read_to_string(&conf).expect("read container.yaml");
    let origin = OriginBuilder::new("app").run().await;
    let web = free_port();
    let admin = free_port();
    let dir = scratch_dir("container");
    let rendered = text
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{web}"))
        .replace("0.0.0.0:9900", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:9001", &origin.addr.to_string())
        .replace("/run/stepstone", &dir.display().to_string());
    assert_ne!(rendered, text);
    let p = Proxy::start_in(dir, &rendered, vec![web, admin], &[]).expect("the image config runs");
    assert_eq!(
        client::get(p.addr, "/", &[]).await.expect("proxied").status,
        200
    );
    let check = hc
        .split_once("CMD")
        .map(|(_, c)| c.trim().to_string())
        .expect("HEALTHCHECK CMD");
    // The image's ENV default, with the test's admin port.
    let url = df
        .lines()
        .find_map(|l| l.strip_prefix("ENV STEPSTONE_HEALTH_URL="))
        .expect("ENV STEPSTONE_HEALTH_URL")
        .replace("9900", &admin.to_string());
    let st = Command::new("sh")
        .arg("-c")
        .arg(&check)
        .env("STEPSTONE_HEALTH_URL", url)
        .status()
        .expect("sh");
    assert!(st.success(), "HEALTHCHECK failed: {check}");
}

// ---- status page in a real browser ----

/// The headless browser the status-page test drives. Missing is a failure, not a skip: a
/// test that passes without a browser would pass with a broken status page too.
fn chromium() -> String {
    const CANDIDATES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
    CANDIDATES
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(String::from)
        .unwrap_or_else(|| {
            panic!(
                "chromium is missing: none of {CANDIDATES:?} runs; `scripts/setup --test` installs chromium"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let browser = chromium();
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&base(&[&a, &b], &admin_block(), None));
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut c = Conn::connect(addr).await.expect("connect");
        while !s2.load(SeqCst) {
            let _ = c.get("/", &[]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let r = admin_post(
        &p,
        &format!("/upstreams/app/backends/{}/drain", b.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);

    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", p.port(1));
    let shot = p.dir.join("status.png");
    let profile = p.dir.join("chromium-profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1000,420",
        "--virtual-time-budget=4000",
    ];
    let run = |extra: &str, out_dom: bool| {
        let mut c = Command::new(&browser);
        c.args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        if !out_dom {
            c.stdout(Stdio::null());
        }
        c.output()
    };
    // Blocking is fine here: the load task has the runtime's other worker.
    let dom = run("--dump-dom", true).expect("run chromium");
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    let out = run(&format!("--screenshot={}", shot.display()), false).expect("screenshot");
    stop.store(true, SeqCst);
    let _ = load.await;
    assert!(out.status.success(), "chromium --screenshot failed");
    assert!(
        html.contains(&a.addr.to_string()),
        "backend a missing:\n{html}"
    );
    assert!(
        html.contains(&b.addr.to_string()),
        "backend b missing:\n{html}"
    );
    assert!(html.contains("● up"), "health not shown:\n{html}");
    assert!(html.contains(">drained<"), "drain not shown:\n{html}");
    assert!(html.contains("upstream app"), "{html}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(keep) = std::env::var("STEPSTONE_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
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

#[tokio::test]
async fn sighup_without_tls_listeners_does_not_kill_the_proxy() {
    let a = OriginBuilder::new("a").run().await;
    let mut p = Proxy::start(&base(&[&a], "", None));
    p.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        p.child.try_wait().expect("wait").is_none(),
        "the proxy exited on SIGHUP:\n{}",
        p.log()
    );
    let r = client::get(p.addr, "/", &[]).await.expect("still serving");
    assert_eq!(r.status, 200);
}
