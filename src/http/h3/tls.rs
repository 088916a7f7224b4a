//! The QUIC side's certificates: the TCP listener's own [`CertStore`], read through rustls.
//!
//! Each handshake loads the store's current snapshot and picks by SNI with the snapshot's
//! own rule (exact name, longest `*.suffix`, default), so both stacks always agree and a
//! reload, which swaps the snapshot, reaches QUIC at the same moment. The rustls form of a
//! snapshot's keys is built once per snapshot and kept beside its pointer.

use crate::tls::store::{CertStore, Snapshot};
use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The rustls keys of one snapshot, in the snapshot's order.
struct Converted {
    from: Arc<Snapshot>,
    keys: Vec<Option<Arc<CertifiedKey>>>,
}

pub struct Resolver {
    store: Arc<CertStore>,
    cache: ArcSwapOption<Converted>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.store.spec.key_path)
    }
}

fn convert(snap: &Snapshot, key_path: &str) -> Vec<Option<Arc<CertifiedKey>>> {
    snap.certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let der = |x: &openssl::x509::X509| x.to_der().map(CertificateDer::from);
            let chain: Result<Vec<_>, _> = std::iter::once(&c.leaf)
                .chain(c.chain.iter())
                .map(der)
                .collect();
            let key = c.key.private_key_to_pkcs8().map_err(|e| e.to_string());
            let made = chain.map_err(|e| e.to_string()).and_then(|chain| {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key?));
                let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(CertifiedKey::new(chain, signer)))
            });
            made.map_err(|e| log::warn!("{key_path}.certificates[{i}]: not usable over QUIC: {e}"))
                .ok()
        })
        .collect()
}

impl Resolver {
    pub fn new(store: Arc<CertStore>) -> Resolver {
        Resolver {
            store,
            cache: ArcSwapOption::empty(),
        }
    }

    fn keys(&self) -> Arc<Converted> {
        let snap = self.store.current.load_full();
        if let Some(c) = self.cache.load_full() {
            if Arc::ptr_eq(&c.from, &snap) {
                return c;
            }
        }
        let keys = convert(&snap, &self.store.spec.key_path);
        let c = Arc::new(Converted { from: snap, keys });
        self.cache.store(Some(c.clone()));
        c
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let c = self.keys();
        let key = c
            .keys
            .get(c.from.pick(hello.server_name()))
            .cloned()
            .flatten();
        let counter = match key {
            Some(_) => &self.store.handshakes_ok,
            None => &self.store.handshakes_no_cert,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        key
    }
}

/// The rustls server side of a QUIC listener: TLS 1.3 only (QUIC has no other), ALPN h3.
/// Early data only with `early_data` (`quic.early_data`): QUIC requires the TLS limit to be
/// 0xffffffff when 0-RTT is on (RFC 9001 4.6.1); the session cache makes each ticket single
/// use, so a captured ClientHello's early data is not accepted twice by this process.
pub fn server_config(
    store: Arc<CertStore>,
    early_data: bool,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("{}: QUIC TLS: {e}", store.spec.key_path))?;
    let b = if store.spec.client_ca.is_some() {
        b.with_client_cert_verifier(Arc::new(super::mtls::ClientCa::new(
            store.clone(),
            provider,
        )))
    } else {
        b.with_no_client_auth()
    };
    let mut c = b.with_cert_resolver(Arc::new(Resolver::new(store)));
    c.alpn_protocols = vec![b"h3".to_vec()];
    c.max_early_data_size = if early_data { u32::MAX } else { 0 };
    Ok(c)
}
