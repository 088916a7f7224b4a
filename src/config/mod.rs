//! Configuration: the file types ([`file`]), unit parsing ([`units`]) and the validated
//! runtime form ([`Config`]) that the rest of the proxy is built from.
//!
//! Errors always name the file, the key path and the bad value, so an operator can fix a
//! config without reading source code.

pub mod cache;
pub mod cidr;
pub mod file;
pub mod forward;
pub mod l4;
pub mod units;

use file::*;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRIES: u32 = 2;
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
    pub send_proxy_protocol: Option<ProxyProtocolFile>,
    pub tls: Option<UpstreamTlsSpec>,
    /// HTTP/2 to the backends: by ALPN with tls, by prior knowledge (h2c) without.
    pub http2: bool,
    /// Backends by DNS name, re-resolved every `resolve_every`.
    pub dns_backends: Vec<DnsBackendSpec>,
    pub resolve_every: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub max_request_line: usize,
    pub max_header_size: usize,
    pub max_header_count: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: Option<usize>,
    pub rate_limit_per_ip: Option<u32>,
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
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            keepalive_requests: Some(DEFAULT_KEEPALIVE_REQUESTS),
        }
    }
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
    pub limits: ListenerLimits,
}

fn limits(e: &Errs, p: &str, l: &Option<LimitsFile>) -> Result<ListenerLimits, ConfigError> {
    let d = ListenerLimits::default();
    let Some(l) = l else {
        return Ok(d);
    };
    let size = |v: Option<units::Size>, def: usize, key: &str, min: u64, max: u64| {
        let n = v.map(|s| s.0).unwrap_or(def as u64);
        if n < min || n > max {
            Err(e.err(
                format!("{p}.limits.{key}"),
                n,
                format!("must be between {min} and {max} bytes"),
            ))
        } else {
            Ok(n as usize)
        }
    };
    let max_request_line = size(
        l.max_request_line,
        d.max_request_line,
        "max_request_line",
        64,
        1 << 20,
    )?;
    let max_header_size = size(
        l.max_header_size,
        d.max_header_size,
        "max_header_size",
        256,
        1 << 20,
    )?;
    let max_header_count = l.max_header_count.unwrap_or(d.max_header_count);
    if !(1..=256).contains(&max_header_count) {
        return Err(e.err(
            format!("{p}.limits.max_header_count"),
            max_header_count,
            "must be between 1 and 256",
        ));
    }
    let header_timeout = dur(l.header_timeout, d.header_timeout);
    if header_timeout.is_zero() {
        return Err(e.err(
            format!("{p}.limits.header_timeout"),
            "0s",
            "must be greater than zero",
        ));
    }
    let keepalive_timeout = dur(l.keepalive_timeout, d.keepalive_timeout);
    if keepalive_timeout < Duration::from_secs(1) {
        return Err(e.err(
            format!("{p}.limits.keepalive_timeout"),
            format!("{keepalive_timeout:?}"),
            "must be at least 1s",
        ));
    }
    if let Some(0) = l.max_connections {
        return Err(e.err(
            format!("{p}.limits.max_connections"),
            0,
            "must be at least 1",
        ));
    }
    if let Some(0) = l.rate_limit_per_ip {
        return Err(e.err(
            format!("{p}.limits.rate_limit_per_ip"),
            0,
            "must be at least 1",
        ));
    }
    let client_timeout = dur(l.client_timeout, d.client_timeout);
    if client_timeout < Duration::from_secs(1) {
        return Err(e.err(
            format!("{p}.limits.client_timeout"),
            format!("{client_timeout:?}"),
            "must be at least 1s",
        ));
    }
    let keepalive_requests = match l.keepalive_requests {
        Some(0) => None,
        Some(n) => Some(n),
        None => d.keepalive_requests,
    };
    Ok(ListenerLimits {
        max_request_line,
        max_header_size,
        max_header_count,
        header_timeout,
        keepalive_timeout,
        max_connections: l.max_connections,
        rate_limit_per_ip: l.rate_limit_per_ip,
        client_timeout,
        keepalive_requests,
    })
}

/// A validated listener TLS block. The files were readable and consistent when the config
/// was loaded; they are read again when the listener is built and on every reload.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Key path of the block, e.g. `listeners[0].tls`, for log lines.
    pub key_path: String,
    /// The first is the default certificate.
    pub certificates: Vec<CertSpec>,
    pub client_ca: Option<String>,
    pub allow_expired: bool,
    /// Zero: no polling (SIGHUP still reloads).
    pub reload_interval: Duration,
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
    pub ca: Option<crate::tls::Trusted>,
    pub client: Option<crate::tls::ClientCert>,
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub listener: usize,
    pub host: HostMatch,
    pub path_prefix: String,
    pub upstream: usize,
    pub max_body_size: u64,
    pub cache: Option<cache::CacheSpec>,
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
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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
        })?;
        validate(file, raw)
    }
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

