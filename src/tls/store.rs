//! The certificates a TLS listener serves, swapped atomically on reload.
//!
//! A [`CertStore`] holds an immutable [`Snapshot`] behind an `ArcSwap`. Pingora calls
//! [`SniCallback::certificate_callback`] in the middle of every handshake; it loads the
//! current snapshot (one atomic load, no lock), picks the certificate for the SNI name and
//! installs it, with the client CA store when mTLS is on, on that one connection. A reload
//! builds a complete new snapshot off to the side and swaps it in only when every file
//! loaded and checked out, so a handshake sees either all-old or all-new certificates, and
//! connections already established are never touched.

use super::certs::{self, LoadedCert};
use crate::config::{HostMatch, TlsSpec};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{debug, info, warn};
use openssl::ssl::{NameType, SslRef};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;
use pingora_core::listeners::TlsAccept;
use pingora_core::tls::ext;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// An immutable set of certificates with its SNI index.
pub struct Snapshot {
    /// In config order; the first is the default.
    pub certs: Vec<LoadedCert>,
    exact: HashMap<String, usize>,
    /// `(".example.com", index)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    client_ca: Option<ClientCa>,
}

struct ClientCa {
    store: X509Store,
    cas: Vec<X509>,
}

impl Snapshot {
    /// Read and check every file of `spec`. Any failure leaves nothing half-built.
    pub fn load(spec: &TlsSpec) -> Result<(Snapshot, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut certs = Vec::with_capacity(spec.certificates.len());
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        for (i, c) in spec.certificates.iter().enumerate() {
            let (loaded, warning) = certs::load_pair(&c.cert, &c.key, spec.allow_expired)
                .map_err(|e| format!("certificates[{i}]: {e}"))?;
            warnings.extend(warning);
            for n in &c.server_names {
                match n {
                    HostMatch::Exact(h) => {
                        exact.entry(h.clone()).or_insert(i);
                    }
                    HostMatch::Suffix(s) => suffixes.push((s.clone(), i)),
                    HostMatch::Any => {}
                }
            }
            certs.push(loaded);
        }
        if certs.is_empty() {
            let names = spec.acme.as_ref().map_or(&[][..], |a| &a.names[..]);
            certs.push(super::acme::placeholder(names)?);
        }
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let client_ca = match &spec.client_ca {
            None => None,
            Some(path) => {
                let cas = certs::load_ca(path).map_err(|e| format!("client_ca: {e}"))?;
                let mut b = X509StoreBuilder::new().map_err(|e| format!("client_ca: {e}"))?;
                for ca in &cas {
                    b.add_cert(ca.clone())
                        .map_err(|e| format!("client_ca: {path}: {e}"))?;
                }
                Some(ClientCa {
                    store: b.build(),
                    cas,
                })
            }
        };
        Ok((
            Snapshot {
                certs,
                exact,
                suffixes,
                client_ca,
            },
            warnings,
        ))
    }

