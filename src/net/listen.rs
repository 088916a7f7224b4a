//! The accept loop of plaintext listeners (HTTP and TCP).
//!
//! Pingora's listening service spawns one task per connection whose future is sized for a
//! TLS handshake under a timeout (about 2.5 KB, measured with heaptrack), and gives every
//! plaintext stream a 1.4 KB write buffer. Both stay allocated for as long as a keep-alive
//! connection lives, idle or not: together they were most of the ~7 KB each idle connection
//! cost. Plaintext listeners accept here instead, with a task that holds only the app's
//! connection future, and streams with no L4 buffers (the fast path writes each response in
//! one buffer; the guard coalesces Pingora's writes, see [`super::guard`]).
//!
//! The listening socket goes through Pingora's fd table like Pingora's own listeners, under
//! the same key (the address as written), so graceful upgrades hand it over either way.
//! TLS listeners keep Pingora's service: their handshake needs it.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

/// Pingora's listen backlog, kept.
const BACKLOG: u32 = 65535;

pub struct PlainService<A> {
    name: String,
    addr: SocketAddr,
    app: Arc<A>,
    /// Connections as [`PlainTcp`]; off when the app needs Pingora's L4 stream (a PROXY
    /// header is read into its rewind buffer).
    lean: bool,
    /// Raised when a reload removes the listener.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Keep accepting after a stop (SIGTERM) until the process exits; see [`Self::through_drain`].
    through_drain: bool,
}

impl<A> PlainService<A> {
    /// Keeps this listener accepting through a stop's drain (not an upgrade, which hands the
    /// socket over): the admin listener, whose `/healthz` must answer 503 rather than refuse.
    pub fn through_drain(mut self) -> Self {
        self.through_drain = true;
        self
    }

    pub fn new(name: String, addr: SocketAddr, app: A, lean: bool) -> Self {
        PlainService {
            name,
            addr,
            app: Arc::new(app),
            lean,
            stop: None,
            through_drain: false,
        }
    }

    /// Stop accepting when `stop` turns true.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

/// A plaintext connection as Pingora's `IO`, without its L4 stream (375 bytes of buffers
/// and bookkeeping per connection). The socket digest, which Pingora's path reads for the
/// client address, is made on first use.
#[derive(Debug)]
pub struct PlainTcp {
    tcp: tokio::net::TcpStream,
    /// From accept(): no getpeername per connection.
    peer: SocketAddr,
    digest: std::sync::OnceLock<Arc<SocketDigest>>,
}

impl PlainTcp {
    pub fn new(tcp: tokio::net::TcpStream, peer: SocketAddr) -> PlainTcp {
        PlainTcp {
            tcp,
            peer,
            digest: std::sync::OnceLock::new(),
        }
    }

    /// Ready when the socket has something to read (or is closed), reading nothing: an idle
    /// keep-alive connection waits here without a buffer, on the socket's own reader slot
    /// (the waiting future keeps no waiter of its own).
    pub fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.tcp.poll_read_ready(cx)
    }
}

