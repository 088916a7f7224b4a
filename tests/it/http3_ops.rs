//! HTTP/3 operations: a graceful upgrade with a stream in flight, certificate reload,
//! fresh cache hits, address validation (Retry) and the idle timeout.

use crate::support::quic::*;
use crate::support::{OriginBuilder, Proxy};
use std::time::{Duration, Instant};

/// `-u`: the UDP socket goes to the new process with the TCP ones. A request in flight on
/// the old process over HTTP/3 completes; after the old process is gone, new QUIC
/// connections are served by the new one, on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_graceful_upgrade_finishes_the_stream_in_flight_and_hands_the_port_over() {
    use crate::support::proxy::{bin, send_signal};
    let slow = OriginBuilder::new("slow")
        .body("slow done")
        .delay(Duration::from_millis(7000))
        .run()
        .await;
    let b = OriginBuilder::new("b").body("from b").run().await;
    let pki = Pki::new("h3-upgrade");
    let d = pki.dir.display().to_string();
    let pingora = format!(
        "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 4\n  graceful_shutdown_timeout_seconds: 2\n"
    );
    let template = format!("{pingora}{}", config(&pki, slow.addr, b.addr, "", ""));
    let mut old = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, old.addr, "a.test").await;
    let inflight =
        tokio::spawn(async move { request(&mut s, "GET", "https://a.test/slow", &[], None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = std::fs::File::create(pki.dir.join("stderr-new.log")).expect("log");
    let mut new = Proxy {
        child: std::process::Command::new(bin())
            .arg("-u")
            .arg("-c")
            .arg(&old.config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the new process"),
        dir: old.dir.clone(),
        config: old.config.clone(),
        addr: old.addr,
        ports: old.ports.clone(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(old.child.id(), libc::SIGQUIT);

    // Pingora's old process keeps accepting for 5 s after SIGQUIT; then it accepts nothing
    // new (GOAWAY) but still serves the slow stream: a new connection now is the new one's
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old.log().contains("HTTP/3 stops accepting") {
        assert!(
            Instant::now() < deadline,
            "old process never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        old.child.try_wait().ok().flatten().is_none(),
        "the old process left before its stream was done"
    );
    let (_c1, mut s1) = connect(&e, new.addr, "x.b.test").await;
    let got = request(&mut s1, "GET", "https://x.b.test/", &[], None)
        .await
        .expect("GET on a connection made during the drain");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from b");

    let got = inflight
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"slow done");

    let st = wait_exit(&mut old, Duration::from_secs(20)).await;
    assert!(
        st.is_some_and(|s| s.success()),
        "old process did not exit cleanly: {st:?}\n{}",
        old.log()
    );
    assert!(
        old.log().contains("HTTP/3 stops accepting"),
        "{}",
        old.log()
    );
    assert!(
        !old.log().contains("still open after the grace period"),
        "the old process did not drain its QUIC connection by itself:\n{}",
        old.log()
    );
    let new_log = std::fs::read_to_string(pki.dir.join("stderr-new.log")).unwrap_or_default();
    assert!(
        new_log.contains("Bootstrap done") && !new_log.contains("starting normally"),
        "the new process did not take the sockets over:\n{new_log}"
    );
    assert!(new_log.contains("HTTP/3 on udp"), "{new_log}");

    // the old process is gone: a new connection on the same port reaches the new one
    let (_c2, mut s2) = connect(&e, new.addr, "x.b.test").await;
    let got = request(&mut s2, "GET", "https://x.b.test/", &[], None)
        .await
        .expect("GET on the new process");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"from b");
    assert!(
        new.child.try_wait().ok().flatten().is_none(),
        "new process died"
    );
    let _ = new.child.kill();
}

/// A certificate reload reaches both stacks: new QUIC handshakes get the new certificate
/// once the file changes. On a `fast_path: false` listener the general engine's responses
/// carry Alt-Svc too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_certificate_reload_reaches_quic_and_the_general_engine_sends_alt_svc() {
    let a = OriginBuilder::new("a").body("from a").run().await;
    let pki = Pki::new("h3-reload");
    let (c, k) = pki
        .ca
        .server("a.test", &["a.test"], 0x300)
        .write(&pki.dir, "site");
    let template = format!(
        "listeners:
  - name: edge
    address: 127.0.0.1:{{{{port}}}}
    protocol: https
    http3: true
    fast_path: false
    tls:
      reload_interval: 1s
      certificates: [{{cert: {}, key: {}}}]
upstreams:
  - {{name: ua, backends: [{{address: {}}}]}}
routes:
  - {{listener: edge, upstream: ua}}
",
        p(&c),
        p(&k),
        a.addr
    );
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let (conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    assert_eq!(served_serial(&conn), "0300");
    let got = request(&mut s, "GET", "https://a.test/", &[], None)
        .await
        .expect("GET");
    assert_eq!(got.status, 200);

    let tcp = tls_get(proxy.addr, "a.test", "/").await;
    let want = format!("alt-svc: h3=\":{}\"; ma=86400", proxy.addr.port());
    assert!(tcp.to_ascii_lowercase().contains(&want), "{tcp}");

    pki.ca
        .server("a.test", &["a.test"], 0x301)
        .write(&pki.dir, "site");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // a new client each time: a resumed session would show the certificate it began with
        let (c2, _s2) = connect(&endpoint(&pki), proxy.addr, "a.test").await;
        if served_serial(&c2) == "0301" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QUIC still serves the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the connection made before the reload keeps working
    let got = request(&mut s, "GET", "https://a.test/again", &[], None)
        .await
        .expect("GET on the old connection");
    assert_eq!(got.status, 200);
}

/// A cached route: a response stored from a request on the TCP side is a fresh hit over
/// HTTP/3, answered from the store (the origin sees no second request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_fresh_cache_hit_is_answered_from_the_store() {
    let a = OriginBuilder::new("a")
        .header("Cache-Control", "max-age=60")
        .body("cached body")
        .run()
        .await;
    let pki = Pki::new("h3-cache");
    let template = site_config(&pki, "", a.addr, ", cache: {enabled: true}");
    let proxy = start(&pki, &template);
    let first = tls_get(proxy.addr, "a.test", "/page").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(a.requests(), 1);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    let got = request(&mut s, "GET", "https://a.test/page", &[], None)
        .await
        .expect("GET over HTTP/3");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"cached body");
    assert_eq!(
        got.headers.get("x-cache-status").map(|v| v.as_bytes()),
        Some(&b"HIT"[..])
    );
    assert!(got.headers.contains_key("age"));
    assert!(got.headers.get("connection").is_none());
    assert_eq!(a.requests(), 1, "the hit went to the origin");
    // a Range request is not a plain hit: the general engine answers it from the store
    let got = request(
        &mut s,
        "GET",
        "https://a.test/page",
        &[("range", "bytes=0-3")],
        None,
    )
    .await
    .expect("GET with Range");
    assert_eq!((got.status, &got.body[..]), (206, &b"cach"[..]));
    assert_eq!(a.requests(), 1);
}

/// `quic.retry_above: 0`: every new client proves its address with a Retry round trip
/// first, and is then served. `quic.idle_timeout`: a connection with no packets for that
/// long is closed, and the open connection gauge comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_retry_validates_addresses_and_idle_connections_close() {
    let a = OriginBuilder::new("a").body("ok").run().await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-idle");
    let quic = "    quic: {idle_timeout: 1s, handshake_timeout: 2s, retry_above: 0}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, ""));
    let e = endpoint(&pki);
    // a request first, so the connection's SETTINGS have been exchanged
    let (conn, _s) = connect_and_get(&e, proxy.addr, "/").await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "stepstone_quic_retries_total{listener=\"edge\"}"),
        1.0
    );
    let t0 = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the idle connection was not closed");
    assert!(
        matches!(why, quinn::ConnectionError::TimedOut),
        "closed for another reason: {why}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&proxy).await;
        if metric(&m, "stepstone_quic_connections_open{listener=\"edge\"}") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The route's compression runs on HTTP/3 responses too: gzip and br decode to the origin's
/// bytes, with Vary and no Content-Length; without Accept-Encoding the identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_responses_are_compressed_by_the_route() {
    use std::io::Read;
    let body: Vec<u8> = (0..3000u32)
        .flat_map(|i| format!("line {i} of text\n").into_bytes())
        .collect();
    let a = OriginBuilder::new("a")
        .header("Content-Type", "text/plain")
        .body(body.clone())
        .run()
        .await;
    let pki = Pki::new("h3-gzip");
    let template = site_config(&pki, "", a.addr, ", compression: {enabled: true}");
    let proxy = start(&pki, &template);
    let e = endpoint(&pki);
    let (_conn, mut s) = connect(&e, proxy.addr, "a.test").await;
    for (ae, want) in [("gzip", "gzip"), ("br, gzip", "br")] {
        let got = request(
            &mut s,
            "GET",
            "https://a.test/t",
            &[("accept-encoding", ae)],
            None,
        )
        .await
        .expect("GET over HTTP/3");
        assert_eq!(got.status, 200, "{ae}");
        let ce = got.headers.get("content-encoding").map(|v| v.as_bytes());
        assert_eq!(ce, Some(want.as_bytes()), "{ae}");
        assert!(got.headers.get("content-length").is_none(), "{ae}");
        assert!(got.headers.get("vary").is_some(), "{ae}");
        let mut out = Vec::new();
        if want == "gzip" {
            flate2::read::GzDecoder::new(&got.body[..])
                .read_to_end(&mut out)
                .expect("gzip decodes");
        } else {
            brotli::Decompressor::new(&got.body[..], 4096)
                .read_to_end(&mut out)
                .expect("br decodes");
        }
        assert_eq!(out, body, "{ae}");
    }
    let got = request(&mut s, "GET", "https://a.test/t", &[], None)
        .await
        .expect("GET over HTTP/3");
    assert!(got.headers.get("content-encoding").is_none());
    assert_eq!(got.body, body);
}

