//! The accept loop of every TCP listener (HTTP and TCP, plaintext and TLS).
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
//! the same key (the address as written), so graceful upgrades hand it over either way; with a
//! socket per thread ([`super::shard`]) the others go in as `ADDR#i`.
//! TLS listeners accept here too, their handshake in the connection's task ([`super::tls`]).

use super::control::{Control, Socket};
pub use super::plain::PlainTcp;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Pingora's listen backlog, kept.
const BACKLOG: u32 = 65535;

pub struct PlainService<A> {
    name: String,
    addr: SocketAddr,
    app: Arc<A>,
    /// Connections as [`PlainTcp`]; off when the app needs Pingora's L4 stream (a PROXY
    /// header is read into its rewind buffer).
    lean: bool,
    /// A reload's orders: stop (removed) or hand the sockets over (replaced).
    stop: Option<Control>,
    /// Keep accepting after a stop (SIGTERM) until the process exits; see [`Self::through_drain`].
    through_drain: bool,
    /// TCP_DEFER_ACCEPT on the socket (see [`super::sockopt::defer_accept`]).
    defer_accept: bool,
}

impl<A> PlainService<A> {
    /// Keeps this listener accepting through a stop's drain (not an upgrade, which hands the
    /// socket over): the admin listener, whose `/healthz` must answer 503 rather than refuse.
    pub fn through_drain(mut self, on: bool) -> Self {
        self.through_drain = on;
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
            defer_accept: false,
        }
    }

    /// Accept connections only once their client has sent data (the listener's
    /// `defer_accept`).
    pub fn defer_accept(mut self, on: bool) -> Self {
        self.defer_accept = on;
        self
    }

    /// Take a reload's orders from `stop`.
    pub fn with_stop(mut self, stop: Control) -> Self {
        self.stop = Some(stop);
        self
    }
}

/// The client address of a connection, without making a digest for a [`PlainTcp`].
pub fn peer_ip(io: &pingora_core::protocols::Stream) -> Option<std::net::IpAddr> {
    peer_addr(io.as_ref()).map(|a| a.ip())
}

