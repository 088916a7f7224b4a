//! The state of an upstream that routes mirror requests to (the policy's `mirror`): the
//! copies in flight, which the policy bounds, and the counters `/metrics` shows at scrape
//! time, as the per-backend series are.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Some route mirrors to this upstream: its series are shown.
    pub used: AtomicBool,
    pub inflight: AtomicUsize,
    /// Copies sent.
    pub requests: AtomicU64,
    /// Sampled requests not copied, by reason.
    pub too_large: AtomicU64,
    pub concurrency: AtomicU64,
    pub no_backend: AtomicU64,
    /// Copies that failed (connect, write, read, timeout).
    pub errors: AtomicU64,
}
