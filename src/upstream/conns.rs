//! Idle upstream connections of the HTTP/1 fast path ([`crate::http::fast`]), per thread.
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

use std::cell::RefCell;
use std::collections::HashMap;
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
struct ThreadPool {
    by_addr: HashMap<SocketAddr, Vec<IdleConn>, ahash::RandomState>,
    last_sweep: Option<Instant>,
    sweeper: bool,
}

thread_local! {
    static POOL: RefCell<ThreadPool> = RefCell::new(ThreadPool::default());
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
        let mut p = p.borrow_mut();
        let now = Instant::now();
        let list = p.by_addr.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) < c.max_idle && still_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    })
}

/// Keep `stream` for the next request to `addr`, up to `max` idle connections per address
/// and thread.
pub fn checkin(addr: SocketAddr, stream: TcpStream, max_idle: Duration, max: usize) {
    let start_sweeper = POOL.with(|p| {
        let mut p = p.borrow_mut();
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
    });
    if start_sweeper {
        // Sweeps this thread's pool when requests stop coming (checkin sweeps otherwise).
        tokio::spawn(async {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let more = POOL.with(|p| {
                    let mut p = p.borrow_mut();
                    let now = Instant::now();
                    p.last_sweep = Some(now);
                    sweep(&mut p, now);
                    !p.by_addr.is_empty()
                });
                if !more {
                    POOL.with(|p| p.borrow_mut().sweeper = false);
                    return;
                }
            }
        });
    }
}

fn sweep(p: &mut ThreadPool, now: Instant) {
    p.by_addr.retain(|_, list| {
        list.retain(|c| now.duration_since(c.since) < c.max_idle && still_open(&c.stream));
        !list.is_empty()
    });
}

/// Idle connections this thread holds, for tests and the status page.
pub fn idle_here() -> usize {
    POOL.with(|p| p.borrow().by_addr.values().map(Vec::len).sum())
}
