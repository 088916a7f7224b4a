//! Certificate reload (file change, SIGHUP, `POST /api/reload`) and TLS listeners added,
//! changed and removed by a configuration reload.

use super::{
    app_upstream, connect, eventually, h1, https_listener, origin_and_site, p, served, start,
    ClientOpts, Pki,
};
use crate::support::pki::write_atomic;
use crate::support::{admin_reload, OriginBuilder};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

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
