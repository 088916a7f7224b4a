//! Spans of sampled requests, exported by OTLP/HTTP (protobuf) off the request path.
//!
//! Design: a finished sampled request becomes a [`SpanData`] handed to a bounded queue
//! (`try_send`: a full queue drops the span, counted). A dedicated thread, started on first
//! use (after a daemon fork, like the access-log writer), takes up to [`BATCH`] spans or
//! what arrived within [`LINGER`], encodes one `ExportTraceServiceRequest` and POSTs it with
//! blocking I/O and short timeouts. A collector that is down or slow costs the dropped batch
//! and a counter: the workers never wait for it, and memory is capped by the queue.
//! When `tracing` is not configured nothing here is allocated and no thread runs.

use super::*;
use crate::config::tracing::TracingSpec;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use std::io::Read as _;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::SystemTime;

/// Spans waiting for the exporter; past this they are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const LINGER: Duration = Duration::from_millis(500);
/// Connect, write and read timeouts of one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The trace context of one request: the trace it belongs to, the proxy's own span, and
/// whether it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceCtx {
    /// The trace id as 32 lower-case hex digits (the access-log field).
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// What the exporter needs of a finished request.
pub struct SpanData {
    pub ctx: TraceCtx,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub host: String,
    pub version: &'static str,
    pub route: String,
    pub upstream: String,
    pub backend: Option<String>,
    pub retries: u32,
    pub cache: &'static str,
    /// The upstream tries: (own span id, start, end, backend); each but the last failed.
    pub tries: Vec<([u8; 8], SystemTime, SystemTime, Box<str>)>,
}

/// The tracer: always there, off when the configuration has no `tracing` block (a reload
/// may turn it on or off, or change its ratio and collector).
struct Tracer {
    on: std::sync::atomic::AtomicBool,
    /// The sampling ratio's bits (`f64::to_bits`).
    ratio: std::sync::atomic::AtomicU64,
    /// The exporter's queue, made the first time tracing is on.
    tx: OnceCell<SyncSender<SpanData>>,
    /// Where the exporter sends, read once per batch.
    spec: std::sync::Mutex<Option<TracingSpec>>,
}

static TRACER: OnceCell<Tracer> = OnceCell::new();
static EXPORTER: OnceCell<std::sync::Mutex<Option<Receiver<SpanData>>>> = OnceCell::new();
static EXPORTER_STARTED: OnceCell<()> = OnceCell::new();

pub static SPANS_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_tracing_spans_dropped_total",
        "Sampled spans not exported: the queue was full or the collector failed",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});
pub static EXPORT_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_tracing_export_errors_total",
        "OTLP export requests that failed (connect, timeout or a non-2xx answer)",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});
pub static SPANS_EXPORTED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "stepstone_tracing_spans_exported_total",
        "Spans the collector accepted",
    )
    .unwrap_or_else(|e| panic!("{e}")))
});

/// Set up the queue (once, at start), on when `tracing` is configured.
pub(super) fn init(spec: Option<&TracingSpec>) {
    let _ = TRACER.set(Tracer {
        on: std::sync::atomic::AtomicBool::new(false),
        ratio: std::sync::atomic::AtomicU64::new(0),
        tx: OnceCell::new(),
        spec: std::sync::Mutex::new(None),
    });
    set(spec);
}

/// A reload's tracing settings: new traces are sampled at the new ratio, and the next batch
/// goes to the new collector; off, nothing more is sampled (spans queued go out).
pub fn set(spec: Option<&TracingSpec>) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(t) = TRACER.get() else { return };
    if let Some(s) = spec {
        // the families show, and the queue is made, the first time tracing is on
        Lazy::force(&SPANS_DROPPED);
        Lazy::force(&EXPORT_ERRORS);
        Lazy::force(&SPANS_EXPORTED);
        t.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            EXPORTER.get_or_init(|| std::sync::Mutex::new(Some(rx)));
            tx
        });
        if let Ok(mut cur) = t.spec.lock() {
            *cur = Some(s.clone());
        }
        t.ratio.store(s.sample_ratio.to_bits(), Relaxed);
    }
    t.on.store(spec.is_some(), Relaxed);
}

/// The sampling ratio of new traces, or `None` when tracing is off.
#[inline]
pub fn sample_ratio() -> Option<f64> {
    use std::sync::atomic::Ordering::Relaxed;
    TRACER
        .get()
        .filter(|t| t.on.load(Relaxed))
        .map(|t| f64::from_bits(t.ratio.load(Relaxed)))
}

