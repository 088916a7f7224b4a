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
//! count [`L4_CONNECTIONS`], [`L4_ACTIVE`] and [`L4_BYTES`]; the TLS certificate callbacks
//! count [`TLS_HANDSHAKES`].
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
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_requests_total",
        "HTTP requests by route and status class (err: no response was sent)",
        &["route", "upstream", "class"],
    )
});
pub static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "stepstone_request_duration_seconds",
        "Time from the request head to the end of the response",
        &["route", "upstream"],
        LATENCY_BUCKETS.to_vec(),
    )
});
pub static UPSTREAM_CONNECT: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "stepstone_upstream_connect_duration_seconds",
        "Time to obtain a new upstream connection (reused ones are not observed)",
        &["upstream"],
        CONNECT_BUCKETS.to_vec(),
    )
});
pub static UPSTREAM_CONNECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_upstream_connections_total",
        "Upstream connections used by requests, new and reused",
        &["upstream"],
    )
});
pub static UPSTREAM_REUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_upstream_connections_reused_total",
        "Upstream connections taken from the keep-alive pool",
        &["upstream"],
    )
});
pub static INFLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "stepstone_requests_in_flight",
        "HTTP requests being processed",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});
pub static BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_http_body_bytes_total",
        "HTTP body bytes received from (in) and sent to (out) clients",
        &["route", "direction"],
    )
});
pub static CACHE_STATUS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_cache_requests_total",
        "Requests that consulted the cache, by outcome (hit, miss, stale, expired, revalidated, bypass...)",
        &["status"],
    )
});
pub static TLS_HANDSHAKES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_tls_handshakes_total",
        "TLS handshakes completed on the listeners (result ok), and those refused for lack of a certificate (no_certificate), by the listener's tls key path",
        &["listener", "result"],
    )
});
pub static L4_CONNECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_l4_connections_total",
        "Connections accepted by the TCP / TLS passthrough listeners",
        &["listener"],
    )
});
pub static L4_ACTIVE: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "stepstone_l4_connections_active",
            "Open connections on the TCP / TLS passthrough listeners",
        ),
        &["listener"],
    )
    .unwrap_or_else(|e| panic!("{e}")))
});
pub static L4_BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_l4_bytes_total",
        "Bytes relayed by the TCP / TLS passthrough listeners (in: from clients, out: to clients)",
        &["listener", "direction"],
    )
});
pub static FAST_PATH_FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "stepstone_fast_path_fallbacks_total",
        "HTTP requests the lean engine left to Pingora's general proxy, by reason",
        &["reason"],
    )
});
static FALLBACK_HANDLES: Lazy<Vec<IntCounter>> = Lazy::new(|| {
    crate::policy::engine::Fallback::ALL
        .iter()
        .map(|f| FAST_PATH_FALLBACKS.with_label_values(&[f.label()]))
        .collect()
});

