//! The HTTP/3 engine: QUIC (quinn) on the UDP side of an https listener with `http3: true`.
//!
//! One endpoint per listener, on the TCP listener's address and port, with the TCP side's
//! certificate store ([`tls`]) and the same [`Listener`] (routes, limits, policy). Each
//! request stream is served by [`request`], which forwards it to the backend as HTTP/1.1 on
//! the lean engine's exchange.
//!
//! Limits: the peer may open `quic.max_streams` request streams at once (QUIC flow control
//! holds the rest back); header sections over `quic.max_header_list_size` get 431 (the
//! limit is also announced in SETTINGS); a request's HEADERS frame is due within the
//! listener's `header_timeout` of its stream's opening (else the stream is dropped);
//! `quic.idle_timeout` and `quic.handshake_timeout`;
//! the listener's `max_connections`, counted over TCP and QUIC together, refuses new
//! connections (CONNECTION_REFUSED) and its
//! per-IP rate limit answers 429 per request. With more than `quic.retry_above` handshakes
//! in progress, a new client must first prove its address with a Retry round trip, so a
//! flood from spoofed sources costs one packet each.
//!
//! 0-RTT (`quic.early_data`): the connection is taken at once (0.5-RTT) and a watch says
//! when its handshake has ended; a stream accepted before then is early, and
//! [`crate::policy::early`] decides what it may do. A request accepted in the instant the
//! handshake ends, before the watch is updated, counts as early: the safe side.
//!
//! Cache: fresh hits are answered from the store ([`cache`]); every other request on a
//! cached route goes to the TCP side's general engine ([`general`], over [`session`]), whose
//! cache phases store misses, collapse concurrent ones and revalidate, as for TCP clients;
//! so does every request on a listener with `fast_path: false`.
//!
//! Reload: a reload that adds the listener starts its endpoint on the reload service's
//! runtime; one that removes it stops it as a shutdown does (GOAWAY, the drain below) and
//! takes its socket out of the fd table at once, so an upgrade during the drain does not
//! hand it over. A reload that changes the listener at the same address keeps the endpoint
//! (its connections live in its socket): the old side sends GOAWAY to its connections and
//! hands the endpoint to the new side, which gives it the new TLS and transport settings for
//! new handshakes; connections from before finish their streams and close.
//!
//! Upgrade (`-u`): the UDP socket goes through Pingora's fd table under `udp://ADDR`, so the
//! new process reads the same socket. When the old process is told to stop it sends GOAWAY
//! on each connection, finishes the streams it had accepted, and drops new handshakes it
//! still reads (the client's retransmission reaches the new process). Until the old process
//! exits both read from one socket, so a packet of an old connection may be read by the new
//! process: it does not know the connection, and its stateless reset carries a token made
//! with its own key, which the client ignores (RFC 9000 10.3.1). The packet counts as lost
//! and QUIC's loss recovery sends it again, so old streams finish, more slowly. Pingora
//! keeps accepting for 5 s after SIGQUIT, then stops and drops the service's runtime when
//! `grace_period_seconds` ends: that bounds the drain, and connections still open then get
//! CONNECTION_CLOSE rather than silence.

mod body;
mod general;
mod interim;
mod mtls;
mod pipe;
mod request;
mod session;
mod tls;

use crate::config::quic::QuicSpec;
use crate::http::Listener;
use crate::observability::quic as m;
use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The HTTP/3 side of one https listener.
pub struct H3Service {
    name: String,
    addr: SocketAddr,
    listener: Arc<Listener>,
    spec: QuicSpec,
    max_connections: Option<usize>,
    server: quinn::ServerConfig,
    pool_max: usize,
    /// How long streams in flight may take after the stop: Pingora's grace_period_seconds,
    /// at whose end it drops this service's runtime.
    grace: Duration,
    listener_open: Arc<AtomicUsize>,
    /// The TCP side's engines, which a reload swaps: each request takes the routing in force.
    engines: Option<crate::http::service::FastSwap>,
    general: Option<Arc<dyn crate::http::service::GeneralEngine>>,
    /// A reload's orders (removal, or hand the endpoint to a replacement).
    stop: Option<crate::net::control::Control<quinn::Endpoint>>,
}

