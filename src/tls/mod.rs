//! TLS: termination on listeners, TLS to backends, certificate reload and the https
//! redirect.
//!
//! Design:
//! - A listener's certificates live in a [`store::CertStore`], an `ArcSwap` of an immutable
//!   snapshot. The acceptor built by [`listener_tls`] has no certificate of its own; the
//!   certificate callback ([`store::SniCallback`]) installs the one chosen by SNI on each
//!   handshake, so a reload is one pointer swap and never rebuilds a listener. The
//!   handshake itself runs in the listener's accept loop (`src/net/tls.rs`).
//! - Protocol policy is fixed, not configurable: TLS 1.2 and 1.3 only with Mozilla's
//!   "intermediate" cipher list (forward-secret AEAD suites only), no renegotiation. ALPN
//!   offers h2 and http/1.1 on HTTP listeners.
//! - Every store built is registered here; [`reload::service`] polls their files and listens
//!   for SIGHUP. Any listener kind (HTTP or TCP) that calls [`listener_tls`] gets reload
//!   for free.
//! - Upstream TLS ([`upstream`]) is Pingora's connector with verification on by default;
//!   a failed handshake is an upstream error (502), never a retry in plaintext.

pub use crate::config::certs::{self, ClientCert, Trusted};
pub mod acme;
pub mod pace;
pub mod reload;
pub mod store;
pub mod upstream;

use crate::config::TlsSpec;
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod, SslOptions, SslVerifyMode, SslVersion};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::TlsAccept;
use std::fmt;
use std::sync::{Arc, Mutex};
use store::{CertStore, SniCallback};

/// Application protocols a TLS listener offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// No ALPN (raw TCP behind TLS).
    None,
    /// h2 preferred, http/1.1 allowed.
    Http,
}

static STORES: Mutex<Vec<Arc<CertStore>>> = Mutex::new(Vec::new());

/// The certificate stores of the TLS listeners in service (the reload service watches them).
pub fn stores() -> Vec<Arc<CertStore>> {
    STORES.lock().map(|s| s.clone()).unwrap_or_default()
}

/// A listener that a reload removed: its certificates are no longer reloaded or reported.
/// Connections it accepted keep the store through their handshake callbacks.
pub fn forget(store: &Arc<CertStore>) {
    if let Ok(mut all) = STORES.lock() {
        all.retain(|s| !Arc::ptr_eq(s, store));
    }
}

/// What a TLS listener's accept loop needs for each connection: the acceptor (protocol
/// policy, ALPN, no certificate of its own) and the callbacks that pick the certificate by
/// SNI from the listener's [`store::CertStore`].
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: SslAcceptor,
    pub callbacks: Arc<dyn TlsAccept + Send + Sync>,
    /// The listener's certificates, which the callbacks pick from.
    pub store: Arc<CertStore>,
    /// `tls.handshake_timeout`: from accept to the handshake's end, PROXY header and the
    /// wait for its turn included.
    pub handshake_timeout: std::time::Duration,
}

/// Build a listener's TLS acceptor from its validated TLS spec. The files are read again
/// here (they were checked at config load), and the store is registered for reload.
pub fn listener_tls(spec: &TlsSpec, alpn: Alpn) -> Result<ServerTls, String> {
    let store = Arc::new(CertStore::new(spec)?);
    let ctx = |e: &dyn fmt::Display| format!("{}: cannot set up TLS: {e}", spec.key_path);
    // Mozilla's "intermediate" profile, as Pingora's `TlsSettings` starts from.
    let mut s = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| ctx(&e))?;
    s.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| ctx(&e))?;
    s.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(|e| ctx(&e))?;
    s.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE);
    // No buffer sits under OpenSSL for a connection's life (Pingora's listener kept 64 KiB
    // there): with read-ahead an application-data record's header and body, and whatever
    // follows, come in one read into OpenSSL's record buffer, which an idle connection gives
    // back (SSL_MODE_RELEASE_BUFFERS, set by the openssl crate). OpenSSL does not read ahead
    // during the handshake; the accept loop's transport (src/net/tls_io.rs) does.
    s.set_read_ahead(true);
    // Resumed sessions must not cross listeners with different client verification.
    let sid = spec.key_path.as_bytes();
    s.set_session_id_context(&sid[..sid.len().min(32)])
        .map_err(|e| ctx(&e))?;
    if spec.client_ca.is_some() {
        // The trusted store itself is set per handshake from the current snapshot, so the
        // client CA file reloads like the certificates.
        s.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    if spec.acme.is_some() {
        // An ALPN choice that also knows acme-tls/1.
        acme::alpn::install(&mut s, alpn == Alpn::Http);
    } else if alpn == Alpn::Http {
        s.set_alpn_select_callback(|_, client| {
            openssl::ssl::select_next_proto(H2_THEN_H1, client).ok_or(AlpnError::NOACK)
        });
    }
    if let Ok(mut all) = STORES.lock() {
        all.push(store.clone());
    }
    Ok(ServerTls {
        acceptor: s.build(),
        callbacks: Arc::new(SniCallback(store.clone())),
        store,
        handshake_timeout: spec.handshake_timeout,
    })
}

/// h2 preferred, http/1.1 allowed, in ALPN's wire format.
const H2_THEN_H1: &[u8] = b"\x02h2\x08http/1.1";

/// Server options of an HTTP listener: h2c when asked for, Pingora's defaults otherwise.
pub fn http_server_options(l: &crate::config::ListenerSpec) -> Option<HttpServerOptions> {
    l.h2c.then(|| {
        let mut o = HttpServerOptions::default();
        o.h2c = true;
        o
    })
}
