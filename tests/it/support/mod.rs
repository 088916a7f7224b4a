//! Test support: real origins, the real proxy binary, and a small real HTTP/1.1 client.
//! Everything binds 127.0.0.1:0 (or a port probed that way) and speaks real sockets.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod etcd;
pub mod h2raw;
pub mod origin;
pub mod pki;
pub mod proxy;
pub mod quic;
pub mod raw;
pub mod redis;
pub mod scripted;
pub mod tcp;

pub use client::{Conn, Response};
pub use origin::{Origin, OriginBuilder};
pub use proxy::Proxy;

/// A loopback port that was free a moment ago. The proxy binds its own listeners from the
/// config, so a port must be named in it.
///
/// Never the same port twice in this test binary: the probe socket is closed before the proxy
/// binds the port, and the proxy's listeners use SO_REUSEPORT, so two tests handed the same
/// port in that gap would both bind it and the kernel would spread each one's connections
/// over both proxies.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
