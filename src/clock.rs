//! The kernel's coarse monotonic clock, for limits counted in milliseconds or more.
//!
//! `Instant::now()` reads CLOCK_MONOTONIC: 21 ns per call on this project's VM (the vDSO and
//! the TSC), and an `Instant` takes checked arithmetic to subtract. CLOCK_MONOTONIC_COARSE
//! returns the time of the kernel's last tick, 4 ns, as a plain number. A keep-alive
//! connection read the precise clock twice per request for such limits: its idle timer's
//! deadline and the age of the backend connection it took from the pool. Neither needs
//! better than the tick (1-10 ms).

use std::sync::OnceLock;

/// Milliseconds on CLOCK_MONOTONIC_COARSE (since boot).
pub fn coarse_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec, which lives on this stack frame; a clock every Linux
    // since 2.6.32 has, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// The coarse clock's step in milliseconds, at least 1. A reading may lag the true time by
/// up to a step: a deadline that must not pass early adds one.
pub fn coarse_step_ms() -> u64 {
    static STEP: OnceLock<u64> = OnceLock::new();
    *STEP.get_or_init(|| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `coarse_ms`.
        let r = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
        let ns = if r == 0 {
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        } else {
            // unknown: the slowest common tick (HZ=100)
            10_000_000
        };
        ns.div_ceil(1_000_000).max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_pace_with_the_precise_clock_within_a_step() {
        let step = coarse_step_ms();
        assert!((1..=100).contains(&step), "step {step} ms");
        let (c0, t0) = (coarse_ms(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (c1, took) = (coarse_ms(), t0.elapsed().as_millis() as u64);
        let moved = c1 - c0;
        assert!(
            moved + step >= took && moved <= took + step,
            "coarse clock moved {moved} ms while {took} ms passed (step {step} ms)"
        );
    }
}
