//! Configuration: the file types ([`file`]), unit parsing ([`units`]) and the validated
//! runtime form ([`Config`]) that the rest of the proxy is built from.
//!
//! Errors always name the file, the key path and the bad value, so an operator can fix a
//! config without reading source code.
//!
//! This module holds the runtime types; the rules that produce them live with their section
//! (`validate_listeners`, `validate_upstreams`, `validate_routes`, `validate_ops`, and
//! [`l4`], [`forward`], [`cache`]), so that each section's rules read in one place. [`validate`]
//! only runs the sections in the order their cross references need.

pub mod acme;
pub mod cache;
pub mod certs;
pub mod cidr;
pub mod compression;
pub mod file;
pub mod forward;
pub mod l4;
pub mod quic;
pub mod source;
pub mod tls;
pub mod tracing;
pub mod units;
mod validate_listeners;
mod validate_ops;
mod validate_routes;
mod validate_upstreams;

use file::*;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// `pingora.busy_poll`: off, as HAProxy's `busy-polling` is. Spinning pays only where
/// waking a sleeping CPU is dear (a VM whose wake-ups exit to the hypervisor); there 25us
/// suits a busy worker (a little longer than the gap between requests at 65,000 a second).
/// On the current bench host, alternating runs of 12 scenarios with 25us and with 0 gave
/// the same CPU per request and throughput within the runs' noise, and a lower p99 without
/// the spin in 19 of 24 pairs; a second comparison showed no direction in any of the three
/// (benches/RESULTS.md, 2026-12-03 06:40 and 07:00 UTC).
pub const DEFAULT_BUSY_POLL: Duration = Duration::ZERO;
/// `pingora.busy_poll_nap`: none, the thread polls again at once (a pure spin).
pub const DEFAULT_BUSY_POLL_NAP: Duration = Duration::ZERO;
/// A nap longer than this delays every request that arrives during it by as much, for a
/// saving in wake-ups that is already whole at a few tens of microseconds.
pub const MAX_BUSY_POLL_NAP: Duration = Duration::from_millis(1);
/// `pingora.max_open_files` below this leaves no room to serve (listeners, logs, the
/// upgrade socket and a few connections take that many).
pub const MIN_OPEN_FILES: u64 = 64;
/// Longer spins than this buy nothing a blocking wait would not give.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HC_HEALTHY: u32 = 1;
pub const DEFAULT_HC_UNHEALTHY: u32 = 2;
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 << 20;
pub const DEFAULT_UPSTREAM_POOL_SIZE: usize = 2048;
pub const DEFAULT_MAX_REQUEST_LINE: u64 = 8 << 10;
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEPALIVE_REQUESTS: u32 = 1000;
pub const DEFAULT_HTTPS_PORT: u16 = 443;
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams per HTTP/2 connection to a backend (Pingora's own default is 1).
pub const DEFAULT_UPSTREAM_H2_STREAMS: usize = 100;
/// tcp and tls_passthrough listeners: no bytes either way for this long closes a connection.
pub const DEFAULT_L4_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// tls_passthrough: the ClientHello must arrive within this time and size.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
pub const CLIENT_HELLO_MAX: usize = 16 << 10;
/// accept_proxy_protocol: the PROXY header must arrive within this time.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_PENDING: u32 = 100;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RATE_STORE_TIMEOUT: Duration = Duration::from_millis(5);
pub const DEFAULT_RATE_STORE_POOL: usize = 16;
pub const DEFAULT_RATE_STORE_PREFIX: &str = "stepstone:";
pub const DEFAULT_OUTLIER_CONSECUTIVE: u32 = 5;
pub const DEFAULT_OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_OUTLIER_MAX_PERCENT: u32 = 50;
pub const DEFAULT_STICKY_COOKIE: &str = "SRV";
pub const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(3600);
/// Upper bound on backend weight; it keeps the round-robin wheel small.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Key path such as `upstreams[0].backends[1].weight`; empty for whole-file errors.
    pub path: String,
    pub value: String,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.msg)
        } else if self.value.is_empty() {
            write!(f, "{}: {}: {}", self.file, self.path, self.msg)
        } else {
            write!(
                f,
                "{}: {}: {} (got {:?})",
                self.file, self.path, self.msg, self.value
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }

    /// Longer, more specific patterns are tried first.
    pub fn specificity(&self) -> usize {
        match self {
            HostMatch::Any => 0,
            HostMatch::Suffix(s) => 1 + s.len(),
            HostMatch::Exact(h) => 10_000 + h.len(),
        }
    }

    pub fn parse(s: &str) -> Result<HostMatch, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s == "*" {
            return Ok(HostMatch::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if valid_hostname(rest) {
                return Ok(HostMatch::Suffix(format!(".{rest}")));
            }
        } else if valid_hostname(&s) {
            return Ok(HostMatch::Exact(s));
        }
        Err("expected a host name or *.suffix".into())
    }
}

