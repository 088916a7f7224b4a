//! The open-file limit: a proxy started with a low soft limit (as a service manager may
//! start it) raises it at start and serves more connections than it started with.

use crate::support::{client, OriginBuilder, Proxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Soft and hard "Max open files" of a running process, from /proc.
fn limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// This process's hard limit, which the proxy inherits; the tests need room above `need`.
fn hard_limit(need: u64) -> u64 {
    let (_, hard) = limits(std::process::id());
    assert!(
        hard > need,
        "the hard open-file limit ({hard}) leaves no room to test raising a soft limit to it"
    );
    hard
}

/// The connect timeout is long: 300 backend connections opened at once, on a machine that
/// also runs the rest of the suite, once took longer than the default second (a 504), which
/// is not what these tests are about.
fn config(origin: std::net::SocketAddr, pingora: &str) -> String {
    format!(
        "{pingora}listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
         upstreams:\n  - {{name: app, backends: [{{address: {origin}}}], connect_timeout: 10s}}\n\
         routes:\n  - {{listener: web, upstream: app}}\n"
    )
}

#[tokio::test]
async fn a_low_soft_limit_is_raised_to_the_hard_limit_at_start() {
    let hard = hard_limit(1024);
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start_with_nofile(&config(o.addr, ""), 256);
    assert_eq!(limits(p.child.id()), (hard, hard));
    assert!(
        p.log()
            .contains(&format!("open-file limit raised from 256 to {hard}")),
        "{}",
        p.log()
    );
}

#[tokio::test]
async fn max_open_files_sets_the_soft_limit() {
    let hard = hard_limit(1000);
    let o = OriginBuilder::new("a").run().await;
    let dir = crate::support::scratch_dir("fdlimit");
    let pingora = format!(
        "pingora:\n  threads: 1\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  max_open_files: 1000\n",
        d = dir.display()
    );
    let p = Proxy::start_with_nofile(&config(o.addr, &pingora), 256);
    assert_eq!(limits(p.child.id()), (1000, hard));
}

/// 300 keep-alive clients at once, each answered, through a proxy started with a soft limit
/// of 128 descriptors: without the raise, accept fails (EMFILE) before the 128th.
#[tokio::test]
async fn serves_more_connections_than_its_starting_limit() {
    hard_limit(1024);
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start_with_nofile(&config(o.addr, ""), 128);
    assert_eq!(
        client::get(p.addr, "/", &[]).await.expect("first").status,
        200
    );
    let mut conns = Vec::new();
    for i in 0..300 {
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(p.addr))
            .await
            .unwrap_or_else(|_| panic!("connect {i}: timed out"))
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        conns.push(s);
    }
    let heads = get_all(&mut conns, Duration::from_secs(5), "300 clients").await;
    for (i, got) in heads.iter().enumerate() {
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "connection {i}: {}",
            String::from_utf8_lossy(got)
        );
    }
}

/// Send `GET /` on every connection, then read each one's response head, each within
/// `wait`; `what` names the run in a failure.
async fn get_all(conns: &mut [TcpStream], wait: Duration, what: &str) -> Vec<Vec<u8>> {
    send_all(conns, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", wait, what).await
}

/// Send `req` on every connection, then read each one's response head (of a bodiless
/// response), each within `wait`.
async fn send_all(conns: &mut [TcpStream], req: &[u8], wait: Duration, what: &str) -> Vec<Vec<u8>> {
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: write {i}: {e}"));
    }
    let all = conns.len();
    let mut heads = Vec::with_capacity(all);
    for (i, s) in conns.iter_mut().enumerate() {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(wait, s.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("{what}: connection {i} of {all} got no answer"))
                .unwrap_or_else(|e| panic!("{what}: read {i}: {e}"));
            assert!(
                n > 0,
                "{what}: connection {i} of {all} closed without an answer"
            );
            got.extend_from_slice(&b[..n]);
        }
        heads.push(got);
    }
    heads
}

/// Lower a running process's open-file limit (soft and hard) to `n`.
fn set_limit(pid: u32, n: u64) {
    set_limits(pid, n, n);
}

