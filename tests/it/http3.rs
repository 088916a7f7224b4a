//! HTTP/3 at the edge: a real HTTP/3 client (the `h3` crate's client on `quinn`, a stack
//! no one here wrote) against the real proxy on loopback UDP, with certificates made per
//! test. GET and POST bodies through to an origin, routing by host, X-Forwarded-Proto,
//! SNI certificate choice, Alt-Svc on the TCP side, 100 concurrent streams on one
//! connection, the header-size limit, QUIC metrics, and garbage datagrams.

use crate::support::pki::{cn_of, Ca};
use crate::support::proxy::render;
use crate::support::{client, scratch_dir, OriginBuilder, Proxy};
use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pki {
    dir: PathBuf,
    ca: Ca,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch_dir(tag);
        let ca = Ca::new("Stepstone H3 Test CA");
        Pki { dir, ca }
    }
    fn server(&self, name: &str, cn: &str, sans: &[&str], serial: u32) -> (PathBuf, PathBuf) {
        self.ca.server(cn, sans, serial).write(&self.dir, name)
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// An https listener with http3 on, two certificates, two routes by host.
fn config(pki: &Pki, a: SocketAddr, b: SocketAddr, quic: &str, limits: &str) -> String {
    let (dc, dk) = pki.server("default", "a.test", &["a.test"], 10);
    let (wc, wk) = pki.server("wild", "wild.b.test", &["*.b.test"], 11);
    format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}
listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
{quic}{limits}    tls:
      certificates:
        - {{cert: {}, key: {}, server_names: [a.test]}}
        - {{cert: {}, key: {}, server_names: ['*.b.test']}}
upstreams:
  - {{name: ua, backends: [{{address: {a}}}]}}
  - {{name: ub, backends: [{{address: {b}}}]}}
routes:
  - {{listener: edge, host: a.test, upstream: ua, max_body_size: 32MiB}}
  - {{listener: edge, host: '*.b.test', upstream: ub}}
",
        p(&dc),
        p(&dk),
        p(&wc),
        p(&wk)
    )
}

