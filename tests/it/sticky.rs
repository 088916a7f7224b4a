//! Sticky sessions: the proxy's cookie pins a client to a backend on both engines, moves
//! when that backend dies, survives a graceful upgrade, and keeps a client on its side of a
//! split.

use crate::support::proxy::{bin, render, send_signal};
use crate::support::{client, scratch_dir, Origin, OriginBuilder, Proxy};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `name=value` of a `Set-Cookie`, and the whole field.
fn set_cookie(r: &client::Response) -> Option<(String, String)> {
    let v = r.header("set-cookie")?;
    let pair = v.split(';').next()?.trim().to_string();
    Some((pair, v.to_string()))
}

async fn get_with(p: std::net::SocketAddr, cookie: Option<&str>) -> client::Response {
    let h: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    let r = client::get(p, "/", &h)
        .await
        .unwrap_or_else(|e| panic!("GET / through {p}: {e} ({:?})", e.kind()));
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn origin_of(r: &client::Response) -> String {
    r.header("x-origin").unwrap_or("-").to_string()
}

fn two_listeners(upstreams: &str, route: &str) -> String {
    format!(
        "listeners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false}}\nupstreams:\n{upstreams}routes:\n  - {{listener: lean, {route}}}\n  - {{listener: general, {route}}}\n"
    )
}

fn backends(origins: &[&Origin]) -> String {
    origins
        .iter()
        .map(|o| format!("{{address: {}}}", o.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn holds_then_moves(fast_path: bool) {
    let engine = if fast_path { "lean" } else { "general" };
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let c = OriginBuilder::new("c").run().await;
    let origins = [&a, &b, &c];
    let p = Proxy::start(&two_listeners(
        &format!(
            "  - name: app\n    selection: round_robin\n    sticky: {{cookie: SRV, ttl: 1h}}\n    health_check: {{type: tcp, interval: 100ms, unhealthy_threshold: 1}}\n    backends: [{}]\n",
            backends(&origins)
        ),
        "upstream: app",
    ));
    let addr = p.addr_of(if fast_path { 0 } else { 1 });
    let first = get_with(addr, None).await;
    let (cookie, field) = set_cookie(&first).expect("a cookie for a client without one");
    assert_eq!(
        field,
        format!("{cookie}; Path=/; Max-Age=3600; HttpOnly"),
        "{engine}"
    );
    let token = cookie.strip_prefix("SRV=").expect("named SRV");
    assert!(!token.is_empty());
    for o in origins {
        let (ip, port) = (o.addr.ip().to_string(), o.addr.port().to_string());
        assert!(
            !token.contains(&ip) && !token.contains(&port),
            "{engine}: the token {token} shows {}",
            o.addr
        );
    }
    let home = origin_of(&first);
    // round robin would spread these over the three backends
    for i in 0..30 {
        let r = get_with(addr, Some(&cookie)).await;
        assert_eq!(
            origin_of(&r),
            home,
            "{engine}: request {i} left its backend"
        );
        assert_eq!(
            r.header("set-cookie"),
            None,
            "{engine}: a valid cookie is kept"
        );
    }
    let dead = origins
        .iter()
        .find(|o| o.name() == home)
        .expect("home origin");
    dead.stop_refusing().await;
    // ten health checks' time: the backend is marked down
    tokio::time::sleep(Duration::from_secs(1)).await;
    let moved = get_with(addr, Some(&cookie)).await;
    let new_home = origin_of(&moved);
    assert_ne!(new_home, home, "{engine}: served by a live backend");
    let (new_cookie, _) = set_cookie(&moved).expect("a new cookie once the backend died");
    assert_ne!(new_cookie, cookie);
    for i in 0..10 {
        let r = get_with(addr, Some(&new_cookie)).await;
        assert_eq!(
            origin_of(&r),
            new_home,
            "{engine}: request {i} after the move"
        );
        assert_eq!(r.header("set-cookie"), None);
    }
    // a cookie naming no backend of the upstream is replaced
    let r = get_with(addr, Some("SRV=0123456789abcdef0123456789abcdef")).await;
    assert!(
        set_cookie(&r).is_some(),
        "{engine}: a forged cookie is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_holds_and_moves_when_its_backend_dies_on_the_lean_engine() {
    holds_then_moves(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_holds_and_moves_when_its_backend_dies_on_the_general_engine() {
    holds_then_moves(false).await;
}

async fn stays_on_its_side(fast_path: bool) {
    let engine = if fast_path { "lean" } else { "general" };
    let s1 = OriginBuilder::new("stable-1").run().await;
    let s2 = OriginBuilder::new("stable-2").run().await;
    let c1 = OriginBuilder::new("canary-1").run().await;
    let c2 = OriginBuilder::new("canary-2").run().await;
    let p = Proxy::start(&two_listeners(
        &format!(
            "  - name: stable\n    sticky: {{cookie: SRV}}\n    backends: [{}]\n  - name: canary\n    sticky: {{cookie: SRV}}\n    backends: [{}]\n",
            backends(&[&s1, &s2]),
            backends(&[&c1, &c2])
        ),
        "split: [{upstream: stable, weight: 50}, {upstream: canary, weight: 50}]",
    ));
    let addr = p.addr_of(if fast_path { 0 } else { 1 });
    // without a cookie the split chooses by weight: both sides show up
    let mut sides = std::collections::BTreeSet::new();
    let mut cookies = Vec::new();
    for _ in 0..40 {
        let r = get_with(addr, None).await;
        let home = origin_of(&r);
        sides.insert(home.split('-').next().unwrap_or("").to_string());
        let (cookie, _) = set_cookie(&r).expect("cookie");
        cookies.push((cookie, home));
    }
    assert_eq!(sides.len(), 2, "{engine}: {sides:?}");
    // one client of each side keeps to its backend (so to its side)
    for side in ["stable", "canary"] {
        let (cookie, home) = cookies
            .iter()
            .find(|(_, h)| h.starts_with(side))
            .expect("a client on each side");
        for i in 0..20 {
            let r = get_with(addr, Some(cookie)).await;
            assert_eq!(&origin_of(&r), home, "{engine}: {side} client, request {i}");
            assert_eq!(r.header("set-cookie"), None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_over_sticky_upstreams_keeps_a_client_on_its_side_on_the_lean_engine() {
    stays_on_its_side(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_over_sticky_upstreams_keeps_a_client_on_its_side_on_the_general_engine() {
    stays_on_its_side(false).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_survives_a_graceful_upgrade() {
    use std::os::unix::fs::PermissionsExt;
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let c = OriginBuilder::new("c").run().await;
    let dir = scratch_dir("sticky-upgrade");
    let template = format!(
        "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{}",
        two_listeners(
            &format!(
                "  - name: app\n    sticky: {{cookie: SRV, ttl: 1h}}\n    backends: [{}]\n",
                backends(&[&a, &b, &c])
            ),
            "upstream: app"
        ),
        d = dir.display()
    );
    let (text, ports) = render(&template, &dir);
    let mut old = Proxy::start_in(dir.clone(), &text, ports, &[]).expect("start");
    let key = dir.join("stepstone.pid.sticky.key");
    let mode = std::fs::metadata(&key)
        .expect("the key file beside the pid file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    let first = get_with(old.addr, None).await;
    let (cookie, _) = set_cookie(&first).expect("cookie");
    let home = origin_of(&first);

    let log = std::fs::File::create(dir.join("stderr-new.log")).expect("log");
    let child = Command::new(bin())
        .arg("-u")
        .arg("-c")
        .arg(&old.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the new process");
    let new = Proxy {
        child,
        dir: old.dir.clone(),
        config: old.config.clone(),
        addr: old.addr,
        ports: old.ports.clone(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(old.child.id(), libc::SIGQUIT);
    let st = wait_exit(&mut old, Duration::from_secs(30)).await;
    assert!(st.is_some_and(|s| s.success()), "old process: {st:?}");
    let new_log = std::fs::read_to_string(dir.join("stderr-new.log")).unwrap_or_default();
    assert!(
        new_log.contains("Bootstrap done") && !new_log.contains("starting normally"),
        "the new process did not take the sockets over:\n{new_log}"
    );
    // the new process honours the old process's cookie, on both engines
    for addr in [new.addr_of(0), new.addr_of(1)] {
        for i in 0..10 {
            let r = get_with(addr, Some(&cookie)).await;
            assert_eq!(
                origin_of(&r),
                home,
                "request {i} to {addr} after the upgrade"
            );
            assert_eq!(r.header("set-cookie"), None, "the old cookie is valid");
        }
    }
    drop(new);
}

/// One GET over TLS (no verification: the test only reads the answer's fields); the head.
async fn https_head(addr: std::net::SocketAddr, cookie: Option<&str>) -> String {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    let ssl = b
        .build()
        .configure()
        .expect("configure")
        .into_ssl("app.test")
        .expect("ssl");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .expect("handshake");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{cookie}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_secure_on_https_listeners() {
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let dir = scratch_dir("sticky-tls");
    let ca = crate::support::pki::Ca::new("sticky test CA");
    let (cert, key) = ca.server("app.test", &["app.test"], 2).write(&dir, "app");
    let tls = format!(
        "tls: {{certificates: [{{cert: {}, key: {}}}]}}",
        cert.display(),
        key.display()
    );
    let template = two_listeners(
        &format!(
            "  - name: app\n    sticky: {{cookie: SRV, ttl: 0s}}\n    backends: [{}]\n",
            backends(&[&a, &b])
        ),
        "upstream: app",
    )
    .replace("protocol: http}", &format!("protocol: https, {tls}}}"))
    .replace(
        "protocol: http, fast_path: false}",
        &format!("protocol: https, fast_path: false, {tls}}}"),
    );
    let (text, ports) = render(&template, &dir);
    let p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        let head = https_head(addr, None).await;
        let field = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: ")
                    .or(l.strip_prefix("Set-Cookie: "))
            })
            .unwrap_or_else(|| panic!("{engine}: no cookie in\n{head}"))
            .to_string();
        let pair = field.split(';').next().unwrap_or("").to_string();
        // a session cookie (ttl 0s): no Max-Age
        assert_eq!(
            field,
            format!("{pair}; Path=/; HttpOnly; Secure"),
            "{engine}"
        );
        let again = https_head(addr, Some(&pair)).await;
        assert!(
            !again.to_ascii_lowercase().contains("set-cookie"),
            "{engine}: {again}"
        );
    }
}
