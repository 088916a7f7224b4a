//! Unit tests of the cache policy (`super`), kept apart so the policy reads at a glance.
use super::*;
use pingora_cache::key::CacheHashKey;

fn spec(default_ttl: u64) -> CacheSpec {
    CacheSpec {
        max_object_size: 1 << 20,
        default_ttl: Duration::from_secs(default_ttl),
        status_header: http::HeaderName::from_static("x-cache-status"),
        purge_from: vec![],
        targeted_header: None,
    }
}

fn get(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
    r.insert_header("host", "Example.COM:80").unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn fresh_secs(c: RespCacheable) -> Option<i64> {
    match c {
        RespCacheable::Cacheable(m) => Some(
            m.fresh_until()
                .duration_since(SystemTime::now())
                .map(|d| d.as_secs_f64().round() as i64)
                .unwrap_or(0),
        ),
        RespCacheable::Uncacheable(_) => None,
    }
}

fn decide(req: &[(&str, &str)], status: u16, h: &[(&str, &str)], ttl: u64) -> Option<i64> {
    fresh_secs(response_cacheable(&get(req), &resp(status, h), &spec(ttl)))
}

#[test]
fn key_covers_scheme_host_path_and_query() {
    assert_eq!(
        key_text("web", false, &get(&[]), None),
        "web http://example.com/a?b=1"
    );
    assert_eq!(
        key_text("web", true, &get(&[]), None),
        "web https://example.com:80/a?b=1"
    );
}

#[test]
fn origin_form_parts_give_the_general_key() {
    for (target, host, tls) in [
        ("/a?b=1", "Example.COM:80", false),
        ("/a?b=1", "Example.COM:80", true),
        ("/", "h.test:443", true),
        ("/x/%20y?q=a&r=b", " Mixed.Case:8080 ", false),
        ("/p", "[::1]:80", false),
    ] {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        r.insert_header("host", host).unwrap();
        assert_eq!(
            cache_key("web", tls, &r).primary_bin(),
            cache_key_origin_form("web", tls, host, target).primary_bin(),
            "{target} {host} {tls}"
        );
        assert_eq!(
            key_text("web", tls, &r, None),
            key_text_parts("web", tls, None, Some(host), target)
        );
    }
}

#[test]
fn freshness_sources() {
    assert_eq!(
        decide(&[], 200, &[("cache-control", "max-age=60")], 0),
        Some(60)
    );
    assert_eq!(
        decide(&[], 200, &[("cache-control", "max-age=60, s-maxage=30")], 0),
        Some(30)
    );
    assert_eq!(
        decide(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("age", "20")],
            0
        ),
        Some(40)
    );
    assert_eq!(
        decide(
            &[],
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
            ],
            0
        ),
        Some(60)
    );
    assert_eq!(decide(&[], 200, &[("expires", "garbage")], 0), Some(0));
    assert_eq!(
        decide(&[], 200, &[("cache-control", "no-cache")], 0),
        Some(0)
    );
}

#[test]
fn default_ttl_only_without_freshness_and_for_default_statuses() {
    assert_eq!(decide(&[], 200, &[], 0), None);
    assert_eq!(decide(&[], 200, &[], 30), Some(30));
    assert_eq!(decide(&[], 404, &[], 30), Some(30));
    assert_eq!(decide(&[], 302, &[], 30), None);
    assert_eq!(decide(&[], 500, &[], 30), None);
    assert_eq!(
        decide(&[], 200, &[("cache-control", "max-age=5")], 30),
        Some(5)
    );
}

#[test]
fn never_stored() {
    let h = [("cache-control", "max-age=60")];
    assert_eq!(decide(&[], 206, &h, 0), None);
    assert_eq!(
        decide(&[], 200, &[("cache-control", "no-store, max-age=60")], 0),
        None
    );
    assert_eq!(
        decide(&[], 200, &[("cache-control", "private, max-age=60")], 0),
        None
    );
    assert_eq!(
        decide(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            0
        ),
        None
    );
    assert_eq!(decide(&[("authorization", "x")], 200, &h, 0), None);
    assert_eq!(
        decide(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            0
        ),
        None
    );
}

