//! L4: tcp load balancing, TLS passthrough with SNI routing, and the PROXY protocol in both
//! directions, against real TCP and TLS backends on loopback.

mod balancing;
mod lifecycle;
mod proxy_protocol;
mod relay;
mod tls;

use crate::support::tcp::{echo_round, TcpBackend};
use crate::support::Proxy;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn backends(list: &[(&TcpBackend, u32)]) -> String {
    list.iter()
        .map(|(b, w)| format!("{{address: {}, weight: {w}}}", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Send a command line and read the whole answer. None when the connection was closed
/// without an answer.
async fn ask(addr: SocketAddr, prefix: &[u8], cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(prefix).await.ok()?;
    s.write_all(format!("{cmd}\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let t = String::from_utf8_lossy(&out).trim().to_string();
    (!t.is_empty()).then_some(t)
}

/// True when the peer closes the connection (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Wait until the proxy's log has `needle` (it may be written just after a close).
async fn log_has(p: &Proxy, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if p.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Proxy::start's readiness probe is a real connection that reaches a backend; wait until
/// the backends have seen it close, so that tests counting open connections start clean.
async fn settle(list: &[&TcpBackend]) {
    let deadline = Instant::now() + WAIT;
    while list.iter().any(|b| b.open() > 0) {
        assert!(Instant::now() < deadline, "backends never idle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the proxy frees its side right after the backend's close
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A connection to `addr` in the backend's echo mode that has echoed `msg` once.
async fn echoing(addr: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"ECHO\n").await.expect("write");
    assert!(echo_round(&mut s, msg).await);
    s
}

async fn read_line_tls(tls: &mut tokio_openssl::SslStream<TcpStream>) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\n") {
        match tokio::time::timeout(WAIT, tls.read(&mut b)).await {
            Ok(Ok(1)) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Certificates for `names` (the first is the default), signed by a fresh CA, in a scratch
/// directory; returns the directory, the CA file and the YAML of a `tls:` block.
fn tls_block(tag: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let dir = crate::support::scratch_dir(tag);
    let ca = crate::support::pki::Ca::new("L4 Test CA");
    let ca_path = ca.write(&dir, "ca");
    let mut yaml = String::from("{certificates: [");
    for (i, n) in names.iter().enumerate() {
        let (c, k) = ca.server(n, &[n], 20 + i as u32).write(&dir, n);
        yaml.push_str(&format!(
            "{{cert: {}, key: {}, server_names: [{n}]}}, ",
            c.display(),
            k.display()
        ));
    }
    yaml.push_str("]}");
    (dir, ca_path, yaml)
}

fn start_in(dir: std::path::PathBuf, template: &str) -> Proxy {
    let (text, ports) = crate::support::proxy::render(template, &dir);
    Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// TLS to `addr` after writing `prefix` in the clear (a PROXY header), verifying the
/// proxy's certificate against `ca` for `sni`. Returns the stream and the served CN.
async fn tls_after(
    addr: SocketAddr,
    prefix: &[u8],
    sni: &str,
    ca: &std::path::Path,
) -> Result<(tokio_openssl::SslStream<TcpStream>, String), String> {
    use openssl::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_ca_file(ca).map_err(|e| e.to_string())?;
    let ssl = b
        .build()
        .configure()
        .and_then(|c| c.into_ssl(sni))
        .map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(prefix).await.map_err(|e| e.to_string())?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    tokio::time::timeout(WAIT, std::pin::Pin::new(&mut s).connect())
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let cn = s
        .ssl()
        .peer_certificate()
        .map(|c| crate::support::pki::cn_of(&c))
        .unwrap_or_default();
    Ok((s, cn))
}
