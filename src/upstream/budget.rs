//! An upstream's retry budget, as Finagle and linkerd keep it: every request deposits a
//! share of a token (`retry_budget_percent`), every retry withdraws a whole one, deposits
//! and withdrawals count for [`WINDOW_SECS`], and a reserve of [`FLOOR_PER_SEC`] retries per
//! second of the window is always there, so a quiet upstream can still retry. When every
//! backend fails, retries thus add at most that share of the traffic instead of multiplying
//! it by `1 + retries`. The policy draws on it for retries after the request was sent;
//! a retry after a connect failure costs nothing, since the failed try did no work.
//!
//! The window is one packed atomic per second (the second's number and its balance), so a
//! request's deposit and a retry's withdrawal are each one compare-and-swap and never a lock.
//! Every request deposits, so the window is striped per thread ([`crate::striped`]): a
//! deposit changes only its own thread's line, and a withdrawal, which happens only on a
//! retry, sums the balances of every stripe. Check and withdrawal are two steps: concurrent
//! retries may overdraw by a few tokens, which a budget meant to stop retry storms can afford.
//!
//! The budget also keeps the counts behind `stepstone_retries_total` and
//! `stepstone_retry_budget_exhausted_total`, rendered at scrape time like the backends'.

use crate::striped::Striped;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const WINDOW_SECS: u64 = 10;
pub const FLOOR_PER_SEC: i64 = 3;
/// One token, in the hundredths a deposit is counted in.
const TOKEN: i64 = 100;

/// Why a try was retried, for the metric's `reason` label.
pub const REASONS: [&str; 3] = ["connect_failure", "reset", "timeout"];

pub struct RetryBudget {
    percent: i64,
    /// Per stripe and second: the second's number in the high 32 bits, the balance in
    /// hundredths of a token (an `i32`) in the low ones.
    seconds: Striped<[AtomicU64; WINDOW_SECS as usize]>,
    pub exhausted: AtomicU64,
    /// Retries by [`REASONS`] index, and by status from 400 to 599.
    by_reason: [AtomicU64; 3],
    by_status: Box<[AtomicU64]>,
}

impl RetryBudget {
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            percent: i64::from(percent),
            seconds: Default::default(),
            exhausted: AtomicU64::new(0),
            by_reason: Default::default(),
            by_status: (400..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A request to the upstream begins.
    pub fn deposit(&self) {
        self.add(second(), self.percent);
    }

    /// Take a token for one retry; `false` (and counted) when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let now = second();
        if FLOOR_PER_SEC * WINDOW_SECS as i64 * TOKEN + self.balance(now) < TOKEN {
            self.exhausted.fetch_add(1, Relaxed);
            return false;
        }
        self.add(now, -TOKEN);
        true
    }

    /// Count a retry: `reason` indexes [`REASONS`], or `status` names the answer retried.
    pub fn count(&self, reason: Option<usize>, status: u16) {
        let c = match reason {
            Some(i) => self.by_reason.get(i),
            None => self.by_status.get(usize::from(status.wrapping_sub(400))),
        };
        if let Some(c) = c {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Retries so far, by reason label, statuses included once retried.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = REASONS
            .iter()
            .zip(&self.by_reason)
            .map(|(r, c)| (r.to_string(), c.load(Relaxed)))
            .collect();
        for (i, c) in self.by_status.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                v.push(((400 + i).to_string(), n));
            }
        }
        v
    }

    fn balance(&self, now: u64) -> i64 {
        self.seconds
            .each()
            .flatten()
            .map(|s| unpack(s.load(Relaxed)))
            .filter(|&(sec, _)| now.saturating_sub(sec) < WINDOW_SECS && sec <= now)
            .map(|(_, b)| b)
            .sum()
    }

    fn add(&self, now: u64, delta: i64) {
        let slot = &self.seconds.mine()[(now % WINDOW_SECS) as usize];
        let _ = slot.fetch_update(Relaxed, Relaxed, |v| {
            let (sec, b) = unpack(v);
            // a slot last written a window ago starts over for this second
            let b = if sec == now { b } else { 0 };
            Some(pack(now, b + delta))
        });
    }
}

/// The window's clock: whole seconds of the coarse clock. Every request deposits, and the
/// precise clock (an `Instant` taken, subtracted from an epoch, divided) cost it about 55
/// instructions where this costs 15; a window counted in seconds does not see the tick.
fn second() -> u64 {
    crate::clock::coarse_ms() / 1000
}

fn pack(sec: u64, balance: i64) -> u64 {
    let b = balance.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    ((sec & 0xffff_ffff) << 32) | u64::from(b as u32)
}

fn unpack(v: u64) -> (u64, i64) {
    (v >> 32, i64::from(v as u32 as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_plus_the_floor() {
        let b = RetryBudget::new(20);
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..200).filter(|_| b.withdraw()).count() as i64;
        // 20% of 100 requests, plus 3 per second over the 10 s window
        assert_eq!(granted, 20 + FLOOR_PER_SEC * WINDOW_SECS as i64);
        assert_eq!(b.exhausted.load(Relaxed), 200 - granted as u64);
    }

    #[test]
    fn a_zero_percent_budget_keeps_the_floor() {
        let b = RetryBudget::new(0);
        b.deposit();
        let granted = (0..100).filter(|_| b.withdraw()).count() as i64;
        assert_eq!(granted, FLOOR_PER_SEC * WINDOW_SECS as i64);
    }

    #[test]
    fn packing_keeps_negative_balances() {
        assert_eq!(unpack(pack(7, -300)), (7, -300));
        assert_eq!(unpack(pack(7, 20)), (7, 20));
    }
}
