//! The YAML file as operators write it. Every struct denies unknown keys so that a typo is
//! an error, never a silently ignored setting. These types are converted into validated
//! runtime types in [`super::validate`].

use super::units::{Dur, Size};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Passed through to Pingora's `ServerConf`.
    #[serde(default)]
    pub pingora: PingoraFile,
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// The admin listener (metrics, health, status, drain). Default: off
    pub admin: Option<AdminFile>,
    /// One line per request. Default: off (nothing is formatted at all)
    pub access_log: Option<AccessLogFile>,
    /// Spans of sampled requests, exported by OTLP/HTTP. Default: off (nothing allocated)
    pub tracing: Option<super::tracing::TracingFile>,
    /// Where `upstreams` and `routes` come from instead of this file. Default: this file
    pub config_source: Option<ConfigSourceFile>,
}

/// The fleet-wide part of the configuration (`upstreams`, `routes`) from a store.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConfigSourceFile {
    pub etcd: Option<EtcdFile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    /// `http://HOST:PORT` or `https://HOST:PORT` of etcd members, tried in turn.
    pub endpoints: Vec<String>,
    /// The key whose value is a YAML document with `upstreams` and `routes`.
    pub key: String,
    /// The last good value is written here, and served from when etcd cannot be reached
    /// at start-up.
    pub cache_file: Option<String>,
    /// `https://` endpoints: the CA that signed etcd's certificate. Default: the system's.
    pub ca_file: Option<String>,
    /// `https://` endpoints: a client certificate and its key, for etcd's client-cert-auth.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// etcd's authentication: the user, and a file holding its password.
    pub username: Option<String>,
    pub password_file: Option<String>,
}

/// The document at the etcd key: the same `upstreams` and `routes` as the file.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// IP:PORT of the admin listener, e.g. 127.0.0.1:9900.
    pub address: String,
    /// Bearer token for everything but /healthz and /metrics. Default: none, which locks those
    /// calls (401) rather than opening them.
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace is ignored). Exclusive with `token`.
    pub token_file: Option<String>,
    /// Environment variable holding the token (containers). Unset or empty: no token, so the
    /// calls that need one are refused. Exclusive with `token` and `token_file`.
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    #[default]
    Combined,
    Json,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// combined | json. Default: combined
    #[serde(default)]
    pub format: AccessLogFormat,
    /// `stdout` or a file path (appended to). Default: stdout
    pub path: Option<String>,
}

