//! Fleets of instances that share state through a real store: the per-IP rate limit counted
//! in one Redis by three proxies, and the routing of three proxies taken from one etcd key.

use crate::support::etcd::Etcd;
use crate::support::raw::{RawBackend, Reply};
use crate::support::redis::RedisServer;
use crate::support::{client, Conn, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One instance of the fleet: a listener limited to `limit` a second per client IP and
/// counted in `redis`, and an admin listener for `/metrics`. `fast_path: false` puts it on
/// the general engine. The store's timeout is generous: a test box under load answers in
/// more than the 5 ms default at times, and a request counted locally is not what is tested.
fn limited(backend: SocketAddr, redis: SocketAddr, limit: u32, fast_path: bool) -> String {
    format!(
        "listeners:
  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, fast_path: {fast_path},
     limits: {{rate_limit_per_ip: {limit}, rate_limit_store: {{redis: {{address: {redis}, key_prefix: \"it:\", timeout: 300ms}}}}}}}}
upstreams:
  - {{name: app, backends: [{{address: {backend}}}]}}
routes:
  - {{listener: web, upstream: app}}
admin: {{address: 127.0.0.1:{{{{port1}}}}}}
"
    )
}

/// A connection to a proxy. A listen port that another process held for a moment (a port
/// probed free, then taken by an outgoing connection of a parallel test) is bound by the
/// proxy's retry a little later: refused connections are tried again for a few seconds.
async fn connect(addr: SocketAddr) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Conn::connect(addr).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "connect {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `n` requests at `per_second`, in turn to each proxy (a keep-alive connection to
/// each), starting on a whole second of the clock so the count windows are whole. Returns
/// the statuses; a request that got no answer panics.
async fn paced(proxies: &[SocketAddr], n: usize, per_second: u32) -> Vec<u16> {
    let mut conns = Vec::new();
    for p in proxies {
        conns.push(connect(*p).await);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let to_next = Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos() as u64);
    let start = Instant::now() + to_next + Duration::from_millis(30);
    let gap = Duration::from_secs(1) / per_second;
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let k = i % proxies.len();
        let r = match conns[k].get("/", &[]).await {
            Ok(r) => r,
            // a connection the proxy closed (keep-alive limits): one more try on a new one
            Err(_) => {
                conns[k] = connect(proxies[k]).await;
                conns[k]
                    .get("/", &[])
                    .await
                    .unwrap_or_else(|e| panic!("request {i} to {}: no answer: {e}", proxies[k]))
            }
        };
        statuses.push(r.status);
    }
    statuses
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_shared_in_redis_holds_across_three_instances() {
    let mut redis = RedisServer::start();
    let b = RawBackend::start(Reply::Ok).await;
    // two instances on the lean engine, one on the general engine: one count for all
    let fleet =
        [true, true, false].map(|fast| Proxy::start(&limited(b.addr, redis.addr, 10, fast)));
    let addrs: Vec<SocketAddr> = fleet.iter().map(|p| p.addr).collect();

    // 30 a second for 3 whole seconds, spread over the 3: 10 a second get through in all
    let statuses = paced(&addrs, 90, 30).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(
        ok + limited,
        90,
        "statuses other than 200 and 429: {statuses:?}"
    );
    assert!(
        (24..=36).contains(&ok),
        "{ok} of 90 got through in 3 s; the fleet-wide limit is 10 a second: {statuses:?}"
    );
    assert_eq!(b.requests(), ok, "a limited request reached the backend");

    // Redis gone: every request is still answered, by each instance's own count
    redis.stop();
    let statuses = paced(&addrs, 30, 30).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "with Redis stopped: {statuses:?}"
    );
    // 10 to each instance in one second, each under its own limit of 10
    assert_eq!(ok, 30, "with Redis stopped: {statuses:?}");
    for p in &fleet {
        let m = client::get(([127, 0, 0, 1], p.port(1)).into(), "/metrics", &[])
            .await
            .expect("metrics")
            .text();
        let errors = metric(&m, "stepstone_rate_limit_store_errors_total");
        assert!(errors >= 1.0, "no store error counted:\n{m}");
        let log = p.log();
        assert_eq!(
            log.matches("counting in this instance").count(),
            1,
            "the outage is logged once:\n{log}"
        );
    }

    // Redis back: the count is the fleet's again
    redis.restart();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let statuses = paced(&addrs, 60, 30).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        (16..=24).contains(&ok),
        "{ok} of 60 got through in 2 s after Redis came back: {statuses:?}"
    );
    assert!(fleet.iter().all(|p| p.log().contains("answering again")));
}

// ---------------------------------------------------------------------------------------
// Fleet configuration from etcd
// ---------------------------------------------------------------------------------------

const KEY: &str = "/stepstone/routing.yaml";
const TOKEN: &str = "fleet-t0ken";

/// The routing document: one upstream over `origin`, the route to it.
fn routing(origin: SocketAddr) -> String {
    format!(
        "upstreams:\n  - {{name: app, backends: [{{address: {origin}}}]}}\nroutes:\n  - {{listener: web, upstream: app}}\n"
    )
}

/// An instance's own file: a listener, an admin listener, and the routing from `etcd`.
fn member(etcd: &str, cache: bool) -> String {
    let cache = if cache {
        ", cache_file: \"{{dir}}/routing-cache.yaml\""
    } else {
        ""
    };
    format!(
        "listeners:
  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
admin: {{address: 127.0.0.1:{{{{port1}}}}, token: {TOKEN}}}
config_source:
  etcd: {{endpoints: [\"{etcd}\"], key: {KEY}{cache}}}
"
    )
}

async fn body_of(addr: SocketAddr) -> String {
    client::get(addr, "/", &[])
        .await
        .map(|r| r.text())
        .unwrap_or_else(|e| format!("<no answer: {e}>"))
}

async fn status_of(p: &Proxy) -> serde_json::Value {
    let mut c = Conn::connect(p.addr_of(1)).await.expect("admin");
    let auth = format!("Bearer {TOKEN}");
    let r = c
        .request("GET", "/status", &[("Authorization", &auth)], b"")
        .await
        .expect("status");
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("/status {e}: {}", r.text()))
}

/// Wait until every instance answers `want`; the time it took.
async fn all_answer(fleet: &[Proxy], want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    for p in fleet {
        loop {
            let got = body_of(p.addr).await;
            if got == want {
                break;
            }
            assert!(
                t0.elapsed() < within,
                "{} answers {got:?}, not {want:?}, {:?} after the write:\n{}",
                p.addr,
                t0.elapsed(),
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_fleet_follows_revisions_refuses_bad_ones_and_outlives_etcd() {
    let a = crate::support::OriginBuilder::new("a")
        .body("A")
        .run()
        .await;
    let b = crate::support::OriginBuilder::new("b")
        .body("B")
        .run()
        .await;
    let c = crate::support::OriginBuilder::new("c")
        .body("C")
        .run()
        .await;
    let mut etcd = Etcd::start();
    etcd.put(KEY, &routing(a.addr));
    let mut fleet: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(&member(&etcd.url(), true)))
        .collect();
    all_answer(&fleet, "A", Duration::from_secs(5)).await;

    // a new revision reaches all 3 within 1 s
    etcd.put(KEY, &routing(b.addr));
    let took = all_answer(&fleet, "B", Duration::from_secs(1)).await;
    eprintln!("revision applied by all 3 in {took:?}");

    // a bad revision is refused by all 3, each keeps the last good one and says why
    let bad = etcd.put(
        KEY,
        "upstreams: []\nroutes:\n  - {listener: web, upstream: nowhere}\n",
    );
    for p in &fleet {
        let deadline = Instant::now() + Duration::from_secs(2);
        let s = loop {
            let s = status_of(p).await;
            if s["config"]["config_source"]["etcd"]["refused_revision"] == bad {
                break s;
            }
            assert!(Instant::now() < deadline, "revision {bad} not refused: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let err = s["config"]["config_source"]["etcd"]["last_error"].to_string();
        assert!(
            err.contains("routes[0].upstream") && err.contains("nowhere"),
            "{s}"
        );
        assert!(err.contains(&format!("revision {bad}")), "{s}");
        assert_eq!(body_of(p.addr).await, "B");
    }

    // etcd stopped: all keep serving
    etcd.stop();
    for _ in 0..5 {
        for p in &fleet {
            assert_eq!(body_of(p.addr).await, "B");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // an instance restarted while etcd is down serves from its cache file
    let text = std::fs::read_to_string(&fleet[2].config).expect("config");
    let (dir, ports) = (fleet[2].dir.clone(), fleet[2].ports.clone());
    let _ = fleet[2].child.kill();
    let _ = fleet[2].child.wait();
    let fresh = Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"));
    // the old handle shares the directory: it must not remove it
    std::mem::forget(std::mem::replace(&mut fleet[2], fresh));
    assert_eq!(body_of(fleet[2].addr).await, "B");
    assert!(
        fleet[2].log().contains("from the cache file"),
        "{}",
        fleet[2].log()
    );

    // etcd back: the next revision applies everywhere
    etcd.restart();
    let c_rev = etcd.put(KEY, &routing(c.addr));
    all_answer(&fleet, "C", Duration::from_secs(15)).await;
    // /status follows the swap by a moment (the reload's own bookkeeping comes first)
    for p in &fleet {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let s = status_of(p).await;
            let e = &s["config"]["config_source"]["etcd"];
            if e["connected"] == true && e["refused_revision"].is_null() && e["revision"] == c_rev {
                break;
            }
            assert!(Instant::now() < deadline, "{s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_without_a_cache_file_refuses_to_start() {
    let dead = format!("http://{}", crate::support::dead_addr());
    let err = match Proxy::try_start(&member(&dead, false)) {
        Ok(_) => panic!("started without etcd and without a cache file"),
        Err(e) => e,
    };
    assert!(err.contains("no cache_file"), "{err}");
    assert!(
        err.contains(KEY) || err.contains("routing document"),
        "{err}"
    );
}

/// An instance's file for `etcd` with the extra keys of the `etcd:` block.
fn member_with(etcd: &Etcd, extra: &str) -> String {
    format!(
        "listeners:
  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}
admin: {{address: 127.0.0.1:{{{{port1}}}}, token: {TOKEN}}}
config_source:
  etcd:
    endpoints: [\"{url}\"]
    key: {KEY}
{extra}",
        url = etcd.url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    use crate::support::etcd::Tls;
    use crate::support::pki::Ca;
    let a = crate::support::OriginBuilder::new("a")
        .body("A")
        .run()
        .await;
    let b = crate::support::OriginBuilder::new("b")
        .body("B")
        .run()
        .await;
    let dir = crate::support::scratch_dir("etcd-pki");
    let ca = Ca::new("etcd test CA");
    // etcd's gateway calls its own server with the server certificate: it is a client one too
    let tls = Tls {
        ca: ca.write(&dir, "ca"),
        server: ca
            .server_and_client("etcd", &["127.0.0.1", "localhost"], 2)
            .write(&dir, "server"),
        client: ca.client("stepstone", 3).write(&dir, "client"),
    };
    let (ca_file, (cert, key)) = (tls.ca.clone(), tls.client.clone());
    let etcd = Etcd::start_with(Some(tls));
    assert!(etcd.url().starts_with("https://"));
    etcd.put(KEY, &routing(a.addr));
    let keys = format!(
        "    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let p = Proxy::start(&member_with(&etcd, &keys));
    assert_eq!(body_of(p.addr).await, "A");
    etcd.put(KEY, &routing(b.addr));
    all_answer(std::slice::from_ref(&p), "B", Duration::from_secs(2)).await;

    // without the client certificate etcd refuses the connection: no start without a cache
    let keys = format!("    ca_file: {}\n", ca_file.display());
    let err = match Proxy::try_start(&member_with(&etcd, &keys)) {
        Ok(_) => panic!("started without the client certificate etcd requires"),
        Err(e) => e,
    };
    assert!(err.contains("no cache_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_a_username_and_password_file() {
    let a = crate::support::OriginBuilder::new("a")
        .body("A")
        .run()
        .await;
    let b = crate::support::OriginBuilder::new("b")
        .body("B")
        .run()
        .await;
    let mut etcd = Etcd::start();
    etcd.enable_auth("s3cret");
    etcd.put(KEY, &routing(a.addr));
    let dir = crate::support::scratch_dir("etcd-auth");
    let password = dir.join("etcd-password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let keys = format!(
        "    username: root\n    password_file: {}\n",
        password.display()
    );
    let p = Proxy::start(&member_with(&etcd, &keys));
    assert_eq!(body_of(p.addr).await, "A");
    etcd.put(KEY, &routing(b.addr));
    all_answer(std::slice::from_ref(&p), "B", Duration::from_secs(2)).await;

    // a wrong password is refused by etcd, and so the start without a cache file
    std::fs::write(&password, "wrong\n").expect("password file");
    let err = match Proxy::try_start(&member_with(&etcd, &keys)) {
        Ok(_) => panic!("started with a wrong etcd password"),
        Err(e) => e,
    };
    assert!(err.contains("authentication failed"), "{err}");
}
