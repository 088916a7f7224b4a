//! TLS offload and HTTP/2: SNI certificate choice, ALPN h2 with many streams, mTLS, TLS to
//! backends (verification fails closed), the https redirect, h2c, certificate reload, bad
//! bytes on a TLS port, and the `-t` checks of certificate files. Certificates are
//! generated per test (support::pki); the clients are real TLS stacks (OpenSSL through
//! tokio-openssl, the h2 crate, curl).

use crate::support::pki::{cn_of, serial_of, write_atomic, Ca, Leaf, EXPIRED};
use crate::support::proxy::{render, run_cli};
use crate::support::{admin_reload, scratch_dir, OriginBuilder, Proxy};
use bytes::Bytes;
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

type Tls = SslStream<TcpStream>;

fn start(dir: PathBuf, template: &str) -> Proxy {
    let (text, ports) = render(template, &dir);
    Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// What a TLS client can be told: trusted CA, SNI, ALPN offer, client certificate.
#[derive(Clone, Default)]
struct ClientOpts {
    ca: Option<PathBuf>,
    sni: Option<String>,
    alpn: Vec<&'static str>,
    client: Option<(PathBuf, PathBuf)>,
    max_version: Option<SslVersion>,
}

impl ClientOpts {
    fn new(ca: &Path, sni: &str) -> ClientOpts {
        ClientOpts {
            ca: Some(ca.to_path_buf()),
            sni: Some(sni.to_string()),
            ..Default::default()
        }
    }
    fn alpn(mut self, a: &[&'static str]) -> Self {
        self.alpn = a.to_vec();
        self
    }
    fn client(mut self, cert: &Path, key: &Path) -> Self {
        self.client = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }
}

async fn connect(addr: SocketAddr, o: &ClientOpts) -> Result<Tls, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    match &o.ca {
        Some(ca) => b.set_ca_file(ca).map_err(|e| e.to_string())?,
        None => b.set_verify(SslVerifyMode::NONE),
    }
    if !o.alpn.is_empty() {
        let mut wire = Vec::new();
        for a in &o.alpn {
            wire.push(a.len() as u8);
            wire.extend_from_slice(a.as_bytes());
        }
        b.set_alpn_protos(&wire).map_err(|e| e.to_string())?;
    }
    if let Some((c, k)) = &o.client {
        b.set_certificate_chain_file(c).map_err(|e| e.to_string())?;
        b.set_private_key_file(k, SslFiletype::PEM)
            .map_err(|e| e.to_string())?;
    }
    if let Some(v) = o.max_version {
        b.set_max_proto_version(Some(v))
            .map_err(|e| e.to_string())?;
        b.set_min_proto_version(None).map_err(|e| e.to_string())?;
        // OpenSSL 3 refuses TLS 1.1 at its default security level before it even tries.
        b.set_cipher_list("DEFAULT:@SECLEVEL=0")
            .map_err(|e| e.to_string())?;
    }
    let mut cfg = b.build().configure().map_err(|e| e.to_string())?;
    let ssl = match &o.sni {
        Some(name) => cfg.into_ssl(name),
        None => {
            cfg.set_use_server_name_indication(false);
            cfg.set_verify_hostname(false);
            cfg.into_ssl("unused")
        }
    }
    .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(s)
}

/// CN and serial of the certificate the proxy served.
fn served(s: &Tls) -> (String, String) {
    let c = s.ssl().peer_certificate().expect("peer certificate");
    (cn_of(&c), serial_of(&c))
}

struct H1 {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// One HTTP/1.1 request on an established stream (keep-alive; Content-Length bodies).
async fn h1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<H1> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(H1 { status, head, body })
}

/// Poll `f` until it is true or the generous deadline passes.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_path: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch_dir(tag);
        let ca = Ca::new("Stepstone Test CA");
        let ca_path = ca.write(&dir, "ca");
        Pki { dir, ca, ca_path }
    }
    fn server(&self, name: &str, cn: &str, sans: &[&str], serial: u32) -> (PathBuf, PathBuf) {
        self.ca.server(cn, sans, serial).write(&self.dir, name)
    }
}

fn https_listener(certs: &[(&Path, &Path, &[&str])], extra: &str) -> String {
    let mut s = String::from(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:{{port}}\n    protocol: https\n    tls:\n      certificates:\n",
    );
    for (c, k, names) in certs {
        s.push_str(&format!(
            "        - {{cert: {}, key: {}, server_names: [{}]}}\n",
            p(c),
            p(k),
            names.join(", ")
        ));
    }
    for l in extra.lines() {
        s.push_str(&format!("      {l}\n"));
    }
    s
}

fn app_upstream(origin: SocketAddr, listener: &str) -> String {
    format!(
        "upstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\nroutes:\n  - {{listener: {listener}, upstream: app}}\n"
    )
}

/// A fresh origin behind an https listener whose one certificate (serial `serial`) names
/// `a.test`, with `extra` lines in its `tls` block. The origin must outlive the proxy.
async fn a_test_proxy(tag: &str, serial: u32, extra: &str) -> (crate::support::Origin, Pki, Proxy) {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new(tag);
    let (c, k) = pki.server("s", "a.test", &["a.test"], serial);
    let cfg = format!(
        "{}{}",
        https_listener(&[(&c, &k, &[])], extra),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    (origin, pki, proxy)
}

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

async fn h2_get(
    client: h2::client::SendRequest<Bytes>,
    uri: &str,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let mut c = client.ready().await?;
    let req = http::Request::builder().uri(uri).body(()).expect("request");
    let (resp, _) = c.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let data = crate::support::client::h2_body(&mut resp.into_body()).await?;
    Ok((status, data))
}

/// An https listener with `header_timeout: 1s` (and `keepalive_timeout: 120s`, so a close
/// within 15 s is the header timeout's), and a client connected to it with ALPN `alpn`.
async fn client_with_a_1s_header_timeout(
    tag: &str,
    alpn: &'static str,
) -> (crate::support::Origin, Proxy, Tls) {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new(tag);
    let (c, k) = pki.server("a", "a.test", &["a.test"], 21);
    let cfg = format!(
        "{}    limits: {{header_timeout: 1s, keepalive_timeout: 120s}}\n{}",
        https_listener(&[(&c, &k, &["a.test"])], ""),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let s = connect(
        proxy.addr,
        &ClientOpts::new(&pki.ca_path, "a.test").alpn(&[alpn]),
    )
    .await
    .expect("handshake");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(alpn.as_bytes()));
    (origin, proxy, s)
}

async fn h2_client_with_a_1s_header_timeout(tag: &str) -> (crate::support::Origin, Proxy, Tls) {
    client_with_a_1s_header_timeout(tag, "h2").await
}

/// After its TLS handshake, a client that asks nothing is closed at `header_timeout` (1 s),
/// the first request's limit, not at `keepalive_timeout` (120 s), as on plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_client_that_asks_nothing_after_its_handshake_is_closed_at_the_header_timeout() {
    let (_origin, proxy, mut s) =
        client_with_a_1s_header_timeout("tls-silent-h1", "http/1.1").await;
    closed_at_the_header_timeout(&mut s, &proxy, None).await;
}

