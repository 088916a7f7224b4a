//! Handshake pacing: on each worker thread, at most one TLS handshake starts per turn of its
//! event loop.
//!
//! A full handshake's first flight (key share and signature) takes a few hundred
//! microseconds of CPU in one poll; a proxied request on a connection that is already up
//! takes tens. The runtime runs ready tasks in order, so when clients reconnect in a burst,
//! every request of an established connection waited behind all the handshakes that became
//! ready before it: with 32 clients doing a handshake per request, wrk measured a p50 of
//! 6 ms from request to response, against nginx's 1.6 ms. nginx accepts one connection per
//! turn of its event loop (`multi_accept off`); HAProxy bounds it with `tune.maxaccept`.
//!
//! Handshakes wait in line, in the order they arrived on the thread. A pacer task lets the
//! head start, then yields: a yielded task runs again only after the tasks ready before it
//! have run and the I/O driver has been polled, so the work that became ready meanwhile
//! runs before the next handshake starts. A thread with nothing else to do starts one
//! per turn at the cost of a zero-timeout poll of the driver, so handshake throughput is
//! unchanged; a busy thread trades new connections' wait for established requests' latency,
//! as nginx does. A connection joins its thread's line once its ClientHello is in
//! (the TLS listeners' accept path).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Handshakes waiting for their turn now, over all threads (a gauge for the metrics).
static WAITING: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds handshakes spent waiting for their turn, summed (a counter for the metrics).
static WAITED_NS: AtomicU64 = AtomicU64::new(0);

/// Handshakes waiting for their turn now, and the seconds all of them have waited so far.
pub fn waiting() -> (u64, f64) {
    (WAITING.load(Relaxed), WAITED_NS.load(Relaxed) as f64 / 1e9)
}

/// One handshake in line, for the metrics: counted while it waits, however the wait ends.
struct InLine(Instant);

impl InLine {
    fn new() -> Self {
        WAITING.fetch_add(1, Relaxed);
        InLine(Instant::now())
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Relaxed);
        let ns = u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        WAITED_NS.fetch_add(ns, Relaxed);
    }
}

/// One thread's handshakes waiting to start, in arrival order, and whether its pacer runs.
#[derive(Default)]
struct Line {
    waiting: VecDeque<oneshot::Sender<()>>,
    pacing: bool,
}

thread_local! {
    /// The line of handshakes that arrived on this thread.
    static LINE: Arc<Mutex<Line>> = Arc::default();
}

/// Wait for this handshake's turn on its thread (see the module's comment).
pub async fn handshake_turn() {
    let line = LINE.with(Arc::clone);
    let (tx, rx) = oneshot::channel();
    let _in_line = InLine::new();
    {
        let Ok(mut l) = line.lock() else {
            // Never poisoned (nothing panics under it); if it were, start unpaced.
            return;
        };
        l.waiting.push_back(tx);
        if !l.pacing {
            l.pacing = true;
            tokio::spawn(pace(line.clone()));
        }
    }
    // An error is a pacer dropped with the runtime: nothing is left to wait for.
    let _ = rx.await;
}

/// Let the line's handshakes start, one per turn, until the line is empty. A waiter that
/// was dropped (Pingora's handshake timeout drops the future) takes no turn.
async fn pace(line: Arc<Mutex<Line>>) {
    loop {
        let next = match line.lock() {
            Ok(mut l) => match l.waiting.pop_front() {
                Some(tx) => tx,
                None => {
                    l.pacing = false;
                    return;
                }
            },
            Err(_) => return,
        };
        if next.send(()).is_ok() {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Ten handshakes queued together start in ten different turns, in the order they
    /// queued, while a task that counts turns runs beside them.
    #[test]
    fn one_start_per_turn_in_arrival_order() {
        let rt = runtime();
        let starts: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
        let turns = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let ticker = {
                let turns = turns.clone();
                tokio::spawn(async move {
                    loop {
                        turns.fetch_add(1, Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            };
            let waiters: Vec<_> = (0..10)
                .map(|i| {
                    let (starts, turns) = (starts.clone(), turns.clone());
                    tokio::spawn(async move {
                        handshake_turn().await;
                        if let Ok(mut s) = starts.lock() {
                            s.push((i, turns.load(Relaxed)));
                        }
                    })
                })
                .collect();
            for w in waiters {
                w.await.expect("waiter");
            }
            ticker.abort();
        });
        let starts = starts.lock().expect("starts").clone();
        let order: Vec<usize> = starts.iter().map(|s| s.0).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>(), "arrival order");
        for w in starts.windows(2) {
            assert!(w[1].1 > w[0].1, "two starts in one turn: {starts:?}");
        }
    }

    /// A waiter dropped before its start (Pingora's handshake timeout drops the future)
    /// gives up its place: the ones behind it still start, in order.
    #[test]
    fn a_dropped_waiter_leaves_the_line() {
        let rt = runtime();
        let starts: Arc<Mutex<Vec<usize>>> = Arc::default();
        rt.block_on(async {
            let spawn = |i: usize| {
                let starts = starts.clone();
                tokio::spawn(async move {
                    handshake_turn().await;
                    if let Ok(mut s) = starts.lock() {
                        s.push(i);
                    }
                })
            };
            let waiters: Vec<_> = (0..4).map(spawn).collect();
            // Every waiter is in line once each has been polled, and the first has started
            // (the line was empty).
            tokio::task::yield_now().await;
            waiters[1].abort();
            waiters[2].abort();
            let mut done = Vec::new();
            for (i, w) in waiters.into_iter().enumerate() {
                if w.await.is_ok() {
                    done.push(i);
                }
            }
            assert_eq!(done, vec![0, 3], "the aborted ones did not finish");
        });
        assert_eq!(*starts.lock().expect("starts"), vec![0, 3]);
    }
}
