//! tcp listeners across reloads and the SIGTERM drain.

use super::{ask, backends, closed_within, echoing, WAIT};
use crate::support::tcp::{echo_round, TcpBackend};
use crate::support::{admin_reload, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tcp listener added by a reload relays to its own, new upstream; removed by the next, it
/// refuses new connections while a connection it relays goes on. A kept tcp listener whose
/// upstream changed other than in its backends starts anew on the new pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_tcp_listener() {
    let a = TcpBackend::start("a", false).await;
    let b = TcpBackend::start("b", false).await;
    let p = Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}, token: tok}}\nlisteners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
        backends(&[(&a, 1)])
    ));
    let admin = p.addr_of(1);
    let first = std::fs::read_to_string(&p.config).expect("read the config");
    let at = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let added = format!(
        "{first}  - name: v\n    backends: [{}]\n",
        backends(&[(&b, 1)])
    )
    .replace(
        "upstreams:\n",
        &format!("  - {{name: t2, address: {at}, protocol: tcp, upstream: v}}\nupstreams:\n"),
    );
    assert_eq!(
        ask(at, b"", "NAME").await,
        None,
        "something listens at {at}"
    );

    std::fs::write(&p.config, &added).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ask(at, b"", "NAME").await.as_deref(), Some("b"));
    assert_eq!(ask(p.addr, b"", "NAME").await.as_deref(), Some("a"));

    // a held connection through it outlives its removal
    let mut held = TcpStream::connect(at).await.expect("connect");
    held.write_all(b"HOLD\n").await.expect("hold");
    let mut greeting = [0u8; 2];
    held.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"b\n");
    std::fs::write(&p.config, &first).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(at).await.is_ok() {
        assert!(Instant::now() < deadline, "a removed tcp listener accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!closed_within(&mut held, Duration::from_millis(300)).await);
    assert_eq!(b.open(), 1, "the held connection is still relayed");
    assert_eq!(ask(p.addr, b"", "NAME").await.as_deref(), Some("a"));

    // the kept listener's upstream changed in more than its backends: the listener starts
    // anew on the new pool, on its own socket; a connection it relays goes on
    let mut held = TcpStream::connect(p.addr).await.expect("connect");
    held.write_all(b"HOLD\n").await.expect("hold");
    held.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"a\n");
    let changed = first
        .replace("  - name: u\n", "  - name: u\n    selection: random\n")
        .replace(&backends(&[(&a, 1)]), &backends(&[(&b, 1)]));
    std::fs::write(&p.config, changed).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ask(p.addr, b"", "NAME").await.as_deref(), Some("b"));
    assert!(!closed_within(&mut held, Duration::from_millis(300)).await);
    assert_eq!(a.open(), 1, "the held connection is still relayed");
}

/// Once the process starts draining (SIGTERM), a tunnel that has gone quiet for a second is
/// closed rather than waited for, one still moving bytes keeps going until it goes quiet
/// too, and the process then exits without waiting out its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_quiet_tunnels_and_keeps_busy_ones_until_they_go_quiet() {
    let a = TcpBackend::start("a", false).await;
    let dir = crate::support::scratch_dir("l4-drain");
    let grace = 30;
    let (text, ports) = crate::support::proxy::render(
        &format!(
            "{}listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, idle_timeout: 60s}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
            crate::ops::pingora_block(&dir, grace),
            backends(&[(&a, 1)])
        ),
        &dir,
    );
    let mut p = Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut quiet = echoing(p.addr, b"q").await;
    let mut busy = echoing(p.addr, b"b").await;

    let t0 = Instant::now();
    p.signal(libc::SIGTERM);
    // the busy tunnel carries bytes every 200 ms for 2.5 s: never quiet for a second
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_millis(2500) {
        assert!(
            echo_round(&mut busy, b"x").await,
            "a busy tunnel was cut {:?} into the drain",
            t0.elapsed()
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rounds >= 5, "only {rounds} echo rounds during the drain");
    // the quiet one was closed meanwhile, long before the grace period
    assert!(
        closed_within(&mut quiet, Duration::from_secs(1)).await,
        "a quiet tunnel still open {:?} into the drain",
        t0.elapsed()
    );
    // and the busy one once it goes quiet
    assert!(
        closed_within(&mut busy, Duration::from_secs(5)).await,
        "a tunnel quiet since the drain began still open"
    );
    let st = crate::ops::wait_exit(&mut p, Duration::from_secs(10)).await;
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(grace / 2),
        "waited {:?} for tunnels (grace {grace}s)",
        t0.elapsed()
    );
}
