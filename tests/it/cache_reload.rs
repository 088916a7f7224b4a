//! The cache across reloads: enabled, resized and disabled without an upgrade, against the
//! real binary. The store's figures come from a PURGE's answer (`x-cache-*`).

use crate::support::client::admin_as;
use crate::support::{free_port, scratch_dir, Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;

const TOKEN: &str = "cache-reload-t0ken";
/// Each object's body; 20 of them fill 640 KiB.
const OBJ: usize = 32 << 10;

fn text(web: u16, admin: u16, origin: SocketAddr, cache: Option<&str>) -> String {
    let cache = cache.map_or(String::new(), |c| format!(", cache: {c}"));
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{web}, protocol: http}}\n\
         admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}\n\
         upstreams:\n  - {{name: app, backends: [{{address: {origin}}}], retries: 0}}\n\
         routes:\n  - {{listener: web, upstream: app{cache}}}\n"
    )
}

async fn reload(p: &Proxy, admin: SocketAddr, text: &str) {
    std::fs::write(&p.config, text).expect("write the config");
    let r = admin_as(admin, "POST", "/api/reload", TOKEN).await;
    assert_eq!(r.status, 200, "reload: {}", r.text());
}

/// `x-cache-status` of a GET (`(none)` on a route without a cache).
async fn status(c: &mut Conn, path: &str) -> String {
    let r = c.get(path, &[]).await.expect("get");
    assert_eq!(r.status, 200, "{path}");
    r.header("x-cache-status").unwrap_or("(none)").to_string()
}

/// The store's (accounted bytes, stored bytes, items, limit).
async fn store(c: &mut Conn) -> (u64, u64, u64, u64) {
    let r = c
        .request("PURGE", "/not-there", &[], b"")
        .await
        .expect("purge");
    let num = |h: &str| -> u64 {
        r.header(h)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {h} on the PURGE answer: {}", r.text()))
    };
    (
        num("x-cache-size"),
        num("x-cache-stored-size"),
        num("x-cache-items"),
        num("x-cache-max-size"),
    )
}

/// A first cache enabled by a reload stores (no upgrade); a smaller `max_size` evicts
/// entries down to it during the reload, and a smaller `max_object_size` keeps larger
/// responses out from then on while what is stored stays served; a reload without any cache empties the store, and one that enables it again
/// starts from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_enables_resizes_and_disables_the_cache() {
    let o = OriginBuilder::new("o")
        .on(
            "/obj/*",
            &[("Cache-Control", "max-age=600")],
            vec![b'o'; OBJ],
        )
        .run()
        .await;
    let (web, admin) = (free_port(), free_port());
    let dir = scratch_dir("cache-reload");
    let p = Proxy::start_in(dir, &text(web, admin, o.addr, None), vec![web, admin], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let mut c = Conn::connect(([127, 0, 0, 1], web).into())
        .await
        .expect("connect");
    assert_eq!(status(&mut c, "/obj/0").await, "(none)");
    assert_eq!(status(&mut c, "/obj/0").await, "(none)");
    assert_eq!(o.requests(), 2, "no cache yet: both reached the origin");

    let on = |size: &str, obj: &str| {
        format!("{{enabled: true, max_size: {size}, max_object_size: {obj}, purge_from: [127.0.0.1/32]}}")
    };
    reload(
        &p,
        admin_addr,
        &text(web, admin, o.addr, Some(&on("1MiB", "64KiB"))),
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            status(&mut c, &format!("/obj/{i}")).await,
            "MISS",
            "/obj/{i}"
        );
    }
    for i in 0..20 {
        assert_eq!(
            status(&mut c, &format!("/obj/{i}")).await,
            "HIT",
            "/obj/{i}"
        );
    }
    let (acc, stored, items, limit) = store(&mut c).await;
    assert_eq!(items, 20);
    assert!(
        acc >= 20 * OBJ as u64 && stored >= 20 * OBJ as u64,
        "{acc} {stored}"
    );
    assert_eq!(limit, 1 << 20);

    reload(
        &p,
        admin_addr,
        &text(web, admin, o.addr, Some(&on("256KiB", "16KiB"))),
    )
    .await;
    let (acc, stored, items, limit) = store(&mut c).await;
    assert_eq!(limit, 256 << 10);
    assert!(acc <= 256 << 10, "accounted {acc} B over the new max_size");
    assert!(
        stored <= 256 << 10,
        "stored {stored} B over the new max_size"
    );
    assert!((1..10).contains(&items), "{items} entries left");
    // what is left is served from the store; the rest goes to the origin and, over the new
    // max_object_size, is not stored again
    let origin_before = o.requests();
    let mut hits = 0;
    for i in 0..20 {
        let path = format!("/obj/{i}");
        match status(&mut c, &path).await.as_str() {
            "HIT" => hits += 1,
            // the second is a BYPASS: the predictor remembers the key as too large
            "MISS" => assert_ne!(status(&mut c, &path).await, "HIT", "{path} stored again"),
            other => panic!("{path}: {other}"),
        }
    }
    assert_eq!(hits, items, "every entry left answers, and only those");
    assert_eq!(o.requests(), origin_before + 2 * (20 - hits) as usize);

    reload(&p, admin_addr, &text(web, admin, o.addr, None)).await;
    assert_eq!(status(&mut c, "/obj/19").await, "(none)");
    reload(
        &p,
        admin_addr,
        &text(web, admin, o.addr, Some(&on("1MiB", "64KiB"))),
    )
    .await;
    let (acc, stored, items, _) = store(&mut c).await;
    assert_eq!(
        (acc, stored, items),
        (0, 0, 0),
        "emptied while no cache was on"
    );
    assert_eq!(status(&mut c, "/obj/20").await, "MISS");
    assert_eq!(status(&mut c, "/obj/20").await, "HIT");
    let (_, _, items, _) = store(&mut c).await;
    assert_eq!(items, 1);
}
