//! Automatic certificates (ACME) against Pebble, Let's Encrypt's test CA, from Debian's
//! `pebble` package: Pebble validates HTTP-01 on the proxy's http listener, and
//! `pebble-challtestsrv` is its DNS, resolving every test name to 127.0.0.1. The issued
//! certificate is checked with an OpenSSL client that trusts only Pebble's root.

use crate::support::pki::{cn_of, serial_of, Ca};
use crate::support::proxy::render;
use crate::support::{client, free_port, scratch_dir, OriginBuilder, Proxy};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "shop.stepstone.test";
const WWW: &str = "www.stepstone.test";
/// A name Pebble's policy refuses, for a failure with a problem document.
const BLOCKED: &str = "blocked.stepstone.test";

/// Pebble and its DNS server, on ports chosen up front so that the proxy's config can name
/// the directory before Pebble runs.
struct Pebble {
    dir: PathBuf,
    api: u16,
    mgmt: u16,
    dns: u16,
    /// Trust for Pebble's own API certificate (`directory_ca_file`).
    pub api_ca: PathBuf,
    api_cert: (PathBuf, PathBuf),
    children: Vec<Child>,
}

fn spawn(dir: &Path, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{tool}.log"))).expect("log file");
    let err = log.try_clone().expect("log file");
    Command::new(tool)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool}: {e}; it comes with Debian's pebble package (scripts/setup --test installs it)")
        })
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    fn new() -> Pebble {
        let dir = scratch_dir("pebble");
        let ca = Ca::new("pebble api test CA");
        let api_ca = ca.write(&dir, "api-ca");
        let api_cert = ca
            .server("localhost", &["localhost", "127.0.0.1"], 2)
            .write(&dir, "api");
        Pebble {
            api: free_port(),
            mgmt: free_port(),
            dns: free_port(),
            api_ca,
            api_cert,
            children: Vec::new(),
            dir,
        }
    }

    fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.api)
    }

    /// Start Pebble validating HTTP-01 on `http_port` (the proxy's http listener).
    fn up(&mut self, http_port: u16, tls_port: u16) {
        let (cert, key) = (&self.api_cert.0, &self.api_cert.1);
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.api),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": [BLOCKED]
        }});
        let cfg = self.dir.join("pebble.json");
        std::fs::write(&cfg, config.to_string()).expect("write pebble config");
        let dns = format!("127.0.0.1:{}", self.dns);
        self.children.push(spawn(
            &self.dir,
            "pebble-challtestsrv",
            &[
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &dns,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_port()),
            ],
            &[],
        ));
        self.children.push(spawn(
            &self.dir,
            "pebble",
            &["-config", &cfg.display().to_string(), "-dnsserver", &dns],
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        ));
        wait_port(self.api, "pebble");
        wait_port(self.mgmt, "pebble's management interface");
    }

    fn down(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The root Pebble signs with (a new one each time Pebble starts).
    async fn root(&self) -> X509 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.mgmt))
            .await
            .expect("connect to pebble management");
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("tls");
        b.set_verify(SslVerifyMode::NONE);
        let ssl = b
            .build()
            .configure()
            .expect("ssl")
            .into_ssl("localhost")
            .expect("ssl");
        let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("ssl stream");
        std::pin::Pin::new(&mut s)
            .connect()
            .await
            .expect("tls to pebble");
        s.write_all(b"GET /roots/0 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        let start = text.find("-----BEGIN").expect("a PEM root from pebble");
        X509::from_pem(text[start..].as_bytes()).expect("pebble root")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.down();
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.log());
        }
    }
}

