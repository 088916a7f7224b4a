//! Forward proxy: absolute-form requests, CONNECT tunnels (with a real TLS origin), access
//! rules, the private-destination guard, proxy auth, anonymity, content filtering and the
//! shared cache behind it.
//! Clients are curl (`-x`) and the raw HTTP/1.1 client; origins are real sockets on
//! loopback, so every config that should reach them says `allow_private_destinations: true`.

mod access;
mod cache;
mod config;
mod connect;
mod filter;
mod requests;

use crate::support::{client, Conn, Proxy};
use std::net::SocketAddr;
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

const FILTER: &str = "filter:
  block_content_types: [application/x-msdownload]
  block_body_patterns: [forbidden-word]
  block_url_patterns: ['*/malware/*']";
