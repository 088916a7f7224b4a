//! Upstream pools: backend membership, selection and health.
//!
//! A [`Pool`] is shared by every listener that routes to it (HTTP and L4 alike). It keeps a
//! snapshot of [`Slot`]s, one per backend, with the state the hot path reads: health, drain and
//! in-flight counts, all atomics. Pingora's `Backends` runs the active health checks and the
//! discovery; [`health::HealthService`] copies its verdicts into the slots after each pass so a
//! selection never takes a lock or a hash lookup.

pub mod budget;
pub mod conns;
pub mod discovery;
pub mod health;
pub mod live;
pub mod local;
pub mod select;
pub mod shadow;
pub mod sticky;

use crate::config::{BackendSpec, HashKey, Selection, UpstreamSpec};
use crate::striped::{Padded, Striped};
use arc_swap::ArcSwap;
use pingora_load_balancing::Backend;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// One stripe of a backend's request counters.
#[derive(Debug, Default)]
struct SlotStats {
    requests: AtomicU64,
    completed: AtomicU64,
    /// Sum of the response times of completed requests, in microseconds: the status page and
    /// metrics derive the backend's latency from it and `completed`.
    latency_us: AtomicU64,
}

/// A backend's request totals ([`Slot::totals`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SlotTotals {
    pub requests: u64,
    pub completed: u64,
    pub latency_us: u64,
}

/// One backend and the counters selection and metrics read.
#[derive(Debug)]
pub struct Slot {
    pub index: usize,
    pub addr: SocketAddr,
    /// `ip:port`, precomputed for logs, metrics and the status API.
    pub label: String,
    pub weight: u32,
    /// Concurrent requests at most (`max_connections`), a hard cap.
    pub max_conns: Option<usize>,
    pub backend: Backend,
    pub healthy: AtomicBool,
    pub drained: AtomicBool,
    /// Maintenance ([`live::AdminState::Maint`]): drained, and left out of health checks.
    pub maint: AtomicBool,
    /// In flight now: shared by every thread (caps and least-connections read the exact
    /// value), so on lines of its own, away from the flags every selection reads. (Its
    /// alignment also puts the slot's `Arc` counts, which each pick moves, on lines apart.)
    pub inflight: Padded<AtomicUsize>,
    /// Requests sent, and completed ones with their response times: bumped by every request,
    /// so striped per thread ([`Slot::totals`] sums them).
    stats: Striped<SlotStats>,
    pub failures: AtomicU64,
    /// Outlier detection (the policy's `outlier` module): failures in a row, the end of the
    /// current ejection in [`now_ms`] (0: not ejected), ejections so far (the backoff), the
    /// end of the last one, and the total for metrics.
    pub consecutive: AtomicU32,
    pub ejected_until: AtomicU64,
    pub ejections: AtomicU32,
    pub last_ejection_end: AtomicU64,
    pub ejections_total: AtomicU64,
    /// When the backend came back (healthy again, or its ejection over), in [`now_ms`], for
    /// slow start; 0: not ramping.
    pub back_since: AtomicU64,
    /// The token a sticky cookie names this backend by, made on first use.
    sticky_token: std::sync::OnceLock<String>,
}

impl Slot {
    fn new(index: usize, spec: &BackendSpec) -> Slot {
        let mut backend = Backend {
            addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(spec.addr),
            weight: spec.weight as usize,
            ext: Default::default(),
        };
        backend.weight = spec.weight as usize;
        Slot {
            index,
            addr: spec.addr,
            label: spec.addr.to_string(),
            weight: spec.weight,
            max_conns: spec.max_connections.map(|n| n as usize),
            backend,
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            maint: AtomicBool::new(false),
            inflight: Padded(AtomicUsize::new(0)),
            stats: Striped::default(),
            failures: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejection_end: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            back_since: AtomicU64::new(0),
            sticky_token: std::sync::OnceLock::new(),
        }
    }