/// `host` without its port (a request's Host or authority, for routing and for spans).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    // Back over the digits, then the colon: a byte loop, as this runs for every request
    // (`rfind` set up its searcher for a few bytes at a higher cost than the walk).
    let b = host.as_bytes();
    let mut i = b.len();
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    match i.checked_sub(1) {
        Some(colon) if b[colon] == b':' => &host[..colon],
        _ => host,
    }
}

pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    RoundRobin,
    Random,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Uri,
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Concurrent requests (or L4 connections) to this backend at most; `None`: unlimited.
    pub max_connections: Option<u32>,
}

/// A backend given by DNS name: every address it resolves to is a backend of this weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBackendSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct AdminSpec {
    pub addr: SocketAddr,
    /// None locks every call that needs a token.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AccessLogSpec {
    pub format: AccessLogFormat,
    /// None is stdout.
    pub path: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub kind: HealthCheckType,
    pub path: String,
    pub host: String,
    pub expect_status: u16,
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// http only: one connection kept per backend for its checks.
    pub reuse_connection: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    pub selection: Selection,
    pub hash_key: HashKey,
    pub health: Option<HealthSpec>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub retry_on: RetryOn,
    pub retry_budget_percent: u32,
    pub per_try_timeout: Option<Duration>,
    pub send_proxy_protocol: Option<ProxyProtocolFile>,
    pub tls: Option<UpstreamTlsSpec>,
    /// HTTP/2 to the backends: by ALPN with tls, by prior knowledge (h2c) without.
    pub http2: bool,
    /// Backends by DNS name, re-resolved every `resolve_every`.
    pub dns_backends: Vec<DnsBackendSpec>,
    pub resolve_every: Duration,
    pub outlier: Option<OutlierSpec>,
    pub max_pending: u32,
    pub queue_timeout: Duration,
    /// Zero: off.
    pub slow_start: Duration,
    pub sticky: Option<StickySpec>,
}

#[derive(Debug, Clone)]
pub struct StickySpec {
    pub cookie: String,
    /// Zero: a session cookie.
    pub ttl: Duration,
    /// `None`: beside the pid file.
    pub key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct MirrorSpec {
    /// Index into the config's upstreams.
    pub upstream: usize,
    pub percent: u32,
}

/// What failures a request is retried on (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    /// Every 5xx.
    pub any_5xx: bool,
    /// Status codes 400..=599, one bit each from 400.
    pub statuses: [u64; 4],
}

impl RetryOn {
    pub fn status(&self, code: u16) -> bool {
        match code {
            500..=599 if self.any_5xx => true,
            400..=599 => {
                let i = (code - 400) as usize;
                self.statuses[i / 64] & (1 << (i % 64)) != 0
            }
            _ => false,
        }
    }

    pub fn add_status(&mut self, code: u16) {
        let i = (code - 400) as usize;
        self.statuses[i / 64] |= 1 << (i % 64);
    }

