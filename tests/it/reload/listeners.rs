//! Listeners across reloads: added, moved and removed, changed in place without losing a
//! connection, and a replacement that counts its predecessor's connections.

use super::{admin_call, body_of, refuses, route_to, two_upstreams, Setup};
use crate::support::{client, free_port, Conn, OriginBuilder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