#[test]
fn public_allows_authorization_and_cookies_but_drops_the_cookie() {
    let h = [
        ("cache-control", "public, max-age=60"),
        ("set-cookie", "a=b"),
    ];
    let c = response_cacheable(&get(&[("authorization", "x")]), &resp(200, &h), &spec(0));
    let RespCacheable::Cacheable(m) = c else {
        panic!("should be stored")
    };
    assert!(m.headers().get("set-cookie").is_none());
}

fn stored(c: RespCacheable) -> CacheMeta {
    match c {
        RespCacheable::Cacheable(m) => m,
        RespCacheable::Uncacheable(r) => panic!("not stored: {r:?}"),
    }
}

#[test]
fn received_age_is_digits_only() {
    let age = |v: &[&str]| {
        let h: Vec<(&str, &str)> = v.iter().map(|v| ("age", *v)).collect();
        received_age(&resp(200, &h)).map(|d| d.as_secs())
    };
    assert_eq!(age(&["100"]), Some(100));
    assert_eq!(age(&[" 7 "]), Some(7));
    assert_eq!(age(&["99999999999999999999999"]), Some(1 << 31));
    for bad in ["10abc", "-1", "1.5", "", "0x10"] {
        assert_eq!(age(&[bad]), None, "{bad:?}");
    }
    assert_eq!(age(&["1", "2"]), None, "several values");
    assert_eq!(age(&[]), None);
    // an invalid Age neither shortens nor lengthens freshness
    assert_eq!(
        decide(
            &[],
            200,
            &[("cache-control", "max-age=5"), ("age", "10abc")],
            0
        ),
        Some(5)
    );
}

#[test]
fn the_received_age_is_where_the_entry_s_age_starts() {
    let m = stored(response_cacheable(
        &get(&[]),
        &resp(200, &[("cache-control", "max-age=3600"), ("age", "100")]),
        &spec(0),
    ));
    assert_eq!(m.age().as_secs(), 100);
    assert_eq!(
        m.fresh_sec(),
        3600,
        "the lifetime counts from the same epoch"
    );
    assert!(m.headers().get("age").is_none(), "Age is generated per hit");
    let m = stored(response_cacheable(
        &get(&[]),
        &resp(200, &[("cache-control", "max-age=60")]),
        &spec(0),
    ));
    assert_eq!(m.age().as_secs(), 0);
}

#[test]
fn targeted_fields_govern_ahead_of_cache_control() {
    fn h(cc: &'static str, cdn: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![("cache-control", cc), ("cdn-cache-control", cdn)]
    }
    assert_eq!(
        decide(&[], 200, &h("public, max-age=60", "no-store"), 0),
        None
    );
    assert_eq!(decide(&[], 200, &h("max-age=60", "private"), 0), None);
    assert_eq!(decide(&[], 200, &h("no-store", "max-age=30"), 0), Some(30));
    assert_eq!(
        decide(&[], 200, &h("private", "s-maxage=20, max-age=30"), 0),
        Some(20)
    );
    assert_eq!(decide(&[], 200, &h("max-age=60", "no-cache"), 0), Some(0));
    // an empty targeted field does not apply
    assert_eq!(decide(&[], 200, &h("max-age=60", " "), 0), Some(60));
    // a targeted field that governs makes Expires irrelevant as well
    let exp = [
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ("cdn-cache-control", "public"),
    ];
    assert_eq!(decide(&[], 200, &exp, 0), None);
    assert_eq!(decide(&[], 200, &exp, 10), Some(10));

    let mut sp = spec(0);
    sp.targeted_header = Some(http::HeaderName::from_static("stepstone-cache-control"));
    let with = |h: &[(&str, &str)]| fresh_secs(response_cacheable(&get(&[]), &resp(200, h), &sp));
    let mut t = h("max-age=60", "max-age=60");
    t.push(("stepstone-cache-control", "no-store"));
    assert_eq!(with(&t), None);
    let mut t = h("no-store", "no-store");
    t.push(("stepstone-cache-control", "max-age=40"));
    assert_eq!(with(&t), Some(40));
    // without the route's field, CDN-Cache-Control still governs
    assert_eq!(with(&h("max-age=60", "max-age=10")), Some(10));
    // the client still gets Cache-Control as sent
    let m = stored(response_cacheable(&get(&[]), &resp(200, &t), &sp));
    assert_eq!(m.headers().get("cache-control").unwrap(), "no-store");
}

