//! Who may go where: access rules, denied names before any lookup, the private-destination
//! guard, and proxy authentication.

use super::{absolute, curl, fwd, proxy_url, OPEN};
use crate::support::proxy::render;
use crate::support::{scratch_dir, Conn, OriginBuilder, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_allow_and_deny_by_client_destination_and_method() {
    let o = OriginBuilder::new("acl").run().await;
    let cfg = "listeners:
  - name: fwd
    address: 127.0.0.1:{{port}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access:
        - {action: deny, name: no-post, methods: [POST]}
        - {action: deny, name: no-localhost-name, destinations: [localhost, '*.localhost']}
        - {action: allow, name: loopback, clients: [127.0.0.0/8], destinations: [127.0.0.0/8]}
  - name: lan-only
    address: 127.0.0.1:{{port1}}
    protocol: http
    forward_proxy:
      allow_private_destinations: true
      access:
        - {action: allow, name: lan, clients: [10.0.0.0/8]}
";
    let p = Proxy::start(cfg);
    let host = o.addr.to_string();
    let url = format!("http://{host}/x");

    let r = absolute(&p, "GET", &url, &[]).await;
    assert_eq!(r.status, 200, "allowed by client and destination network");

    let r = absolute(&p, "POST", &url, &[]).await;
    assert_eq!(r.status, 403, "denied by method");
    assert!(r.text().contains("no-post"), "{}", r.text());

    let r = absolute(
        &p,
        "GET",
        &format!("http://localhost:{}/x", o.addr.port()),
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "denied by destination name");
    assert!(r.text().contains("no-localhost-name"), "{}", r.text());

    // the second listener only admits 10/8 clients; we are 127.0.0.1
    let mut c = Conn::connect(p.addr_of(1)).await.expect("connect");
    let r = c
        .request("GET", &url, &[("Host", host.as_str())], b"")
        .await
        .expect("response");
    assert_eq!(r.status, 403, "denied by client");
    assert!(r.text().contains("default"), "{}", r.text());

    assert_eq!(
        o.requests(),
        1,
        "only the allowed request reached the origin"
    );
    let log = p.log();
    assert!(log.contains("denied by no-post"), "{log}");
    assert!(log.contains("denied by no-localhost-name"), "{log}");
}

/// Squid's `dstdomain`: a rule that denies a name decides before any lookup, so a denied
/// name that does not even resolve (`.invalid`, RFC 6761) is a 403, never a 502, for
/// absolute-form and CONNECT alike. Each lookup is logged at debug level; with that level on,
/// the allowed name's lookup is in the log and the denied one's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_name_is_refused_before_any_lookup() {
    let o = OriginBuilder::new("named").run().await;
    let p = Proxy::start_logging(
        &fwd("allow_private_destinations: true
connect_ports: [443]
access:
  - {action: deny, name: no-blocked, destinations: [blocked.invalid, '*.blocked.invalid']}
  - {action: allow}"),
        "info,stepstone::forward=debug",
    );

    let r = absolute(&p, "GET", "http://blocked.invalid/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no-blocked"), "{}", r.text());
    let r = absolute(&p, "GET", "http://www.blocked.invalid:8080/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());

    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c
        .request(
            "CONNECT",
            "blocked.invalid:443",
            &[("Host", "blocked.invalid:443")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no-blocked"), "{}", r.text());

    // control: an allowed name is looked up (from /etc/hosts), and the lookup is logged
    let r = absolute(
        &p,
        "GET",
        &format!("http://localhost:{}/y", o.addr.port()),
        &[],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "named"));

    let log = p.log();
    assert!(
        log.contains("resolving localhost"),
        "lookups are not logged: {log}"
    );
    assert!(!log.contains("resolving blocked.invalid"), "{log}");
    assert!(!log.contains("resolving www.blocked.invalid"), "{log}");
    assert!(!log.contains("cannot resolve"), "{log}");
    assert_eq!(log.matches("403: denied by no-blocked").count(), 3, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_by_default() {
    let o = OriginBuilder::new("private").run().await;
    let p = Proxy::start(&fwd("access: [{action: allow}]\nconnect_ports: [443]"));
    for url in [
        format!("http://{}/", o.addr),
        // a name that resolves to loopback is caught after resolution
        format!("http://localhost:{}/", o.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let r = absolute(&p, "GET", &url, &[]).await;
        assert_eq!(r.status, 403, "{url}");
        assert!(r.text().contains("private network"), "{}", r.text());
    }
    let mut c = Conn::connect(p.addr).await.expect("connect");
    let r = c
        .request(
            "CONNECT",
            "localhost:443",
            &[("Host", "localhost:443")],
            b"",
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403);
    assert_eq!(o.requests(), 0);
    assert!(p.log().contains("private destination"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_auth_asks_then_admits_and_never_forwards_credentials() {
    let o = OriginBuilder::new("authed").run().await;
    let dir = scratch_dir("fwd-auth");
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    std::fs::write(dir.join("users"), format!("# test users\nalice:{hash}\n")).expect("users");
    let (text, ports) = render(
        &fwd(&format!(
            "{OPEN}\nauth: {{realm: test-realm, users_file: users}}"
        )),
        &dir,
    );
    let p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let url = format!("http://{}/private", o.addr);

    let r = absolute(&p, "GET", &url, &[]).await;
    assert_eq!(r.status, 407);
    assert_eq!(
        r.header("proxy-authenticate"),
        Some("Basic realm=\"test-realm\"")
    );
    // alice:wrong
    let r = absolute(
        &p,
        "GET",
        &url,
        &[("Proxy-Authorization", "Basic YWxpY2U6d3Jvbmc=")],
    )
    .await;
    assert_eq!(r.status, 407);
    assert_eq!(o.requests(), 0);

    let (code, out, err) =
        curl(&["-x", &proxy_url(&p), "--proxy-user", "alice:s3cret", &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "authed");
    // the cached credential works too, and the origin never sees it
    let (code, out, _) = curl(&["-x", &proxy_url(&p), "--proxy-user", "alice:s3cret", &url]).await;
    assert_eq!((code, out.as_str()), (0, "authed"));
    let recs = o.recorded();
    assert_eq!(
        recs.len(),
        2,
        "the origin saw {} requests: {recs:?}",
        recs.len()
    );
    for rec in recs {
        assert!(rec.header("proxy-authorization").is_none(), "{rec:?}");
    }
}
