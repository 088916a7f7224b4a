//! The admin listener across reloads: its token rotated, its address moved, removed and
//! added back.

use super::{admin_call, body_of, refuses, reload_cli, route_to, two_upstreams, Setup, TOKEN};
use crate::support::{client, free_port, OriginBuilder};
use std::net::SocketAddr;
use std::time::Duration;

/// A reload rotates the admin token: the reload asked with the old token applies, and from
/// the next request only the new one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_admin_token() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-token");
    let text = s.text(&two_upstreams(&a, &b), &route_to("a"), "");
    let p = s.start(&text);
    let admin = s.admin();
    let with = |token: &'static str| async move {
        client::admin_as(admin, "GET", "/status", token)
            .await
            .status
    };
    assert_eq!(with(TOKEN).await, 200);
    assert_eq!(with("n3w-t0ken").await, 401);

    std::fs::write(&p.config, text.replace(TOKEN, "n3w-t0ken")).expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(with(TOKEN).await, 401, "the old token still works");
    assert_eq!(with("n3w-t0ken").await, 200, "the new token is refused");
}

/// A reload moves the admin listener: the new address listens before the old one stops
/// (the request that asked for the move is answered on the old one), removes it and adds it
/// back; an address in use refuses the reload, naming `admin.address`, and the admin
/// listener in force goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_removes_and_adds_the_admin_listener() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("reload-admin");
    let text = s.text(&two_upstreams(&a, &b), &route_to("a"), "");
    let p = s.start(&text);
    let (old, new) = (s.admin(), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let at = |addr: SocketAddr| text.replace(&old.to_string(), &addr.to_string());
    let status = |addr: SocketAddr| async move {
        client::admin_as(addr, "GET", "/status", TOKEN).await.status
    };
    assert_eq!(status(old).await, 200);

    std::fs::write(&p.config, at(new)).expect("write");
    let r = admin_call(old, "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(new).await, 200, "the new address serves the API");
    let health = client::get(new, "/healthz", &[]).await.expect("healthz");
    assert_eq!(health.status, 200);
    assert!(
        refuses(old, Duration::from_secs(5)).await,
        "the old address still listens"
    );
    assert_eq!(body_of(s.web()).await, "A", "the proxy serves on");

    // taken by another socket: refused, and the admin listener stays where it is, with its
    // token
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = at(taken.local_addr().expect("addr")).replace(TOKEN, "0ther-t0ken");
    std::fs::write(&p.config, refused).expect("write");
    let r = client::admin_as(new, "POST", "/api/reload", TOKEN).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("admin.address"), "{}", r.text());
    assert_eq!(status(new).await, 200, "the refused file's token took over");

    // removed (the reload asked by signal: there is no API to ask), then added back
    let none = text
        .lines()
        .filter(|l| !l.starts_with("admin:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(none, text, "the admin line is gone");
    std::fs::write(&p.config, format!("{none}\n")).expect("write");
    let (code, out) = reload_cli(&p.config);
    assert_eq!(code, 0, "{out}");
    assert!(
        refuses(new, Duration::from_secs(5)).await,
        "removed, it still listens"
    );
    std::fs::write(&p.config, &text).expect("write");
    let (code, out) = reload_cli(&p.config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(old).await, 200, "added back at its first address");
}
