//! Test support: real origins, the real proxy binary, and a small real HTTP/1.1 client.
//! Everything binds 127.0.0.1:0 (or a port probed that way) and speaks real sockets.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod etcd;
pub mod h2raw;
pub mod metrics;
pub mod origin;
pub mod pki;
pub mod proxy;
pub mod quic;
pub mod raw;
pub mod redis;
pub mod scripted;
pub mod tcp;

pub use client::{admin_reload, Conn, Response};
pub use origin::{Origin, OriginBuilder};
pub use proxy::Proxy;

/// A loopback port that was free a moment ago. The proxy binds its own listeners from the
/// config, so a port must be named in it.
///
/// The probe socket is closed before the proxy binds the port, so nothing else may be handed
/// the port in between:
/// - never the same port twice in this test binary: the proxy's listeners use SO_REUSEPORT,
///   so two tests given one port would both bind it and the kernel would spread each one's
///   connections over both proxies;
///   Nextest runs each test in a process of its own, so "this test binary" is every
///   process of it running at once: a port is also claimed with a lock on a file named
///   after it, held until the process exits. Without it, two tests started together (pids
///   a few apart, so start points a few ports apart) were given the same ports, and one
///   differential test's requests reached the other's proxy;
/// - ports below the kernel's ephemeral range: `bind 127.0.0.1:0` (every origin in these
///   tests) and outgoing connections are only given ports inside it, so they cannot take
///   the port in the gap either. A probe inside the range was once given, in that gap, to
///   another test's `bind 127.0.0.1:0`.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    const LOW: u32 = 10_000;
    static TRIED: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768);
    assert!(
        ephemeral_low >= LOW + 2_000,
        "net.ipv4.ip_local_port_range starts at {ephemeral_low}: no room below it for the \
         tests' fixed ports ({LOW} and up)"
    );
    let span = ephemeral_low - LOW;
    // another test binary on the machine starts elsewhere in the span
    let start = std::process::id() % span;
    loop {
        let n = TRIED.fetch_add(1, Relaxed);
        assert!(n < span, "no free port left in {LOW}..{ephemeral_low}");
        let port = (LOW + (start + n) % span) as u16;
        if !claim(port) {
            continue;
        }
        // HTTP/3 listeners take the UDP port of the same number
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// Claim `port` among the test processes running now: an exclusive lock on a file named
/// after it, kept (with its descriptor) until this process exits, when the kernel drops it.
fn claim(port: u16) -> bool {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("stepstone-it-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(port.to_string());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    true
}

/// A loopback address that refuses connections, for as long as the test binary runs.
///
/// Its socket is bound but never listens, so a SYN to it is answered with a reset, and no
/// other socket in the test binary can be handed its port. A probe that is bound and then
/// dropped does not hold its port: once, the next `bind 127.0.0.1:0` (a tracing test's
/// collector) was given it and took the "dead" backend's requests. Refusing is stateless,
/// so every test shares the one socket.
pub fn dead_addr() -> std::net::SocketAddr {
    static DEAD: std::sync::OnceLock<(socket2::Socket, std::net::SocketAddr)> =
        std::sync::OnceLock::new();
    DEAD.get_or_init(|| {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        s.bind(&any.into()).expect("bind 127.0.0.1:0");
        let addr = s
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an inet address");
        (s, addr)
    })
    .1
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "stepstone-it-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// A config with one forward-proxy listener that speaks h2c too (CONNECT over HTTP/1.1 and
/// HTTP/2), allowing CONNECT to loopback `port` only.
pub fn forward_h2c(port: u16) -> String {
    format!(
        "listeners:
  - name: fwd
    address: 127.0.0.1:{{{{port}}}}
    protocol: http
    h2c: true
    forward_proxy: {{allow_private_destinations: true, connect_ports: [{port}], access: [{{action: allow}}]}}
"
    )
}
