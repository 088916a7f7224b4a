//! Test PKI generated at run time with the openssl crate: a CA, server and client
//! certificates (EC P-256, fast to generate). Nothing secret is committed.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};
use std::path::{Path, PathBuf};

pub fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey")
}

pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// Validity window in days relative to now.
#[derive(Clone, Copy)]
pub struct Days(pub i64, pub i64);

pub const VALID: Days = Days(-1, 30);
pub const EXPIRED: Days = Days(-30, -1);

fn time(days: i64) -> Asn1Time {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    Asn1Time::from_unix(now + days * 86400).expect("asn1 time")
}

fn builder(cn: &str, serial: u32, days: Days, key: &PKey<Private>) -> (X509Builder, X509Name) {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let name = name.build();
    let mut b = X509Builder::new().expect("x509");
    b.set_version(2).expect("version");
    let serial = Asn1Integer::from_bn(&BigNum::from_u32(serial).expect("bn")).expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_not_before(&time(days.0)).expect("nb");
    b.set_not_after(&time(days.1)).expect("na");
    b.set_pubkey(key).expect("pubkey");
    (b, name)
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = new_key();
        let (mut b, name) = builder(cn, 1, Days(-1, 365), &key);
        b.set_issuer_name(&name).expect("issuer");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("ext");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ext");
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .expect("ski");
        b.append_extension(ski).expect("ext");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        Ca {
            cert: b.build(),
            key,
        }
    }

    fn leaf(&self, cn: &str, sans: &[&str], serial: u32, days: Days, client: bool) -> Leaf {
        self.leaf_for(cn, sans, serial, days, !client, client)
    }

    fn leaf_for(
        &self,
        cn: &str,
        sans: &[&str],
        serial: u32,
        days: Days,
        server: bool,
        client: bool,
    ) -> Leaf {
        let key = new_key();
        let (mut b, _) = builder(cn, serial, days, &key);
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("ext");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .expect("ku"),
        )
        .expect("ext");
        let mut eku = ExtendedKeyUsage::new();
        if client {
            eku.client_auth();
        }
        if server {
            eku.server_auth();
        }
        let eku = eku.build();
        b.append_extension(eku.expect("eku")).expect("ext");
        if !sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for s in sans {
                if s.parse::<std::net::IpAddr>().is_ok() {
                    san.ip(s);
                } else {
                    san.dns(s);
                }
            }
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .expect("san");
            b.append_extension(ext).expect("ext");
        }
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&self.cert), None))
            .expect("aki");
        b.append_extension(aki).expect("ext");
        b.sign(&self.key, MessageDigest::sha256()).expect("sign");
        Leaf {
            cert: b.build(),
            key,
        }
    }

    pub fn server(&self, cn: &str, sans: &[&str], serial: u32) -> Leaf {
        self.leaf(cn, sans, serial, VALID, false)
    }

    pub fn server_with(&self, cn: &str, sans: &[&str], serial: u32, days: Days) -> Leaf {
        self.leaf(cn, sans, serial, days, false)
    }

    /// A server certificate that is also a client one: etcd's gateway calls its own gRPC
    /// server with it when client certificates are required.
    pub fn server_and_client(&self, cn: &str, sans: &[&str], serial: u32) -> Leaf {
        self.leaf_for(cn, sans, serial, VALID, true, true)
    }

    pub fn client(&self, cn: &str, serial: u32) -> Leaf {
        self.leaf(cn, &[], serial, VALID, true)
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, self.cert.to_pem().expect("pem")).expect("write ca");
        p
    }
}

impl Leaf {
    /// Write `NAME.crt` and `NAME.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        write_atomic(&c, &self.cert.to_pem().expect("pem"));
        write_atomic(&k, &self.key.private_key_to_pem_pkcs8().expect("key pem"));
        (c, k)
    }

    pub fn serial(&self) -> String {
        serial_of(&self.cert)
    }
}

pub fn serial_of(cert: &openssl::x509::X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .expect("bn")
        .to_hex_str()
        .expect("hex")
        .to_string()
}

pub fn cn_of(cert: &openssl::x509::X509Ref) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// Write through a temporary file and a rename, as deployment tools do, so a reader never
/// sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}
