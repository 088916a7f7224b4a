//! TLS offload and HTTP/2: SNI certificate choice, ALPN h2 with many streams, mTLS, TLS to
//! backends (verification fails closed), the https redirect, h2c, certificate reload, bad
//! bytes on a TLS port, and the `-t` checks of certificate files. Certificates are
//! generated per test (support::pki); the clients are real TLS stacks (OpenSSL through
//! tokio-openssl, the h2 crate, curl).

mod check;
mod cleartext;
mod connection;
mod listener;
mod reload;
mod timeouts;
mod upstream;

use crate::support::pki::{cn_of, serial_of, Ca};
use crate::support::proxy::render;
use crate::support::{scratch_dir, OriginBuilder, Proxy};
use bytes::Bytes;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
