//! Listening sockets across upgrades and reloads. One socket per worker thread when each
//! thread runs its own runtime (`work_stealing: false`), plaintext and TLS: every socket of
//! the group is accepted on, and a graceful upgrade hands all of them over to a process that
//! accepts on each; a listener that a reload or an upgrade drops has every socket closed.

use crate::ops::{base, load_task, pingora_block, spawn_upgrade, wait_exit, Tally};
use crate::support::proxy::{render, run_cli, send_signal};
use crate::support::{client, scratch_dir, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// Listening TCP sockets on `port` in this network namespace (`/proc/net/tcp`, state 0A).
fn listening(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
        .count()
}

/// 64 new connections at once, one request each, every one answered within 5 s. The kernel
/// spreads new connections over the group's sockets by hash: a socket no loop accepts on
/// would leave about half of them unanswered.
async fn fresh_connections_all_answered(addr: SocketAddr, when: &str) {
    fresh_all_answered(addr, false, when).await
}

/// The same with a TLS handshake first (the listener's certificate names `a.test`).
async fn fresh_tls_connections_all_answered(addr: SocketAddr, when: &str) {
    fresh_all_answered(addr, true, when).await
}

async fn fresh_all_answered(addr: SocketAddr, tls: bool, when: &str) {
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(async move {
                let status = async move {
                    if tls {
                        let r = crate::support::quic::tls_get(addr, "a.test", "/").await;
                        let code = r.split_whitespace().nth(1).and_then(|c| c.parse().ok());
                        code.ok_or(r)
                    } else {
                        client::get(addr, "/", &[])
                            .await
                            .map(|r| r.status)
                            .map_err(|e| e.to_string())
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), status).await
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(Ok(200))) => answered += 1,
            Ok(Ok(Ok(status))) => panic!("{when}: status {status}"),
            Ok(Ok(Err(e))) => panic!("{when}: {e}"),
            Ok(Err(_)) => {}
            Err(e) => panic!("{when}: the client failed: {e}"),
        }
    }
    assert_eq!(answered, 64, "{when}: connections left unanswered");
}

/// Start a proxy on `yaml` (a template) and check that its first listener has a socket per
/// thread.
fn start_sharded(dir: std::path::PathBuf, yaml: &str) -> Proxy {
    let (text, ports) = render(yaml, &dir);
    let p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    assert_eq!(listening(p.addr.port()), 2, "{}", p.log());
    assert!(
        p.log().contains("(2 sockets, one per thread)"),
        "{}",
        p.log()
    );
    p
}

/// `pingora_block` with each thread on a runtime of its own (and so a socket each).
fn no_steal(dir: &std::path::Path) -> String {
    format!("{}  work_stealing: false\n", pingora_block(dir, 2))
}

