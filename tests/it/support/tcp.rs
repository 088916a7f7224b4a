//! Real TCP and TLS backends for the L4 tests.
//!
//! A [`TcpBackend`] reads one command line from each connection and acts on it:
//! - `NAME`: answer its name and close;
//! - `HOLD`: answer its name, then keep the connection open until the client's EOF;
//! - `ECHO`: echo every byte; after the client's EOF write `bye\n` and close (so a reply
//!   after a half-close shows the EOF was passed on and the way back stayed open);
//! - `SINK`: hash everything up to EOF, answer the hex SHA-256 and close;
//! - `SOURCE n`: send n bytes of [`pattern`] and close.
//!
//! With `expect_proxy`, the backend first reads a PROXY header (v1 line or v2 block) and
//! records its raw bytes; it does not interpret them, so the tests check our encoder against
//! bytes they spell out themselves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct TcpState {
    pub connections: AtomicUsize,
    pub open: AtomicUsize,
    pub proxy_headers: Mutex<Vec<Vec<u8>>>,
}

pub struct TcpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<TcpState>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Write `msg` and read the same bytes back within 10 s (an echoing peer behind `s`).
pub async fn echo_round(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut got = vec![0u8; msg.len()];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut got));
    matches!(read.await, Ok(Ok(_))) && got == msg
}

/// Deterministic bytes, so both ends can hash the same stream.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl TcpBackend {
    pub async fn start(name: &str, expect_proxy: bool) -> TcpBackend {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(TcpState::default());
        let name_s = name.to_string();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, SeqCst);
                let st = st.clone();
                let name = name_s.clone();
                tokio::spawn(async move {
                    st.open.fetch_add(1, SeqCst);
                    let _ = serve(s, &name, expect_proxy, &st).await;
                    st.open.fetch_sub(1, SeqCst);
                });
            }
        });
        TcpBackend {
            name: name.to_string(),
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    pub fn open(&self) -> usize {
        self.state.open.load(SeqCst)
    }

    pub fn proxy_headers(&self) -> Vec<Vec<u8>> {
        self.state
            .proxy_headers
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Close the listening socket: new connections are refused.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(s: TcpStream, name: &str, expect_proxy: bool, st: &TcpState) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut r = BufReader::new(s);
    if expect_proxy {
        let mut head = [0u8; 12];
        r.read_exact(&mut head).await?;
        let mut raw = head.to_vec();
        if head.starts_with(b"PROXY ") {
            r.read_until(b'\n', &mut raw).await?;
        } else {
            let mut more = [0u8; 4];
            r.read_exact(&mut more).await?;
            raw.extend_from_slice(&more);
            let len = u16::from_be_bytes([more[2], more[3]]) as usize;
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await?;
            raw.extend_from_slice(&body);
        }
        if let Ok(mut h) = st.proxy_headers.lock() {
            h.push(raw);
        }
    }
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let cmd = line.trim();
    if cmd == "NAME" {
        r.get_mut()
            .write_all(format!("{name}\n").as_bytes())
            .await?;
    } else if cmd == "HOLD" {
        r.get_mut()
            .write_all(format!("{name}\n").as_bytes())
            .await?;
        let mut buf = [0u8; 64];
        while r.read(&mut buf).await? > 0 {}
    } else if cmd == "ECHO" {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            r.get_mut().write_all(&buf[..n]).await?;
        }
        r.get_mut().write_all(b"bye\n").await?;
    } else if cmd == "SINK" {
        let mut h = openssl::sha::Sha256::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        r.get_mut()
            .write_all(format!("{}\n", hex(&h.finish())).as_bytes())
            .await?;
    } else if let Some(n) = cmd.strip_prefix("SOURCE ") {
        let n: usize = n.parse().unwrap_or(0);
        r.get_mut().write_all(&pattern(n)).await?;
    }
    r.get_mut().shutdown().await
}

/// A self-signed certificate and its key, made at test time.
pub fn self_signed(
    cn: &str,
) -> (
    openssl::x509::X509,
    openssl::pkey::PKey<openssl::pkey::Private>,
) {
    use openssl::x509::{extension::SubjectAlternativeName, X509NameBuilder, X509};
    use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, rsa::Rsa};
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(1)
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("t"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns(cn)
        .build(&b.x509v3_context(None, None))
        .expect("san");
    b.append_extension(san).expect("ext");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    (b.build(), key)
}

/// A TLS server with its own certificate: after the handshake it writes its name, then
/// echoes until EOF.
pub struct TlsBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(cn: &str) -> TlsBackend {
        use openssl::ssl::{SslAcceptor, SslMethod};
        let (cert, key) = self_signed(cn);
        let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        acc.set_certificate(&cert).expect("cert");
        acc.set_private_key(&key).expect("key");
        let acc = Arc::new(acc.build());
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls backend");
        let addr = l.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let name = cn.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                conns.fetch_add(1, SeqCst);
                let acc = acc.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(ssl) = openssl::ssl::Ssl::new(acc.context()) else {
                        return;
                    };
                    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, s) else {
                        return;
                    };
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    if tls.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 16384];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TlsBackend {
            name: cn.to_string(),
            addr,
            connections,
            task,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS client that does not verify (the backends are self-signed) but reports the
/// certificate it was shown.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
) -> std::io::Result<(tokio_openssl::SslStream<TcpStream>, String)> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let err = std::io::Error::other;
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| err(e.to_string()))?;
    b.set_verify(SslVerifyMode::NONE);
    let conn = b.build();
    let mut cfg = conn.configure().map_err(|e| err(e.to_string()))?;
    cfg.set_verify_hostname(false);
    cfg.set_use_server_name_indication(sni.is_some());
    let ssl = cfg
        .into_ssl(sni.unwrap_or("unused"))
        .map_err(|e| err(e.to_string()))?;
    let s = TcpStream::connect(addr).await?;
    let mut tls = tokio_openssl::SslStream::new(ssl, s).map_err(|e| err(e.to_string()))?;
    std::pin::Pin::new(&mut tls)
        .connect()
        .await
        .map_err(|e| err(e.to_string()))?;
    let cn = tls
        .ssl()
        .peer_certificate()
        .and_then(|c| {
            c.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()
                .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        })
        .unwrap_or_default();
    Ok((tls, cn))
}
