//! Divergences 1, 2 and 4: an HTTP/2 connection takes a `max_connections` slot, `h2c: true`
//! keeps the lean engine for HTTP/1, and an HTTP/2 request's `:authority` is its logged and
//! forwarded host on both engines.

use super::{admitted, log_line, start, upstream_app, ADMIN, FALLBACKS, REFUSALS, WAIT};
use crate::support::client;
use crate::support::h2raw;
use crate::support::metrics::{metrics, series, wait_series};
use crate::support::raw::read_until_close;
use crate::support::{Conn, OriginBuilder};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

type H2c = (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>);

async fn try_h2c(addr: SocketAddr) -> Result<H2c, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

/// An h2c (prior knowledge) client connection; the task drives it until aborted.
async fn h2c(addr: SocketAddr) -> H2c {
    try_h2c(addr).await.expect("h2c handshake")
}

async fn h2_get(
    client: &h2::client::SendRequest<Bytes>,
    uri: &str,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let mut c = client.clone().ready().await?;
    let req = http::Request::builder().uri(uri).body(()).expect("request");
    let (resp, _) = c.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let data = client::h2_body(&mut resp.into_body()).await?;
    Ok((status, data))
}

// ---------------------------------------------------------------------------------------
// 1. HTTP/2 connections take a max_connections slot
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_take_a_max_connections_slot() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true, limits: {{max_connections: 1}}}}\n{}routes:\n  - {{listener: web, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1]);

    // One HTTP/2 connection, held open (it has served a request, so it is admitted).
    let (h2, h2_task) = admitted("the first h2c connection", || async {
        let (h2, task) = try_h2c(p.addr).await.ok()?;
        match h2_get(&h2, "http://localhost/held").await {
            Ok((200, body)) if body == b"app" => Some((h2, task)),
            _ => {
                task.abort();
                None
            }
        }
    })
    .await;
    let refused0 = series(
        &metrics(&p).await,
        REFUSALS,
        &["listener=\"web\"", "reason=\"max_connections\""],
    );

    // A second connection speaking HTTP/1.1 is refused: 503 with Retry-After, then closed.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let (out, closed) = read_until_close(&mut s, WAIT).await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 503"),
        "an HTTP/1.1 connection beside a held HTTP/2 one was not refused with 503: {text:?}"
    );
    assert!(
        text.contains("\r\nretry-after:"),
        "no Retry-After: {text:?}"
    );
    assert!(closed, "the refused HTTP/1.1 connection was left open");

    // A second h2c connection is refused too: closed, never answered.
    let requests_before = origin.requests();
    let mut s = h2raw::connect(p.addr).await;
    let block = h2raw::block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/second"),
        (b":authority", b"localhost"),
    ]);
    let _ = s
        .write_all(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &block,
        ))
        .await;
    let outcome = h2raw::outcome(&mut s, 1, WAIT).await;
    assert_eq!(
        outcome,
        h2raw::Outcome::Closed,
        "a second h2c connection beside a held one was not refused"
    );
    assert_eq!(
        origin.requests(),
        requests_before,
        "the refused h2c connection's request reached the origin"
    );

    let text = wait_series(
        &p,
        REFUSALS,
        &["listener=\"web\"", "reason=\"max_connections\""],
        refused0 + 2.0,
    )
    .await;
    assert_eq!(
        series(
            &text,
            REFUSALS,
            &["listener=\"web\"", "reason=\"max_connections\""]
        ),
        refused0 + 2.0,
        "the two refusals were not counted:\n{text}"
    );

    // The held HTTP/2 connection still works, and closing it gives the slot back.
    let (status, _) = h2_get(&h2, "http://localhost/again")
        .await
        .expect("the held h2c connection still serves");
    assert_eq!(status, 200);
    drop(h2);
    h2_task.abort();
    let _ = h2_task.await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = client::get(p.addr, "/after", &[]).await;
        if matches!(&r, Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of the closed h2c connection was not given back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 2. h2c listeners keep the lean engine for HTTP/1
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_serves_http1_on_the_lean_engine() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n{}routes:\n  - {{listener: web, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1]);
    let m = metrics(&p).await;
    let all0 = series(&m, FALLBACKS, &[]);
    let opt = ["reason=\"connection_option\""];
    let opt0 = series(&m, FALLBACKS, &opt);

    // Plain HTTP/1.1 GETs, keep-alive and on new connections: the lean engine takes them all.
    let mut c = Conn::connect(p.addr).await.expect("connect");
    for i in 0..3 {
        let r = c.get(&format!("/ka{i}"), &[]).await.expect("answer");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "app"),
            "keep-alive {i}"
        );
    }
    for i in 0..2 {
        let r = client::get(p.addr, &format!("/new{i}"), &[])
            .await
            .expect("answer");
        assert_eq!((r.status, r.text().as_str()), (200, "app"), "new conn {i}");
    }
    let m = metrics(&p).await;
    assert_eq!(
        series(&m, FALLBACKS, &[]),
        all0,
        "plain HTTP/1.1 GETs on an h2c listener were left to the general engine:\n{m}"
    );

    // The lean engine does look at this listener's HTTP/1 requests: one it does not take (a
    // Connection field naming another) is counted as its fallback, which only the lean
    // engine's decision does.
    let mut c = Conn::connect(p.addr).await.expect("connect");
    c.send_raw(b"GET /named HTTP/1.1\r\nHost: localhost\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n")
        .await
        .expect("send");
    let r = c.read_response(false).await.expect("answer");
    assert_eq!(r.status, 200);
    let m = wait_series(&p, FALLBACKS, &opt, opt0 + 1.0).await;
    assert_eq!(
        series(&m, FALLBACKS, &opt),
        opt0 + 1.0,
        "HTTP/1 requests on an h2c listener never reach the lean engine's decision:\n{m}"
    );
    assert_eq!(series(&m, FALLBACKS, &[]), all0 + 1.0, "{m}");

    // h2c still works on the same listener.
    let (h2, task) = h2c(p.addr).await;
    let (status, body) = h2_get(&h2, "http://localhost/h2")
        .await
        .expect("h2c request");
    assert_eq!((status, body.as_slice()), (200, &b"app"[..]));
    task.abort();

    let paths: Vec<String> = origin.recorded().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/ka0", "/ka1", "/ka2", "/new0", "/new1", "/named", "/h2"],
        "the origin's requests"
    );
}

