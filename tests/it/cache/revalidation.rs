//! Conditional requests and stale entries: 304 from the cache, revalidation, stale-if-error
//! and stale-while-revalidate.

use super::{config, get, status, ON};
use crate::support::{OriginBuilder, Proxy};
use std::time::{Duration, Instant};

/// Wait until `f` holds, or panic after a generous bound.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_get_is_answered_304_from_the_cache() {
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let o = OriginBuilder::new("o")
        .on(
            "/c",
            &[
                ("Cache-Control", "max-age=60"),
                ("ETag", "\"v1\""),
                ("Last-Modified", lm),
            ],
            "body",
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    assert_eq!(status(&get(p.addr, "/c", &[]).await), "MISS");
    let r = get(p.addr, "/c", &[("If-None-Match", "\"v1\"")]).await;
    assert_eq!((r.status, status(&r), r.body.len()), (304, "HIT", 0));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = get(p.addr, "/c", &[("If-Modified-Since", lm)]).await;
    assert_eq!((r.status, status(&r)), (304, "HIT"));
    let r = get(p.addr, "/c", &[("If-None-Match", "\"v0\"")]).await;
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "HIT", "body")
    );
    assert_eq!(o.requests(), 1, "conditionals were answered by the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let o = OriginBuilder::new("o")
        .on(
            "/r",
            &[("Cache-Control", "max-age=1"), ("ETag", "\"r1\"")],
            "stored",
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    assert_eq!(status(&get(p.addr, "/r", &[]).await), "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(p.addr, "/r", &[]).await;
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "REVALIDATED", "stored")
    );
    assert_eq!(o.requests(), 2);
    let last = o.last().expect("revalidation request");
    assert_eq!(last.header("if-none-match"), Some("\"r1\""));
    let r = get(p.addr, "/r", &[]).await;
    assert_eq!(status(&r), "HIT", "the 304 made the entry fresh again");
    assert_eq!(o.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_answers_while_the_origin_is_down() {
    let o = OriginBuilder::new("o")
        .on(
            "/s",
            &[("Cache-Control", "max-age=1, stale-if-error=60")],
            "old",
        )
        .on("/plain", &[("Cache-Control", "max-age=1")], "plain")
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    assert_eq!(status(&get(p.addr, "/s", &[]).await), "MISS");
    assert_eq!(status(&get(p.addr, "/plain", &[]).await), "MISS");
    o.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(p.addr, "/s", &[]).await;
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "STALE", "old")
    );
    let r = get(p.addr, "/plain", &[]).await;
    assert_eq!(r.status, 502, "without stale-if-error the error shows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let o = OriginBuilder::new("o")
        .on(
            "/w",
            &[("Cache-Control", "max-age=1, stale-while-revalidate=60")],
            "w",
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    assert_eq!(get(p.addr, "/w", &[]).await.header("x-seq"), Some("1"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(p.addr, "/w", &[]).await;
    assert_eq!((status(&r), r.header("x-seq")), ("STALE", Some("1")));
    eventually("the background refresh", || o.requests() == 2).await;
    let addr = p.addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(addr, "/w", &[]).await;
        if status(&r) == "HIT" {
            assert_eq!(r.header("x-seq"), Some("2"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refreshed entry never served: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.requests(), 2);
}
