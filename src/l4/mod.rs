//! L4 load balancing: `tcp` listeners (optionally TLS-terminating) and `tls_passthrough`
//! listeners that route on the ClientHello's SNI without decrypting.
//!
//! Each listener is a Pingora `ServerApp` ([`L4App`]); Pingora owns accepting, the TLS
//! handshake when the listener terminates TLS, and graceful shutdown of the accept loop.
//! Backends come from the same [`Pool`]s as HTTP: the [`Pick`](crate::upstream::Pick) guard
//! is held for the whole connection, so `least_connections` counts open connections, health
//! checks eject backends for new connections, and connect failures are retried on another
//! backend through the `tried` mask.
//!
//! A connection goes: admit (max_connections) → PROXY header if the listener accepts one →
//! pick the pool (tls_passthrough: read the ClientHello, bounded in size and time, and parse
//! its SNI; the bytes read are replayed to the backend) → connect with retries → optional
//! PROXY header to the backend → relay both ways ([`crate::net::relay`], buffers that grow),
//! which passes a half-close on (EOF on one side shuts down writing on the other) and ends
//! when both directions are done, or with `half_close: false` at the first side's close. An
//! idle watchdog closes the connection when no bytes moved for `idle_timeout`; once shutdown
//! begins, connections that go quiet for a second are closed too, so a drain does not wait
//! on idle clients, while active transfers continue.

pub mod accept;
pub mod proxy_protocol;
pub mod sni;

use crate::config::file::{ListenerProtocol, ProxyProtocolFile};
use crate::config::{HostMatch, ListenerSpec, CLIENT_HELLO_MAX, CLIENT_HELLO_TIMEOUT};
use crate::net::connect;
use crate::net::listen::peer_addr;
use crate::net::splice::{splice, Client, Ends, Splice};
use crate::tls::store::CertStore;
use crate::upstream::{bit, Pick, Pool};
use accept::{local_of, ProxyAccept};
use async_trait::async_trait;
use log::{debug, warn};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

enum Target {
    Tcp(Arc<Pool>),
    Passthrough {
        routes: Vec<(HostMatch, Arc<Pool>)>,
        default: Option<Arc<Pool>>,
    },
}

pub struct L4App {
    name: String,
    target: Target,
    max_connections: Option<usize>,
    open: AtomicUsize,
    idle_timeout: Duration,
    half_close: bool,
    /// Relay a plain client socket with splice(2).
    splice: bool,
    accept: Option<ProxyAccept>,
    /// The PROXY header is read by the pre-TLS hook instead of here.
    tls_terminated: bool,
    /// This listener's series, resolved once: a label lookup per connection costs a hash and
    /// a lock in the registry.
    m: &'static crate::observability::L4Counts,
}