/// The client address of a connection, without making a digest for a [`PlainTcp`].
pub fn peer_ip(io: &pingora_core::protocols::Stream) -> Option<std::net::IpAddr> {
    if let Some(p) = io.as_any().downcast_ref::<PlainTcp>() {
        if p.digest.get().is_none() {
            return Some(p.peer.ip());
        }
    }
    io.get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

impl tokio::io::AsyncRead for PlainTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PlainTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[async_trait]
impl pingora_core::protocols::Shutdown for PlainTcp {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl pingora_core::protocols::UniqueID for PlainTcp {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl pingora_core::protocols::Ssl for PlainTcp {}

/// Peeking lets an `h2c: true` listener tell the HTTP/2 preface from an HTTP/1 request
/// without consuming either.
#[async_trait]
impl pingora_core::protocols::Peek for PlainTcp {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        loop {
            let n = self.tcp.peek(buf).await?;
            if n == 0 || n >= buf.len() {
                return Ok(n > 0);
            }
            // A short peek: wait for the rest only while what came could still be it.
            if buf[..n] != super::H2_PREFACE[..n.min(24)] {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl pingora_core::protocols::GetTimingDigest for PlainTcp {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        Vec::new()
    }
}

impl pingora_core::protocols::GetProxyDigest for PlainTcp {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PlainTcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(
            self.digest
                .get_or_init(|| {
                    let d = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
                    let _ = d.peer_addr.set(Some(PSocketAddr::Inet(self.peer)));
                    Arc::new(d)
                })
                .clone(),
        )
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.digest = std::sync::OnceLock::from(Arc::new(d));
    }
}

/// Register a plaintext connection's socket with the reactor of the thread running it.
///
/// An accepted socket is registered with the accept loop's reactor. Without work stealing a
/// connection's task runs on a thread picked at random, and each readiness event of its
/// socket was then seen by the accept loop's thread and handed over to the task's: two
/// threads woken per event, and one reactor doing every connection's I/O polling, which is
/// what stops such a process from scaling with its threads. Two `epoll_ctl` calls once per
/// connection move it. `None`: the socket could not be moved (the connection is closed).
fn rehome(s: pingora_core::protocols::Stream) -> Option<pingora_core::protocols::Stream> {
    if !s.as_any().is::<PlainTcp>() {
        return Some(s);
    }
    let p = s.into_any().downcast::<PlainTcp>().ok()?;
    let tcp = tokio::net::TcpStream::from_std(p.tcp.into_std().ok()?).ok()?;
    Some(Box::new(PlainTcp {
        tcp,
        peer: p.peer,
        digest: p.digest,
    }))
}

/// A connection's task: one boxed future for its whole life. Its output is dropped (a stream
/// handed back after the task is done has no one to take it).
pub type ConnFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<pingora_core::protocols::Stream>> + Send + 'static>,
>;

/// An accepted connection, not yet moved to the reactor of the thread that runs it.
pub struct Accepted {
    s: pingora_core::protocols::Stream,
    /// The accept loop's thread, when threads are separate runtimes.
    home: Option<std::thread::ThreadId>,
}

impl Accepted {
    /// `home`: the thread whose reactor the socket is registered with, if threads are
    /// separate runtimes.
    pub fn new(s: pingora_core::protocols::Stream, home: Option<std::thread::ThreadId>) -> Self {
        Accepted { s, home }
    }

    /// The stream, registered with this thread's reactor (see [`rehome`]); `None`: closed.
    pub fn settle(self) -> Option<pingora_core::protocols::Stream> {
        match self.home.filter(|&a| a != std::thread::current().id()) {
            Some(_) => rehome(self.s),
            None => Some(self.s),
        }
    }
}

/// An app the accept loop runs connections of.
///
/// The task is spawned with the future [`Self::connection`] returns, a box, and nothing
/// else: tokio's task cell (aligned to 128 bytes) holds the future inline, and one that owns
/// the app, the shutdown watch and the app's own boxed future made the cell 256 bytes
/// instead of 128, for as long as the connection lived.
pub trait ConnApp: ServerApp + Send + Sync + Sized + 'static {
    /// The whole life of a connection: Pingora's `process_new`, again for as long as it
    /// hands the stream back for reuse.
    fn connection(self: Arc<Self>, a: Accepted, shutdown: ShutdownWatch) -> ConnFuture {
        Box::pin(async move {
            if let Some(s) = a.settle() {
                serve_reused(&self, s, &shutdown).await;
            }
            None
        })
    }

    /// Whether connections start with delayed ACKs ([`super::sockopt`]): for HTTP, where
    /// the guard acknowledges a request that arrives in pieces at once.
    fn delays_acks(&self) -> bool {
        false
    }
}

/// Pingora's `process_new` on `s`, and on the stream it hands back, until it keeps it.
pub async fn serve_reused<A: ServerApp>(
    app: &Arc<A>,
    s: pingora_core::protocols::Stream,
    shutdown: &ShutdownWatch,
) {
    let mut next = app.process_new(s, shutdown).await;
    while let Some(s) = next {
        next = app.process_new(s, shutdown).await;
    }
}

/// The listening socket: the one handed over by the old process on an upgrade, else a new
/// one, recorded in the fd table for the next upgrade.
async fn listener(
    addr: SocketAddr,
    fds: Option<ListenFds>,
) -> std::io::Result<tokio::net::TcpListener> {
    let key = addr.to_string();
    if let Some(fd) = fds.as_ref().and_then(|f| f.lock().get(&key).copied()) {
        // SAFETY: the fd table holds listening sockets this process received from the old
        // one (or bound itself); each address is taken by exactly one service.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(l);
    }
    let mut tries = 0;
    let l = loop {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr) {
            Ok(()) => break sock.listen(BACKLOG)?,
            // as Pingora does: the address may be released a moment later
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 5 => {
                tries += 1;
                log::warn!("{addr} is in use, will try again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(f) = &fds {
        f.lock().add(key, l.as_raw_fd());
    }
    Ok(l)
}

#[async_trait]
impl<A> Service for PlainService<A>
where
    A: ConnApp,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let l = match listener(self.addr, fds.clone()).await {
            Ok(l) => l,
            Err(e) => {
                // Pingora's listeners panic here too: a server that cannot listen must not run.
                log::error!("{}: cannot listen on {}: {e}", self.name, self.addr);
                std::process::exit(1);
            }
        };
        log::info!("{}: listening on {}", self.name, self.addr);
        let stop = self.stop.take();
        let app = self.app.clone();
        accept_loop(
            &self.name,
            self.addr,
            l,
            app,
            (self.lean, self.through_drain),
            shutdown,
            stop,
            fds,
        )
        .await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Accept until shutdown, or until `stop` (a reload removed the listener). After shutdown the
/// app's cleanup runs (the keep-alive drain of the whole process); after a stop the socket is
/// closed and taken out of the fd table, and the connections finish on their own.
#[allow(clippy::too_many_arguments)]
async fn accept_loop<A>(
    name: &str,
    addr: SocketAddr,
    l: tokio::net::TcpListener,
    app: Arc<A>,
    (lean, through_drain): (bool, bool),
    mut shutdown: ShutdownWatch,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
    fds: Option<ListenFds>,
) where
    A: ConnApp,
{
    let removed = async {
        match stop.as_mut() {
            // a dropped sender is no removal
            Some(s) => {
                if s.wait_for(|v| *v).await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(removed);
    // Threads without work stealing are each their own runtime, with its own reactor; a
    // connection spawned on another thread than this accept loop's moves its socket to that
    // thread's reactor (see `rehome`).
    let per_thread = (tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread)
        .then(|| std::thread::current().id());
    let mut stopping = false;
    let inherited = super::sockopt::nodelay_for_all(&l);
    if app.delays_acks() && !super::sockopt::delay_acks_for_all(&l) {
        log::debug!("{name}: delayed ACKs not set on {addr}");
    }
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            c = shutdown.changed(), if !stopping => {
                if c.is_err() || *shutdown.borrow() {
                    // the admin listener answers through a drain (its /healthz says 503),
                    // but not after an upgrade took its socket
                    if through_drain && !crate::lifecycle::upgrading() {
                        stopping = true;
                        continue;
                    }
                    break;
                }
                continue;
            }
            _ = &mut removed => {
                log::info!("{name}: removed by a reload: stopped accepting on {addr}");
                forget_socket(addr, l, fds);
                return;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::error!("{name}: accept() failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !inherited {
            let _ = tcp.set_nodelay(true);
        }
        // Made here, not in the task: a task keeps room for what it captured for as long as
        // the connection lives, and the boxed stream is a quarter of the socket and address.
        let s: pingora_core::protocols::Stream = if lean {
            Box::new(PlainTcp::new(tcp, peer))
        } else {
            let fd = tcp.as_raw_fd();
            let mut s = pingora_core::protocols::l4::stream::Stream::from(tcp);
            s.set_socket_digest(SocketDigest::from_raw_fd(fd));
            Box::new(s)
        };
        let a = Accepted::new(s, per_thread);
        pingora_runtime::current_handle().spawn(app.clone().connection(a, shutdown.clone()));
    }
    log::info!("{name}: stopped accepting on {addr}");
    drop(l);
    app.cleanup().await;
}

/// Close a removed listener's socket and take it out of the fd table, so an upgrade does not
/// hand over a closed (or reused) descriptor.
fn forget_socket(addr: SocketAddr, l: tokio::net::TcpListener, fds: Option<ListenFds>) {
    use std::os::fd::IntoRawFd;
    let Some(fds) = fds else {
        drop(l);
        return;
    };
    let key = addr.to_string();
    let mut table = fds.lock();
    let keep: std::collections::HashSet<String> = table
        .serialize()
        .0
        .into_iter()
        .filter(|k| *k != key)
        .collect();
    match l.into_std() {
        // the table closes it: ownership of the descriptor goes there
        Ok(std_l) if table.get(&key).is_some() => {
            let _ = std_l.into_raw_fd();
            table.close_unclaimed(&keep);
        }
        Ok(std_l) => drop(std_l),
        Err(e) => log::warn!("{addr}: cannot take the socket back from the runtime: {e}"),
    }
}

/// The fd table and the runtime that dynamic listeners use: set by the reload service when it
/// starts ([`adopt_runtime`]).
static DYNAMIC: once_cell::sync::OnceCell<(Option<ListenFds>, tokio::runtime::Handle)> =
    once_cell::sync::OnceCell::new();

/// Record the fd table and the current runtime, on which [`spawn`] starts listeners later.
pub fn adopt_runtime(fds: Option<ListenFds>) {
    let _ = DYNAMIC.set((fds, tokio::runtime::Handle::current()));
}

/// Bind `addr` now (the error, if any, is the caller's to report) and accept on it with
/// `app` until `stop` or shutdown, on the runtime of [`adopt_runtime`].
pub fn spawn<A>(
    name: String,
    addr: SocketAddr,
    app: A,
    lean: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    A: ConnApp,
{
    let Some((fds, rt)) = DYNAMIC.get() else {
        return Err(std::io::Error::other(
            "the runtime for new listeners is not up yet",
        ));
    };
    let Some(shutdown) = SHUTDOWN_WATCH.get().cloned() else {
        return Err(std::io::Error::other(
            "the runtime for new listeners is not up yet",
        ));
    };
    // bound here, in the caller, so that an address in use fails the reload
    let l = {
        let _in = rt.enter();
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        sock.listen(BACKLOG)?
    };
    if let Some(f) = fds {
        f.lock().add(addr.to_string(), l.as_raw_fd());
    }
    let (fds, app) = (fds.clone(), Arc::new(app));
    rt.spawn(async move {
        log::info!("{name}: listening on {addr} (added by a reload)");
        accept_loop(
            &name,
            addr,
            l,
            app,
            (lean, false),
            shutdown,
            Some(stop),
            fds,
        )
        .await;
    });
    Ok(())
}

/// The process's shutdown watch, for listeners started after start-up.
static SHUTDOWN_WATCH: once_cell::sync::OnceCell<ShutdownWatch> = once_cell::sync::OnceCell::new();

pub fn adopt_shutdown(w: &ShutdownWatch) {
    let _ = SHUTDOWN_WATCH.set(w.clone());
}
