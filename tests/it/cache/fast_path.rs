//! Fresh hits served by the HTTP/1 fast path: byte-exact repeats, expiry, conditional and
//! range requests, HEAD, and Vary and chunked entries.

use super::{big_body, cache_fallbacks, config, status, two_object_origin, ON};
use crate::support::origin::PathResp;
use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::time::Duration;

// ---- fresh hits served by the HTTP/1 fast path ----
//
// A fresh, non-variant, unconditional GET/HEAD hit on a cached route is answered by the fast
// path (src/http/fast.rs) from the store; everything else still goes through Pingora. The
// fast path's own answers carry no `Connection: keep-alive` (Pingora's do), which these tests
// use to show which path answered.

/// The response's header fields minus the ones that legitimately differ between two
/// answers for one stored object.
fn stable_headers(r: &client::Response) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-cache-status" | "age" | "date" | "connection"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    h.sort();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_hits_on_one_keep_alive_connection_repeat_the_miss_exactly() {
    let big = big_body();
    let o = two_object_origin().await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let miss = c.get("/f", &[]).await.expect("miss");
    assert_eq!((miss.status, status(&miss)), (200, "MISS"));
    let before = cache_fallbacks(&p).await;
    for i in 0..2 {
        let hit = c.get("/f", &[]).await.expect("hit on the same connection");
        assert_eq!((hit.status, status(&hit)), (200, "HIT"), "request {i}");
        assert_eq!(hit.body, miss.body);
        assert_eq!(stable_headers(&hit), stable_headers(&miss));
        assert!(hit.header("age").is_some_and(|a| a.parse::<u64>().is_ok()));
        assert!(hit.header("date").is_some());
        assert_eq!(hit.header("connection"), Some("keep-alive"));
    }
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "answered by the lean engine"
    );
    assert_eq!(
        o.requests(),
        1,
        "one origin request for the miss, none for the hits"
    );

    // the same object through Pingora's hit path (a non-matching conditional goes there):
    // the same status, fields and body
    let general = c
        .get("/f", &[("If-None-Match", "\"other\"")])
        .await
        .expect("general-path hit");
    assert_eq!((general.status, status(&general)), (200, "HIT"));
    assert_eq!(general.header("connection"), Some("keep-alive"));
    let fast = c.get("/f", &[]).await.expect("fast hit");
    assert_eq!(stable_headers(&fast), stable_headers(&general));
    assert_eq!(fast.body, general.body);

    // a body larger than one buffer, twice on the connection
    assert_eq!(status(&c.get("/big", &[]).await.expect("miss")), "MISS");
    for _ in 0..2 {
        let r = c.get("/big", &[]).await.expect("big hit");
        assert_eq!((status(&r), r.body.len()), ("HIT", big.len()));
        assert!(r.body == big, "the large body is served intact");
        assert_eq!(r.header("content-length"), Some("100000"));
    }
    assert_eq!(o.requests(), 2);

    // a request that asks the cache not to store still bypasses it
    let r = c
        .get("/f", &[("Cache-Control", "no-store")])
        .await
        .expect("no-store");
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(o.requests(), 3);
    // and `Connection: close` is honoured on a fast hit
    let r = c.get("/f", &[("Connection", "close")]).await.expect("last");
    assert_eq!((status(&r), r.header("connection")), ("HIT", Some("close")));
    assert!(c.closed_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_age_a_fast_path_entry_goes_back_to_the_origin() {
    let o = OriginBuilder::new("o")
        .on("/x", &[("Cache-Control", "max-age=1")], "x")
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    assert_eq!(status(&c.get("/x", &[]).await.expect("miss")), "MISS");
    let before = cache_fallbacks(&p).await;
    let r = c.get("/x", &[]).await.expect("hit");
    assert_eq!(status(&r), "HIT");
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "answered by the lean engine"
    );
    assert_eq!(o.requests(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = c.get("/x", &[]).await.expect("expired");
    assert_eq!((status(&r), r.header("x-seq")), ("EXPIRED", Some("2")));
    assert_eq!(o.requests(), 2);
    let before = cache_fallbacks(&p).await;
    let r = c.get("/x", &[]).await.expect("hit again");
    assert_eq!((status(&r), r.header("x-seq")), ("HIT", Some("2")));
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "answered by the lean engine"
    );
    assert_eq!(o.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_range_requests_on_a_fast_path_entry_keep_their_answers() {
    let o = OriginBuilder::new("o")
        .on(
            "/c",
            &[("Cache-Control", "max-age=60"), ("ETag", "\"c1\"")],
            "0123456789",
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    assert_eq!(status(&c.get("/c", &[]).await.expect("miss")), "MISS");
    assert_eq!(status(&c.get("/c", &[]).await.expect("fast hit")), "HIT");
    let r = c
        .get("/c", &[("If-None-Match", "\"c1\"")])
        .await
        .expect("conditional");
    assert_eq!((r.status, status(&r), r.body.len()), (304, "HIT", 0));
    assert_eq!(r.header("etag"), Some("\"c1\""));
    let r = c.get("/c", &[("Range", "bytes=2-4")]).await.expect("range");
    assert_eq!((r.status, r.text().as_str()), (206, "234"));
    // the connection still carries plain hits afterwards
    let r = c.get("/c", &[]).await.expect("hit");
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "HIT", "0123456789")
    );
    assert_eq!(o.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_a_fast_path_entry_has_the_headers_and_no_body() {
    let o = OriginBuilder::new("o")
        .on(
            "/h",
            &[("Cache-Control", "max-age=60"), ("Content-Type", "text/x")],
            "head me",
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let get = c.get("/h", &[]).await.expect("miss");
    assert_eq!(status(&get), "MISS");
    let before = cache_fallbacks(&p).await;
    let r = c.request("HEAD", "/h", &[], b"").await.expect("head");
    assert_eq!((r.status, status(&r), r.body.len()), (200, "HIT", 0));
    assert_eq!(r.header("content-length"), Some("7"));
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "answered by the lean engine"
    );
    assert_eq!(stable_headers(&r), stable_headers(&get));
    // no stray body bytes: the next response on the connection parses
    let r = c.get("/h", &[]).await.expect("get after head");
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "head me"));
    assert_eq!(o.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_and_chunked_entries_still_answer_correctly_on_one_connection() {
    let o = OriginBuilder::new("o")
        .on_resp(
            "/v",
            PathResp {
                status: 200,
                headers: vec![
                    ("Cache-Control".into(), "max-age=60".into()),
                    ("Vary".into(), "Accept-Language".into()),
                ],
                body: b"lang=".to_vec(),
                echo_header: Some("accept-language".into()),
                chunked: false,
            },
        )
        .on_resp(
            "/chunked",
            PathResp {
                status: 200,
                headers: vec![("Cache-Control".into(), "max-age=60".into())],
                body: b"chunky".to_vec(),
                echo_header: None,
                chunked: true,
            },
        )
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    let r = c.get("/v", &en).await.expect("en");
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=en"));
    let r = c.get("/v", &fr).await.expect("fr");
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=fr"));
    let r = c.get("/v", &[]).await.expect("none");
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang="));
    for _ in 0..2 {
        for (h, want) in [
            (&en[..], "lang=en"),
            (&fr[..], "lang=fr"),
            (&[][..], "lang="),
        ] {
            let r = c.get("/v", h).await.expect("variant");
            assert_eq!((status(&r), r.text().as_str()), ("HIT", want));
        }
    }
    assert_eq!(o.requests(), 3);

    // stored without a Content-Length: served as the general path frames it
    assert_eq!(status(&c.get("/chunked", &[]).await.expect("miss")), "MISS");
    for _ in 0..2 {
        let r = c.get("/chunked", &[]).await.expect("hit");
        assert_eq!((status(&r), r.text().as_str()), ("HIT", "chunky"));
    }
    assert_eq!(o.requests(), 4);
}

/// A hit larger than the head's buffer (here 24 KiB) is written from the store together with
/// its head, in one `sendmsg`: on loopback the client takes it in one data segment. Written
/// head first, then body, it took two (a segment of a few hundred bytes for the head), and a
/// 64 KiB hit took three; `benches/load`'s cache hit /c/64k went from 0.95 of nginx's
/// throughput to 1.07-1.12 with this (benches/RESULTS.md, session 57).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_hit_leaves_with_its_head_in_one_segment() {
    let body: Vec<u8> = (0..24 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = OriginBuilder::new("o")
        .on("/mid", &[("Cache-Control", "max-age=60")], body.clone())
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    assert_eq!(status(&c.get("/mid", &[]).await.expect("miss")), "MISS");
    let before = cache_fallbacks(&p).await;
    let mut segments = Vec::new();
    for _ in 0..3 {
        let s0 = crate::acks::tcp_info(&c.stream).tcpi_data_segs_in;
        let r = c.get("/mid", &[]).await.expect("hit");
        assert_eq!((status(&r), r.body == body), ("HIT", true));
        segments.push(crate::acks::tcp_info(&c.stream).tcpi_data_segs_in - s0);
    }
    assert_eq!(
        cache_fallbacks(&p).await,
        before,
        "answered by the lean engine"
    );
    assert_eq!(segments, [1, 1, 1], "data segments per hit");
}