/// Pingora server settings. Defaults are Pingora's own unless noted.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct PingoraFile {
    /// Worker threads per service. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Work stealing between a service's threads. Default: true. Off, each thread runs its
    /// own runtime and each plaintext listener binds one `SO_REUSEPORT` socket per thread.
    pub work_stealing: Option<bool>,
    /// Default: /tmp/stepstone.pid
    pub pid_file: Option<String>,
    /// Socket the old and new process use to hand over listeners. Default: /tmp/stepstone_upgrade.sock
    pub upgrade_sock: Option<String>,
    /// Seconds between the shutdown signal and the final drain step. Default: 5
    pub grace_period_seconds: Option<u64>,
    /// Seconds the final drain step may take. Default: 5
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// Run in the background (same as `-d`). Default: false
    pub daemon: Option<bool>,
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Idle upstream connections kept per thread. Default: 2048 (Pingora's own is 128,
    /// which churns connections as soon as more than 128 requests are concurrent).
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Accept tasks per listening socket. Default: 1
    pub listener_tasks_per_fd: Option<usize>,
    /// How long a worker thread keeps polling for I/O without blocking after a request
    /// completes, while requests come closer together than this (see `src/spin.rs`); `0`
    /// turns it off. At most 10ms. Needs `work_stealing: false`. Default: 0 (off); 25us
    /// where waking a sleeping CPU is dear (VMs whose wake-ups exit to the hypervisor)
    pub busy_poll: Option<Dur>,
    /// While a worker thread busy-polls (`busy_poll`), how long it sleeps after a poll that
    /// found nothing to do, instead of polling again at once. What arrives during the nap
    /// wakes no one and is found by the next poll, so neither this CPU spins nor the others
    /// pay to wake it; each request that arrives during a nap waits for its end. The kernel
    /// may lengthen a nap by the thread's timer slack (50us by default). At most 1ms; needs
    /// `busy_poll`. Default: 0 (spin); 30us on the bench host (see `src/spin.rs`)
    pub busy_poll_nap: Option<Dur>,
    /// The open-file limit the process raises itself to at start (`RLIMIT_NOFILE`; every
    /// client and backend connection takes one descriptor). Above the hard limit it raises
    /// that too where the process may (CAP_SYS_RESOURCE), else stops at the hard limit with
    /// a warning. Never lowers a limit. At least 64. Default: the hard limit
    pub max_open_files: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    Http,
    Https,
    Tcp,
    TlsPassthrough,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub address: String,
    pub protocol: ListenerProtocol,
    /// Makes an `http` or `https` listener a forward proxy (absolute-form requests and
    /// CONNECT) instead of a routed reverse proxy; on `https` the clients reach the proxy
    /// over TLS. See [`ForwardProxyFile`].
    pub forward_proxy: Option<ForwardProxyFile>,
    /// tcp only: the upstream every connection is forwarded to. Required for tcp.
    pub upstream: Option<String>,
    /// tls_passthrough only: SNI name (exact or `*.suffix`) to upstream. The most specific
    /// name wins. Default: none
    pub sni_routes: Option<std::collections::BTreeMap<String, String>>,
    /// tls_passthrough only: upstream for a ClientHello without SNI or with a name no route
    /// matches. Default: none (such connections are closed)
    pub default_upstream: Option<String>,
    /// tcp and tls_passthrough: open connections beyond this are closed at once. Default:
    /// unlimited
    pub max_connections: Option<u32>,
    /// tcp and tls_passthrough: a connection with no bytes either way for this long is
    /// closed. Default: 10m
    pub idle_timeout: Option<Dur>,
    /// tcp and tls_passthrough: when one side ends its sending (a FIN), pass that on and keep
    /// the other direction open until it ends too (TCP half-close, as HAProxy does). `false`:
    /// the first side to close ends the whole connection once what it sent is delivered, as
    /// nginx's stream proxy does by default (`proxy_half_close off`); that saves a system
    /// call or two per connection, but a protocol whose client signals the end of its
    /// request with a half-close (`nc -N`, some RPC) then loses the answer. Default: true
    pub half_close: Option<bool>,
    /// Move bytes with splice(2) through a pipe, from one socket to the other, rather than
    /// copying them into the process and out again (HAProxy's `option splice-auto`).
    /// tcp and tls_passthrough: the whole relay. http: request and response bodies with a
    /// Content-Length and at least 16 KiB left after the head's read, on the lean engine
    /// (HAProxy's `splice-request` and `splice-response`; not for https or forward_proxy
    /// listeners). It applies where the client's socket is
    /// plain: not with `tls` (termination) or `accept_proxy_protocol`, which keep the
    /// copying relay. A transfer holds a pipe (two descriptors, within the open-file limit;
    /// where none can be made, it copies through a buffer instead) only while bytes are in
    /// it. It saves the proxy's CPU (a quarter per MiB relayed here, 13% of a 64 KiB POST),
    /// but where the receiver is on the same host (loopback) that receiver's own copy then
    /// reads bytes last touched long before, not ones this process just wrote, and costs it
    /// more than the proxy saves (benches/RESULTS.md, 2026-12-04). Default: false
    pub splice: Option<bool>,
    /// Read a PROXY protocol header (v1 or v2) first and use its source as the client
    /// address everywhere (logs, X-Forwarded-For, hashing, ACLs). Default: false
    pub accept_proxy_protocol: Option<bool>,
    /// With accept_proxy_protocol: CIDRs allowed to send the header. Connections from other
    /// addresses are closed. Required with accept_proxy_protocol.
    pub trusted_proxies: Option<Vec<String>>,
    /// Certificates and client verification. Required for `https`, not allowed for `http`.
    pub tls: Option<TlsFile>,
    /// http only: answer every request with a redirect to the same URL on https (301 for
    /// GET/HEAD, 308 otherwise). Default: false
    pub redirect_https: Option<bool>,
    /// http only, with redirect_https: the port in the redirect's URL. Default: 443
    pub https_port: Option<u16>,
    /// http only: also accept cleartext HTTP/2 (prior knowledge). Default: false
    pub h2c: Option<bool>,
    /// http and https: serve the requests it can on the lean engine (plain reverse-proxy
    /// requests, WebSocket handshakes, fresh cache hits). `false` sends every request through
    /// Pingora's general proxy; both give the same answers (a test holds them to it). For
    /// diagnosis. Default: true
    pub fast_path: Option<bool>,
    /// Hand a connection to the proxy only once its client has sent something (Linux
    /// `TCP_DEFER_ACCEPT`, as nginx's `listen ... deferred` and HAProxy's `defer-accept`).
    /// A client that connects and stays silent waits in the kernel (about a second, then it
    /// is accepted as usual), and a new connection's first bytes are read without waiting.
    /// Default: true, except on a plain `tcp` listener, whose protocol may have the server
    /// speak first (SMTP, MySQL): there it would hold every connection a second.
    pub defer_accept: Option<bool>,
    /// Limits on what a client may send; every field has a safe default.
    pub limits: Option<LimitsFile>,
    /// https only: also serve HTTP/3 over QUIC on UDP, same address and port, same
    /// certificates and routes. Default: false
    pub http3: Option<bool>,
    /// With http3: the QUIC side's limits. See [`QuicFile`].
    pub quic: Option<QuicFile>,
}

