//! Active health checks, run as a Pingora background service.
//!
//! Pingora's `Backends` runs the probes (ours: [`tcp`] for plain TCP, [`tls`] over TLS,
//! [`http`] for HTTP/1.1 and HTTP/2) and keeps the consecutive success/failure counts. After
//! each pass we copy its verdict into each [`Slot::healthy`](super::Slot) flag, which is all
//! the request path reads.
//!
//! The probed set follows the pool's membership through [`Membership`], a service discovery
//! that reads the current slots, so backends added by DNS discovery get probed and removed
//! ones stop being probed; Pingora keeps the health of backends that stayed.

mod h2;
mod http;
mod tcp;
mod tls;

use super::Pool;
use crate::config::file::HealthCheckType;
use crate::config::{HealthSpec, UpstreamSpec};
use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HealthCheck;
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
        HealthCheckType::Tcp if u.tls.is_none() => Box::new(tcp::PlainTcpCheck {
            timeout: h.timeout,
            thresholds: Thresholds::of(h),
        }),
        // Over TLS the check includes the handshake, so a backend with a bad certificate is
        // marked down before a request meets it.
        HealthCheckType::Tcp => Box::new(tls::TlsTcpCheck::new(h, u)),
        HealthCheckType::Http => Box::new(http::HttpCheck::new(h, u)?),
    })
}

/// Consecutive results that flip a backend's verdict, for the checks of our own.
#[derive(Clone, Copy)]
struct Thresholds {
    success: usize,
    failure: usize,
}

impl Thresholds {
    fn of(h: &HealthSpec) -> Thresholds {
        Thresholds {
            success: h.healthy_threshold as usize,
            failure: h.unhealthy_threshold as usize,
        }
    }

