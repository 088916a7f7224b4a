//! TLS-ALPN-01 (RFC 8737) on a listener: a handshake whose ClientHello offers `acme-tls/1`
//! gets that protocol and, for a name with a pending challenge, the challenge certificate
//! (self-signed, the critical `id-pe-acmeIdentifier` extension holding the SHA-256 of the
//! key authorization) instead of the listener's.
//!
//! The offer is read in the ClientHello callback, because with TLS 1.2 OpenSSL runs the
//! certificate callback before it selects the ALPN protocol.

use crate::config::certs::LoadedCert;
use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
use openssl::hash::{hash, MessageDigest};
use openssl::ssl::{AlpnError, ClientHelloResponse, Ssl, SslAcceptorBuilder, SslRef};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder};
use std::sync::OnceLock;

const ACME_TLS: &[u8] = b"acme-tls/1";
/// id-pe-acmeIdentifier.
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";
/// TLSEXT_TYPE_application_layer_protocol_negotiation.
const ALPN_EXTENSION: u32 = 16;

fn offered_index() -> Option<openssl::ex_data::Index<Ssl, bool>> {
    static IDX: OnceLock<Option<openssl::ex_data::Index<Ssl, bool>>> = OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The protocol names of an ALPN extension body (RFC 7301 §3.1).
fn protocols(ext: &[u8]) -> impl Iterator<Item = &[u8]> {
    let list = ext.get(2..).unwrap_or_default();
    let mut rest = list;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let p = tail.get(..len as usize)?;
        rest = &tail[len as usize..];
        Some(p)
    })
}

fn client_offers_acme(ssl: &SslRef) -> bool {
    use foreign_types::ForeignTypeRef;
    let mut out: *const u8 = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: called from the ClientHello callback, where OpenSSL keeps the ClientHello
    // alive; `out` points into it and is read before the callback returns.
    let ext = unsafe {
        if openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), ALPN_EXTENSION, &mut out, &mut len)
            != 1
            || out.is_null()
        {
            return false;
        }
        std::slice::from_raw_parts(out, len)
    };
    protocols(ext).any(|p| p == ACME_TLS)
}

/// Whether this handshake's client offered `acme-tls/1`.
pub fn offered(ssl: &SslRef) -> bool {
    offered_index()
        .and_then(|i| ssl.ex_data(i).copied())
        .unwrap_or(false)
}

/// Take over the listener's ALPN choice: `acme-tls/1` when offered, else what the listener
/// offers (`http`: h2, then http/1.1).
pub fn install(s: &mut SslAcceptorBuilder, http: bool) {
    s.set_client_hello_callback(|ssl, _alert| {
        if client_offers_acme(ssl) {
            if let Some(i) = offered_index() {
                ssl.set_ex_data(i, true);
            }
        }
        Ok(ClientHelloResponse::SUCCESS)
    });
    s.set_alpn_select_callback(move |ssl, client| {
        let list: Vec<&[u8]> = {
            let mut v = Vec::new();
            let mut rest = client;
            while let Some((&len, tail)) = rest.split_first() {
                let Some(p) = tail.get(..len as usize) else {
                    return Err(AlpnError::NOACK);
                };
                v.push(p);
                rest = &tail[len as usize..];
            }
            v
        };
        let want: &[&[u8]] = if offered(ssl) {
            &[ACME_TLS]
        } else if http {
            &[b"h2", b"http/1.1"]
        } else {
            &[]
        };
        want.iter()
            .find_map(|w| list.iter().find(|p| *p == w).copied())
            .ok_or(AlpnError::NOACK)
    });
}

/// The challenge certificate for `name` and `key_authorization` (RFC 8737 §3).
pub fn challenge_cert(name: &str, key_authorization: &str) -> Result<LoadedCert, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let key = super::jws::new_key()?;
    let mut subject = X509NameBuilder::new().map_err(e)?;
    subject
        .append_entry_by_nid(openssl::nid::Nid::COMMONNAME, name)
        .map_err(e)?;
    let subject = subject.build();
    let mut b = X509Builder::new().map_err(e)?;
    b.set_version(2).map_err(e)?;
    b.set_subject_name(&subject).map_err(e)?;
    b.set_issuer_name(&subject).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    b.set_not_before(&*Asn1Time::days_from_now(0).map_err(e)?)
        .map_err(e)?;
    b.set_not_after(&*Asn1Time::days_from_now(1).map_err(e)?)
        .map_err(e)?;
    let san = SubjectAlternativeName::new()
        .dns(name)
        .build(&b.x509v3_context(None, None))
        .map_err(e)?;
    b.append_extension(san).map_err(e)?;
    let digest = hash(MessageDigest::sha256(), key_authorization.as_bytes()).map_err(e)?;
    // extnValue is the DER of an OCTET STRING holding the digest.
    let mut der = vec![0x04, digest.len() as u8];
    der.extend_from_slice(&digest);
    let oid = Asn1Object::from_str(ACME_IDENTIFIER_OID).map_err(e)?;
    let value = Asn1OctetString::new_from_bytes(&der).map_err(e)?;
    b.append_extension(X509Extension::new_from_der(&oid, true, &value).map_err(e)?)
        .map_err(e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e)?;
    Ok(LoadedCert {
        leaf: b.build(),
        chain: Vec::new(),
        key,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_alpn_lists() {
        let ext = b"\x00\x0e\x02h2\x0aacme-tls/1";
        let p: Vec<&[u8]> = super::protocols(ext).collect();
        assert_eq!(p, vec![&b"h2"[..], &b"acme-tls/1"[..]]);
        let c = super::challenge_cert("a.test", "tok.thumb").unwrap();
        let text = String::from_utf8_lossy(&c.leaf.to_text().unwrap()).into_owned();
        assert!(text.contains("1.3.6.1.5.5.7.1.31: critical"), "{text}");
    }
}