/// Wait up to `within` until `port` has `n` listening sockets.
async fn wait_listening(port: u16, n: usize, within: Duration, p: &Proxy) {
    let deadline = std::time::Instant::now() + within;
    while listening(port) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sockets listen on port {port}, not {n}\n{}",
            listening(port),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upgrade `first` to a new process with its config file as it now is, and wait until the old
/// one has exited cleanly: the new process, which must have taken the sockets over.
async fn upgrade(first: &mut Proxy) -> Proxy {
    let new = spawn_upgrade(first, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(first.child.id(), libc::SIGQUIT);
    let st = wait_exit(first, Duration::from_secs(60)).await;
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\n{}",
        first.log()
    );
    let log = new_log(&new);
    assert!(
        log.contains("Bootstrap done") && !log.contains("starting normally"),
        "the new process did not take the sockets over:\n{log}"
    );
    new
}

/// The log of the process [`upgrade`] started.
fn new_log(new: &Proxy) -> String {
    std::fs::read_to_string(new.dir.join("stderr-1.log")).unwrap_or_default()
}

/// `text` without the `extra` listener and its route.
fn without_extra(text: &str) -> String {
    let mut t = text
        .lines()
        .filter(|l| !l.contains("extra"))
        .collect::<Vec<_>>()
        .join("\n");
    t.push('\n');
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_thread_accepts_on_its_own_socket_and_an_upgrade_hands_every_one_over() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("shards");
    let yaml = base(&[&origin], "", Some(&no_steal(&dir)));
    let mut first = start_sharded(dir, &yaml);
    let addr = first.addr;
    fresh_connections_all_answered(addr, "before the upgrade").await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(load_task(addr, i % 2 == 0, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = upgrade(&mut first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    let log = new_log(&new);
    assert!(log.contains("(2 sockets, one per thread)"), "{log}");
    let (ok, failed, reset) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
    );
    assert_eq!(
        (failed, reset),
        (0, 0),
        "requests failed during the upgrade"
    );
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(listening(addr.port()), 2, "{log}");
    fresh_connections_all_answered(addr, "after the upgrade").await;
}

/// A config with `web` and, when `extra`, a second plain listener on `{{port1}}`.
fn two_listeners(origin: SocketAddr, pingora: &str, extra: bool) -> String {
    let mut t = format!(
        "{pingora}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n"
    );
    if extra {
        t.push_str("  - {name: extra, address: 127.0.0.1:{{port1}}, protocol: http}\n");
    }
    t.push_str(&format!(
        "upstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n"
    ));
    if extra {
        t.push_str("  - {listener: extra, upstream: app}\n");
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_removed_by_a_reload_closes_every_socket_of_its_group() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("shards-reload");
    let (text, ports) = render(&two_listeners(origin.addr, &no_steal(&dir), true), &dir);
    let p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let extra: SocketAddr = ([127, 0, 0, 1], p.ports[1]).into();
    wait_listening(extra.port(), 2, Duration::from_secs(10), &p).await;
    fresh_connections_all_answered(extra, "the second listener").await;

    std::fs::write(&p.config, without_extra(&text)).expect("write");
    let (code, out) = run_cli(&["-s", "reload", "-c", &p.config.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    wait_listening(extra.port(), 0, Duration::from_secs(5), &p).await;
    assert_eq!(listening(p.addr.port()), 2, "{}", p.log());
    fresh_connections_all_answered(p.addr, "the listener that stays").await;
}

/// An upgrade whose configuration no longer has a listener: the new process closes the
/// sockets it inherited for it, so the address refuses connections once the old process is
/// gone, instead of completing handshakes that nothing will ever accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_an_upgrade_drops_is_closed_rather_than_left_unaccepted() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("shards-upgrade-drop");
    let (text, ports) = render(&two_listeners(origin.addr, &no_steal(&dir), true), &dir);
    let mut first = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let extra: SocketAddr = ([127, 0, 0, 1], first.ports[1]).into();
    wait_listening(extra.port(), 2, Duration::from_secs(10), &first).await;

    std::fs::write(&first.config, without_extra(&text)).expect("write");
    let new = upgrade(&mut first).await;
    let log = new_log(&new);
    assert_eq!(
        listening(extra.port()),
        0,
        "the dropped listener's sockets are still open\n{log}"
    );
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "the dropped listener's address accepts connections"
    );
    assert_eq!(listening(first.addr.port()), 2, "{log}");
    fresh_connections_all_answered(first.addr, "the listener that stays").await;
}

/// TLS listeners accept in the same loop as plaintext ones: a socket per thread, each one
/// accepted on with its handshakes done there, and all of them handed over by an upgrade.
/// (Through Pingora's listener an https listener had one socket whatever the thread count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_has_a_socket_per_thread_and_an_upgrade_hands_every_one_over() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("shards-tls");
    let ca = crate::support::pki::Ca::new("shards test CA");
    let (c, k) = ca.server("a.test", &["a.test"], 7).write(&dir, "a");
    let yaml = format!(
        "{}listeners:\n  - name: secure\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: https\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: secure, upstream: app}}\n",
        no_steal(&dir),
        c.display(),
        k.display(),
        origin.addr
    );
    let mut first = start_sharded(dir, &yaml);
    let addr = first.addr;
    fresh_tls_connections_all_answered(addr, "before the upgrade").await;

    let new = upgrade(&mut first).await;
    let log = new_log(&new);
    assert!(log.contains("(2 sockets, one per thread)"), "{log}");
    assert_eq!(listening(addr.port()), 2, "{log}");
    fresh_tls_connections_all_answered(addr, "after the upgrade").await;
}
