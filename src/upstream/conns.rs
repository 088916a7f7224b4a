//! Idle upstream connections of the HTTP/1 fast path ([`crate::http::fast`]).
//!
//! Pingora's pool (used by the general path) spawns a watcher task each time a connection
//! goes back into it, and its reuse rate fell to 99.8% under keep-alive load. Here one
//! process-wide table keeps stacks of plain TCP connections per backend address, so a
//! checkout is a short critical section (a hash lookup and a pop) with no syscall. (Per-thread
//! tables were tried: with work stealing a request may start on one thread and end on
//! another, and each thread then warms its own set of connections.) A
//! connection the backend closed while it sat idle is found at checkout from the readiness
//! the reactor already recorded (a FIN makes the socket readable): `try_read` then returns
//! end-of-stream or stray bytes, and the connection is dropped. Connections idle longer than
//! the upstream's `idle_timeout` are dropped at checkout and by a sweep at most once a
//! second, so a backend never sees us hold a socket it considers gone for long.
//!
//! Most recently used first: under light load the same few connections stay warm and the
//! rest age out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

struct IdleConn {
    stream: TcpStream,
    since: Instant,
    /// How long this connection may stay idle (its upstream's `idle_timeout`).
    max_idle: Duration,
}

#[derive(Default)]
struct Table {
    by_addr: HashMap<SocketAddr, Vec<IdleConn>, ahash::RandomState>,
    last_sweep: Option<Instant>,
    sweeper: bool,
}

static POOL: once_cell::sync::Lazy<Mutex<Table>> =
    once_cell::sync::Lazy::new(|| Mutex::new(Table::default()));

/// The table, even if a holder panicked (its state is a cache: any content is valid).
fn pool() -> std::sync::MutexGuard<'static, Table> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
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
    let mut p = pool();
    let now = Instant::now();
    let list = p.by_addr.get_mut(&addr)?;
    while let Some(c) = list.pop() {
        if now.duration_since(c.since) < c.max_idle && still_open(&c.stream) {
            return Some(c.stream);
        }
    }
    None
}

/// Keep `stream` for the next request to `addr`, up to `max` idle connections per address.
pub fn checkin(addr: SocketAddr, stream: TcpStream, max_idle: Duration, max: usize) {
    let start_sweeper = {
        let mut p = pool();
        let now = Instant::now();
        if p.last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            p.last_sweep = Some(now);
            sweep(&mut p, now);
        }
        let list = p.by_addr.entry(addr).or_default();
        if list.len() >= max {
            // the oldest goes; the one just used is the warmest
            list.remove(0);
        }
        list.push(IdleConn {
            stream,
            since: now,
            max_idle,
        });
        !std::mem::replace(&mut p.sweeper, true)
    };
    if start_sweeper {
        // Sweeps when requests stop coming (checkin sweeps otherwise).
        tokio::spawn(async {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let mut p = pool();
                let now = Instant::now();
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

fn sweep(p: &mut Table, now: Instant) {
    p.by_addr.retain(|_, list| {
        list.retain(|c| now.duration_since(c.since) < c.max_idle && still_open(&c.stream));
        !list.is_empty()
    });
}

/// Idle connections held, for tests and the status page.
pub fn idle() -> usize {
    pool().by_addr.values().map(Vec::len).sum()
}
