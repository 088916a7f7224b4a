//! A client that asks for a large response and then reads none of it (the slow-read attack,
//! `slowhttptest -X`): once the socket buffers are full, `limits.client_timeout` passes
//! without the proxy getting to write, and it closes the client connection and drops the
//! backend connection that was feeding it, as nginx's `send_timeout` does. Checked on the
//! lean engine, the lean engine with `splice: true` (the body goes socket to socket) and the
//! general engine.

use crate::support::client::get;
use crate::support::Proxy;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// A backend that answers every request with a 1 GiB body, written as fast as it is taken,
/// and notes when a write fails (the proxy dropped the connection).
async fn endless_backend() -> (SocketAddr, Arc<Mutex<Option<Instant>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let cut = Arc::new(Mutex::new(None));
    let noted = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let noted = noted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if head.starts_with(b"GET /small ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                let block = vec![b'x'; 64 << 10];
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 0..(1 << 14) {
                    if s.write_all(&block).await.is_err() {
                        *noted.lock().expect("lock") = Some(Instant::now());
                        return;
                    }
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_none_of_its_response_is_cut_at_client_timeout_on_every_engine() {
    let mut wrong = Vec::new();
    for (engine, keys) in [
        ("lean", ""),
        ("lean with splice", ", splice: true"),
        ("general", ", fast_path: false"),
    ] {
        let (backend, cut) = endless_backend().await;
        let p = Proxy::start(&format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http, limits: {{client_timeout: 1s}}{keys}}}\nupstreams:\n  - name: app\n    backends: [{{address: {backend}}}]\n    read_timeout: 30s\n    write_timeout: 30s\nroutes:\n  - {{listener: web, upstream: app}}\n"
        ));
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut c = sock.connect(p.addr).await.expect("connect");
        c.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("send");
        let asked = Instant::now();
        // read nothing until the backend's connection is dropped, or long past the timeout
        let deadline = asked + Duration::from_secs(10);
        let at = loop {
            if let Some(t) = *cut.lock().expect("lock") {
                break Some(t);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match at.map(|t| t - asked) {
            Some(d) if d >= Duration::from_millis(900) => {}
            Some(d) => wrong.push(format!(
                "{engine}: the backend connection was dropped {d:?} after the request, before client_timeout (1s)"
            )),
            None => wrong.push(format!(
                "{engine}: the backend connection still fed a client that read nothing 10s on"
            )),
        }
        // what the client buffered, then the close: not the whole body
        let mut got = 0usize;
        let mut b = vec![0u8; 1 << 16];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n,
                Err(_) => break false,
            }
        };
        if !closed || got >= 1 << 30 {
            wrong.push(format!(
                "{engine}: the client connection closed {closed} after {got} bytes"
            ));
        }
        // the proxy goes on serving
        match get(p.addr, "/small", &[]).await {
            Ok(r) if r.status == 200 => {}
            other => wrong.push(format!("{engine}: a request after it: {other:?}")),
        }
        if !wrong.is_empty() {
            wrong.push(p.log());
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
