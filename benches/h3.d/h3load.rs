//! A load client for `benches/h3`: HTTP/3 (quinn + h3, the stack the proxy uses), HTTP/2
//! (the h2 crate) and HTTP/1.1, all over TLS to the same listener, so the three protocols
//! are measured by one client. Debian's h2load does not speak HTTP/3.
//!
//! `h3load PROTO URL CONNS STREAMS SECONDS [PID|-] [DELAY_MS]`: CONNS connections, STREAMS
//! requests in flight on each (HTTP/1.1: CONNS x STREAMS connections, one request at a time
//! each), for SECONDS. PROTO `h3new` is HTTP/3 with a new QUIC connection for every request
//! (CONNS x STREAMS of them at a time, each closed after its answer). With PID, the CPU time
//! that process used during the run is read from /proc and reported per request. With
//! DELAY_MS, each stream waits that long after each answer (the soak's pacing). Prints one
//! line: `proto requests failed rps cpu_us_per_req`.

use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn drain_h3(
    s: &mut h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> Result<u16, String> {
    let r = s.recv_response().await.map_err(|e| e.to_string())?;
    while let Some(mut c) = s.recv_data().await.map_err(|e| e.to_string())? {
        c.advance(c.remaining());
    }
    Ok(r.status().as_u16())
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

fn h3_endpoint() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    e.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    e
}

/// A QUIC connection with HTTP/3 on it; its driver runs in a task of its own.
async fn h3_connect(
    e: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<(quinn::Connection, H3Send), String> {
    let conn = e
        .connect(addr, "bench.test")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((conn, send))
}

async fn h3_get(send: &mut H3Send, url: &str) -> Result<u16, String> {
    let req = http::Request::get(url)
        .body(())
        .map_err(|e| e.to_string())?;
    let mut s = send.send_request(req).await.map_err(|e| e.to_string())?;
    s.finish().await.map_err(|e| e.to_string())?;
    drain_h3(&mut s).await
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// One request per QUIC connection: connect, ask, close, again.
async fn h3_new_conns(addr: SocketAddr, url: String, delay: Duration, t: Arc<Tally>) {
    let e = h3_endpoint();
    while !t.stop.load(Relaxed) {
        let r = async {
            let (conn, mut send) = h3_connect(&e, addr).await?;
            let status = h3_get(&mut send, &url).await;
            conn.close(0u32.into(), b"done");
            status
        }
        .await;
        match r {
            Ok(200) => t.ok.fetch_add(1, Relaxed),
            Ok(_) => t.failed.fetch_add(1, Relaxed),
            Err(err) => {
                eprintln!("h3new: {err}");
                t.failed.fetch_add(1, Relaxed)
            }
        };
        pause(delay).await;
    }
}

async fn h3_conn(addr: SocketAddr, url: String, streams: usize, delay: Duration, t: Arc<Tally>) {
    let e = h3_endpoint();
    let send = match h3_connect(&e, addr).await {
        Ok((_, send)) => send,
        Err(err) => {
            eprintln!("h3 connect: {err}");
            t.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (mut send, url, t) = (send.clone(), url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            while !t.stop.load(Relaxed) {
                match h3_get(&mut send, &url).await {
                    Ok(200) => t.ok.fetch_add(1, Relaxed),
                    _ => t.failed.fetch_add(1, Relaxed),
                };
                pause(delay).await;
            }
        }));
    }
    for k in tasks {
        let _ = k.await;
    }
}

async fn tls_stream(
    addr: SocketAddr,
    alpn: &[u8],
) -> tokio_openssl::SslStream<tokio::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("ssl");
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(alpn).expect("alpn");
    let ssl = b
        .build()
        .configure()
        .expect("configure")
        .into_ssl("bench.test")
        .expect("ssl");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let _ = tcp.set_nodelay(true);
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s).connect().await.expect("tls");
    s
}

