//! Graceful upgrade and shutdown.
//!
//! Pingora does the socket handoff: the new process starts with `-u` and waits on the
//! upgrade socket; SIGQUIT makes the old one send its listening sockets, keep accepting for a
//! few seconds (both processes accept from the same sockets meanwhile), then stop accepting.
//! SIGTERM stops accepting at once. Either way, after that the old process has
//! `grace_period_seconds` to finish, then its runtimes are torn down.
//!
//! What Pingora leaves to us, and this module adds:
//! - **Keep-alive drain.** When accepting stops, Pingora's HTTP proxy closes every idle
//!   keep-alive connection at once (`http_cleanup`). A client that is about to send its next
//!   request on such a connection sees it reset, which is a failed request. [`Draining`]
//!   wraps the HTTP app and postpones that cleanup for half the grace period. Meanwhile each
//!   request that arrives on an old connection is served with `Connection: close` (Pingora
//!   turns keep-alive off for requests that start during shutdown), so busy clients move to
//!   the new process one response at a time and nothing is cut mid-flight.
//! - **Readiness.** [`draining`] turns true when shutdown starts; the admin `/healthz` then
//!   answers 503 so a load balancer stops sending new connections.
//! - **Admin through the drain.** After SIGTERM the admin listener keeps answering, with
//!   `/healthz` at 503, until the process exits, so an orchestrator sees the drain instead of
//!   a refused probe. After SIGQUIT it stops with the rest: its socket went to the new process.
//! - **Early exit.** Pingora waits out the whole grace period; once no client connection is
//!   open and no request is in flight, the process exits at once (status 0).
//! - **Pid file in both modes** ([`write_pid_file`]): Pingora writes it only when it
//!   daemonizes; `scripts/upgrade` and the systemd unit need it in the foreground too.
//! - **`-u` without an old process** ([`has_running_instance`]): Pingora would wait for
//!   sockets that never come and exit; we start normally instead.

pub mod idle;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once the process has been told to stop (SIGTERM, or SIGQUIT after the handoff).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// How long idle keep-alive connections stay open after accepting stops: half the grace
/// period, so requests that arrive on them in that window still have the other half.
pub fn keepalive_linger(conf: &ServerConf) -> Duration {
    Duration::from_millis(conf.grace_period_seconds.unwrap_or(0) * 500)
}

/// An HTTP app whose shutdown cleanup (closing idle keep-alive connections) waits `linger`.
pub struct Draining<A> {
    inner: Arc<A>,
    linger: Duration,
}

impl<A> Draining<A> {
    pub fn new(inner: A, conf: &ServerConf) -> Draining<A> {
        Draining {
            inner: Arc::new(inner),
            linger: keepalive_linger(conf),
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for Draining<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The inner app's future itself: an `async fn` here would box a second future holding
    /// the session (each HTTP/2 stream's task paid that copy and allocation).
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        DRAINING.store(true, Ordering::Relaxed);
        if !self.linger.is_zero() {
            log::info!(
                "draining: keep-alive connections get Connection: close for {:?}",
                self.linger
            );
            tokio::time::sleep(self.linger).await;
        }
        // Idle keep-alive connections close now, not when shutdown starts: a request may
        // be on its way, and still gets an answer (with `Connection: close`).
        idle::close_all();
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

/// Sets [`draining`] as soon as shutdown is broadcast (before any linger), notes whether the
/// shutdown is an upgrade, and ends the process early once nothing is left to finish.
pub struct DrainFlag {
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

impl DrainFlag {
    /// `phases`: the server's execution phases, to tell an upgrade (SIGQUIT) from a stop.
    pub fn new(phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) -> DrainFlag {
        DrainFlag {
            phases: std::sync::Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl BackgroundService for DrainFlag {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let phases = self.phases.lock().ok().and_then(|mut p| p.take());
        if let Some(mut phases) = phases {
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match phases.recv().await {
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                            UPGRADING.store(true, Ordering::Relaxed)
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => break,
                    }
                }
            });
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        DRAINING.store(true, Ordering::Relaxed);
        // quiet tunnels close now rather than at their idle timeout (see `net::splice`)
        idle::drain_tunnels();
        // Pingora sleeps out the whole grace period even when nothing is left; a stopped
        // container or unit would wait seconds for nothing. Accepting has stopped by now, so
        // once no client connection is open and no request in flight, nothing can be lost.
        std::thread::spawn(exit_when_idle);
    }
}

static UPGRADING: AtomicBool = AtomicBool::new(false);

/// True once a new process has asked for the listening sockets (SIGQUIT): the admin
/// listener then stops with the others, so probes reach only the new process.
pub fn upgrading() -> bool {
    UPGRADING.load(Ordering::Relaxed)
}

/// Client connections open on the proxy listeners (HTTP and L4; not admin). Moved by every
/// connection and read only by a draining process, so striped per thread.
static OPEN: once_cell::sync::Lazy<crate::striped::Gauge> =
    once_cell::sync::Lazy::new(crate::striped::Gauge::default);

/// Held for as long as a client connection is served; see [`open_connection`].
pub struct OpenConnection(());

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.dec();
    }
}

/// Counts a client connection until the guard drops, so a draining process can tell when
/// it has nothing left to finish.
pub fn open_connection() -> OpenConnection {
    OPEN.inc();
    OpenConnection(())
}

fn exit_when_idle() {
    let mut quiet = 0;
    loop {
        let idle = OPEN.get() <= 0 && crate::observability::in_flight() <= 0;
        quiet = if idle { quiet + 1 } else { 0 };
        // Two quiet looks in a row: a connection accepted just before the stop has had time
        // to be counted, and the access log writer to flush what it was given.
        if quiet >= 2 {
            log::info!("drained: no connection or request left, exiting");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes this process's pid to `path` (foreground mode; Pingora's daemon mode writes its
/// own). A failure is logged, not fatal: the proxy serves either way.
pub fn write_pid_file(path: &str) {
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::warn!("cannot write the pid file {path}: {e}");
    }
}

/// Whether something already listens on one of `addrs`, i.e. an instance to take the sockets
/// over from. Binding a probe socket is the one check that does not depend on a pid file
/// (Pingora writes one only in daemon mode).
pub fn has_running_instance(addrs: &[SocketAddr]) -> bool {
    addrs.iter().any(|a| {
        matches!(
            std::net::TcpListener::bind(a),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
        )
    })
}