/// Limits of a listener's HTTP/3 side; every field has a default (`DEFAULT_QUIC_*`).
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct QuicFile {
    /// Request streams open at once on one connection. Default: 100
    pub max_streams: Option<u32>,
    /// A connection with no packets either way for this long is closed. Default: 30s
    pub idle_timeout: Option<Dur>,
    /// A handshake not done by then is abandoned. Default: 10s
    pub handshake_timeout: Option<Dur>,
    /// Largest request header section (names + values + 32 per field, RFC 9114 4.2.2);
    /// larger gets 431. Default: the listener's limits.max_header_size
    pub max_header_list_size: Option<Size>,
    /// Handshakes in progress above which new clients must first prove their address
    /// (a Retry round trip), against floods from spoofed sources. 0: always. Default: 64
    pub retry_above: Option<u32>,
    /// Accept 0-RTT (early data) from resuming clients: idempotent requests in it are
    /// forwarded at once with `Early-Data: 1` (RFC 8470), the others wait for the end of
    /// the handshake, which a replay never reaches. Default: false
    pub early_data: Option<bool>,
}

/// Per-listener limits against hostile or broken clients.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Longest request line. Default 8KiB; longer gets 414.
    pub max_request_line: Option<Size>,
    /// Largest request head (request line and headers). Default 32KiB; larger gets 431.
    pub max_header_size: Option<Size>,
    /// Most header fields. Default 100; more gets 431.
    pub max_header_count: Option<usize>,
    /// Time to receive a whole request head, from its first byte. Default 10s; then 408 and close.
    /// Also the time an HTTP/2 client has for its preface, and a new connection for its first
    /// byte (or `keepalive_timeout` if shorter; then a close without an answer).
    pub header_timeout: Option<Dur>,
    /// Idle time allowed between requests on a keep-alive connection (on HTTP/2, with no
    /// stream in flight; then GOAWAY). Default 60s.
    pub keepalive_timeout: Option<Dur>,
    /// Open client connections on this listener; new ones beyond get 503 and are closed.
    /// Default: unlimited.
    pub max_connections: Option<usize>,
    /// Requests per second per client IP; more get 429 with Retry-After. Default: off.
    pub rate_limit_per_ip: Option<u32>,
    /// Where `rate_limit_per_ip` is counted: shared by every instance that names the same
    /// store. Default: in this instance only.
    pub rate_limit_store: Option<RateLimitStoreFile>,
    /// Longest wait for a client to send the next piece of a request body or to take the
    /// next piece of a response (nginx's `client_body_timeout` and `send_timeout`). Then the
    /// connection is closed. Default: 60s
    pub client_timeout: Option<Dur>,
    /// Requests served on one client connection; the last answer carries
    /// `Connection: close` (nginx's `keepalive_requests`); an HTTP/2 connection gets a GOAWAY
    /// as its last stream starts. 0: unlimited. Default: 1000
    pub keepalive_requests: Option<u32>,
}

