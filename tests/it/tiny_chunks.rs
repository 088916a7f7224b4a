//! A request body sent as many tiny chunks (`1\r\nz\r\n` over and over: 6 bytes on the
//! wire per byte of data). Forwarded chunk by chunk, each would cost the proxy a write to
//! the backend, a syscall per 6 bytes the client sends; nginx buffers and sends such a body
//! in a few writes. The request guard merges the whole chunks of each read into one, so
//! the backend gets the same data, trailers and the pipelined request after it, in a few
//! chunks. Checked with `fast_path` on and off, and on a forward proxy.

use crate::support::raw::{chunked_body, read_until_close, statuses, RawBackend, Reply};
use crate::support::Proxy;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CHUNKS: usize = 20_000;

/// One http listener on `b`: a reverse proxy (`keys` added to the listener) or, with
/// `forward`, a forward proxy that may reach loopback.
fn config(b: std::net::SocketAddr, keys: &str, forward: bool) -> String {
    if forward {
        return "listeners:\n  - name: fwd\n    address: 127.0.0.1:{{port}}\n    protocol: http\n    forward_proxy: {allow_private_destinations: true, access: [{action: allow}]}\n".into();
    }
    format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http{keys}}}\nupstreams:\n  - name: app\n    backends: [{{address: {b}}}]\nroutes:\n  - {{listener: web, upstream: app}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_tiny_chunks_reaches_the_backend_in_few_chunks_on_every_engine() {
    let mut wrong = Vec::new();
    for (engine, keys, forward) in [
        ("fast path", "", false),
        ("general", ", fast_path: false", false),
        ("forward proxy", "", true),
    ] {
        let b = RawBackend::start(Reply::Ok).await;
        let p = Proxy::start(&config(b.addr, keys, forward));
        let target = |path: &str| {
            if forward {
                format!("http://{}{path}", b.addr)
            } else {
                path.to_string()
            }
        };
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            target("/up"),
            b.addr
        )
        .into_bytes();
        for _ in 0..CHUNKS {
            req.extend_from_slice(b"1\r\nz\r\n");
        }
        req.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
        req.extend_from_slice(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target("/next"),
                b.addr
            )
            .as_bytes(),
        );
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(&req).await.expect("send");
        let (answer, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
        if statuses(&answer) != [200, 200] || !closed {
            wrong.push(format!(
                "{engine}: answers {:?} (closed {closed}): {}",
                statuses(&answer),
                String::from_utf8_lossy(&answer)
            ));
        }
        let heads = b.heads();
        if heads.len() != 2 || !heads[1].starts_with("GET /next ") {
            wrong.push(format!("{engine}: the backend saw {heads:?}"));
        }
        match chunked_body(&b.raw()) {
            Some((lines, data, rest)) => {
                if data != vec![b'z'; CHUNKS] {
                    wrong.push(format!("{engine}: {} bytes of data arrived", data.len()));
                }
                // 120 KB from the client: a few reads, a few chunks (a split one adds two);
                // the last chunk's size line is among the lines
                let chunks = lines.len() - 1;
                if chunks > 100 {
                    wrong.push(format!(
                        "{engine}: the body reached the backend in {chunks} chunks"
                    ));
                }
                if !rest.starts_with(b"x-sum: 1\r\n\r\n") && !rest.starts_with(b"\r\n") {
                    wrong.push(format!(
                        "{engine}: after the last chunk: {:?}",
                        String::from_utf8_lossy(&rest[..rest.len().min(40)])
                    ));
                }
            }
            None => wrong.push(format!("{engine}: no chunked body reached the backend")),
        }
        if !wrong.is_empty() {
            wrong.push(p.log());
            break;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