    /// A request to this backend completed after `took` (from its head to its response's
    /// end).
    #[inline]
    pub fn completed(&self, took: Duration) {
        let s = self.stats.mine();
        s.latency_us.fetch_add(took.as_micros() as u64, Relaxed);
        s.completed.fetch_add(1, Relaxed);
    }

    /// The backend's request totals, summed over the threads' stripes.
    pub fn totals(&self) -> SlotTotals {
        self.stats
            .each()
            .fold(SlotTotals::default(), |t, s| SlotTotals {
                requests: t.requests.wrapping_add(s.requests.load(Relaxed)),
                completed: t.completed.wrapping_add(s.completed.load(Relaxed)),
                latency_us: t.latency_us.wrapping_add(s.latency_us.load(Relaxed)),
            })
    }

    #[inline]
    pub fn usable(&self) -> bool {
        self.healthy.load(Relaxed) && !self.drained.load(Relaxed) && !self.ejected()
    }

    /// Whether the backend is under its `max_connections`.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.max_conns
            .is_none_or(|m| self.inflight.load(Relaxed) < m)
    }

    /// Whether outlier detection has the backend out now. The first look after the ejection
    /// ended readmits it (and says so).
    #[inline]
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.last_ejection_end.store(until, Relaxed);
            self.consecutive.store(0, Relaxed);
            self.back_since.store(now_ms(), Relaxed);
            log::info!("backend {}: ejection over, readmitted", self.label);
        }
        false
    }
}

/// Milliseconds since the process's first look at the clock, never 0.
pub fn now_ms() -> u64 {
    static EPOCH: once_cell::sync::Lazy<std::time::Instant> =
        once_cell::sync::Lazy::new(std::time::Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// A selected backend. Holding it counts one request (or TCP connection) in flight; dropping
/// it gives the count back, so no code path can leak an in-flight count.
#[derive(Debug)]
pub struct Pick {
    pub slot: Arc<Slot>,
    /// The pool's queue, told when a capped backend has room again.
    queue: Option<Arc<tokio::sync::Notify>>,
}

impl Pick {
    /// Count a request on `slot`; `None` when its cap was reached meanwhile.
    fn new(slot: &Arc<Slot>, queue: &Arc<tokio::sync::Notify>) -> Option<Pick> {
        match slot.max_conns {
            Some(max) => {
                slot.inflight
                    .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
                    .ok()?;
            }
            None => {
                slot.inflight.fetch_add(1, Relaxed);
            }
        }
        slot.stats.mine().requests.fetch_add(1, Relaxed);
        Some(Pick {
            slot: slot.clone(),
            queue: slot.max_conns.map(|_| queue.clone()),
        })
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.slot.inflight.fetch_sub(1, Relaxed);
        if let Some(q) = &self.queue {
            q.notify_one();
        }
    }
}

/// Why [`Pool::select_queued`] found no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// None is usable (down, drained, ejected or already tried).
    None,
    /// Every usable one is at its cap and the queue is full.
    QueueFull,
    /// Every usable one stayed at its cap for `queue_timeout`.
    QueueTimeout,
}

/// Membership snapshot with the precomputed structures of each algorithm.
pub struct Members {
    pub slots: Vec<Arc<Slot>>,
    /// Slot indices repeated by weight in a smooth interleaved order (nginx's smooth weighted
    /// round robin), for round robin, random and the two choices of power-of-two.
    pub wheel: Vec<u32>,
    /// Ketama ring of (point, slot index), sorted by point.
    pub ring: Vec<(u64, u32)>,
}

impl Members {
    pub fn build(specs: &[BackendSpec]) -> Members {
        let slots: Vec<Arc<Slot>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Slot::new(i, s)))
            .collect();
        let weights: Vec<u32> = slots.iter().map(|s| s.weight).collect();
        let labels: Vec<&str> = slots.iter().map(|s| s.label.as_str()).collect();
        Members {
            wheel: select::smooth_wheel(&weights),
            ring: select::ketama_ring(&labels, &weights),
            slots,
        }
    }

    /// A new membership after discovery. A backend that stays at the same position keeps its
    /// very slot (counters, health, drain, in-flight). One that moves gets a new slot with
    /// the old flags and counters copied; requests in flight on the old slot finish counting
    /// there, because the index of a slot is part of the `tried` mask of running requests.
    pub fn rebuild(old: &Members, specs: &[BackendSpec]) -> Members {
        let mut m = Members::build(specs);
        for slot in m.slots.iter_mut() {
            let Some(prev) = old.slots.iter().find(|s| s.addr == slot.addr) else {
                continue;
            };
            if prev.index == slot.index && prev.weight == slot.weight {
                *slot = prev.clone();
            } else {
                slot.healthy.store(prev.healthy.load(Relaxed), Relaxed);
                slot.drained.store(prev.drained.load(Relaxed), Relaxed);
                slot.failures.store(prev.failures.load(Relaxed), Relaxed);
                let t = prev.totals();
                let first = slot.stats.mine();
                first.requests.store(t.requests, Relaxed);
                first.completed.store(t.completed, Relaxed);
                first.latency_us.store(t.latency_us, Relaxed);
                for (to, from) in [
                    (&slot.ejected_until, &prev.ejected_until),
                    (&slot.last_ejection_end, &prev.last_ejection_end),
                    (&slot.ejections_total, &prev.ejections_total),
                ] {
                    to.store(from.load(Relaxed), Relaxed);
                }
                slot.ejections.store(prev.ejections.load(Relaxed), Relaxed);
            }
        }
        m
    }
}