/// Read (and drop) until the proxy closes `s`; fails if it is open after 15 s, or closed in
/// under 0.9 s (before the 1 s timeout), or `line` (if any) is not in the log.
async fn closed_at_the_header_timeout(s: &mut Tls, proxy: &Proxy, line: Option<&str>) {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // the server's SETTINGS may come first; what matters is the close that follows
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open 15 s after a 1 s header timeout:\n{}",
        proxy.log()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout:\n{}",
        t0.elapsed(),
        proxy.log()
    );
    let Some(line) = line else { return };
    // the line is written just after the socket closes
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains(line) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.log().contains(line), "no log line:\n{}", proxy.log());
}

/// A client that negotiates h2 and then sends nothing holds a connection slot and a codec:
/// its preface is due within the listener's `header_timeout`, as an HTTP/1 request head is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_sends_no_preface_is_closed_at_the_header_timeout() {
    let (_origin, proxy, mut s) = h2_client_with_a_1s_header_timeout("tls-h2-preface").await;
    closed_at_the_header_timeout(&mut s, &proxy, Some("sent no preface within 1s")).await;
}

/// Over TLS (h2 by ALPN) as over h2c: a HEADERS frame sent in part is due within
/// `header_timeout`, not `keepalive_timeout`, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_inside_a_headers_frame_is_closed_at_the_header_timeout() {
    use crate::support::h2raw::{
        block, frame, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS,
    };
    use tokio::io::AsyncWriteExt;
    let (origin, proxy, mut s) = h2_client_with_a_1s_header_timeout("tls-h2-slow-headers").await;
    let fields = block(&[
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/slow"),
        (b":authority", b"a.test"),
    ]);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    let headers = frame(HEADERS, END_STREAM | END_HEADERS, 1, &fields);
    hello.extend(&headers[..headers.len() - 3]);
    s.write_all(&hello).await.expect("send");
    closed_at_the_header_timeout(&mut s, &proxy, Some("a header block incomplete after 1s")).await;
    assert!(origin.recorded().is_empty(), "{:?}", origin.recorded());
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

/// A TLS origin: optional client verification, ALPN h2 or http/1.1, and counters that show
/// what reached it. Connections whose first byte is not a TLS handshake count as plaintext.
struct TlsOrigin {
    addr: SocketAddr,
    /// (protocol, path) of each request that arrived over TLS.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    plaintext: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
    /// The far address of each connection accepted.
    peers: Peers,
    /// The key exchange group of each handshake, in order (`SSL_get_negotiated_group`).
    groups: Arc<Mutex<Vec<std::ffi::c_long>>>,
}

type Peers = Arc<Mutex<Vec<SocketAddr>>>;

impl TlsOrigin {
    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().expect("lock").clone()
    }
    fn served(&self, path: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(_, p)| p == path)
            .map(|(proto, _)| proto)
            .collect()
    }
}

async fn tls_origin(leaf: &Leaf, client_ca: Option<&X509>, allow_h2: bool) -> TlsOrigin {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
    b.set_certificate(&leaf.cert).expect("cert");
    b.set_private_key(&leaf.key).expect("key");
    if let Some(ca) = client_ca {
        let mut store = X509StoreBuilder::new().expect("store");
        store.add_cert(ca.clone()).expect("add ca");
        b.set_verify_cert_store(store.build())
            .expect("verify store");
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    b.set_alpn_select_callback(move |_, offered| {
        let prefs: &[u8] = if allow_h2 {
            b"\x02h2\x08http/1.1"
        } else {
            b"\x08http/1.1"
        };
        openssl::ssl::select_next_proto(prefs, offered).ok_or(openssl::ssl::AlpnError::NOACK)
    });
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let o = TlsOrigin {
        addr: listener.local_addr().expect("addr"),
        requests: Default::default(),
        plaintext: Default::default(),
        failed_handshakes: Default::default(),
        peers: Default::default(),
        groups: Default::default(),
    };
    let (requests, plaintext, failed, peers, groups) = (
        o.requests.clone(),
        o.plaintext.clone(),
        o.failed_handshakes.clone(),
        o.peers.clone(),
        o.groups.clone(),
    );
    tokio::spawn(async move {
        while let Ok((tcp, far)) = listener.accept().await {
            peers.lock().expect("lock").push(far);
            let (acceptor, requests, plaintext, failed, groups) = (
                acceptor.clone(),
                requests.clone(),
                plaintext.clone(),
                failed.clone(),
                groups.clone(),
            );
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                if first[0] != 0x16 {
                    plaintext.fetch_add(1, SeqCst);
                    return;
                }
                let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                    return;
                };
                let Ok(mut s) = SslStream::new(ssl, tcp) else {
                    return;
                };
                if Pin::new(&mut s).accept().await.is_err() {
                    failed.fetch_add(1, SeqCst);
                    return;
                }
                groups.lock().expect("lock").push(negotiated_group(s.ssl()));
                if s.ssl().selected_alpn_protocol() == Some(b"h2") {
                    serve_h2(s, requests).await;
                } else {
                    serve_h1(s, requests).await;
                }
            });
        }
    });
    o
}

