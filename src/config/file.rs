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
}

/// Pingora server settings. Defaults are Pingora's own unless noted.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct PingoraFile {
    /// Worker threads per service. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Work stealing between a service's threads. Default: true.
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
    /// Makes an `http` listener a forward proxy (absolute-form requests and CONNECT)
    /// instead of a routed reverse proxy. See [`ForwardProxyFile`].
    pub forward_proxy: Option<ForwardProxyFile>,
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
    /// Caching of forward responses in the shared cache. Default: disabled
    pub cache: Option<ForwardCacheFile>,
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
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ForwardCacheFile {
    /// Default: false
    #[serde(default)]
    pub enabled: bool,
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
    /// Connect failures retried on another backend. Default: 2
    pub retries: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub address: String,
    /// Default: 1
    pub weight: Option<u32>,
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
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub listener: String,
    /// Exact name or `*.suffix`. Absent means any host.
    pub host: Option<String>,
    /// Default: /. The longest matching prefix wins.
    pub path_prefix: Option<String>,
    pub upstream: String,
    /// Largest request body accepted on this route. Default: 16MiB
    pub max_body_size: Option<Size>,
}