/// Everything a connection task shares.
struct Shared {
    listener: Arc<Listener>,
    engines: Option<crate::http::service::FastSwap>,
    /// The TCP side's general engine (see [`general`]) and the service's shutdown watch.
    general: Option<(Arc<dyn crate::http::service::GeneralEngine>, ShutdownWatch)>,
    addr: SocketAddr,
    spec: QuicSpec,
    pool_max: usize,
    /// QUIC connections open, for the drain.
    open: AtomicUsize,
    /// The listener's connections open on either transport, for `max_connections`.
    listener_open: Arc<AtomicUsize>,
    handshaking: AtomicUsize,
}

impl H3Service {
    /// The HTTP/3 side of `spec`, on the certificate store of its TCP side. `pool_max`: idle backend connections per thread; `grace`: how long
    /// streams in flight may take after the stop.
    pub fn new(
        listener: Arc<Listener>,
        spec: &crate::config::ListenerSpec,
        quic: &QuicSpec,
        store: Option<Arc<crate::tls::store::CertStore>>,
        listener_open: Arc<AtomicUsize>,
        pool_max: usize,
        grace: Duration,
    ) -> Result<H3Service, String> {
        let Some(store) = store else {
            return Err(format!(
                "listeners {}: http3 without certificates",
                spec.name
            ));
        };
        let crypto = tls::server_config(store, quic.early_data)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| format!("listeners {}: QUIC TLS: {e}", spec.name))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(quic.max_streams.into());
        // the peer's control and QPACK streams, and a few it may open besides
        t.max_concurrent_uni_streams(8u32.into());
        let idle = quinn::IdleTimeout::try_from(quic.idle_timeout)
            .map_err(|e| format!("listeners {}: quic.idle_timeout: {e}", spec.name))?;
        t.max_idle_timeout(Some(idle));
        server.transport_config(Arc::new(t));
        m::declare(&spec.name);
        Ok(H3Service {
            name: spec.name.clone(),
            addr: spec.addr,
            listener,
            spec: quic.clone(),
            max_connections: spec.limits.max_connections,
            server,
            pool_max,
            grace,
            listener_open,
            engines: None,
            general: None,
            stop: None,
        })
    }

    /// Take each request's routing from the TCP side's engines, so a reload applies to
    /// HTTP/3 requests too.
    pub fn following(mut self, engines: crate::http::service::FastSwap) -> H3Service {
        self.engines = Some(engines);
        self
    }

    /// Serve requests on cached routes, other than fresh hits, on the TCP side's general
    /// engine, whose cache phases fill the store ([`general`]).
    pub fn with_general(mut self, engine: Arc<dyn crate::http::service::GeneralEngine>) -> Self {
        self.general = Some(engine);
        self
    }
}

impl Shared {
    /// The listener (routes, limits) in force now: the TCP side's, as the last reload left
    /// it; the one the service started with when that side has no lean engine.
    fn listener(&self) -> Arc<Listener> {
        self.engines
            .as_ref()
            .and_then(|e| e.load_full())
            .map(|f| f.listener_arc())
            .unwrap_or_else(|| self.listener.clone())
    }
}

/// The UDP socket: the old process's on an upgrade, else a new one, recorded for the next.
/// The fd-table key of the UDP socket on `addr`.
fn udp_key(addr: SocketAddr) -> String {
    format!("udp://{addr}")
}

fn socket(addr: SocketAddr, fds: Option<&ListenFds>) -> std::io::Result<std::net::UdpSocket> {
    let key = udp_key(addr);
    if let Some(fd) = fds.and_then(|f| f.lock().get(&key).copied()) {
        // SAFETY: the fd table holds sockets this process received from the old one (or
        // bound itself); each key is taken by exactly one service.
        return Ok(unsafe { std::net::UdpSocket::from_raw_fd(fd) });
    }
    let s = std::net::UdpSocket::bind(addr)?;
    if let Some(f) = fds {
        f.lock().add(key, s.as_raw_fd());
    }
    Ok(s)
}

#[async_trait]
impl Service for H3Service {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let endpoint = match socket(self.addr, fds.as_ref()).and_then(|s| self.endpoint(s)) {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: cannot listen on udp {}: {e}", self.name, self.addr);
                std::process::exit(1);
            }
        };
        let stop = self.stop.take();
        self.serve(endpoint, shutdown, stop, fds).await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Its UDP socket, so that Pingora closes the inherited sockets no service claims (see
    /// `PlainService`'s).
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![udp_key(self.addr)])
    }
}

