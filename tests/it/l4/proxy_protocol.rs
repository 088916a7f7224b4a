//! The PROXY protocol both ways: v1 and v2 headers sent to backends, and headers accepted
//! from trusted sources on tcp listeners (before a TLS handshake too), http and https ones.

use super::{ask, log_has, read_line_tls, settle, start_in, tls_after, tls_block, WAIT};
use crate::support::tcp::TcpBackend;
use crate::support::{Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("ipv4 only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_sent_to_backends_carry_the_client_address() {
    let b1 = TcpBackend::start("v1", true).await;
    let b2 = TcpBackend::start("v2", true).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t1, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u1}}\n  - {{name: t2, address: 127.0.0.1:{{{{port1}}}}, protocol: tcp, upstream: u2}}\nupstreams:\n  - {{name: u1, send_proxy_protocol: v1, backends: [{{address: {}}}]}}\n  - {{name: u2, send_proxy_protocol: v2, backends: [{{address: {}}}]}}\n",
        b1.addr, b2.addr
    ));
    settle(&[&b1, &b2]).await;
    for (listener, backend, v2) in [(p.addr, &b1, false), (p.addr_of(1), &b2, true)] {
        let mut s = TcpStream::connect(listener).await.expect("connect");
        let client = s.local_addr().expect("local");
        s.write_all(b"NAME\n").await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert_eq!(out.trim(), backend.name);
        let got = backend.proxy_headers().pop();
        let want = if v2 {
            v2_header(client, listener)
        } else {
            format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                client.port(),
                listener.port()
            )
            .into_bytes()
        };
        assert_eq!(got, Some(want), "header at backend {}", backend.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_proxy_header_becomes_the_client_address_and_untrusted_sources_are_refused() {
    let rec = TcpBackend::start("rec", true).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: trusted, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, accept_proxy_protocol: true, trusted_proxies: [127.0.0.0/8]}}\n  - {{name: strict, address: 127.0.0.1:{{{{port1}}}}, protocol: tcp, upstream: u, accept_proxy_protocol: true, trusted_proxies: ['10.0.0.0/8', '::1']}}\nupstreams:\n  - {{name: u, send_proxy_protocol: v1, backends: [{{address: {}}}]}}\n",
        rec.addr
    ));
    let lb_v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n".to_vec();
    let lb_v2 = v2_header(
        "203.0.113.8:4343".parse().expect("addr"),
        "198.51.100.1:443".parse().expect("addr"),
    );
    assert_eq!(ask(p.addr, &lb_v1, "NAME").await.as_deref(), Some("rec"));
    assert_eq!(ask(p.addr, &lb_v2, "NAME").await.as_deref(), Some("rec"));
    assert_eq!(
        rec.proxy_headers(),
        vec![
            b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.8 198.51.100.1 4343 443\r\n".to_vec(),
        ]
    );
    // A trusted source without a header, and an untrusted source with one: both closed,
    // and the backend never sees them.
    assert_eq!(ask(p.addr, b"", "NAME").await, None);
    assert_eq!(ask(p.addr_of(1), &lb_v1, "NAME").await, None);
    assert_eq!(rec.connections(), 2);
    assert!(log_has(&p, "not in trusted_proxies").await, "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_with_accept_proxy_protocol_uses_it_for_x_forwarded_for() {
    let o = OriginBuilder::new("o").run().await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, accept_proxy_protocol: true, trusted_proxies: [127.0.0.1/32]}}\nupstreams:\n  - {{name: app, backends: [{{address: {}}}]}}\nroutes:\n  - {{listener: web, upstream: app}}\n",
        o.addr
    ));
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n")
        .await
        .expect("header");
    // two requests on one keep-alive connection: the header counts for both
    for _ in 0..2 {
        let r = c.get("/", &[("host", "x.test")]).await.expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(
            o.last()
                .and_then(|r| r.header("x-forwarded-for").map(String::from)),
            Some("203.0.113.9".into())
        );
    }
    // v2 works too
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(&v2_header(
        "198.51.100.20:1000".parse().expect("addr"),
        "127.0.0.1:80".parse().expect("addr"),
    ))
    .await
    .expect("header");
    let r = c.get("/", &[("host", "x.test")]).await.expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(
        o.last()
            .and_then(|r| r.header("x-forwarded-for").map(String::from)),
        Some("198.51.100.20".into())
    );
    // without a header the request is not served
    let mut c = Conn::connect(p.addr).await.expect("connect");
    assert!(c.get("/", &[("host", "x.test")]).await.is_err());
    assert_eq!(o.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_tls_reads_the_proxy_header_before_the_handshake() {
    let rec = TcpBackend::start("rec", true).await;
    let (dir, ca, tls) = tls_block("l4-tls-pp", &["a.test"]);
    let p = start_in(
        dir,
        &format!(
            "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, tls: {tls}, accept_proxy_protocol: true, trusted_proxies: [127.0.0.0/8]}}\n  - {{name: strict, address: 127.0.0.1:{{{{port1}}}}, protocol: tcp, upstream: u, tls: {tls}, accept_proxy_protocol: true, trusted_proxies: [10.0.0.0/8]}}\nupstreams:\n  - {{name: u, send_proxy_protocol: v1, backends: [{{address: {}}}]}}\n",
            rec.addr
        ),
    );
    let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n".to_vec();
    let v2 = v2_header(
        "203.0.113.8:4343".parse().expect("addr"),
        "198.51.100.2:8443".parse().expect("addr"),
    );
    for header in [&v1, &v2] {
        let (mut s, cn) = tls_after(p.addr, header, "a.test", &ca)
            .await
            .expect("TLS after a PROXY header");
        assert_eq!(cn, "a.test");
        s.write_all(b"NAME\n").await.expect("write");
        assert_eq!(read_line_tls(&mut s).await, "rec");
    }
    // the backend learns the header's client (and destination), not the proxy's peer
    assert_eq!(
        rec.proxy_headers(),
        vec![
            b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.8 198.51.100.2 4343 8443\r\n".to_vec(),
        ]
    );
    // no header (the ClientHello comes first), or an untrusted sender: no handshake
    assert!(tls_after(p.addr, b"", "a.test", &ca).await.is_err());
    assert!(tls_after(p.addr_of(1), &v1, "a.test", &ca).await.is_err());
    assert_eq!(
        rec.connections(),
        2,
        "refused connections reached the backend"
    );
    assert!(log_has(&p, "not in trusted_proxies").await, "{}", p.log());
}

/// One keep-alive HTTP/1.1 GET on `s`; returns the status line and the body.
async fn h1_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
) -> (String, String) {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "closed inside a head");
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    (
        head.lines().next().unwrap_or("").to_string(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_with_accept_proxy_protocol_uses_it_for_x_forwarded_for() {
    let o = OriginBuilder::new("o").run().await;
    let (dir, ca, tls) = tls_block("https-pp", &["web.test"]);
    let p = start_in(
        dir,
        &format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: https, tls: {tls}, accept_proxy_protocol: true, trusted_proxies: [127.0.0.1/32]}}\nupstreams:\n  - {{name: app, backends: [{{address: {}}}]}}\nroutes:\n  - {{listener: web, upstream: app}}\n",
            o.addr
        ),
    );
    let xff = |o: &crate::support::Origin| {
        o.last()
            .and_then(|r| r.header("x-forwarded-for").map(String::from))
    };
    let (mut s, _) = tls_after(
        p.addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n",
        "web.test",
        &ca,
    )
    .await
    .expect("tls after v1");
    // two requests on one keep-alive TLS connection: the header counts for both
    for _ in 0..2 {
        let (status, body) = h1_get(&mut s, "web.test").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, "o");
        assert_eq!(xff(&o), Some("203.0.113.9".into()));
    }
    let v2 = v2_header(
        "198.51.100.20:1000".parse().expect("addr"),
        "127.0.0.1:443".parse().expect("addr"),
    );
    let (mut s, _) = tls_after(p.addr, &v2, "web.test", &ca)
        .await
        .expect("tls after v2");
    let (status, _) = h1_get(&mut s, "web.test").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(xff(&o), Some("198.51.100.20".into()));

    // without a header there is no handshake and no request
    assert!(tls_after(p.addr, b"", "web.test", &ca).await.is_err());
    assert_eq!(o.requests(), 3);
}
