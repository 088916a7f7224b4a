//! TLS to backends: verification that fails closed, h2 by ALPN, client certificates, and
//! health checks over TLS and HTTP/2 (h2 and h2c).

use super::{eventually, p, start, Pki, Tls};
use crate::support::pki::{Ca, Leaf};
use crate::support::Proxy;
use bytes::Bytes;
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_openssl::SslStream;

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
