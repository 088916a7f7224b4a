//! The production daemon: zero-drop graceful upgrades, SIGTERM drain, the admin listener
//! (metrics, status, token, drain), the access log, DNS discovery, the status page in a real
//! headless browser, and the container image's build and run commands.

mod access_log;
mod admin;
mod deploy;
mod dns;
mod signals;
mod status_page;
mod upgrade;

use crate::support::proxy::bin;
use crate::support::{client, Conn, Origin, Proxy};
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