async fn serve_h1(mut s: Tls, requests: Arc<Mutex<Vec<(String, String)>>>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        requests
            .lock()
            .expect("lock")
            .push(("http/1.1".into(), path));
        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Proto: http/1.1\r\n\r\ntls-origin";
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A TLS backend (`backend.test`) that wants a client certificate from the test CA, the
/// proxy's client certificate and key for it, and a second CA, which the backend's
/// certificate does not chain to.
struct Mtls {
    pki: Pki,
    origin: TlsOrigin,
    client: (PathBuf, PathBuf),
    other_ca: PathBuf,
}

/// [`Mtls`]; its certificates take serials `serial` and `serial + 1`.
async fn mtls_backend(tag: &str, serial: u32, allow_h2: bool) -> Mtls {
    let pki = Pki::new(tag);
    let backend = pki.ca.server("backend.test", &["backend.test"], serial);
    let origin = tls_origin(&backend, Some(&pki.ca.cert), allow_h2).await;
    let client = pki
        .ca
        .client("stepstone", serial + 1)
        .write(&pki.dir, "proxy-client");
    let other_ca = Ca::new("Other CA").write(&pki.dir, "other-ca");
    Mtls {
        pki,
        origin,
        client,
        other_ca,
    }
}

async fn serve_h2<T>(s: T, requests: Arc<Mutex<Vec<(String, String)>>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(s).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        requests
            .lock()
            .expect("lock")
            .push(("h2".into(), req.uri().path().to_string()));
        // As nginx: a Host field beside :authority is answered with 400.
        let status = if req.headers().contains_key(http::header::HOST) {
            400
        } else {
            200
        };
        let resp = http::Response::builder()
            .status(status)
            .header("x-proto", "h2")
            .body(())
            .expect("response");
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(Bytes::from_static(b"tls-origin"), true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_fails_closed_and_speaks_h2_and_mtls() {
    // A backend that wants a client certificate from our CA, and offers h2.
    let Mtls {
        pki,
        origin,
        client: (cc, ck),
        other_ca: other_path,
    } = mtls_backend("tls-up", 40, true).await;
    let up = |name: &str, extra: &str| {
        format!(
            "  - name: {name}\n    backends: [{{address: {}}}]\n    tls: true\n    client_cert: {}\n    client_key: {}\n    retries: 0\n{extra}",
            origin.addr,
            p(&cc),
            p(&ck)
        )
    };
    let ca = p(&pki.ca_path);
    let nocert = format!(
        "  - name: nocert\n    backends: [{{address: {}}}]\n    tls: true\n    sni: backend.test\n    ca_file: {ca}\n    retries: 0\n",
        origin.addr
    );
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n{}{}{}{}{}{}routes:\n  - {{listener: web, path_prefix: /good, upstream: good}}\n  - {{listener: web, path_prefix: /h2, upstream: h2}}\n  - {{listener: web, path_prefix: /wrongca, upstream: wrongca}}\n  - {{listener: web, path_prefix: /wrongname, upstream: wrongname}}\n  - {{listener: web, path_prefix: /noverify, upstream: noverify}}\n  - {{listener: web, path_prefix: /nocert, upstream: nocert}}\n",
        up("good", &format!("    sni: backend.test\n    ca_file: {ca}\n")),
        up("h2", &format!("    sni: backend.test\n    ca_file: {ca}\n    http2: true\n")),
        up("wrongca", &format!("    sni: backend.test\n    ca_file: {}\n", p(&other_path))),
        up("wrongname", &format!("    sni: other.test\n    ca_file: {ca}\n")),
        up("noverify", &format!("    verify: false\n    ca_file: {}\n", p(&other_path))),
        nocert,
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let get = |path: &'static str| crate::support::client::get(proxy.addr, path, &[]);

    let r = get("/good").await.expect("good");
    assert_eq!((r.status, r.text().as_str()), (200, "tls-origin"));
    assert_eq!(r.header("x-proto"), Some("http/1.1"));
    let r = get("/h2").await.expect("h2");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proto"), Some("h2"));
    assert_eq!(origin.served("/h2"), vec!["h2".to_string()]);

    // Verification failures: 502, a log line that says so, nothing sent to the backend.
    for path in ["/wrongca", "/wrongname"] {
        let r = get(path).await.expect("response");
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(origin.served(path).is_empty(), "{path} reached the backend");
    }
    let log = proxy.log();
    assert!(
        log.contains("upstream wrongca: backend")
            && log.contains("certificate verification failed"),
        "{log}"
    );
    assert!(log.contains("upstream wrongname: backend"), "{log}");

    // verify: false accepts the certificate; without a client certificate the backend
    // refuses the handshake: 502.
    let r = get("/noverify").await.expect("noverify");
    assert_eq!(r.status, 200);
    let r = get("/nocert").await.expect("nocert");
    assert_eq!(r.status, 502);
    assert!(origin.served("/nocert").is_empty());
    // Never a plaintext fallback.
    assert_eq!(origin.plaintext.load(SeqCst), 0);
    assert!(origin.failed_handshakes.load(SeqCst) >= 1);
}

/// `SSL_get_negotiated_group`, a macro the openssl crates do not wrap: the NID of a classic
/// group, or the TLS code point with `TLSEXT_nid_unknown` set for a provider's group.
fn negotiated_group(ssl: &openssl::ssl::SslRef) -> std::ffi::c_long {
    use foreign_types::ForeignTypeRef;
    const SSL_CTRL_GET_NEGOTIATED_GROUP: std::ffi::c_int = 134;
    // SAFETY: a get control on a live SSL, with no argument.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            SSL_CTRL_GET_NEGOTIATED_GROUP,
            0,
            std::ptr::null_mut(),
        )
    }
}

const NID_X25519: std::ffi::c_long = 1034;
/// X25519MLKEM768's code point, as `SSL_get_negotiated_group` reports it.
const X25519MLKEM768: std::ffi::c_long = 0x1000000 | 0x11EC;

/// Checks of a TLS upstream speak TLS to it. Each check's handshake offers one classical key
/// share (X25519), so that a backend that prefers the post-quantum hybrid, as OpenSSL 3.5 and
/// later do by default, answers it without a second key pair or a retry; requests keep the
/// hybrid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_to_tls_upstreams_with_one_classical_key_share() {
    let pki = Pki::new("tls-hc");
    let backend = pki.ca.server("backend.test", &["backend.test"], 50);
    let origin = tls_origin(&backend, None, false).await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\n    tls: true\n    sni: backend.test\n    ca_file: {}\n    health_check: {{type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1}}\nroutes:\n  - {{listener: web, upstream: app}}\n",
        origin.addr,
        p(&pki.ca_path)
    );
    let proxy = start(pki.dir.clone(), &cfg);
    eventually("three health checks over TLS", || async {
        origin.served("/healthz").len() >= 3
    })
    .await;
    // no request yet: every handshake so far was a check's
    let checks = origin.groups.lock().expect("lock").clone();
    assert!(checks.len() >= 3, "{checks:?}");
    assert!(
        checks.iter().all(|g| *g == NID_X25519),
        "the checks' groups (X25519 is {NID_X25519}): {checks:?}"
    );
    let r = crate::support::client::get(proxy.addr, "/", &[])
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    let all = origin.groups.lock().expect("lock").clone();
    assert!(
        all[checks.len()..].contains(&X25519MLKEM768),
        "no X25519MLKEM768 handshake for the request: {all:?}"
    );
    assert!(!proxy.log().contains("is unhealthy"), "{}", proxy.log());
    assert_eq!(origin.plaintext.load(SeqCst), 0);
}

/// An h2c backend: HTTP/2 by prior knowledge on plain TCP.
struct H2cOrigin {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    /// How many connections it accepted.
    conns: Arc<AtomicUsize>,
    /// The far address of each.
    peers: Peers,
}

async fn h2c_origin() -> H2cOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let o = H2cOrigin {
        addr: listener.local_addr().expect("addr"),
        requests: Default::default(),
        conns: Default::default(),
        peers: Default::default(),
    };
    let (r, c, peers) = (o.requests.clone(), o.conns.clone(), o.peers.clone());
    tokio::spawn(async move {
        while let Ok((tcp, far)) = listener.accept().await {
            c.fetch_add(1, SeqCst);
            peers.lock().expect("lock").push(far);
            tokio::spawn(serve_h2(tcp, r.clone()));
        }
    });
    o
}