/// `quic.early_data: true`: a resuming client's 0-RTT requests are read before its
/// handshake ends (a relay holds the handshake's end back 400 ms). The GET goes to the
/// origin at once, marked `Early-Data: 1`; the POST waits for the handshake and goes
/// unmarked. Without the key (the default) the proxy's session tickets do not allow early
/// data, so a resuming client cannot send any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_early_data_forwards_idempotent_requests_only() {
    for on in [true, false] {
        let a = OriginBuilder::new("a").body("ok").run().await;
        let b = OriginBuilder::new("b").run().await;
        let pki = Pki::new(if on { "h3-0rtt-on" } else { "h3-0rtt-off" });
        let quic = if on {
            "    quic: {early_data: true}\n"
        } else {
            ""
        };
        let proxy = start(&pki, &config(&pki, a.addr, b.addr, quic, ""));
        let e = endpoint_0rtt(&pki);
        // a first connection leaves a session ticket with the client
        {
            let (conn, _s) = connect_and_get(&e, proxy.addr, "/first").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            conn.close(0u32.into(), b"");
        }
        let (relay, _task) = slow_handshake_relay(
            proxy.addr,
            Duration::from_millis(50),
            Duration::from_millis(400),
        )
        .await;
        let connecting = e.connect(relay, "a.test").expect("connect");
        let (conn, accepted) = match connecting.into_0rtt() {
            Ok(pair) => pair,
            // off: the proxy's session tickets do not allow early data, so the client's
            // stack does not even try
            Err(_) if !on => continue,
            Err(_) => panic!("the client holds no ticket for 0-RTT"),
        };
        assert!(on, "the proxy's tickets allow 0-RTT without early_data");
        let (mut driver, s) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .expect("h3 client");
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let (mut s1, mut s2) = (s.clone(), s);
        let get = tokio::spawn(async move {
            request(&mut s1, "GET", "https://a.test/early", &[], None).await
        });
        let post = tokio::spawn(async move {
            request(
                &mut s2,
                "POST",
                "https://a.test/late",
                &[],
                Some(b"x".to_vec()),
            )
            .await
        });
        let (get, post) = (get.await.expect("task"), post.await.expect("task"));
        assert!(accepted.await, "the proxy refused the 0-RTT data");
        assert_eq!(get.expect("GET in 0-RTT").status, 200);
        assert_eq!(post.expect("POST in 0-RTT").status, 200);
        let seen = a.recorded();
        let early = seen.iter().find(|r| r.path == "/early");
        let early = early.expect("the GET reached the origin");
        assert_eq!(early.header("early-data"), Some("1"), "{seen:?}");
        let late = seen.iter().find(|r| r.path == "/late");
        let late = late.expect("the POST reached the origin");
        assert_eq!(late.header("early-data"), None, "{seen:?}");
    }
}

