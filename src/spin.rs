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
//! a zero timeout) until no request has completed for one window. A tunnel's relayed chunk
//! (L4, WebSocket, CONNECT) counts as a completed request. When requests are further
//! apart than the window, the thread blocks as before, so a quiet proxy costs nothing: the
//! spin starts only after a request that came less than a window after the previous pause.
//!
//! With a nap (`pingora.busy_poll_nap`), a poll that found nothing to do is followed by a
//! timed sleep instead of the next poll. Spinning keeps the CPU from idling, but on a VM
//! whose two vCPUs share a core it also slows the other one, where the origin and the load
//! run (session 15). A timed sleep wakes only its own CPU when it ends, and what arrives
//! meanwhile wakes nobody: the events wait in the epoll ready list for the next poll, which
//! finds them together. On the 2-core bench host, GET /1k's sleeps fell from 0.19 to 0.04 per
//! request (HAProxy's 0.04), the origin's CPU per request by 8% and the proxy's own by 7%
//! (benches/RESULTS.md, 2026-12-07 13:52 UTC).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The spin window in nanoseconds (`pingora.busy_poll`), set once at start; 0: off.
static WINDOW_NS: AtomicU64 = AtomicU64::new(0);

/// The nap after a poll that found nothing, in nanoseconds (`pingora.busy_poll_nap`); 0: none.
static NAP_NS: AtomicU64 = AtomicU64::new(0);

/// A poll that found no I/O and ran no task takes a zero-timeout `epoll_wait` and a pass
/// through the scheduler, about 1-2µs on the bench host; one that moved bytes takes longer
/// (a read and a write on loopback are 5µs and more), and is followed by another poll at once.
const IDLE_POLL: Duration = Duration::from_micros(5);

/// Set the spin window and nap of every worker thread (before they serve anything).
pub fn configure(window: Duration, nap: Duration) {
    let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    WINDOW_NS.store(ns(window), Relaxed);
    NAP_NS.store(ns(nap), Relaxed);
}

fn window() -> Duration {
    Duration::from_nanos(WINDOW_NS.load(Relaxed))
}

fn nap() -> Duration {
    Duration::from_nanos(NAP_NS.load(Relaxed))
}

thread_local! {
    /// Requests completed and tunnel chunks relayed on this thread (wrapping).
    static DONE: Cell<u64> = const { Cell::new(0) };
    /// The spinner's waker while it waits for the next request.
    static PARKED: Cell<Option<Waker>> = const { Cell::new(None) };
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// A request completed on this thread, or a tunnel relayed a chunk. Called by every
/// request's record and by the relay.
#[inline]
pub fn active() {
    DONE.with(|d| d.set(d.get().wrapping_add(1)));
    if let Some(w) = PARKED.with(Cell::take) {
        w.wake();
    }
}

/// Progress seen on this thread so far (for the tests of the callers of [`active`]).
#[cfg(test)]
pub(crate) fn progress() -> u64 {
    DONE.with(Cell::get)
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
            rt.spawn(spin(window, nap(), |s| {
                log::trace!(
                    "busy poll of {:?}: {} polls, {} naps",
                    s.length,
                    s.polls,
                    s.naps
                )
            }));
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

/// What one spin did (for the tests and the trace log).
#[derive(Debug, Clone, Copy)]
struct Spun {
    length: Duration,
    polls: u32,
    naps: u32,
}

/// `spun`: told what each spin did.
async fn spin(window: Duration, nap: Duration, spun: impl Fn(Spun)) {
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
        let (mut polls, mut naps) = (0u32, 0u32);
        loop {
            // with a nap, when this poll began: a short one found nothing to do
            let poll_began = (!nap.is_zero()).then(Instant::now);
            tokio::task::yield_now().await;
            polls = polls.wrapping_add(1);
            let done = DONE.with(Cell::get);
            if done != seen {
                seen = done;
                quiet_since = None;
                continue;
            }
            let mut now = Instant::now();
            if poll_began.is_some_and(|t| now.duration_since(t) < IDLE_POLL) {
                // the kernel may lengthen it by the thread's timer slack (50µs by default)
                std::thread::sleep(nap);
                naps = naps.wrapping_add(1);
                now = Instant::now();
            }
            match quiet_since {
                None => quiet_since = Some(now),
                Some(t) if now.duration_since(t) >= window => break,
                Some(_) => {}
            }
        }
        paused_at = Instant::now();
        spun(Spun {
            length: paused_at - began,
            polls,
            naps,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Run `f` on a runtime of one thread, as a worker without work stealing has.
    fn on_worker_runtime<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// Dense requests start a spin that lasts until a window passes without one; sparse
    /// requests never start one; a spinning thread keeps running its other tasks and timers.
    #[test]
    fn spins_only_while_requests_are_dense() {
        on_worker_runtime(async {
            let window = Duration::from_millis(100);
            let spins: Rc<Cell<Vec<Duration>>> = Rc::default();
            let log = spins.clone();
            tokio::task::spawn_local(spin(window, Duration::ZERO, move |d| {
                assert_eq!(d.naps, 0, "a spin without a nap napped");
                let mut v = log.take();
                v.push(d.length);
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

    /// With a nap, a poll that finds nothing is followed by a sleep of the nap's length
    /// rather than by the next poll at once; a poll that saw a request complete is not.
    #[test]
    fn a_poll_that_finds_nothing_is_followed_by_a_nap() {
        on_worker_runtime(async {
            let window = Duration::from_millis(60);
            let nap = Duration::from_millis(2);
            let spins: Rc<Cell<Vec<Spun>>> = Rc::default();
            let log = spins.clone();
            tokio::task::spawn_local(spin(window, nap, move |d| {
                let mut v = log.take();
                v.push(d);
                log.set(v);
            }));
            tokio::task::yield_now().await;
            active();
            tokio::task::yield_now().await;
            active();
            tokio::time::sleep(window * 3).await;
            let v = spins.take();
            assert_eq!(v.len(), 1, "one spin expected, got {v:?}");
            let s = v[0];
            // a window of quiet polls with a nap after each: about window / nap of them (a
            // nap lasts at least its length), where a spin without naps polls thousands of
            // times
            assert!(s.naps >= 1, "no nap in {s:?}");
            assert!(
                s.polls <= 2 * (window.as_millis() / nap.as_millis()) as u32,
                "polled {} times in {:?} with naps of {nap:?}: {s:?}",
                s.polls,
                s.length
            );
            assert!(s.length >= window, "spin of {:?} ended early", s.length);
        });
    }
}
