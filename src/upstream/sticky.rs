//! The key behind sticky cookies. A cookie names its backend by a token, an HMAC-SHA256 of
//! the upstream's name and the backend's address under a key only the proxy holds: the
//! client learns nothing about the address, and cannot make a token for a backend it was
//! never sent to. The key lives in a file (created on first start with mode 0600, 32 random
//! bytes), so the new process of a graceful upgrade (`-u`), or a restart, honours the
//! cookies the old one set. By default the file sits beside the pid file
//! (`<pingora.pid_file>.sticky.key`); `sticky.key_file` names another, e.g. one shared by
//! a fleet behind one balancer.

use crate::config::Config;
use once_cell::sync::OnceCell;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const KEY_LEN: usize = 32;
/// Bytes of the HMAC kept in a token: 128 bits, written as 32 hex digits.
const TOKEN_BYTES: usize = 16;

pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The keys loaded so far (at start-up, then by reloads), by file.
static KEYS: std::sync::Mutex<Vec<(PathBuf, Arc<Key>)>> = std::sync::Mutex::new(Vec::new());
/// The file of upstreams without `key_file`.
static DEFAULT_FILE: OnceCell<PathBuf> = OnceCell::new();

/// Where an upstream's key is kept.
fn key_path(cfg_pid_file: &str, own: Option<&Path>) -> PathBuf {
    match own {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(format!("{cfg_pid_file}.sticky.key")),
    }
}

/// Read (or create) the key file of every sticky upstream not loaded yet. Called at start-up
/// and by each reload, before the pools are built; an error names the file.
pub fn load(cfg: &Config) -> Result<(), String> {
    let pid_file = cfg
        .pingora
        .pid_file
        .clone()
        .unwrap_or_else(|| "/tmp/stepstone.pid".into());
    let _ = DEFAULT_FILE.set(key_path(&pid_file, None));
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    for u in &cfg.upstreams {
        let Some(s) = &u.sticky else { continue };
        let path = key_path(&pid_file, s.key_file.as_deref());
        if keys.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let key = read_or_create(&path).map_err(|e| {
            format!(
                "upstreams {}: sticky key file {}: {e} (set sticky.key_file to a writable place)",
                u.name,
                path.display()
            )
        })?;
        keys.push((path, Arc::new(key)));
    }
    Ok(())
}

/// The key for an upstream's `key_file` (`None`: the default one). Pools built without
/// [`load`] (unit tests, benchmarks) get a key of their own that dies with the process.
pub fn key(own: Option<&Path>) -> Arc<Key> {
    let path = own
        .map(Path::to_path_buf)
        .or_else(|| DEFAULT_FILE.get().cloned());
    let keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    let found = keys
        .iter()
        .find(|(p, _)| Some(p) == path.as_ref())
        .map(|(_, k)| k.clone());
    found.unwrap_or_else(|| Arc::new(Key(random())))
}

fn random() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    if openssl::rand::rand_bytes(&mut k).is_err() {
        // not reached with a working OpenSSL; a time-seeded key still hides addresses
        for (i, b) in k.iter_mut().enumerate() {
            *b = (super::fastrand_usize() >> (i % 8)) as u8;
        }
    }
    k
}

/// The key in `path`, or a new one written there. A new key is written to a private
/// temporary file and linked into place, so a process reading the file never sees half a
/// key, and of two processes starting at once, both end up with the one that was linked.
fn read_or_create(path: &Path) -> std::io::Result<Key> {
    match std::fs::read(path) {
        Ok(b) => return parse(&b),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let key = random();
    let written = f.write_all(&key).and_then(|_| f.sync_all());
    let linked = written.and_then(|_| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            log::info!("sticky cookies: created the key file {}", path.display());
            Ok(Key(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => parse(&std::fs::read(path)?),
        Err(e) => Err(e),
    }
}

fn parse(b: &[u8]) -> std::io::Result<Key> {
    let k: [u8; KEY_LEN] = b.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("holds {} bytes, not a {KEY_LEN}-byte key", b.len()),
        )
    })?;
    Ok(Key(k))
}

/// The token of backend `addr` of upstream `upstream`; empty if OpenSSL fails (then no
/// cookie names the backend, and none is set for it).
pub fn token(key: &Key, upstream: &str, addr: &std::net::SocketAddr) -> String {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let mac = PKey::hmac(&key.0).and_then(|k| {
        let mut s = Signer::new(MessageDigest::sha256(), &k)?;
        s.update(upstream.as_bytes())?;
        s.update(&[0])?;
        s.update(addr.to_string().as_bytes())?;
        s.sign_to_vec()
    });
    match mac {
        Ok(m) => m[..TOKEN_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(e) => {
            log::error!("sticky cookie token for {addr}: {e}");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hide_the_address_and_depend_on_key_and_upstream() {
        let a: std::net::SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let k = Key([7; KEY_LEN]);
        let t = token(&k, "app", &a);
        assert_eq!(t.len(), 32);
        assert!(!t.contains("10.0.0.1") && !t.contains("8080"));
        assert_eq!(t, token(&Key([7; KEY_LEN]), "app", &a));
        assert_ne!(t, token(&Key([8; KEY_LEN]), "app", &a));
        assert_ne!(t, token(&k, "other", &a));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stepstone-key-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let a = read_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = read_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        std::fs::write(&path, b"short").unwrap();
        assert!(read_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