    /// What `HealthCheck::health_threshold` answers.
    fn pick(self, success: bool) -> usize {
        if success {
            self.success
        } else {
            self.failure
        }
    }
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
    let pass = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    match build_check(&spec, &pool.spec) {
        Ok(c) => backends.set_health_check(Box::new(Spread {
            inner: c,
            interval: spec.interval,
            pass: pass.clone(),
            port: spec.port,
            pool: Arc::downgrade(&pool),
        })),
        Err(e) => {
            warn!("upstream {}: cannot build the health check: {e}", pool.name);
            return;
        }
    }
    if let Err(e) = backends.update(|_| {}).await {
        warn!("upstream {}: backend discovery failed: {e}", pool.name);
    }
    let start = on_grid(spread(&pool.name, spec.interval, SLOTS), spec.interval);
    let mut tick = tokio::time::interval_at(start, spec.interval);
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
    let mut seen = Seen::default();
    loop {
        let at = tokio::select! {
            at = tick.tick() => at,
            _ = shutdown.changed() => return,
        };
        *pass.lock().unwrap_or_else(|e| e.into_inner()) = at;
        if seen.changed(&pool) {
            if let Err(e) = backends.update(|_| {}).await {
                warn!("upstream {}: backend discovery failed: {e}", pool.name);
            }
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

/// The membership the probed set was last taken from, so that a pass takes it again only
/// when it changed: taking it (Pingora's discovery: a set of the backends, compared with the
/// last) cost a tenth of the checks' user-space CPU at 1,000 backends checked every second,
/// and it rarely changes. The membership is held, not only its address, so that a new one
/// cannot be allocated where the last one was and pass for it.
#[derive(Default)]
struct Seen {
    members: Option<Arc<super::Members>>,
    /// Slots in maintenance, which leave the probed set without a new membership.
    maint: Vec<usize>,
}

impl Seen {
    fn changed(&mut self, pool: &Pool) -> bool {
        let now = pool.members.load_full();
        // no allocation while no slot is in maintenance, the usual case
        let maint: Vec<usize> = now
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.maint.load(Relaxed))
            .map(|(i, _)| i)
            .collect();
        let same =
            self.members.as_ref().is_some_and(|m| Arc::ptr_eq(m, &now)) && maint == self.maint;
        if !same {
            self.maint = maint;
            self.members = Some(now);
        }
        !same
    }
}

/// A pool's checks, each backend's at its own offset within the first half of the pass: the
/// pass spawns them all at once, and a pool of 1,000 backends would take their CPU in one
/// burst as pools started together did (see [`spread`]). The later half leaves the checks
/// their time to answer before the next pass.
struct Spread {
    inner: Box<dyn HealthCheck + Send + Sync>,
    interval: std::time::Duration,
    /// When the pass was due: the offsets count from it, so that they stay on the grid of
    /// [`on_grid`] however late the pass started.
    pass: Arc<std::sync::Mutex<tokio::time::Instant>>,
    /// `health_check.port`: every kind of check goes to this port instead of the traffic
    /// port, so it is applied here, once, rather than by each check.
    port: Option<u16>,
    /// For the verdict in force, which a check this machine could not make leaves as it is.
    pool: std::sync::Weak<Pool>,
}

impl Spread {
    /// The result of a check that this machine refused to make (out of descriptors, say:
    /// [`super::local`]): the backend's verdict as it stands, so that the proxy's own
    /// shortage marks no backend down (which would turn a burst at the open-file limit into
    /// 503s for every request until the backends' checks passed again), nor one up.
    fn unchanged(&self, target: &Backend, e: Box<pingora_core::Error>) -> pingora_core::Result<()> {
        let healthy = self.pool.upgrade().is_none_or(|p| {
            p.members
                .load()
                .slots
                .iter()
                .find(|s| s.backend == *target)
                .is_none_or(|s| s.healthy.load(Relaxed))
        });
        log::debug!(
            "health check of {} not made ({e}): verdict unchanged",
            target.addr
        );
        if healthy {
            Ok(())
        } else {
            Err(e)
        }
    }
}

#[async_trait]
impl HealthCheck for Spread {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let pass = *self.pass.lock().unwrap_or_else(|e| e.into_inner());
        let at = pass + spread(&target.addr.to_string(), self.interval, SLOTS / 2);
        tokio::time::sleep_until(at).await;
        let r = match self.port {
            Some(p) => {
                let mut side = target.clone();
                side.addr.set_port(p);
                self.inner.check(&side).await
            }
            None => self.inner.check(target).await,
        };
        match r {
            Err(e) if super::local::refused_in(&e) => self.unchanged(target, e),
            r => r,
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }
}

/// The instants of an interval that checks start at.
///
/// In one burst, 1,000 backends' checks make the requests in flight wait behind them (GET
/// p99 6-7 ms beside them, 2.5-3 without). Spread, each instant costs a wake-up of the event
/// loop for the connects and another for the answers: at a thousand instants an HTTP check
/// cost twice its CPU in one burst (12-15% of one core against 6-7% at 1,000 backends a
/// second). A hundred instants, shared by all pools, keep the p99 (3.5 ms) at less of that
/// cost (9.6%); twenty did not help the p99 (5.6-10.7 ms).
const SLOTS: u32 = 100;

/// The first instant from now that is `offset` past a whole number of intervals since the
/// process's first health check: every pool's checks start on one grid of instants, so that
/// pools (and their backends) given the same slot wake the event loop once, together.
fn on_grid(offset: std::time::Duration, interval: std::time::Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let first = *EPOCH.get_or_init(tokio::time::Instant::now) + offset;
    let now = tokio::time::Instant::now();
    if now <= first {
        return first;
    }
    let every = interval.as_nanos().max(1);
    let periods = (now - first).as_nanos() / every + 1;
    let later = u64::try_from(periods.saturating_mul(every)).unwrap_or(u64::MAX);
    first + std::time::Duration::from_nanos(later)
}

/// When in its interval something named `name` (a pool, a backend) runs its checks: one of the
/// first `slots` of the interval's [`SLOTS`] instants, from its name. Pools started together
/// (all of them, at start) would otherwise check at the same instant every interval. HAProxy
/// spreads its servers' checks over the interval the same way.
fn spread(name: &str, interval: std::time::Duration, slots: u32) -> std::time::Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let slot = h.finish() % u64::from(slots.max(1));
    // `slot` < `slots` <= SLOTS, so it fits
    interval / SLOTS * u32::try_from(slot).unwrap_or(0)
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

    /// 500 pools started together check at instants spread over the interval, not at one,
    /// and at no more than a hundred different ones.
    #[test]
    fn pools_checks_are_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let mut tenths = [0usize; 10];
        let mut instants = std::collections::BTreeSet::new();
        for i in 0..500 {
            let at = spread(&format!("u{i}"), interval, SLOTS);
            instants.insert(at);
            let tenth = (at.as_millis() / 100) as usize;
            match tenths.get_mut(tenth) {
                Some(n) => *n += 1,
                None => panic!("pool u{i} checks at {at:?}, past its interval"),
            }
        }
        for (i, n) in tenths.iter().enumerate() {
            assert!(
                (25..=75).contains(n),
                "{n} of 500 pools check in tenth {i} of the interval: {tenths:?}"
            );
        }
        assert!(
            (90..=100).contains(&instants.len()),
            "{} instants: {instants:?}",
            instants.len()
        );
        assert!(
            instants.iter().all(|d| d.as_millis() % 10 == 0),
            "not on hundredths of the interval: {instants:?}"
        );
        // pools started at different moments land on the same grid
        let a = on_grid(Duration::from_millis(30), interval);
        std::thread::sleep(Duration::from_millis(5));
        let b = on_grid(Duration::from_millis(30), interval);
        let apart = if a > b { a - b } else { b - a };
        assert!(
            apart.as_nanos() % interval.as_nanos() == 0,
            "{apart:?} apart, not whole intervals"
        );
        assert_eq!(
            spread("u1", interval, SLOTS),
            spread("u1", interval, SLOTS),
            "not stable"
        );
        // a backend's offset within its pool's pass stays in the first half
        let latest = (0..1000)
            .map(|i| spread(&format!("127.0.0.{i}:80"), interval, SLOTS / 2))
            .max();
        assert!(
            latest.is_some_and(|d| d >= Duration::from_millis(400) && d < interval / 2),
            "{latest:?}"
        );
    }
}
