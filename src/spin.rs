//! Busy-polling of a worker thread's event loop while requests arrive densely.
//!
//! A worker thread with nothing to do blocks in `epoll_wait`. Whoever makes it runnable
//! again (the kernel, on behalf of the client's or the backend's write) has to wake that
//! thread, and when its CPU has gone idle that is an inter-processor interrupt; in a virtual
//! machine, an exit to the hypervisor on the waker's CPU. On a 2-core VM with the origin and
//! the load generator on the other core, the proxy slept 0.9 times per GET /1k and those
//! wake-ups cost the other core about 7 µs per request (origin 10.3 → 13.7 µs, wrk 6.0 →
//! 9.9 µs), which made it the bottleneck. HAProxy, which never went idle in that run, slept
//! 0.03 times per request.
//!
//! So while requests complete less than a window apart, the thread keeps polling its event
//! loop without blocking (a task that yields to the scheduler, which then checks for I/O with
//! a zero timeout) until no request has completed for one window. When requests are further
//! apart than the window, the thread blocks as before, so a quiet proxy costs nothing: the
//! spin starts only after a request that came less than a window after the previous pause.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The spin window in nanoseconds (`pingora.busy_poll`), set once at start; 0: off.
static WINDOW_NS: AtomicU64 = AtomicU64::new(0);

/// Set the spin window of every worker thread (before they serve anything).
pub fn set_window(window: Duration) {
    WINDOW_NS.store(window.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
}

fn window() -> Duration {
    Duration::from_nanos(WINDOW_NS.load(Relaxed))
}

thread_local! {
    /// Requests completed on this thread (wrapping).
    static DONE: Cell<u64> = const { Cell::new(0) };
    /// The spinner's waker while it waits for the next request.
    static PARKED: Cell<Option<Waker>> = const { Cell::new(None) };
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// A request completed on this thread. Called by every request's record.
#[inline]
pub fn active() {
    DONE.with(|d| d.set(d.get().wrapping_add(1)));
    if let Some(w) = PARKED.with(Cell::take) {
        w.wake();
    }
}

/// Start the spinner of this worker thread's runtime, once per thread, unless the window is
/// zero. Called by the threads that serve connections.
///
/// Only a runtime of its own per thread (`work_stealing: false`) has one: on a work-stealing
/// runtime the spinner would be moved between threads, away from the thread-local count it
/// watches, and would hold one worker busy while the connections' tasks are stolen by others
/// (whose upstream connection pools are not theirs).
pub fn here() {
    let window = window();
    if window.is_zero() || STARTED.with(|s| s.replace(true)) {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            rt.spawn(spin(window, |_| {}));
        }
    }
}

/// Wait until [`active`] runs on this thread.
async fn next_request() {
    let mut waiting = false;
    std::future::poll_fn(|cx| {
        if waiting && PARKED.with(|p| p.replace(None)).is_none() {
            // `active` took the waker
            return Poll::Ready(());
        }
        PARKED.with(|p| p.set(Some(cx.waker().clone())));
        waiting = true;
        Poll::Pending
    })
    .await
}

/// `spun`: told the length of each spin (for the tests).
async fn spin(window: Duration, spun: impl Fn(Duration)) {
    let mut paused_at = Instant::now();
    loop {
        next_request().await;
        if paused_at.elapsed() >= window {
            // sparse requests: blocking between them is cheaper than spinning
            paused_at = Instant::now();
            continue;
        }
        let began = Instant::now();
        let mut seen = DONE.with(Cell::get);
        let mut quiet_since: Option<Instant> = None;
        loop {
            tokio::task::yield_now().await;
            let done = DONE.with(Cell::get);
            if done != seen {
                seen = done;
                quiet_since = None;
                continue;
            }
            let now = Instant::now();
            match quiet_since {
                None => quiet_since = Some(now),
                Some(t) if now.duration_since(t) >= window => break,
                Some(_) => {}
            }
        }
        paused_at = Instant::now();
        spun(paused_at - began);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Dense requests start a spin that lasts until a window passes without one; sparse
    /// requests never start one; a spinning thread keeps running its other tasks and timers.
    #[test]
    fn spins_only_while_requests_are_dense() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let window = Duration::from_millis(100);
            let spins: Rc<Cell<Vec<Duration>>> = Rc::default();
            let log = spins.clone();
            tokio::task::spawn_local(spin(window, move |d| {
                let mut v = log.take();
                v.push(d);
                log.set(v);
            }));
            // sparse: each request comes more than a window after the last pause
            for _ in 0..3 {
                tokio::time::sleep(window * 2).await;
                active();
            }
            tokio::time::sleep(window * 3).await;
            assert_eq!(spins.take(), vec![], "sparse requests started a spin");

            // dense: the second request right after the first
            active();
            tokio::task::yield_now().await;
            active();
            // while it spins, timers still fire on this thread (the sleep above did)
            let mut requests = 1;
            let until = Instant::now() + window * 2;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
                active();
                requests += 1;
            }
            assert!(requests >= 3, "only {requests} requests while spinning");
            tokio::time::sleep(window * 4).await;
            let v = spins.take();
            assert_eq!(v.len(), 1, "one spin expected, got {v:?}");
            // it lasted from the second request to a window after the last one
            assert!(v[0] >= window * 2, "spin of {:?} ended early", v[0]);
            assert!(PARKED.with(|p| {
                let w = p.take();
                let parked = w.is_some();
                p.set(w);
                parked
            }));
        });
    }
}