/// A shared store for the per-IP count; `redis` is the one kind.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStoreFile {
    pub redis: Option<RedisStoreFile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreFile {
    /// IP:PORT of the Redis server.
    pub address: String,
    /// Prefix of every key written. Default: `stepstone:`
    pub key_prefix: Option<String>,
    /// Longest wait for an answer (connecting included) before the request is counted
    /// locally. Default: 5ms
    pub timeout: Option<Dur>,
    /// Connections to Redis at most (requests wait for one, within `timeout`). Default: 16
    pub pool_size: Option<usize>,
}

/// A listener's TLS block. Relative paths are relative to the config file's directory.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// One or more; the first is served to clients that send no SNI or an unknown name.
    /// May be left out when `acme` is set. Default: none
    #[serde(default)]
    pub certificates: Vec<CertFile>,
    /// Certificates ordered from an ACME CA (RFC 8555). Default: none
    pub acme: Option<AcmeFile>,
    /// PEM file of CAs. When set, clients must present a certificate signed by one of them.
    /// Default: none (no client certificates asked for)
    pub client_ca: Option<String>,
    /// Accept an expired certificate with a warning instead of refusing to start. Default: false
    pub allow_expired: Option<bool>,
    /// How often the certificate files are checked for changes (mtime and size); a change
    /// reloads them. SIGHUP reloads at once. 0s turns the polling off. Default: 5s
    pub reload_interval: Option<Dur>,
    /// Time a client has to complete the TLS handshake after connecting; then the
    /// connection is closed (Pingora alone allows 60s). Default: 10s
    pub handshake_timeout: Option<Dur>,
}

/// Automatic certificates: `tls.acme` of an https listener.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// URL of the CA's directory. Default: Let's Encrypt's production directory
    pub directory: Option<String>,
    /// PEM CAs trusted for the ACME server's own TLS certificate. Default: the system's
    pub directory_ca_file: Option<String>,
    /// Account contact, e.g. `mailto:ops@example.com`. Default: none
    pub contact: Option<String>,
    /// Host names of the certificate (no wildcards with http-01).
    pub names: Vec<String>,
    /// Directory of the account key, certificates and keys. Default: /var/lib/stepstone/acme
    pub storage: Option<String>,
    /// `http-01`. Default: http-01
    pub challenge: Option<String>,
    /// Renew this long before expiry (`30d`, `12h`), or at one third of the lifetime left
    /// if that comes first. Default: 30d
    pub renew_before: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM file: the certificate, then its intermediates.
    pub cert: String,
    /// PEM file: the private key of the certificate.
    pub key: String,
    /// Names (exact or `*.suffix`) this certificate is served for. Default: none, which
    /// only makes sense for the first (default) certificate.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolFile {
    V1,
    V2,
}