/// The certificate the listener at `addr` serves for `sni`; with `root`, the handshake
/// verifies the chain against it and the name against `sni`.
async fn served(addr: SocketAddr, sni: &str, root: Option<&X509>) -> Result<X509, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    match root {
        Some(r) => {
            let mut st =
                openssl::x509::store::X509StoreBuilder::new().map_err(|e| e.to_string())?;
            st.add_cert(r.clone()).map_err(|e| e.to_string())?;
            b.set_verify_cert_store(st.build())
                .map_err(|e| e.to_string())?;
        }
        None => b.set_verify(SslVerifyMode::NONE),
    }
    let ssl = b
        .build()
        .configure()
        .and_then(|c| c.into_ssl(sni))
        .map_err(|e| e.to_string())?;
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    s.ssl()
        .peer_certificate()
        .ok_or_else(|| "no certificate".into())
}

/// [`served`], retried while the listener is still starting (the proxy is ready when its
/// first listener is, the https one may follow a moment later).
async fn served_soon(addr: SocketAddr, sni: &str, root: Option<&X509>) -> X509 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match served(addr, sni, root).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!("no handshake with {addr} for {sni}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Wait until the listener serves a certificate for `sni` that Pebble's root verifies.
async fn wait_issued(
    p: &Proxy,
    addr: SocketAddr,
    sni: &str,
    root: &X509,
    within: Duration,
) -> X509 {
    let deadline = Instant::now() + within;
    loop {
        match served(addr, sni, Some(root)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "no certificate from pebble for {sni} within {within:?}: {e}\n{}",
                    p.log()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn metric(p: &Proxy, admin: usize, series: &str) -> Option<f64> {
    let m = client::get(p.addr_of(admin), "/metrics", &[])
        .await
        .expect("metrics")
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

const OK: &str = "stepstone_acme_orders_total{listener=\"secure\",result=\"ok\"} ";
const ERR: &str = "stepstone_acme_orders_total{listener=\"secure\",result=\"error\"} ";

/// An http listener (port 0, Pebble's httpPort), an https listener with ACME (port 1), the
/// admin listener (port 2). `redirect`: the http listener redirects to https (the general
/// engine answers the challenge), else it routes (the lean engine does).
fn template(
    pebble: &Pebble,
    storage: &Path,
    origin: SocketAddr,
    extra: &str,
    redirect: bool,
) -> String {
    let http = if redirect {
        "redirect_https: true, https_port: {{port1}}"
    } else {
        "fast_path: true"
    };
    format!(
        "admin: {{address: 127.0.0.1:{{{{port2}}}}}}
listeners:
  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, {http}}}
  - name: secure
    address: 127.0.0.1:{{{{port1}}}}
    protocol: https
    tls:
{extra}      acme:
        directory: {dir}
        directory_ca_file: {ca}
        contact: mailto:ops@stepstone.test
        names: [{NAME}, {WWW}]
        storage: {storage}
upstreams: [{{name: app, backends: [{{address: {origin}}}]}}]
routes:
  - {{listener: secure, upstream: app}}
  - {{listener: web, upstream: app}}
",
        dir = pebble.directory(),
        ca = pebble.api_ca.display(),
        storage = storage.display(),
    )
}

fn start_proxy(text_template: &str, before_start: impl FnOnce(&[u16])) -> Proxy {
    let dir = scratch_dir("proxy");
    let (text, ports) = render(text_template, &dir);
    before_start(&ports);
    Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_served_by_sni_and_reused_after_restart() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    // A file certificate for other names: SNI picks between it and the ordered one.
    let ca = Ca::new("file CA");
    let (fc, fk) = ca
        .server("other.stepstone.test", &["other.stepstone.test"], 7)
        .write(&storage, "file");
    let files = format!(
        "      certificates: [{{cert: {}, key: {}, server_names: [other.stepstone.test]}}]\n",
        fc.display(),
        fk.display()
    );
    let t = template(&pebble, &storage.join("acme"), origin.addr, &files, true);
    let started = Instant::now();
    let p = start_proxy(&t, |ports| pebble.up(ports[0], ports[1]));
    let root = pebble.root().await;
    let cert = wait_issued(&p, p.addr_of(1), NAME, &root, Duration::from_secs(60)).await;
    eprintln!(
        "acme: issued and served {:?} after start",
        started.elapsed()
    );
    if let Some(l) = p
        .log()
        .lines()
        .find(|l| l.contains("certificate issued in"))
    {
        eprintln!("acme: {l}");
    }
    // Both names are in the one certificate; the file certificate still serves its name.
    let www = served(p.addr_of(1), WWW, Some(&root))
        .await
        .expect("www verifies");
    assert_eq!(serial_of(&www), serial_of(&cert));
    let other = served(p.addr_of(1), "other.stepstone.test", None)
        .await
        .expect("file cert");
    assert_eq!(cn_of(&other), "other.stepstone.test");
    assert_eq!(metric(&p, 2, OK).await, Some(1.0));
    let days = metric(
        &p,
        2,
        &format!("stepstone_acme_certificate_expiry_days{{listener=\"secure\",name=\"{NAME}\"}} "),
    )
    .await
    .expect("days to expiry in /metrics");
    assert!(days > 1.0, "days to expiry {days}");
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "account.key",
        &format!("{NAME}.crt"),
        &format!("{NAME}.key"),
    ] {
        let mode = std::fs::metadata(storage.join("acme").join(f))
            .expect("stored file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let serial = serial_of(&cert);
    drop(p);

    // Restart: the stored certificate is served at once and nothing is ordered.
    let p = start_proxy(&t, |_| {});
    let again = served_soon(p.addr_of(1), NAME, Some(&root)).await;
    assert_eq!(serial_of(&again), serial);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(&p, 2, OK).await,
        Some(0.0),
        "a new order after restart"
    );
    assert_eq!(metric(&p, 2, ERR).await, Some(0.0));
    assert!(
        p.log().contains("serving the stored certificate"),
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_when_renew_before_covers_the_whole_lifetime() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    let t = template(&pebble, &storage, origin.addr, "", false).replace(
        "        storage:",
        "        renew_before: 36500d\n        storage:",
    );
    let p = start_proxy(&t, |ports| pebble.up(ports[0], ports[1]));
    let root = pebble.root().await;
    let first = wait_issued(&p, p.addr_of(1), NAME, &root, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = served(p.addr_of(1), NAME, Some(&root))
            .await
            .expect("verifies");
        if serial_of(&now) != serial_of(&first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed within 60s:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(metric(&p, 2, OK).await.expect("orders") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_down_at_start_serves_the_placeholder_then_issues() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    let t = template(&pebble, &storage, origin.addr, "", false);
    let p = start_proxy(&t, |_| {});
    // No certificates of its own: a self-signed placeholder until the CA answers.
    let placeholder = served_soon(p.addr_of(1), NAME, None).await;
    assert!(
        cn_of(&placeholder).contains("placeholder"),
        "{}",
        cn_of(&placeholder)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&p, 2, ERR).await.unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no failed order counted:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(p.log().contains("failed (attempt 1)"), "{}", p.log());
    pebble.up(p.port(0), p.port(1));
    let root = pebble.root().await;
    let cert = wait_issued(&p, p.addr_of(1), NAME, &root, Duration::from_secs(60)).await;
    assert!(!cn_of(&cert).contains("placeholder"));
    assert_eq!(metric(&p, 2, OK).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_path_without_pending_order_is_routed() {
    let origin = OriginBuilder::new("o").run().await;
    let pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    let t = template(&pebble, &storage, origin.addr, "", false);
    let p = start_proxy(&t, |_| {});
    let r = client::get(p.addr, "/.well-known/acme-challenge/unknown", &[])
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("o"), "{:?}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_certificate() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    // No http listener reaches Pebble: its httpPort is a port nothing listens on, so only
    // the https listener's acme-tls/1 answer can validate.
    let t = template(&pebble, &storage, origin.addr, "", false).replace(
        "        storage:",
        "        challenge: tls-alpn-01\n        storage:",
    );
    let unreached = crate::support::dead_addr().port();
    let p = start_proxy(&t, |ports| pebble.up(unreached, ports[1]));
    let root = pebble.root().await;
    let cert = wait_issued(&p, p.addr_of(1), NAME, &root, Duration::from_secs(60)).await;
    let www = served(p.addr_of(1), WWW, Some(&root))
        .await
        .expect("www verifies");
    assert_eq!(serial_of(&www), serial_of(&cert));
    let log = pebble.log();
    assert!(!log.contains("validate w/ HTTP"), "{log}");
    // Ordinary clients still get h2 by ALPN.
    let tcp = tokio::net::TcpStream::connect(p.addr_of(1))
        .await
        .expect("connect");
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("tls");
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2\x08http/1.1").expect("alpn");
    let ssl = b
        .build()
        .configure()
        .expect("ssl")
        .into_ssl(NAME)
        .expect("ssl");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .expect("handshake");
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_order_logs_the_problem_document_and_counts_it() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    let t = template(&pebble, &storage, origin.addr, "", false).replace(
        &format!("names: [{NAME}, {WWW}]"),
        &format!("names: [{BLOCKED}]"),
    );
    let p = start_proxy(&t, |ports| pebble.up(ports[0], ports[1]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&p, 2, ERR).await.unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no failed order counted:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = p.log();
    assert!(
        log.contains("urn:ietf:params:acme:error:rejectedIdentifier"),
        "no problem document in the log:\n{log}"
    );
    assert_eq!(metric(&p, 2, OK).await, Some(0.0));
    // Still the placeholder: nothing was issued.
    let c = served_soon(p.addr_of(1), BLOCKED, None).await;
    assert!(cn_of(&c).contains("placeholder"));
}

/// An https listener with ACME added by a reload orders its certificate at once (TLS-ALPN-01,
/// validated on the listener the reload just started) and serves it; removed by the next
/// reload, it refuses connections and its order task stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_acme_listener_that_orders_its_certificate_and_removes_it() {
    let origin = OriginBuilder::new("o").run().await;
    let mut pebble = Pebble::new();
    let storage = scratch_dir("acme-storage");
    let full = template(&pebble, &storage, origin.addr, "", false)
        .replace(
            "        storage:",
            "        challenge: tls-alpn-01\n        storage:",
        )
        .replace("{{port2}}}", "{{port2}}, token: tok}");
    let secure = &full[full.find("  - name: secure\n").expect("secure")
        ..full.find("upstreams:").expect("upstreams")];
    // without the https listener; its port is taken now, for Pebble to validate on later
    let without = format!(
        "# the acme listener's port: {{{{port1}}}}\n{}",
        full.replace(secure, "")
            .replace("  - {listener: secure, upstream: app}\n", "")
    );
    let unreached = crate::support::dead_addr().port();
    let p = start_proxy(&without, |ports| pebble.up(unreached, ports[1]));
    let before = std::fs::read_to_string(&p.config).expect("read the config");
    let (at, admin) = (p.addr_of(1), p.addr_of(2));
    assert!(
        tokio::net::TcpStream::connect(at).await.is_err(),
        "{at} listens"
    );

    // the file as the proxy runs it, with the https listener and its route back
    let rendered = before
        .replacen(
            "upstreams:",
            &format!(
                "{}upstreams:",
                secure.replace("{{port1}}", &at.port().to_string())
            ),
            1,
        )
        .replacen(
            "routes:\n",
            "routes:\n  - {listener: secure, upstream: app}\n",
            1,
        );
    std::fs::write(&p.config, rendered).expect("write");
    let (status, text) = client::admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let root = pebble.root().await;
    let cert = wait_issued(&p, at, NAME, &root, Duration::from_secs(60)).await;
    assert_eq!(cn_of(&cert), NAME);

    std::fs::write(&p.config, before).expect("write");
    let (status, text) = client::admin_reload(admin).await;
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(at).await.is_ok() {
        assert!(Instant::now() < deadline, "a removed acme listener accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !p.log().contains("listener gone, no more orders for it") {
        assert!(
            Instant::now() < deadline,
            "its order task goes on:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