/// An `http2` upstream's HTTP check is an HTTP/2 request with its scheme and authority as
/// pseudo-header fields and no Host field (which nginx, and the backends here, answer with
/// 400), over TLS (h2 by ALPN) and in cleartext (h2c); with `reuse_connection`, on one
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_are_checked_over_http2() {
    let pki = Pki::new("tls-hc-h2");
    let backend = pki.ca.server("backend.test", &["backend.test"], 70);
    let origin = tls_origin(&backend, None, true).await;
    let h2c_o = h2c_origin().await;
    let kept_o = h2c_origin().await;
    let (h2c, kept) = (h2c_o.addr, kept_o.addr);
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: tls_h2\n    backends: [{{address: {}}}]\n    tls: true\n    sni: backend.test\n    ca_file: {}\n    http2: true\n    health_check: {{type: http, path: /healthz, host: backend.test, interval: 100ms, unhealthy_threshold: 1}}\n  - name: h2c\n    backends: [{{address: {h2c}}}]\n    http2: true\n    health_check: {{type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1}}\n  - name: kept\n    backends: [{{address: {kept}}}]\n    http2: true\n    health_check: {{type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1, reuse_connection: true}}\nroutes:\n  - {{listener: web, upstream: tls_h2}}\n",
        origin.addr,
        p(&pki.ca_path)
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let h2_checks = |seen: &Arc<Mutex<Vec<(String, String)>>>| {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|(proto, path)| proto == "h2" && path == "/healthz")
            .count()
    };
    eventually("three HTTP/2 checks of each backend", || async {
        h2_checks(&origin.requests) >= 3
            && h2_checks(&h2c_o.requests) >= 3
            && h2_checks(&kept_o.requests) >= 3
    })
    .await;
    let log = proxy.log();
    assert!(!log.contains("is unhealthy"), "{log}");
    assert!(
        h2c_o.conns.load(SeqCst) >= 3,
        "{} connections for the h2c checks",
        h2c_o.conns.load(SeqCst)
    );
    assert_eq!(
        kept_o.conns.load(SeqCst),
        1,
        "the kept connection was not reused"
    );
    // each check's connection was reset, not shut down: none waits in TIME_WAIT on our side
    for (what, to, peers) in [
        ("TLS", origin.addr, &origin.peers),
        ("h2c", h2c, &h2c_o.peers),
    ] {
        assert_eq!(
            time_wait(peers, to),
            0,
            "TIME_WAIT sockets to the {what} backend"
        );
    }
    let r = crate::support::client::get(proxy.addr, "/", &[])
        .await
        .expect("response");
    assert_eq!((r.status, r.header("x-proto")), (200, Some("h2")));
}

/// A kept HTTP/2 check connection that the backend ended meanwhile (GOAWAY and a close, as
/// nginx does at its idle timeout), or on which it refuses the next request
/// (REFUSED_STREAM), is replaced within the same check, never counted as a failure: with
/// `unhealthy_threshold: 1` one would take the backend out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_http2_check_connection_ended_by_the_backend_is_not_a_failure() {
    for refuse in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (answered, conns) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (answered.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, SeqCst);
                let a = a.clone();
                // each connection answers one request, then ends (or refuses the next first)
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    if let Some(Ok((_, mut respond))) = conn.accept().await {
                        let resp = http::Response::builder()
                            .status(200)
                            .body(())
                            .expect("response");
                        if respond.send_response(resp, true).is_ok() {
                            a.fetch_add(1, SeqCst);
                        }
                    }
                    if refuse {
                        if let Some(Ok((_, mut respond))) = conn.accept().await {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                    }
                    conn.graceful_shutdown();
                    while let Some(Ok(_)) = conn.accept().await {}
                });
            }
        });
        let p = Proxy::start_logging(
            &format!(
                "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {addr}}}]\n    http2: true\n    health_check: {{type: http, interval: 100ms, unhealthy_threshold: 1, reuse_connection: true}}\nroutes:\n  - {{listener: web, upstream: app}}\n"
            ),
            "info",
        );
        eventually("six checks answered", || async {
            answered.load(SeqCst) >= 6
        })
        .await;
        let log = p.log();
        assert!(!log.contains("is unhealthy"), "refuse {refuse}: {log}");
        assert!(
            conns.load(SeqCst) >= 6,
            "refuse {refuse}: {} connections: the checks did not open new ones",
            conns.load(SeqCst)
        );
    }
}

/// TLS checks share one connector, yet each upstream's are verified by its own trust, name
/// and client certificate, as its requests are: a check through the right ones passes, one
/// that a request would fail fails, over TCP and HTTP alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_health_checks_verify_each_upstreams_trust_name_and_client_certificate() {
    let Mtls {
        pki,
        origin,
        client: (cc, ck),
        other_ca: other_path,
    } = mtls_backend("tls-hc-verify", 60, false).await;
    let (ca, wrong_ca) = (p(&pki.ca_path), p(&other_path));
    let client = format!("    client_cert: {}\n    client_key: {}\n", p(&cc), p(&ck));
    let up = |name: &str, kind: &str, ca: &str, sni: &str, cert: &str| {
        let path = if kind == "http" {
            format!(", path: /healthz-{name}")
        } else {
            String::new()
        };
        format!(
            "  - name: {name}\n    backends: [{{address: {}}}]\n    tls: true\n    sni: {sni}\n    ca_file: {ca}\n{cert}    health_check: {{type: {kind}{path}, interval: 100ms, unhealthy_threshold: 1}}\n",
            origin.addr
        )
    };
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n{}{}{}{}{}{}routes:\n  - {{listener: web, path_prefix: /good, upstream: good_http}}\n  - {{listener: web, path_prefix: /tcp, upstream: good_tcp}}\n",
        up("good_tcp", "tcp", &ca, "backend.test", &client),
        up("good_http", "http", &ca, "backend.test", &client),
        up("wrongca_tcp", "tcp", &wrong_ca, "backend.test", &client),
        up("wrongca_http", "http", &wrong_ca, "backend.test", &client),
        up("wrongname_tcp", "tcp", &ca, "other.test", &client),
        up("nocert_http", "http", &ca, "backend.test", ""),
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let bad = [
        "wrongca_tcp",
        "wrongca_http",
        "wrongname_tcp",
        "nocert_http",
    ];
    eventually("every misconfigured upstream's check failed", || async {
        let log = proxy.log();
        bad.iter()
            .all(|u| log.contains(&format!("upstream {u}: backend")))
    })
    .await;
    // several passes of the good ones, each a check over TLS that the backend answered
    eventually(
        "the good HTTP check reached the backend three times",
        || async { origin.served("/healthz-good_http").len() >= 3 },
    )
    .await;
    let log = proxy.log();
    for u in bad {
        assert!(
            log.contains(&format!("upstream {u}: backend"))
                && log
                    .lines()
                    .any(|l| l.contains(&format!("upstream {u}: ")) && l.contains("is unhealthy")),
            "{u} not marked unhealthy:\n{log}"
        );
    }
    for u in ["good_tcp", "good_http"] {
        assert!(
            !log.contains(&format!("upstream {u}: backend")),
            "{u}'s checks failed:\n{log}"
        );
    }
    // none of the failing checks got as far as a request
    for u in ["wrongca_http", "nocert_http"] {
        assert!(
            origin.served(&format!("/healthz-{u}")).is_empty(),
            "{u}'s check reached the backend"
        );
    }
    for path in ["/good", "/tcp"] {
        let r = crate::support::client::get(proxy.addr, path, &[])
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(origin.plaintext.load(SeqCst), 0);
    // the checks' connections were reset, not closed: none waits in TIME_WAIT on our side
    assert_eq!(
        time_wait(&origin.peers, origin.addr),
        0,
        "TIME_WAIT sockets to the backend"
    );
}