    /// Index of the certificate for an SNI name; unknown or absent names get the default.
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        self.suffixes
            .iter()
            .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
            .map(|&(_, i)| i)
            .unwrap_or(0)
    }

    /// Install the certificate for the handshake's SNI name: `acme`'s when it has one for
    /// the name, else the file certificates'.
    fn install(
        &self,
        ssl: &mut SslRef,
        acme: Option<(&super::acme::Slot, bool)>,
    ) -> Result<(), openssl::error::ErrorStack> {
        let sni_owned = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let sni = sni_owned.as_deref();
        let challenge = match (acme, sni) {
            (Some(_), Some(name)) if super::acme::alpn::offered(ssl) => {
                super::acme::challenge::alpn_cert(name)
            }
            _ => None,
        };
        if challenge.is_some() {
            // The CA's validator has no client certificate and closes right after the
            // handshake: an mTLS listener must not ask it for one.
            ssl.set_verify(openssl::ssl::SslVerifyMode::NONE);
        }
        let challenge_served = challenge.is_some();
        let ordered = challenge.or_else(|| acme.and_then(|(slot, only)| slot.serving(sni, only)));
        let c = match &ordered {
            Some(c) => c,
            None => &self.certs[self.pick(sni)],
        };
        ext::ssl_use_certificate(ssl, &c.leaf)?;
        ext::ssl_use_private_key(ssl, &c.key)?;
        for inter in &c.chain {
            ext::ssl_add_chain_cert(ssl, inter)?;
        }
        if let Some(ca) = self.client_ca.as_ref().filter(|_| !challenge_served) {
            ext::ssl_set_verify_cert_store(ssl, &ca.store)?;
            let mut names = Stack::new()?;
            for c in &ca.cas {
                names.push(c.subject_name().to_owned()?)?;
            }
            ssl.set_client_ca_list(names);
        }
        Ok(())
    }

    /// The CAs a client certificate must chain to (`client_ca`), if the listener asks for one.
    pub fn client_cas(&self) -> Option<&[X509]> {
        self.client_ca.as_ref().map(|c| c.cas.as_slice())
    }

    pub fn describe(&self) -> String {
        self.certs
            .iter()
            .map(|c| certs::describe(&c.leaf))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What identifies a version of a file: a rewrite in place changes mtime or size, a rename
/// over it changes the inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub struct CertStore {
    pub spec: TlsSpec,
    /// Handshakes completed, and refused for lack of a certificate; read by the metrics
    /// page at scrape time.
    pub handshakes_ok: std::sync::atomic::AtomicU64,
    pub handshakes_no_cert: std::sync::atomic::AtomicU64,
    pub current: ArcSwap<Snapshot>,
    /// Certificates ordered by ACME (`tls.acme`), kept apart from the file snapshot so
    /// that a file reload never drops them.
    pub acme: Option<Arc<super::acme::Slot>>,
    /// File versions the last load attempt saw, successful or not, so a bad file is
    /// reported once, not on every poll.
    seen: Mutex<Vec<Stamp>>,
}

impl CertStore {
    pub fn new(spec: &TlsSpec) -> Result<CertStore, String> {
        let seen = Self::stamps(spec);
        let (snap, warnings) =
            Snapshot::load(spec).map_err(|e| format!("{}.{e}", spec.key_path))?;
        for w in warnings {
            warn!("{}: {w}", spec.key_path);
        }
        info!("{}: serving {}", spec.key_path, snap.describe());
        Ok(CertStore {
            spec: spec.clone(),
            handshakes_ok: Default::default(),
            handshakes_no_cert: Default::default(),
            current: ArcSwap::from_pointee(snap),
            acme: spec
                .acme
                .as_ref()
                .map(|a| Arc::new(super::acme::Slot::new(&spec.key_path, &spec.listener, a))),
            seen: Mutex::new(seen),
        })
    }

    fn stamps(spec: &TlsSpec) -> Vec<Stamp> {
        spec.certificates
            .iter()
            .flat_map(|c| [stamp(&c.cert), stamp(&c.key)])
            .chain(spec.client_ca.as_deref().map(stamp))
            .collect()
    }

    /// Reload when a file changed since the last attempt. Returns whether it tried.
    pub fn poll(&self) -> bool {
        let now = Self::stamps(&self.spec);
        {
            let Ok(mut seen) = self.seen.lock() else {
                return false;
            };
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        self.reload("a certificate file changed");
        true
    }

    /// Load every file again and swap the new set in; on any error keep serving the old one.
    pub fn reload(&self, why: &str) -> bool {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Self::stamps(&self.spec);
        }
        match Snapshot::load(&self.spec) {
            Ok((snap, warnings)) => {
                for w in warnings {
                    warn!("{}: {w}", self.spec.key_path);
                }
                info!(
                    "{}: certificates reloaded ({why}): serving {}",
                    self.spec.key_path,
                    snap.describe()
                );
                self.current.store(Arc::new(snap));
                true
            }
            Err(e) => {
                warn!(
                    "{}: reload ({why}) failed, keeping the current certificates: {}.{e}",
                    self.spec.key_path, self.spec.key_path
                );
                false
            }
        }
    }
}

/// Pingora's per-handshake hook: installs the certificate chosen by SNI.
pub struct SniCallback(pub Arc<CertStore>);

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        // Without a certificate the handshake fails right after this, which closes only
        // this connection; there is nothing better to do with an error here.
        let acme = self
            .0
            .acme
            .as_deref()
            .map(|a| (a, self.0.spec.certificates.is_empty()));
        if let Err(e) = self.0.current.load().install(ssl, acme) {
            self.0
                .handshakes_no_cert
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(
                "{}: cannot install a certificate: {e}",
                self.0.spec.key_path
            );
        }
    }

    async fn handshake_complete_callback(
        &self,
        _ssl: &SslRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0
            .handshakes_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
}
