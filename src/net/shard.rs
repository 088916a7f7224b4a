//! One listening socket per worker thread (`SO_REUSEPORT`), for plaintext listeners when each
//! thread runs its own runtime (`work_stealing: false`, `threads` above one).
//!
//! With one socket, the listener's one accept loop hands each connection to a thread picked
//! at random, and a connection given to another thread costs an eventfd write and that
//! thread's wake-up: 12% more CPU per connection on a connection-per-request load at two
//! threads (benches/SCALING.md). With a socket per thread the kernel spreads connections over
//! the sockets by their addresses' hash, and each thread serves what it accepted, as nginx's
//! `reuseport` and HAProxy's `shards by-thread` do.
//!
//! The sockets go through Pingora's fd table under the address (the first) and
//! `ADDR#i` (the others), so an upgrade hands every one over; the new process accepts on all
//! it inherited, even if it has fewer threads, since closing a member of a `SO_REUSEPORT`
//! group resets the connections queued on it.

use pingora_core::server::ListenFds;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Sockets per plaintext listener; 1 unless [`per_thread`] says otherwise.
static SOCKETS: AtomicUsize = AtomicUsize::new(1);

/// Give each plaintext listener `threads` sockets when every worker thread has its own
/// runtime (no work stealing): with work stealing the threads share one reactor and one run
/// queue, and a socket per thread would change nothing.
pub fn per_thread(threads: usize, work_stealing: bool) {
    SOCKETS.store(if work_stealing { 1 } else { threads.max(1) }, Relaxed);
}

/// The fd-table key of socket `i` of `addr`.
pub fn key(addr: SocketAddr, i: usize) -> String {
    if i == 0 {
        addr.to_string()
    } else {
        format!("{addr}#{i}")
    }
}

/// The most sockets a listener's group is expected to hold: more than any machine's thread
/// count. Every key up to it is declared to Pingora as claimed (see [`claimed`]).
const GROUP_MAX: usize = 1024;

/// The fd-table keys a plaintext listener on `addr` claims: every socket its group may have,
/// so that Pingora's start-up, which closes inherited sockets no service claims (a listener
/// removed by the upgrade), keeps those of an old process with more threads too.
pub fn claimed(addr: SocketAddr) -> Vec<String> {
    (0..GROUP_MAX.max(SOCKETS.load(Relaxed)))
        .map(|i| key(addr, i))
        .collect()
}

/// Whether `key` names the first socket of its address (the one a single-socket listener
/// has too).
pub fn first(key: &str) -> bool {
    !key.contains('#')
}

/// The listening sockets of `addr`: every one the old process handed over, then new ones up
/// to one per thread. Extra sockets that cannot be bound (an inherited first socket without
/// `SO_REUSEPORT`, from a version that bound one) leave the listener with fewer, logged.
pub async fn sockets(
    name: &str,
    addr: SocketAddr,
    fds: Option<&ListenFds>,
    defer_accept: bool,
) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
    let want = SOCKETS.load(Relaxed);
    let mut out = Vec::with_capacity(want);
    loop {
        let i = out.len();
        let k = key(addr, i);
        let inherited = fds.is_some_and(|f| f.lock().get(&k).is_some());
        if !inherited && i >= want {
            break;
        }
        match super::listen::bind(addr, &k, fds, want > 1, defer_accept).await {
            Ok(l) => out.push((k, l.into_std()?)),
            // a socket added to the group: serve with those there are
            Err(e) if i > 0 && !inherited => {
                log::warn!("{name}: {i} of {want} sockets on {addr} (one per thread): {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Run `start(key, socket)` for each socket on a worker thread of its own: a task hops
/// between the service's threads (Pingora hands out a random thread's runtime, never thread
/// *i*'s) and leaves a socket on each thread it lands on first. Sockets beyond the thread
/// count, and any left after many hops, go to whichever thread the task is on.
pub fn place<F>(mut socks: Vec<(String, std::net::TcpListener)>, start: F)
where
    F: Fn(String, std::net::TcpListener) + Send + Sync + 'static,
{
    let threads = SOCKETS.load(Relaxed).max(1);
    let hops_max = 32 * threads;
    socks.reverse();
    hop(
        socks,
        Vec::new(),
        0,
        threads,
        hops_max,
        std::sync::Arc::new(start),
    );
}

fn hop<F>(
    mut socks: Vec<(String, std::net::TcpListener)>,
    mut seen: Vec<std::thread::ThreadId>,
    hops: usize,
    threads: usize,
    hops_max: usize,
    start: std::sync::Arc<F>,
) where
    F: Fn(String, std::net::TcpListener) + Send + Sync + 'static,
{
    pingora_runtime::current_handle().spawn(async move {
        let here = std::thread::current().id();
        let fresh = !seen.contains(&here);
        if fresh || seen.len() >= threads || hops >= hops_max {
            seen.push(here);
            if let Some((k, l)) = socks.pop() {
                start(k, l);
            }
        }
        if !socks.is_empty() {
            hop(socks, seen, hops + 1, threads, hops_max, start);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_address_and_the_socket() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(key(a, 0), "127.0.0.1:8080");
        assert_eq!(key(a, 3), "127.0.0.1:8080#3");
        assert!(first(&key(a, 0)) && !first(&key(a, 1)));
    }
}