/// `listeners[].forward_proxy`: a Squid-style forward proxy.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ForwardProxyFile {
    /// Ports a CONNECT tunnel may go to. Default: [443]
    pub connect_ports: Option<Vec<u16>>,
    /// Allow destinations on loopback, RFC 1918, link-local, CGNAT, ULA and similar
    /// networks. Default: false
    pub allow_private_destinations: Option<bool>,
    /// Access rules; the first match wins and no match means deny. Default: [] (deny all)
    #[serde(default)]
    pub access: Vec<AccessRuleFile>,
    /// Basic proxy authentication. Default: none
    pub auth: Option<ProxyAuthFile>,
    /// off | standard | strict. Default: standard
    pub anonymity: Option<AnonymityFile>,
    /// Content filtering of responses. Default: none
    pub filter: Option<FilterFile>,
    /// Caching of forward (absolute-form HTTP) responses in the shared cache; the same
    /// block as a route's `cache:`. CONNECT tunnels are never cached. Default: disabled
    pub cache: Option<CacheFile>,
    /// Time to resolve and connect to a destination. Default: 5s
    pub connect_timeout: Option<Dur>,
    /// Time to wait for each read from an origin (HTTP requests). Default: 30s
    pub read_timeout: Option<Dur>,
    /// A CONNECT tunnel with no traffic either way for this long is closed. Default: 5m
    pub tunnel_idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessAction {
    Allow,
    Deny,
}

