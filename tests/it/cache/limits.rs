//! Purge (allowed from the configured CIDR only) and the store's limits: `max_size` and
//! `max_object_size`.

use super::{config, get, status};
use crate::support::origin::PathResp;
use crate::support::{Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_allowed_from_the_configured_cidr_and_refused_from_others() {
    let o = OriginBuilder::new("o")
        .on("/*", &[("Cache-Control", "max-age=60")], "x")
        .run()
        .await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n  - {{name: other, address: 127.0.0.1:{{{{port1}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app, cache: {{enabled: true, purge_from: ['127.0.0.0/8', '::1']}}}}\n  - {{listener: other, upstream: app, cache: {{enabled: true, purge_from: [10.0.0.0/8]}}}}\n",
        o.addr
    );
    let p = Proxy::start(&cfg);
    let other = p.addr_of(1);
    let purge = |addr: SocketAddr, path: &'static str| async move {
        Conn::connect(addr)
            .await
            .expect("connect")
            .request("PURGE", path, &[], b"")
            .await
            .expect("purge")
    };

    assert_eq!(status(&get(p.addr, "/p", &[]).await), "MISS");
    assert_eq!(status(&get(p.addr, "/p", &[]).await), "HIT");
    let r = purge(p.addr, "/p").await;
    assert_eq!((r.status, r.header("x-purged")), (200, Some("1")));
    assert_eq!(status(&get(p.addr, "/p", &[]).await), "MISS", "purged");
    assert_eq!(purge(p.addr, "/never-stored").await.status, 404);

    assert_eq!(status(&get(other, "/p", &[]).await), "MISS");
    let r = purge(other, "/p").await;
    assert_eq!(r.status, 403, "127.0.0.1 is outside 10.0.0.0/8");
    assert_eq!(
        status(&get(other, "/p", &[]).await),
        "HIT",
        "refused purge removed nothing"
    );

    // prefix purge
    for path in ["/img/1", "/img/2", "/css/1"] {
        assert_eq!(status(&get(p.addr, path, &[]).await), "MISS");
    }
    let r = purge(p.addr, "/img/*").await;
    assert_eq!((r.status, r.header("x-purged")), (200, Some("2")));
    assert_eq!(status(&get(p.addr, "/img/1", &[]).await), "MISS");
    assert_eq!(status(&get(p.addr, "/css/1", &[]).await), "HIT");
    assert!(
        p.log().contains("PURGE /p refused"),
        "a refused purge is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_four_times_max_size_keeps_the_store_within_max_size() {
    const MAX: u64 = 16 << 20;
    const OBJ: usize = 64 << 10;
    let o = OriginBuilder::new("o")
        .on(
            "/fill/*",
            &[("Cache-Control", "max-age=600")],
            vec![b'f'; OBJ],
        )
        .run()
        .await;
    let p = Proxy::start(&config(
        &o,
        &format!(
            "{{enabled: true, max_size: {MAX}, max_object_size: 1MiB, purge_from: [127.0.0.1/32]}}"
        ),
    ));
    let pid = p.child.id();
    let before = crate::support::proxy::rss_kib(pid);
    let n = (4 * MAX as usize) / OBJ;
    let mut c = Conn::connect(p.addr).await.expect("connect");
    for i in 0..n {
        if i % 500 == 499 {
            // a connection carries at most `keepalive_requests` (1000) requests
            c = Conn::connect(p.addr).await.expect("reconnect");
        }
        let r = c.get(&format!("/fill/{i}"), &[]).await.expect("fill");
        assert_eq!((r.status, r.body.len()), (200, OBJ));
    }
    assert_eq!(o.requests(), n);
    // the most recent objects are still there
    let r = c.get(&format!("/fill/{}", n - 1), &[]).await.expect("get");
    assert_eq!(status(&r), "HIT");

    let mut st = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let r = c
            .request("PURGE", "/not-there", &[], b"")
            .await
            .expect("purge");
        let num = |h: &str| -> u64 { r.header(h).and_then(|v| v.parse().ok()).expect(h) };
        let (acc, stored, items) = (
            num("x-cache-size"),
            num("x-cache-stored-size"),
            num("x-cache-items"),
        );
        assert!(acc <= MAX, "accounted {acc} > max_size {MAX}");
        st = Some((acc, stored, items));
        if stored <= MAX {
            break;
        }
        // evictions are purged from the store asynchronously
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (acc, stored, items) = st.expect("stats");
    assert!(stored <= MAX, "stored {stored} > max_size {MAX}");
    assert!(
        items as usize >= n / 8,
        "the store is used, not emptied: {items} items"
    );
    let after = crate::support::proxy::rss_kib(pid);
    eprintln!(
        "cache fill: {n} x {OBJ} B = {} MiB through a {} MiB store: accounted {acc} B, stored {stored} B in {items} items; RSS {before} KiB before, {after} KiB after",
        (n * OBJ) >> 20,
        MAX >> 20
    );
    assert!(
        after - before.min(after) < 3 * MAX / 1024,
        "RSS grew by {} KiB for a {} KiB store",
        after - before,
        MAX / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_max_object_size_are_proxied_but_not_stored() {
    const BIG: usize = 100 << 10;
    let mk = |chunked| PathResp {
        status: 200,
        headers: vec![("Cache-Control".into(), "max-age=60".into())],
        body: vec![b'b'; BIG],
        echo_header: None,
        chunked,
    };
    let o = OriginBuilder::new("o")
        .on_resp("/big", mk(false))
        .on_resp("/bigchunked", mk(true))
        .on(
            "/small",
            &[("Cache-Control", "max-age=60")],
            vec![b's'; 10 << 10],
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, "{enabled: true, max_object_size: 64KiB}"));
    let count = |path: &str| o.recorded().iter().filter(|r| r.path == path).count();
    for path in ["/big", "/bigchunked"] {
        for _ in 0..3 {
            let r = get(p.addr, path, &[]).await;
            assert_eq!(
                (r.status, r.body.len()),
                (200, BIG),
                "{path} is proxied in full"
            );
            assert_ne!(status(&r), "HIT");
        }
        assert_eq!(count(path), 3, "{path} is never stored");
    }
    assert_eq!(status(&get(p.addr, "/small", &[]).await), "MISS");
    assert_eq!(status(&get(p.addr, "/small", &[]).await), "HIT");
}