fn start(pki: &Pki, template: &str) -> Proxy {
    let (text, ports) = render(template, &pki.dir);
    Proxy::start_in(pki.dir.clone(), &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// A QUIC client endpoint that trusts the test CA.
fn endpoint(pki: &Pki) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    let der = pki.ca.cert.to_der().expect("ca der");
    roots.add(der.into()).expect("ca root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    e.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    e
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Connect with `sni`; the connection's driver runs in its own task.
async fn connect(e: &quinn::Endpoint, addr: SocketAddr, sni: &str) -> (quinn::Connection, Sender) {
    let conn = e
        .connect(addr, sni)
        .expect("connect")
        .await
        .unwrap_or_else(|err| panic!("QUIC handshake with sni {sni}: {err}"));
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .expect("h3 client");
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (conn, send)
}

struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

async fn request(
    s: &mut Sender,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Got, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(()).map_err(|e| e.to_string())?;
    let mut stream = s.send_request(req).await.map_err(|e| e.to_string())?;
    if let Some(body) = body {
        // streamed in 64 KiB pieces, as a client uploading a file would
        for c in body.chunks(64 << 10) {
            stream
                .send_data(Bytes::copy_from_slice(c))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    stream.finish().await.map_err(|e| e.to_string())?;
    let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    while let Some(mut c) = stream.recv_data().await.map_err(|e| e.to_string())? {
        while c.has_remaining() {
            let n = c.chunk().len();
            body.extend_from_slice(c.chunk());
            c.advance(n);
        }
    }
    Ok(Got {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body,
    })
}

fn served_cn(conn: &quinn::Connection) -> String {
    let id = conn.peer_identity().expect("peer identity");
    let certs = id
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .expect("rustls certificates");
    let leaf = openssl::x509::X509::from_der(&certs[0]).expect("leaf");
    cn_of(&leaf)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

async fn metrics(proxy: &Proxy) -> String {
    client::get(proxy.addr_of(1), "/metrics", &[])
        .await
        .expect("admin answers")
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_get_post_route_forwarded_sni_altsvc_and_metrics() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let a = OriginBuilder::new("a")
        .body("from a")
        .on("/big", &[], big.clone())
        .on_resp(
            "/chunked",
            crate::support::origin::PathResp {
                status: 200,
                body: big.clone(),
                chunked: true,
                ..Default::default()
            },
        )
        .run()
        .await;
    let b = OriginBuilder::new("b").body("from b").run().await;
    let pki = Pki::new("h3-basic");
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, "", ""));
    let e = endpoint(&pki);

    // a.test: its own certificate, its own route
    let (conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    assert_eq!(served_cn(&conn), "a.test");
    let got = request(
        &mut s,
        "GET",
        "https://a.test/hello?x=1",
        &[("cookie", "k=1")],
        None,
    )
    .await
    .expect("GET over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from a");
    let seen = a.last().expect("origin a got the GET");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.header("host"), Some("a.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    // a 3 MB response streams back whole
    let got = request(&mut s, "GET", "https://a.test/big", &[], None)
        .await
        .expect("large GET");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3000000"[..])
    );
    assert!(got.body == big, "the response body arrived changed");

    // a chunked response is decoded: HTTP/3 frames carry the body, no chunk framing
    let got = request(&mut s, "GET", "https://a.test/chunked", &[], None)
        .await
        .expect("chunked GET");
    assert_eq!(got.status, 200);
    assert!(got.headers.get("transfer-encoding").is_none());
    assert!(got.body == big, "the chunked body arrived changed");

    // a 10 MB body, streamed, reaches the origin intact
    let body: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    let len = body.len().to_string();
    let got = request(
        &mut s,
        "POST",
        "https://a.test/upload",
        &[("content-length", &len)],
        Some(body.clone()),
    )
    .await
    .expect("POST over HTTP/3");
    assert_eq!(got.status, 200);
    let seen = a.last().expect("origin a got the POST");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the body arrived changed");

    // a body without Content-Length (HTTP/3 needs none) is sent with its length
    let got = request(
        &mut s,
        "POST",
        "https://a.test/nolen",
        &[],
        Some(b"abc".to_vec()),
    )
    .await
    .expect("POST without length");
    assert_eq!(got.status, 200);
    let seen = a.last().expect("origin a got it");
    assert_eq!(seen.body, b"abc");
    assert_eq!(seen.header("content-length"), Some("3"));

    // unknown host: the policy's own 404
    let got = request(&mut s, "GET", "https://nowhere.test/", &[], None)
        .await
        .expect("GET for no route");
    assert_eq!(got.status, 404);

    // no tunnels over HTTP/3 here: CONNECT is refused, and nothing reaches an origin
    let before = a.requests();
    let got = request(&mut s, "CONNECT", "a.test:443", &[], None)
        .await
        .expect("CONNECT answered");
    assert_eq!(got.status, 501);
    assert_eq!(a.requests(), before);

    // a name under *.b.test: the wildcard certificate and b's route
    let (conn_b, mut sb) = connect(&e, proxy.addr, "x.b.test").await;
    assert_eq!(served_cn(&conn_b), "wild.b.test");
    let got = request(&mut sb, "GET", "https://x.b.test/", &[], None)
        .await
        .expect("GET b");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from b");
    assert!(got.headers.get("alt-svc").is_none() || got.status == 200);

    // the TCP side advertises HTTP/3 on the same port
    let port = proxy.addr.port();
    let tcp = tls_get(proxy.addr, "a.test", "/hello").await;
    assert!(tcp.starts_with("HTTP/1.1 200"), "{tcp}");
    let want = format!("alt-svc: h3=\":{port}\"; ma=86400");
    assert!(tcp.to_ascii_lowercase().contains(&want), "{tcp}");

    conn.close(0u32.into(), b"done");
    conn_b.close(0u32.into(), b"done");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&proxy).await;
        let open = metric(&m, "stepstone_quic_connections_open{listener=\"edge\"}");
        if open == 0.0 || Instant::now() > deadline {
            assert_eq!(open, 0.0, "{m}");
            assert_eq!(
                metric(
                    &m,
                    "stepstone_quic_handshakes_total{listener=\"edge\",result=\"ok\"}"
                ),
                2.0
            );
            assert_eq!(
                metric(&m, "stepstone_quic_connections_total{listener=\"edge\"}"),
                2.0
            );
            assert!(metric(&m, "stepstone_quic_streams_total{listener=\"edge\"}") >= 5.0);
            assert!(metric(&m, "stepstone_quic_packets_sent_total{listener=\"edge\"}") > 0.0);
            metric(&m, "stepstone_quic_packets_lost_total{listener=\"edge\"}");
            metric(
                &m,
                "stepstone_quic_bytes_retransmitted_total{listener=\"edge\"}",
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request over TLS on the TCP side; the response head and body as text.
async fn tls_get(addr: SocketAddr, sni: &str, path: &str) -> String {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("ssl");
    b.set_verify(SslVerifyMode::NONE);
    let ssl = b
        .build()
        .configure()
        .expect("configure")
        .into_ssl(sni)
        .expect("ssl");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s).connect().await.expect("tls");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_hundred_concurrent_streams_on_one_connection() {
    let a = OriginBuilder::new("a")
        .body("ok")
        .delay(Duration::from_millis(50))
        .run()
        .await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-streams");
    let quic = "    quic: {max_streams: 100}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, ""));
    let e = endpoint(&pki);
    let (_conn, s) = connect(&e, proxy.addr, "a.test").await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut s = s.clone();
        tasks.push(tokio::spawn(async move {
            request(&mut s, "GET", &format!("https://a.test/s{i}"), &[], None).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let got = t.await.expect("task").expect("stream answered");
        assert_eq!(got.status, 200);
        assert_eq!(got.body, b"ok");
        ok += 1;
    }
    assert_eq!(ok, 100);
    assert_eq!(a.requests(), 100);
    // the origin saw them overlap: they were concurrent streams, not a queue
    assert!(a.state.peak.load(std::sync::atomic::Ordering::SeqCst) > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_limits_header_size_rate_and_garbage_datagrams() {
    let a = OriginBuilder::new("a").body("ok").run().await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-limits");
    let quic = "    quic: {max_header_list_size: 2KiB, max_streams: 4}\n";
    let limits = "    limits: {rate_limit_per_ip: 5, max_connections: 1}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, limits));
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;

    // garbage datagrams to the port change nothing for the client
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..200u32 {
        let mut d = vec![(i % 256) as u8; 40 + (i as usize % 1200)];
        d[0] = if i % 2 == 0 { 0xc3 } else { 0x41 };
        let _ = junk.send_to(&d, proxy.addr);
    }
    let got = request(&mut s, "GET", "https://a.test/", &[], None)
        .await
        .expect("GET after garbage");
    assert_eq!(got.status, 200);

    // max_connections: 1, and this client holds it: a second connection is refused
    let second = e.connect(proxy.addr, "a.test").expect("connect").await;
    assert!(
        second.is_err(),
        "a second connection was accepted over max_connections"
    );

    // a header section over the limit the server announced is refused: the client's
    // stack refuses to send it (the SETTINGS said so), or the proxy answers 431
    let big = "x".repeat(4096);
    match request(
        &mut s,
        "GET",
        "https://a.test/big",
        &[("x-big", &big)],
        None,
    )
    .await
    {
        Ok(got) => assert_eq!(got.status, 431),
        Err(e) => assert!(e.to_ascii_lowercase().contains("header"), "{e}"),
    }
    assert_eq!(
        a.recorded().iter().filter(|r| r.path == "/big").count(),
        0,
        "the oversized request reached the origin"
    );

    // the listener's per-IP rate limit: 429 once over it
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let got = request(&mut s, "GET", "https://a.test/r", &[], None)
            .await
            .expect("GET");
        statuses.push(got.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let m = metrics(&proxy).await;
    assert!(
        metric(
            &m,
            "stepstone_refusals_total{listener=\"edge\",reason=\"max_connections\"}"
        ) >= 1.0
    );
}

async fn wait_exit(p: &mut Proxy, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `-u`: the UDP socket goes to the new process with the TCP ones. A request in flight on
/// the old process over HTTP/3 completes; after the old process is gone, new QUIC
/// connections are served by the new one, on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_graceful_upgrade_finishes_the_stream_in_flight_and_hands_the_port_over() {
    use crate::support::proxy::{send_signal, BIN};
    let slow = OriginBuilder::new("slow")
        .body("slow done")
        .delay(Duration::from_millis(7000))
        .run()
        .await;
    let b = OriginBuilder::new("b").body("from b").run().await;
    let pki = Pki::new("h3-upgrade");
    let d = pki.dir.display().to_string();
    let pingora = format!(
        "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 4\n  graceful_shutdown_timeout_seconds: 2\n"
    );
    let template = format!("{pingora}{}", config(&pki, slow.addr, b.addr, "", ""));
    let mut old = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, old.addr, "a.test").await;
    let inflight =
        tokio::spawn(async move { request(&mut s, "GET", "https://a.test/slow", &[], None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = std::fs::File::create(pki.dir.join("stderr-new.log")).expect("log");
    let mut new = Proxy {
        child: std::process::Command::new(BIN)
            .arg("-u")
            .arg("-c")
            .arg(&old.config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the new process"),
        dir: old.dir.clone(),
        config: old.config.clone(),
        addr: old.addr,
        ports: old.ports.clone(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(old.child.id(), libc::SIGQUIT);

    // Pingora's old process keeps accepting for 5 s after SIGQUIT; then it accepts nothing
    // new (GOAWAY) but still serves the slow stream: a new connection now is the new one's
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old.log().contains("HTTP/3 stops accepting") {
        assert!(
            Instant::now() < deadline,
            "old process never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        old.child.try_wait().ok().flatten().is_none(),
        "the old process left before its stream was done"
    );
    let (_c1, mut s1) = connect(&e, new.addr, "x.b.test").await;
    let got = request(&mut s1, "GET", "https://x.b.test/", &[], None)
        .await
        .expect("GET on a connection made during the drain");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from b");

    let got = inflight
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"slow done");

    let st = wait_exit(&mut old, Duration::from_secs(20)).await;
    assert!(
        st.is_some_and(|s| s.success()),
        "old process did not exit cleanly: {st:?}\n{}",
        old.log()
    );
    assert!(
        old.log().contains("HTTP/3 stops accepting"),
        "{}",
        old.log()
    );
    assert!(
        !old.log().contains("still open after the grace period"),
        "the old process did not drain its QUIC connection by itself:\n{}",
        old.log()
    );
    let new_log = std::fs::read_to_string(pki.dir.join("stderr-new.log")).unwrap_or_default();
    assert!(
        new_log.contains("Bootstrap done") && !new_log.contains("starting normally"),
        "the new process did not take the sockets over:\n{new_log}"
    );
    assert!(new_log.contains("HTTP/3 on udp"), "{new_log}");

    // the old process is gone: a new connection on the same port reaches the new one
    let (_c2, mut s2) = connect(&e, new.addr, "x.b.test").await;
    let got = request(&mut s2, "GET", "https://x.b.test/", &[], None)
        .await
        .expect("GET on the new process");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from b");
    assert!(
        new.child.try_wait().ok().flatten().is_none(),
        "new process died"
    );
    let _ = new.child.kill();
}

/// A certificate reload reaches both stacks: new QUIC handshakes get the new certificate
/// once the file changes. On a `fast_path: false` listener the general engine's responses
/// carry Alt-Svc too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_certificate_reload_reaches_quic_and_the_general_engine_sends_alt_svc() {
    use crate::support::pki::serial_of;
    let a = OriginBuilder::new("a").body("from a").run().await;
    let pki = Pki::new("h3-reload");
    let (c, k) = pki
        .ca
        .server("a.test", &["a.test"], 0x300)
        .write(&pki.dir, "site");
    let template = format!(
        "listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
    fast_path: false
    tls:
      reload_interval: 1s
      certificates: [{{cert: {}, key: {}}}]
upstreams:
  - {{name: ua, backends: [{{address: {}}}]}}
routes:
  - {{listener: edge, upstream: ua}}
",
        p(&c),
        p(&k),
        a.addr
    );
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let serial = |conn: &quinn::Connection| {
        let id = conn.peer_identity().expect("peer identity");
        let certs = id
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .expect("rustls certificates");
        serial_of(&openssl::x509::X509::from_der(&certs[0]).expect("leaf"))
    };
    let (conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    assert_eq!(serial(&conn), "0300");
    let got = request(&mut s, "GET", "https://a.test/", &[], None)
        .await
        .expect("GET");
    assert_eq!(got.status, 200);

    let tcp = tls_get(proxy.addr, "a.test", "/").await;
    let want = format!("alt-svc: h3=\":{}\"; ma=86400", proxy.addr.port());
    assert!(tcp.to_ascii_lowercase().contains(&want), "{tcp}");

    pki.ca
        .server("a.test", &["a.test"], 0x301)
        .write(&pki.dir, "site");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // a new client each time: a resumed session would show the certificate it began with
        let (c2, _s2) = connect(&endpoint(&pki), proxy.addr, "a.test").await;
        if serial(&c2) == "0301" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QUIC still serves the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the connection made before the reload keeps working
    let got = request(&mut s, "GET", "https://a.test/again", &[], None)
        .await
        .expect("GET on the old connection");
    assert_eq!(got.status, 200);
}

/// A cached route: a response stored from a request on the TCP side is a fresh hit over
/// HTTP/3, answered from the store (the origin sees no second request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_fresh_cache_hit_is_answered_from_the_store() {
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("cached body")
        .run()
        .await;
    let pki = Pki::new("h3-cache");
    let (c, k) = pki.server("site", "a.test", &["a.test"], 0x400);
    let template = format!(
        "listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
    tls:
      certificates: [{{cert: {}, key: {}}}]
upstreams:
  - {{name: ua, backends: [{{address: {}}}]}}
routes:
  - {{listener: edge, upstream: ua, cache: {{enabled: true}}}}
",
        p(&c),
        p(&k),
        a.addr
    );
    let proxy = start(&pki, &template);
    let first = tls_get(proxy.addr, "a.test", "/page").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(a.requests(), 1);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let got = request(&mut s, "GET", "https://a.test/page", &[], None)
        .await
        .expect("GET over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"cached body");
    assert_eq!(
        got.headers.get("x-cache-status").map(|v| v.as_bytes()),
        Some(&b"HIT"[..])
    );
    assert!(got.headers.contains_key("age"));
    assert!(got.headers.get("connection").is_none());
    assert_eq!(a.requests(), 1, "the hit went to the origin");
    // a conditional request is not a plain hit: it goes through to the origin
    let got = request(
        &mut s,
        "GET",
        "https://a.test/page",
        &[("range", "bytes=0-3")],
        None,
    )
    .await
    .expect("GET with Range");
    assert_eq!(got.status, 200);
    assert_eq!(a.requests(), 2);
}

/// `quic.retry_above: 0`: every new client proves its address with a Retry round trip
/// first, and is then served. `quic.idle_timeout`: a connection with no packets for that
/// long is closed, and the open connection gauge comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_retry_validates_addresses_and_idle_connections_close() {
    let a = OriginBuilder::new("a").body("ok").run().await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-idle");
    let quic = "    quic: {idle_timeout: 1s, handshake_timeout: 2s, retry_above: 0}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, ""));
    let e = endpoint(&pki);
    let (conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let got = request(&mut s, "GET", "https://a.test/", &[], None)
        .await
        .expect("GET");
    assert_eq!(got.status, 200);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "stepstone_quic_retries_total{listener=\"edge\"}"),
        1.0
    );
    let t0 = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the idle connection was not closed");
    assert!(
        matches!(why, quinn::ConnectionError::TimedOut),
        "closed for another reason: {why}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&proxy).await;
        if metric(&m, "stepstone_quic_connections_open{listener=\"edge\"}") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `-t` refuses misplaced or bad HTTP/3 keys, naming the file, the key path and the value.
#[test]
fn h3_bad_keys_are_config_errors() {
    use crate::support::proxy::run_cli;
    let pki = Pki::new("h3-config");
    let (c, k) = pki.server("site", "a.test", &["a.test"], 0x500);
    let https = |extra: &str| {
        format!(
            "listeners:\n  - name: s\n    address: 127.0.0.1:18443\n    protocol: https\n{extra}    tls: {{certificates: [{{cert: {}, key: {}}}]}}\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}]}}]\nroutes: [{{listener: s, upstream: a}}]\n",
            p(&c),
            p(&k)
        )
    };
    let plain = "listeners: [{name: w, address: 127.0.0.1:18080, protocol: http, http3: true}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\nroutes: [{listener: w, upstream: a}]\n".to_string();
    let cases = [
        (plain, "listeners[0].http3", "http"),
        (
            https("    quic: {max_streams: 5}\n"),
            "listeners[0].quic",
            "only valid with http3: true",
        ),
        (
            https("    http3: true\n    quic: {max_stream: 5}\n"),
            "max_stream",
            "unknown field",
        ),
        (
            https("    http3: true\n    quic: {max_streams: 0}\n"),
            "listeners[0].quic.max_streams",
            "0",
        ),
        (
            https("    http3: true\n    quic: {idle_timeout: 0s}\n"),
            "listeners[0].quic.idle_timeout",
            "0s",
        ),
    ];
    for (i, (text, path, value)) in cases.iter().enumerate() {
        let file = pki.dir.join(format!("bad{i}.yaml"));
        std::fs::write(&file, text).expect("write config");
        let f = file.display().to_string();
        let (code, out) = run_cli(&["-t", "-c", &f]);
        assert_ne!(code, 0, "accepted: {text}");
        assert!(out.contains(&f), "file not named: {out}");
        assert!(out.contains(path), "key path {path} not named: {out}");
        assert!(out.contains(value), "value {value} not named: {out}");
    }
    // and the good form passes
    let file = pki.dir.join("good.yaml");
    std::fs::write(
        &file,
        https("    http3: true\n    quic: {max_streams: 50}\n"),
    )
    .expect("write");
    let (code, out) = run_cli(&["-t", "-c", &file.display().to_string()]);
    assert_eq!(code, 0, "{out}");
}

/// A backend that cannot be reached answers a POST at once, while the client is still in
/// the middle of its body: the body is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_failed_backend_answers_without_waiting_for_the_rest_of_the_body() {
    let down: SocketAddr = ([127, 0, 0, 1], crate::support::free_port()).into();
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-down");
    let proxy = start(&pki, &config(&pki, down, b.addr, "", ""));
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let req = http::Request::post("https://a.test/upload")
        .header("content-length", "1000000")
        .body(())
        .expect("request");
    let mut stream = s.send_request(req).await.expect("send");
    stream
        .send_data(Bytes::from(vec![b'x'; 10_000]))
        .await
        .expect("first piece");
    // the rest of the body never comes
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.recv_response())
        .await
        .expect("no answer while the body was incomplete")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 502);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// `quic.max_streams`: a client may have that many requests open at once on a connection;
/// QUIC's stream credit holds the rest back until one ends, so all succeed and the origin
/// never sees more at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_max_streams_holds_extra_requests_back() {
    let a = OriginBuilder::new("a")
        .body("ok")
        .delay(Duration::from_millis(200))
        .run()
        .await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-maxstreams");
    let quic = "    quic: {max_streams: 4}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, ""));
    let e = endpoint(&pki);
    let (_conn, s) = connect(&e, proxy.addr, "a.test").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut s = s.clone();
        tasks.push(tokio::spawn(async move {
            request(&mut s, "GET", &format!("https://a.test/m{i}"), &[], None).await
        }));
    }
    for t in tasks {
        let got = t.await.expect("task").expect("answered");
        assert_eq!(got.status, 200);
    }
    assert_eq!(a.requests(), 12);
    let peak = a.state.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=4).contains(&peak), "origin saw {peak} at once");
}
