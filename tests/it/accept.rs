//! `defer_accept`: the kernel hands a connection to the proxy only once its client has sent
//! something (TCP_DEFER_ACCEPT, about a second for a silent client). On by default where the
//! client speaks first (http, https); off on plain `tcp`, where a backend may greet first.

use crate::support::client::{get, Conn};
use crate::support::pki::Ca;
use crate::support::raw::read_until_close;
use crate::support::{scratch_dir, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);
/// The kernel's hold on a silent client: its handshake's last ACK is dropped and the
/// SYN-ACK resent after a second, so it is not accepted before this (with a margin).
const HELD: Duration = Duration::from_millis(900);

/// A GET on a new connection until it is answered 200, for `within` at most: the readiness
/// probe's connection may still hold the one slot for a moment. `None` if never.
async fn first_200(addr: SocketAddr, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = get(addr, "/", &[]).await {
            if r.status == 200 {
                return Some(r.status);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connect to `addr`, send nothing, and read until the proxy closes: what it sent (if
/// anything) and how long after the connect it closed. Fails if it never closes.
async fn silent_close(addr: SocketAddr) -> (Vec<u8>, Duration) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "a silent client on {addr} was never closed");
    (out, t0.elapsed())
}

/// Two listeners of `protocol` with `opts` each, `on` with the default `defer_accept` and
/// `off` with `defer_accept: false`, both routed to `origin`.
fn on_and_off(protocol: &str, opts: &str, origin: SocketAddr) -> String {
    format!(
        "listeners:\n  - {{name: on, address: 127.0.0.1:{{{{port}}}}, protocol: {protocol}, {opts}}}\n  - {{name: off, address: 127.0.0.1:{{{{port1}}}}, protocol: {protocol}, defer_accept: false, {opts}}}\nupstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\nroutes:\n  - {{listener: on, upstream: app}}\n  - {{listener: off, upstream: app}}\n"
    )
}

/// Two http listeners with one connection slot each: `on` with the default, `off` with
/// `defer_accept: false`.
async fn one_slot_listeners() -> (crate::support::Origin, Proxy) {
    let origin = OriginBuilder::new("app").run().await;
    let lim = "limits: {max_connections: 1, header_timeout: 30s, keepalive_timeout: 30s}";
    let p = Proxy::start(&on_and_off("http", lim, origin.addr));
    (origin, p)
}

/// By default a client that connects and sends nothing takes no connection slot for its
/// first second (another client is served beside it on a one-slot listener); after that it
/// is accepted and served like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_takes_no_slot_until_the_kernel_hands_it_over() {
    let (_origin, p) = one_slot_listeners().await;
    let on = p.addr_of(0);
    // the slot is free once a request has been served and its connection closed
    assert_eq!(first_200(on, WAIT).await, Some(200), "{}", p.log());

    let mut silent = TcpStream::connect(on).await.expect("connect");
    let t0 = Instant::now();
    let beside = first_200(on, Duration::from_millis(700)).await;
    assert_eq!(
        beside,
        Some(200),
        "a client beside a silent one on a one-slot listener was not served within {:?}:\n{}",
        t0.elapsed(),
        p.log()
    );

    // Past the kernel's hold the silent client has the slot: a refusal for the next one.
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(t0.elapsed())).await;
    let mut next = TcpStream::connect(on).await.expect("connect");
    next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (out, _) = read_until_close(&mut next, WAIT).await;
    assert!(
        out.starts_with(b"HTTP/1.1 503"),
        "the silent client, accepted by now, did not hold the one slot: {:?}",
        String::from_utf8_lossy(&out)
    );
    // and it is served when it speaks at last
    silent
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (out, _) = read_until_close(&mut silent, WAIT).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"app"),
        "the late request of a held client was not served: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// With `defer_accept: false` the silent client is accepted at once and holds the slot, so
/// the next client is refused: what the default spares a listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_defer_accept_a_silent_client_takes_the_slot_at_once() {
    let (_origin, p) = one_slot_listeners().await;
    let off = p.addr_of(1);
    assert_eq!(first_200(off, WAIT).await, Some(200), "{}", p.log());
    // that client's close frees its slot a moment after its answer
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _silent = TcpStream::connect(off).await.expect("connect");
    // the accept loop runs at once; give it a moment to take the slot
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Conn::connect(off).await.expect("connect");
    let r = c.get("/", &[]).await.expect("an answer");
    assert_eq!(
        r.status, 503,
        "a client beside a silent one was not refused on a one-slot listener without defer_accept"
    );
}