/// Sockets in TIME_WAIT from one of `peers` to `to`, from /proc/net/tcp (IPv4 loopback only).
/// Both ends count: a far end alone would also match another test's server socket whose
/// client once had `to`'s port as its ephemeral port.
fn time_wait(peers: &Peers, to: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    // the kernel prints the address as the 32-bit value in host order (little endian here)
    let hex = |a: &SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => {
            format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port())
        }
        std::net::IpAddr::V6(_) => panic!("{a} is not IPv4"),
    };
    let far = hex(&to);
    let near: Vec<String> = peers.lock().expect("lock").iter().map(hex).collect();
    assert!(!near.is_empty(), "no connection reached {to}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|n| near.iter().any(|p| p == n))
                && f.get(2) == Some(&far.as_str())
                && f.get(3) == Some(&"06")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_redirects_to_https() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, redirect_https: true, https_port: 8443}}\n  - {{name: std, address: 127.0.0.1:{{{{port1}}}}, protocol: http, redirect_https: true}}\n{}",
        app_upstream(origin.addr, "web")
    );
    let proxy = Proxy::start(&cfg);
    let mut c = crate::support::Conn::connect(proxy.addr)
        .await
        .expect("connect");
    let r = c
        .get("/a/b?x=1", &[("Host", "example.com")])
        .await
        .expect("response");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://example.com:8443/a/b?x=1")
    );
    // Keep-alive survives a GET redirect.
    let r = c
        .get("/", &[("Host", "example.com:80")])
        .await
        .expect("response");
    assert_eq!(r.header("location"), Some("https://example.com:8443/"));
    let r = c
        .request("POST", "/form", &[("Host", "example.com")], b"a=1")
        .await
        .expect("response");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.com:8443/form"));
    // a spent Max-Forwards is redirected as any request: the redirect is the final answer
    let mut c = crate::support::Conn::connect(proxy.addr)
        .await
        .expect("connect");
    let r = c
        .request(
            "OPTIONS",
            "/o",
            &[("Host", "example.com"), ("Max-Forwards", "0")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.com:8443/o"));
    let r = crate::support::client::get(proxy.addr_of(1), "/p", &[("Host", "www.example.org")])
        .await
        .expect("response");
    assert_eq!(r.header("location"), Some("https://www.example.org/p"));
    // A Host that cannot go into a URL is refused, not reflected.
    let r = crate::support::client::get(proxy.addr, "/", &[("Host", "evil.com/x")])
        .await
        .expect("response");
    assert_eq!(r.status, 400);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_serves_http2_and_http1() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n{}",
        app_upstream(origin.addr, "web")
    );
    let proxy = Proxy::start(&cfg);
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            h2_get(c, &format!("http://localhost/c{i}")).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("task").expect("h2c stream");
        assert_eq!((status, body.as_slice()), (200, &b"app"[..]));
    }
    let r = crate::support::client::get(proxy.addr, "/h1", &[])
        .await
        .expect("h1");
    assert_eq!(r.status, 200);
    let rec = origin.recorded();
    assert_eq!(rec.len(), 11);
    assert!(rec
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("http")));
}

