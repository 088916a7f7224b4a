//! CONNECT tunnels: TLS end to end to a real TLS origin, over HTTP/2, early data and the
//! idle timeout.

use super::{curl, fwd, proxy_url, read_head, OPEN};
use crate::support::{scratch_dir, Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TLS origin: answers one request per connection with `tls-origin-ok`, then closes.
async fn tls_origin(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    cert: &openssl::x509::X509,
) -> SocketAddr {
    use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
    acc.set_private_key(key).expect("key");
    acc.set_certificate(cert).expect("cert");
    let acc = Arc::new(acc.build());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let acc = acc.clone();
            tokio::spawn(async move {
                let Ok(ssl) = Ssl::new(acc.context()) else {
                    return;
                };
                let Ok(mut s) = tokio_openssl::SslStream::new(ssl, tcp) else {
                    return;
                };
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let _ = read_head(&mut s).await;
                let body = "tls-origin-ok";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_tls_end_to_end_and_refuses_other_ports() {
    use openssl::ssl::{SslConnector, SslMethod};
    let (cert, key) = crate::support::tcp::self_signed("localhost");
    let tls = tls_origin(&key, &cert).await;
    let plain = OriginBuilder::new("plain").run().await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\nconnect_ports: [{}]", tls.port())));

    // raw client: CONNECT, 200, then our own TLS handshake through the tunnel
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(
        format!(
            "CONNECT localhost:{0} HTTP/1.1\r\nHost: localhost:{0}\r\n\r\n",
            tls.port()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut cb = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    cb.cert_store_mut().add_cert(cert.clone()).expect("trust");
    let ssl = cb
        .build()
        .configure()
        .and_then(|c| c.into_ssl("localhost"))
        .expect("ssl");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    Pin::new(&mut s)
        .connect()
        .await
        .expect("TLS handshake through the tunnel");
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    // the origin closes after its answer; the tunnel must pass that close on
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("tunnel closed after the origin closed")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.ends_with("tls-origin-ok"), "{out}");

    // curl verifies the origin's certificate through the tunnel
    let dir = scratch_dir("fwd-ca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.to_pem().expect("pem")).expect("write ca");
    let (code, out, err) = curl(&[
        "-x",
        &proxy_url(&p),
        "--cacert",
        ca.to_str().expect("path"),
        &format!("https://localhost:{}/", tls.port()),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "tls-origin-ok");

    // a port not in connect_ports
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let target = plain.addr.to_string();
    let r = c
        .request("CONNECT", &target, &[("Host", target.as_str())], b"")
        .await
        .expect("response");
    assert_eq!(r.status, 403);
    assert!(r.text().contains("port"), "{}", r.text());
    assert_eq!(plain.connections(), 0);
}

/// CONNECT over HTTP/2 (RFC 9113 §8.5) on an `h2c: true` listener: the 200 opens a tunnel
/// on the request's stream, bytes go both ways, END_STREAM is passed on as a half-close
/// each way; the same rules as HTTP/1.1 CONNECT refuse other ports and denied names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_http2_tunnels_with_the_same_rules() {
    // an echo origin that closes once the client has closed its side
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let p = Proxy::start(&format!(
        "listeners:
  - name: fwd2
    address: 127.0.0.1:{{{{port}}}}
    protocol: http
    h2c: true
    forward_proxy:
      allow_private_destinations: true
      connect_ports: [{port}]
      access:
        - {{action: deny, name: no-blocked, destinations: [blocked.invalid]}}
        - {{action: allow}}
"
    ));
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let connect = |authority: String| {
        let mut c = client.clone();
        async move {
            c = c.ready().await.expect("ready");
            let req = http::Request::builder()
                .method("CONNECT")
                .uri(authority)
                .body(())
                .expect("request");
            let (resp, send) = c.send_request(req, false).expect("send");
            (resp.await.expect("response"), send)
        }
    };

    let (resp, mut send) = connect(format!("127.0.0.1:{port}")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    send.send_data(bytes::Bytes::from_static(b"ping over h2"), false)
        .expect("data");
    let mut got = Vec::new();
    while got.len() < 12 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"ping over h2");
    // our END_STREAM half-closes the origin, which closes; that END_STREAM comes back
    send.send_data(bytes::Bytes::new(), true).expect("end");
    // (an empty DATA frame carries END_STREAM: skip it)
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.data().await {
            rest.extend_from_slice(&chunk.expect("a clean end"));
        }
    })
    .await
    .expect("the tunnel ended after the origin closed");
    assert!(rest.is_empty(), "{rest:?}");

    let (resp, _send) = connect("127.0.0.1:443".to_string()).await;
    assert_eq!(resp.status(), 403, "a port not in connect_ports");
    let (resp, _send) = connect(format!("blocked.invalid:{port}")).await;
    assert_eq!(resp.status(), 403, "a denied name");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = p.log();
    assert!(
        log.contains(&format!(
            "CONNECT 127.0.0.1:{port} closed, 12 bytes up, 12 bytes down"
        )),
        "{log}"
    );
    assert!(log.contains("denied by no-blocked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_tunnel_data_is_kept_and_idle_tunnel_is_closed() {
    // an echo origin that never closes on its own
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
                // hold the connection open: only the proxy's idle timeout may end it
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let p = Proxy::start(&fwd(&format!(
        "{OPEN}\nconnect_ports: [{port}]\ntunnel_idle_timeout: 300ms"
    )));
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    // bytes sent right behind the CONNECT head, before the 200, belong to the tunnel
    tcp.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nearly-bytes")
            .as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"early-bytes");
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
        .await
        .expect("the idle tunnel was closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