/// A silent client on a plain http listener, once the kernel hands it over, is read at once
/// (its first request is usually there: no wait, no peek) and, finding nothing, waits for
/// its first request: closed without a word at `header_timeout` or, when shorter as here,
/// `keepalive_timeout`, not earlier and not never. With `defer_accept: false` the same wait
/// starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plain_client_is_closed_at_the_keepalive_timeout_after_the_hold() {
    let origin = OriginBuilder::new("app").run().await;
    let lim = "limits: {keepalive_timeout: 1s, header_timeout: 30s}";
    let p = Proxy::start(&on_and_off("http", lim, origin.addr));
    assert_eq!(
        first_200(p.addr_of(0), WAIT).await,
        Some(200),
        "{}",
        p.log()
    );
    assert_eq!(
        first_200(p.addr_of(1), WAIT).await,
        Some(200),
        "{}",
        p.log()
    );

    let ((on_out, on), (off_out, off)) =
        tokio::join!(silent_close(p.addr_of(0)), silent_close(p.addr_of(1)));
    for out in [on_out, off_out] {
        assert!(
            out.is_empty(),
            "a silent client was answered: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert!(
        on >= HELD + Duration::from_millis(900),
        "deferred: closed after {on:?}, inside the kernel's hold plus the 1 s keepalive_timeout:\n{}",
        p.log()
    );
    assert!(
        off >= Duration::from_millis(900) && off + Duration::from_millis(500) < on,
        "defer_accept: false closed after {off:?}: not at its 1 s keepalive_timeout, well before the deferred {on:?}:\n{}",
        p.log()
    );
    // and the listener still serves
    assert_eq!(
        first_200(p.addr_of(0), WAIT).await,
        Some(200),
        "{}",
        p.log()
    );
}

/// A new connection's first request is due within `header_timeout`, counted from when the
/// kernel hands the connection over, as nginx's `client_header_timeout` and HAProxy's
/// `timeout http-request` count a first request from the accept: a client that connects and
/// says nothing is closed in seconds, not at the keep-alive minute, so a flood of silent
/// connections holds slots for seconds. Between requests the wait is `keepalive_timeout`.
/// The same on an h2c listener, whose first bytes are peeked for the HTTP/2 preface, also
/// when they stop inside the preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_is_closed_at_the_header_timeout_an_idle_one_at_keepalive() {
    let origin = OriginBuilder::new("app").run().await;
    let lim = "limits: {keepalive_timeout: 30s, header_timeout: 1s}";
    let cfg = on_and_off("http", lim, origin.addr)
        .replace(
            "upstreams:",
            &format!("  - {{name: h2c, address: 127.0.0.1:{{{{port2}}}}, protocol: http, h2c: true, defer_accept: false, {lim}}}\nupstreams:"),
        )
        + "  - {listener: h2c, upstream: app}\n";
    let p = Proxy::start(&cfg);
    for i in 0..3 {
        assert_eq!(
            first_200(p.addr_of(i), WAIT).await,
            Some(200),
            "{}",
            p.log()
        );
    }
    // well short of the 30 s keepalive_timeout, and not before the 1 s header_timeout
    let soon = Duration::from_secs(8);
    let ((on_out, on), (off_out, off), (h2c_out, h2c)) = tokio::join!(
        silent_close(p.addr_of(0)),
        silent_close(p.addr_of(1)),
        silent_close(p.addr_of(2))
    );
    for out in [on_out, off_out, h2c_out] {
        assert!(
            out.is_empty(),
            "answered: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert!(
        on >= HELD + Duration::from_millis(900) && on < HELD + soon,
        "deferred: closed after {on:?}, not at the kernel's hold plus the 1 s header_timeout:\n{}",
        p.log()
    );
    assert!(
        off >= Duration::from_millis(900) && off < soon,
        "closed after {off:?}, not at the 1 s header_timeout:\n{}",
        p.log()
    );
    assert!(
        h2c >= Duration::from_millis(900) && h2c < soon,
        "h2c: closed after {h2c:?}, not at the 1 s header_timeout:\n{}",
        p.log()
    );

    // an h2c client that stops inside the preface
    let mut s = TcpStream::connect(p.addr_of(2)).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let t0 = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(15)).await;
    assert!(
        closed && t0.elapsed() < soon,
        "a client stopped inside the h2c preface was held {:?} (closed: {closed}):\n{}",
        t0.elapsed(),
        p.log()
    );

    // after a request, the connection waits for the next one for keepalive_timeout
    let mut c = Conn::connect(p.addr_of(1)).await.expect("connect");
    assert_eq!(c.get("/", &[]).await.expect("first").status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = c
        .get("/", &[])
        .await
        .expect("a keep-alive connection idle for 2.5 s");
    assert_eq!(r.status, 200);
}