/// Count a request the lean engine left to the general one.
pub fn fast_path_fallback(reason: crate::policy::engine::Fallback) {
    if let Some(c) = FALLBACK_HANDLES.get(reason.index()) {
        c.inc();
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

pub static ACCESS_LOG_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

/// Label handles of one route, resolved once.
pub struct RouteMetrics {
    pub route: String,
    pub upstream: String,
    /// By status class: index 0 is "err" (no response), 1..=5 are 1xx..5xx.
    requests: [IntCounter; 6],
    duration: Histogram,
    connect: Histogram,
    conns: IntCounter,
    reused: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

impl RouteMetrics {
    fn new(route: &str, upstream: &str) -> RouteMetrics {
        let class = |c: &str| REQUESTS.with_label_values(&[route, upstream, c]);
        RouteMetrics {
            route: route.to_string(),
            upstream: upstream.to_string(),
            requests: [
                class("err"),
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: REQUEST_DURATION.with_label_values(&[route, upstream]),
            connect: UPSTREAM_CONNECT.with_label_values(&[upstream]),
            conns: UPSTREAM_CONNECTIONS.with_label_values(&[upstream]),
            reused: UPSTREAM_REUSED.with_label_values(&[upstream]),
            bytes_in: BYTES.with_label_values(&[route, "in"]),
            bytes_out: BYTES.with_label_values(&[route, "out"]),
        }
    }
}

/// Indexed by the route's position in the config (`Route::id`).
static ROUTES: OnceCell<Vec<RouteMetrics>> = OnceCell::new();
/// Requests no route matched (the proxy's own 404s).
static UNROUTED: Lazy<RouteMetrics> = Lazy::new(|| RouteMetrics::new("-", "-"));
static CACHE_PHASES: Lazy<[IntCounter; 8]> = Lazy::new(|| {
    [
        "hit",
        "miss",
        "stale",
        "stale-updating",
        "expired",
        "revalidated",
        "revalidated-nocache",
        "bypass",
    ]
    .map(|s| CACHE_STATUS.with_label_values(&[s]))
});

static ACCESS_LOG: OnceCell<AccessLog> = OnceCell::new();

/// Resolve the per-route handles and open the access log. Called once, before the server
/// runs (and before a daemon fork, so a log file opened here is inherited).
pub fn init(cfg: &Config) -> Result<(), String> {
    Lazy::force(&FALLBACK_HANDLES);
    let routes = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let up = cfg
                .upstreams
                .get(r.upstream)
                .map(|u| u.name.as_str())
                .unwrap_or("-");
            RouteMetrics::new(&format!("routes[{i}]"), up)
        })
        .collect();
    let _ = ROUTES.set(routes);
    Lazy::force(&INFLIGHT);
    Lazy::force(&CACHE_PHASES);
    // Register every family up front (a vector family shows once it has a series).
    Lazy::force(&TLS_HANDSHAKES);
    Lazy::force(&L4_CONNECTIONS);
    Lazy::force(&L4_BYTES);
    Lazy::force(&L4_ACTIVE);
    Lazy::force(&ACCESS_LOG_DROPPED);
    if let Some(spec) = &cfg.access_log {
        let log =
            AccessLog::open(spec).map_err(|e| format!("{}: access_log.path: {e}", cfg.file))?;
        let _ = ACCESS_LOG.set(log);
    }
    Ok(())
}

fn route_metrics(id: Option<usize>) -> &'static RouteMetrics {
    id.and_then(|i| ROUTES.get().and_then(|r| r.get(i)))
        .unwrap_or(&UNROUTED)
}

/// Per-request bookkeeping, a field of the proxy's per-request context. Creating it counts
/// the request in flight; dropping it gives the count back on every path.
pub struct RequestObs {
    start: Instant,
    peer_at: Option<Instant>,
    /// Time to get the upstream connection of the last attempt.
    connect: Option<Duration>,
}

impl Default for RequestObs {
    fn default() -> Self {
        INFLIGHT.inc();
        RequestObs {
            start: Instant::now(),
            peer_at: None,
            connect: None,
        }
    }
}

impl Drop for RequestObs {
    fn drop(&mut self) {
        INFLIGHT.dec();
    }
}

impl RequestObs {
    /// A backend was chosen; the connection attempt starts now.
    #[inline]
    pub fn peer_selected(&mut self) {
        self.peer_at = Some(Instant::now());
    }

    /// `connected_to_upstream`: count the connection, and its set-up time if it is new.
    #[inline]
    pub fn connected(&mut self, route: Option<usize>, reused: bool) {
        let m = route_metrics(route);
        let took = self.peer_at.map(|t| t.elapsed()).unwrap_or_default();
        self.connect = Some(took);
        m.conns.inc();
        if reused {
            m.reused.inc();
        } else {
            m.connect.observe(took.as_secs_f64());
        }
    }
}

/// `logging`: the end of a request. `route` is the config position of its route.
pub fn request_done(
    session: &Session,
    _e: Option<&Error>,
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let down = session.as_downstream();
    let (bytes_in, bytes_out) = (down.body_bytes_read(), down.body_bytes_sent());
    let cache = cache_status(session);
    let m = count_done(route, backend, obs, status, bytes_in, bytes_out);
    if let Some(log) = ACCESS_LOG.get() {
        let req = session.req_header();
        let header = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        let uri = req.uri.to_string();
        log.write(&Line {
            req: ReqView {
                client: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: req.method.as_str(),
                uri: &uri,
                version: version_str(req.version),
                host: header(http::header::HOST),
                referer: header(http::header::REFERER),
                user_agent: header(http::header::USER_AGENT),
                bytes_in,
            },
            m,
            backend: backend.map(|s| s.label.as_str()),
            status,
            bytes_out,
            took: obs.start.elapsed(),
            connect: obs.connect,
            cache,
        });
    }
}

/// The end of a request served by the HTTP/1 fast path ([`crate::http::fast`]), which has no
/// Pingora session: the same counters and the same access-log line. `cache_hit`: answered
/// from the cache (counted and logged as `hit`, like a general-path hit).
pub fn fast_request_done(
    req: &ReqView,
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
    status: u16,
    bytes_out: usize,
    cache_hit: bool,
) {
    if cache_hit {
        CACHE_PHASES[0].inc();
    }
    let m = count_done(route, backend, obs, status, req.bytes_in, bytes_out);
    if let Some(log) = ACCESS_LOG.get() {
        log.write(&Line {
            req: *req,
            m,
            backend: backend.map(|s| s.label.as_str()),
            status,
            bytes_out,
            took: obs.start.elapsed(),
            connect: obs.connect,
            cache: if cache_hit { "hit" } else { "-" },
        });
    }
}

/// Whether finished requests are logged: the fast path only gathers a log line's fields then.
#[inline]
pub fn access_log_on() -> bool {
    ACCESS_LOG.get().is_some()
}

fn count_done(
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
) -> &'static RouteMetrics {
    let m = route_metrics(route);
    let class = (status / 100) as usize;
    m.requests[if (1..=5).contains(&class) { class } else { 0 }].inc();
    let took = obs.start.elapsed();
    m.duration.observe(took.as_secs_f64());
    if let Some(slot) = backend {
        slot.latency_us.fetch_add(took.as_micros() as u64, Relaxed);
        slot.completed.fetch_add(1, Relaxed);
    }
    m.bytes_in.inc_by(bytes_in as u64);
    m.bytes_out.inc_by(bytes_out as u64);
    m
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// What an access-log line says about the request, whichever path served it. Absent
/// headers are `-`.
#[derive(Clone, Copy)]
pub struct ReqView<'a> {
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub uri: &'a str,
    pub version: &'static str,
    pub host: &'a str,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub bytes_in: usize,
}

