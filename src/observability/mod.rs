//! Metrics and the access log.
//!
//! Design: every metric lives in one Prometheus registry ([`REGISTRY`]). The request path
//! never formats a label: per-route handles ([`RouteMetrics`]) are resolved once at start-up
//! and indexed by the route's position in the config, and a request only bumps atomics.
//! Per-backend state (health, in-flight, requests, latency) already lives in the upstream
//! [`Slot`](crate::upstream::Slot)s as atomics; it is turned into metric lines at scrape time
//! ([`render`]), so backends that DNS discovery adds or removes appear and disappear without
//! stale series.
//!
//! Counters other modules bump: [`CACHE_STATUS`] is counted here, from Pingora's cache phase
//! at the end of each request, so the cache module needs no code for it. The L4 listeners
//! count into [`L4Counts`]; the TLS certificate callbacks
//! keep handshake counts in their certificate stores, read at scrape time.
//!
//! The access log is off unless configured; when off, nothing is formatted. When on, the
//! line is formatted on the worker and handed to a dedicated writer thread through a bounded
//! channel; a full channel drops the line (counted) rather than stall the event loop.

use crate::config::file::AccessLogFormat;
use crate::config::{AccessLogSpec, Config};
use crate::upstream::Pool;
use once_cell::sync::{Lazy, OnceCell};
use pingora_core::Error;
use pingora_proxy::Session;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod access_log;
pub mod deps_log;
mod done;
mod l4;
pub mod quic;
mod render;
mod routes;
pub mod tracing;

use access_log::*;
pub use access_log::{clf_time, rfc3339};
pub use done::{
    access_log_on, client_closed, fast_request_done, request_done, text_shown, ReqView,
};
pub use l4::L4Counts;
pub use render::render;
pub use routes::set_routes;
use routes::{route_metrics, RouteMetrics};

/// HTTP requests being processed now (the sum of the threads' stripes).
pub fn in_flight() -> i64 {
    routes::IN_FLIGHT.get()
}

pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn reg<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    // Registration only fails on a duplicate name, which is a programming error caught by the
    // unit tests; the metric still works unregistered.
    if let Err(e) = REGISTRY.register(Box::new(m.clone())) {
        log::error!("metric registration: {e}");
    }
    m
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
            panic!("metric {name}: {e}") // static names and labels; cannot fail at run time
        }),
    )
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    reg(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub static UPSTREAM_CONNECT: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "stepstone_upstream_connect_duration_seconds",
        "Time to obtain a new upstream connection (reused ones are not observed)",
        &["upstream"],
        CONNECT_BUCKETS.to_vec(),
    )
});
/// Configuration reloads by outcome (`ok`, `error`), and the revision in force.
pub static CONFIG_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_config_reloads_total",
        "Configuration reloads, by result",
        &["result"],
    )
});
pub static CONFIG_REVISION: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "stepstone_config_revision",
        "Revision of the configuration in force: 1 at start, one more per applied reload",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

/// Count a reload attempt; both series exist from start-up so a scraper sees zeros.
pub fn config_reloaded(ok: Option<bool>, revision: u64) {
    for r in ["ok", "error"] {
        let c = CONFIG_RELOADS.with_label_values(&[r]);
        if ok == Some(r == "ok") {
            c.inc();
        }
    }
    CONFIG_REVISION.set(i64::try_from(revision).unwrap_or(i64::MAX));
}

pub static CACHE_STATUS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_cache_requests_total",
        "Requests that consulted the cache, by outcome (hit, miss, stale, expired, revalidated, bypass...)",
        &["status"],
    )
});
pub static FAST_PATH_FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_fast_path_fallbacks_total",
        "HTTP requests the lean engine left to Pingora's general proxy, by reason",
        &["reason"],
    )
});
/// The fallback series, resolved once at start-up ([`declare_fast_path_fallbacks`]) so a
/// fallback only bumps an atomic.
static FALLBACKS: OnceCell<Vec<(&'static str, IntCounter)>> = OnceCell::new();

/// Resolve (and show at zero) the series of every fallback reason the policy has.
pub fn declare_fast_path_fallbacks(reasons: &[&'static str]) {
    let _ = FALLBACKS.set(
        reasons
            .iter()
            .map(|r| (*r, FAST_PATH_FALLBACKS.with_label_values(&[r])))
            .collect(),
    );
}

/// Count a request the lean engine left to the general one, by the policy's reason label.
pub fn fast_path_fallback(reason: &str) {
    match FALLBACKS
        .get()
        .and_then(|all| all.iter().find(|(r, _)| *r == reason))
    {
        Some((_, c)) => c.inc(),
        None => FAST_PATH_FALLBACKS.with_label_values(&[reason]).inc(),
    }
}

pub static REFUSALS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_refusals_total",
        "Requests and connections refused before routing: a request head refused by the head checks or limits (by the status answered), a connection over max_connections",
        &["listener", "reason"],
    )
});