async fn serial_served(addr: SocketAddr, ca: &Path) -> Option<String> {
    let s = connect(addr, &ClientOpts::new(ca, "reload.test"))
        .await
        .ok()?;
    Some(served(&s).1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_the_certificate_and_a_bad_one_keeps_the_old() {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new("tls-reload");
    let first = pki.ca.server("reload.test", &["reload.test"], 0x100);
    let (c, k) = first.write(&pki.dir, "site");
    let cfg = format!(
        "{}{}",
        https_listener(&[(&c, &k, &[])], "reload_interval: 100ms"),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    assert_eq!(
        serial_served(proxy.addr, &pki.ca_path).await.as_deref(),
        Some("0100")
    );
    // A connection opened before the swap keeps working after it.
    let mut old = connect(proxy.addr, &ClientOpts::new(&pki.ca_path, "reload.test"))
        .await
        .expect("connect");
    assert_eq!(
        h1(&mut old, "reload.test", "/").await.expect("r").status,
        200
    );

    let second = pki.ca.server("reload.test", &["reload.test"], 0x101);
    second.write(&pki.dir, "site");
    eventually("the new certificate is served", || async {
        serial_served(proxy.addr, &pki.ca_path).await.as_deref() == Some("0101")
    })
    .await;
    assert_eq!(
        h1(&mut old, "reload.test", "/").await.expect("r").status,
        200
    );

    // A certificate whose key is not in place is refused; the old pair stays.
    let third = pki.ca.server("reload.test", &["reload.test"], 0x102);
    write_atomic(&c, &third.cert.to_pem().expect("pem"));
    eventually("the refusal is logged", || async {
        proxy.log().contains("keeping the current certificates")
    })
    .await;
    assert_eq!(
        serial_served(proxy.addr, &pki.ca_path).await.as_deref(),
        Some("0101")
    );
    let log = proxy.log();
    assert!(
        log.contains("is not the private key of the certificate"),
        "{log}"
    );
    // Garbage is refused as well.
    write_atomic(&c, b"not a certificate");
    eventually("the garbage is refused", || async {
        proxy.log().contains("is not a PEM certificate")
            || proxy.log().contains("holds no PEM certificate")
    })
    .await;
    assert_eq!(
        serial_served(proxy.addr, &pki.ca_path).await.as_deref(),
        Some("0101")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new("tls-hup");
    let (c, k) = pki
        .ca
        .server("reload.test", &["reload.test"], 0x200)
        .write(&pki.dir, "site");
    let cfg = format!(
        "{}{}",
        https_listener(&[(&c, &k, &[])], "reload_interval: 0s"),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    eventually("the reload service is up", || async {
        proxy.log().contains("certificate reload ready")
    })
    .await;
    pki.ca
        .server("reload.test", &["reload.test"], 0x201)
        .write(&pki.dir, "site");
    // Polling is off: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        serial_served(proxy.addr, &pki.ca_path).await.as_deref(),
        Some("0200")
    );
    proxy.signal(libc::SIGHUP);
    eventually("SIGHUP swaps the certificate", || async {
        serial_served(proxy.addr, &pki.ca_path).await.as_deref() == Some("0201")
    })
    .await;
    assert!(proxy.log().contains("certificates reloaded (SIGHUP)"));
}

/// `POST /api/reload` does what SIGHUP does, certificates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_reloads_the_certificate_too() {
    let origin = OriginBuilder::new("app").run().await;
    let pki = Pki::new("tls-api-reload");
    let (c, k) = pki
        .ca
        .server("reload.test", &["reload.test"], 0x300)
        .write(&pki.dir, "site");
    let cfg = format!(
        "{}{}admin: {{address: 127.0.0.1:{{{{port1}}}}, token: tok}}\n",
        https_listener(&[(&c, &k, &[])], "reload_interval: 0s"),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    pki.ca
        .server("reload.test", &["reload.test"], 0x301)
        .write(&pki.dir, "site");
    let (status, text) = admin_reload(proxy.addr_of(1)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serial_served(proxy.addr, &pki.ca_path).await.as_deref(),
        Some("0301")
    );
}

/// An origin answering `app`, a test CA, and a server certificate for `cn` (written as
/// `site.crt` and `site.key`).
async fn origin_and_site(
    tag: &str,
    cn: &str,
    serial: u32,
) -> (crate::support::Origin, Pki, PathBuf, PathBuf) {
    let origin = OriginBuilder::new("app").body("app").run().await;
    let pki = Pki::new(tag);
    let (c, k) = pki.ca.server(cn, &[cn], serial).write(&pki.dir, "site");
    (origin, pki, c, k)
}

/// The admin listener's /metrics page.
async fn admin_metrics(admin: SocketAddr) -> String {
    let mut c = crate::support::Conn::connect(admin).await.expect("admin");
    let r = c
        .request("GET", "/metrics", &[("Authorization", "Bearer tok")], b"")
        .await
        .expect("answer");
    r.text()
}

/// A TLS listener added by a reload serves with its certificate, which is then watched
/// (a new file is picked up at its `reload_interval`); removed by the next reload, it refuses
/// new connections while one it accepted is still served, and its certificates leave the
/// metrics. A reload that changes its certificates list applies it in place; a bad
/// certificate file refuses the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_tls_listener_and_watches_its_certificates() {
    let (origin, pki, c, k) = origin_and_site("tls-reload-listener", "reload.test", 0x400).await;
    let base = || {
        format!(
            "admin: {{address: 127.0.0.1:{{{{port1}}}}, token: tok}}\n\
             listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
             upstreams:\n  - name: app\n    backends: [{{address: {}}}]\n\
             routes:\n  - {{listener: web, upstream: app}}\n",
            origin.addr
        )
    };
    let proxy = start(pki.dir.clone(), &base());
    let (web, admin) = (proxy.addr, proxy.addr_of(1));
    let at = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    // the file as the proxy runs it, with a listener added after `web`
    let first = std::fs::read_to_string(&proxy.config).expect("read the config");
    let web_line = format!("  - {{name: web, address: {web}, protocol: http}}\n");
    assert!(first.contains(&web_line), "{first}");
    let file = |extra: &str| first.replace(&web_line, &format!("{web_line}{extra}"));
    let tls_listener = |more: &str| {
        format!(
            "  - name: secure\n    address: {at}\n    protocol: https\n    tls: {{certificates: [{{cert: {}, key: {}}}], reload_interval: 100ms}}\n{more}",
            p(&c),
            p(&k)
        )
    };
    // the file's last list is its routes
    let with_route = |text: String| format!("{text}  - {{listener: secure, upstream: app}}\n");
    let sni = ClientOpts::new(&pki.ca_path, "reload.test");
    assert!(
        connect(at, &sni).await.is_err(),
        "something listens at {at}"
    );

    // added
    std::fs::write(&proxy.config, with_route(file(&tls_listener("")))).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let mut kept = connect(at, &sni).await.expect("the added TLS listener");
    assert_eq!(served(&kept).1, "0400");
    let r = h1(&mut kept, "reload.test", "/").await.expect("request");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));
    let label = "stepstone_tls_handshakes_total{listener=\"secure\",result=\"ok\"} 1";
    let m = admin_metrics(admin).await;
    assert!(m.contains(label), "{label} not in {m}");

    // its certificate file is watched
    pki.ca
        .server("reload.test", &["reload.test"], 0x401)
        .write(&pki.dir, "site");
    eventually("the new certificate is served", || async {
        serial_served(at, &pki.ca_path).await.as_deref() == Some("0401")
    })
    .await;

    // changed in place (a second certificate, for another name): served at once, on the
    // same socket; the connection accepted before is still served
    let (c2, k2) = pki
        .ca
        .server("other.test", &["other.test"], 0x402)
        .write(&pki.dir, "other");
    let two = tls_listener("").replace(
        "}], reload_interval",
        &format!(
            "}}, {{cert: {}, key: {}, server_names: [other.test]}}], reload_interval",
            p(&c2),
            p(&k2)
        ),
    );
    std::fs::write(&proxy.config, with_route(file(&two))).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let other = ClientOpts::new(&pki.ca_path, "other.test");
    let conn = connect(at, &other).await.expect("the changed TLS listener");
    assert_eq!(served(&conn).1, "0402");
    assert_eq!(
        serial_served(at, &pki.ca_path).await.as_deref(),
        Some("0401")
    );
    let r = h1(&mut kept, "reload.test", "/").await.expect("request");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));

    // moved to the front of the list (listeners[0] now), settings unchanged: kept, and its
    // metrics stay one series under the listener's name, counting on
    let handshakes = |m: &str| -> Option<u64> {
        let series = "stepstone_tls_handshakes_total{listener=\"secure\",result=\"ok\"} ";
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let before = handshakes(&admin_metrics(admin).await).expect("the listener's series");
    let moved = first.replace(&web_line, &format!("{}{web_line}", two));
    std::fs::write(&proxy.config, with_route(moved)).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let r = h1(&mut kept, "reload.test", "/").await.expect("request");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]), "kept");
    drop(connect(at, &sni).await.expect("the moved TLS listener"));
    let m = admin_metrics(admin).await;
    assert_eq!(handshakes(&m), Some(before + 1), "{m}");
    assert!(
        !m.contains("listeners[0].tls"),
        "a key path as a label: {m}"
    );

    // refused, nothing applied: a certificate file that is not there
    let missing = with_route(file(&tls_listener("")))
        .replace(&p(&c), &format!("{}/nowhere.pem", p(&pki.dir)));
    std::fs::write(&proxy.config, missing).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("nowhere.pem"), "{text}");
    assert_eq!(
        serial_served(at, &pki.ca_path).await.as_deref(),
        Some("0401")
    );

    // removed: new connections are refused, the one it accepted is still served
    std::fs::write(&proxy.config, file("")).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while connect(at, &sni).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "a removed TLS listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = h1(&mut kept, "reload.test", "/")
        .await
        .expect("the open connection");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));
    assert!(!admin_metrics(admin)
        .await
        .contains("stepstone_tls_handshakes_total{listener=\"secure\""));
    let r = crate::support::client::get(web, "/", &[])
        .await
        .expect("web");
    assert_eq!(r.status, 200, "the plaintext listener is untouched");
}

