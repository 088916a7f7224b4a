//! Active health checks, run as a Pingora background service.
//!
//! Pingora's `Backends` does the probing (TCP connect or an HTTP request) and keeps the
//! consecutive success/failure counts. After each pass we copy its verdict into each
//! [`Slot::healthy`](super::Slot) flag, which is all the request path reads.
//!
//! The probed set follows the pool's membership through [`Membership`], a service discovery
//! that reads the current slots, so backends added by DNS discovery get probed and removed
//! ones stop being probed; Pingora keeps the health of backends that stayed.

use super::Pool;
use crate::config::file::HealthCheckType;
use crate::config::{HealthSpec, UpstreamSpec};
use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::{Backend, Backends};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Probes the pools in force ([`super::live`]); only pools with a `health_check` block are
/// probed, the others stay healthy.
pub struct HealthService;

fn build_check(
    h: &HealthSpec,
    u: &UpstreamSpec,
) -> pingora_core::Result<Box<dyn HealthCheck + Send + Sync>> {
    Ok(match h.kind {
        HealthCheckType::Tcp if u.tls.is_none() => Box::new(PlainTcpCheck {
            timeout: h.timeout,
            success: h.healthy_threshold as usize,
            failure: h.unhealthy_threshold as usize,
        }),
        HealthCheckType::Tcp => {
            // Over TLS the check includes the handshake, so a backend with a bad
            // certificate is marked down before a request meets it.
            let mut c = match &u.tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            crate::tls::upstream::apply_options(
                &mut c.peer_template.options,
                u.tls.as_ref(),
                false,
            );
            c.consecutive_success = h.healthy_threshold as usize;
            c.consecutive_failure = h.unhealthy_threshold as usize;
            c.peer_template.options.connection_timeout = Some(h.timeout);
            c.peer_template.options.total_connection_timeout = Some(h.timeout);
            c
        }
        HealthCheckType::Http => {
            let mut c = HttpHealthCheck::new(&h.host, u.tls.is_some());
            // The same TLS and HTTP/2 settings as requests; the address is a placeholder
            // that Pingora replaces with each backend's.
            c.peer_template =
                crate::tls::upstream::http_peer(u, std::net::SocketAddr::from(([0, 0, 0, 0], 1)));
            c.consecutive_success = h.healthy_threshold as usize;
            c.consecutive_failure = h.unhealthy_threshold as usize;
            c.peer_template.options.connection_timeout = Some(h.timeout);
            c.peer_template.options.total_connection_timeout = Some(h.timeout);
            c.peer_template.options.read_timeout = Some(h.timeout);
            let mut req = RequestHeader::build("GET", h.path.as_bytes(), None)?;
            req.append_header("Host", h.host.as_str())?;
            req.append_header("User-Agent", "stepstone-health-check")?;
            c.req = req;
            let want = h.expect_status;
            c.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == want {
                    Ok(())
                } else {
                    pingora_core::Error::e_explain(
                        pingora_core::ErrorType::Custom("health check status"),
                        format!("got {}, expected {want}", resp.status.as_u16()),
                    )
                }
            }));
            c.port_override = h.port;
            Box::new(c)
        }
    })
}

/// A TCP check without TLS: a connect, then a reset.
///
/// Pingora's `TcpHealthCheck` builds a `TransportConnector`, whose TLS context loads the
/// system's CA bundle, even for plain TCP: about 10 ms of CPU per upstream at start (1,000
/// upstreams took seconds before their first check), and each check went through the
/// connector's socket setup and a 64 KiB stream buffer. A socket connected and dropped is all
/// a TCP check needs.
///
/// The socket is closed with a reset (`SO_LINGER` 0), as HAProxy closes its TCP checks. A
/// plain close would leave it in TIME_WAIT on the proxy for a minute: at 1,000 checks a
/// second that is 60,000 sockets, more than the 28,000 ephemeral ports a source address has
/// for one backend (where `tcp_tw_reuse` does not apply, off loopback), so the checks
/// themselves would starve the proxy's connections to that backend of ports.
struct PlainTcpCheck {
    timeout: std::time::Duration,
    success: usize,
    failure: usize,
}

#[async_trait]
impl HealthCheck for PlainTcpCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        use pingora_core::protocols::l4::socket::SocketAddr as Addr;
        use pingora_core::{Error, ErrorType};
        let connect = async {
            match &target.addr {
                Addr::Inet(a) => probe(*a).await,
                Addr::Unix(a) => match a.as_pathname() {
                    Some(p) => tokio::net::UnixStream::connect(p).await.map(drop),
                    None => Err(std::io::ErrorKind::InvalidInput.into()),
                },
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Error::e_explain(ErrorType::ConnectError, format!("connect: {e}")),
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "connect timed out"),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.success
        } else {
            self.failure
        }
    }
}