pub struct Pool {
    pub name: String,
    pub spec: UpstreamSpec,
    pub selection: Selection,
    pub hash_key: HashKey,
    pub members: ArcSwap<Members>,
    /// The round-robin cursor. One for all threads, so that consecutive requests go to
    /// consecutive backends whichever thread serves them (as in HAProxy); per-thread cursors
    /// would save a shared increment per request but interleave the threads' sequences
    /// (nginx's workers without a `zone`). `random` and `power_of_two` share nothing.
    rr: AtomicUsize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    /// Retries allowed, and retries counted (see [`budget`]).
    pub budget: budget::RetryBudget,
    /// Requests waiting for a capped backend, and their wake-up.
    waiting: AtomicUsize,
    queue: Arc<tokio::sync::Notify>,
    /// The key of the sticky cookie's tokens, when the upstream is sticky.
    sticky_key: Option<Arc<sticky::Key>>,
    /// Its copies in flight and counters when routes mirror requests to it.
    pub shadow: shadow::ShadowStats,
    /// The membership before the operator's changes ([`live`]): the file's backends, or
    /// what DNS discovery found last.
    base: std::sync::Mutex<Vec<BackendSpec>>,
}

/// Gives a waiting request's place in the queue back.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Pool {
    pub fn new(spec: &UpstreamSpec) -> Pool {
        let base = discovery::initial_backends(spec);
        let members = Members::build(&live::apply(&spec.name, &base));
        apply_states(&spec.name, &members);
        Pool {
            name: spec.name.clone(),
            selection: spec.selection,
            hash_key: spec.hash_key.clone(),
            members: ArcSwap::from_pointee(members),
            base: std::sync::Mutex::new(base),
            rr: AtomicUsize::new(0),
            connect_timeout: spec.connect_timeout,
            read_timeout: spec.read_timeout,
            retries: spec.retries,
            budget: budget::RetryBudget::new(spec.retry_budget_percent),
            spec: spec.clone(),
            waiting: AtomicUsize::new(0),
            queue: Arc::new(tokio::sync::Notify::new()),
            sticky_key: spec
                .sticky
                .as_ref()
                .map(|s| sticky::key(s.key_file.as_deref())),
            shadow: Default::default(),
        }
    }

    /// The token of a sticky upstream's backend ([`sticky::token`]); `None` when the
    /// upstream is not sticky or no token could be made.
    pub fn sticky_token<'s>(&self, slot: &'s Slot) -> Option<&'s str> {
        let key = self.sticky_key.as_ref()?;
        let t = slot
            .sticky_token
            .get_or_init(|| sticky::token(key, &self.name, &slot.addr));
        (!t.is_empty()).then_some(t.as_str())
    }

    /// [`Pool::select`], waiting in the upstream's queue (FIFO, at most `max_pending`, for
    /// at most `queue_timeout`) while every usable backend is at its `max_connections`.
    pub async fn select_queued(&self, hash: u64, tried: u64) -> Result<Pick, NoBackend> {
        self.select_queued_for(None, hash, tried).await
    }

    /// [`Pool::select_queued`] for a request pinned to the backend at `pin` (a sticky
    /// cookie's): that one while it is usable, has room and was not tried, else the
    /// configured algorithm's choice.
    pub async fn select_queued_for(
        &self,
        pin: Option<usize>,
        hash: u64,
        tried: u64,
    ) -> Result<Pick, NoBackend> {
        if let Some(p) = pin.and_then(|i| self.pinned(i, tried)) {
            return Ok(p);
        }
        if let Some(p) = self.select(hash, tried) {
            return Ok(p);
        }
        if !self.all_capped(tried) {
            return Err(NoBackend::None);
        }
        if self.waiting.fetch_add(1, Relaxed) >= self.spec.max_pending as usize {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(NoBackend::QueueFull);
        }
        let _place = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + self.spec.queue_timeout;
        loop {
            let freed = self.queue.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.select(hash, tried) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NoBackend::QueueTimeout);
            }
        }
    }

    /// The backend at `idx` if a request may go there now. Slow start does not hold back a
    /// client already bound to it.
    fn pinned(&self, idx: usize, tried: u64) -> Option<Pick> {
        let m = self.members.load();
        let slot = m.slots.get(idx)?;
        if tried & bit(idx) != 0 || !slot.usable() {
            return None;
        }
        Pick::new(slot, &self.queue)
    }

    /// Whether some backend would take the request but for its cap.
    fn all_capped(&self, tried: u64) -> bool {
        self.members
            .load()
            .slots
            .iter()
            .any(|s| tried & bit(s.index) == 0 && s.usable() && !s.has_room())
    }

    /// Choose a usable backend. `hash` is the request's key for consistent hashing (ignored by
    /// the other algorithms). `tried` is a bitmask of slot indices (mod 64) that already failed
    /// for this request, so a retry lands elsewhere.
    pub fn select(&self, hash: u64, tried: u64) -> Option<Pick> {
        let m = self.members.load();
        let mut skip = tried;
        let mut ramping = None;
        // a capped backend filled up between the choice and the count, or a backend in its
        // slow start passed on this request: choose again
        for _ in 0..m.slots.len().max(1) {
            let Some(idx) = self.choose(&m, hash, skip) else {
                break;
            };
            if !self.admits(&m.slots[idx]) {
                ramping.get_or_insert(idx);
                skip |= bit(idx);
                continue;
            }
            match Pick::new(&m.slots[idx], &self.queue) {
                Some(p) => return Some(p),
                None => skip |= bit(idx),
            }
        }
        // nothing else would take it: a ramping backend does after all
        ramping.and_then(|idx| Pick::new(&m.slots[idx], &self.queue))
    }

    /// Slow start: a backend back for `t` of the `slow_start` window takes this request
    /// with probability t / window (at least a tenth), as Envoy ramps a host's weight.
    fn admits(&self, slot: &Slot) -> bool {
        let window = self.spec.slow_start.as_millis() as u64;
        let since = slot.back_since.load(Relaxed);
        if window == 0 || since == 0 {
            return true;
        }
        let t = now_ms().saturating_sub(since);
        if t >= window {
            slot.back_since.store(0, Relaxed);
            return true;
        }
        let share = (t * 1000 / window).max(100);
        fastrand_usize() as u64 % 1000 < share
    }

    fn choose(&self, m: &Members, hash: u64, tried: u64) -> Option<usize> {
        let idx = match self.selection {
            Selection::RoundRobin => {
                let start = self.rr.fetch_add(1, Relaxed);
                select::from_wheel(m, start, tried)
            }
            Selection::Random => {
                let start = fastrand_usize();
                select::from_wheel(m, start, tried)
            }
            Selection::LeastConnections => {
                let start = self.rr.fetch_add(1, Relaxed);
                select::least_loaded(m, start, tried)
            }
            Selection::PowerOfTwo => {
                select::power_of_two(m, fastrand_usize(), fastrand_usize(), tried)
            }
            Selection::ConsistentHash => select::from_ring(m, hash, tried),
        }?;
        Some(idx)
    }

    /// Replace the membership (DNS discovery). Unchanged backends keep their state.
    pub fn set_backends(&self, specs: &[BackendSpec]) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = specs.to_vec();
        self.refresh();
    }

    /// Rebuild the membership from the base list and the operator's changes.
    pub fn refresh(&self) {
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.adopt(&self.members.load(), &base);
    }

    /// Take over the backends of `old` (a pool of the configuration this one replaces):
    /// those at the same address keep their slots or state, so a reload reconnects nothing
    /// and forgets no health verdict.
    pub fn carry_over(&self, old: &Pool) {
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.adopt(&old.members.load(), &base);
    }

    fn adopt(&self, old: &Members, base: &[BackendSpec]) {
        let m = Members::rebuild(old, &live::apply(&self.name, base));
        apply_states(&self.name, &m);
        self.members.store(Arc::new(m));
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.members.load().slots.clone()
    }

    /// Find a backend by its `ip:port` label, for drain and undrain.
    pub fn slot_by_label(&self, label: &str) -> Option<Arc<Slot>> {
        self.members
            .load()
            .slots
            .iter()
            .find(|s| s.label == label)
            .cloned()
    }
}