/// Count a refusal; `reason` is a status code or `max_connections`.
pub fn refused(listener: &str, reason: &str) {
    REFUSALS.with_label_values(&[listener, reason]).inc();
}

pub static LOCAL_CONNECT_REFUSALS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_local_connect_refusals_total",
        "Backend connects this machine refused (out of descriptors, local ports or socket memory); each request waited and connected again, or was answered 503",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

pub static ACCESS_LOG_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

/// One counter for the whole process: a body is spliced only when it has at least 16 KiB
/// left, so the shared atomic is bumped once per that much data, not per request.
pub static SPLICED_BYTES: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_spliced_bytes_total",
        "Bytes moved between sockets with splice(2), never copied into the process: request and response bodies on plain HTTP/1 listeners and L4 relays, with `splice: true`",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

pub static RATE_STORE_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_rate_limit_store_errors_total",
        "Asks of the shared rate-limit store that failed or timed out (those requests count locally)",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

/// The cache outcomes, as the access log and `stepstone_cache_requests_total` name them.
const CACHE_PHASE_NAMES: [&str; 8] = [
    "hit",
    "miss",
    "stale",
    "stale-updating",
    "expired",
    "revalidated",
    "revalidated-nocache",
    "bypass",
];
static CACHE_PHASES: Lazy<[IntCounter; 8]> =
    Lazy::new(|| CACHE_PHASE_NAMES.map(|s| CACHE_STATUS.with_label_values(&[s])));

static ACCESS_LOG: OnceCell<AccessLog> = OnceCell::new();

/// The access log, when it is on.
#[inline]
fn access_log() -> Option<&'static AccessLog> {
    ACCESS_LOG.get().filter(|a| a.on())
}

/// A reload's access log settings, with the output they need opened already, so that a file
/// that cannot be opened fails the reload before anything changed.
pub struct AccessLogChange {
    spec: Option<AccessLogSpec>,
    out: Option<Box<dyn std::io::Write + Send>>,
    /// The file the new output made, removed again if the reload fails before `apply`.
    created: Option<std::path::PathBuf>,
}

/// Open what `new` writes to when it differs from what `old` wrote to (`file`: the
/// configuration's, for the error).
pub fn prepare_access_log(
    file: &str,
    old: Option<&AccessLogSpec>,
    new: Option<&AccessLogSpec>,
) -> Result<AccessLogChange, String> {
    let mut created = None;
    let out = match (old, new) {
        (Some(o), Some(n)) if o.path == n.path => None,
        (_, Some(n)) => {
            created = n
                .path
                .as_deref()
                .map(std::path::PathBuf::from)
                .filter(|p| !p.exists());
            Some(
                access_log::output(n.path.as_deref())
                    .map_err(|e| format!("{file}: access_log.path: {e}"))?,
            )
        }
        (_, None) => None,
    };
    Ok(AccessLogChange {
        spec: new.cloned(),
        out,
        created,
    })
}

impl AccessLogChange {
    /// Lines of requests that end from now on go to the new output, in the new format.
    pub fn apply(mut self) {
        self.created = None;
        if let Some(a) = ACCESS_LOG.get() {
            a.set(self.spec.as_ref(), self.out.take());
        }
    }
}

/// A reload that fails after the new access-log file was opened leaves no file behind that
/// it made.
impl Drop for AccessLogChange {
    fn drop(&mut self) {
        if let Some(p) = self.created.take() {
            self.out = None;
            if let Err(e) = std::fs::remove_file(&p) {
                log::warn!("reload failed: could not remove {}: {e}", p.display());
            }
        }
    }
}