// ---------------------------------------------------------------------------------------
// 4. HTTP/2 access-log host and X-Forwarded-Host, on both engines
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_log_and_forward_their_authority_on_both_engines() {
    let origin = OriginBuilder::new("app").run().await;
    let cfg = format!(
        "{ADMIN}access_log: {{format: json, path: '{{{{dir}}}}/access.log'}}\nlisteners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, h2c: true}}\n  - {{name: general, address: 127.0.0.1:{{{{port2}}}}, protocol: http, h2c: true, fast_path: false}}\n{}routes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
        upstream_app(origin.addr)
    );
    let p = start(&cfg, &[1, 2]);
    let file = p.dir.join("access.log");
    let disabled = ["reason=\"disabled\""];
    for (name, addr, path) in [
        ("lean", p.addr_of(0), "/lean"),
        ("general", p.addr_of(2), "/general"),
    ] {
        let m = metrics(&p).await;
        let (all0, off0) = (series(&m, FALLBACKS, &[]), series(&m, FALLBACKS, &disabled));
        let authority = "app.test:8443";
        let (h2, task) = h2c(addr).await;
        let (status, body) = h2_get(&h2, &format!("http://{authority}{path}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: h2c request: {e}"));
        task.abort();
        assert_eq!((status, body.as_slice()), (200, &b"app"[..]), "{name}");

        // which engine served it: the general one counts its `disabled` fallback
        let want_off = if name == "general" { off0 + 1.0 } else { off0 };
        let m = wait_series(&p, FALLBACKS, &disabled, want_off).await;
        assert_eq!(series(&m, FALLBACKS, &disabled), want_off, "{name}:\n{m}");
        assert_eq!(
            series(&m, FALLBACKS, &[]),
            all0 + want_off - off0,
            "{name}:\n{m}"
        );

        let v = log_line(&file, path, |v| {
            v["uri"].as_str().is_some_and(|u| u.ends_with(path))
        })
        .await;
        assert_eq!(v["version"], "HTTP/2.0", "{name}: {v}");
        assert_eq!(v["status"], 200, "{name}: {v}");
        assert_eq!(
            v["host"], authority,
            "{name}: the access log's host of an HTTP/2 request is not its :authority: {v}"
        );
        let rec = origin
            .recorded()
            .into_iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{name}: the origin did not get {path}"));
        assert_eq!(
            rec.header("x-forwarded-host"),
            Some(authority),
            "{name}: X-Forwarded-Host: {:?}",
            rec.headers
        );
        assert_eq!(
            rec.header("host"),
            Some(authority),
            "{name}: {:?}",
            rec.headers
        );
    }
}