/// Set each slot's drain and maintenance flags from the operator's state.
fn apply_states(upstream: &str, m: &Members) {
    for s in &m.slots {
        let st = live::state_of(upstream, &s.addr);
        s.drained.store(st != live::AdminState::Ready, Relaxed);
        s.maint.store(st == live::AdminState::Maint, Relaxed);
    }
}

/// Run `task` for every pool of the configuration in force that `wanted` selects, each on
/// its own tokio task, until shutdown: the shape of each per-pool background service (health
/// checks, discovery). A reload that replaces pools stops the tasks of the old ones and
/// starts tasks for the new ones.
pub async fn per_pool<F, Fut>(
    mut shutdown: pingora_core::server::ShutdownWatch,
    wanted: fn(&Pool) -> bool,
    task: F,
) where
    F: Fn(Arc<Pool>, pingora_core::server::ShutdownWatch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut pools = live::subscribe();
    let mut running: Vec<(Arc<Pool>, tokio::task::JoinHandle<()>)> = Vec::new();
    loop {
        let current = pools.borrow_and_update().clone();
        running.retain(|(p, t)| {
            let keep = current.iter().any(|c| Arc::ptr_eq(c, p));
            if !keep {
                t.abort();
            }
            keep
        });
        for p in current.iter().filter(|p| wanted(p)) {
            if !running.iter().any(|(r, _)| Arc::ptr_eq(r, p)) {
                running.push((p.clone(), tokio::spawn(task(p.clone(), shutdown.clone()))));
            }
        }
        tokio::select! {
            r = pools.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, t) in running {
        let _ = t.await;
    }
}

#[inline]
pub fn bit(index: usize) -> u64 {
    1u64 << (index % 64)
}

/// A cheap thread-local xorshift; selection needs speed, not cryptographic quality.
pub fn fastrand_usize() -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            (t ^ (&t as *const u64 as u64)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x as usize
    })
}

/// All pools of a config, by index and name.
#[derive(Default, Clone)]
pub struct Upstreams {
    pub pools: Vec<Arc<Pool>>,
}

impl Upstreams {
    pub fn new(specs: &[UpstreamSpec]) -> Upstreams {
        Upstreams {
            pools: specs.iter().map(|s| Arc::new(Pool::new(s))).collect(),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}
