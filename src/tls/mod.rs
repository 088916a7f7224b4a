//! TLS: termination on listeners, TLS to backends, certificate reload and the https
//! redirect.
//!
//! Design:
//! - A listener's certificates live in a [`store::CertStore`], an `ArcSwap` of an immutable
//!   snapshot. The acceptor built by [`listener_settings`] has no certificate of its own;
//!   Pingora's certificate callback ([`store::SniCallback`]) installs the one chosen by SNI
//!   on each handshake, so a reload is one pointer swap and never rebuilds a listener.
//! - Protocol policy is fixed, not configurable: TLS 1.2 and 1.3 only with Mozilla's
//!   "intermediate" cipher list (forward-secret AEAD suites only), no renegotiation. ALPN
//!   offers h2 and http/1.1 on HTTP listeners.
//! - Every store built is registered here; [`reload::service`] polls their files and listens
//!   for SIGHUP. Any listener kind (HTTP or TCP) that calls [`listener_config`] or
//!   [`listener_settings`] gets
//!   reload for free.
//! - Upstream TLS ([`upstream`]) is Pingora's connector with verification on by default;
//!   a failed handshake is an upstream error (502), never a retry in plaintext.

pub use crate::config::certs::{self, ClientCert, Trusted};
pub mod acme;
pub mod deadline;
pub mod pace;
pub mod reload;
pub mod store;
pub mod upstream;

use crate::config::TlsSpec;
use openssl::ssl::{SslOptions, SslVerifyMode, SslVersion};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
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

/// Every certificate store built so far (the reload service watches them).
pub fn stores() -> Vec<Arc<CertStore>> {
    STORES.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Build the Pingora TLS settings of a listener from its validated TLS spec. The files are
/// read again here (they were checked at config load), and the store is registered for
/// reload.
pub fn listener_settings(spec: &TlsSpec, alpn: Alpn) -> Result<TlsSettings, String> {
    let store = Arc::new(CertStore::new(spec)?);
    let ctx = |e: &dyn fmt::Display| format!("{}: cannot set up TLS: {e}", spec.key_path);
    let mut s =
        TlsSettings::with_callbacks(Box::new(SniCallback(store.clone()))).map_err(|e| ctx(&e))?;
    s.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| ctx(&e))?;
    s.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(|e| ctx(&e))?;
    s.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE);
    // Resumed sessions must not cross listeners with different client verification.
    let sid = spec.key_path.as_bytes();
    s.set_session_id_context(&sid[..sid.len().min(32)])
        .map_err(|e| ctx(&e))?;
    if spec.client_ca.is_some() {
        // The trusted store itself is set per handshake from the current snapshot, so the
        // client CA file reloads like the certificates.
        s.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    if alpn == Alpn::Http {
        s.enable_h2();
    }
    if spec.acme.is_some() {
        // Replaces the ALPN choice of enable_h2 with one that also knows acme-tls/1.
        acme::alpn::install(&mut s, alpn == Alpn::Http);
    }
    if let Ok(mut all) = STORES.lock() {
        all.push(store);
    }
    Ok(s)
}

/// A TLS endpoint for `addr` (any listener kind; `alpn` says what it offers).
pub fn listener_config(
    addr: std::net::SocketAddr,
    spec: &TlsSpec,
    alpn: Alpn,
) -> Result<ListenerConfig, String> {
    Ok(ListenerConfig::tcp(addr.to_string()).tls(listener_settings(spec, alpn)?))
}

/// Server options of an HTTP listener: h2c when asked for, Pingora's defaults otherwise.
pub fn http_server_options(l: &crate::config::ListenerSpec) -> Option<HttpServerOptions> {
    l.h2c.then(|| {
        let mut o = HttpServerOptions::default();
        o.h2c = true;
        o
    })
}