/// `tls.client_ca` over QUIC: a client certificate from that CA is served; no certificate,
/// or one from another CA, fails the handshake and nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_certificates_are_required_with_client_ca() {
    use crate::support::pki::Ca;
    let a = OriginBuilder::new("a").body("ok").run().await;
    let pki = Pki::new("h3-mtls");
    let ca = pki.ca.write(&pki.dir, "client-ca");
    let template = site_config(&pki, "", a.addr, "").replace(
        "    tls:\n",
        &format!("    tls:\n      client_ca: {}\n", p(&ca)),
    );
    let proxy = start(&pki, &template);

    let alice = pki.ca.client("alice", 0x700);
    let e = endpoint_as(&pki, &alice);
    let (_conn, _s) = connect_and_get(&e, proxy.addr, "/with-cert").await;
    assert_eq!(a.requests(), 1);

    let attempt = |e: quinn::Endpoint| async move {
        let conn = e
            .connect(proxy.addr, "a.test")
            .map_err(|err| err.to_string())?
            .await
            .map_err(|err| err.to_string())?;
        let (mut driver, mut s) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|err| err.to_string())?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        request(&mut s, "GET", "https://a.test/refused", &[], None)
            .await
            .map(|got| got.status)
    };
    let mallory = Ca::new("Another CA").client("mallory", 0x701);
    for (who, e) in [
        ("no certificate", endpoint(&pki)),
        ("a certificate from another CA", endpoint_as(&pki, &mallory)),
    ] {
        let r = attempt(e).await;
        assert!(r.is_err(), "{who}: served {r:?}");
    }
    assert_eq!(a.requests(), 1, "a refused client reached the origin");
}