    /// Whether anything but a connect failure is retried: then a try may have sent the
    /// request, and its body must be held to send it again.
    pub fn after_sending(&self) -> bool {
        self.reset || self.timeout || self.any_5xx || self.statuses != [0; 4]
    }
}

#[derive(Debug, Clone, Copy)]
pub struct OutlierSpec {
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_request_line: usize,
    pub max_header_size: usize,
    pub max_header_count: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: Option<usize>,
    pub rate_limit_per_ip: Option<u32>,
    /// Where the per-IP count is shared; `None`: counted in this instance.
    pub rate_limit_store: Option<RateStoreSpec>,
    pub client_timeout: Duration,
    /// Requests per client connection; `None`: unlimited.
    pub keepalive_requests: Option<u32>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_request_line: DEFAULT_MAX_REQUEST_LINE as usize,
            max_header_size: DEFAULT_MAX_HEADER_SIZE as usize,
            max_header_count: DEFAULT_MAX_HEADER_COUNT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: None,
            rate_limit_per_ip: None,
            rate_limit_store: None,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            keepalive_requests: Some(DEFAULT_KEEPALIVE_REQUESTS),
        }
    }
}

/// A Redis server that instances count their per-IP requests in together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateStoreSpec {
    pub addr: SocketAddr,
    pub key_prefix: String,
    pub timeout: Duration,
    pub pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Set for forward-proxy listeners, which have no routes.
    pub forward: Option<forward::ForwardSpec>,
    /// tcp and tls_passthrough settings; None for HTTP listeners.
    pub l4: Option<l4::L4Spec>,
    /// accept_proxy_protocol: the networks trusted to send a PROXY header.
    pub proxy_protocol: Option<Vec<cidr::Cidr>>,
    pub tls: Option<TlsSpec>,
    /// http only: redirect every request to https on this port.
    pub redirect_https: Option<u16>,
    /// http only: accept cleartext HTTP/2.
    pub h2c: bool,
    /// Serve what it can on the lean engine; `false`: every request on Pingora's.
    pub fast_path: bool,
    /// Accept a connection only once its client has sent data (TCP_DEFER_ACCEPT).
    pub defer_accept: bool,
    /// Move bytes between a plain client socket and the backend with splice(2) (`splice`):
    /// http, large request and response bodies; tcp and tls_passthrough, the whole relay.
    pub splice: bool,
    pub limits: ListenerLimits,
    /// https with `http3: true`: the QUIC side.
    pub http3: Option<quic::QuicSpec>,
}

/// A validated listener TLS block. The files were readable and consistent when the config
/// was loaded; they are read again when the listener is built and on every reload.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Key path of the block, e.g. `listeners[0].tls`, for log lines.
    pub key_path: String,
    /// The listener's name: the `listener` label of the TLS and ACME metrics, as of every
    /// other per-listener metric (it stays when a reload moves the listener in the file).
    pub listener: String,
    /// The first is the default certificate.
    pub certificates: Vec<CertSpec>,
    pub client_ca: Option<String>,
    pub allow_expired: bool,
    /// Zero: no polling (SIGHUP still reloads).
    pub reload_interval: Duration,
    pub handshake_timeout: Duration,
    /// Certificates ordered from an ACME CA, served for their names before the files.
    pub acme: Option<acme::AcmeSpec>,
}

#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Resolved paths (relative ones against the config file's directory).
    pub cert: String,
    pub key: String,
    pub server_names: Vec<HostMatch>,
}

