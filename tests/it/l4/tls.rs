//! TLS on tcp listeners: passthrough routed by SNI, and termination (certificate by SNI,
//! plaintext to the backend).

use super::{
    backends, closed_within, log_has, read_line_tls, start_in, tls_after, tls_block, WAIT,
};
use crate::support::tcp::{hex, pattern, tls_connect, TcpBackend, TlsBackend};
use crate::support::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn passthrough_cfg(a: &TlsBackend, b: &TlsBackend, default: Option<&TlsBackend>) -> String {
    let mut s = String::from("listeners:\n  - name: p\n    address: 127.0.0.1:{{port}}\n    protocol: tls_passthrough\n    sni_routes: {a.example.com: ua, '*.b.example.com': ub}\n");
    if default.is_some() {
        s.push_str("    default_upstream: ud\n");
    }
    s.push_str(&format!(
        "upstreams:\n  - {{name: ua, backends: [{{address: {}}}]}}\n  - {{name: ub, backends: [{{address: {}}}]}}\n",
        a.addr, b.addr
    ));
    if let Some(d) = default {
        s.push_str(&format!(
            "  - {{name: ud, backends: [{{address: {}}}]}}\n",
            d.addr
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_and_client_sees_backends_certificate() {
    let a = TlsBackend::start("a.example.com").await;
    let b = TlsBackend::start("x.b.example.com").await;
    let d = TlsBackend::start("default.test").await;
    let p = Proxy::start(&passthrough_cfg(&a, &b, Some(&d)));

    for (sni, want) in [
        (Some("a.example.com"), "a.example.com"),
        (Some("X.B.Example.com"), "x.b.example.com"),
        (Some("other.test"), "default.test"),
        (None, "default.test"),
    ] {
        let (mut tls, cn) = tls_connect(p.addr, sni)
            .await
            .expect("tls through the proxy");
        assert_eq!(cn, want, "certificate for {sni:?}");
        assert_eq!(read_line_tls(&mut tls).await, want);
        tls.write_all(b"ping\n").await.expect("write");
        assert_eq!(read_line_tls(&mut tls).await, "ping");
    }
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_malformed_client_hello_closes_only_that_connection() {
    let a = TlsBackend::start("a.example.com").await;
    let b = TlsBackend::start("x.b.example.com").await;
    let p = Proxy::start(&passthrough_cfg(&a, &b, None));

    let (mut good, _) = tls_connect(p.addr, Some("a.example.com"))
        .await
        .expect("tls");
    assert_eq!(read_line_tls(&mut good).await, "a.example.com");

    // A handshake record whose ClientHello claims a session id longer than the record.
    let mut bad_sid = vec![22, 3, 1, 0, 45, 1, 0, 0, 41, 3, 3];
    bad_sid.extend_from_slice(&[0; 32]);
    bad_sid.extend_from_slice(&[200, 1, 2, 3, 4, 5, 6]);
    assert_eq!(bad_sid.len(), 50);
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
        &bad_sid,
        // truncated mid-record, then the client goes away (half-close)
        &[22, 3, 1, 1, 0, 1, 0, 0],
    ];
    for g in garbage {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(g).await.expect("write");
        let _ = s.shutdown().await;
        assert!(
            closed_within(&mut s, WAIT).await,
            "malformed hello kept open"
        );
    }
    // no SNI and no default_upstream: closed as well
    assert!(tls_connect(p.addr, None).await.is_err());

    good.write_all(b"still alive\n").await.expect("write");
    assert_eq!(read_line_tls(&mut good).await, "still alive");
    let (mut again, cn) = tls_connect(p.addr, Some("y.b.example.com"))
        .await
        .expect("tls");
    assert_eq!(cn, "x.b.example.com");
    assert_eq!(read_line_tls(&mut again).await, "x.b.example.com");
    assert!(log_has(&p, "malformed ClientHello").await, "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_tls_terminates_selects_by_sni_and_forwards_plaintext() {
    let a = TcpBackend::start("plain", false).await;
    let (dir, ca, tls) = tls_block("l4-tls", &["a.test", "b.test"]);
    let p = start_in(
        dir,
        &format!(
            "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, tls: {tls}}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
            backends(&[(&a, 1)])
        ),
    );

    // SNI picks the certificate; the backend parses our plaintext command and answers
    for (sni, cn) in [("a.test", "a.test"), ("b.test", "b.test")] {
        let (mut s, served) = tls_after(p.addr, b"", sni, &ca).await.expect("tls");
        assert_eq!(served, cn, "certificate for SNI {sni}");
        s.write_all(b"NAME\n").await.expect("write");
        assert_eq!(read_line_tls(&mut s).await, "plain");
    }

    // 1 MiB each way, checked by hash: download from SOURCE, and a round trip through ECHO
    const LEN: usize = 1 << 20;
    let data = pattern(LEN);
    let want = hex(&openssl::sha::sha256(&data));
    let (mut s, _) = tls_after(p.addr, b"", "a.test", &ca).await.expect("tls");
    s.write_all(format!("SOURCE {LEN}\n").as_bytes())
        .await
        .expect("cmd");
    let mut got = vec![0u8; LEN];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut got))
        .await
        .expect("download in time")
        .expect("download");
    assert_eq!(hex(&openssl::sha::sha256(&got)), want, "download hash");

    let (s, _) = tls_after(p.addr, b"", "b.test", &ca).await.expect("tls");
    let (mut r, mut w) = tokio::io::split(s);
    let up = data.clone();
    let send = tokio::spawn(async move {
        w.write_all(b"ECHO\n").await.expect("cmd");
        w.write_all(&up).await.expect("upload");
        w.flush().await.expect("flush");
        w
    });
    let mut back = vec![0u8; LEN];
    tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    let _w = send.await.expect("sender");
    assert_eq!(hex(&openssl::sha::sha256(&back)), want, "echo hash");
}