/// An HTTP/3 request stream whose HEADERS frame does not arrive whole is ended at the
/// listener's `header_timeout` (1 s), as a slow HTTP/1 head or HTTP/2 header block is: QUIC's
/// idle timeout never fires while the client's packets keep coming. The connection still
/// serves after it, and nothing reached the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_stream_whose_headers_stall_is_ended_at_the_header_timeout() {
    let a = OriginBuilder::new("a").body("ok").run().await;
    let b = OriginBuilder::new("b").run().await;
    let pki = Pki::new("h3-slow-head");
    let limits = "    limits: {header_timeout: 1s}\n";
    let proxy = start(&pki, &config(&pki, a.addr, b.addr, "", limits));
    let e = endpoint(&pki);
    let (conn, mut s) = connect_and_get(&e, proxy.addr, "/").await;
    let (mut tx, mut rx) = conn.open_bi().await.expect("open a stream");
    let frame = raw_get_frame("a.test", "/stalled", &[]);
    tx.write_all(&frame[..frame.len() - 3])
        .await
        .expect("write part of HEADERS");
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), rx.read_to_end(1 << 16)).await;
    let got = ended.unwrap_or_else(|_| {
        panic!(
            "the stream was still open 15 s after a 1 s header timeout:\n{}",
            proxy.log()
        )
    });
    assert!(
        !matches!(&got, Ok(b) if raw_status(b).is_some()),
        "the stalled stream got a response: {got:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "ended after {:?}, before the timeout",
        t0.elapsed()
    );
    let line = "sent no complete head within 1s";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains(line) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.log().contains(line), "no log line:\n{}", proxy.log());
    let got = request(&mut s, "GET", "https://a.test/after", &[], None)
        .await
        .expect("GET after the stalled stream");
    assert_eq!(got.status, 200);
    let paths: Vec<String> = a.recorded().iter().map(|r| r.path.clone()).collect();
    assert!(!paths.iter().any(|p| p == "/stalled"), "{paths:?}");
}

