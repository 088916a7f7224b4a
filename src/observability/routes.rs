//! Per-route request counts: striped per thread on the request path, summed into Prometheus
//! families when `/metrics` is read.
//!
//! A request bumps about ten counters of its route (its status class, body bytes both ways,
//! the upstream connection used, the duration histogram's bucket and sum). As Prometheus
//! handles these were shared atomics, the histogram's among them a global observation count
//! and a float sum updated by `compare_exchange`, so every request on a hot route moved the
//! same cache lines between all the cores serving it. Here each (route, upstream) pair keeps
//! one block of plain counters per stripe ([`crate::striped`]); a collector in the registry
//! ([`Scraped`]) turns the blocks into the same series as before at scrape time.

use super::{reg, UPSTREAM_CONNECT};
use crate::config::Config;
use crate::striped::{Gauge, Striped};
use once_cell::sync::Lazy;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The request duration histogram's bucket bounds (`le`, from 0.5 ms to 30 s), in
/// nanoseconds, so a request's bucket is found with integer comparisons.
const LATENCY_BOUNDS_NS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// One route's counts on one stripe: 28 counters, 224 bytes, one stripe's two cache lines.
#[derive(Default)]
struct Counts {
    /// By status class: index 0 is "err" (no response), 1..=5 are 1xx..5xx.
    requests: [AtomicU64; 6],
    client_closed: AtomicU64,
    /// Upstream connections used (new and reused), and the reused ones.
    conns: AtomicU64,
    reused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Not cumulative: entry `i` counts durations in (bound `i-1`, bound `i`], the last one
    /// those above every bound.
    duration: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    duration_ns: AtomicU64,
}

/// A (route, upstream) pair's counters, resolved once per pair.
pub struct RouteMetrics {
    pub route: String,
    pub upstream: String,
    counts: Striped<Counts>,
    /// New upstream connections' set-up time: observed once per new connection, not per
    /// request, so it stays a shared Prometheus histogram (one series per upstream).
    connect: Histogram,
}

impl RouteMetrics {
    fn new(route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            upstream: upstream.to_string(),
            counts: Striped::default(),
            connect: UPSTREAM_CONNECT.with_label_values(&[upstream]),
        }
    }

    /// A finished request: its status (0: no response), duration and body bytes.
    #[inline]
    pub(super) fn done(&self, status: u16, took: Duration, bytes_in: usize, bytes_out: usize) {
        let c = self.counts.mine();
        let class = (status / 100) as usize;
        c.requests[if (1..=5).contains(&class) { class } else { 0 }].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        c.duration[bucket].fetch_add(1, Relaxed);
        c.duration_ns.fetch_add(ns, Relaxed);
        c.bytes_in.fetch_add(bytes_in as u64, Relaxed);
        c.bytes_out.fetch_add(bytes_out as u64, Relaxed);
    }

    pub(super) fn client_closed(&self) {
        self.counts.mine().client_closed.fetch_add(1, Relaxed);
    }

    /// An upstream connection used: reused from the pool, or new after `took`.
    #[inline]
    pub(super) fn connected(&self, reused: bool, took: Duration) {
        let c = self.counts.mine();
        c.conns.fetch_add(1, Relaxed);
        if reused {
            c.reused.fetch_add(1, Relaxed);
        } else {
            self.connect.observe(took.as_secs_f64());
        }
    }

    /// The pair's totals over every stripe.
    fn sum(&self) -> Totals {
        let mut t = Totals::default();
        for c in self.counts.each() {
            let add = |a: &mut u64, v: &AtomicU64| *a = a.wrapping_add(v.load(Relaxed));
            for (a, v) in t.requests.iter_mut().zip(&c.requests) {
                add(a, v);
            }
            add(&mut t.client_closed, &c.client_closed);
            add(&mut t.conns, &c.conns);
            add(&mut t.reused, &c.reused);
            add(&mut t.bytes_in, &c.bytes_in);
            add(&mut t.bytes_out, &c.bytes_out);
            for (a, v) in t.duration.iter_mut().zip(&c.duration) {
                add(a, v);
            }
            add(&mut t.duration_ns, &c.duration_ns);
        }
        t
    }
}

#[derive(Default)]
struct Totals {
    requests: [u64; 6],
    client_closed: u64,
    conns: u64,
    reused: u64,
    bytes_in: u64,
    bytes_out: u64,
    duration: [u64; LATENCY_BOUNDS_NS.len() + 1],
    duration_ns: u64,
}

/// Indexed by the route's position in the config (`Route::id`); replaced by a reload.
static ROUTES: Lazy<RouteTable> = Lazy::new(|| arc_swap::ArcSwap::from_pointee(Vec::new()));
/// Every (route, upstream) pair resolved so far: a reload that keeps a pair reuses its
/// counters, so reloading back and forth allocates nothing new, and a pair a reload dropped
/// keeps its series (counters never go back).
static KNOWN_ROUTES: Mutex<Vec<&'static RouteMetrics>> = Mutex::new(Vec::new());
/// Requests no route matched (the proxy's own 404s).
static UNROUTED: Lazy<RouteMetrics> = Lazy::new(|| RouteMetrics::new("-", "-"));

