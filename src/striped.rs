//! Counters striped over threads: each thread adds to its own cache line, a reader sums them.
//!
//! Every request bumps a handful of counters: its route's requests, bytes and duration
//! histogram, its backend's requests and latency, the process's in-flight count. Kept as one
//! atomic each, every increment on one core invalidates the line in every other core's cache,
//! so with many threads serving one hot route the line moves between cores on every request
//! (tens of nanoseconds each, and a `compare_exchange` loop in a shared float sum retries
//! under contention). Striped, a thread writes only its own stripe, which stays in its cache;
//! the cost moves to the reader (a scrape of `/metrics` or the status API), which adds up the
//! stripes, a rare event.
//!
//! The stripe count is a power of two fixed once at start ([`init`]): the worker thread
//! count, at most the cores the process may use and at most [`MAX_STRIPES`]. Threads take
//! stripes in the order they first count something, so the workers of one runtime get
//! distinct stripes; past the stripe count threads share them, and increments stay atomic,
//! so sharing costs speed, never counts. One thread therefore does not need to own a stripe:
//! a task moved to another thread by work stealing simply counts there.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// At most this many stripes, whatever the thread count: a route's block is 256 bytes per
/// stripe, so a 10,000-route configuration holds 39 MiB of counters at 16 stripes.
pub const MAX_STRIPES: usize = 16;

static STRIPES: OnceLock<usize> = OnceLock::new();
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

/// Fix the stripe count for `threads` worker threads (before anything is counted; a later
/// call changes nothing). Without a call, the cores the process may use decide.
pub fn init(threads: usize) {
    let _ = STRIPES.set(count_for(threads));
}

fn count_for(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads
        .min(cores)
        .clamp(1, MAX_STRIPES)
        .next_power_of_two()
        .min(MAX_STRIPES)
}

/// The stripe count in force.
pub fn stripes() -> usize {
    *STRIPES.get_or_init(|| count_for(usize::MAX))
}

thread_local! {
    /// This thread's stripe, as an index masked to the stripe count once.
    static MINE: usize = NEXT_THREAD.fetch_add(1, Relaxed) & (stripes() - 1);
}

/// The calling thread's stripe.
#[inline]
pub fn mine() -> usize {
    MINE.with(|i| *i)
}

/// A value on cache lines of its own (two: the adjacent-line prefetcher of x86 cores pulls
/// lines in pairs, so one line of padding would still let neighbours disturb each other).
/// For a shared atomic that is written per request next to fields that are only read: the
/// readers then miss their cache only when the fields they read change.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One `T` per stripe; the calling thread gets its own with [`Striped::mine`], a reader
/// visits all of them with [`Striped::each`].
pub struct Striped<T> {
    cells: Box<[Padded<T>]>,
}

impl<T> std::fmt::Debug for Striped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Striped({} stripes)", self.cells.len())
    }
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped {
            cells: (0..stripes()).map(|_| Padded(T::default())).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// The calling thread's stripe.
    #[inline]
    pub fn mine(&self) -> &T {
        // every block has `stripes()` cells, a power of two that never changes once read, and
        // `mine()` is already below it; the mask (not a modulo: a division costs more than the
        // rest of an increment) keeps the index in range whatever happens
        &self.cells[mine() & (self.cells.len() - 1)].0
    }

    /// Every stripe, for a reader summing them.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.cells.iter().map(|c| &c.0)
    }
}

/// A gauge that goes up on one thread and down on another: each stripe may go negative,
/// their sum is the value.
#[derive(Default)]
pub struct Gauge(Striped<AtomicI64>);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.mine().fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.mine().fetch_sub(1, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0
            .each()
            .map(|c| c.load(Relaxed))
            .fold(0, i64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn the_count_is_a_power_of_two_within_the_cap() {
        for threads in [0, 1, 2, 3, 5, 16, 17, 64, 1000] {
            let n = count_for(threads);
            assert!(n.is_power_of_two() && n <= MAX_STRIPES, "{threads}: {n}");
        }
        assert_eq!(count_for(1), 1);
    }

    #[test]
    fn sums_are_exact_across_threads_and_gauges_balance_across_them() {
        let c: Arc<Striped<AtomicU64>> = Arc::new(Striped::default());
        let g = Arc::new(Gauge::default());
        let mut joins = Vec::new();
        for t in 0..8u64 {
            let (c, g) = (c.clone(), g.clone());
            joins.push(std::thread::spawn(move || {
                for _ in 0..10_000 {
                    c.mine().fetch_add(t + 1, Relaxed);
                    g.inc();
                }
            }));
        }
        for j in joins {
            j.join().expect("counting thread");
        }
        let sum: u64 = c.each().map(|s| s.load(Relaxed)).sum();
        assert_eq!(sum, 10_000 * (1..=8).sum::<u64>());
        assert_eq!(g.get(), 80_000);
        // the decrements come from threads other than the ones that incremented
        let g2 = g.clone();
        std::thread::spawn(move || (0..80_000).for_each(|_| g2.dec()))
            .join()
            .expect("decrementing thread");
        assert_eq!(g.get(), 0);
    }
}