/// The close of a silent client by `tls.handshake_timeout` (1 s), on an https listener with
/// the default and one with `defer_accept: false`. Deferred, the proxy sees the connection
/// only after the kernel's hold, so the close comes a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_defer_too() {
    let origin = OriginBuilder::new("app").run().await;
    let dir = scratch_dir("defer-tls");
    let ca = Ca::new("Stepstone Test CA");
    let (c, k) = ca.server("a.test", &["a.test"], 7).write(&dir, "a");
    let tls = format!(
        "tls: {{certificates: [{{cert: {}, key: {}}}], handshake_timeout: 1s}}",
        c.display(),
        k.display()
    );
    let cfg = on_and_off("https", &tls, origin.addr);
    let (text, ports) = crate::support::proxy::render(&cfg, &dir);
    let p = Proxy::start_in(dir, &text, ports, &[]).unwrap_or_else(|e| panic!("{e}"));

    let ((_, on), (_, off)) = tokio::join!(silent_close(p.addr_of(0)), silent_close(p.addr_of(1)));
    assert!(
        on >= HELD + Duration::from_millis(900),
        "deferred: closed after {on:?}, inside the kernel's hold plus the 1 s handshake timeout:\n{}",
        p.log()
    );
    assert!(
        off + Duration::from_millis(500) < on,
        "defer_accept: false closed after {off:?}, not well before the deferred {on:?}:\n{}",
        p.log()
    );
}

/// A backend that greets first (as SMTP or MySQL do), behind a `tcp` listener: with the
/// default the client reads the greeting without sending anything, before a listener with
/// `defer_accept: true` has even handed its connection over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_do_not_defer_by_default_so_a_greeting_backend_is_heard() {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let be = backend.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 ready\r\n").await;
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let cfg = format!(
        "listeners:\n  - {{name: plain, address: 127.0.0.1:{{{{port}}}}, protocol: tcp, upstream: be}}\n  - {{name: deferred, address: 127.0.0.1:{{{{port1}}}}, protocol: tcp, upstream: be, defer_accept: true}}\nupstreams:\n  - name: be\n    backends: [{{address: {be}}}]\n"
    );
    let p = Proxy::start(&cfg);

    let greeted_after = |addr: SocketAddr| async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a greeting in time")
            .expect("read");
        assert_eq!(&buf[..n], b"220 ready\r\n", "the greeting through {addr}");
        t0.elapsed()
    };
    let (plain, deferred) = tokio::join!(greeted_after(p.addr_of(0)), greeted_after(p.addr_of(1)));
    assert!(
        deferred >= HELD,
        "defer_accept: true on tcp: greeted after {deferred:?}, inside the kernel's hold"
    );
    assert!(
        plain < HELD,
        "the default tcp listener greeted after {plain:?}: held as if deferred"
    );
    assert!(
        plain < deferred,
        "the default tcp listener greeted after {plain:?}, not before the deferred one ({deferred:?})"
    );
}

/// Silent clients that the kernel hands over after its hold wait for their first request
/// as idle keep-alive connections do, holding no request buffer (4 KiB each when they
/// did); each is then served when it does send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_handed_over_after_the_hold_hold_no_request_buffer() {
    const N: usize = 800;
    let origin = OriginBuilder::new("app").run().await;
    let lim = "limits: {keepalive_timeout: 30s, header_timeout: 30s}";
    let p = Proxy::start(&on_and_off("http", lim, origin.addr));
    let on = p.addr_of(0);
    let pid = p.child.id();
    assert_eq!(first_200(on, WAIT).await, Some(200), "{}", p.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, fds0) = (
        crate::support::proxy::rss_kib(pid),
        crate::support::proxy::open_fds(pid),
    );

    let mut silent = Vec::with_capacity(N);
    for _ in 0..N {
        silent.push(TcpStream::connect(on).await.expect("connect"));
    }
    // all of them handed over (past the hold) and waiting in the proxy
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::support::proxy::open_fds(pid) < fds0 + N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds1 = crate::support::proxy::open_fds(pid);
    assert!(
        fds1 >= fds0 + N,
        "the proxy holds {} more descriptors, not the {N} silent clients':\n{}",
        fds1 - fds0.min(fds1),
        p.log()
    );
    // more would be a request buffer held while each waits
    crate::support::proxy::assert_rss_per_conn(pid, rss0, N, 2.5, "silent connections").await;

    // a late request on a silent connection is served as any other
    for s in silent.iter_mut().step_by(N / 4) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let (out, closed) = read_until_close(s, WAIT).await;
        assert!(closed, "no close after a Connection: close request");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "a late request on a silent connection: {text:?}\n{}",
            p.log()
        );
    }
}