/// Resolve the per-route handles and open the access log. Called once, before the server
/// runs (and before a daemon fork, so a log file opened here is inherited).
pub fn init(cfg: &Config) -> Result<(), String> {
    set_routes(cfg);
    routes::register();
    Lazy::force(&CACHE_PHASES);
    // Register every family up front (a vector family shows once it has a series).
    Lazy::force(&ACCESS_LOG_DROPPED);
    Lazy::force(&SPLICED_BYTES);
    if cfg
        .listeners
        .iter()
        .any(|l| l.limits.rate_limit_store.is_some())
    {
        Lazy::force(&RATE_STORE_ERRORS);
    }
    let log = AccessLog::open(cfg.access_log.as_ref())
        .map_err(|e| format!("{}: access_log.path: {e}", cfg.file))?;
    let _ = ACCESS_LOG.set(log);
    tracing::init(cfg.tracing.as_ref());
    Ok(())
}

/// The daemon's error log (`pingora.error_log`, stderr of a daemon), for [`reopen_logs`].
static ERROR_LOG: OnceCell<String> = OnceCell::new();

/// Record the error log file a daemon's stderr goes to.
pub fn set_error_log(path: &str) {
    let _ = ERROR_LOG.set(path.to_string());
}

/// SIGUSR1 (`stepstone -s reopen`), after logrotate moved the files away: open the access log
/// and a daemon's error log anew at their paths. Lines queued before go to the old file.
pub fn reopen_logs() -> Result<(), String> {
    let mut errors = Vec::new();
    if let Some(a) = ACCESS_LOG.get() {
        if let Err(e) = a.reopen() {
            errors.push(format!("access log: {e}"));
        }
    }
    if let Some(p) = ERROR_LOG.get() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // as Pingora opened it: read too, and nonblocking, so that a FIFO without a reader
        // does not fail or block
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p);
        match f {
            // SAFETY: dup2(2) onto stderr of descriptors this process owns.
            Ok(f) if unsafe { libc::dup2(f.as_raw_fd(), 2) } >= 0 => {}
            Ok(_) => errors.push(format!(
                "error log {p}: {}",
                std::io::Error::last_os_error()
            )),
            Err(e) => errors.push(format!("error log {p}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Per-request bookkeeping, a field of the proxy's per-request context. Creating it counts
/// the request in flight; dropping it gives the count back on every path.
pub struct RequestObs {
    start: Instant,
    peer_at: Option<Instant>,
    /// Time to get the upstream connection of the last attempt.
    connect: Option<Duration>,
    /// Backends tried (each retry is one more).
    tries: u32,
    /// Set by the engine when tracing is on (the policy's `trace` step).
    pub trace: Option<tracing::TraceCtx>,
    /// Each upstream try's start and backend, kept only for a sampled request (its child
    /// spans); empty, and unallocated, otherwise.
    try_log: Vec<(Instant, Box<str>)>,
}

impl Default for RequestObs {
    fn default() -> Self {
        routes::IN_FLIGHT.inc();
        RequestObs {
            start: Instant::now(),
            peer_at: None,
            connect: None,
            tries: 0,
            trace: None,
            try_log: Vec::new(),
        }
    }
}

impl Drop for RequestObs {
    fn drop(&mut self) {
        routes::IN_FLIGHT.dec();
    }
}

impl RequestObs {
    /// When the request began (its head was in).
    #[inline]
    pub fn started(&self) -> Instant {
        self.start
    }

    /// A try begins: a backend is about to be chosen.
    #[inline]
    pub fn peer_selected(&mut self) {
        self.peer_at = None;
        self.tries += 1;
    }

    /// The try opens a new connection now (after [`Self::peer_selected`]): its set-up time
    /// counts from here. A pooled connection takes no clock reading (its set-up time is 0).
    #[inline]
    pub fn connecting(&mut self) {
        self.peer_at = Some(Instant::now());
    }

    /// The try's backend was picked (after [`Self::peer_selected`]).
    #[inline]
    pub fn picked(&mut self, backend: &str) {
        if self.trace.is_some_and(|t| t.sampled) {
            let at = self.peer_at.unwrap_or_else(Instant::now);
            self.try_log.push((at, backend.into()));
        }
    }

    /// `connected_to_upstream`: count the connection, and its set-up time if it is new.
    #[inline]
    pub fn connected(&mut self, route: Option<usize>, reused: bool) {
        let took = match self.peer_at {
            Some(t) if !reused => t.elapsed(),
            _ => Duration::ZERO,
        };
        self.connect = Some(took);
        route_metrics(route).connected(reused, took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(971_186_136_123);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(rfc3339(t), "2000-10-10T13:55:36.123Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn render_lists_the_families() {
        routes::register();
        let text = render(&[]);
        for name in [
            "stepstone_backend_up",
            "stepstone_backend_in_flight",
            "stepstone_requests_in_flight",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