/// Queue a finished span; never waits.
pub fn record(span: SpanData) {
    let Some(tx) = TRACER.get().and_then(|t| t.tx.get()) else {
        return;
    };
    start_exporter();
    if tx.try_send(span).is_err() {
        SPANS_DROPPED.inc();
    }
}

fn start_exporter() {
    EXPORTER_STARTED.get_or_init(|| {
        let rx = EXPORTER
            .get()
            .and_then(|m| m.lock().ok().and_then(|mut g| g.take()));
        if let Some(rx) = rx {
            let spawned = std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || export_loop(rx));
            if let Err(e) = spawned {
                log::error!("tracing: cannot start the exporter thread: {e}");
            }
        }
    });
}

/// The collector last configured (kept when a reload turns tracing off, so that what is
/// queued still goes out).
fn current_spec() -> Option<TracingSpec> {
    TRACER.get()?.spec.lock().ok()?.clone()
}

fn export_loop(rx: Receiver<SpanData>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let deadline = Instant::now() + LINGER;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let Some(spec) = current_spec() else {
            SPANS_DROPPED.inc_by(batch.len() as u64);
            batch.clear();
            continue;
        };
        let body = encode(&spec, &batch).encode_to_vec();
        match post(&spec, &body) {
            Ok(()) => SPANS_EXPORTED.inc_by(batch.len() as u64),
            Err(e) => {
                EXPORT_ERRORS.inc();
                SPANS_DROPPED.inc_by(batch.len() as u64);
                log::debug!("tracing: export to {} failed: {e}", spec.authority);
            }
        }
        batch.clear();
    }
}