/// Set a running process's soft and hard open-file limits (a hard limit only goes down).
fn set_limits(pid: u32, soft: u64, hard: u64) {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads the struct it is given and changes only the target's limits
    // (a process of this user; lowering a limit needs no privilege).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &r,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    assert_eq!(limits(pid), (soft, hard));
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

/// A burst that needs more descriptors than the proxy may open: each of `K` clients sends a
/// request at once to a backend that takes 300 ms, with room for half as many backend
/// connections. The connects this machine refuses (EMFILE) wait for a connection to
/// come back instead of failing with a 502, and the backend is not blamed for them: a request
/// after the burst still reaches it. Both engines.
#[tokio::test]
async fn a_burst_past_the_open_file_limit_waits_instead_of_failing() {
    const K: u64 = 24;
    let o = OriginBuilder::new("a")
        .delay(Duration::from_millis(300))
        .run()
        .await;
    for (engine, keys) in [("lean", ""), ("general", ", fast_path: false")] {
        let p = Proxy::start(&format!(
            "admin: {{address: 127.0.0.1:{{{{port1}}}}}}\n\
             listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http{keys}}}\n\
             upstreams:\n  - {{name: app, backends: [{{address: {}}}], connect_timeout: 5s}}\n\
             routes:\n  - {{listener: web, upstream: app}}\n",
            o.addr
        ));
        let first = client::get(p.addr, "/", &[]).await.expect("first");
        assert_eq!(first.status, 200, "{engine}");
        let pid = p.child.id();
        let mut conns = Vec::new();
        for i in 0..K {
            let s = TcpStream::connect(p.addr)
                .await
                .unwrap_or_else(|e| panic!("{engine}: connect {i}: {e}"));
            conns.push(s);
        }
        // Every client accepted before the limit: an OPTIONS with Max-Forwards 0 is the
        // proxy's own answer. (A client still unaccepted when idle pooled backend connections
        // hold the last descriptors would wait for them; not what this test is about.)
        let own = b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n";
        let wait = Duration::from_secs(10);
        for h in send_all(&mut conns, own, wait, engine).await {
            assert!(
                h.starts_with(b"HTTP/1.1 200"),
                "{engine}: {}",
                String::from_utf8_lossy(&h)
            );
        }
        set_limit(pid, open_fds(pid) + K / 2);
        let heads = get_all(&mut conns, wait, engine).await;
        let failed: Vec<_> = heads
            .iter()
            .filter(|h| !h.starts_with(b"HTTP/1.1 200"))
            .map(|h| String::from_utf8_lossy(&h[..h.len().min(12)]).to_string())
            .collect();
        assert!(
            failed.is_empty(),
            "{engine}: {} of {K} failed: {failed:?}\n{}",
            failed.len(),
            p.log()
        );
        assert!(
            p.log().contains("refused by this machine"),
            "{engine}: no connect was refused, the test did not reach the limit:\n{}",
            p.log()
        );
        drop(conns);
        let after = client::get(p.addr, "/", &[]).await.expect("after");
        assert_eq!(after.status, 200, "{engine}: {}", p.log());
        let m = crate::support::metrics::metrics(&p).await;
        let refusals =
            crate::support::metrics::series(&m, "stepstone_local_connect_refusals_total", &[]);
        assert!(refusals >= 1.0, "{engine}: refusals not counted:\n{m}");
    }
}

/// The same at L4: `K` clients each hold a connection to the backend for 300 ms, with room
/// for the clients and half as many backend connections. Those whose connect this machine
/// refuses wait until others close, instead of being closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_connection_past_the_open_file_limit_waits_for_a_descriptor() {
    const K: u64 = 12;
    let b = crate::support::tcp::TcpBackend::start("a", false).await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: t, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: u}}\n\
         upstreams:\n  - {{name: u, backends: [{{address: {}}}], connect_timeout: 5s}}\n",
        b.addr
    ));
    let pid = p.child.id();
    set_limit(pid, open_fds(pid) + K + K / 2);
    let addr = p.addr;
    let clients: Vec<_> = (0..K)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("connect {i}: {e}"));
                s.write_all(b"HOLD\n")
                    .await
                    .unwrap_or_else(|e| panic!("write {i}: {e}"));
                let mut got = Vec::new();
                let mut b = [0u8; 64];
                while !got.contains(&b'\n') {
                    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                        .await
                        .unwrap_or_else(|_| panic!("client {i} got no answer"))
                        .unwrap_or_else(|e| panic!("read {i}: {e}"));
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                String::from_utf8_lossy(&got).to_string()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.expect("client task"));
    }
    let failed = answers.iter().filter(|a| a.as_str() != "a\n").count();
    assert_eq!(failed, 0, "{answers:?}\n{}", p.log());
    assert!(
        p.log().contains("refused by this machine"),
        "no connect was refused, the test did not reach the limit:\n{}",
        p.log()
    );
}