/// One admitted connection; dropping it frees the slot.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl L4App {
    /// `pools` is indexed like `Config::upstreams`.
    pub fn new(l: &ListenerSpec, pools: &[Arc<Pool>], tls_terminated: bool) -> Option<L4App> {
        let spec = l.l4.as_ref()?;
        let target = match l.protocol {
            ListenerProtocol::TlsPassthrough => Target::Passthrough {
                routes: spec
                    .sni_routes
                    .iter()
                    .filter_map(|(h, i)| Some((h.clone(), pools.get(*i)?.clone())))
                    .collect(),
                default: spec.default_upstream.and_then(|i| pools.get(i).cloned()),
            },
            _ => Target::Tcp(pools.get(spec.upstream?)?.clone()),
        };
        Some(L4App {
            name: l.name.clone(),
            target,
            max_connections: spec.max_connections,
            open: AtomicUsize::new(0),
            idle_timeout: spec.idle_timeout,
            half_close: spec.half_close,
            splice: l.splice,
            accept: l
                .proxy_protocol
                .as_ref()
                .map(|t| ProxyAccept::new(&l.name, t)),
            tls_terminated,
            m: crate::observability::L4Counts::of(&l.name),
        })
    }

    /// The PROXY-accepting part, for the pre-TLS hook of a TLS-terminating listener.
    pub fn pre_tls(l: &ListenerSpec) -> Option<Arc<ProxyAccept>> {
        l.proxy_protocol
            .as_ref()
            .map(|t| Arc::new(ProxyAccept::new(&l.name, t)))
    }

    fn admit(&self) -> Option<Admitted<'_>> {
        let n = self.open.fetch_add(1, Relaxed);
        let guard = Admitted(&self.open);
        match self.max_connections {
            Some(max) if n >= max => None,
            _ => Some(guard),
        }
    }

    async fn serve(&self, mut io: Stream) -> Result<(), String> {
        let real_peer = peer_addr(io.as_ref());
        let mut proxied_dst = None;
        if let (Some(acc), false) = (&self.accept, self.tls_terminated) {
            let (s, p) = acc.apply_stream(io).await?;
            io = s;
            proxied_dst = p.map(|p| p.dst);
        }
        let client = peer_addr(io.as_ref())
            .or(real_peer)
            .ok_or("connection without a peer address")?;

        let (pool, hello) = match &self.target {
            Target::Tcp(pool) => (pool.clone(), Vec::new()),
            Target::Passthrough { routes, default } => {
                let (hello, name) = read_client_hello(&mut io)
                    .await
                    .map_err(|e| format!("{client}: {e}"))?;
                let pool = name
                    .as_deref()
                    .and_then(|n| routes.iter().find(|(h, _)| h.matches(n)))
                    .map(|(_, p)| p.clone())
                    .or_else(|| default.clone())
                    .ok_or_else(|| {
                        format!(
                            "{client}: no sni_routes entry for {:?} and no default_upstream",
                            name.as_deref().unwrap_or("(no SNI)")
                        )
                    })?;
                (pool, hello)
            }
        };

        // A plain client's socket is registered before the connect's wait rather than after
        // a first read that, under load, often finds nothing yet (0.37-0.75 `recv` per
        // connection): it is registered for the relay's waits anyway. With `splice`, the
        // same socket is relayed with splice(2) below.
        let plain = io.as_any().downcast_ref::<crate::net::listen::PlainTcp>();
        if let Some(socket) = plain {
            socket
                .register_unless_likely_data()
                .map_err(|e| format!("{client}: registering the connection: {e}"))?;
        }
        let (pick, mut backend) = connect(&self.name, &pool, client).await?;
        let mut first = Vec::new();
        if let Some(v) = pool.spec.send_proxy_protocol {
            // the local address is looked up (a system call) only for this header
            let dst = proxied_dst
                .or_else(|| local_of(io.as_ref()))
                .unwrap_or(pick.slot.addr);
            first = match v {
                ProxyProtocolFile::V1 => proxy_protocol::encode_v1(client, dst),
                ProxyProtocolFile::V2 => proxy_protocol::encode_v2(client, dst),
            };
        }
        first.extend_from_slice(&hello);
        if !first.is_empty() {
            backend
                .write_all(&first)
                .await
                .map_err(|e| format!("{client}: write to backend {}: {e}", pick.slot.label))?;
        }

        // for the log line only: the coarse clock's step is precision enough
        let started = crate::clock::coarse_ms();
        let ends = Ends {
            half_close: self.half_close,
            // the TLS writer owes a close_notify, which only its shutdown sends
            client_closes: !self.tls_terminated,
        };
        // With `splice`, a plain client socket (our accept loop's, nothing buffered ahead of
        // it) is relayed with splice(2); a TLS or PROXY-header stream through the buffers.
        let side = match plain.filter(|_| self.splice) {
            Some(socket) => Client::Socket(socket),
            None => Client::over_socket(io.as_mut()),
        };
        let outcome = splice(side, &mut backend, self.idle_timeout, ends).await;
        let label = &pick.slot.label;
        match outcome {
            Splice::Done(up, down) => {
                self.m.relayed(up, down);
                debug!(
                    "{}: {client} -> {label} closed after {:?}, {up} bytes up, {down} down",
                    self.name,
                    Duration::from_millis(crate::clock::coarse_ms().saturating_sub(started))
                )
            }
            Splice::Idle => debug!(
                "{}: {client} -> {label} closed after {:?} idle",
                self.name, self.idle_timeout
            ),
            Splice::Drained => debug!("{}: {client} -> {label} closed for shutdown", self.name),
            Splice::Failed(e) => debug!("{}: {client} -> {label} ended: {e}", self.name),
        }
        drop(pick);
        Ok(())
    }
}

impl crate::net::listen::ConnApp for L4App {}

#[async_trait]
impl ServerApp for L4App {
    async fn process_new(self: &Arc<Self>, io: Stream, _: &ShutdownWatch) -> Option<Stream> {
        let _open = crate::lifecycle::open_connection();
        crate::net::serving_thread();
        let Some(_slot) = self.admit() else {
            warn!(
                "{}: max_connections ({}) reached; closing a new connection from {}",
                self.name,
                self.max_connections.unwrap_or(0),
                peer_addr(io.as_ref())
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            );
            return None;
        };
        self.m.opened();
        if let Err(e) = self.serve(io).await {
            warn!("{}: {e}", self.name);
        }
        self.m.closed();
        None
    }
}

