//! Divergences 3 and 8: a CONNECT tunnel is logged and counted with status 200, and an idle
//! one is closed when shutdown starts.

use super::{log_line, start, ADMIN, WAIT};
use crate::support::metrics::{metrics, series, wait_series};
use crate::support::proxy::{render, send_signal};
use crate::support::raw::read_until_close;
use crate::support::tcp::TcpBackend;
use crate::support::{scratch_dir, Proxy};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read one response head (through the blank line) byte by byte, leaving the rest.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("a response head in time")
            .expect("read head");
        assert!(
            n > 0,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---------------------------------------------------------------------------------------
// 3. CONNECT tunnels are logged and counted with status 200
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_are_logged_and_counted_with_status_200() {
    let echo = TcpBackend::start("echo", false).await;
    let port = echo.addr.port();
    let cfg = format!(
        "{ADMIN}access_log: {{format: json, path: '{{{{dir}}}}/access.log'}}\nlisteners:\n  - name: fwd\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: http\n    forward_proxy:\n      allow_private_destinations: true\n      access: [{{action: allow}}]\n      connect_ports: [{port}]\n"
    );
    let p = start(&cfg, &[1]);
    let m = metrics(&p).await;
    let ok0 = series(&m, "stepstone_requests_total", &["class=\"2xx\""]);
    let err0 = series(&m, "stepstone_requests_total", &["class=\"err\""]);

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // 17 bytes up; "hello tunnel" echoed, then "bye\n" after our EOF: 16 bytes down
    tcp.write_all(b"ECHO\nhello tunnel").await.expect("write");
    let mut got = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"hello tunnel");
    tcp.shutdown().await.expect("half-close");
    let (rest, closed) = read_until_close(&mut tcp, WAIT).await;
    assert_eq!(rest, b"bye\n");
    assert!(closed, "the tunnel did not close after both sides ended");

    let file = p.dir.join("access.log");
    let v = log_line(&file, "the CONNECT", |v| v["method"] == "CONNECT").await;
    assert_eq!(v["status"], 200, "CONNECT access log line: {v}");
    assert_eq!(v["bytes_received"], 17, "{v}");
    assert_eq!(v["bytes_sent"], 16, "{v}");

    let m = wait_series(
        &p,
        "stepstone_requests_total",
        &["class=\"2xx\""],
        ok0 + 1.0,
    )
    .await;
    assert_eq!(
        series(&m, "stepstone_requests_total", &["class=\"2xx\""]),
        ok0 + 1.0,
        "the CONNECT was not counted as a 2xx:\n{m}"
    );
    assert_eq!(
        series(&m, "stepstone_requests_total", &["class=\"err\""]),
        err0,
        "the CONNECT was counted as a request without a response:\n{m}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. CONNECT tunnels close on shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connect_tunnel_is_closed_at_shutdown_and_the_process_exits_0() {
    let echo = TcpBackend::start("echo", false).await;
    let port = echo.addr.port();
    let dir = scratch_dir("connect-shutdown");
    // A grace period long enough that the runtime's teardown at its end cannot be what
    // closes the tunnel within the time asserted below.
    let template = format!(
        "pingora:\n  threads: 2\n  pid_file: {{{{dir}}}}/stepstone.pid\n  upgrade_sock: {{{{dir}}}}/upgrade.sock\n  grace_period_seconds: 8\n  graceful_shutdown_timeout_seconds: 2\nlisteners:\n  - name: fwd\n    address: 127.0.0.1:{{{{port}}}}\n    protocol: http\n    forward_proxy:\n      allow_private_destinations: true\n      access: [{{action: allow}}]\n      connect_ports: [{port}]\n      tunnel_idle_timeout: 5m\n"
    );
    let (text, ports) = render(&template, &dir);
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"ECHO\nping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"ping");
    assert_eq!(echo.open(), 1);

    let t0 = Instant::now();
    send_signal(p.child.id(), libc::SIGTERM);
    let (rest, closed) = read_until_close(&mut tcp, Duration::from_secs(4)).await;
    assert!(
        closed,
        "the idle CONNECT tunnel was still open {:?} after SIGTERM (grace period 8s)",
        t0.elapsed()
    );
    assert!(
        rest.is_empty() || rest == b"bye\n",
        "unexpected bytes: {rest:?}"
    );
    eprintln!("tunnel closed {:?} after SIGTERM", t0.elapsed());

    let deadline = Instant::now() + Duration::from_secs(25);
    let st = loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}\n{}", p.log());
}