pub(crate) fn dur(d: Option<units::Dur>, default: Duration) -> Duration {
    d.map(|d| d.0).unwrap_or(default)
}

pub fn validate(file: &str, raw: FileConfig) -> Result<Config, ConfigError> {
    let e = Errs { file };
    if raw.listeners.is_empty() {
        return Err(e.err("listeners", "", "at least one listener is required"));
    }
    if let Some(0) = raw.pingora.threads {
        return Err(e.err("pingora.threads", 0, "must be at least 1"));
    }

    // Forward proxies and routes feed one store size.
    let mut store = cache::StoreSize::default();
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            return Err(e.err(format!("{p}.name"), &l.name, "must not be empty"));
        }
        if listeners.iter().any(|x: &ListenerSpec| x.name == l.name) {
            return Err(e.err(format!("{p}.name"), &l.name, "duplicate listener name"));
        }
        let addr = parse_addr(&e, &format!("{p}.address"), &l.address)?;
        if listeners.iter().any(|x: &ListenerSpec| x.addr == addr) {
            return Err(e.err(
                format!("{p}.address"),
                &l.address,
                "address used by another listener",
            ));
        }
        let (tls, redirect_https, h2c) = crate::tls::config::validate_listener(&e, &p, l)?;
        let forward = match &l.forward_proxy {
            Some(f) => Some(forward::validate(&e, &p, l.protocol, f, &mut store)?),
            None => None,
        };
        listeners.push(ListenerSpec {
            name: l.name.clone(),
            addr,
            protocol: l.protocol,
            tls,
            redirect_https,
            h2c,
            fast_path: l.fast_path.unwrap_or(true),
            limits: limits(&e, &p, &l.limits)?,
            l4: None,
            proxy_protocol: l4::accept_proxy(&e, &p, l)?,
            forward,
        });
    }

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (i, u) in raw.upstreams.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if u.name.trim().is_empty() {
            return Err(e.err(format!("{p}.name"), &u.name, "must not be empty"));
        }
        if upstreams.iter().any(|x: &UpstreamSpec| x.name == u.name) {
            return Err(e.err(format!("{p}.name"), &u.name, "duplicate upstream name"));
        }
        if u.backends.is_empty() {
            return Err(e.err(
                format!("{p}.backends"),
                "[]",
                "at least one backend is required",
            ));
        }
        let mut backends = Vec::with_capacity(u.backends.len());
        let mut dns_backends: Vec<DnsBackendSpec> = Vec::new();
        for (j, b) in u.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{j}]");
            let weight = b.weight.unwrap_or(1);
            if weight == 0 || weight > MAX_WEIGHT {
                return Err(e.err(
                    format!("{bp}.weight"),
                    weight,
                    format!("must be between 1 and {MAX_WEIGHT}"),
                ));
            }
            if let Some((host, port)) = dns_name_port(&b.address) {
                if dns_backends
                    .iter()
                    .any(|d| d.host == host && d.port == port)
                {
                    return Err(e.err(format!("{bp}.address"), &b.address, "duplicate backend"));
                }
                dns_backends.push(DnsBackendSpec { host, port, weight });
                continue;
            }
            let addr =
                parse_addr(&e, &format!("{bp}.address"), &b.address).map_err(|mut err| {
                    err.msg = "expected IP:PORT or NAME:PORT, for example 127.0.0.1:8080".into();
                    err
                })?;
            if backends.iter().any(|x: &BackendSpec| x.addr == addr) {
                return Err(e.err(format!("{bp}.address"), &b.address, "duplicate backend"));
            }
            backends.push(BackendSpec { addr, weight });
        }
        let resolve_every = dur(u.resolve_every, DEFAULT_RESOLVE_EVERY);
        if resolve_every < Duration::from_millis(100) {
            return Err(e.err(
                format!("{p}.resolve_every"),
                format!("{resolve_every:?}"),
                "must be at least 100ms",
            ));
        }
        let selection = match u.selection {
            SelectionFile::RoundRobin => Selection::RoundRobin,
            SelectionFile::Random => Selection::Random,
            SelectionFile::LeastConnections => Selection::LeastConnections,
            SelectionFile::PowerOfTwo => Selection::PowerOfTwo,
            SelectionFile::ConsistentHash => Selection::ConsistentHash,
        };
        let hash_key = match u.hash_key.as_deref() {
            None | Some("client_ip") => HashKey::ClientIp,
            Some("uri") => HashKey::Uri,
            Some(k) => {
                if let Some(h) = k.strip_prefix("header:").filter(|h| !h.is_empty()) {
                    HashKey::Header(h.to_ascii_lowercase())
                } else if let Some(c) = k.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                    HashKey::Cookie(c.to_string())
                } else {
                    return Err(e.err(
                        format!("{p}.hash_key"),
                        k,
                        "expected client_ip, uri, header:NAME or cookie:NAME",
                    ));
                }
            }
        };
        if u.hash_key.is_some() && selection != Selection::ConsistentHash {
            return Err(e.err(
                format!("{p}.hash_key"),
                u.hash_key.as_deref().unwrap_or_default(),
                "only valid with selection: consistent_hash",
            ));
        }
        let health = match &u.health_check {
            None => None,
            Some(h) => {
                let hp = format!("{p}.health_check");
                let interval = dur(h.interval, DEFAULT_HC_INTERVAL);
                if interval < Duration::from_millis(10) {
                    return Err(e.err(
                        format!("{hp}.interval"),
                        format!("{interval:?}"),
                        "must be at least 10ms",
                    ));
                }
                let timeout = dur(h.timeout, DEFAULT_HC_TIMEOUT);
                if timeout.is_zero() {
                    return Err(e.err(format!("{hp}.timeout"), "0s", "must be greater than zero"));
                }
                let healthy_threshold = h.healthy_threshold.unwrap_or(DEFAULT_HC_HEALTHY);
                if healthy_threshold == 0 {
                    return Err(e.err(format!("{hp}.healthy_threshold"), 0, "must be at least 1"));
                }
                let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(DEFAULT_HC_UNHEALTHY);
                if unhealthy_threshold == 0 {
                    return Err(e.err(
                        format!("{hp}.unhealthy_threshold"),
                        0,
                        "must be at least 1",
                    ));
                }
                let expect_status = h.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    return Err(e.err(
                        format!("{hp}.expect_status"),
                        expect_status,
                        "must be an HTTP status (100-599)",
                    ));
                }
                let path = h.path.clone().unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(e.err(
                        format!("{hp}.path"),
                        &path,
                        "must start with / and contain no spaces",
                    ));
                }
                if h.kind == HealthCheckType::Tcp && (h.path.is_some() || h.expect_status.is_some())
                {
                    return Err(e.err(
                        format!("{hp}.type"),
                        "tcp",
                        "path and expect_status need type: http",
                    ));
                }
                if let Some(0) = h.port {
                    return Err(e.err(format!("{hp}.port"), 0, "must be a port number"));
                }
                Some(HealthSpec {
                    kind: h.kind,
                    path,
                    host: h.host.clone().unwrap_or_else(|| "localhost".into()),
                    expect_status,
                    port: h.port,
                    interval,
                    timeout,
                    healthy_threshold,
                    unhealthy_threshold,
                })
            }
        };
        let connect_timeout = dur(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(e.err(
                format!("{p}.connect_timeout"),
                "0s",
                "must be greater than zero",
            ));
        }
        let read_timeout = dur(u.read_timeout, DEFAULT_READ_TIMEOUT);
        if read_timeout.is_zero() {
            return Err(e.err(
                format!("{p}.read_timeout"),
                "0s",
                "must be greater than zero",
            ));
        }
        let (tls, http2) = crate::tls::config::validate_upstream(&e, &p, u)?;
        upstreams.push(UpstreamSpec {
            name: u.name.clone(),
            backends,
            selection,
            hash_key,
            health,
            connect_timeout,
            read_timeout,
            write_timeout: dur(u.write_timeout, DEFAULT_WRITE_TIMEOUT),
            idle_timeout: dur(u.idle_timeout, DEFAULT_UPSTREAM_IDLE_TIMEOUT),
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            tls,
            http2,
            send_proxy_protocol: u.send_proxy_protocol,
            dns_backends,
            resolve_every,
        });
    }
    for (i, l) in raw.listeners.iter().enumerate() {
        listeners[i].l4 = l4::listener(&e, i, l, &upstreams)?;
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        let listener = listeners
            .iter()
            .position(|l| l.name == r.listener)
            .ok_or_else(|| {
                e.err(
                    format!("{p}.listener"),
                    &r.listener,
                    "no listener has this name",
                )
            })?;
        if listeners[listener].forward.is_some() {
            return Err(e.err(
                format!("{p}.listener"),
                &r.listener,
                "a forward_proxy listener takes no routes",
            ));
        }
        let upstream = upstreams
            .iter()
            .position(|u| u.name == r.upstream)
            .ok_or_else(|| {
                e.err(
                    format!("{p}.upstream"),
                    &r.upstream,
                    "no upstream has this name",
                )
            })?;
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => HostMatch::parse(h).map_err(|m| e.err(format!("{p}.host"), h, m))?,
        };
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            return Err(e.err(
                format!("{p}.path_prefix"),
                &path_prefix,
                "must start with /",
            ));
        }
        l4::check_route(&e, &p, &listeners[listener], &upstreams[upstream])?;
        routes.push(RouteSpec {
            listener,
            host,
            path_prefix,
            upstream,
            max_body_size: r
                .max_body_size
                .map(|s| s.0)
                .unwrap_or(DEFAULT_MAX_BODY_SIZE),
            cache: match &r.cache {
                Some(c) => cache::validate_cache(file, &format!("{p}.cache"), c, &mut store)?,
                None => None,
            },
        });
    }
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

    let admin = match &raw.admin {
        None => None,
        Some(a) => {
            let addr = parse_addr(&e, "admin.address", &a.address)?;
            if listeners.iter().any(|l| l.addr == addr) {
                return Err(e.err("admin.address", &a.address, "address used by a listener"));
            }
            let token = match (&a.token, &a.token_file) {
                (Some(_), Some(f)) => {
                    return Err(e.err("admin.token_file", f, "give either token or token_file"))
                }
                (Some(t), None) => Some(t.trim().to_string()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|err| {
                            e.err(
                                "admin.token_file",
                                f,
                                format!("cannot read the file: {err}"),
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            };
            if token.as_deref() == Some("") {
                return Err(e.err("admin.token", "", "must not be empty"));
            }
            Some(AdminSpec { addr, token })
        }
    };
    let access_log = raw.access_log.as_ref().map(|a| AccessLogSpec {
        format: a.format,
        path: a.path.clone().filter(|p| p != "stdout"),
    });
    if let Some(Some(p)) = access_log.as_ref().map(|a| a.path.as_ref()) {
        if p.trim().is_empty() {
            return Err(e.err("access_log.path", p, "must be stdout or a file path"));
        }
    }

    Ok(Config {
        file: file.to_string(),
        pingora: raw.pingora,
        listeners,
        upstreams,
        routes,
        cache_store_size,
        admin,
        access_log,
    })
}

/// `NAME:PORT` where NAME is a DNS name (not an IP literal), for DNS-discovered backends.
fn dns_name_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let starts_alpha = host.bytes().any(|b| b.is_ascii_alphabetic());
    (starts_alpha && valid_hostname(host) && host.parse::<std::net::IpAddr>().is_err())
        .then(|| (host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn zero_weight_names_path_and_value() {
        let y = format!("{BASE}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2, weight: 0}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "upstreams[0].backends[1].weight");
        assert_eq!(err.value, "0");
        assert!(err
            .to_string()
            .starts_with("x.yaml: upstreams[0].backends[1].weight"));
    }

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
    fn missing_upstream_reference() {
        let y = format!("{BASE}routes: [{{listener: web, upstream: nope}}]\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "routes[0].upstream");
        assert_eq!(err.value, "nope");
    }

    #[test]
    fn dns_backend_names_are_accepted_and_ips_stay_ips() {
        let y = format!("{BASE}upstreams: [{{name: a, resolve_every: 2s, backends: [{{address: 127.0.0.1:1}}, {{address: app.internal:8080, weight: 2}}]}}]\n");
        let c = Config::from_yaml("x.yaml", &y).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.backends.len(), 1);
        assert_eq!(
            u.dns_backends,
            vec![DnsBackendSpec {
                host: "app.internal".into(),
                port: 8080,
                weight: 2
            }]
        );
        assert_eq!(u.resolve_every, Duration::from_secs(2));
        let bad =
            format!("{BASE}upstreams: [{{name: a, backends: [{{address: 'app internal:80'}}]}}]\n");
        let err = Config::from_yaml("x.yaml", &bad).unwrap_err();
        assert_eq!(err.path, "upstreams[0].backends[0].address");
    }

    #[test]
    fn admin_token_sources() {
        let y = format!("{BASE}admin: {{address: 127.0.0.1:9900, token: ' s3cret '}}\n");
        let c = Config::from_yaml("x.yaml", &y).unwrap();
        assert_eq!(c.admin.unwrap().token.as_deref(), Some("s3cret"));
        let y = format!("{BASE}admin: {{address: 127.0.0.1:9900, token_file: /nonexistent/tok}}\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "admin.token_file");
        let y = format!("{BASE}admin: {{address: 127.0.0.1:8080}}\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "admin.address");
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
