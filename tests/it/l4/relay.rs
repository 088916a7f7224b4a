//! The TCP relay, copying or spliced: bytes intact each way, what an idle connection holds,
//! the copy fallback without a pipe, half-close and the idle timeout, and a backend that
//! speaks first.

use super::{backends, closed_within, echoing, log_has, settle, WAIT};
use crate::support::tcp::{echo_round, hex, pattern, TcpBackend};
use crate::support::Proxy;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_64mib_each_way_arrives_intact() {
    for splice in [false, true] {
        each_way_intact(splice).await;
    }
}

/// 64 MiB up and 64 MiB down through a tcp listener, through the copying relay or with
/// splice(2).
async fn each_way_intact(splice: bool) {
    let a = TcpBackend::start("a", false).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, splice: {splice}}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
        backends(&[(&a, 1)])
    ));
    const LEN: usize = 64 << 20;
    let data = pattern(LEN);
    let want = hex(&openssl::sha::sha256(&data));

    // upload: the backend hashes what it got until our EOF, then answers the hash
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"SINK\n").await.expect("cmd");
    let (mut r, mut w) = s.into_split();
    let send = tokio::spawn(async move {
        w.write_all(&data).await.expect("upload");
        w.shutdown().await.expect("shutdown");
    });
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(120), r.read_to_string(&mut answer))
        .await
        .expect("upload answer in time")
        .expect("read");
    send.await.expect("sender");
    assert_eq!(answer.trim(), want, "upload hash");

    // download
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(format!("SOURCE {LEN}\n").as_bytes())
        .await
        .expect("cmd");
    let mut h = openssl::sha::Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "download too slow to finish");
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total, LEN);
    assert_eq!(hex(&h.finish()), want, "download hash");
}

/// With `splice: true` a plain TCP relay moves its bytes with splice(2) through a pipe,
/// which it holds only while bytes are in it: connections that have moved data both ways
/// and gone idle hold their two sockets and no pipe (two descriptors each; a pipe per
/// direction would be four more), and each still works when it is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_hold_no_pipe() {
    const N: usize = 200;
    let a = TcpBackend::start("a", false).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, splice: true}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
        backends(&[(&a, 1)])
    ));
    let pid = p.child.id();
    let mut warm = TcpStream::connect(p.addr).await.expect("connect");
    warm.write_all(b"ECHO\n").await.expect("write");
    assert!(echo_round(&mut warm, b"warm").await, "{}", p.log());
    let fds0 = crate::support::proxy::open_fds(pid);

    let msg = pattern(100 << 10);
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(b"ECHO\n").await.expect("write");
        assert!(
            echo_round(&mut s, &msg).await,
            "100 KiB echoed\n{}",
            p.log()
        );
        conns.push(s);
    }
    let fds1 = crate::support::proxy::open_fds(pid);
    // each thread may keep up to 64 empty pipes for its next transfers
    let pooled = 2 * 64 * 2;
    assert!(
        fds1 <= fds0 + 2 * N + pooled,
        "{N} idle connections take {} descriptors in the proxy, more than their {} sockets and a pipe pool's {pooled}",
        fds1 - fds0.min(fds1),
        2 * N
    );
    for s in conns.iter_mut().step_by(N / 5) {
        assert!(
            echo_round(s, b"again").await,
            "an idle connection used again"
        );
    }
}

/// The copying relay (the default) keeps no buffer while a connection idles: connections
/// that have each moved 256 KiB both ways (each direction's buffer grown to its largest)
/// and gone idle take little of the proxy's memory (235 KiB each when each kept its grown
/// buffers), and each still works when it is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_hold_no_relay_buffer() {
    const N: usize = 100;
    let a = TcpBackend::start("a", false).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
        backends(&[(&a, 1)])
    ));
    let pid = p.child.id();
    let msg = pattern(256 << 10);
    // warm: the first connection's one-time allocations come before the baseline
    let mut warm = echoing(p.addr, &msg).await;
    assert!(echo_round(&mut warm, b"warm").await, "{}", p.log());
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = crate::support::proxy::rss_kib(pid);

    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(echoing(p.addr, &msg).await);
    }
    crate::support::proxy::assert_rss_per_conn(pid, rss0, N, 12.0, "idle relayed connections")
        .await;
    for s in conns.iter_mut().step_by(N / 5) {
        assert!(
            echo_round(s, &msg).await,
            "an idle connection used again\n{}",
            p.log()
        );
    }
}