/// An https listener with HTTP/3 added by a reload serves over QUIC as well as TCP. Changed
/// in place by the next (a new certificate), it keeps its QUIC endpoint: a stream in flight
/// finishes, its connection gets GOAWAY and closes, and new QUIC and TLS handshakes get the
/// new certificate. Removed, it takes no new QUIC connection, drains, and lets its UDP port go
/// (so the same listener can be added back, which the next round does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_changes_and_removes_an_https_listener_with_http3() {
    use crate::support::client::admin_reload;
    let a = OriginBuilder::new("a").body("from a").run().await;
    let slow = OriginBuilder::new("slow")
        .body("slow done")
        .delay(Duration::from_millis(1500))
        .run()
        .await;
    let pki = Pki::new("h3-reload-listener");
    let (c, k) = pki.server("site", "a.test", &["a.test"], 0x600);
    let (c2, k2) = pki.server("site2", "a.test", &["a.test"], 0x601);
    let first = format!(
        "pingora:\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n\
         admin: {{address: 127.0.0.1:{{{{port1}}}}, token: tok}}\n\
         listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
         upstreams:\n  - {{name: ua, backends: [{{address: {}}}]}}\n  - {{name: us, backends: [{{address: {}}}]}}\n\
         routes:\n  - {{listener: web, upstream: ua}}\n",
        a.addr, slow.addr
    );
    let proxy = start(&pki, &first);
    let admin = proxy.addr_of(1);
    let first = std::fs::read_to_string(&proxy.config).expect("read the config");
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let edge = |cert: &std::path::Path, key: &std::path::Path| {
        first
            .replace(
                "upstreams:\n",
                &format!(
                    "  - name: edge\n    address: {at}\n    protocol: https\n    http3: true\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\nupstreams:\n",
                    p(cert),
                    p(key)
                ),
            )
            .replace(
                "routes:\n",
                "routes:\n  - {listener: edge, upstream: ua}\n  - {listener: edge, path_prefix: /slow, upstream: us}\n",
            )
    };
    // a new client each time (a resumed session would show the certificate it began with)
    let quic_get = || async {
        let e = endpoint(&pki);
        let (conn, mut s) = tokio::time::timeout(Duration::from_secs(3), connect(&e, at, "a.test"))
            .await
            .ok()?;
        let got = request(&mut s, "GET", "https://a.test/", &[], None)
            .await
            .ok()?;
        Some((
            served_serial(&conn),
            got.status,
            String::from_utf8_lossy(&got.body).to_string(),
        ))
    };

    let served = |serial: &str| Some((serial.to_string(), 200, "from a".to_string()));
    let reload_to = |text: String| {
        std::fs::write(&proxy.config, text).expect("write");
        admin_reload(admin)
    };

    for round in 0..2 {
        // added: QUIC and TCP
        let (status, text) = reload_to(edge(&c, &k)).await;
        assert_eq!(status, 200, "round {round}: {text}");
        let added = quic_get().await;
        assert_eq!(added, served("0600"), "round {round}: HTTP/3 when added");
        let tcp = tls_get(at, "a.test", "/").await;
        assert!(tcp.contains("from a"), "round {round}: {tcp}");

        // changed in place, with a stream in flight on a QUIC connection from before
        let e = endpoint(&pki);
        let (conn, mut s) = connect(&e, at, "a.test").await;
        let inflight =
            tokio::spawn(
                async move { request(&mut s, "GET", "https://a.test/slow", &[], None).await },
            );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, text) = reload_to(edge(&c2, &k2)).await;
        assert_eq!(status, 200, "round {round}: {text}");
        let changed = quic_get().await;
        assert_eq!(changed, served("0601"), "round {round}: HTTP/3 changed");
        let done = inflight.await.expect("task").expect("the stream in flight");
        assert_eq!(
            (done.status, done.body.as_slice()),
            (200, &b"slow done"[..]),
            "round {round}"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(3), conn.closed())
                .await
                .is_ok(),
            "round {round}: the connection from before was not sent away"
        );

        // removed: no new QUIC connection, and its UDP port is given back after the drain
        let (status, text) = reload_to(first.clone()).await;
        assert_eq!(status, 200, "round {round}: {text}");
        assert_eq!(
            quic_get().await,
            None,
            "round {round}: a removed listener takes QUIC connections"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(at).is_err() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the removed listener's UDP port is still held"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