/// HTTP requests being processed, striped like the route counts: every request of every
/// route moves it twice.
pub(super) static IN_FLIGHT: Lazy<Gauge> = Lazy::new(Gauge::default);

/// Resolve the per-route counters of `cfg` (at start, and on each reload).
pub fn set_routes(cfg: &Config) {
    let mut known = KNOWN_ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    let routes = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let route = format!("routes[{i}]");
            let up = cfg
                .upstreams
                .get(r.upstream)
                .map(|u| u.name.as_str())
                .unwrap_or("-");
            if let Some(m) = known.iter().find(|m| m.route == route && m.upstream == up) {
                return *m;
            }
            // leaked once per distinct pair: the counters live as long as their series
            let m: &'static RouteMetrics = Box::leak(Box::new(RouteMetrics::new(&route, up)));
            known.push(m);
            m
        })
        .collect();
    ROUTES.store(Arc::new(routes));
}

type RouteTable = arc_swap::ArcSwap<Vec<&'static RouteMetrics>>;

thread_local! {
    /// This thread's view of [`ROUTES`]: a load through it is one read of the shared
    /// pointer while no reload replaced it, where `ArcSwap::load` registers and releases a
    /// debt (about 50 instructions, on every request). A thread keeps the table it saw
    /// last until its next request; the counters themselves are never freed.
    static LOCAL_ROUTES: std::cell::RefCell<arc_swap::cache::Cache<&'static RouteTable, Arc<Vec<&'static RouteMetrics>>>> =
        std::cell::RefCell::new(arc_swap::cache::Cache::new(&*ROUTES));
}

pub(super) fn route_metrics(id: Option<usize>) -> &'static RouteMetrics {
    id.and_then(|i| {
        LOCAL_ROUTES.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => c.load().get(i).copied(),
            // not reentrant; were it ever, the shared table answers
            Err(_) => ROUTES.load().get(i).copied(),
        })
    })
    .unwrap_or(&UNROUTED)
}

/// Register the collector (once, at start).
pub(super) fn register() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        Scraped::register(&FAMILIES, collect);
    });
}