#[test]
fn hop_by_hop_and_connection_named_fields_are_not_stored() {
    let m = stored(response_cacheable(
        &get(&[]),
        &resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-private, close"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x-sum"),
                ("upgrade", "foo"),
                ("proxy-authenticate", "Basic"),
                ("proxy-authorization", "Basic x"),
                ("x-kept", "1"),
            ],
        ),
        &spec(0),
    ));
    let names: Vec<&str> = m.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["cache-control", "x-kept"]);
}

#[test]
fn a_304_updates_every_stored_field_but_the_body_s() {
    let stored = resp(
        200,
        &[
            ("content-length", "5"),
            ("content-encoding", "gzip"),
            ("etag", "\"a\""),
            ("x-version", "1"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("x-same", "s"),
            ("vary", "accept"),
        ],
    );
    let nm = resp(
        304,
        &[
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("etag", "\"b\""),
            ("x-version", "2"),
            ("x-multi", "c"),
            ("x-new", "n"),
            ("vary", "x"),
            ("set-cookie", "s=1"),
        ],
    );
    let m = merge_not_modified(&stored, &nm);
    let h = |n: &str| {
        m.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(m.status.as_u16(), 200);
    assert_eq!(h("content-length"), ["5"]);
    assert_eq!(h("content-encoding"), ["gzip"]);
    assert_eq!(h("vary"), ["accept"]);
    assert_eq!(h("etag"), ["\"b\""]);
    assert_eq!(h("x-version"), ["2"]);
    assert_eq!(h("x-multi"), ["c"]);
    assert_eq!(h("x-same"), ["s"]);
    assert_eq!(h("x-new"), ["n"]);
    assert!(h("set-cookie").is_empty());
    // a 304's cookie does not make the merged head uncacheable
    let fresh = merge_not_modified(
        &stored,
        &resp(
            304,
            &[("cache-control", "max-age=9"), ("set-cookie", "s=1")],
        ),
    );
    assert_eq!(
        fresh_secs(response_cacheable(&get(&[]), &fresh, &spec(0))),
        Some(9)
    );
}

#[test]
fn stale_windows() {
    let c = response_cacheable(
        &get(&[]),
        &resp(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=5, stale-if-error=60",
            )],
        ),
        &spec(0),
    );
    let RespCacheable::Cacheable(m) = c else {
        panic!()
    };
    assert_eq!(m.stale_while_revalidate_sec(), 5);
    assert_eq!(m.stale_if_error_sec(), 60);
    let c = response_cacheable(
        &get(&[]),
        &resp(
            200,
            &[(
                "cache-control",
                "max-age=1, must-revalidate, stale-if-error=60",
            )],
        ),
        &spec(0),
    );
    let RespCacheable::Cacheable(m) = c else {
        panic!()
    };
    assert_eq!(m.stale_if_error_sec(), 0);
}

#[test]
fn variance_follows_vary() {
    let RespCacheable::Cacheable(m) = response_cacheable(
        &get(&[]),
        &resp(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        ),
        &spec(0),
    ) else {
        panic!()
    };
    let en = variance(&m, &get(&[("accept-language", "en")]));
    let fr = variance(&m, &get(&[("accept-language", "fr")]));
    assert!(en.is_some());
    assert_ne!(en, fr);
    assert_eq!(
        en,
        variance(&m, &get(&[("accept-language", "en"), ("x", "y")]))
    );
}

#[test]
fn absolute_form_targets_key_on_their_own_scheme_host_and_port() {
    let abs = |target: &[u8], host: Option<&str>| {
        let mut r = RequestHeader::build("GET", target, None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        key_text("fwd", false, &r, None)
    };
    assert_eq!(
        abs(b"http://Origin.Test:8080/p?q=1", Some("origin.test:8080")),
        "fwd http://origin.test:8080/p?q=1"
    );
    // the default port is dropped, as for origin-form keys
    assert_eq!(abs(b"http://o.test:80/p", None), "fwd http://o.test/p");
    // two origins, same path: different keys, whatever Host says
    assert_ne!(
        abs(b"http://127.0.0.1:1001/same", Some("x.test")),
        abs(b"http://127.0.0.1:1002/same", Some("x.test"))
    );
}
