//! The https listener: the certificate chosen by SNI, ALPN h2 with many streams, client
//! certificates (mTLS), a forward proxy over TLS, and bad bytes on a TLS port.

use super::{
    a_test_proxy, app_upstream, connect, h1, h2_get, https_listener, origin_and_site, p, served,
    start, ClientOpts, Pki,
};
use crate::support::pki::Ca;
use crate::support::OriginBuilder;
use bytes::Bytes;
use openssl::ssl::SslVersion;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_certificate_unknown_gets_default_and_backend_sees_plain_http() {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new("tls-sni");
    let (dc, dk) = pki.server("default", "default.test", &["default.test"], 10);
    let (ac, ak) = pki.server("a", "a.test", &["a.test"], 11);
    let (bc, bk) = pki.server("b", "wild.b.test", &["*.b.test"], 12);
    let cfg = format!(
        "{}{}",
        https_listener(
            &[
                (&dc, &dk, &[]),
                (&ac, &ak, &["a.test"]),
                (&bc, &bk, &["'*.b.test'"]),
            ],
            ""
        ),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);

    let cases = [
        (Some("a.test"), "a.test"),
        (Some("A.Test"), "a.test"),
        (Some("x.b.test"), "wild.b.test"),
        (Some("unknown.test"), "default.test"),
        (None, "default.test"),
    ];
    for (sni, want) in cases {
        let o = ClientOpts {
            ca: Some(pki.ca_path.clone()),
            sni: sni.map(String::from),
            ..Default::default()
        };
        // Hostname verification is on whenever SNI is sent, so the unknown name is checked
        // against the default certificate only through its CN below.
        let o = if sni == Some("unknown.test") {
            ClientOpts { ca: None, ..o }
        } else {
            o
        };
        let mut s = connect(proxy.addr, &o)
            .await
            .unwrap_or_else(|e| panic!("sni {sni:?}: {e}"));
        assert_eq!(served(&s).0, want, "sni {sni:?}");
        let v = s.ssl().version_str();
        assert!(v == "TLSv1.3" || v == "TLSv1.2", "{v}");
        let r = h1(&mut s, sni.unwrap_or("default.test"), "/x")
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"app");
    }
    // The origin parsed every request as plain HTTP/1.1 and was told the client used https.
    let rec = origin.recorded();
    assert_eq!(rec.len(), 5);
    for r in &rec {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"));
        assert_eq!(r.path, "/x");
    }

    // TLS 1.1 and older are refused.
    let old = ClientOpts {
        max_version: Some(SslVersion::TLS1_1),
        ..ClientOpts::new(&pki.ca_path, "a.test")
    };
    assert!(connect(proxy.addr, &old).await.is_err(), "TLS 1.1 accepted");

    // curl agrees, with ALPN and the CA file.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert", &p(&pki.ca_path), "--resolve"])
        .arg(format!("a.test:{}:127.0.0.1", proxy.addr.port()))
        .args(["-w", "%{http_code} %{http_version}", "-o", "/dev/null"])
        .arg(format!("https://a.test:{}/", proxy.addr.port()))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_and_100_concurrent_streams_succeed() {
    let origin = OriginBuilder::new("app")
        .delay(Duration::from_millis(20))
        .run()
        .await;
    let pki = Pki::new("tls-h2");
    let (c, k) = pki.server("a", "a.test", &["a.test"], 20);
    let cfg = format!(
        "{}{}",
        https_listener(&[(&c, &k, &["a.test"])], ""),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);

    // A client that only speaks HTTP/1.1 gets HTTP/1.1.
    let s = connect(
        proxy.addr,
        &ClientOpts::new(&pki.ca_path, "a.test").alpn(&["http/1.1"]),
    )
    .await
    .expect("h1 handshake");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));

    let s = connect(
        proxy.addr,
        &ClientOpts::new(&pki.ca_path, "a.test").alpn(&["h2", "http/1.1"]),
    )
    .await
    .expect("h2 handshake");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            h2_get(c, &format!("https://a.test/s{i}")).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("task").expect("h2 stream");
        assert_eq!(status, 200);
        assert_eq!(body, b"app");
    }
    assert_eq!(origin.requests(), 100);
    let rec = origin.recorded();
    assert_eq!(rec.len(), 100);
    assert!(rec
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("https")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_is_required_when_client_ca_is_set() {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new("tls-mtls");
    let (c, k) = pki.server("a", "a.test", &["a.test"], 30);
    let (cc, ck) = pki.ca.client("client-1", 31).write(&pki.dir, "client");
    let rogue = Ca::new("Rogue CA");
    let (rc, rk) = rogue.client("client-x", 32).write(&pki.dir, "rogue");
    let cfg = format!(
        "{}{}",
        https_listener(
            &[(&c, &k, &["a.test"])],
            &format!("client_ca: {}", p(&pki.ca_path))
        ),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);

    // Valid client certificate: served.
    let mut s = connect(
        proxy.addr,
        &ClientOpts::new(&pki.ca_path, "a.test").client(&cc, &ck),
    )
    .await
    .expect("handshake with client cert");
    let r = h1(&mut s, "a.test", "/").await.expect("response");
    assert_eq!(r.status, 200);

    // No certificate, or one from another CA: the handshake fails and no request arrives.
    // With TLS 1.3 the client may finish its side before the server's verdict, so the
    // failure can surface on the first read instead.
    for o in [
        ClientOpts::new(&pki.ca_path, "a.test"),
        ClientOpts::new(&pki.ca_path, "a.test").client(&rc, &rk),
    ] {
        match connect(proxy.addr, &o).await {
            Err(_) => {}
            Ok(mut s) => {
                let r = h1(&mut s, "a.test", "/").await;
                assert!(r.is_err(), "request served without a valid client cert");
            }
        }
    }
    assert_eq!(origin.requests(), 1);
}

/// A forward proxy on an https listener (`curl --proxy https://...`): the client's requests
/// to the proxy, its Proxy-Authorization among them, travel over TLS. Absolute-form requests
/// and CONNECT tunnels are served inside the TLS connection, over HTTP/1.1 and, with ALPN
/// h2, over HTTP/2 (CONNECT per RFC 9113 8.5); the access rules apply as on http.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_proxy_on_an_https_listener_serves_requests_and_tunnels() {
    let (origin, pki, c, k) = origin_and_site("tls-forward", "proxy.test", 0x600).await;
    let port = origin.addr.port();
    let cfg = format!(
        "listeners:\n  - name: fwd\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: https\n    tls: {{certificates: [{{cert: {}, key: {}}}]}}\n    forward_proxy:\n      allow_private_destinations: true\n      connect_ports: [{port}]\n      access: [{{action: allow, ports: [{port}]}}]\n",
        p(&c),
        p(&k)
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let o = ClientOpts::new(&pki.ca_path, "proxy.test");
    let dest = origin.addr.to_string();

    // absolute-form, then a port the rules deny, on one TLS connection
    let mut s = connect(proxy.addr, &o).await.expect("TLS to the proxy");
    let r = h1(&mut s, &dest, &format!("http://{dest}/a"))
        .await
        .expect("GET");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"app"[..]),
        "{}",
        r.head
    );
    let r = h1(&mut s, "127.0.0.1:9", "http://127.0.0.1:9/")
        .await
        .expect("denied");
    assert_eq!(r.status, 403, "{}", r.head);

    // CONNECT, then HTTP inside the tunnel inside TLS
    let mut s = connect(proxy.addr, &o).await.expect("TLS to the proxy");
    s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .await
        .expect("CONNECT");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.expect("read"), 1, "closed: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let r = h1(&mut s, &dest, "/b").await.expect("GET in the tunnel");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));
    let paths: Vec<String> = origin.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/a", "/b"]);

    // HTTP/2: CONNECT as a stream, HTTP/1.1 inside it
    let s = connect(proxy.addr, &o.alpn(&["h2"]))
        .await
        .expect("TLS to the proxy");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(dest.as_str())
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("CONNECT stream");
    let resp = resp.await.expect("CONNECT answer");
    assert_eq!(resp.status(), 200);
    let req = format!("GET /c HTTP/1.1\r\nHost: {dest}\r\nConnection: close\r\n\r\n");
    send.send_data(Bytes::from(req), false).expect("send");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
        if got.ends_with(b"app") {
            break;
        }
    }
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("app"),
        "{got}"
    );
    assert_eq!(
        origin.recorded().last().map(|r| r.path.clone()).as_deref(),
        Some("/c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plain_http_on_a_tls_port_close_only_that_connection() {
    let (origin, pki, proxy) = a_test_proxy("tls-garbage", 60, "").await;
    let o = ClientOpts::new(&pki.ca_path, "a.test");
    let mut good = connect(proxy.addr, &o).await.expect("connect");
    assert_eq!(h1(&mut good, "a.test", "/").await.expect("r").status, 200);

    for bad in [
        // A complete record that claims to be a handshake but is not one.
        &b"\x16\x03\x01\x00\x05hello"[..],
        &b"\x00\xff\x13\x37 not tls at all"[..],
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
    ] {
        let mut raw = crate::support::Conn::connect(proxy.addr)
            .await
            .expect("connect");
        raw.send_raw(bad).await.expect("send");
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut b = [0u8; 1024];
            loop {
                match raw.stream.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "connection left open after {bad:?}");
        assert!(
            !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
            "answered in plaintext"
        );
    }
    // The established connection and new ones are unaffected.
    assert_eq!(h1(&mut good, "a.test", "/").await.expect("r").status, 200);
    let mut fresh = connect(proxy.addr, &o).await.expect("connect");
    assert_eq!(h1(&mut fresh, "a.test", "/").await.expect("r").status, 200);
    assert_eq!(origin.requests(), 3);
}