/// With `splice: true` and the open-file limit reached, a transfer that cannot make a pipe
/// copies through a buffer and goes on (logged once), as HAProxy falls back, rather than
/// closing the connection. The proxy runs with a limit of 128 descriptors, filled by idle
/// connections until at most one is free once the test's connection is in; that connection
/// (a small receive buffer) then sends 16 MiB to an echo backend and reads the echo only
/// later, so that both directions hold bytes at once and need a pipe each, one more than
/// the pool has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_tcp_relay_copies_when_no_pipe_can_be_made() {
    const LIMIT: usize = 128;
    const SIZE: usize = 16 << 20;
    let a = TcpBackend::start("a", false).await;
    let dir = crate::support::scratch_dir("nopipe");
    let p = Proxy::start_with_nofile(
        &format!(
            "pingora:\n  threads: 1\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  max_open_files: {LIMIT}\nadmin: {{address: 127.0.0.1:{{{{port1}}}}}}\nlisteners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, splice: true}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
            backends(&[(&a, 1)]),
            d = dir.display()
        ),
        LIMIT as u64,
    );
    settle(&[&a]).await;
    let pid = p.child.id();
    let idle = crate::support::proxy::fill_fds(pid, LIMIT, p.addr, 3).await;
    assert!(!idle.is_empty(), "nothing filled the descriptor table");

    // a small receive buffer, so that the echo backs up into the proxy while unread
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    let s = sock.connect(p.addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let msg = pattern(SIZE);
    let sent = msg.clone();
    let writer = tokio::spawn(async move {
        w.write_all(b"ECHO\n").await?;
        w.write_all(&sent).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = vec![0u8; SIZE];
    let read = tokio::time::timeout(WAIT, r.read_exact(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the echo of 16 MiB: {read:?}\n{}",
        p.log()
    );
    assert!(got == msg, "the echo differs from what was sent");
    writer.await.expect("writer").expect("write 16 MiB");
    assert!(
        log_has(&p, "no pipe for splice(2)").await,
        "the fallback was never needed (or not logged): {} descriptors open of {LIMIT}\n{}",
        crate::support::proxy::open_fds(pid),
        p.log()
    );
    drop((r, idle));
    // the fallback's bytes were copied, not spliced
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spliced = crate::support::quic::metric(
        &crate::support::quic::metrics(&p).await,
        "stepstone_spliced_bytes_total ",
    );
    assert!(
        spliced < (2 * SIZE) as f64,
        "{spliced} bytes spliced of {} relayed, though some went through a buffer",
        2 * SIZE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_half_close_is_propagated_and_idle_timeout_closes() {
    for splice in [false, true] {
        half_close_and_idle(splice).await;
    }
}

/// [`tcp_half_close_is_propagated_and_idle_timeout_closes`] through the copying relay or
/// with splice(2).
async fn half_close_and_idle(splice: bool) {
    let a = TcpBackend::start("a", false).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, idle_timeout: 500ms, splice: {splice}}}\nupstreams:\n  - name: u\n    backends: [{}]\n",
        backends(&[(&a, 1)])
    ));
    // Half-close: the backend writes "bye" only after it sees our EOF, and we still read it.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"ECHO\nhello").await.expect("write");
    s.shutdown().await.expect("shutdown write");
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(out, "hellobye\n");

    // Idle: an open, working connection that goes quiet is closed by the proxy.
    let mut s = echoing(p.addr, b"x").await;
    assert!(
        closed_within(&mut s, WAIT).await,
        "idle connection not closed"
    );
    let deadline = Instant::now() + WAIT;
    while a.open() > 0 {
        assert!(Instant::now() < deadline, "backend side not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything `s` receives until EOF.
async fn read_all(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut v = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut v)).await {
        Ok(Ok(_)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: not within {WAIT:?}"),
    }
}

/// The backend's side of the next connection that says "hi" (the readiness probe's
/// connections, which say nothing, come first and are dropped).
async fn accept_hi(be: &tokio::net::TcpListener) -> TcpStream {
    loop {
        let (mut s, _) = tokio::time::timeout(WAIT, be.accept())
            .await
            .expect("backend accept in time")
            .expect("accept");
        let mut hi = [0u8; 2];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut hi)).await
        {
            if &hi == b"hi" {
                return s;
            }
        }
    }
}

/// `half_close`: by default a side's FIN is passed on and the other direction stays open
/// (the client still reaches a backend that has finished sending); with `half_close: false`
/// the first side to close ends the connection for both, after what it sent is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_half_close_false_ends_the_connection_at_the_first_close() {
    let be = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let be_addr = be.local_addr().expect("backend address");
    for (half_close, splice) in [(true, false), (false, false), (true, true), (false, true)] {
        let p = Proxy::start(&format!(
            "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, half_close: {half_close}, splice: {splice}}}\nupstreams:\n  - name: u\n    backends: [{{address: {be_addr}}}]\n    health_check: {{type: tcp, interval: 1h}}\n",
        ));
        // The backend ends first: it answers and sends its FIN; the client stays open.
        let mut c = TcpStream::connect(p.addr).await.expect("connect");
        c.write_all(b"hi").await.expect("write");
        let mut s = accept_hi(&be).await;
        s.write_all(b"bye").await.expect("backend write");
        s.shutdown().await.expect("backend shutdown");
        let got = read_all(&mut c, "client sees the end in time").await;
        assert_eq!(
            got, b"bye",
            "half_close {half_close}, splice {splice}: the answer arrives whole"
        );
        if half_close {
            // the client's half is still open: what it sends now reaches the backend
            c.write_all(b"late").await.expect("late write");
            c.shutdown().await.expect("client shutdown");
            let rest = read_all(&mut s, "backend reads in time").await;
            assert_eq!(rest, b"late", "the client's bytes after the backend's FIN");
        } else {
            // the proxy closed the backend's side as well, without the client closing
            let rest = read_all(&mut s, "backend sees the close in time").await;
            assert!(rest.is_empty(), "nothing after the close: {rest:?}");
        }

        // The client ends first (a half-close of its own): the backend sees the FIN; with
        // half_close: false the client is closed too, though the backend has not closed.
        let mut c = TcpStream::connect(p.addr).await.expect("connect");
        c.write_all(b"hi").await.expect("write");
        let mut s = accept_hi(&be).await;
        c.shutdown().await.expect("client shutdown");
        let rest = read_all(&mut s, "backend sees the FIN in time").await;
        assert!(rest.is_empty());
        if half_close {
            s.write_all(b"after")
                .await
                .expect("backend write after FIN");
            drop(s);
            let got = read_all(&mut c, "client reads in time").await;
            assert_eq!(got, b"after", "the backend's bytes after the client's FIN");
        } else {
            assert!(
                closed_within(&mut c, WAIT).await,
                "the client is closed at its own FIN"
            );
            drop(s);
        }
    }
}