/// HTTP health checks that this machine cannot make (no descriptor left) leave the verdict as it
/// is: with checks every 100 ms and one failure enough to mark a backend down, a second at
/// the limit marks nothing down, and the backend serves as soon as descriptors are back.
#[tokio::test]
async fn a_health_check_refused_by_this_machine_marks_no_backend_down() {
    let o = OriginBuilder::new("a").run().await;
    let p = Proxy::start_logging(
        &format!(
            "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
             upstreams:\n  - name: app\n    backends: [{{address: {}}}]\n    \
             health_check: {{type: http, interval: 100ms, unhealthy_threshold: 1}}\n\
             routes:\n  - {{listener: web, upstream: app}}\n",
            o.addr
        ),
        "info,stepstone::upstream::health=debug",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = p.child.id();
    let (_, hard) = limits(pid);
    // No new descriptor at all: one is refused when its number would reach the soft
    // limit, and 0-2 are taken. The hard limit stays, to give them back.
    set_limits(pid, 3, hard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = p.log();
    set_limits(pid, hard, hard);
    assert!(!log.contains("is unhealthy"), "{log}");
    assert!(
        log.contains("verdict unchanged"),
        "no check was refused, the test did not reach the limit:\n{log}"
    );
    let r = client::get(p.addr, "/", &[]).await.expect("after");
    assert_eq!(r.status, 200, "{}", p.log());
}

/// The descriptor numbers a process has open.
fn fd_numbers(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// At the limit, with idle pooled backend connections holding the last descriptors, new
/// clients are still accepted: the accept loop closes idle backend connections to make room
/// (without it, a client past the limit waits unaccepted for as long as they stay idle).
#[tokio::test]
async fn idle_backend_connections_give_way_to_new_clients_at_the_limit() {
    const K: usize = 8;
    let o = OriginBuilder::new("a")
        .delay(Duration::from_millis(200))
        .run()
        .await;
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: web, address: 127.0.0.1:{{{{port}}}}, protocol: http}}\n\
         upstreams:\n  - {{name: app, backends: [{{address: {}}}]}}\n\
         routes:\n  - {{listener: web, upstream: app}}\n",
        o.addr
    ));
    // K requests at once: K backend connections, idle in the pool once answered
    let mut conns = Vec::new();
    for _ in 0..K {
        conns.push(TcpStream::connect(p.addr).await.expect("connect"));
    }
    for h in get_all(&mut conns, Duration::from_secs(5), "fill").await {
        assert!(
            h.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&h)
        );
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = p.child.id();
    let numbers = fd_numbers(pid);
    let limit = numbers.iter().max().expect("descriptors") + 1;
    let free = limit - numbers.len() as u64;
    let (_, hard) = limits(pid);
    set_limits(pid, limit, hard);
    // the free numbers below the limit first, then some that only the pool can give
    let own = b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n";
    let mut clients = Vec::new();
    for i in 0..free + 3 {
        let mut c = vec![TcpStream::connect(p.addr).await.expect("connect")];
        let h = send_all(&mut c, own, Duration::from_secs(5), &format!("client {i}")).await;
        assert!(
            h[0].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&h[0])
        );
        clients.extend(c);
    }
    let r = get_all(&mut clients[..1], Duration::from_secs(5), "after").await;
    assert!(
        r[0].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&r[0])
    );
    set_limits(pid, hard, hard);
    assert!(
        p.log().contains("idle backend connection(s) to make room"),
        "{}",
        p.log()
    );
}