/// The families the route counters feed.
const FAMILIES: [Family; 7] = [
    (
        "stepstone_requests_total",
        "HTTP requests by route and status class (err: no response was sent)",
        &["route", "upstream", "class"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_client_closed_total",
        "HTTP/2 streams the client reset (cancelled) before the response ended; also counted as class err",
        &["route", "upstream"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_request_duration_seconds",
        "Time from the request head to the end of the response",
        &["route", "upstream"],
        MetricType::HISTOGRAM,
    ),
    (
        "stepstone_http_body_bytes_total",
        "HTTP body bytes received from (in) and sent to (out) clients",
        &["route", "direction"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_upstream_connections_total",
        "Upstream connections used by requests, new and reused",
        &["upstream"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_upstream_connections_reused_total",
        "Upstream connections taken from the keep-alive pool",
        &["upstream"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_requests_in_flight",
        "HTTP requests being processed",
        &[],
        MetricType::GAUGE,
    ),
];

const CLASSES: [&str; 6] = ["err", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// A registry collector of a static table of families whose series `collect` builds at
/// scrape time (the route counters here, the L4 listeners' in [`super::l4`]).
#[derive(Clone)]
pub(super) struct Scraped {
    descs: Arc<Vec<Desc>>,
    collect: fn() -> Vec<MetricFamily>,
}

impl Scraped {
    pub(super) fn register(families: &[Family], collect: fn() -> Vec<MetricFamily>) {
        let _ = reg(Scraped {
            descs: Arc::new(descs(families)),
            collect,
        });
    }
}

impl Collector for Scraped {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.collect)()
    }
}

/// A family's name, help, label names and type.
pub(super) type Family = (
    &'static str,
    &'static str,
    &'static [&'static str],
    MetricType,
);

/// The descriptions a collector registers for `families`.
pub(super) fn descs(families: &[Family]) -> Vec<Desc> {
    families
        .iter()
        .filter_map(|(name, help, labels, _)| {
            let labels = labels.iter().map(|l| l.to_string()).collect();
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels,
                Default::default(),
            )
            .map_err(|e| log::error!("metric {name}: {e}"))
            .ok()
        })
        .collect()
}

/// `families` with their series (`metrics[i]` belongs to `families[i]`).
pub(super) fn families<const N: usize>(
    families: &[Family; N],
    metrics: [Vec<proto::Metric>; N],
) -> Vec<MetricFamily> {
    families
        .iter()
        .zip(metrics)
        .map(|((name, help, _, kind), metrics)| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(*kind);
            f.set_metric(metrics);
            f
        })
        .collect()
}

pub(super) fn gauge(pairs: &[(&str, &str)], v: i64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Label pairs sorted by name, as the Prometheus handles wrote them.
pub(super) fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    let mut out: Vec<proto::LabelPair> = pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

pub(super) fn counter(pairs: &[(&str, &str)], v: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn histogram(pairs: &[(&str, &str)], t: &Totals) -> proto::Metric {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let buckets = LATENCY_BOUNDS_NS
        .iter()
        .zip(&t.duration)
        .map(|(bound, n)| {
            cumulative = cumulative.wrapping_add(*n);
            let mut b = proto::Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound(*bound as f64 / 1e9);
            b
        })
        .collect();
    // the count is the buckets' sum, so `+Inf` always equals it even while a request is
    // being counted on another thread
    h.set_sample_count(t.duration.iter().fold(0, |a, n| a.wrapping_add(*n)));
    h.set_sample_sum(t.duration_ns as f64 / 1e9);
    h.set_bucket(buckets);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

/// Every known pair's stripes, summed into the families above.
fn collect() -> Vec<MetricFamily> {
    let mut pairs: Vec<&'static RouteMetrics> = KNOWN_ROUTES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(u) = Lazy::get(&UNROUTED) {
        pairs.push(u);
    }
    let mut metrics: [Vec<proto::Metric>; 7] = Default::default();
    let mut bytes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut conns: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in pairs {
        let t = p.sum();
        let (route, up) = (p.route.as_str(), p.upstream.as_str());
        for (class, n) in CLASSES.iter().zip(t.requests) {
            metrics[0].push(counter(
                &[("route", route), ("upstream", up), ("class", class)],
                n,
            ));
        }
        metrics[1].push(counter(
            &[("route", route), ("upstream", up)],
            t.client_closed,
        ));
        metrics[2].push(histogram(&[("route", route), ("upstream", up)], &t));
        // a route label (and an upstream label) can belong to several pairs after a
        // reload changed the route's upstream; their series are one
        let b = bytes.entry(route).or_default();
        *b = (b.0.wrapping_add(t.bytes_in), b.1.wrapping_add(t.bytes_out));
        let c = conns.entry(up).or_default();
        *c = (c.0.wrapping_add(t.conns), c.1.wrapping_add(t.reused));
    }
    for (route, (i, o)) in bytes {
        metrics[3].push(counter(&[("route", route), ("direction", "in")], i));
        metrics[3].push(counter(&[("route", route), ("direction", "out")], o));
    }
    for (up, (all, reused)) in conns {
        metrics[4].push(counter(&[("upstream", up)], all));
        metrics[5].push(counter(&[("upstream", up)], reused));
    }
    metrics[6].push(gauge(&[], IN_FLIGHT.get()));
    families(&FAMILIES, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nanosecond_bounds_render_as_the_buckets_series_always_had() {
        // the `le` values of the histogram before it was striped: dashboards match on them
        let before = [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "10", "30",
        ];
        assert_eq!(LATENCY_BOUNDS_NS.len(), before.len());
        for (ns, le) in LATENCY_BOUNDS_NS.iter().zip(before) {
            assert_eq!((*ns as f64 / 1e9).to_string(), le);
        }
    }

    #[test]
    fn counts_from_several_threads_render_as_one_series_per_pair() {
        let m: &'static RouteMetrics = Box::leak(Box::new(RouteMetrics::new("t[0]", "t-up")));
        KNOWN_ROUTES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
        register();
        let joins: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        let took = Duration::from_micros(if i % 2 == 0 { 100 } else { 3000 });
                        m.done(if i % 10 == 0 { 0 } else { 200 }, took, 10, 20);
                        m.connected(i % 4 != 0, Duration::from_micros(50));
                    }
                })
            })
            .collect();
        for j in joins {
            j.join().expect("counting thread");
        }
        let text = super::super::render(&[]);
        let want = [
            r#"stepstone_requests_total{class="2xx",route="t[0]",upstream="t-up"} 3600"#,
            r#"stepstone_requests_total{class="err",route="t[0]",upstream="t-up"} 400"#,
            r#"stepstone_requests_total{class="5xx",route="t[0]",upstream="t-up"} 0"#,
            r#"stepstone_request_duration_seconds_bucket{route="t[0]",upstream="t-up",le="0.0005"} 2000"#,
            r#"stepstone_request_duration_seconds_bucket{route="t[0]",upstream="t-up",le="0.0025"} 2000"#,
            r#"stepstone_request_duration_seconds_bucket{route="t[0]",upstream="t-up",le="0.005"} 4000"#,
            r#"stepstone_request_duration_seconds_bucket{route="t[0]",upstream="t-up",le="+Inf"} 4000"#,
            r#"stepstone_request_duration_seconds_sum{route="t[0]",upstream="t-up"} 6.2"#,
            r#"stepstone_request_duration_seconds_count{route="t[0]",upstream="t-up"} 4000"#,
            r#"stepstone_http_body_bytes_total{direction="in",route="t[0]"} 40000"#,
            r#"stepstone_http_body_bytes_total{direction="out",route="t[0]"} 80000"#,
            r#"stepstone_upstream_connections_total{upstream="t-up"} 4000"#,
            r#"stepstone_upstream_connections_reused_total{upstream="t-up"} 3000"#,
        ];
        for line in want {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