/// A TLS listener the process started with is removed by a reload (new connections refused,
/// its certificates gone from the metrics) and added back at the same address by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_from_the_start_is_removed_and_added_back_by_reloads() {
    let (origin, pki, c, k) = origin_and_site("tls-reload-boot", "reload.test", 0x500).await;
    // a plaintext listener beside it: a configuration needs one
    let cfg = format!(
        "{}{}  - {{listener: web, upstream: app}}\nadmin: {{address: 127.0.0.1:{{{{port1}}}}, token: tok}}\n",
        https_listener(&[(&c, &k, &[])], "").replace(
            "listeners:\n",
            "listeners:\n  - {name: web, address: 127.0.0.1:{{port2}}, protocol: http}\n"
        ),
        app_upstream(origin.addr, "tls")
    );
    let proxy = start(pki.dir.clone(), &cfg);
    let admin = proxy.addr_of(1);
    let sni = ClientOpts::new(&pki.ca_path, "reload.test");
    let with = std::fs::read_to_string(&proxy.config).expect("read the config");
    // the same file with the TLS listener and its route gone
    let route = "  - {listener: tls, upstream: app}\n";
    assert!(with.contains(route), "{with}");
    let start = with.find("  - name: tls").expect("the listener");
    let end = with.find("upstreams:").expect("upstreams");
    let without = format!("{}{}", &with[..start], &with[end..]).replace(route, "");
    let serves = || async {
        let mut s = connect(proxy.addr, &sni).await.ok()?;
        h1(&mut s, "reload.test", "/").await.ok().map(|r| r.status)
    };
    assert_eq!(serves().await, Some(200));
    assert!(admin_metrics(admin)
        .await
        .contains("stepstone_tls_handshakes_total{listener=\"tls\""));

    std::fs::write(&proxy.config, &without).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    eventually("the removed listener refuses connections", || async {
        serves().await.is_none()
    })
    .await;
    assert!(!admin_metrics(admin)
        .await
        .contains("stepstone_tls_handshakes_total{listener=\"tls\""));

    std::fs::write(&proxy.config, &with).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serves().await, Some(200), "added back at the same address");

    // the plaintext listener before it removed: the TLS one moves to listeners[0] and stays
    let web_line = with
        .lines()
        .find(|l| l.contains("name: web"))
        .expect("the web listener");
    let alone = with
        .replace(&format!("{web_line}\n"), "")
        .replace("  - {listener: web, upstream: app}\n", "");
    std::fs::write(&proxy.config, &alone).expect("write");
    let (status, text) = admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serves().await,
        Some(200),
        "moved in the file, same listener"
    );
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

fn check(dir: &Path, yaml: &str) -> (i32, String) {
    let f = dir.join("check.yaml");
    std::fs::write(&f, yaml).expect("write");
    run_cli(&["-t", "-c", &p(&f)])
}

#[test]
fn check_names_bad_certificate_files() {
    let pki = Pki::new("tls-check");
    let (c, k) = pki.server("a", "a.test", &["a.test"], 70);
    let (_, k2) = pki.server("b", "b.test", &["b.test"], 71);
    let (ec, ek) = pki
        .ca
        .server_with("old.test", &["old.test"], 72, EXPIRED)
        .write(&pki.dir, "expired");
    let missing = pki.dir.join("missing.crt");
    let listener = |cert: &Path, key: &Path, extra: &str| {
        format!(
            "listeners:\n  - name: tls\n    address: 127.0.0.1:18443\n    protocol: https\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\n{extra}",
            p(cert),
            p(key)
        )
    };
    let cases: Vec<(String, &str, String)> = vec![
        (
            listener(&missing, &k, ""),
            "listeners[0].tls.certificates[0].cert",
            p(&missing),
        ),
        (
            listener(&c, &k2, ""),
            "listeners[0].tls.certificates[0].key",
            "is not the private key".into(),
        ),
        (
            listener(&ec, &ek, ""),
            "listeners[0].tls.certificates[0].cert",
            "expired".into(),
        ),
        (
            listener(&k, &k, ""),
            "listeners[0].tls.certificates[0].cert",
            "PEM certificate".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: https}]\n".into(),
            "listeners[0].tls",
            "needs a tls block".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}], tls: true}]\n".into(),
            "upstreams[0].sni",
            "required".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}], sni: x.test}]\n".into(),
            "upstreams[0].sni",
            "only valid with tls: true".into(),
        ),
        (
            format!("listeners: [{{name: s, address: 127.0.0.1:18443, protocol: http}}]\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}], tls: true, sni: x.test, ca_file: {}}}]\n", p(&missing)),
            "upstreams[0].ca_file",
            p(&missing),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: https, redirect_https: true}]\n".into(),
            "listeners[0].redirect_https",
            "protocol: http".into(),
        ),
    ];
    for (yaml, path, needle) in cases {
        let (code, out) = check(&pki.dir, &yaml);
        assert_eq!(code, 1, "{yaml}\n{out}");
        assert!(out.contains(path), "want {path} in: {out}");
        assert!(out.contains(&needle), "want {needle} in: {out}");
    }
    // allow_expired turns the error into a warning.
    let (code, out) = check(&pki.dir, &listener(&ec, &ek, "      allow_expired: true\n"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("expired") && out.contains("allow_expired"),
        "{out}"
    );
    // A good pair passes.
    let (code, out) = check(&pki.dir, &listener(&c, &k, ""));
    assert_eq!(code, 0, "{out}");
}

/// Handshakes start one per turn, in line (`tls::pace`); a connection takes its place in
/// that line only once its ClientHello has begun, and gives it up when its handshake starts.
/// So clients that stay silent, or stall halfway through a ClientHello, hold up nobody:
/// with them open and 30 s from their deadline, new clients still complete at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_hold_up_the_line() {
    let (_origin, pki, p) = a_test_proxy("tls-handshake-line", 40, "handshake_timeout: 30s").await;
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .await
                .expect("send");
        }
        stalled.push(s);
    }
    let o = ClientOpts::new(&pki.ca_path, "a.test");
    for n in 0..10 {
        let served = tokio::time::timeout(Duration::from_secs(10), async {
            let mut s = connect(p.addr, &o).await.expect("handshake");
            h1(&mut s, "a.test", "/").await.expect("request")
        })
        .await;
        match served {
            Ok(r) => assert_eq!(r.status, 200, "client {n}: {}", r.head),
            Err(_) => panic!("client {n}: no answer within 10 s behind 40 stalled handshakes"),
        }
    }
    // the stalled ones are still open (their deadline is 30 s away): they were in the way
    let mut b = [0u8; 1];
    for (i, s) in stalled.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await;
        assert!(r.is_err(), "stalled connection {i} was closed early: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_handshake_timeout_and_a_done_one_is_not() {
    let (_origin, pki, p) =
        a_test_proxy("tls-handshake-timeout", 40, "handshake_timeout: 1s").await;
    // silent after connecting, and stalled halfway through a ClientHello
    for first in [
        &b""[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(first).await.expect("send");
        let t0 = Instant::now();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b)).await;
        let took = t0.elapsed();
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "{first:?}: connection still open after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "{first:?}: closed after {took:?}, not about 1s"
        );
    }
    // a completed handshake is not bound by it: a keep-alive connection idle past it serves
    let o = ClientOpts::new(&pki.ca_path, "a.test");
    let mut s = connect(p.addr, &o).await.expect("handshake");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = h1(&mut s, "a.test", "/")
        .await
        .expect("request after the deadline");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        p.log().contains("TLS handshake not complete after 1s"),
        "{}",
        p.log()
    );
}