async fn h2_conn(addr: SocketAddr, url: String, streams: usize, delay: Duration, t: Arc<Tally>) {
    let s = tls_stream(addr, b"\x02h2").await;
    let (send, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (send, url, t) = (send.clone(), url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = send;
            while !t.stop.load(Relaxed) {
                let req = http::Request::get(url.as_str()).body(()).expect("request");
                let r = async {
                    send = send.clone().ready().await.map_err(|e| e.to_string())?;
                    let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
                    let resp = resp.await.map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    let mut body = resp.into_body();
                    while let Some(c) = body.data().await {
                        let c = c.map_err(|e| e.to_string())?;
                        let _ = body.flow_control().release_capacity(c.len());
                    }
                    Ok::<u16, String>(status)
                }
                .await;
                match r {
                    Ok(200) => t.ok.fetch_add(1, Relaxed),
                    _ => t.failed.fetch_add(1, Relaxed),
                };
                pause(delay).await;
            }
        }));
    }
    for k in tasks {
        let _ = k.await;
    }
}

/// One HTTP/1.1 keep-alive connection, one request at a time; Content-Length bodies only.
async fn h1_conn(addr: SocketAddr, path: String, delay: Duration, t: Arc<Tally>) {
    let mut s = tls_stream(addr, b"\x08http/1.1").await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench.test\r\n\r\n");
    let mut buf = Vec::with_capacity(128 << 10);
    while !t.stop.load(Relaxed) {
        if s.write_all(req.as_bytes()).await.is_err() {
            t.failed.fetch_add(1, Relaxed);
            return;
        }
        buf.clear();
        let ok = loop {
            let mut chunk = [0u8; 16384];
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break false,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut h);
            if let Ok(httparse::Status::Complete(hl)) = r.parse(&buf) {
                let len = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= hl + len {
                    break r.code == Some(200);
                }
            }
        };
        if ok {
            t.ok.fetch_add(1, Relaxed);
        } else {
            t.failed.fetch_add(1, Relaxed);
            return;
        }
        pause(delay).await;
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        eprintln!("usage: h3load h3|h3new|h2|h1 URL CONNS STREAMS SECONDS [PID|-] [DELAY_MS]");
        std::process::exit(2);
    }
    let (proto, url) = (a[1].clone(), a[2].clone());
    let conns: usize = a[3].parse().expect("CONNS");
    let streams: usize = a[4].parse().expect("STREAMS");
    let secs: u64 = a[5].parse().expect("SECONDS");
    let pid: Option<u32> = a.get(6).and_then(|p| p.parse().ok());
    let delay = Duration::from_millis(a.get(7).map_or(0, |d| d.parse().expect("DELAY_MS")));
    let uri: http::Uri = url.parse().expect("URL");
    let addr: SocketAddr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().unwrap_or(443)
    )
    .parse()
    .expect("an IP:PORT URL");
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let t = t.clone();
            match proto.as_str() {
                "h3" => tasks.push(tokio::spawn(h3_conn(addr, url.clone(), streams, delay, t))),
                "h3new" => {
                    for _ in 0..streams {
                        let (u, t) = (url.clone(), t.clone());
                        tasks.push(tokio::spawn(h3_new_conns(addr, u, delay, t)));
                    }
                }
                "h2" => tasks.push(tokio::spawn(h2_conn(addr, url.clone(), streams, delay, t))),
                _ => {
                    for _ in 0..streams {
                        let (p, t) = (path.clone(), t.clone());
                        tasks.push(tokio::spawn(h1_conn(addr, p, delay, t)));
                    }
                }
            }
        }
        // warm-up: connections open and the first requests done before counting
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok0, cpu0, t0) = (t.ok.load(Relaxed), pid.and_then(cpu_ticks), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (ok1, cpu1, el) = (t.ok.load(Relaxed), pid.and_then(cpu_ticks), t0.elapsed());
        t.stop.store(true, Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for k in tasks {
                let _ = k.await;
            }
        })
        .await;
        let n = ok1 - ok0;
        // clock ticks are 1/100 s on Linux
        let cpu_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) if n > 0 => format!("{:.1}", (b - a) as f64 * 10_000.0 / n as f64),
            _ => "-".into(),
        };
        println!(
            "{proto} {n} {} {:.0} {cpu_us}",
            t.failed.load(Relaxed),
            n as f64 / el.as_secs_f64()
        );
    });
}
