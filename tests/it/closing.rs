//! A connection the proxy closes while the client has sent more than it will answer:
//! pipelined requests past `keepalive_requests`. Closed with unread bytes in its socket,
//! a connection is reset, not ended with a FIN, and a reset can destroy answers the client
//! has not read yet; nginx closes such a connection lingering (write side shut, the rest
//! read and dropped). Checked with the extra requests read ahead by the proxy (in one
//! write with the last answered one) and still in the socket (a later write), on both
//! HTTP/1 engines, with `keepalive_requests` 3 and 1 (one request per connection, where the
//! second request is already past the limit).

use crate::support::raw::{statuses, RawBackend, Reply};
use crate::support::Proxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

/// How the client's read of everything ended: the bytes, and `Ok(())` for a FIN or the
/// error (a reset) otherwise.
async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Result<(), String>) {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(0)) => return (out, Ok(())),
            Ok(Ok(n)) => out.extend_from_slice(&b[..n]),
            Ok(Err(e)) => return (out, Err(e.to_string())),
            Err(_) => return (out, Err("no end within 10s".into())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_keepalive_requests_get_a_fin_not_a_reset_on_both_engines() {
    // the answers come 200 ms after each request: the extra requests are in before the close
    let b = RawBackend::start_with(Reply::Ok, Duration::from_millis(200)).await;
    let mut wrong = Vec::new();
    for limit in [3, 1] {
        let p = Proxy::start(&format!(
            "listeners:\n  - {{name: lean, address: 127.0.0.1:{{{{port}}}}, protocol: http, limits: {{keepalive_requests: {limit}}}}}\n  - {{name: general, address: 127.0.0.1:{{{{port1}}}}, protocol: http, fast_path: false, limits: {{keepalive_requests: {limit}}}}}\nupstreams:\n  - name: app\n    backends: [{{address: {}}}]\nroutes:\n  - {{listener: lean, upstream: app}}\n  - {{listener: general, upstream: app}}\n",
            b.addr
        ));
        closes_with_a_fin(&p, limit, &mut wrong).await;
        if !wrong.is_empty() {
            wrong.push(p.log());
            break;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `limit` requests, then the last of them with (ahead) or before (not ahead) seven more,
/// on each engine's listener of `p`: `limit` answers and a FIN.
async fn closes_with_a_fin(p: &Proxy, limit: usize, wrong: &mut Vec<String>) {
    for (engine, addr) in [("lean", p.addr_of(0)), ("general", p.addr_of(1))] {
        for ahead in [true, false] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.set_nodelay(true);
            let mut first = GET.repeat(limit);
            if ahead {
                first.extend_from_slice(&GET.repeat(7));
            }
            s.write_all(&first).await.expect("send");
            if !ahead {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(&GET.repeat(7)).await.expect("send the rest");
            }
            let (got, end) = read_to_end(&mut s).await;
            let case = if ahead { "read ahead" } else { "in the socket" };
            if statuses(&got) != vec![200; limit] {
                wrong.push(format!(
                    "limit {limit}, {engine}, extra requests {case}: answers {:?}",
                    statuses(&got)
                ));
            }
            if let Err(e) = end {
                wrong.push(format!(
                    "limit {limit}, {engine}, extra requests {case}: the connection ended with {e}"
                ));
            }
        }
    }
}
