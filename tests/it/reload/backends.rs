//! Backends across reloads: the runtime API's drains and weights kept across a reload and an
//! upgrade, and the health verdict of backends that stay.

use super::{admin_call, metric, route_to, Setup};
use crate::support::proxy::{bin, send_signal};
use crate::support::{Conn, Origin, OriginBuilder};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn one_pool(a: &Origin, b: &Origin, read_timeout: &str) -> String {
    format!(
        "  - name: app\n    read_timeout: {read_timeout}\n    backends: [{{address: {}}}, {{address: {}}}]\n",
        a.addr, b.addr
    )
}

async fn share_of(addr: SocketAddr, n: usize, of: &str) -> f64 {
    let mut c = Conn::connect(addr).await.expect("connect");
    let mut hits = 0;
    for _ in 0..n {
        let r = c.get("/", &[]).await.expect("get");
        assert_eq!(r.status, 200);
        if r.text() == of {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

async fn backend_state(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let r = admin_call(admin, "GET", "/api/upstreams", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    v["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_drains_weights_and_keeps_state_across_reload_and_upgrade() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let s = Setup::new("runtime-api");
    let p = s.start(&s.text(&one_pool(&a, &b, "30s"), &route_to("app"), ""));
    let path_b = format!("/api/upstreams/app/backends/{}", b.addr);
    let path_a = format!("/api/upstreams/app/backends/{}", a.addr);

    let st = backend_state(s.admin(), b.addr).await;
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["weight"], 1);
    assert_eq!(st["health"], "up");
    assert_eq!(st["outlier"], "ok");
    assert_eq!(st["in_flight"], 0);

    // drain: b gets none of the next 40
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "drain"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        share_of(s.web(), 40, "B").await,
        0.0,
        "a drained backend got requests"
    );

    // weights 3:1
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "ready"}"#).await;
    assert_eq!(r.status, 200);
    let r = admin_call(s.admin(), "PUT", &path_a, r#"{"weight": 3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let share = share_of(s.web(), 400, "A").await;
    eprintln!("weight 3:1 -> share of a {share:.3}");
    assert!((0.68..=0.82).contains(&share), "share of a {share}");
    let st = admin_call(s.admin(), "GET", "/status", "").await.text();
    let v: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
    let in_status = v["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|x| x["address"] == a.addr.to_string())
        .cloned()
        .unwrap_or_default();
    assert_eq!(in_status["weight"], 3, "{st}");
    let m = admin_call(s.admin(), "GET", "/metrics", "").await.text();
    let series = format!(
        "stepstone_backend_weight{{upstream=\"app\",backend=\"{}\"}}",
        a.addr
    );
    assert_eq!(metric(&m, &series), Some(3.0), "{m}");

    // each bad call: 400 with the reason, and nothing applied
    let bad_calls = [
        (
            "PUT",
            "/api/upstreams/nope/backends/127.0.0.1:1".to_string(),
            r#"{"weight": 2}"#,
            "unknown upstream",
        ),
        (
            "PUT",
            "/api/upstreams/app/backends/not-an-address".to_string(),
            r#"{"weight": 2}"#,
            "malformed address",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 0}"#,
            "weight out of range",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 5000}"#,
            "weight out of range",
        ),
        (
            "PUT",
            path_b.clone(),
            r#"{"weight": 2, "state": "asleep"}"#,
            "unknown state",
        ),
        (
            "POST",
            "/api/upstreams/app/backends".to_string(),
            r#"{"address": "1.2.3", "weight": 1}"#,
            "malformed address",
        ),
        (
            "POST",
            "/api/upstreams/nope/backends".to_string(),
            r#"{"address": "127.0.0.1:9"}"#,
            "unknown upstream",
        ),
    ];
    for (method, path, body, reason) in bad_calls {
        let r = admin_call(s.admin(), method, &path, body).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        assert!(
            r.text().contains(reason),
            "{method} {path} {body}: {}",
            r.text()
        );
    }
    assert_eq!(
        backend_state(s.admin(), b.addr).await["weight"],
        1,
        "partial apply"
    );

    // maint, then a reload that replaces the pool: the changes stay
    let r = admin_call(s.admin(), "PUT", &path_b, r#"{"state": "maint"}"#).await;
    assert_eq!(r.status, 200);
    std::fs::write(
        &p.config,
        s.text(&one_pool(&a, &b, "31s"), &route_to("app"), ""),
    )
    .expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend_state(s.admin(), a.addr).await["weight"], 3);
    assert_eq!(backend_state(s.admin(), b.addr).await["state"], "maint");
    assert_eq!(share_of(s.web(), 20, "B").await, 0.0);

    // add a backend, then take it out again
    let c = OriginBuilder::new("c").body("C").run().await;
    let r = admin_call(
        s.admin(),
        "POST",
        "/api/upstreams/app/backends",
        &format!(r#"{{"address": "{}", "weight": 1}}"#, c.addr),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        share_of(s.web(), 20, "C").await > 0.0,
        "an added backend gets requests"
    );
    let r = admin_call(
        s.admin(),
        "DELETE",
        &format!("/api/upstreams/app/backends/{}", c.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend_state(s.admin(), c.addr).await.is_null() {
        assert!(Instant::now() < deadline, "the removed backend stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(share_of(s.web(), 20, "C").await, 0.0);

    // an upgrade: the new process starts with the same changes
    let log = std::fs::File::create(s.dir.join("stderr-upgrade.log")).expect("log");
    let mut new = Command::new(bin())
        .arg("-u")
        .arg("-c")
        .arg(&p.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the new process");
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(p.child.id(), libc::SIGQUIT);
    let mut old = p;
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st_a = backend_state(s.admin(), a.addr).await;
    let st_b = backend_state(s.admin(), b.addr).await;
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(st_a["weight"], 3, "after the upgrade: {st_a}");
    assert_eq!(st_b["state"], "maint", "after the upgrade: {st_b}");
}

fn checked_pool(backends: &[&Origin]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|o| format!("{{address: {}}}", o.addr))
        .collect();
    format!(
        "  - name: app\n    health_check: {{type: http, path: /healthz, interval: 200ms, healthy_threshold: 1, unhealthy_threshold: 3}}\n    backends: [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_health_verdict_of_backends_that_stay() {
    let a = OriginBuilder::new("a").body("A").run().await;
    let b = OriginBuilder::new("b").body("B").run().await;
    let c = OriginBuilder::new("c").body("C").run().await;
    b.set_health(503);
    let s = Setup::new("reload-health");
    let p = s.start(&s.text(&checked_pool(&[&a, &b]), &route_to("app"), ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(s.admin(), b.addr).await["health"] != "down" {
        assert!(Instant::now() < deadline, "b never went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a third backend in the file: the pool stays, b stays down (a fresh check would start
    // it up, as Pingora's checks start every backend healthy)
    std::fs::write(
        &p.config,
        s.text(&checked_pool(&[&a, &b, &c]), &route_to("app"), ""),
    )
    .expect("write");
    let r = admin_call(s.admin(), "POST", "/api/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..10 {
        assert_eq!(backend_state(s.admin(), b.addr).await["health"], "down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        share_of(s.web(), 30, "B").await,
        0.0,
        "a down backend got requests"
    );
    assert!(
        share_of(s.web(), 30, "C").await > 0.0,
        "the new backend gets requests"
    );

    // maintenance pauses c's health checks (each probe is a new connection; no request
    // reaches c meanwhile)
    let path_c = format!("/api/upstreams/app/backends/{}", c.addr);
    let r = admin_call(s.admin(), "PUT", &path_c, r#"{"state": "maint"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = c.connections();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        c.connections(),
        probes,
        "a backend in maintenance was probed"
    );
    let r = admin_call(s.admin(), "PUT", &path_c, r#"{"state": "ready"}"#).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(c.connections() > probes, "checks resume after maintenance");
}