/// A backend that greets first (SMTP, FTP, MySQL) is relayed to a client that sends
/// nothing until it has the greeting: the proxy waits on the silent client's socket while
/// it connects, and must not hold the backend's bytes behind a first client read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_speaks_first_reaches_a_client_that_waits_for_it() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let at = backend.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 ready\r\n").await?;
                let mut line = [0u8; 64];
                let n = s.read(&mut line).await?;
                s.write_all(&line[..n]).await
            });
        }
    });
    for splice in [false, true] {
        let p = Proxy::start(&format!(
            "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u, splice: {splice}}}\nupstreams:\n  - name: u\n    backends: [{{address: {at}}}]\n"
        ));
        for round in 0..20 {
            let mut s = TcpStream::connect(p.addr).await.expect("connect");
            let mut greeting = [0u8; 11];
            let got = tokio::time::timeout(WAIT, s.read_exact(&mut greeting)).await;
            assert!(
                matches!(got, Ok(Ok(_))) && &greeting == b"220 ready\r\n",
                "splice {splice}, round {round}: no greeting ({got:?}, {:?})",
                String::from_utf8_lossy(&greeting)
            );
            assert!(
                echo_round(&mut s, b"HELO client\r\n").await,
                "splice {splice}, round {round}: no echo after the greeting"
            );
        }
    }
}