impl H3Service {
    fn endpoint(&self, s: std::net::UdpSocket) -> std::io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(self.server.clone()),
            s,
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// A reload may remove this listener, or replace it and take its endpoint: `stop` says
    /// when.
    pub fn with_stop(mut self, stop: crate::net::control::Control<quinn::Endpoint>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Start serving now, on the runtime of the listeners reloads add: the UDP socket is bound
    /// here, so that an address in use fails the reload.
    pub fn spawn(self) -> Result<(), String> {
        self.start_later(None)
    }

    /// Serve on the endpoint of the listener this one replaces (same address): new
    /// handshakes get this listener's TLS and transport settings, connections already open
    /// keep theirs (their previous listener sent them GOAWAY).
    pub fn adopt(self, endpoint: quinn::Endpoint) -> Result<(), String> {
        endpoint.set_server_config(Some(self.server.clone()));
        self.start_later(Some(endpoint))
    }

    /// Serve `endpoint`, or a new one on a socket bound now, on the runtime of listeners
    /// that reloads start.
    fn start_later(mut self, endpoint: Option<quinn::Endpoint>) -> Result<(), String> {
        let Some((fds, rt, shutdown)) = crate::net::listen::later_runtime() else {
            return Err("the runtime for new listeners is not up yet".into());
        };
        let endpoint = match endpoint {
            Some(e) => e,
            None => {
                let _in = rt.enter();
                socket(self.addr, fds.as_ref())
                    .and_then(|s| self.endpoint(s))
                    .map_err(|e| format!("cannot listen on udp {}: {e}", self.addr))?
            }
        };
        let stop = self.stop.take();
        rt.spawn(async move { self.serve(endpoint, shutdown, stop, fds).await });
        Ok(())
    }

    /// Accept until shutdown or a reload removes the listener, then drain; or until a reload
    /// replaces it, then hand the endpoint over.
    async fn serve(
        &self,
        endpoint: quinn::Endpoint,
        mut shutdown: ShutdownWatch,
        mut stop: Option<crate::net::control::Control<quinn::Endpoint>>,
        fds: Option<ListenFds>,
    ) {
        log::info!("{}: HTTP/3 on udp {}", self.name, self.addr);
        let shared = Arc::new(Shared {
            listener: self.listener.clone(),
            engines: self.engines.clone(),
            general: self.general.clone().map(|g| (g, shutdown.clone())),
            addr: self.addr,
            spec: self.spec.clone(),
            pool_max: self.pool_max,
            open: AtomicUsize::new(0),
            listener_open: self.listener_open.clone(),
            handshaking: AtomicUsize::new(0),
        });
        let giver = stop.as_ref().map(|c| c.giver());
        let removed = async {
            match stop.as_mut() {
                Some(c) => c.ended().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(removed);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                c = shutdown.changed() => {
                    if c.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                how = &mut removed => {
                    if let (crate::net::control::Ended::HandOver, Some(to)) = (how, &giver) {
                        // Its connections get GOAWAY, finish their streams and close; their
                        // clients come back to the same endpoint, on the new settings.
                        log::info!("{}: replaced by a reload: its QUIC endpoint goes to the new listener", self.name);
                        let _ = stop_tx.send(true);
                        let _ = to.send(endpoint);
                        return;
                    }
                    log::info!("{}: removed by a reload", self.name);
                    // an upgrade during the drain must not hand the socket over
                    forget_socket(self.addr, fds.as_ref());
                    break;
                }
            };
            let Some(incoming) = incoming else { break };
            if self
                .max_connections
                .is_some_and(|n| shared.listener_open.load(Relaxed) >= n)
            {
                crate::observability::refused(&self.name, "max_connections");
                incoming.refuse();
                continue;
            }
            if shared.handshaking.load(Relaxed) >= self.spec.retry_above as usize
                && !incoming.remote_address_validated()
            {
                if incoming.retry().is_ok() {
                    m::RETRIES.with_label_values(&[&self.name]).inc();
                }
                continue;
            }
            let shared = shared.clone();
            let stop = stop_rx.clone();
            // Boxed where it is made: inline, the 9 KiB connection future would be copied
            // whole when tokio makes the task and again as it ends.
            tokio::spawn(crate::mem::pin_in_place(|| {
                connection(shared, incoming, stop)
            }));
        }
        // New handshakes are the new process's (or nobody's) now; GOAWAY to the rest.
        log::info!("{}: HTTP/3 stops accepting on udp {}", self.name, self.addr);
        let _ = stop_tx.send(true);
        endpoint.set_server_config(None);
        let drained = async {
            while shared.open.load(Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // Pingora drops this runtime when the grace period ends: close first, so clients
        // hear CONNECTION_CLOSE instead of waiting out their idle timeout.
        let window = self.grace.saturating_sub(CLOSE_MARGIN);
        if tokio::time::timeout(window, drained).await.is_err() {
            log::warn!(
                "{}: HTTP/3 connections still open after the grace period: closing them",
                self.name
            );
        }
        endpoint.close(H3_NO_ERROR.into(), b"shutting down");
        let _ = tokio::time::timeout(CLOSE_MARGIN, endpoint.wait_idle()).await;
    }
}

/// Take a removed listener's UDP socket out of the fd table without closing it (the endpoint
/// owns it until its drain ends): the table's entry is pointed at a duplicate, which the
/// table closes.
fn forget_socket(addr: SocketAddr, fds: Option<&ListenFds>) {
    let Some(fds) = fds else { return };
    let key = udp_key(addr);
    let Some(fd) = fds.lock().get(&key).copied() else {
        return;
    };
    // SAFETY: dup(2) of a descriptor this process holds open; the copy goes to the table.
    let copy = unsafe { libc::dup(fd) };
    if copy < 0 {
        log::warn!(
            "{key}: cannot take the socket out of the fd table: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    fds.lock().add(key.clone(), copy);
    crate::net::listen::close_in_table(fds, &key);
}

/// What of the grace period is kept for closing the connections still open at its end.
const CLOSE_MARGIN: Duration = Duration::from_millis(200);
/// How often a draining connection looks whether its last stream is done.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// HTTP/3's "no error" close code (RFC 9114 8.1).
const H3_NO_ERROR: u32 = 0x100;

/// Counts a stream in flight while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(n: Arc<AtomicUsize>) -> Busy {
        n.fetch_add(1, Relaxed);
        Busy(n)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Counts a connection open while it lives.
struct OpenSlot(Arc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.listener_open.fetch_sub(1, Relaxed);
        m::OPEN.with_label_values(&[&self.0.listener.name]).dec();
    }
}

async fn connection(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let name = shared.listener.name.clone();
    let peer = incoming.remote_address();
    let client = peer.ip();
    shared.open.fetch_add(1, Relaxed);
    shared.listener_open.fetch_add(1, Relaxed);
    m::OPEN.with_label_values(&[&name]).inc();
    let _slot = OpenSlot(shared.clone());
    shared.handshaking.fetch_add(1, Relaxed);
    let early_data = shared.spec.early_data;
    let hs = async {
        let connecting = incoming.accept()?;
        if early_data {
            // 0.5-RTT on the server side: the connection is usable at once, and 0-RTT
            // requests are read before the handshake ends
            return match connecting.into_0rtt() {
                Ok((c, done)) => Ok((c, Some(done))),
                // (never, says quinn, on an incoming connection)
                Err(connecting) => connecting.await.map(|c| (c, None)),
            };
        }
        connecting.await.map(|c| (c, None))
    };
    let r = tokio::time::timeout(shared.spec.handshake_timeout, hs).await;
    let (conn, established) = match r {
        Ok(Ok((c, None))) => {
            shared.handshaking.fetch_sub(1, Relaxed);
            (c, None)
        }
        Ok(Ok((c, Some(done)))) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            let (shared, c2, name) = (shared.clone(), c.clone(), name.clone());
            tokio::spawn(async move {
                // quinn's value is meaningless on a server: the handshake ended when the
                // future does, and failed if the connection is closed by then
                let ok = tokio::time::timeout(shared.spec.handshake_timeout, done)
                    .await
                    .is_ok_and(|_| c2.close_reason().is_none());
                shared.handshaking.fetch_sub(1, Relaxed);
                if !ok {
                    m::HANDSHAKES.with_label_values(&[&name, "failed"]).inc();
                    c2.close(H3_NO_ERROR.into(), b"");
                }
                let _ = tx.send(Some(ok));
            });
            (c, Some(rx))
        }
        Ok(Err(e)) => {
            shared.handshaking.fetch_sub(1, Relaxed);
            m::HANDSHAKES.with_label_values(&[&name, "failed"]).inc();
            log::debug!("{name}: QUIC handshake with {client} failed: {e}");
            return;
        }
        Err(_) => {
            shared.handshaking.fetch_sub(1, Relaxed);
            m::HANDSHAKES.with_label_values(&[&name, "timeout"]).inc();
            return;
        }
    };
    m::HANDSHAKES.with_label_values(&[&name, "ok"]).inc();
    m::CONNECTIONS.with_label_values(&[&name]).inc();
    let quic = conn.clone();
    let handoff = shared.general.as_ref().map(|(engine, shutdown)| {
        Arc::new(general::Handoff {
            engine: engine.clone(),
            shutdown: shutdown.clone(),
            client: peer,
            server: shared.addr,
        })
    });
    let built = ::h3::server::builder()
        .max_field_section_size(shared.spec.max_header_list_size)
        .build::<_, bytes::Bytes>(h3_quinn::Connection::new(conn))
        .await;
    if let Ok(mut h3c) = built {
        // streams of this connection still being served, for the drain
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut stopping = *stop.borrow();
        if stopping {
            let _ = h3c.shutdown(0).await;
        }
        loop {
            let next = tokio::select! {
                r = h3c.accept() => r,
                c = stop.changed(), if !stopping => {
                    stopping = true;
                    if c.is_ok() {
                        // GOAWAY: streams accepted so far finish, no new ones
                        let _ = h3c.shutdown(0).await;
                    }
                    continue;
                }
                _ = tokio::time::sleep(DRAIN_POLL), if stopping => {
                    if inflight.load(Relaxed) == 0 {
                        // every stream taken before the GOAWAY is done: close now rather
                        // than wait for the client's idle timeout
                        quic.close(H3_NO_ERROR.into(), b"");
                        break;
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(resolver)) => {
                    m::STREAMS.with_label_values(&[&name]).inc();
                    let shared = shared.clone();
                    let busy = Busy::new(inflight.clone());
                    let conn = quic.clone();
                    // read before the handshake ended: 0-RTT (policy::early decides)
                    let early = established
                        .as_ref()
                        .filter(|w| w.borrow().is_none())
                        .cloned();
                    let handoff = handoff.clone();
                    tokio::spawn(async move {
                        let _busy = busy;
                        // A stream opened with no HEADERS frame, or a part of one: QUIC's idle
                        // timeout never ends it while the client's packets keep coming, so
                        // the head is due within header_timeout, as over TCP. Dropping the
                        // resolver drops the stream (quinn stops its receiving side).
                        let l = shared.listener();
                        let wait = l.header_timeout;
                        let head = tokio::time::timeout(wait, resolver.resolve_request()).await;
                        let Ok(head) = head else {
                            log::info!(
                                "{}: HTTP/3 stream of {client} sent no complete head within {wait:?} (header_timeout); dropping it",
                                l.name
                            );
                            crate::observability::refused(&l.name, "408");
                            return;
                        };
                        match head {
                            Ok((req, stream)) => {
                                let g = handoff.as_deref();
                                let c = Some(client);
                                let conn = request::Conn { quic: &conn, early };
                                // Made in its own box (15 KiB, most of it the upstream
                                // exchange): inline, it made this task 17 KiB, which tokio
                                // copies whole when it makes the task and when it ends.
                                crate::mem::pin_in_place(|| {
                                    request::serve(&l, shared.pool_max, c, g, req, stream, conn)
                                })
                                .await
                            }
                            Err(::h3::error::StreamError::HeaderTooBig { .. }) => {
                                crate::observability::refused(&shared.listener.name, "431")
                            }
                            Err(_) => {}
                        }
                    });
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
    }
    // wait for the close to settle so the loss counts are final
    let stats = quic.stats();
    m::PACKETS_LOST
        .with_label_values(&[&name])
        .inc_by(stats.path.lost_packets);
    m::BYTES_RETRANSMITTED
        .with_label_values(&[&name])
        .inc_by(stats.path.lost_bytes);
    m::PACKETS_SENT
        .with_label_values(&[&name])
        .inc_by(stats.udp_tx.datagrams);
}
