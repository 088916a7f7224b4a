//! Signals: the SIGTERM drain (in-flight requests finish, keep-alive connections close, the
//! admin listener answers 503), and SIGHUP without TLS listeners.

use super::{admin_block, admin_get, base, pingora_block, wait_exit};
use crate::support::proxy::render;
use crate::support::{client, scratch_dir, Conn, OriginBuilder, Proxy};
use std::time::{Duration, Instant};

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
