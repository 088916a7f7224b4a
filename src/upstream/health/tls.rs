//! Checks of TLS backends, over HTTP or TCP, through one TLS connector for all.
//!
//! Pingora's checks build a `TransportConnector` per upstream, and each one's TLS context reads
//! and parses the system's CA bundle: about 20 ms of CPU per upstream, 10 s at start for 500
//! TLS upstreams, and again for each upstream a reload rebuilds. Nothing in that context is
//! the upstream's own: its trust (`ca_file`), client certificate, SNI and whether to verify
//! travel on the peer, and the connector applies them to each connection. So one connector,
//! built on the first TLS check, serves every upstream's checks, each verified as its requests
//! are.

use crate::config::{HealthSpec, UpstreamSpec};
use async_trait::async_trait;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::l4::socket::SocketAddr as Addr;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr};
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use std::sync::OnceLock;

fn connector() -> &'static TransportConnector {
    static SHARED: OnceLock<TransportConnector> = OnceLock::new();
    SHARED.get_or_init(|| TransportConnector::new(None))
}

/// The key exchange groups a check offers, with a key share for the first only.
///
/// OpenSSL's default list sends two key shares, X25519MLKEM768 and X25519: three key pairs
/// made per handshake, a fifth of a TLS check's CPU. Requests keep that list. A check carries
/// nothing whose secrecy outlives it, so post-quantum key exchange buys it nothing, and one
/// classical share does (1,000 TLS checks a second: 58-69% of one core against 70-83%). No
/// post-quantum group is listed at all: a backend that prefers one would answer a list that
/// names it with a HelloRetryRequest, a round trip more and the key pair made anyway. A
/// backend without X25519 picks another group here through a HelloRetryRequest. One that
/// accepts post-quantum groups only would fail its checks; none such is common today.
const CHECK_GROUPS: &str = "X25519:P-256:P-384:P-521:X448";

/// How a check reaches one backend of a TLS upstream: the upstream's trust, name, client
/// certificate and ALPN, as its requests use them; only the key exchange groups differ
/// ([`CHECK_GROUPS`]).
pub(super) struct Dial {
    template: HttpPeer,
}

impl Dial {
    pub(super) fn new(h: &HealthSpec, u: &UpstreamSpec) -> Dial {
        // the address is a placeholder, replaced by each backend's
        let mut template =
            crate::tls::upstream::http_peer(u, std::net::SocketAddr::from(([0, 0, 0, 0], 1)));
        // HTTP/2 where the upstream's requests offer it (by ALPN, the backend may still pick
        // HTTP/1.1), HTTP/1.1 otherwise.
        if !u.http2 {
            template.options.alpn = ALPN::H1;
        }
        template.options.curves = Some(std::borrow::Cow::Borrowed(CHECK_GROUPS));
        template.options.connection_timeout = Some(h.timeout);
        template.options.total_connection_timeout = Some(h.timeout);
        // Reset when dropped, as the plain checks are (see `tcp::PlainTcpCheck`): a close
        // would leave a TIME_WAIT socket on the proxy per check, 24,000 of them at 1,000
        // checks a second. Quick ACKs stay on, as for a plain HTTP check (see `tcp::begin`).
        template.options.upstream_tcp_sock_tweak_hook = Some(std::sync::Arc::new(|s| {
            // zero: the close does not block (tokio's own setter is deprecated for the case
            // that does)
            socket2::SockRef::from(s)
                .set_linger(Some(std::time::Duration::ZERO))
                .or_err(
                    ErrorType::SocketError,
                    "SO_LINGER on a health check's socket",
                )
        }));
        Dial { template }
    }

    /// A new connection to `a`, its handshake done and the certificate verified.
    pub(super) async fn connect(&self, a: &Addr) -> pingora_core::Result<Stream> {
        let mut peer = self.template.clone();
        peer._address = a.clone();
        connector().new_stream(&peer).await
    }
}

/// A TCP check of a TLS backend: a connect and a handshake, so that a backend with a
/// certificate its requests would refuse is marked down before a request meets it.
pub(super) struct TlsTcpCheck {
    dial: Dial,
    timeout: std::time::Duration,
    thresholds: super::Thresholds,
}

impl TlsTcpCheck {
    pub(super) fn new(h: &HealthSpec, u: &UpstreamSpec) -> TlsTcpCheck {
        TlsTcpCheck {
            dial: Dial::new(h, u),
            timeout: h.timeout,
            thresholds: super::Thresholds::of(h),
        }
    }
}

#[async_trait]
impl HealthCheck for TlsTcpCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        match tokio::time::timeout(self.timeout, self.dial.connect(&target.addr)).await {
            Ok(r) => r.map(drop),
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                "connect and TLS handshake timed out",
            ),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.thresholds.pick(success)
    }
}
