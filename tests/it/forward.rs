//! Forward proxy: absolute-form requests, CONNECT tunnels (with a real TLS origin), access
//! rules, the private-destination guard, proxy auth, anonymity, content filtering and the
//! shared cache behind it.
//! Clients are curl (`-x`) and the raw HTTP/1.1 client; origins are real sockets on
//! loopback, so every config that should reach them says `allow_private_destinations: true`.

use crate::support::proxy::{render, run_cli};
use crate::support::{client, scratch_dir, Conn, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A config with one forward listener; `block` is the YAML body of `forward_proxy:`.
fn fwd(block: &str) -> String {
    let mut s = String::from(
        "listeners:\n  - name: fwd\n    address: 127.0.0.1:{{port}}\n    protocol: http\n    forward_proxy:\n",
    );
    for l in block.lines() {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

const OPEN: &str = "allow_private_destinations: true\naccess: [{action: allow}]";

async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn proxy_url(p: &Proxy) -> String {
    format!("http://{}", p.addr)
}

/// One absolute-form request on a new connection to the proxy.
async fn absolute(
    p: &Proxy,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> client::Response {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let mut h: Vec<(&str, &str)> = vec![("Host", authority.as_str())];
    h.extend_from_slice(headers);
    let mut c = Conn::connect(p.addr).await.expect("connect proxy");
    c.request(method, url, &h, b"").await.expect("response")
}

/// Read one response head (through the blank line) byte by byte, leaving the rest.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read head");
        assert!(
            n > 0,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An origin that answers every request with `parts`, each written after its delay, and
/// then closes the connection.
async fn scripted(parts: Vec<(Duration, Vec<u8>)>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let parts = Arc::new(parts);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let parts = parts.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let _ = read_head(&mut s).await;
                count.fetch_add(1, SeqCst);
                for (d, bytes) in parts.iter() {
                    tokio::time::sleep(*d).await;
                    if s.write_all(bytes).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, n)
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// Everything the proxy sends on one connection for one request, until it closes.
async fn raw_exchange(p: &Proxy, url: &str) -> Vec<u8> {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    out
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_allow_and_deny_by_client_destination_and_method() {
    let o = OriginBuilder::new("acl").run().await;
    let cfg = "listeners:
  - name: fwd
    address: 127.0.0.1:{{port}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access:
        - {action: deny, name: no-post, methods: [POST]}
        - {action: deny, name: no-localhost-name, destinations: [localhost, '*.localhost']}
        - {action: allow, name: loopback, clients: [127.0.0.0/8], destinations: [127.0.0.0/8]}
  - name: lan-only
    address: 127.0.0.1:{{port1}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access:
        - {action: allow, name: lan, clients: [10.0.0.0/8]}
";
    let p = Proxy::start(cfg);
    let host = o.addr.to_string();
    let url = format!("http://{host}/x");

    let r = absolute(&p, "GET", &url, &[]).await;
    assert_eq!(r.status, 200, "allowed by client and destination network");

    let r = absolute(&p, "POST", &url, &[]).await;
    assert_eq!(r.status, 403, "denied by method");
    assert!(r.text().contains("no-post"), "{}", r.text());

    let r = absolute(
        &p,
        "GET",
        &format!("http://localhost:{}/x", o.addr.port()),
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "denied by destination name");
    assert!(r.text().contains("no-localhost-name"), "{}", r.text());

    // the second listener only admits 10/8 clients; we are 127.0.0.1
    let mut c = Conn::connect(p.addr_of(1)).await.expect("connect");
    let r = c
        .request("GET", &url, &[("Host", host.as_str())], b"")
        .await
        .expect("response");
    assert_eq!(r.status, 403, "denied by client");
    assert!(r.text().contains("default"), "{}", r.text());

    assert_eq!(
        o.requests(),
        1,
        "only the allowed request reached the origin"
    );
    let log = p.log();
    assert!(log.contains("denied by no-post"), "{log}");
    assert!(log.contains("denied by no-localhost-name"), "{log}");
}

/// Squid's `dstdomain`: a rule that denies a name decides before any lookup, so a denied
/// name that does not even resolve (`.invalid`, RFC 6761) is a 403, never a 502, for
/// absolute-form and CONNECT alike. Each lookup is logged at debug level; with that level on,
/// the allowed name's lookup is in the log and the denied one's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_name_is_refused_before_any_lookup() {
    let o = OriginBuilder::new("named").run().await;
    let p = Proxy::start_logging(
        &fwd("allow_private_destinations: true
connect_ports: [443]
access:
  - {action: deny, name: no-blocked, destinations: [blocked.invalid, '*.blocked.invalid']}
  - {action: allow}"),
        "info,stepstone::forward=debug",
    );

    let r = absolute(&p, "GET", "http://blocked.invalid/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no-blocked"), "{}", r.text());
    let r = absolute(&p, "GET", "http://www.blocked.invalid:8080/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());

    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c
        .request(
            "CONNECT",
            "blocked.invalid:443",
            &[("Host", "blocked.invalid:443")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no-blocked"), "{}", r.text());

    // control: an allowed name is looked up (from /etc/hosts), and the lookup is logged
    let r = absolute(
        &p,
        "GET",
        &format!("http://localhost:{}/y", o.addr.port()),
        &[],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "named"));

    let log = p.log();
    assert!(
        log.contains("resolving localhost"),
        "lookups are not logged: {log}"
    );
    assert!(!log.contains("resolving blocked.invalid"), "{log}");
    assert!(!log.contains("resolving www.blocked.invalid"), "{log}");
    assert!(!log.contains("cannot resolve"), "{log}");
    assert_eq!(log.matches("403: denied by no-blocked").count(), 3, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_by_default() {
    let o = OriginBuilder::new("private").run().await;
    let p = Proxy::start(&fwd("access: [{action: allow}]\nconnect_ports: [443]"));
    for url in [
        format!("http://{}/", o.addr),
        // a name that resolves to loopback is caught after resolution
        format!("http://localhost:{}/", o.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let r = absolute(&p, "GET", &url, &[]).await;
        assert_eq!(r.status, 403, "{url}");
        assert!(r.text().contains("private network"), "{}", r.text());
    }
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c
        .request(
            "CONNECT",
            "localhost:443",
            &[("Host", "localhost:443")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403);
    assert_eq!(o.requests(), 0);
    assert!(p.log().contains("private destination"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_auth_asks_then_admits_and_never_forwards_credentials() {
    let o = OriginBuilder::new("authed").run().await;
    let dir = scratch_dir("fwd-auth");
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    std::fs::write(dir.join("users"), format!("# test users\nalice:{hash}\n")).expect("users");
    let (text, ports) = render(
        &fwd(&format!(
            "{OPEN}\nauth: {{realm: test-realm, users_file: users}}"
        )),
        &dir,
    );
    let p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let url = format!("http://{}/private", o.addr);

    let r = absolute(&p, "GET", &url, &[]).await;
    assert_eq!(r.status, 407);
    assert_eq!(
        r.header("proxy-authenticate"),
        Some("Basic realm=\"test-realm\"")
    );
    // alice:wrong
    let r = absolute(
        &p,
        "GET",
        &url,
        &[("Proxy-Authorization", "Basic YWxpY2U6d3Jvbmc=")],
    )
    .await;
    assert_eq!(r.status, 407);
    assert_eq!(o.requests(), 0);

    let (code, out, err) =
        curl(&["-x", &proxy_url(&p), "--proxy-user", "alice:s3cret", &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "authed");
    // the cached credential works too, and the origin never sees it
    let (code, out, _) = curl(&["-x", &proxy_url(&p), "--proxy-user", "alice:s3cret", &url]).await;
    assert_eq!((code, out.as_str()), (0, "authed"));
    let recs = o.recorded();
    assert_eq!(
        recs.len(),
        2,
        "the origin saw {} requests: {recs:?}",
        recs.len()
    );
    for rec in recs {
        assert!(rec.header("proxy-authorization").is_none(), "{rec:?}");
    }
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

const FILTER: &str = "filter:
  block_content_types: [application/x-msdownload]
  block_body_patterns: [forbidden-word]
  block_url_patterns: ['*/malware/*']";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_pattern_split_across_chunks_cuts_the_response() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let gap = Duration::from_millis(300);
    let (bad, _) = scripted(vec![
        (Duration::ZERO, head.clone()),
        (Duration::ZERO, chunk(b"hello forbid")),
        (gap, chunk(b"den-word and the rest")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    let (good, _) = scripted(vec![
        (Duration::ZERO, head),
        (Duration::ZERO, chunk(b"hello forbid")),
        (gap, chunk(b"dance and the rest")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    // control: the same shape without the pattern passes whole
    let (code, out, err) = curl(&["-x", &proxy_url(&p), &format!("http://{good}/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello forbiddance and the rest");

    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    // the head went out long before the second chunk, so the response is cut
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello forbid"), "{text}");
    assert!(
        !text.contains("den-word"),
        "the matching chunk was forwarded: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut response looks complete: {text}"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());
    let (code, _, _) = curl(&["-x", &proxy_url(&p), &format!("http://{bad}/")]).await;
    assert_ne!(code, 0, "curl must see a failed transfer");
    assert!(p.log().contains("forbidden-word"), "{}", p.log());
}

/// `filter.hold_head_bytes`: the origin sends its head, pauses, then the body, so the head
/// is alone in Pingora's first batch. Held, a pattern at byte 3000 gets the proxy's 403
/// page; not held (the default), the same response is cut. Clean responses pass whole and
/// byte-exact with holding on, whether they end inside the window or run past it, and a
/// pattern past the window still cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_head_turns_an_early_body_match_into_the_403_page() {
    let pause = Duration::from_millis(300);
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes()
    };
    let mut bad_body = vec![b'a'; 3000];
    bad_body.extend_from_slice(b"forbidden-word");
    bad_body.extend_from_slice(&[b'b'; 2000]);
    let (bad, _) = scripted(vec![
        (Duration::ZERO, head(bad_body.len())),
        (pause, bad_body.clone()),
    ])
    .await;
    // clean, 20000 bytes in three writes: runs past the window
    let long: Vec<u8> = (0..20_000u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize])
        .collect();
    let (good_long, _) = scripted(vec![
        (Duration::ZERO, head(long.len())),
        (pause, long[..3000].to_vec()),
        (pause, long[3000..13_000].to_vec()),
        (Duration::ZERO, long[13_000..].to_vec()),
    ])
    .await;
    // clean, chunked, ends inside the window
    let (good_short, _) = scripted(vec![
        (
            Duration::ZERO,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        (pause, chunk(b"short and ")),
        (pause, chunk(b"clean")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ])
    .await;
    // the pattern at byte 9000, past the window
    let mut late = vec![b'c'; 9000];
    late.extend_from_slice(b"forbidden-word tail");
    let (bad_late, _) = scripted(vec![
        (Duration::ZERO, head(late.len())),
        (pause, late[..9000].to_vec()),
        (pause, late[9000..].to_vec()),
    ])
    .await;
    let cfg = "listeners:
  - name: held
    address: 127.0.0.1:{{port}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access: [{action: allow}]
      filter: {block_body_patterns: [forbidden-word], hold_head_bytes: 8192}
  - name: plain
    address: 127.0.0.1:{{port1}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access: [{action: allow}]
      filter: {block_body_patterns: [forbidden-word]}
";
    let p = Proxy::start(cfg);
    let body_of = |raw: &[u8]| {
        let at = crate::support::client::find(raw, b"\r\n\r\n").expect("a response head") + 4;
        raw[at..].to_vec()
    };

    // held: the 403 page, nothing of the origin's response
    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("content filter"), "{text}");
    assert!(!text.contains("aaaa") && !text.contains("200 OK"), "{text}");
    assert!(
        p.log().contains("403: response blocked, body contains"),
        "{}",
        p.log()
    );

    // not held: the same response is cut (today's behaviour); the head may not even have
    // left the proxy's write buffer, so the client may see the connection close at once
    let mut s = TcpStream::connect(p.addr_of(1)).await.expect("connect");
    s.write_all(
        format!("GET http://{bad}/ HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("403"),
        "not held, yet answered the page: {text}"
    );
    assert!(!text.contains("forbidden-word"), "{text}");
    assert!(
        raw.is_empty()
            || (text.starts_with("HTTP/1.1 200") && body_of(&raw).len() < bad_body.len()),
        "{text}"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());

    // held, clean: complete and byte-exact, past the window and inside it
    let raw = raw_exchange(&p, &format!("http://{good_long}/")).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(body_of(&raw), long, "the long clean body changed");
    let r = absolute(&p, "GET", &format!("http://{good_short}/"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "short and clean"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a held response closes"
    );
    let (code, out, err) = curl(&["-x", &proxy_url(&p), &format!("http://{good_long}/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.as_bytes(), &long[..]);

    // held, a match past the window: cut
    let raw = raw_exchange(&p, &format!("http://{bad_late}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("forbidden-word"), "{text}");
    assert!(body_of(&raw).len() < late.len(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_pattern_inside_gzip_is_found() {
    use std::io::Write;
    let gz = |text: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let filler: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        e.write_all(&filler).expect("gz");
        e.write_all(text).expect("gz");
        e.finish().expect("gz")
    };
    let serve = |body: Vec<u8>| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        vec![
            (Duration::ZERO, head.into_bytes()),
            (Duration::ZERO, body[..half].to_vec()),
            (Duration::from_millis(300), body[half..].to_vec()),
        ]
    };
    let (bad, _) = scripted(serve(gz(b"<p>a Forbidden-Word here</p>"))).await;
    let clean = gz(b"<p>all fine</p>");
    let (good, _) = scripted(serve(clean.clone())).await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    let r = absolute(
        &p,
        "GET",
        &format!("http://{good}/"),
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, clean, "a clean gzip body passes unchanged");

    let raw = raw_exchange(&p, &format!("http://{bad}/")).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_len = raw.len() - (crate::support::client::find(&raw, b"\r\n\r\n").expect("head") + 4);
    let full = gz(b"<p>a Forbidden-Word here</p>").len();
    assert!(
        body_len < full,
        "the whole gzip body went through ({body_len} of {full})"
    );
    assert!(p.log().contains("response cut"), "{}", p.log());
    assert!(p.log().contains("forbidden-word"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_and_url_blocks_answer_the_proxy_page() {
    let exe = OriginBuilder::new("exe")
        .header("Content-Type", "application/x-msdownload")
        .body("MZ...")
        .run()
        .await;
    let o = OriginBuilder::new("fine").run().await;
    let p = Proxy::start(&fwd(&format!("{OPEN}\n{FILTER}")));

    let r = absolute(&p, "GET", &format!("http://{}/setup.exe", exe.addr), &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("content filter"), "{}", r.text());
    assert!(!r.text().contains("MZ"), "{}", r.text());

    let r = absolute(&p, "GET", &format!("http://{}/malware/x", o.addr), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(o.requests(), 0, "a blocked URL never reaches the origin");
    let r = absolute(&p, "GET", &format!("http://{}/fine", o.addr), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
}

#[test]
fn forward_config_errors_name_the_key() {
    let dir = scratch_dir("fwd-cfg");
    let cases = [
        (
            "forward_proxy: {cache: {enabled: true, max_object_size: 0}}",
            "listeners[0].forward_proxy.cache.max_object_size",
            "greater than zero",
        ),
        (
            "forward_proxy: {cache: {enabled: true, max_sise: 1MiB}}",
            "listeners[0].forward_proxy.cache",
            "max_sise",
        ),
        (
            "forward_proxy: {access: [{action: allow, clients: [10.0.0.0/40]}]}",
            "listeners[0].forward_proxy.access[0].clients[0]",
            "10.0.0.0/40",
        ),
        (
            "forward_proxy: {auth: {users_file: plain}}",
            "listeners[0].forward_proxy.auth.users_file",
            "bcrypt",
        ),
        (
            "forward_proxy: {filter: {block_body_patterns: [x], hold_head_bytes: 2MiB}}",
            "listeners[0].forward_proxy.filter.hold_head_bytes",
            "2097152",
        ),
        (
            "forward_proxy: {anonymity: paranoid}",
            "listeners[0].forward_proxy.anonymity",
            "paranoid",
        ),
    ];
    std::fs::write(dir.join("plain"), "bob:secret\n").expect("users");
    for (i, (block, path, word)) in cases.iter().enumerate() {
        let f = dir.join(format!("c{i}.yaml"));
        std::fs::write(
            &f,
            format!(
                "listeners:\n  - {{name: f, address: 127.0.0.1:18181, protocol: http, {block}}}\n"
            ),
        )
        .expect("write");
        let (code, out) = run_cli(&["-t", "-c", f.to_str().expect("path")]);
        assert_ne!(code, 0, "{block}");
        assert!(out.contains(path) && out.contains(word), "{block}: {out}");
    }
}

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
