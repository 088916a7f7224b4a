//! The files of `storage`: `account.key` (the ACME account), and per certificate
//! `<first name>.crt` (chain) and `<first name>.key`. Every file is 0600 and written to a
//! temporary name then renamed, so a crash leaves the old file or the new one, never half.

use super::jws;
use crate::config::acme::AcmeSpec;
use crate::config::certs::{self, LoadedCert};
use openssl::pkey::{PKey, Private};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn ensure_dir(dir: &str) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create storage {dir}: {e}"))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))
}

/// The account key, made on first use.
pub fn account_key(spec: &AcmeSpec) -> Result<PKey<Private>, String> {
    ensure_dir(&spec.storage)?;
    let path = Path::new(&spec.storage).join("account.key");
    match std::fs::read(&path) {
        Ok(pem) => PKey::private_key_from_pem(&pem)
            .map_err(|e| format!("{} is not a PEM private key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = jws::new_key()?;
            let pem = key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
            write_private(&path, &pem)?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn paths(spec: &AcmeSpec) -> (PathBuf, PathBuf) {
    let dir = Path::new(&spec.storage);
    let first = spec.names.first().map_or("certificate", |s| s.as_str());
    (
        dir.join(format!("{first}.crt")),
        dir.join(format!("{first}.key")),
    )
}

/// The stored certificate, when it is readable, unexpired and covers every name.
pub fn load(spec: &AcmeSpec) -> Result<Option<LoadedCert>, String> {
    let (crt, key) = paths(spec);
    if !crt.exists() {
        return Ok(None);
    }
    let (c, _) = certs::load_pair(
        &crt.display().to_string(),
        &key.display().to_string(),
        false,
    )
    .map_err(|e| e.msg)?;
    let sans: Vec<String> = c
        .leaf
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if spec.names.iter().all(|n| sans.contains(n)) {
        Ok(Some(c))
    } else {
        Ok(None)
    }
}

/// Check a downloaded chain against its key, then store both.
pub fn save(spec: &AcmeSpec, chain_pem: &[u8], key: &PKey<Private>) -> Result<LoadedCert, String> {
    let mut chain = openssl::x509::X509::stack_from_pem(chain_pem)
        .map_err(|e| format!("the CA sent no PEM chain: {e}"))?;
    if chain.is_empty() {
        return Err("the CA sent an empty chain".into());
    }
    let leaf = chain.remove(0);
    let ok = leaf.public_key().map(|p| p.public_eq(key)).unwrap_or(false);
    if !ok {
        return Err("the CA's certificate does not match the key of the CSR".into());
    }
    ensure_dir(&spec.storage)?;
    let (crt, keyp) = paths(spec);
    let key_pem = key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
    write_private(&keyp, &key_pem)?;
    write_private(&crt, chain_pem)?;
    Ok(LoadedCert {
        leaf,
        chain,
        key: key.clone(),
    })
}