/// The client's socket address, without making a digest for a [`PlainTcp`] (its first
/// `get_socket_digest` builds one: an allocation and a system call per connection).
pub fn peer_addr(io: &dyn pingora_core::protocols::IO) -> Option<SocketAddr> {
    if let Some(p) = io.as_any().downcast_ref::<PlainTcp>() {
        if !p.has_digest() {
            return Some(p.peer());
        }
    }
    io.get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// A connection's task: one boxed future for its whole life. Its output is dropped (a stream
/// handed back after the task is done has no one to take it).
pub type ConnFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<pingora_core::protocols::Stream>> + Send + 'static>,
>;

/// An accepted connection, handed to the task that serves it.
pub struct Accepted {
    s: pingora_core::protocols::Stream,
}

impl Accepted {
    pub fn new(s: pingora_core::protocols::Stream) -> Self {
        Accepted { s }
    }

    /// The stream. A [`PlainTcp`] is registered with the reactor of the thread that first
    /// waits on it, so a connection spawned on another thread than the accept loop's needs
    /// no move between reactors.
    pub fn settle(self) -> Option<pingora_core::protocols::Stream> {
        Some(self.s)
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

/// The listening socket under `key` in the fd table: the one handed over by the old process
/// on an upgrade, else a new one, recorded in the table for the next upgrade. `reuseport`
/// binds a new one with SO_REUSEPORT, a member of the address's group of per-thread sockets.
pub(super) async fn bind(
    addr: SocketAddr,
    key: &str,
    fds: Option<&ListenFds>,
    reuseport: bool,
    defer_accept: bool,
) -> std::io::Result<tokio::net::TcpListener> {
    if let Some(fd) = fds.and_then(|f| f.lock().get(key).copied()) {
        // SAFETY: the fd table holds listening sockets this process received from the old
        // one (or bound itself); each key is taken by exactly one accept loop.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(l);
    }
    let first = super::shard::first(key);
    let mut tries = 0;
    let l = loop {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        if reuseport {
            sock.set_reuseport(true)?;
        }
        match sock.bind(addr) {
            Ok(()) => {
                defer_before_listen(&sock, defer_accept);
                break sock.listen(BACKLOG)?;
            }
            // as Pingora does: the address may be released a moment later
            // (the first socket of a group; the others join it or fail at once)
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 5 && first => {
                tries += 1;
                log::warn!("{addr} is in use, will try again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(f) = fds {
        f.lock().add(key.to_string(), l.as_raw_fd());
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
        let (name, addr) = (self.name.clone(), self.addr);
        let mut socks =
            match super::shard::sockets(&name, addr, fds.as_ref(), self.defer_accept).await {
                Ok(s) => s,
                Err(e) => {
                    // Pingora's listeners panic here too: a server that cannot listen must not run.
                    log::error!("{name}: cannot listen on {addr}: {e}");
                    std::process::exit(1);
                }
            };
        let opts = Opts {
            lean: self.lean,
            through_drain: self.through_drain,
            defer_accept: self.defer_accept,
            local: false,
        };
        let stop = self.stop.take();
        if socks.len() == 1 {
            log::info!("{name}: listening on {addr}");
            let (key, l) = socks.remove(0);
            let app = self.app.clone();
            let ended = accept_loop(&name, addr, &key, l, app, opts, shutdown, stop, fds).await;
            if ended == Ended::Shutdown {
                self.app.cleanup().await;
            }
            return;
        }
        log::info!(
            "{name}: listening on {addr} ({} sockets, one per thread)",
            socks.len()
        );
        // Each loop reports how it ended; the process's keep-alive drain runs once, after
        // the last, as with one loop.
        let (done, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let app = self.app.clone();
        let opts = Opts {
            local: true,
            ..opts
        };
        super::shard::place(socks, move |key, l| {
            let (name, app, fds, done) = (name.clone(), app.clone(), fds.clone(), done.clone());
            let (shutdown, stop) = (shutdown.clone(), stop.clone());
            tokio::spawn(async move {
                let e = accept_loop(&name, addr, &key, l, app, opts, shutdown, stop, fds).await;
                let _ = done.send(e);
            });
        });
        let mut shut = false;
        while let Some(e) = ended.recv().await {
            shut |= e == Ended::Shutdown;
        }
        if shut {
            self.app.cleanup().await;
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Declared so that Pingora closes the inherited sockets of listeners the new
    /// configuration no longer has (it does only when every service declares its own): left
    /// open, one would hold new connections that nothing accepts.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(super::shard::claimed(self.addr))
    }
}

/// The listener's `defer_accept` on its socket, set either way (an upgrade hands over a
/// socket with the old process's setting); a failure to turn it on is logged, not fatal.
fn set_defer_accept(name: &str, addr: SocketAddr, l: &impl std::os::fd::AsRawFd, on: bool) {
    if !super::sockopt::defer_accept(l, on) && on {
        log::warn!(
            "{name}: defer_accept could not be set on {addr}: connections are accepted at once"
        );
    }
}

/// How [`accept_loop`] treats its socket and connections.
#[derive(Clone, Copy)]
struct Opts {
    /// Connections as [`PlainTcp`].
    lean: bool,
    /// Keep accepting through a stop's drain.
    through_drain: bool,
    /// TCP_DEFER_ACCEPT on the socket.
    defer_accept: bool,
    /// Serve each connection on this loop's thread (one socket per thread, see
    /// [`super::shard`]); else on a thread picked at random.
    local: bool,
}

/// Accept until shutdown, or until `stop` (a reload removed or replaced the listener). After
/// shutdown the app's cleanup runs (the keep-alive drain of the whole process); after a stop
/// the socket is closed and taken out of the fd table, after a hand-over it goes to the
/// listener that replaces this one; either way the connections finish on their own.
#[allow(clippy::too_many_arguments)]
async fn accept_loop<A>(
    name: &str,
    addr: SocketAddr,
    key: &str,
    l: std::net::TcpListener,
    app: Arc<A>,
    opts: Opts,
    mut shutdown: ShutdownWatch,
    mut stop: Option<Control>,
    fds: Option<ListenFds>,
) -> Ended
where
    A: ConnApp,
{
    let giver = stop.as_ref().map(Control::giver);
    let removed = async {
        match stop.as_mut() {
            Some(c) => c.ended().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(removed);
    // Accepted with accept4 on the bare socket (see `super::plain`): tokio's accept would
    // register every connection with this thread's reactor.
    // SAFETY: the AsyncFd owns the listening socket until `into_inner`.
    let l = match unsafe { AsyncFd::register(l) } {
        Ok(l) => l,
        Err(e) => {
            log::error!("{name}: cannot poll the listening socket on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let mut stopping = false;
    let inherited = super::sockopt::nodelay_for_all(&l);
    if app.delays_acks() && !super::sockopt::delay_acks_for_all(&l) {
        log::debug!("{name}: delayed ACKs not set on {addr}");
    }
    set_defer_accept(name, addr, &l, opts.defer_accept);
    let Opts {
        lean,
        through_drain,
        defer_accept,
        local,
    } = opts;
    loop {
        let accepted = tokio::select! {
            r = accept(&l) => r,
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
            how = &mut removed => {
                let l = l.into_inner();
                match (how, giver) {
                    (super::control::Ended::HandOver, Some(to)) => {
                        log::info!("{name}: replaced by a reload: its socket on {addr} goes to the new listener");
                        // The fd table keeps the same descriptor under the same key. Should
                        // the reload be gone, the socket closes here.
                        let _ = to.send((key.to_string(), l));
                    }
                    _ => {
                        log::info!("{name}: removed by a reload: stopped accepting on {addr}");
                        forget_socket(key, l, fds);
                    }
                }
                return Ended::Removed;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors: idle backend connections give way to the client. Else
                // (or when none is idle) back off instead of spinning.
                let out = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let shed = if out {
                    crate::upstream::conns::shed(SHED)
                } else {
                    0
                };
                if shed > 0 {
                    log::warn!(
                        "{name}: accept() failed: {e}; closed {shed} idle backend connection(s) to make room"
                    );
                    continue;
                }
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
            Box::new(PlainTcp::new(tcp, peer).deferred(defer_accept))
        } else {
            let fd = tcp.as_raw_fd();
            let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
                continue;
            };
            let mut s = pingora_core::protocols::l4::stream::Stream::from(tcp);
            let d = SocketDigest::from_raw_fd(fd);
            // accept() told us: the digest would ask the kernel again (getpeername)
            let _ = d
                .peer_addr
                .set(Some(pingora_core::protocols::l4::socket::SocketAddr::Inet(
                    peer,
                )));
            s.set_socket_digest(d);
            Box::new(s)
        };
        let a = Accepted::new(s);
        let task = app.clone().connection(a, shutdown.clone());
        if local {
            tokio::spawn(task);
        } else {
            pingora_runtime::current_handle().spawn(task);
        }
    }
    log::info!("{name}: stopped accepting on {addr}");
    drop(l);
    Ended::Shutdown
}

/// Idle backend connections closed at once when accept runs out of descriptors: a few
/// clients' worth, so that a burst of new clients does not shed one at a time.
const SHED: usize = 16;

/// Why an accept loop returned: the process is shutting down (the app's cleanup is due), or
/// a reload removed the listener.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ended {
    Shutdown,
    Removed,
}

/// The next connection on `l`, nonblocking and registered with no reactor.
async fn accept(
    l: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = l.readable().await?;
        if let Ok(r) = ready.try_io(|l| super::plain::accept(l.get_ref())) {
            return r;
        }
    }
}

/// Close a removed listener's socket and take it out of the fd table, so an upgrade does not
/// hand over a closed (or reused) descriptor.
fn forget_socket(key: &str, l: std::net::TcpListener, fds: Option<ListenFds>) {
    use std::os::fd::IntoRawFd;
    match fds {
        Some(fds) if fds.lock().get(key).is_some() => {
            // the table closes it: ownership of the descriptor goes there
            let _ = l.into_raw_fd();
            close_in_table(&fds, key);
        }
        _ => drop(l),
    }
}

/// Close the descriptor the fd table holds under `key` and take the key out, so that an
/// upgrade does not hand it over (any listening socket: TCP here, UDP for HTTP/3).
pub fn close_in_table(fds: &ListenFds, key: &str) {
    let mut table = fds.lock();
    let keep: std::collections::HashSet<String> = table
        .serialize()
        .0
        .into_iter()
        .filter(|k| k != key)
        .collect();
    table.close_unclaimed(&keep);
}

/// The fd table and the runtime that dynamic listeners use: set by the reload service when it
/// starts ([`adopt_runtime`]).
static DYNAMIC: once_cell::sync::OnceCell<(Option<ListenFds>, tokio::runtime::Handle)> =
    once_cell::sync::OnceCell::new();

/// Record the fd table and the current runtime, on which [`spawn`] starts listeners later.
pub fn adopt_runtime(fds: Option<ListenFds>) {
    let _ = DYNAMIC.set((fds, tokio::runtime::Handle::current()));
}

/// Where a listener's accept loop runs: as a service of the server being built (at start),
/// spawned at once on the runtime of [`adopt_runtime`] (a listener a reload adds), or later
/// on the sockets of the listener it replaces (a reload that changes a listener's settings).
/// The listener's own code (which app, plaintext or TLS, PROXY header or not) is the same for
/// all three.
pub enum Start<'a> {
    Service(&'a mut pingora_core::server::Server),
    Spawned,
    /// Filled by [`Start::accept`]: everything is built, [`Pending::run`] starts it.
    Later(Option<Pending>),
}

/// A listener built and ready to accept on the sockets it is given.
pub struct Pending(Box<dyn FnOnce(Vec<Socket>) -> std::io::Result<()> + Send>);

impl Pending {
    /// Accept on `sockets` (handed over by the listener this one replaces).
    pub fn run(self, sockets: Vec<Socket>) -> std::io::Result<()> {
        (self.0)(sockets)
    }
}

impl Start<'_> {
    /// Accept on `addr` with `app` until `stop` (a reload removed or replaced the listener)
    /// or shutdown. Spawned: bound now, so an address in use is the caller's error.
    pub fn accept<A: ConnApp>(
        &mut self,
        name: String,
        addr: SocketAddr,
        app: A,
        lean: bool,
        defer_accept: bool,
        stop: Control,
    ) -> std::io::Result<()> {
        let opts = Opts {
            lean,
            through_drain: false,
            defer_accept,
            local: false,
        };
        self.accept_with(name, addr, app, opts, stop)
    }

    /// As [`Self::accept`], but accepting on through a stop's drain until the process exits
    /// (see [`PlainService::through_drain`]): the admin listener.
    pub fn accept_through_drain<A: ConnApp>(
        &mut self,
        name: String,
        addr: SocketAddr,
        app: A,
        stop: Control,
    ) -> std::io::Result<()> {
        let opts = Opts {
            lean: false,
            through_drain: true,
            defer_accept: false,
            local: false,
        };
        self.accept_with(name, addr, app, opts, stop)
    }

    fn accept_with<A: ConnApp>(
        &mut self,
        name: String,
        addr: SocketAddr,
        app: A,
        opts: Opts,
        stop: Control,
    ) -> std::io::Result<()> {
        match self {
            Start::Service(server) => {
                let svc = PlainService::new(name, addr, app, opts.lean)
                    .through_drain(opts.through_drain)
                    .defer_accept(opts.defer_accept);
                server.add_service(svc.with_stop(stop));
                Ok(())
            }
            Start::Spawned | Start::Later(_) => {
                let loops = Loops {
                    name,
                    addr,
                    app,
                    opts,
                    stop,
                };
                match self {
                    Start::Later(slot) => {
                        *slot = Some(Pending(Box::new(move |socks| spawn(loops, socks))));
                        Ok(())
                    }
                    _ => {
                        let defer = loops.opts.defer_accept;
                        spawn(loops, vec![bind_now(addr, defer)?])
                    }
                }
            }
        }
    }
}

/// TCP_DEFER_ACCEPT on a socket about to listen. Set only after `listen`, a client that
/// connected in between (one that came at once, as a readiness probe's follower does) was
/// handed over without the hold. The accept loop sets it again either way (an inherited
/// socket keeps the old process's setting) and warns if it cannot be set.
fn defer_before_listen(sock: &tokio::net::TcpSocket, on: bool) {
    if on {
        super::sockopt::defer_accept(sock, true);
    }
}

/// A new socket on `addr`, in the fd table under the address. Bound here, in the caller, so
/// that an address in use fails the reload.
fn bind_now(addr: SocketAddr, defer_accept: bool) -> std::io::Result<Socket> {
    let Some((fds, rt)) = DYNAMIC.get() else {
        return Err(std::io::Error::other(
            "the runtime for new listeners is not up yet",
        ));
    };
    let l = {
        let _in = rt.enter();
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        defer_before_listen(&sock, defer_accept);
        sock.listen(BACKLOG)?
    };
    let key = addr.to_string();
    if let Some(f) = fds {
        f.lock().add(key.clone(), l.as_raw_fd());
    }
    Ok((key, l.into_std()?))
}

/// A listener's accept loops to start after start-up, on whatever sockets they get.
struct Loops<A> {
    name: String,
    addr: SocketAddr,
    app: A,
    opts: Opts,
    stop: Control,
}

/// Accept on `socks` until the loops' stop or shutdown, on the runtime of
/// [`adopt_runtime`]: a loop per socket, and the app's cleanup once, after the last.
fn spawn<A>(loops: Loops<A>, socks: Vec<Socket>) -> std::io::Result<()>
where
    A: ConnApp,
{
    let (Some((fds, rt)), Some(shutdown)) = (DYNAMIC.get(), SHUTDOWN_WATCH.get().cloned()) else {
        return Err(std::io::Error::other(
            "the runtime for new listeners is not up yet",
        ));
    };
    let Loops {
        name,
        addr,
        app,
        opts,
        stop,
    } = loops;
    let (fds, app) = (fds.clone(), Arc::new(app));
    log::info!(
        "{name}: listening on {addr} ({} socket(s), started by a reload)",
        socks.len()
    );
    let (done, mut ended) = tokio::sync::mpsc::unbounded_channel();
    for (key, l) in socks {
        let (name, app, fds, done) = (name.clone(), app.clone(), fds.clone(), done.clone());
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        rt.spawn(async move {
            let e = accept_loop(&name, addr, &key, l, app, opts, shutdown, Some(stop), fds).await;
            let _ = done.send(e);
        });
    }
    // the loops hold the only controls left: a hand-over waits for them alone
    drop((stop, done));
    rt.spawn(async move {
        let mut shut = false;
        while let Some(e) = ended.recv().await {
            shut |= e == Ended::Shutdown;
        }
        if shut {
            app.cleanup().await;
        }
    });
    Ok(())
}

/// The fd table, runtime and shutdown watch that listeners started after start-up use (the
/// HTTP/3 side of one a reload adds too); `None` until the reload service is up.
pub fn later_runtime() -> Option<(Option<ListenFds>, tokio::runtime::Handle, ShutdownWatch)> {
    let (fds, rt) = DYNAMIC.get()?;
    Some((fds.clone(), rt.clone(), SHUTDOWN_WATCH.get()?.clone()))
}

/// The process's shutdown watch, for listeners started after start-up.
static SHUTDOWN_WATCH: once_cell::sync::OnceCell<ShutdownWatch> = once_cell::sync::OnceCell::new();

pub fn adopt_shutdown(w: &ShutdownWatch) {
    let _ = SHUTDOWN_WATCH.set(w.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A deferring listener's socket defers from its first connection: the option is set
    /// before `listen`, so a silent client that connects before any accept loop ran (as a
    /// test's client right after a readiness probe) is held as later ones are, and a
    /// listener without it hands the same client over at once.
    #[tokio::test]
    async fn a_deferring_socket_holds_a_silent_client_before_its_accept_loop_runs() {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        for defer in [true, false] {
            let l = bind(any, "defer-test", None, false, defer)
                .await
                .expect("bind 127.0.0.1:0");
            let addr = l.local_addr().expect("listener address");
            let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let early = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
            assert_eq!(
                early.is_err(),
                defer,
                "defer_accept {defer}: a silent client was {} within 300 ms",
                if early.is_ok() {
                    "accepted"
                } else {
                    "not accepted"
                }
            );
        }
    }
}
