//! HTTP/1.0 clients (ApacheBench among them) on the lean engine: they went to Pingora's
//! general engine, at 2.3 times nginx's CPU per request for `ab -k`. Served here alike: the
//! connection kept only when the client asked (`Connection: keep-alive`) and the answer has
//! a length, a chunked backend answer sent decoded and close-delimited, no interim answer.
//! A request without Host (which the backend, spoken to in HTTP/1.1, would need) is still
//! the general engine's.

use crate::support::metrics::{metrics, series, wait_series};
use crate::support::raw::read_until_close;
use crate::support::scripted::Origin;
use crate::support::{Conn, Proxy};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FALLBACKS: &str = "stepstone_fast_path_fallbacks_total";

fn get(path: &str, fields: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\n{fields}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_requests_stay_on_the_lean_engine_with_keep_alive_as_asked() {
    let origin = Origin::start().await;
    let mut p = Proxy::start(&format!(
        "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n",
        origin.addr
    ));
    let admin = p.addr_of(1);
    p.wait_ready(admin).unwrap_or_else(|e| panic!("{e}"));
    let all0 = series(&metrics(&p).await, FALLBACKS, &[]);
    let keep = "Host: app.test\r\nConnection: keep-alive\r\n";

    // keep-alive asked for, answers with a length: one connection for three requests
    let mut c = Conn::connect(p.addr).await.expect("connect");
    for i in 0..3 {
        c.send_raw(&get(&format!("/k{i}"), keep))
            .await
            .expect("send");
        let r = c.read_response(false).await.expect("answer");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "request {i}");
    }
    // then a chunked answer: decoded, no Transfer-Encoding, and the connection closes
    c.send_raw(&get("/chunked", keep)).await.expect("send");
    let r = c.read_response(false).await.expect("answer");
    assert_eq!(
        (r.text().as_str(), r.header("transfer-encoding")),
        ("hello world", None)
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "a close-delimited answer left the connection open"
    );

    // no keep-alive asked for: closed after the answer; a 1xx is not passed on
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(&get("/early", "Host: app.test\r\n"))
        .await
        .expect("send");
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(
        closed,
        "an HTTP/1.0 connection without keep-alive stayed open"
    );

    // all of them on the lean engine
    let m = metrics(&p).await;
    assert_eq!(series(&m, FALLBACKS, &[]), all0, "{m}");

    // without Host: the general engine's (counted as an http10 fallback)
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(&get("/nohost", "")).await.expect("send");
    let (out, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let http10 = ["reason=\"http10\""];
    let m = wait_series(&p, FALLBACKS, &http10, 1.0).await;
    assert_eq!(series(&m, FALLBACKS, &http10), 1.0, "{m}");
    assert_eq!(series(&m, FALLBACKS, &[]), all0 + 1.0, "{m}");
}
