//! What is stored and served: a hit after a miss, expiry at max-age, what is never stored
//! (no-store, private, cookies, Authorization), Vary's variants, and one origin request for
//! many concurrent cold ones.

use super::{config, get, status, ON};
use crate::support::origin::PathResp;
use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_get_is_a_hit_and_the_origin_saw_one_request() {
    let o = OriginBuilder::new("o")
        .on("/a*", &[("Cache-Control", "max-age=60")], "hello")
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let r = get(p.addr, "/a", &[]).await;
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "MISS", "hello")
    );
    let r = get(p.addr, "/a", &[]).await;
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "HIT", "hello")
    );
    assert!(r.header("age").is_some(), "a hit carries Age");
    assert_eq!(o.requests(), 1);

    // HEAD is answered from the same entry, without a body
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c.request("HEAD", "/a", &[], b"").await.expect("head");
    assert_eq!((r.status, status(&r), r.body.len()), (200, "HIT", 0));

    // a hit drains the request body: the next request on the connection still works
    let r = c
        .request("GET", "/a", &[], b"some request body")
        .await
        .expect("get");
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "hello"));
    let r = c
        .get("/a", &[])
        .await
        .expect("keep-alive after a hit with a body");
    assert_eq!(status(&r), "HIT");
    assert_eq!(o.requests(), 1);

    // the key covers query and host, not the path alone
    let r = get(p.addr, "/a?x=1", &[]).await;
    assert_eq!(status(&r), "MISS", "the query is part of the key");
    let r = get(p.addr, "/a", &[("Host", "other.example")]).await;
    assert_eq!(status(&r), "MISS");
    assert_eq!(o.requests(), 3);

    // unsafe methods are not cached, and invalidate the URL
    let r = client::Conn::connect(p.addr)
        .await
        .expect("connect")
        .request("POST", "/a", &[], b"x")
        .await
        .expect("post");
    assert_eq!(status(&r), "BYPASS");
    let r = get(p.addr, "/a", &[]).await;
    assert_eq!(status(&r), "MISS", "POST invalidated the stored /a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_expires_after_max_age() {
    let o = OriginBuilder::new("o")
        .on("/e", &[("Cache-Control", "max-age=2")], "e")
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    assert_eq!(status(&get(p.addr, "/e", &[]).await), "MISS");
    assert_eq!(status(&get(p.addr, "/e", &[]).await), "HIT");
    assert_eq!(o.requests(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = get(p.addr, "/e", &[]).await;
    assert_eq!((status(&r), r.header("x-seq")), ("EXPIRED", Some("2")));
    assert_eq!(o.requests(), 2);
    let r = get(p.addr, "/e", &[]).await;
    assert_eq!((status(&r), r.header("x-seq")), ("HIT", Some("2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_cookies_and_authorization_are_not_stored() {
    let o = OriginBuilder::new("o")
        .on("/ns", &[("Cache-Control", "no-store, max-age=60")], "ns")
        .on("/priv", &[("Cache-Control", "private, max-age=60")], "p")
        .on(
            "/cookie",
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "s=1")],
            "c",
        )
        .on(
            "/pubcookie",
            &[
                ("Cache-Control", "public, max-age=60"),
                ("Set-Cookie", "s=1"),
            ],
            "pc",
        )
        .on("/auth", &[("Cache-Control", "max-age=60")], "a")
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let count = |path: &str| o.recorded().iter().filter(|r| r.path == path).count();
    for path in ["/ns", "/priv", "/cookie"] {
        for _ in 0..3 {
            let r = get(p.addr, path, &[]).await;
            assert_eq!(r.status, 200);
            assert_ne!(status(&r), "HIT", "{path} must not be stored");
        }
        assert_eq!(count(path), 3, "{path}: every request reached the origin");
    }
    for _ in 0..2 {
        let r = get(p.addr, "/auth", &[("Authorization", "Basic eDp5")]).await;
        assert_ne!(status(&r), "HIT");
    }
    assert_eq!(
        count("/auth"),
        2,
        "a request with Authorization is not stored"
    );

    let r = get(p.addr, "/pubcookie", &[]).await;
    assert_eq!((status(&r), r.header("set-cookie")), ("MISS", Some("s=1")));
    let r = get(p.addr, "/pubcookie", &[]).await;
    assert_eq!(status(&r), "HIT", "public overrides Set-Cookie");
    assert_eq!(
        r.header("set-cookie"),
        None,
        "a stored cookie is never replayed"
    );
    assert_eq!(count("/pubcookie"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_separate_variants() {
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
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    let r = get(p.addr, "/v", &en).await;
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=en"));
    let r = get(p.addr, "/v", &fr).await;
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=fr"));
    for _ in 0..2 {
        let r = get(p.addr, "/v", &en).await;
        assert_eq!((status(&r), r.text().as_str()), ("HIT", "lang=en"));
        let r = get(p.addr, "/v", &fr).await;
        assert_eq!((status(&r), r.text().as_str()), ("HIT", "lang=fr"));
    }
    assert_eq!(o.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_requests_send_one_to_the_origin() {
    let o = OriginBuilder::new("o")
        .delay(Duration::from_millis(300))
        .on("/hot", &[("Cache-Control", "max-age=60")], vec![b'h'; 4096])
        .run()
        .await;
    let p = Proxy::start(&config(&o, ON));
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(Conn::connect(p.addr).await.expect("connect"));
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.get("/hot", &[]).await.expect("response") }))
        .collect();
    let mut statuses = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!((r.status, r.body.len()), (200, 4096));
        *statuses.entry(status(&r).to_string()).or_default() += 1;
    }
    assert_eq!(o.requests(), 1, "collapsed forwarding: {statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
}
