//! The shared cache behind the forward proxy: keyed by origin, Vary and no-store, and never a
//! blocked response.

use super::{absolute, curl, fwd, proxy_url, raw_exchange, scripted, FILTER, OPEN};
use crate::support::{OriginBuilder, Proxy};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// The value of header `name` in curl's `-D -` output (the last response's).
fn curl_header(out: &str, name: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

const CACHED: &str = "cache: {enabled: true, purge_from: [127.0.0.1/32]}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hit_through_the_forward_proxy_keyed_by_origin() {
    let cc = [("Cache-Control", "max-age=60")];
    let a = OriginBuilder::new("a")
        .on("/same", &cc, "from-a")
        .run()
        .await;
    let b = OriginBuilder::new("b")
        .on("/same", &cc, "from-b")
        .run()
        .await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{CACHED}")));
    let px = proxy_url(&p);
    let url_a = format!("http://{}/same", a.addr);
    let url_b = format!("http://{}/same", b.addr);

    // curl -x twice: one origin request, the second answer is a HIT
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (code, out, err) = curl(&["-x", &px, "-D", "-", &url_a]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.ends_with("from-a"), "{out}");
        statuses.push(curl_header(&out, "x-cache-status"));
    }
    assert_eq!(
        statuses,
        [Some("MISS".to_string()), Some("HIT".to_string())],
        "cache status of two GETs"
    );
    assert_eq!(a.requests(), 1, "the second GET was answered by the proxy");

    // Same path on another origin: its own entry, never origin a's body.
    for want in ["MISS", "HIT"] {
        let r = absolute(&p, "GET", &url_b, &[]).await;
        assert_eq!(r.text(), "from-b");
        assert_eq!(r.header("x-cache-status"), Some(want));
    }
    let r = absolute(&p, "GET", &url_a, &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache-status")),
        ("from-a", Some("HIT"))
    );
    assert_eq!((a.requests(), b.requests()), (1, 1));

    // PURGE of an absolute URL drops only that origin's entry.
    let r = absolute(&p, "PURGE", &url_a, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = absolute(&p, "GET", &url_a, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    let r = absolute(&p, "GET", &url_b, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!((a.requests(), b.requests()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_cache_honours_vary_and_no_store() {
    use crate::support::origin::PathResp;
    let o = OriginBuilder::new("o")
        .on_resp(
            "/vary",
            PathResp {
                status: 200,
                headers: vec![
                    ("Cache-Control".into(), "max-age=60".into()),
                    ("Vary".into(), "Accept-Language".into()),
                ],
                body: b"lang=".to_vec(),
                echo_header: Some("accept-language".into()),
                ..Default::default()
            },
        )
        .on("/nostore", &[("Cache-Control", "no-store")], "secret")
        .on("/fresh", &[("Cache-Control", "max-age=60")], "fresh")
        .run()
        .await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{CACHED}")));
    let vary = format!("http://{}/vary", o.addr);
    for (lang, want) in [("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")] {
        let r = absolute(&p, "GET", &vary, &[("Accept-Language", lang)]).await;
        assert_eq!(r.text(), format!("lang={lang}"), "variant for {lang}");
        assert_eq!(r.header("x-cache-status"), Some(want), "{lang}");
    }
    assert_eq!(o.requests(), 2, "one origin request per variant");

    // A response that says no-store reaches the origin every time.
    let ns = format!("http://{}/nostore", o.addr);
    for _ in 0..2 {
        let r = absolute(&p, "GET", &ns, &[]).await;
        assert_eq!(r.text(), "secret");
        assert_ne!(r.header("x-cache-status"), Some("HIT"));
    }
    assert_eq!(o.requests(), 4);

    // A client's no-store keeps the exchange out of the cache as well.
    let fresh = format!("http://{}/fresh", o.addr);
    let r = absolute(&p, "GET", &fresh, &[("Cache-Control", "no-store")]).await;
    assert_eq!(r.header("x-cache-status"), Some("BYPASS"));
    let r = absolute(&p, "GET", &fresh, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert_eq!(o.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_responses_are_never_stored_or_served_from_cache() {
    let exe = OriginBuilder::new("exe")
        .header("Content-Type", "application/x-msdownload")
        .header("Cache-Control", "max-age=60")
        .body("MZ...")
        .run()
        .await;
    // a cacheable response whose body pattern arrives after the head was sent
    let body = b"hello forbidden-word and the rest";
    let (bad, bad_hits) = scripted(vec![
        (
            Duration::ZERO,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\nhello ",
                body.len()
            )
            .into_bytes(),
        ),
        (Duration::from_millis(300), body[6..].to_vec()),
    ])
    .await;
    let fine = OriginBuilder::new("fine")
        .on("/ok", &[("Cache-Control", "max-age=60")], "clean")
        .run()
        .await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}\n{CACHED}")));

    for _ in 0..2 {
        let r = absolute(&p, "GET", &format!("http://{}/setup", exe.addr), &[]).await;
        assert_eq!(r.status, 403);
        assert!(!r.text().contains("MZ"), "{}", r.text());
    }
    assert_eq!(
        exe.requests(),
        2,
        "a blocked content type was served from cache"
    );

    for _ in 0..2 {
        let raw = raw_exchange(&p, &format!("http://{bad}/page")).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("forbidden-word"), "{text}");
        assert!(!text.contains("HIT"), "{text}");
    }
    assert_eq!(
        bad_hits.load(SeqCst),
        2,
        "a cut response was stored and served again"
    );

    // the filter does not stop clean responses from being cached
    let ok = format!("http://{}/ok", fine.addr);
    let r = absolute(&p, "GET", &ok, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    let r = absolute(&p, "GET", &ok, &[]).await;
    assert_eq!(
        (r.text().as_str(), r.header("x-cache-status")),
        ("clean", Some("HIT"))
    );
    assert_eq!(fine.requests(), 1);
}
