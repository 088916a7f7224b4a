//! TLS and HTTP/2 towards backends, applied to the peers Pingora connects to (requests and
//! health checks alike, so a check proves what a request would meet).
//!
//! Verification is on unless the upstream says `verify: false`: the chain against `ca_file`
//! (or the system roots) and the name against `sni`. Pingora turns a failed handshake into
//! an upstream error, which the proxy answers with 502; nothing here can downgrade to
//! plaintext.

use crate::config::{UpstreamSpec, UpstreamTlsSpec, DEFAULT_UPSTREAM_H2_STREAMS};
use log::warn;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_core::{Error, ErrorType};
use std::net::SocketAddr;

/// The peer for one request to `addr` of upstream `u`.
pub fn http_peer(u: &UpstreamSpec, addr: SocketAddr) -> HttpPeer {
    let mut peer = match &u.tls {
        Some(t) => {
            let mut p = HttpPeer::new(addr, true, t.sni.clone());
            p.client_cert_key = t.client.as_ref().map(|c| c.0.clone());
            // Pingora's connection-reuse key leaves out the trusted CAs, so two upstreams
            // with the same backend and SNI but different `ca_file` would share pooled
            // connections, and one verified by the other's CA. Keep each upstream's apart.
            p.group_key = group_key(&u.name);
            p
        }
        None => HttpPeer::new(addr, false, String::new()),
    };
    apply_options(&mut peer.options, u.tls.as_ref(), u.http2);
    peer
}

fn group_key(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// TLS and ALPN options on a request's peer; the health checks take theirs from
/// [`http_peer`] too.
fn apply_options(o: &mut PeerOptions, tls: Option<&UpstreamTlsSpec>, http2: bool) {
    if let Some(t) = tls {
        o.verify_cert = t.verify;
        o.verify_hostname = t.verify;
        o.ca = t.ca.as_ref().map(|c| c.0.clone());
    }
    if http2 {
        // With TLS, ALPN lets a backend decline h2; in cleartext there is no negotiation, so
        // `http2` means the backend speaks h2c with prior knowledge.
        o.alpn = if tls.is_some() { ALPN::H2H1 } else { ALPN::H2 };
        o.max_h2_streams = DEFAULT_UPSTREAM_H2_STREAMS;
    }
}

/// A clearer log line for TLS connect failures than the generic one: it says what was
/// checked, and that the request was not sent in plaintext instead.
pub fn log_connect_failure(listener: &str, u: &UpstreamSpec, backend: &str, e: &Error) -> bool {
    let Some(t) = &u.tls else { return false };
    let what = match e.etype() {
        ErrorType::InvalidCert => "certificate verification failed",
        ErrorType::TLSHandshakeFailure | ErrorType::HandshakeError => "TLS handshake failed",
        _ => return false,
    };
    warn!(
        "{listener}: upstream {}: backend {backend}: {what} (sni {:?}, verify {}); not sending the request: {e}",
        u.name,
        t.sni,
        t.verify
    );
    true
}
