//! Reload in place (SIGHUP, `-s reload`, `POST /api/reload`) and the runtime API for
//! backends, against the real binary.

mod admin;
mod backends;
mod listeners;
mod routing;

use crate::support::proxy::run_cli;
use crate::support::{client, free_port, scratch_dir, Conn, Origin, Proxy};
use std::net::SocketAddr;
use std::path::Path;
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

fn reload_cli(config: &Path) -> (i32, String) {
    run_cli(&["-s", "reload", "-c", &config.display().to_string()])
}

fn threads(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or_default()
        .trim()
        .to_string()
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