/// One HTTP/1.1 POST, answered 2xx, or an error.
fn post(spec: &TracingSpec, body: &[u8]) -> std::io::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&spec.addr, EXPORT_TIMEOUT)?;
    s.set_write_timeout(Some(EXPORT_TIMEOUT))?;
    s.set_read_timeout(Some(EXPORT_TIMEOUT))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n",
        spec.path,
        spec.authority,
        body.len()
    );
    for (k, v) in &spec.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // The status line is all that matters; the rest of the answer is not read.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = &buf[..n];
    if line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[9] == b'2' {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "collector answered {:?}",
            String::from_utf8_lossy(line)
        )))
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The OTLP request for a batch: one resource (the service), one scope, one server span per
/// request with the HTTP semantic-convention attributes and the proxy's own.
pub fn encode(spec: &TracingSpec, batch: &[SpanData]) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(batch.len() * 2);
    for d in batch {
        spans.push(server_span(d));
        let last = d.tries.len();
        for (i, (id, start, end, backend)) in d.tries.iter().enumerate() {
            let mut attributes = vec![
                s("stepstone.backend", backend),
                kv("stepstone.try", any_value::Value::IntValue(i as i64 + 1)),
            ];
            let failed = i + 1 < last;
            if !failed {
                attributes.push(kv(
                    "http.response.status_code",
                    any_value::Value::IntValue(i64::from(d.status)),
                ));
            }
            spans.push(Span {
                trace_id: d.ctx.trace_id.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: d.ctx.span_id.to_vec(),
                flags: 0x100 | u32::from(d.ctx.sampled),
                name: "upstream try".into(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(*start),
                end_time_unix_nano: nanos(*end),
                attributes,
                status: Some(Status {
                    code: if failed {
                        status::StatusCode::Error
                    } else {
                        status::StatusCode::Unset
                    } as i32,
                    message: if failed {
                        "retried".into()
                    } else {
                        String::new()
                    },
                }),
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", &spec.service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "stepstone".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The request's server span.
fn server_span(d: &SpanData) -> Span {
    let mut attributes = vec![
        s("http.request.method", &d.method),
        s("url.path", &d.path),
        kv(
            "http.response.status_code",
            any_value::Value::IntValue(i64::from(d.status)),
        ),
        s("server.address", &d.host),
        s("network.protocol.version", d.version),
        s("stepstone.route", &d.route),
        s("stepstone.upstream", &d.upstream),
        kv(
            "stepstone.retries",
            any_value::Value::IntValue(i64::from(d.retries)),
        ),
        s("stepstone.cache", d.cache),
    ];
    if let Some(b) = &d.backend {
        attributes.push(s("stepstone.backend", b));
    }
    // OTel's HTTP server convention: only 5xx (or no answer) is an error.
    let code = if d.status >= 500 || d.status == 0 {
        status::StatusCode::Error
    } else {
        status::StatusCode::Unset
    };
    Span {
        trace_id: d.ctx.trace_id.to_vec(),
        span_id: d.ctx.span_id.to_vec(),
        parent_span_id: d.ctx.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: 0x100 | u32::from(d.ctx.sampled),
        name: format!("{} {}", d.method, d.route),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: nanos(d.start),
        end_time_unix_nano: nanos(d.end),
        attributes,
        status: Some(Status {
            code: code as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The span of a finished request, queued when its trace is sampled.
pub(super) fn request_done(
    obs: &RequestObs,
    req: &ReqView,
    m: &RouteMetrics,
    backend: Option<&str>,
    status: u16,
    cache: &'static str,
) {
    let Some(ctx) = obs.trace.filter(|t| t.sampled) else {
        return;
    };
    let now = Instant::now();
    let end = SystemTime::now();
    let wall = |at: Instant| end - now.saturating_duration_since(at);
    // a try lasts until the next one starts, the last one until the request ends
    let mut tries = Vec::with_capacity(obs.try_log.len());
    for (i, (at, backend)) in obs.try_log.iter().enumerate() {
        let until = obs.try_log.get(i + 1).map_or(end, |(next, _)| wall(*next));
        let mut id: [u8; 8] = rand::random();
        id[0] |= u8::from(id == [0; 8]);
        tries.push((id, wall(*at), until, backend.clone()));
    }
    // an absolute-form target (HTTP/2 requests on the general engine) loses its origin
    let target = match req.uri.find("://") {
        Some(i) if !req.uri.starts_with('/') => {
            let rest = &req.uri[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        _ => req.uri,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    record(SpanData {
        ctx,
        start: end - obs.start.elapsed(),
        end,
        method: req.method.to_string(),
        path: path.to_string(),
        status,
        // `server.address`: the Host without its port
        host: crate::config::strip_port(req.host).to_string(),
        version: protocol_version(req.version),
        route: m.route.clone(),
        upstream: m.upstream.clone(),
        backend: backend.map(str::to_string),
        retries: obs.tries.saturating_sub(1),
        cache,
        tries,
    });
}

/// `network.protocol.version` as the convention writes it: 1.0, 1.1, 2, 3.
fn protocol_version(v: &'static str) -> &'static str {
    match v {
        "HTTP/2.0" => "2",
        "HTTP/3.0" => "3",
        _ => v.strip_prefix("HTTP/").unwrap_or(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_forms() {
        assert_eq!(protocol_version("HTTP/1.1"), "1.1");
        assert_eq!(protocol_version("HTTP/2.0"), "2");
    }

    #[test]
    fn encodes_a_server_span_and_its_tries() {
        let spec = TracingSpec {
            authority: "127.0.0.1:4318".into(),
            addr: ([127, 0, 0, 1], 4318).into(),
            path: "/v1/traces".into(),
            service_name: "svc".into(),
            sample_ratio: 1.0,
            headers: Vec::new(),
        };
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_000);
        let ctx = TraceCtx {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            sampled: true,
        };
        let d = SpanData {
            ctx,
            start: t0,
            end: t0 + Duration::from_millis(9),
            method: "GET".into(),
            path: "/x".into(),
            status: 502,
            host: "a.test".into(),
            version: "1.1",
            route: "r".into(),
            upstream: "u".into(),
            backend: Some("b2".into()),
            retries: 1,
            cache: "-",
            tries: vec![
                ([4; 8], t0, t0 + Duration::from_millis(3), "b1".into()),
                (
                    [5; 8],
                    t0 + Duration::from_millis(3),
                    t0 + Duration::from_millis(9),
                    "b2".into(),
                ),
            ],
        };
        let bytes = encode(&spec, &[d]).encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let spans = &back.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].parent_span_id, vec![3; 8]);
        assert_eq!(
            spans[0].status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!(spans[0].start_time_unix_nano, 1_000_000_000_000);
        for (s, id, failed) in [(&spans[1], 4u8, true), (&spans[2], 5, false)] {
            assert_eq!(
                (s.span_id.clone(), s.parent_span_id.clone()),
                (vec![id; 8], vec![2; 8])
            );
            let code = s.status.as_ref().unwrap().code;
            assert_eq!(code == status::StatusCode::Error as i32, failed);
        }
    }
}