/// One access rule. Every list given must match (an absent list matches anything); within
/// a list any entry may match.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleFile {
    pub action: AccessAction,
    /// Shown on the deny page and in the log. Default: access[N]
    pub name: Option<String>,
    /// Client networks (CIDR or address).
    pub clients: Option<Vec<String>>,
    /// Destination names (exact or `*.suffix`) or networks (CIDR or address); networks
    /// match the resolved addresses.
    pub destinations: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
    /// GET, POST, CONNECT, ...
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuthFile {
    /// Default: stepstone
    pub realm: Option<String>,
    /// `user:bcrypt-hash` lines, as written by `htpasswd -B`. A relative path is relative
    /// to the config file's directory. Required.
    pub users_file: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AnonymityFile {
    Off,
    #[default]
    Standard,
    Strict,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterFile {
    /// Media types (`type/sub` or `type/*`) whose responses are refused. Default: []
    #[serde(default)]
    pub block_content_types: Vec<String>,
    /// Byte strings (ASCII case-insensitive) that block a response body. Default: []
    #[serde(default)]
    pub block_body_patterns: Vec<String>,
    /// Globs (`*`, `?`) over the full request URL. Default: []
    #[serde(default)]
    pub block_url_patterns: Vec<String>,
    /// Hold the response head and up to this many body bytes, so that a body pattern found
    /// within them gets the 403 page instead of a cut response. Default: 0 (no holding),
    /// at most 1MiB.
    pub hold_head_bytes: Option<Size>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SelectionFile {
    #[default]
    RoundRobin,
    Random,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    pub backends: Vec<BackendFile>,
    #[serde(default)]
    pub selection: SelectionFile,
    /// consistent_hash only: client_ip | uri | header:NAME | cookie:NAME. Default: client_ip
    pub hash_key: Option<String>,
    pub health_check: Option<HealthCheckFile>,
    /// Default: 1s
    pub connect_timeout: Option<Dur>,
    /// Default: 30s
    pub read_timeout: Option<Dur>,
    /// Default: 30s
    pub write_timeout: Option<Dur>,
    /// Idle time after which a pooled upstream connection is closed. Default: 60s
    pub idle_timeout: Option<Dur>,
    /// Extra tries on another backend, for the failures `retry_on` names. Default: 2
    pub retries: Option<u32>,
    /// What is retried: connect_failure, reset, timeout, "5xx", or a status code (400-599).
    /// A method that is not idempotent is retried on connect_failure only.
    /// Default: [connect_failure]
    pub retry_on: Option<Vec<RetryOnFile>>,
    /// Retries after sending add at most this share of the upstream's requests over the
    /// last 10 s, plus a floor of 3 retries per second; connect-failure retries are not
    /// counted (no backend did any work). Default: 20
    pub retry_budget_percent: Option<u32>,
    /// Longest wait for each read from the backend within one try; a try over it is a
    /// `timeout` for `retry_on`. Default: none (read_timeout alone)
    pub per_try_timeout: Option<Dur>,
    /// Speak TLS to the backends. Never falls back to plaintext. Default: false
    pub tls: Option<bool>,
    /// tls only: name sent as SNI and checked against the backends' certificates. Required
    /// when verify is on. Default: none
    pub sni: Option<String>,
    /// tls only: verify the backends' certificates (chain and name). Default: true
    pub verify: Option<bool>,
    /// tls only: PEM file of CAs trusted for the backends. Default: the system's roots
    pub ca_file: Option<String>,
    /// tls only: client certificate (PEM, with intermediates) for mTLS to the backends.
    pub client_cert: Option<String>,
    /// tls only: private key of client_cert.
    pub client_key: Option<String>,
    /// tls only: offer HTTP/2 to the backends by ALPN (HTTP/1.1 if they decline). Default: false
    pub http2: Option<bool>,
    /// tcp and tls_passthrough listeners only: send a PROXY protocol header (v1 | v2) with
    /// the client's address on each backend connection. Default: none
    pub send_proxy_protocol: Option<ProxyProtocolFile>,
    /// How often backends given by DNS name are re-resolved. Default: 10s
    pub resolve_every: Option<Dur>,
    /// Requests that may wait when every backend is at its `max_connections`; beyond, 503
    /// at once. Default: 100
    pub max_pending: Option<u32>,
    /// Longest wait in that queue; then 503 with Retry-After. Default: 1s
    pub queue_timeout: Option<Dur>,
    /// A backend that comes back (healthy again, or its ejection over) takes a share of new
    /// requests that grows with the time since, to all of its weight after this long. 0s:
    /// off. Default: 0s
    pub slow_start: Option<Dur>,
    /// Passive health: backends that fail requests in a row are taken out for a while.
    /// Default: off
    pub outlier_detection: Option<OutlierFile>,
    /// Session affinity by a cookie the proxy sets, naming the backend by an opaque token.
    /// Default: off
    pub sticky: Option<StickyFile>,
}

/// `upstreams[].sticky`: the proxy's own cookie pins a client to a backend (HAProxy's
/// `cookie insert`, nginx's `sticky cookie`).
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    /// Cookie name. Default: SRV
    pub cookie: Option<String>,
    /// The cookie's Max-Age; 0s makes it a session cookie (no Max-Age). Default: 1h
    pub ttl: Option<Dur>,
    /// File holding the key that makes the cookie's token (32 random bytes, created with
    /// mode 0600 when missing). A relative path is relative to the config file's
    /// directory. Default: `<pingora.pid_file>.sticky.key`, kept across upgrades
    pub key_file: Option<String>,
}

/// One `retry_on` entry: a name, or a status code written with or without quotes.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RetryOnFile {
    Code(u16),
    Name(String),
}

/// Outlier detection (Envoy's and HAProxy's `observe layer7`): what counts as a failure is a
/// 5xx answer, a connect failure, a reset or a timeout, on every engine and at L4.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Failures in a row that eject a backend. Default: 5
    pub consecutive_failures: Option<u32>,
    /// First ejection's length; it doubles on each re-ejection of the same backend.
    /// Default: 30s
    pub base_ejection_time: Option<Dur>,
    /// Longest ejection. Default: 300s
    pub max_ejection_time: Option<Dur>,
    /// Never eject more than this share of the pool, in percent. Default: 50
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// IP:PORT, or NAME:PORT to follow every address the name resolves to (see
    /// `resolve_every`).
    pub address: String,
    /// Default: 1
    pub weight: Option<u32>,
    /// Concurrent requests to this backend at most, a hard cap: with every backend at its
    /// cap, requests wait in the upstream's queue (`max_pending`, `queue_timeout`).
    /// Default: unlimited
    pub max_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Tcp,
    Http,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// http only. Default: /
    pub path: Option<String>,
    /// http only. Host header of the check. Default: localhost
    pub host: Option<String>,
    /// http only. Default: 200
    pub expect_status: Option<u16>,
    /// Check a side port instead of the traffic port.
    pub port: Option<u16>,
    /// Default: 5s
    pub interval: Option<Dur>,
    /// Default: 1s
    pub timeout: Option<Dur>,
    /// Default: 1
    pub healthy_threshold: Option<u32>,
    /// Default: 2
    pub unhealthy_threshold: Option<u32>,
    /// http only. Keep the check's connection for the next check (as Envoy), instead of a new
    /// connection per check (as HAProxy and nginx), which also proves that the backend still
    /// accepts connections. To TLS backends a new connection is a full handshake each: at
    /// 1,000 checks a second that measured 58-69% of one core, 7% with this on. Default: false
    pub reuse_connection: Option<bool>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub listener: String,
    /// Exact name or `*.suffix`. Absent means any host.
    pub host: Option<String>,
    /// Default: /. The longest matching prefix wins.
    pub path_prefix: Option<String>,
    /// The upstream the route's requests go to. Exactly one of `upstream` and `split`.
    pub upstream: Option<String>,
    /// Several upstreams by weight, chosen per request (a canary, a migration).
    pub split: Option<Vec<SplitFile>>,
    /// Conditions on the request, all of which must hold for the route to take it; among
    /// routes equally specific by host and prefix, the first that matches wins. Default: none
    #[serde(rename = "match")]
    pub matches: Option<MatchFile>,
    /// Largest request body accepted on this route. Default: 16MiB
    pub max_body_size: Option<Size>,
    /// Response cache for this route. Default: none (no caching).
    pub cache: Option<CacheFile>,
    /// Copies of the route's requests sent to another upstream, answers discarded.
    /// Default: none
    pub mirror: Option<MirrorFile>,
    /// Responses compressed for clients that accept it (br, zstd, gzip). Default: none
    pub compression: Option<super::compression::CompressionFile>,
    /// The request methods the route takes (case-sensitive tokens; GET brings HEAD); any
    /// other is answered 405 with an `Allow` field and never reaches a backend (nginx's
    /// `limit_except`). Default: every method but TRACE, which is answered 405 as nginx
    /// does: a backend's reflection of it would carry the request's cookies and credentials.
    pub methods: Option<Vec<String>>,
}

