//! Idle upstream connections of the HTTP/1 lean engine, per thread.
//!
//! Pingora's pool (used by the general path) takes a lock and spawns a watcher task each time
//! a connection goes back into it, and its reuse rate fell to 99.8% under keep-alive load.
//! Here each runtime thread keeps its own stacks of plain TCP connections per backend
//! address, so a checkout is a hash lookup and a pop with no lock and no syscall. Per thread
//! also because a socket's readiness is reported by the reactor of the runtime it was
//! registered with: shared across Pingora's services (each has its own runtime), a
//! connection made on one would be driven by another's thread, two wake-ups per event (one
//! process-wide table was tried and cost a third of the throughput). Like nginx's per-worker
//! upstream keepalive, each thread warms its own connections. A
//! connection the backend closed while it sat idle is found at checkout from the readiness
//! the reactor already recorded (a FIN makes the socket readable): `try_read` then returns
//! end-of-stream or stray bytes, and the connection is dropped. Connections idle longer than
//! the upstream's `idle_timeout` are dropped at checkout and by a sweep at most once a
//! second, so a backend never sees us hold a socket it considers gone for long.
//!
//! Most recently used first: under light load the same few connections stay warm and the
//! rest age out.
//!
//! Size: `upstream_keepalive_pool_size` means what it means to Pingora's pool, the idle
//! connections kept in all; each thread keeps its share, across all backends, and evicts the
//! oldest when full. The sweeper task holds its thread's pool by reference, so it sweeps the
//! right pool whichever worker runs it (a work-stealing runtime may move it).

use crate::clock::coarse_ms;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;

struct IdleConn {
    stream: TcpStream,
    /// When it went idle, on the coarse clock (ms).
    since: u64,
    /// How long this connection may stay idle, ms (its upstream's `idle_timeout`).
    max_idle: u64,
}

#[derive(Default)]
struct ThreadPool {
    by_addr: HashMap<SocketAddr, Vec<IdleConn>, ahash::RandomState>,
    /// Idle connections in all lists.
    total: usize,
    last_sweep: Option<u64>,
    sweeper: bool,
    /// In [`ALL`] already.
    listed: bool,
}

type Shared = Arc<Mutex<ThreadPool>>;

thread_local! {
    // Locked by its own thread, by its sweeper and, at the open-file limit, by [`shed`]:
    // uncontended in all but that case.
    static POOL: Shared = Shared::default();
}

/// Every thread's pool that has held a connection, for [`shed`]: the accept loop that runs
/// out of descriptors may be on another thread than the pools that hold them.
static ALL: Mutex<Vec<std::sync::Weak<Mutex<ThreadPool>>>> = Mutex::new(Vec::new());

fn lock(p: &Shared) -> MutexGuard<'_, ThreadPool> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often idle connections are checked for expiry, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether an idle connection is still usable: nothing arrived on it since it went idle.
/// No syscall unless the reactor saw it become readable.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // end of stream, or bytes no request asked for: unusable either way
        Ok(_) => false,
    }
}

/// An idle connection to `addr`, most recently used first.
pub fn checkout(addr: SocketAddr) -> Option<TcpStream> {
    POOL.with(|p| {
        let mut p = lock(p);
        let now = coarse_ms();
        let p = &mut *p;
        let list = p.by_addr.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            p.total -= 1;
            if fresh(&c, now) && still_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    })
}

/// Keep `stream` for the next request to `addr`, up to `max` idle connections in this
/// thread's pool. Ages are on the coarse clock ([`crate::clock`]): a connection may be
/// kept up to a tick (1-10 ms) past its `max_idle`, well inside any backend's own timeout.
pub fn checkin(addr: SocketAddr, stream: TcpStream, max_idle: Duration, max: usize) {
    if max == 0 {
        return;
    }
    let now = coarse_ms();
    let sweeper = POOL.with(|shared| {
        let mut p = lock(shared);
        if !std::mem::replace(&mut p.listed, true) {
            ALL.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(shared));
        }
        if p.last_sweep
            .is_none_or(|t| now.saturating_sub(t) >= SWEEP_EVERY.as_millis() as u64)
        {
            p.last_sweep = Some(now);
            sweep(&mut p, now);
        }
        if p.total >= max {
            evict_oldest(&mut p, addr);
        }
        p.by_addr.entry(addr).or_default().push(IdleConn {
            stream,
            since: now,
            max_idle: max_idle.as_millis().min(u64::MAX as u128) as u64,
        });
        p.total += 1;
        (!std::mem::replace(&mut p.sweeper, true)).then(|| shared.clone())
    });
    if let Some(shared) = sweeper {
        // Sweeps this thread's pool when requests stop coming (checkin sweeps otherwise).
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let mut p = lock(&shared);
                let now = coarse_ms();
                p.last_sweep = Some(now);
                sweep(&mut p, now);
                if p.by_addr.is_empty() {
                    p.sweeper = false;
                    return;
                }
            }
        });
    }
}

/// Close up to `n` idle connections, each pool's oldest first, whichever thread holds them;
/// how many were closed. For the accept loop at the open-file limit: an idle backend
/// connection is cheaper to give up than a client left unaccepted (nginx closes idle
/// connections likewise when it runs out of them).
pub fn shed(n: usize) -> usize {
    let pools: Vec<Shared> = ALL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    let mut gone = Vec::new();
    for shared in pools {
        let mut p = lock(&shared);
        while gone.len() < n {
            let oldest = p
                .by_addr
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .min_by_key(|(_, l)| l[0].since)
                .map(|(a, _)| *a);
            let Some(list) = oldest.and_then(|a| p.by_addr.get_mut(&a)) else {
                break;
            };
            gone.push(list.remove(0));
            p.total -= 1;
        }
    }
    // closed here, outside the pools' locks
    gone.len()
}

/// Make room for one: the oldest connection to `addr` goes (the one just used is the
/// warmest), else the oldest of another backend's.
fn evict_oldest(p: &mut ThreadPool, addr: SocketAddr) {
    let key = match p.by_addr.get(&addr) {
        Some(l) if !l.is_empty() => Some(addr),
        _ => p
            .by_addr
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .min_by_key(|(_, l)| l[0].since)
            .map(|(a, _)| *a),
    };
    if let Some(list) = key.and_then(|k| p.by_addr.get_mut(&k)) {
        list.remove(0);
        p.total -= 1;
    }
}

/// Whether `c` has been idle less than its `max_idle` at `now` (coarse ms).
fn fresh(c: &IdleConn, now: u64) -> bool {
    now.saturating_sub(c.since) < c.max_idle
}

fn sweep(p: &mut ThreadPool, now: u64) {
    let mut total = 0;
    p.by_addr.retain(|_, list| {
        list.retain(|c| fresh(c, now) && still_open(&c.stream));
        total += list.len();
        !list.is_empty()
    });
    p.total = total;
}

/// Idle connections this thread holds, for tests and the status page.
pub fn idle_here() -> usize {
    POOL.with(|p| lock(p).total)
}
