//! A connect that this machine refuses, not the backend, for every engine.
//!
//! Opening a backend connection needs a descriptor, a local port and socket memory. When the
//! proxy's open-file limit is reached (a burst of clients, each with a request in flight,
//! needs two descriptors per request), `socket()` fails with EMFILE before anything reaches
//! the backend. nginx answers 502 then, and counts it against the backend in `max_fails`;
//! HAProxy avoids it by deriving its `maxconn` from the limit. Here such a failure
//! ([`crate::upstream::local::refused`]) blames no backend (no passive health failure, no
//! outlier ejection, no retry used up, the backend not skipped) and the request waits
//! instead: it connects again after a short pause ([`Shortage::next`]), or takes a pooled
//! connection that came back meanwhile, until the upstream's `connect_timeout` has passed
//! since the first refusal.
//! Then the answer is 503 with Retry-After ([`super::answer::Failure::Overloaded`]), the
//! proxy's own overload, not a 502 that would name the backend as broken.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Waits per request at most, whatever `connect_timeout` allows: the general engine's
/// Pingora loop counts each as a try (`pingora.max_retries` is raised by this).
pub const MAX_WAITS: u32 = 32;

/// How long a request waits where the engine knows no `connect_timeout`.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(1);

/// The first pause; each doubles it, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// One request's waits for a connect this machine refused.
#[derive(Clone, Copy, Debug)]
pub struct Shortage {
    since: Instant,
    waits: u32,
}

impl Default for Shortage {
    fn default() -> Self {
        Self::new()
    }
}

impl Shortage {
    /// The first refusal, now.
    pub fn new() -> Self {
        Shortage {
            since: Instant::now(),
            waits: 0,
        }
    }

    /// The pause before connecting again after another refusal, or `None` when the request
    /// has waited `limit` (the upstream's `connect_timeout`) or [`MAX_WAITS`] times: then it is
    /// answered 503.
    pub fn next(&mut self, limit: Duration) -> Option<Duration> {
        let left = limit.checked_sub(self.since.elapsed())?;
        if left.is_zero() || self.waits >= MAX_WAITS {
            return None;
        }
        let pause = FIRST_PAUSE
            .saturating_mul(1 << self.waits.min(8))
            .min(LONGEST_PAUSE);
        self.waits += 1;
        Some(pause.min(left))
    }

    /// Waits so far.
    pub fn waits(&self) -> u32 {
        self.waits
    }
}

/// Seconds since the first warning's epoch at which the last warning was logged.
static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
/// Refusals since the last warning.
static SINCE_WARNED: AtomicU64 = AtomicU64::new(0);

/// Count a refusal (`stepstone_local_connect_refusals_total`) and log it: at most one
/// warning a second, with the count of those it stands for (a burst at the limit refuses
/// thousands of connects a second).
pub fn warn(listener: &str, backend: &str, e: &std::io::Error) {
    crate::observability::LOCAL_CONNECT_REFUSALS.inc();
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let n = SINCE_WARNED.fetch_add(1, Relaxed) + 1;
    let last = LAST_WARNED.load(Relaxed);
    if last >= now
        || LAST_WARNED
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    SINCE_WARNED.fetch_sub(n, Relaxed);
    log::warn!(
        "{listener}: connect to backend {backend} refused by this machine ({e}): waiting for a \
         descriptor ({n} such refusal(s) since the last warning; raise the open-file limit, \
         `pingora.max_open_files`)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_stop_at_the_limit_or_the_count() {
        let mut s = Shortage::new();
        let limit = Duration::from_secs(3600);
        let pauses: Vec<u64> = (0..7)
            .map(|_| s.next(limit).expect("within the limit").as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 100, 100]);
        while s.next(limit).is_some() {}
        assert_eq!(s.waits(), MAX_WAITS);

        let mut s = Shortage::new();
        assert_eq!(s.next(Duration::ZERO), None);
        let mut s = Shortage::new();
        let p = s.next(Duration::from_millis(3)).expect("time left");
        assert!(p <= Duration::from_millis(3), "{p:?}");
    }
}