/// TLS towards the backends of one upstream. Files are loaded at validation time, so `-t`
/// catches them and the running proxy never re-reads them.
#[derive(Debug, Clone)]
pub struct UpstreamTlsSpec {
    /// Empty only when `verify` is off.
    pub sni: String,
    pub verify: bool,
    pub ca: Option<certs::Trusted>,
    pub client: Option<certs::ClientCert>,
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub listener: usize,
    pub host: HostMatch,
    pub path_prefix: String,
    /// The first upstream (the only one without a split), for labels.
    pub upstream: usize,
    /// Upstreams and weights when the route splits; empty otherwise.
    pub split: Vec<(usize, u32)>,
    /// Header fields (lower-cased names) and cookies that must all match.
    pub match_headers: Vec<(String, String)>,
    pub match_cookies: Vec<(String, String)>,
    pub max_body_size: u64,
    pub cache: Option<cache::CacheSpec>,
    pub mirror: Option<MirrorSpec>,
    pub compression: Option<compression::CompressionSpec>,
    /// `methods`: the methods taken, HEAD added where GET is; `None`: all but TRACE.
    pub methods: Option<Vec<String>>,
}

/// The validated configuration. Cross references are resolved to indices.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: String,
    pub pingora: PingoraFile,
    pub listeners: Vec<ListenerSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// Bytes of the response store shared by every cache; `None` when no cache is enabled.
    pub cache_store_size: Option<u64>,
    pub admin: Option<AdminSpec>,
    pub access_log: Option<AccessLogSpec>,
    /// Span export; `None` (the default) turns tracing off entirely.
    pub tracing: Option<tracing::TracingSpec>,
    /// Where `upstreams` and `routes` come from when not from the file.
    pub config_source: Option<source::EtcdSpec>,
}

impl Config {
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_string(),
            path: String::new(),
            value: String::new(),
            msg: format!("cannot read the file: {e}"),
        })?;
        Config::from_yaml(path, &text)
    }

    pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigError> {
        validate(file, parse(file, text)?)
    }
}

/// A YAML document into its file type, errors naming `file` and the key path.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut msg = e.into_inner().to_string();
        // serde_yaml prefixes its own, shorter path; ours is the precise one.
        if let Some((head, rest)) = msg.split_once(": ") {
            if !head.contains(' ') && path.starts_with(head) {
                msg = rest.to_string();
            }
        }
        ConfigError {
            file: file.to_string(),
            path: if path == "." { String::new() } else { path },
            value: String::new(),
            msg,
        }
    })
}

pub(crate) struct Errs<'a> {
    pub(crate) file: &'a str,
}

impl Errs<'_> {
    pub(crate) fn err(
        &self,
        path: impl Into<String>,
        value: impl fmt::Display,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            value: value.to_string(),
            msg: msg.into(),
        }
    }
}

fn parse_addr(e: &Errs, path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse::<SocketAddr>()
        .map_err(|_| e.err(path, s, "expected IP:PORT, for example 127.0.0.1:8080"))
}