fn cache_status(session: &Session) -> &'static str {
    use pingora_cache::CachePhase as P;
    let idx = match session.cache.phase() {
        P::Hit => 0,
        P::Miss => 1,
        P::Stale => 2,
        P::StaleUpdating => 3,
        P::Expired => 4,
        P::Revalidated => 5,
        P::RevalidatedNoCache(_) => 6,
        P::Bypass => 7,
        _ => return "-",
    };
    CACHE_PHASES[idx].inc();
    [
        "hit",
        "miss",
        "stale",
        "stale-updating",
        "expired",
        "revalidated",
        "revalidated-nocache",
        "bypass",
    ][idx]
}

fn esc_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` page: the registry plus per-backend series read from the pools.
pub fn render(pools: &[Arc<Pool>]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf) {
        log::error!("metrics encoding: {e}");
    }
    let mut out = String::from_utf8(buf).unwrap_or_default();
    type Getter = fn(&crate::upstream::Slot) -> String;
    let families: [(&str, &str, &str, Getter); 6] = [
        (
            "stepstone_backend_up",
            "gauge",
            "1 when the backend passes its health checks",
            |s| u8::from(s.healthy.load(Relaxed)).to_string(),
        ),
        (
            "stepstone_backend_drained",
            "gauge",
            "1 when an operator drained the backend",
            |s| u8::from(s.drained.load(Relaxed)).to_string(),
        ),
        (
            "stepstone_backend_in_flight",
            "gauge",
            "Requests and connections in flight to the backend",
            |s| s.inflight.load(Relaxed).to_string(),
        ),
        (
            "stepstone_backend_requests_total",
            "counter",
            "Requests sent to the backend",
            |s| s.requests.load(Relaxed).to_string(),
        ),
        (
            "stepstone_backend_response_seconds_sum",
            "counter",
            "Total response time of the backend's requests",
            |s| format!("{}", s.latency_us.load(Relaxed) as f64 / 1e6),
        ),
        (
            "stepstone_backend_response_seconds_count",
            "counter",
            "Requests counted in the response time sum",
            |s| s.completed.load(Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in pools {
            for s in p.members.load().slots.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                    esc_label(&p.name),
                    esc_label(&s.label),
                    get(s)
                );
            }
        }
    }
    out
}

// ---- access log ----

struct AccessLog {
    format: AccessLogFormat,
    tx: std::sync::mpsc::SyncSender<String>,
}

/// Lines the writer may lag behind before new ones are dropped.
const ACCESS_LOG_QUEUE: usize = 65_536;

impl AccessLog {
    fn open(spec: &AccessLogSpec) -> std::io::Result<AccessLog> {
        let out: Box<dyn std::io::Write + Send> = match &spec.path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{p}: {e}")))?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(ACCESS_LOG_QUEUE);
        // The writer thread starts on first use, after a daemon fork (threads do not survive
        // fork; the open file does).
        let rx = std::sync::Mutex::new(Some((rx, out)));
        let log = AccessLog {
            format: spec.format,
            tx,
        };
        WRITER.get_or_init(|| rx);
        Ok(log)
    }

    fn write(&self, line: &Line) {
        start_writer();
        let mut s = String::with_capacity(256);
        match self.format {
            AccessLogFormat::Combined => line.combined(&mut s),
            AccessLogFormat::Json => line.json(&mut s),
        }
        s.push('\n');
        if self.tx.try_send(s).is_err() {
            ACCESS_LOG_DROPPED.inc();
        }
    }
}

type WriterParts = (
    std::sync::mpsc::Receiver<String>,
    Box<dyn std::io::Write + Send>,
);
static WRITER: OnceCell<std::sync::Mutex<Option<WriterParts>>> = OnceCell::new();
static WRITER_STARTED: OnceCell<()> = OnceCell::new();

fn start_writer() {
    WRITER_STARTED.get_or_init(|| {
        let parts = WRITER
            .get()
            .and_then(|m| m.lock().ok().and_then(|mut g| g.take()));
        if let Some((rx, out)) = parts {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer_loop(rx, out));
            if let Err(e) = spawned {
                log::error!("access log: cannot start the writer thread: {e}");
            }
        }
    });
}

fn writer_loop(rx: std::sync::mpsc::Receiver<String>, out: Box<dyn std::io::Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Block for a line, then take whatever else is queued, and flush once the queue is empty:
    // one write(2) per burst, and no line waits in the buffer while the proxy is idle.
    while let Ok(line) = rx.recv() {
        let _ = w.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = w.write_all(more.as_bytes());
        }
        if let Err(e) = w.flush() {
            log::error!("access log: write failed: {e}");
        }
    }
}

struct Line<'a> {
    req: ReqView<'a>,
    m: &'a RouteMetrics,
    backend: Option<&'a str>,
    status: u16,
    bytes_out: usize,
    took: Duration,
    connect: Option<Duration>,
    cache: &'static str,
}

impl Line<'_> {
    fn client(&self) -> String {
        self.req
            .client
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into())
    }

    /// nginx's `combined`, then key=value fields for what it lacks.
    fn combined(&self, s: &mut String) {
        let req = &self.req;
        let q = |v: &str| v.replace('"', "\\x22");
        let _ = write!(
            s,
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" route={} upstream={} backend={} duration={:.6} upstream_connect={} cache={}",
            self.client(),
            clf_time(std::time::SystemTime::now()),
            req.method,
            req.uri,
            req.version,
            self.status,
            self.bytes_out,
            q(req.referer),
            q(req.user_agent),
            self.m.route,
            self.m.upstream,
            self.backend.unwrap_or("-"),
            self.took.as_secs_f64(),
            self.connect
                .map(|d| format!("{:.6}", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            self.cache,
        );
    }

    fn json(&self, s: &mut String) {
        let req = &self.req;
        let v = serde_json::json!({
            "time": rfc3339(std::time::SystemTime::now()),
            "client": self.client(),
            "method": req.method,
            "uri": req.uri,
            "version": req.version,
            "host": req.host,
            "status": self.status,
            "bytes_sent": self.bytes_out,
            "bytes_received": req.bytes_in,
            "duration": self.took.as_secs_f64(),
            "upstream_connect": self.connect.map(|d| d.as_secs_f64()),
            "route": self.m.route,
            "upstream": self.m.upstream,
            "backend": self.backend,
            "cache": self.cache,
            "referer": req.referer,
            "user_agent": req.user_agent,
        });
        s.push_str(&v.to_string());
    }
}

/// (year, month, day, hour, minute, second) in UTC.
fn civil(t: std::time::SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// `10/Oct/2000:13:55:36 +0000`
pub fn clf_time(t: std::time::SystemTime) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!(
        "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
        MON[(mo as usize).saturating_sub(1) % 12]
    )
}

/// `2000-10-10T13:55:36.123Z`
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
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
        Lazy::force(&INFLIGHT);
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
