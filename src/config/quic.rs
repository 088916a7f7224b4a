//! Validation of a listener's `http3` and `quic` keys into a [`QuicSpec`].

use super::file::{ListenerFile, ListenerProtocol};
use super::{dur, ConfigError, Errs, ListenerLimits};
use std::time::Duration;

pub const DEFAULT_QUIC_MAX_STREAMS: u32 = 100;
pub const DEFAULT_QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_QUIC_RETRY_ABOVE: u32 = 64;

/// The HTTP/3 side of an https listener.
#[derive(Debug, Clone)]
pub struct QuicSpec {
    pub max_streams: u32,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_header_list_size: u64,
    /// Handshakes in progress above which a new client gets a Retry first.
    pub retry_above: u32,
    /// 0-RTT accepted (the policy's `early` step decides per request).
    pub early_data: bool,
}

pub(super) fn validate(
    e: &Errs,
    p: &str,
    l: &ListenerFile,
    limits: &ListenerLimits,
) -> Result<Option<QuicSpec>, ConfigError> {
    let on = l.http3.unwrap_or(false);
    if on && l.protocol != ListenerProtocol::Https {
        return Err(e.err(
            format!("{p}.http3"),
            format!("{:?}", l.protocol).to_lowercase(),
            "only valid on a listener with protocol: https",
        ));
    }
    if l.quic.is_some() && !on {
        return Err(e.err(format!("{p}.quic"), "", "only valid with http3: true"));
    }
    if !on {
        return Ok(None);
    }
    if l.forward_proxy.is_some() {
        return Err(e.err(
            format!("{p}.http3"),
            "true",
            "not available on a forward proxy listener",
        ));
    }
    if l.accept_proxy_protocol.unwrap_or(false) {
        return Err(e.err(
            format!("{p}.http3"),
            "true",
            "a PROXY protocol header cannot precede QUIC: turn accept_proxy_protocol off",
        ));
    }
    let q = l.quic.clone().unwrap_or_default();
    let max_streams = q.max_streams.unwrap_or(DEFAULT_QUIC_MAX_STREAMS);
    if !(1..=10_000).contains(&max_streams) {
        return Err(e.err(
            format!("{p}.quic.max_streams"),
            max_streams,
            "must be between 1 and 10000",
        ));
    }
    let positive = |d: Duration, key: &str| {
        if d.is_zero() {
            Err(e.err(format!("{p}.quic.{key}"), "0s", "must be more than zero"))
        } else {
            Ok(d)
        }
    };
    let idle_timeout = positive(
        dur(q.idle_timeout, DEFAULT_QUIC_IDLE_TIMEOUT),
        "idle_timeout",
    )?;
    let handshake_timeout = positive(
        dur(q.handshake_timeout, DEFAULT_QUIC_HANDSHAKE_TIMEOUT),
        "handshake_timeout",
    )?;
    let max_header_list_size = q
        .max_header_list_size
        .map(|s| s.0)
        .unwrap_or(limits.max_header_size as u64);
    if !(1024..=(1 << 20)).contains(&max_header_list_size) {
        return Err(e.err(
            format!("{p}.quic.max_header_list_size"),
            max_header_list_size,
            "must be between 1024 and 1048576 bytes",
        ));
    }
    Ok(Some(QuicSpec {
        max_streams,
        idle_timeout,
        handshake_timeout,
        max_header_list_size,
        retry_above: q.retry_above.unwrap_or(DEFAULT_QUIC_RETRY_ABOVE),
        early_data: q.early_data.unwrap_or(false),
    }))
}