/// A path from the config, relative to the config file's directory unless absolute.
pub(crate) fn relative_to(config_file: &str, p: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(p);
    match std::path::Path::new(config_file).parent() {
        Some(dir) if !path.is_absolute() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

pub(crate) fn dur(d: Option<units::Dur>, default: Duration) -> Duration {
    d.map(|d| d.0).unwrap_or(default)
}

/// Sections are checked in the order their references need: listeners, upstreams, the L4
/// listener settings (which name upstreams), then routes (which name both).
pub fn validate(file: &str, raw: FileConfig) -> Result<Config, ConfigError> {
    let e = Errs { file };
    if raw.listeners.is_empty() {
        return Err(e.err("listeners", "", "at least one listener is required"));
    }
    if let Some(0) = raw.pingora.threads {
        return Err(e.err("pingora.threads", 0, "must be at least 1"));
    }
    if let Some(d) = raw.pingora.busy_poll.filter(|d| d.0 > MAX_BUSY_POLL) {
        return Err(e.err(
            "pingora.busy_poll",
            format!("{:?}", d.0),
            "must be at most 10ms (0 turns it off)",
        ));
    }
    if let Some(d) = raw.pingora.busy_poll_nap {
        if d.0 > MAX_BUSY_POLL_NAP {
            return Err(e.err(
                "pingora.busy_poll_nap",
                format!("{:?}", d.0),
                "must be at most 1ms (0 turns it off)",
            ));
        }
        if !d.0.is_zero() && raw.pingora.busy_poll.is_none_or(|b| b.0.is_zero()) {
            return Err(e.err(
                "pingora.busy_poll_nap",
                format!("{:?}", d.0),
                "naps only between the polls of a busy poll: set pingora.busy_poll too",
            ));
        }
    }
    if let Some(d) = raw.pingora.busy_poll.filter(|d| !d.0.is_zero()) {
        if raw.pingora.work_stealing != Some(false) {
            // the spinner watches its own thread's requests; a work-stealing runtime moves
            // tasks between threads (src/spin.rs), so it would never start
            return Err(e.err(
                "pingora.busy_poll",
                format!("{:?}", d.0),
                "polls only on a thread's own runtime: set pingora.work_stealing: false",
            ));
        }
    }
    if let Some(n) = raw.pingora.max_open_files.filter(|n| *n < MIN_OPEN_FILES) {
        return Err(e.err(
            "pingora.max_open_files",
            n,
            format!("must be at least {MIN_OPEN_FILES}"),
        ));
    }

    // first: with a config_source the file has no routes or upstreams of its own to check
    let config_source = source::etcd(&e, &raw, raw.config_source.as_ref())?;

    // Forward proxies and routes feed one store size.
    let mut store = cache::StoreSize::default();
    let mut listeners = validate_listeners::listeners(&e, &raw.listeners, &mut store)?;
    let upstreams = validate_upstreams::upstreams(&e, &raw.upstreams)?;
    for (i, l) in raw.listeners.iter().enumerate() {
        listeners[i].l4 = l4::listener(&e, i, l, &upstreams)?;
    }

    let routes = validate_routes::routes(&e, &raw.routes, &listeners, &upstreams, &mut store)?;
    let cache_store_size = store.resolve();
    let forward_caches = listeners.iter().enumerate().filter_map(|(i, l)| {
        let c = l.forward.as_ref()?.cache.as_ref()?;
        Some((format!("listeners[{i}].forward_proxy"), c))
    });
    let route_caches = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((format!("routes[{i}]"), r.cache.as_ref()?)));
    for (p, c) in forward_caches.chain(route_caches) {
        if let Some(size) = cache_store_size {
            if c.max_object_size > size {
                return Err(e.err(
                    format!("{p}.cache.max_object_size"),
                    c.max_object_size,
                    format!("must not exceed the shared store's max_size ({size} bytes)"),
                ));
            }
        }
    }

    let admin = validate_ops::admin(&e, raw.admin.as_ref(), &listeners)?;
    let access_log = validate_ops::access_log(&e, raw.access_log.as_ref())?;
    let tracing = tracing::validate(&e, raw.tracing.as_ref())?;

    Ok(Config {
        file: file.to_string(),
        pingora: raw.pingora,
        listeners,
        upstreams,
        routes,
        cache_store_size,
        admin,
        access_log,
        tracing,
        config_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn unknown_key_is_an_error_with_path() {
        let y = format!(
            "{BASE}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:1, wieght: 2}}]}}]\n"
        );
        let err = Config::from_yaml("x.yaml", &y).unwrap_err().to_string();
        assert!(err.contains("wieght"), "{err}");
        assert!(err.contains("upstreams[0].backends[0]"), "{err}");
    }

    #[test]
    fn bad_duration_names_path() {
        let y = format!("{BASE}upstreams: [{{name: a, connect_timeout: 5x, backends: [{{address: 127.0.0.1:1}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err().to_string();
        assert!(err.contains("upstreams[0].connect_timeout"), "{err}");
        assert!(err.contains("5x"), "{err}");
    }

    #[test]
    fn rate_limit_store_is_checked_with_its_key_path() {
        let l = |limits: &str| {
            format!("listeners: [{{name: web, address: 127.0.0.1:8080, protocol: http, limits: {{{limits}}}}}]\n")
        };
        let err = |limits: &str| {
            Config::from_yaml("x.yaml", &l(limits))
                .unwrap_err()
                .to_string()
        };
        let e = err("rate_limit_store: {redis: {address: 127.0.0.1:6379}}");
        assert!(e.contains("listeners[0].limits.rate_limit_store"), "{e}");
        assert!(e.contains("rate_limit_per_ip"), "{e}");
        let e = err("rate_limit_per_ip: 5, rate_limit_store: {redis: {address: localhost}}");
        assert!(e.contains("rate_limit_store.redis.address"), "{e}");
        assert!(e.contains("localhost"), "{e}");
        let e = err("rate_limit_per_ip: 5, rate_limit_store: {}");
        assert!(e.contains("expected a store"), "{e}");
        let e = err(
            "rate_limit_per_ip: 5, rate_limit_store: {redis: {address: 127.0.0.1:1, timeout: 2s}}",
        );
        assert!(e.contains("rate_limit_store.redis.timeout"), "{e}");
        let e = err("rate_limit_per_ip: 5, rate_limit_store: {memcached: {}}");
        assert!(e.contains("memcached"), "{e}");
        let c = Config::from_yaml(
            "x.yaml",
            &l("rate_limit_per_ip: 5, rate_limit_store: {redis: {address: 127.0.0.1:6379}}"),
        )
        .unwrap();
        let s = c.listeners[0].limits.rate_limit_store.clone().unwrap();
        assert_eq!(s.key_prefix, DEFAULT_RATE_STORE_PREFIX);
        assert_eq!(s.timeout, DEFAULT_RATE_STORE_TIMEOUT);
        assert_eq!(s.pool_size, DEFAULT_RATE_STORE_POOL);
    }

    #[test]
    fn config_source_takes_the_routes_out_of_the_file() {
        let src = "config_source: {etcd: {endpoints: [\"http://127.0.0.1:2379\"], key: /r, cache_file: c.yaml}}\n";
        let c = Config::from_yaml("/etc/s/x.yaml", &format!("{BASE}{src}")).unwrap();
        let spec = c.config_source.clone().unwrap();
        assert_eq!(spec.endpoints[0].to_string(), "http://127.0.0.1:2379");
        assert_eq!(spec.cache_file.as_deref(), Some("/etc/s/c.yaml"));
        let e = Config::from_yaml(
            "x.yaml",
            &format!("{BASE}{src}routes: [{{listener: web, upstream: a}}]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("routes") && e.contains("config_source"), "{e}");
        let e = Config::from_yaml(
            "x.yaml",
            &format!("{BASE}config_source: {{etcd: {{endpoints: [\"ftp://h:1\"], key: /r}}}}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config_source.etcd.endpoints[0]") && e.contains("ftp://h:1"),
            "{e}"
        );
        let e = Config::from_yaml(
            "x.yaml",
            &format!("{BASE}config_source: {{etcd: {{endpoints: [], key: /r, tls: {{}}}}}}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls"), "{e}");
        let e = Config::from_yaml("x.yaml", &format!("{BASE}config_source: {{etcd: {{endpoints: [\"https://h:1\"], key: /r, cert_file: x.yaml}}}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config_source.etcd.cert_file") || e.contains("go together"),
            "{e}"
        );
        let e = Config::from_yaml("x.yaml", &format!("{BASE}config_source: {{etcd: {{endpoints: [\"https://h:1\"], key: /r, username: u, password_file: /nonexistent/pw}}}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config_source.etcd.password_file") && e.contains("/nonexistent/pw"),
            "{e}"
        );
    }

    #[test]
    fn host_patterns() {
        let s = HostMatch::parse("*.example.com").unwrap();
        assert!(s.matches("a.example.com"));
        assert!(s.matches("A.EXAMPLE.com"));
        assert!(!s.matches("example.com"));
        assert!(!s.matches("aexample.com"));
        assert!(HostMatch::parse("exa mple").is_err());
    }
}