/// `routes[].mirror`: request mirroring (shadow traffic).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// The upstream the copies go to.
    pub upstream: String,
    /// Share of the route's requests copied, 0..100, spread evenly. Default: 100
    pub percent: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    pub upstream: String,
    /// Relative share, 1..1000.
    pub weight: u32,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Field name to exact value (the first field of that name).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Cookie name to exact value.
    #[serde(default)]
    pub cookies: std::collections::BTreeMap<String, String>,
}

/// A response cache on a route (or the forward proxy). All caches share one in-memory store.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Default: false
    #[serde(default)]
    pub enabled: bool,
    /// Bytes held by the shared store, over all routes. Where several caches give it, they
    /// must agree. Default: 256MiB
    pub max_size: Option<Size>,
    /// Larger responses are proxied but not stored. Default: 8MiB
    pub max_object_size: Option<Size>,
    /// Freshness for cacheable-by-status responses that carry no Cache-Control max-age,
    /// s-maxage or Expires. Default: 0s (such responses are not stored)
    pub default_ttl: Option<Dur>,
    /// Response header that reports HIT, MISS, EXPIRED, STALE, REVALIDATED or BYPASS.
    /// Default: X-Cache-Status
    pub status_header: Option<String>,
    /// Client networks allowed to send PURGE. Default: [] (nobody)
    #[serde(default)]
    pub purge_from: Vec<String>,
    /// A response field (RFC 9213 targeted cache control, e.g. `Stepstone-Cache-Control`)
    /// that, when present, governs this cache ahead of CDN-Cache-Control and Cache-Control.
    /// Default: none
    pub targeted_header: Option<String>,
}