/// Connect to `a`, then reset the connection.
///
/// To a backend on the same host (loopback, a sidecar) the handshake completes within the
/// `connect` call, the kernel running the backend's side of it inline; the socket is then
/// checked at once and never registered with the event loop, which spares two `epoll_ctl`
/// calls and a wake-up per check. Otherwise it waits for the handshake as any connection.
async fn probe(a: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(
        Domain::for_address(a),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_linger(Some(std::time::Duration::ZERO))?;
    match s.connect(&a.into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    if s.peer_addr().is_ok() {
        return Ok(());
    }
    let s = tokio::net::TcpStream::from_std(std::net::TcpStream::from(s))?;
    s.writable().await?;
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr().map(drop)
}

struct Membership(Arc<Pool>);

#[async_trait]
impl ServiceDiscovery for Membership {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let set = self
            .0
            .members
            .load()
            .slots
            .iter()
            .filter(|s| !s.maint.load(Relaxed))
            .map(|s| s.backend.clone())
            .collect();
        Ok((set, HashMap::new()))
    }
}

async fn run_pool(pool: Arc<Pool>, mut shutdown: ShutdownWatch) {
    let Some(spec) = pool.spec.health.clone() else {
        return;
    };
    let mut backends = Backends::new(Box::new(Membership(pool.clone())));
    match build_check(&spec, &pool.spec) {
        Ok(c) => backends.set_health_check(c),
        Err(e) => {
            warn!("upstream {}: cannot build the health check: {e}", pool.name);
            return;
        }
    }
    if let Err(e) = backends.update(|_| {}).await {
        warn!("upstream {}: backend discovery failed: {e}", pool.name);
    }
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pingora's checks start every backend healthy. A backend that was down before this task
    // started (a pool replaced by a reload carries its verdicts over) stays down until the
    // checks had the chance to see it fail `unhealthy_threshold` times.
    let started_down: Vec<std::net::SocketAddr> = pool
        .slots()
        .iter()
        .filter(|s| !s.healthy.load(Relaxed))
        .map(|s| s.addr)
        .collect();
    let mut passes: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = backends.update(|_| {}).await {
            warn!("upstream {}: backend discovery failed: {e}", pool.name);
        }
        backends.run_health_check(true).await;
        passes = passes.saturating_add(1);
        let settled = passes >= spec.unhealthy_threshold;
        for slot in pool.members.load().slots.iter() {
            // maintenance pauses its checks: the verdict stays what it was
            if slot.maint.load(Relaxed) {
                continue;
            }
            let now = backends.ready(&slot.backend);
            if now && !settled && started_down.contains(&slot.addr) {
                continue;
            }
            let was = slot.healthy.swap(now, Relaxed);
            if was != now {
                if now {
                    slot.back_since.store(super::now_ms(), Relaxed);
                    info!("upstream {}: backend {} is healthy", pool.name, slot.label);
                } else {
                    warn!(
                        "upstream {}: backend {} is unhealthy",
                        pool.name, slot.label
                    );
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::per_pool(shutdown, |p| p.spec.health.is_some(), run_pool).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A handshake that is not over when `connect` returns (here the backend's accept queue
    /// is full, so its SYN is dropped and resent a second later) is waited for; a refused
    /// one fails.
    #[tokio::test]
    async fn probe_waits_for_a_slow_handshake_and_fails_on_a_refusal() {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = sock.local_addr().expect("local addr");
        // a backlog of 0 holds one connection not yet accepted
        let l = sock.listen(0).expect("listen");
        let _queued = tokio::net::TcpStream::connect(addr).await.expect("first");
        let waiting = tokio::spawn(probe(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the probe ended while its SYN was dropped"
        );
        // room in the queue: the resent SYN completes the handshake
        let _first = l.accept().await.expect("accept");
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the probe never ended")
            .expect("join");
        assert!(r.is_ok(), "probe failed: {r:?}");

        // a port bound but not listening refuses, and stays ours: a port freed by dropping
        // the listener could be handed to another test's listener before the probe
        let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        closed.bind(&any.into()).expect("bind");
        let closed_addr = closed
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet");
        let r = probe(closed_addr).await;
        assert!(r.is_err(), "a probe of a closed port succeeded");
    }
}
