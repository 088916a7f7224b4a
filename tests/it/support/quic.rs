//! An HTTP/3 client for the tests (the `h3` crate's client on `quinn`, a stack no one here
//! wrote), per-test certificates, and the proxy config the HTTP/3 tests share.

use super::h2raw::hpack_int;
use super::pki::{cn_of, Ca};
use super::proxy::render;
use super::{client, scratch_dir, Proxy};
use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = scratch_dir(tag);
        let ca = Ca::new("Stepstone H3 Test CA");
        Pki { dir, ca }
    }
    pub fn server(&self, name: &str, cn: &str, sans: &[&str], serial: u32) -> (PathBuf, PathBuf) {
        self.ca.server(cn, sans, serial).write(&self.dir, name)
    }
}

pub fn p(path: &Path) -> String {
    path.display().to_string()
}

/// An https listener with http3 on, two certificates, two routes by host.
pub fn config(pki: &Pki, a: SocketAddr, b: SocketAddr, quic: &str, limits: &str) -> String {
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

/// A config template with one https listener `edge` (HTTP/3 on) for a.test with its own
/// certificate, one upstream `app` on `backend`, and one route with `route` added to its keys
/// (e.g. `cache: {enabled: true}`). `top`: top-level keys before `listeners`.
pub fn site_config(pki: &Pki, top: &str, backend: SocketAddr, route: &str) -> String {
    let (c, k) = pki.server("site", "a.test", &["a.test"], 0x400);
    format!(
        "{top}listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
    tls:
      certificates: [{{cert: {}, key: {}}}]
upstreams:
  - {{name: app, backends: [{{address: {backend}}}]}}
routes:
  - {{listener: edge, upstream: app{route}}}
",
        p(&c),
        p(&k),
    )
}

pub fn start(pki: &Pki, template: &str) -> Proxy {
    let (text, ports) = render(template, &pki.dir);
    Proxy::start_in(pki.dir.clone(), &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// A QUIC client endpoint that trusts the test CA.
pub fn endpoint(pki: &Pki) -> quinn::Endpoint {
    endpoint_with(pki, false, None)
}

/// A client endpoint like [`endpoint`] that resumes sessions and sends 0-RTT data.
pub fn endpoint_0rtt(pki: &Pki) -> quinn::Endpoint {
    endpoint_with(pki, true, None)
}

/// A client endpoint like [`endpoint`] that presents `cert` when asked for one.
pub fn endpoint_as(pki: &Pki, cert: &super::pki::Leaf) -> quinn::Endpoint {
    endpoint_with(pki, false, Some(cert))
}

fn endpoint_with(pki: &Pki, early_data: bool, cert: Option<&super::pki::Leaf>) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    let der = pki.ca.cert.to_der().expect("ca der");
    roots.add(der.into()).expect("ca root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut tls = match cert {
        None => tls.with_no_client_auth(),
        Some(leaf) => {
            let chain = vec![leaf.cert.to_der().expect("der").into()];
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from(
                leaf.key.private_key_to_pkcs8().expect("pkcs8"),
            );
            tls.with_client_auth_cert(chain, key.into())
                .expect("client certificate")
        }
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    e.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    e
}

pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Connect with `sni`; the connection's driver runs in its own task.
pub async fn connect(
    e: &quinn::Endpoint,
    addr: SocketAddr,
    sni: &str,
) -> (quinn::Connection, Sender) {
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

/// Connect to a.test and get `path` once (200 asserted): a connection whose SETTINGS have
/// been exchanged and whose session ticket, if any, has arrived.
pub async fn connect_and_get(
    e: &quinn::Endpoint,
    addr: SocketAddr,
    path: &str,
) -> (quinn::Connection, Sender) {
    let (conn, mut s) = connect(e, addr, "a.test").await;
    let got = request(&mut s, "GET", &format!("https://a.test{path}"), &[], None)
        .await
        .expect("GET");
    assert_eq!(got.status, 200, "GET {path}");
    (conn, s)
}

pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

pub async fn request(
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

/// The leaf certificate the server presented on `conn`.
fn served_leaf(conn: &quinn::Connection) -> openssl::x509::X509 {
    let id = conn.peer_identity().expect("peer identity");
    let certs = id
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .expect("rustls certificates");
    openssl::x509::X509::from_der(&certs[0]).expect("leaf")
}

pub fn served_cn(conn: &quinn::Connection) -> String {
    cn_of(&served_leaf(conn))
}

pub fn served_serial(conn: &quinn::Connection) -> String {
    super::pki::serial_of(&served_leaf(conn))
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

pub async fn metrics(proxy: &Proxy) -> String {
    client::get(proxy.addr_of(1), "/metrics", &[])
        .await
        .expect("admin answers")
        .text()
}

/// One HTTP/1.1 request over TLS on the TCP side; the response head and body as text.
pub async fn tls_get(addr: SocketAddr, sni: &str, path: &str) -> String {
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

pub async fn wait_exit(p: &mut Proxy, within: Duration) -> Option<std::process::ExitStatus> {
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

fn quic_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16383 => out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes()),
    }
}

/// A GET as a raw HEADERS frame, QPACK without Huffman or dynamic table: written by hand so
/// that no client stack refuses to send a field section over the peer's announced limit.
pub fn raw_get_frame(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0, 0]; // Required Insert Count 0, Base 0
    block.push(0xc0 | 17); // :method GET (static 17)
    block.push(0xc0 | 23); // :scheme https (static 23)
    for (index, value) in [(1usize, path), (0, authority)] {
        // literal with a static name reference: 01NT + 4-bit index
        hpack_int(&mut block, 4, 0x50, index);
        hpack_int(&mut block, 7, 0, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    for (name, value) in extra {
        // literal name and value: 001NH + 3-bit name length
        hpack_int(&mut block, 3, 0x20, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_int(&mut block, 7, 0, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    let mut frame = Vec::new();
    quic_varint(&mut frame, 1); // HEADERS
    quic_varint(&mut frame, block.len() as u64);
    frame.extend_from_slice(&block);
    frame
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let first = *b.get(*at)?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(*at..*at + len)?;
    *at += len;
    let mut v = u64::from(first & 0x3f);
    for x in &bytes[1..] {
        v = (v << 8) | u64::from(*x);
    }
    Some(v)
}

fn read_qpack_int(b: &[u8], at: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*b.get(*at)?) & max;
    *at += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let x = *b.get(*at)?;
        *at += 1;
        v += usize::from(x & 0x7f) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
}

/// The `:status` of the first HEADERS frame in a raw response stream. Statuses outside
/// QPACK's static table come as a literal with a name reference, Huffman-coded (as h3
/// encodes them): only the digits' codes are needed (RFC 7541 Appendix B).
pub fn raw_status(b: &[u8]) -> Option<u16> {
    const STATIC: [(usize, u16); 14] = [
        (24, 103),
        (25, 200),
        (26, 304),
        (27, 404),
        (28, 503),
        (63, 100),
        (64, 204),
        (65, 206),
        (66, 302),
        (67, 400),
        (68, 403),
        (69, 421),
        (70, 425),
        (71, 500),
    ];
    let mut at = 0;
    let block = loop {
        let kind = read_varint(b, &mut at)?;
        let len = read_varint(b, &mut at)? as usize;
        let payload = b.get(at..at + len)?;
        at += len;
        if kind == 1 {
            break payload;
        }
    };
    let mut at = 2; // the prefix: no dynamic table
    let first = *block.get(at)?;
    if first & 0xc0 == 0xc0 {
        let i = read_qpack_int(block, &mut at, 6)?;
        return STATIC.iter().find(|(k, _)| *k == i).map(|(_, s)| *s);
    }
    if first & 0xc0 != 0x40 {
        return None;
    }
    read_qpack_int(block, &mut at, 4)?;
    let huffman = block.get(at)? & 0x80 != 0;
    let len = read_qpack_int(block, &mut at, 7)?;
    let value = block.get(at..at + len)?;
    if !huffman {
        return std::str::from_utf8(value).ok()?.parse().ok();
    }
    let bit = |i: usize| (value[i / 8] >> (7 - i % 8)) & 1;
    let (mut i, mut digits) = (0usize, 0u16);
    for _ in 0..3 {
        if i + 5 > value.len() * 8 {
            return None;
        }
        let five = (0..5).fold(0u8, |v, k| (v << 1) | bit(i + k));
        let d = if five <= 2 {
            i += 5;
            five
        } else {
            let six = (five << 1) | bit(i + 5);
            i += 6;
            if !(0x19..=0x1f).contains(&six) {
                return None;
            }
            six - 0x19 + 3
        };
        digits = digits * 10 + u16::from(d);
    }
    Some(digits)
}

/// A UDP relay between one QUIC client and `server` that makes the handshake's end slow:
/// what the client sends before the server has said anything (its ClientHello and any 0-RTT
/// data) is held for `hold` and then passed on together; everything the client sends after
/// the server's first answer (its handshake Finished among it) is passed on `delay` later.
/// So the server reads the 0-RTT requests well before the handshake can end.
pub async fn slow_handshake_relay(
    server: SocketAddr,
    hold: Duration,
    delay: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp"),
    );
    let back = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp"),
    );
    back.connect(server).await.expect("connect udp");
    let addr = front.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut first_flight: Vec<Vec<u8>> = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut server_spoke = false;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            let flush = async {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if server_spoke || flush_at.is_none() && !first_flight.is_empty() {
                        let (back, d) = (back.clone(), a[..n].to_vec());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = back.send(&d).await;
                        });
                    } else {
                        first_flight.push(a[..n].to_vec());
                        flush_at.get_or_insert(tokio::time::Instant::now() + hold);
                    }
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    server_spoke = true;
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
                _ = flush => {
                    flush_at = None;
                    for d in first_flight.iter() {
                        let _ = back.send(d).await;
                    }
                }
            }
        }
    });
    (addr, task)
}