/// An idle HTTPS keep-alive connection holds OpenSSL's connection state and little else:
/// between requests it waits on a 128-byte first read rather than a request head's 4 KiB
/// buffer, its handshake's state is freed once the handshake is done, and no L4 read buffer
/// sits under OpenSSL (Pingora's listener gave each TLS connection 64 KiB of address space).
/// This test on release builds: 47.6 KiB of RSS per connection through Pingora's listener,
/// 32.5 in our accept loop with the head buffer held, 28.3 now (OpenSSL's own state is about
/// 20 KiB of it, heaptrack says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_holds_no_request_buffer_or_handshake_state() {
    const N: usize = 400;
    let (_origin, pki, proxy) = a_test_proxy("tls-idle-rss", 43, "").await;
    let pid = proxy.child.id();
    let o = ClientOpts::new(&pki.ca_path, "a.test").alpn(&["http/1.1"]);
    // warm: the thread's pools, OpenSSL's tables and the allocator's first pages
    let mut warm = Vec::new();
    for _ in 0..50 {
        let mut s = connect(proxy.addr, &o).await.expect("connect");
        assert_eq!(
            h1(&mut s, "a.test", "/").await.expect("request").status,
            200
        );
        warm.push(s);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = crate::support::proxy::rss_kib(pid);
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = connect(proxy.addr, &o).await.expect("connect");
        let r = h1(&mut s, "a.test", "/").await.expect("request");
        assert_eq!(r.status, 200, "{}", r.head);
        idle.push(s);
    }
    crate::support::proxy::assert_rss_per_conn(pid, rss0, N, 31.0, "idle TLS connections").await;
    // and each is still served
    for s in idle.iter_mut().step_by(N / 8) {
        assert_eq!(h1(s, "a.test", "/").await.expect("request").status, 200);
    }
}

/// Two requests in two TLS records that reach the proxy in one segment: its read takes both
/// records into OpenSSL's buffer and returns the first request only. Between requests an
/// idle TLS connection waits on its socket's readiness unless OpenSSL holds bytes, so the
/// second request, already there, must be served without the client sending anything more
/// (a wait on the socket alone would hang until the keep-alive timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_openssl_has_read_ahead_is_served_without_more_from_the_client() {
    let (_origin, pki, proxy) = a_test_proxy("tls-held", 44, "").await;
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(&pki.ca_path).expect("ca");
    b.set_alpn_protos(b"\x08http/1.1").expect("alpn");
    let ssl = b
        .build()
        .configure()
        .and_then(|c| c.into_ssl("a.test"))
        .expect("ssl");
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    // what OpenSSL writes leaves at its flushes: both records in one send
    let mut s = SslStream::new(ssl, tokio::io::BufWriter::new(tcp)).expect("stream");
    Pin::new(&mut s).connect().await.expect("handshake");
    // the connection is idle first: the pair arrives while it waits
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("first record");
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("second record");
    s.flush().await.expect("one send");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the second request was not answered within 10 s; so far:\n{text}\n{}",
        proxy.log()
    );
    assert_eq!(
        text.matches("HTTP/1.1 200 ").count(),
        2,
        "two responses expected:\n{text}"
    );
}

/// A client of our own for the ticket test: it keeps every session ticket it is sent.
fn ticket_keeping_client(
    ca: &Path,
    max: Option<SslVersion>,
) -> (SslConnector, Arc<Mutex<Vec<openssl::ssl::SslSession>>>) {
    let tickets: Arc<Mutex<Vec<openssl::ssl::SslSession>>> = Arc::default();
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca).expect("ca");
    b.set_alpn_protos(b"\x08http/1.1").expect("alpn");
    b.set_max_proto_version(max).expect("max version");
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::CLIENT);
    let kept = tickets.clone();
    b.set_new_session_callback(move |_, s| kept.lock().expect("tickets").push(s));
    (b.build(), tickets)
}

async fn handshake(
    c: &SslConnector,
    addr: SocketAddr,
    resume: Option<&openssl::ssl::SslSession>,
) -> Tls {
    let mut ssl = c
        .configure()
        .expect("configure")
        .into_ssl("a.test")
        .expect("ssl");
    if let Some(t) = resume {
        // SAFETY: the session came from a connector of the same context
        unsafe { ssl.set_session(t) }.expect("set session");
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut s = SslStream::new(ssl, tcp).expect("stream");
    Pin::new(&mut s).connect().await.expect("handshake");
    s
}

/// A TLS 1.3 server's session tickets are its last handshake writes, each flushed on its
/// own, and no client waits for them: they travel with the first response (two sends and two
/// packets fewer per new connection). The client still gets both, and one resumes a later
/// connection. TLS 1.2, whose client waits for the server's last flight (its Finished) before
/// it sends a request, gets that flight at once and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_travel_with_the_first_response_and_resume_a_connection() {
    let (_origin, pki, proxy) = a_test_proxy("tls-tickets", 44, "").await;
    let (c, tickets) = ticket_keeping_client(&pki.ca_path, None);
    let mut s = handshake(&c, proxy.addr, None).await;
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    let mut b = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.get_ref().peek(&mut b)).await;
    assert!(
        early.is_err(),
        "bytes arrived before any request: {early:?}"
    );
    assert!(tickets.lock().expect("tickets").is_empty());
    let r = h1(&mut s, "a.test", "/").await.expect("request");
    assert_eq!(r.status, 200, "{}", r.head);
    let got: Vec<_> = tickets.lock().expect("tickets").clone();
    assert_eq!(got.len(), 2, "session tickets with the first response");
    let mut again = handshake(&c, proxy.addr, Some(&got[0])).await;
    assert!(again.ssl().session_reused(), "the ticket did not resume");
    assert_eq!(
        h1(&mut again, "a.test", "/").await.expect("request").status,
        200
    );

    let (c12, tickets12) = ticket_keeping_client(&pki.ca_path, Some(SslVersion::TLS1_2));
    let mut s = handshake(&c12, proxy.addr, None).await;
    assert_eq!(s.ssl().version_str(), "TLSv1.2");
    let r = tokio::time::timeout(Duration::from_secs(5), h1(&mut s, "a.test", "/"))
        .await
        .expect("TLS 1.2: no answer (the server's last flight held back?)")
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.head);
    let t12 = tickets12.lock().expect("tickets")[0].clone();
    let mut again = handshake(&c12, proxy.addr, Some(&t12)).await;
    assert!(
        again.ssl().session_reused(),
        "the TLS 1.2 ticket did not resume"
    );
    assert_eq!(
        h1(&mut again, "a.test", "/").await.expect("request").status,
        200
    );
}

/// The last response of a TLS connection that closes (here the client asked it to) and the
/// close_notify behind it leave in one send: one segment with data reaches the client, not
/// two. (The response is not flushed on its own when the shutdown that follows flushes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_tls_response_and_its_close_notify_leave_in_one_segment() {
    let (_origin, pki, proxy) = a_test_proxy("tls-close-notify", 45, "").await;
    let o = ClientOpts::new(&pki.ca_path, "a.test").alpn(&["http/1.1"]);
    let mut s = connect(proxy.addr, &o).await.expect("connect");
    // the first response carries the handshake's session tickets: out of the count
    assert_eq!(
        h1(&mut s, "a.test", "/").await.expect("request").status,
        200
    );
    let before = crate::acks::tcp_info(s.get_ref()).tcpi_data_segs_in;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("no end: the close_notify did not come")
        .expect("read to the close_notify");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("onnection: close"), "{text}");
    let segs = crate::acks::tcp_info(s.get_ref()).tcpi_data_segs_in - before;
    assert_eq!(
        segs, 1,
        "segments with data for the response and its close_notify"
    );
}
