//! The open-file limit: a proxy started with a low soft limit (as a service manager may
//! start it) raises it at start and serves more connections than it started with.

use crate::support::{client, OriginBuilder, Proxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Soft and hard "Max open files" of a running process, from /proc.
fn limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// This process's hard limit, which the proxy inherits; the tests need room above `need`.
fn hard_limit(need: u64) -> u64 {
    let (_, hard) = limits(std::process::id());
    assert!(
        hard > need,
        "the hard open-file limit ({hard}) leaves no room to test raising a soft limit to it"
    );
    hard
}

/// The connect timeout is long: 300 backend connections opened at once, on a machine that
/// also runs the rest of the suite, once took longer than the default second (a 504), which
/// is not what these tests are about.
fn config(origin: std::net::SocketAddr, pingora: &str) -> String {
    format!(
        "{pingora}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
         upstreams:\n  - {{name: app, backends: [{{address: {origin}}}], connect_timeout: 10s}}\n\
         routes:\n  - {{listener: web, upstream: app}}\n"
    )
}

#[tokio::test]
async fn a_low_soft_limit_is_raised_to_the_hard_limit_at_start() {
    let hard = hard_limit(1024);
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start_with_nofile(&config(o.addr, ""), 256);
    assert_eq!(limits(p.child.id()), (hard, hard));
    assert!(
        p.log()
            .contains(&format!("open-file limit raised from 256 to {hard}")),
        "{}",
        p.log()
    );
}

#[tokio::test]
async fn max_open_files_sets_the_soft_limit() {
    let hard = hard_limit(1000);
    let o = OriginBuilder::new("a").run().await;
    let dir = crate::support::scratch_dir("fdlimit");
    let pingora = format!(
        "pingora:\n  threads: 1\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  max_open_files: 1000\n",
        d = dir.display()
    );
    let p = Proxy::start_with_nofile(&config(o.addr, &pingora), 256);
    assert_eq!(limits(p.child.id()), (1000, hard));
}

/// 300 keep-alive clients at once, each answered, through a proxy started with a soft limit
/// of 128 descriptors: without the raise, accept fails (EMFILE) before the 128th.
#[tokio::test]
async fn serves_more_connections_than_its_starting_limit() {
    hard_limit(1024);
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start_with_nofile(&config(o.addr, ""), 128);
    assert_eq!(
        client::get(p.addr, "/", &[]).await.expect("first").status,
        200
    );
    let mut conns = Vec::new();
    for i in 0..300 {
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(p.addr))
            .await
            .unwrap_or_else(|_| panic!("connect {i}: timed out"))
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("connection {i} of 300 got no answer"))
                .unwrap_or_else(|e| panic!("read {i}: {e}"));
            assert!(n > 0, "connection {i} of 300 closed without an answer");
            got.extend_from_slice(&b[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "connection {i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
}
