//! Reading and checking PEM files: certificate chains, private keys and CA bundles.
//!
//! The same checks run at `-t`, at start-up and on every reload, so a file that `-t`
//! accepts is one the running proxy accepts, and a bad replacement is refused for the same
//! reason `-t` would give.

use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use pingora_core::utils::tls::CertKey;
use std::fmt;
use std::sync::Arc;

/// A certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct LoadedCert {
    pub leaf: X509,
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.leaf))
    }
}

/// Which file of a pair an error is about, so the config error can name its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

#[derive(Debug, Clone)]
pub struct LoadError {
    pub which: Which,
    pub msg: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Read a chain and its key and check that they belong together and that the leaf has not
/// expired. With `allow_expired`, expiry is returned as a warning instead of an error.
pub fn load_pair(
    cert_path: &str,
    key_path: &str,
    allow_expired: bool,
) -> Result<(LoadedCert, Option<String>), LoadError> {
    let cert_err = |msg: String| LoadError {
        which: Which::Cert,
        msg,
    };
    let key_err = |msg: String| LoadError {
        which: Which::Key,
        msg,
    };
    let pem = read(cert_path).map_err(cert_err)?;
    let mut certs = X509::stack_from_pem(&pem)
        .map_err(|e| cert_err(format!("{cert_path} is not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err(format!("{cert_path} holds no PEM certificate")));
    }
    let leaf = certs.remove(0);
    let kpem = read(key_path).map_err(key_err)?;
    let key = PKey::private_key_from_pem(&kpem)
        .map_err(|e| key_err(format!("{key_path} is not a PEM private key: {e}")))?;
    let matches = leaf
        .public_key()
        .map(|p| p.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(key_err(format!(
            "{key_path} is not the private key of the certificate in {cert_path}"
        )));
    }
    let mut warning = None;
    if let Some(when) = expired(&leaf) {
        let msg = format!("the certificate in {cert_path} expired on {when}");
        if allow_expired {
            warning = Some(format!("{msg}; serving it anyway (allow_expired: true)"));
        } else {
            return Err(cert_err(format!(
                "{msg} (allow_expired: true serves it with a warning)"
            )));
        }
    }
    Ok((
        LoadedCert {
            leaf,
            chain: certs,
            key,
        },
        warning,
    ))
}

/// The expiry date when the certificate is past it.
fn expired(cert: &X509) -> Option<String> {
    let now = Asn1Time::days_from_now(0).ok()?;
    let not_after = cert.not_after();
    match not_after.compare(&now) {
        Ok(std::cmp::Ordering::Less) => Some(not_after.to_string()),
        _ => None,
    }
}

/// A bundle of trusted CA certificates.
pub fn load_ca(path: &str) -> Result<Vec<X509>, String> {
    let pem = read(path)?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{path} is not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs)
}

/// `CN=name serial=HEX`, for log lines about which certificate is served.
pub fn describe(cert: &X509) -> String {
    let cn = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "-".into());
    let serial = cert
        .serial_number()
        .to_bn()
        .ok()
        .and_then(|b| b.to_hex_str().ok())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    format!("CN={cn} serial={serial}")
}

/// CA certificates a peer's chain is verified against, loaded and checked at validation.
#[derive(Clone)]
pub struct Trusted(pub Arc<Box<[openssl::x509::X509]>>);

impl fmt::Debug for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Trusted({} CAs)", self.0.len())
    }
}

/// Client certificate and key presented to an upstream's backends.
#[derive(Clone)]
pub struct ClientCert(pub Arc<CertKey>);

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCert({})", describe(self.0.leaf()))
    }
}
