//! Client certificates over QUIC (`tls.client_ca`): the TCP side's rule, read from the same
//! certificate store, so a reload of the CA file reaches both stacks at once.
//!
//! rustls verifies with a webpki verifier built from the snapshot's CAs, once per snapshot
//! and kept beside its pointer. A client without a certificate, or with one that does not
//! chain to those CAs, fails the handshake, as over TCP. The QUIC side sends no list of
//! acceptable CA names (the TCP side does): rustls wants that list for the life of the
//! config, and the CA file may change under it.

use crate::tls::store::{CertStore, Snapshot};
use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

type Verifier = Arc<dyn ClientCertVerifier>;

/// A snapshot's verifier, or why there is none.
struct Built {
    from: Arc<Snapshot>,
    verifier: Result<Verifier, String>,
}

pub struct ClientCa {
    store: Arc<CertStore>,
    cache: ArcSwapOption<Built>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.client_ca", self.store.spec.key_path)
    }
}

impl ClientCa {
    pub fn new(store: Arc<CertStore>, provider: Arc<rustls::crypto::CryptoProvider>) -> ClientCa {
        ClientCa {
            store,
            cache: ArcSwapOption::empty(),
            provider,
        }
    }

    fn build(&self, snap: &Snapshot) -> Result<Verifier, String> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in snap.client_cas().unwrap_or_default() {
            let der = ca.to_der().map_err(|e| e.to_string())?;
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| e.to_string())?;
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())
    }

    fn current(&self) -> Result<Verifier, rustls::Error> {
        let snap = self.store.current.load_full();
        let cached = self
            .cache
            .load_full()
            .filter(|b| Arc::ptr_eq(&b.from, &snap));
        let b = match cached {
            Some(b) => b,
            None => {
                let verifier = self.build(&snap);
                if let Err(e) = &verifier {
                    log::warn!("{self:?}: not usable over QUIC: {e}");
                }
                let b = Arc::new(Built {
                    from: snap,
                    verifier,
                });
                self.cache.store(Some(b.clone()));
                b
            }
        };
        b.verifier.clone().map_err(rustls::Error::General)
    }
}

impl ClientCertVerifier for ClientCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