/// Start the accept loop of a tcp or tls_passthrough listener on `pools` (`start`: at start
/// or by a reload); `stop` ends it (a reload that removes it). A TLS-terminating listener's
/// certificate store is returned, for the reload to forget when it removes the listener.
pub fn start(
    l: &ListenerSpec,
    pools: &[Arc<Pool>],
    start: &mut crate::net::listen::Start<'_>,
    stop: crate::net::control::Control,
) -> Result<Option<Arc<CertStore>>, String> {
    let (app, name) = (app(l, pools)?, format!("l4 {}", l.name));
    let listen = |e: std::io::Error| format!("cannot listen on {}: {e}", l.addr);
    let Some(t) = &l.tls else {
        // Plaintext: our accept loop (a small task per connection, no L4 buffers: the splice
        // has its own); see `crate::net::listen`.
        let lean = l.proxy_protocol.is_none();
        start
            .accept(name, l.addr, app, lean, l.defer_accept, stop)
            .map_err(listen)?;
        return Ok(None);
    };
    // TLS-terminated TCP: the same certificate handling (SNI, reload) and accept loop as
    // https listeners.
    let tls = crate::tls::listener_tls(t, crate::tls::Alpn::None)?;
    let store = tls.store.clone();
    let pre = accept::pre_tls(l);
    let lean = pre.is_none();
    let app = crate::net::tls::TlsConn::new(&name, app, tls, pre);
    if let Err(e) = start.accept(name, l.addr, app, lean, l.defer_accept, stop) {
        crate::tls::forget(&store);
        return Err(listen(e));
    }
    Ok(Some(store))
}

fn app(l: &ListenerSpec, pools: &[Arc<Pool>]) -> Result<L4App, String> {
    L4App::new(l, pools, l.tls.is_some())
        .ok_or_else(|| format!("listener {:?}: incomplete L4 settings", l.name))
}

/// Connect to a backend of `pool`, trying others on failure as `retries` allows.
async fn connect(
    listener: &str,
    pool: &Pool,
    client: SocketAddr,
) -> Result<(Pick, TcpStream), String> {
    // consistent_hash at L4 can only key on the client address (the policy's key for it).
    let hash = crate::policy::hash::client_ip(Some(client.ip()));
    let mut tried = 0u64;
    let mut attempts = 0u32;
    let started = std::time::Instant::now();
    crate::policy::retry::begin(pool);
    loop {
        let pick = match pool.select_queued(hash, tried).await {
            Ok(p) => p,
            Err(no) => {
                return Err(format!(
                    "{client}: upstream {}: no backend ({no:?})",
                    pool.name
                ))
            }
        };
        attempts += 1;
        let (addr, label) = (pick.slot.addr, &pick.slot.label);
        let err = match connect::backend(listener, label, addr, pool.connect_timeout, || None).await
        {
            Ok((s, _)) => {
                crate::policy::outlier::observe(pool, &pick.slot, false);
                return Ok((pick, s));
            }
            // not the backend's doing: it is neither blamed nor skipped
            Err(e @ connect::Error::Shortage(_)) => {
                return Err(format!("{client}: upstream {}: {e}", pool.name));
            }
            Err(connect::Error::Failed(e)) => e.to_string(),
            Err(connect::Error::TimedOut) => {
                format!("timed out after {:?}", pool.connect_timeout)
            }
        };
        pick.slot.failures.fetch_add(1, Relaxed);
        crate::policy::outlier::observe(pool, &pick.slot, true);
        warn!(
            "{listener}: connect to backend {} failed (attempt {attempts}): {err}",
            pick.slot.label
        );
        tried |= bit(pick.slot.index);
        // a connection has no method; only a connect failure is ever retried at L4
        let failed = crate::policy::retry::Try {
            method: "",
            cause: crate::policy::retry::Cause::ConnectFailure,
            attempts,
            body_replayable: true,
            response_started: false,
            started,
        };
        if !crate::policy::retry::retry(pool, failed) {
            return Err(format!(
                "{client}: upstream {}: giving up after {attempts} connect attempts",
                pool.name
            ));
        }
    }
}

/// Read until a whole ClientHello is in, within the size and time bounds. Returns the bytes
/// read (to replay to the backend) and the SNI.
async fn read_client_hello(io: &mut Stream) -> Result<(Vec<u8>, Option<String>), String> {
    let mut buf = Vec::with_capacity(2048);
    // Read into `buf` itself: a chunk array on the stack here would be part of every L4
    // connection's future (and of the copy that boxes it), SNI routing or not.
    let read = async {
        loop {
            match sni::parse_client_hello(&buf) {
                Ok(sni::Hello::Done(name)) => return Ok(name),
                Ok(sni::Hello::Incomplete) => {}
                Err(e) => return Err(format!("malformed ClientHello: {e}")),
            }
            let room = CLIENT_HELLO_MAX.saturating_sub(buf.len()).min(4096);
            if room == 0 {
                return Err(format!("ClientHello larger than {CLIENT_HELLO_MAX} bytes"));
            }
            let at = buf.len();
            buf.resize(at + room, 0);
            let read = io.read(&mut buf[at..]).await;
            buf.truncate(at + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err("closed before the ClientHello was complete".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the ClientHello: {e}")),
            }
        }
    };
    let name = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read)
        .await
        .map_err(|_| format!("no complete ClientHello within {CLIENT_HELLO_TIMEOUT:?}"))??;
    Ok((buf, name))
}
