//! Absolute-form requests and what reaches the origin: pooled connections and their retry,
//! upgrades, the request edits a reverse listener makes, lengths, Max-Forwards, anonymity.

use super::{absolute, curl, fwd, proxy_url, scripted, OPEN};
use crate::support::{client, Conn, OriginBuilder, Proxy};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_get_reaches_origin_over_pooled_connections() {
    let o = OriginBuilder::new("origin-a").run().await;
    let p = Proxy::start(&fwd(OPEN));
    let url = format!("http://{}/hello?x=1", o.addr);
    let (code, out, err) = curl(&["-x", &proxy_url(&p), &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "origin-a");
    let r = o.last().expect("origin saw the request");
    assert_eq!(r.path, "/hello?x=1", "origin gets the origin-form target");
    assert_eq!(r.header("host"), Some(o.addr.to_string().as_str()));

    // keep-alive on both sides: three requests from two client connections reuse one
    // origin connection
    let before = o.connections();
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let host = o.addr.to_string();
    for _ in 0..2 {
        let r = c
            .get(&format!("http://{host}/again"), &[("Host", host.as_str())])
            .await
            .expect("response");
        assert_eq!(r.status, 200);
    }
    let r = absolute(&p, "GET", &format!("http://{host}/third"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        o.connections() - before <= 1,
        "upstream connections were not reused"
    );

    // an origin-form request is not a proxy request
    let r = client::get(p.addr, "/hello", &[("Host", host.as_str())])
        .await
        .expect("response");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("absolute URL"), "{}", r.text());
}

/// The forward proxy relays a WebSocket upgrade (absolute form): the origin's 101 and the
/// new protocol's bytes reach the client. An origin that switches protocols for a request
/// without one is broken (RFC 9110 §15.2.2): a 502, and none of its bytes are tunnelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_relayed_and_an_unasked_101_refused() {
    let (origin, seen) = scripted(vec![(
        Duration::ZERO,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nws-hello".to_vec(),
    )])
    .await;
    let p = Proxy::start(&fwd(OPEN));
    let exchange = |extra: &'static str| async move {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        let req = format!("GET http://{origin}/ws HTTP/1.1\r\nHost: {origin}\r\n{extra}\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // until the proxy closes, or the tunnel's bytes are in
        while !out.ends_with(b"ws-hello") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = exchange("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").await;
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.ends_with("ws-hello"), "{text}");
    let text = exchange("").await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(!text.contains("ws-hello"), "tunnelled: {text}");
    assert_eq!(seen.load(SeqCst), 2, "the origin saw both requests");
    assert!(
        p.log().contains("backend switched protocols (101)"),
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymity_standard_and_strict() {
    let o = OriginBuilder::new("anon").run().await;
    let cfg = "listeners:
  - name: standard
    address: 127.0.0.1:{{port}}
    protocol: http
    forward_proxy: {allow_private_destinations: true, access: [{action: allow}], anonymity: standard}
  - name: strict
    address: 127.0.0.1:{{port1}}
    protocol: http
    forward_proxy: {allow_private_destinations: true, access: [{action: allow}], anonymity: strict}
";
    let p = Proxy::start(cfg);
    let host = o.addr.to_string();
    let url = format!("http://{host}/anon");
    let sent = [
        ("Host", host.as_str()),
        ("X-Forwarded-For", "10.1.2.3"),
        ("Forwarded", "for=10.1.2.3"),
        ("Via", "1.1 client-side-proxy"),
        ("X-Real-IP", "10.1.2.3"),
        ("Proxy-Connection", "keep-alive"),
        ("User-Agent", "test-agent/1.0"),
        ("Referer", "http://secret.example/page"),
        ("From", "user@example.com"),
    ];
    let mut c = Conn::connect(p.addr).await.expect("connect");
    assert_eq!(
        c.request("GET", &url, &sent, b"")
            .await
            .expect("resp")
            .status,
        200
    );
    let rec = o.last().expect("recorded");
    for h in [
        "x-forwarded-for",
        "forwarded",
        "via",
        "x-real-ip",
        "proxy-connection",
    ] {
        assert!(rec.header(h).is_none(), "standard forwarded {h}: {rec:?}");
    }
    for (k, v) in &rec.headers {
        if k != "host" {
            assert!(
                !v.contains("127.0.0.1") && !v.contains("10.1.2.3"),
                "{k}: {v}"
            );
        }
    }
    assert_eq!(rec.header("user-agent"), Some("test-agent/1.0"));
    assert_eq!(rec.header("referer"), Some("http://secret.example/page"));

    let mut c = Conn::connect(p.addr_of(1)).await.expect("connect");
    assert_eq!(
        c.request("GET", &url, &sent, b"")
            .await
            .expect("resp")
            .status,
        200
    );
    let rec = o.last().expect("recorded");
    assert!(rec.header("referer").is_none(), "{rec:?}");
    assert!(rec.header("from").is_none(), "{rec:?}");
    assert!(rec.header("x-forwarded-for").is_none(), "{rec:?}");
    assert_ne!(rec.header("user-agent"), Some("test-agent/1.0"));
    assert!(rec.header("user-agent").is_some());
}

/// The forward proxy edits a request as a reverse listener does (one policy step,
/// `policy::edit::request`): the same request through each reaches the origin with the same
/// fields, but for what each announces (a reverse listener's X-Forwarded-Proto and -Host, the
/// forward proxy's Via) and the Host it names. Hop-by-hop and nominated fields go, the
/// X-Forwarded-For fields join into one chain, an underscored name is dropped, and an upgrade
/// other than WebSocket is relayed, on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_proxy_edits_requests_as_a_reverse_listener_does() {
    let o = OriginBuilder::new("same-edit").run().await;
    let cfg = format!(
        "listeners:
  - name: fwd
    address: 127.0.0.1:{{{{port}}}}
    protocol: http
    forward_proxy: {{allow_private_destinations: true, access: [{{action: allow}}], anonymity: 'off'}}
  - {{name: web, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}
upstreams:
  - {{name: app, backends: [{{address: '{}'}}]}}
routes:
  - {{listener: web, upstream: app}}
",
        o.addr
    );
    let p = Proxy::start(&cfg);
    let host = o.addr.to_string();
    let cases: [&[(&str, &str)]; 2] = [
        &[
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "hop-secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "gzip"),
            ("Trailer", "x-sum"),
            ("Proxy-Connection", "keep-alive"),
            ("X_Under", "1"),
            ("X-Forwarded-For", "10.1.1.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "10.2.2.2"),
            ("Via", "1.1 earlier"),
            ("Accept", "*/*"),
        ],
        &[("Connection", "Upgrade"), ("Upgrade", "foo/1")],
    ];
    // what only one side adds, or names differently by design
    let own = ["host", "via", "x-forwarded-proto", "x-forwarded-host"];
    let seen = |rec: crate::support::origin::Recorded| -> Vec<(String, String)> {
        rec.headers
            .into_iter()
            .filter(|(k, v)| !own.contains(&k.as_str()) || (k == "via" && v == "1.1 earlier"))
            .collect()
    };
    for fields in cases {
        let mut c = Conn::connect(p.addr).await.expect("connect forward");
        let mut h = vec![("Host", host.as_str())];
        h.extend_from_slice(fields);
        let r = c
            .request("GET", &format!("http://{host}/edit"), &h, b"")
            .await
            .expect("forward response");
        assert_eq!(r.status, 200);
        let fwd = o.last().expect("origin saw the forward request");
        let vias: Vec<&str> = fwd
            .headers
            .iter()
            .filter(|(k, _)| k == "via")
            .map(|(_, v)| v.as_str())
            .collect();
        let incoming = fields.iter().filter(|(k, _)| *k == "Via").map(|(_, v)| *v);
        let want: Vec<&str> = incoming.chain(["1.1 stepstone"]).collect();
        assert_eq!(
            vias, want,
            "the forward proxy's Via after the incoming ones"
        );
        let mut c = Conn::connect(p.addr_of(1)).await.expect("connect reverse");
        let r = c
            .request("GET", "/edit", &h, b"")
            .await
            .expect("reverse response");
        assert_eq!(r.status, 200);
        let rev = o.last().expect("origin saw the reverse request");
        let (fwd, rev) = (seen(fwd), seen(rev));
        assert_eq!(fwd, rev, "forward and reverse edits differ for {fields:?}");
        let names: Vec<&str> = fwd.iter().map(|(k, _)| k.as_str()).collect();
        for gone in [
            "x-private",
            "keep-alive",
            "te",
            "trailer",
            "proxy-connection",
            "x_under",
        ] {
            assert!(!names.contains(&gone), "{gone} reached the origin: {fwd:?}");
        }
        if fields.len() > 2 {
            assert!(
                fwd.contains(&(
                    "x-forwarded-for".into(),
                    "10.1.1.1, 10.2.2.2, 127.0.0.1".into()
                )),
                "{fwd:?}"
            );
        } else {
            assert!(fwd.contains(&("upgrade".into(), "foo/1".into())), "{fwd:?}");
        }
    }
}

/// A request body framed by a list of one repeated length (`Content-Length: 5, 5`, which
/// RFC 9110 §8.6 lets a recipient take as 5) reaches the origin as `Content-Length: 5`. The
/// forward proxy used to pass the list on as it came (found by
/// `differential_gen::generated_forward_requests_reach_the_origin_as_reverse_ones_do`): an
/// origin that does not read a list as a length took the request as bodiless, and the body
/// became the start of the next request on the pooled connection, another client's request
/// on a shared origin connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_list_reaches_the_origin_as_one_length_and_nothing_is_smuggled() {
    let origin = crate::support::scripted::Origin::start().await;
    let o = origin.addr;
    let p = Proxy::start(&fwd(&format!("{OPEN}\nanonymity: 'off'")));
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let two = format!(
        "POST http://{o}/echo HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5, 5\r\n\r\nGET /\
         GET http://{o}/after HTTP/1.1\r\nHost: {o}\r\n\r\n"
    );
    s.write_all(two.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(5).filter(|w| w == b"HTTP/").count() < 2 || !got.ends_with(b"hello") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.contains("\r\n\r\n5 bytes"),
        "the origin read the body: {text}"
    );
    let seen = origin.take();
    let what: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(what, [("POST", "/echo"), ("GET", "/after")], "{seen:?}");
    let length = seen[0].fields.iter().find(|(k, _)| k == "content-length");
    assert_eq!(length.map(|(_, v)| v.as_str()), Some("5"), "{seen:?}");
    assert_eq!(seen[0].body, b"GET /");
}

/// The forward proxy counts `Max-Forwards` down on TRACE and OPTIONS and answers a spent
/// one itself, as Squid does (RFC 9110 §7.6.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_is_counted_down_and_a_spent_count_answered() {
    let o = OriginBuilder::new("mf").run().await;
    let p = Proxy::start(&fwd(OPEN));
    let url = format!("http://{}/mf", o.addr);
    let r = absolute(&p, "OPTIONS", &url, &[("Max-Forwards", "0")]).await;
    assert_eq!(r.status, 200);
    assert!(o.last().is_none(), "a spent count reached the origin");
    let r = absolute(&p, "OPTIONS", &url, &[("Max-Forwards", "5")]).await;
    assert_eq!(r.status, 200);
    let seen = o.last().expect("forwarded");
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.header("max-forwards"), Some("4"));
    // the rules come first: a client they refuse gets no answer as the final recipient
    let closed = Proxy::start(&fwd(
        "allow_private_destinations: true\naccess: [{action: deny}]",
    ));
    let r = absolute(&closed, "OPTIONS", &url, &[("Max-Forwards", "0")]).await;
    assert_eq!(
        r.status, 403,
        "a spent count answered before the access rules"
    );
}

/// A pooled origin connection that the origin closed while the proxy held it (a keep-alive
/// timeout racing the next request) costs the client nothing: the request goes again to the
/// same address on a fresh connection, as on reverse routes. Before, the retry looked for
/// the next resolved address, found none and answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_origin_connection_is_retried_on_a_fresh_one() {
    // answers the first request of each connection; a second one on it gets the connection
    // closed unanswered
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = counted.fetch_add(1, SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                let mut answered = false;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..k]);
                    if !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    if answered {
                        return; // closed unanswered
                    }
                    answered = true;
                    got.clear();
                    let body = format!("conn {n}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let p = Proxy::start(&fwd(OPEN));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let url = format!("http://{origin}/x");
    for (i, want) in ["conn 1", "conn 2"].iter().enumerate() {
        let r = c
            .get(&url, &[("Host", origin.to_string().as_str())])
            .await
            .expect("response");
        assert_eq!(
            (r.status, r.text()),
            (200, want.to_string()),
            "request {i}: {}",
            p.log()
        );
    }
    assert_eq!(
        conns.load(SeqCst),
        2,
        "one fresh connection after the stale one"
    );
    assert!(
        p.log().contains("retrying on a fresh connection"),
        "{}",
        p.log()
    );
}
