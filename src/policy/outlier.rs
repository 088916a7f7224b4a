//! Outlier detection: a backend that fails requests in a row is taken out of selection for
//! a while, as Envoy's outlier detection and HAProxy's `observe layer7` do. Active health
//! checks find a backend that is down; this finds one that is up but answering 500 to
//! everything, resetting or timing out. Every engine reports each outcome here (HTTP on both
//! engines, and connects at L4); the decision is this module's alone.
//!
//! - A failure is a 5xx answer from the backend, a connect failure, a reset, a malformed
//!   response or a timeout. Anything else resets the count.
//! - `consecutive_failures` in a row eject the backend for `base_ejection_time`, doubled on
//!   each re-ejection, up to `max_ejection_time`; a backend that stayed in for
//!   `max_ejection_time` since its last ejection starts again from the base.
//! - Never more than `max_ejection_percent` of the pool is out, and never its last backend:
//!   an all-failing pool keeps serving (and counting) rather than answering 503 to all.
//! - An ejected backend comes back when its time is over ([`crate::upstream::Slot::ejected`]).

use crate::upstream::{now_ms, Pool, Slot};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Whether a backend's status counts as a failure.
pub fn failed_status(code: u16) -> bool {
    (500..=599).contains(&code)
}

/// Whether a backend's answer counts as a failure on `pool`: a 5xx, or a status the
/// upstream retries (`retry_on`), so that a retried answer counts whether or not it was
/// retried.
pub fn failed_answer(pool: &Pool, code: u16) -> bool {
    failed_status(code) || pool.spec.retry_on.status(code)
}

/// Record one outcome of a request (or L4 connection) on `slot`.
pub fn observe(pool: &Pool, slot: &Slot, failed: bool) {
    let Some(o) = &pool.spec.outlier else {
        return;
    };
    if !failed {
        // read first: a store on every success would move the slot's line between the
        // cores serving the backend even when there is nothing to reset
        if slot.consecutive.load(Relaxed) != 0 {
            slot.consecutive.store(0, Relaxed);
        }
        return;
    }
    let n = slot.consecutive.fetch_add(1, Relaxed) + 1;
    if n < o.consecutive_failures || slot.ejected() {
        return;
    }
    let members = pool.members.load();
    let total = members.slots.len();
    let out = members.slots.iter().filter(|s| s.ejected()).count();
    let allowed = if total > 1 {
        (total * o.max_ejection_percent as usize / 100)
            .max(1)
            .min(total - 1)
    } else {
        0
    };
    if out >= allowed {
        return;
    }
    let now = now_ms();
    // a backend that stayed in long enough starts its backoff again
    let last = slot.last_ejection_end.load(Relaxed);
    if last != 0 && now.saturating_sub(last) > o.max_ejection_time.as_millis() as u64 {
        slot.ejections.store(0, Relaxed);
    }
    let k = slot.ejections.fetch_add(1, Relaxed).min(16);
    let t = o
        .base_ejection_time
        .saturating_mul(1u32 << k)
        .min(o.max_ejection_time);
    if slot
        .ejected_until
        .compare_exchange(0, now + t.as_millis() as u64, Relaxed, Relaxed)
        .is_ok()
    {
        slot.consecutive.store(0, Relaxed);
        slot.ejections_total.fetch_add(1, Relaxed);
        log::warn!(
            "upstream {}: ejecting backend {} for {} after {n} failures in a row",
            pool.name,
            slot.label,
            fmt(t)
        );
    }
}

fn fmt(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
