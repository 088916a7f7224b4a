//! The answers of pending challenges, shared by every listener, filled by the order task
//! while a challenge is pending and emptied after. HTTP-01: token → key authorization,
//! read by the policy (its `acme` step) before routing. TLS-ALPN-01: name → the challenge
//! certificate, read by the certificate callback of a handshake that offered `acme-tls/1`.

use crate::config::certs::LoadedCert;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

static ALPN_CERTS: RwLock<Option<HashMap<String, Arc<LoadedCert>>>> = RwLock::new(None);

pub fn insert_alpn(name: &str, cert: LoadedCert) {
    if let Ok(mut m) = ALPN_CERTS.write() {
        m.get_or_insert_with(HashMap::new)
            .insert(name.to_ascii_lowercase(), Arc::new(cert));
    }
}

pub fn remove_alpn(name: &str) {
    if let Ok(mut m) = ALPN_CERTS.write() {
        if let Some(m) = m.as_mut() {
            m.remove(&name.to_ascii_lowercase());
        }
    }
}

/// The TLS-ALPN-01 certificate pending for `name`.
pub fn alpn_cert(name: &str) -> Option<Arc<LoadedCert>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    ALPN_CERTS.read().ok()?.as_ref()?.get(&name).cloned()
}

static TOKENS: RwLock<Option<HashMap<String, String>>> = RwLock::new(None);
/// Entries in `TOKENS`, so that the common case (nothing pending) costs one atomic load.
static PENDING: AtomicUsize = AtomicUsize::new(0);

pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

pub fn insert(token: &str, key_authorization: String) {
    if let Ok(mut t) = TOKENS.write() {
        let map = t.get_or_insert_with(HashMap::new);
        map.insert(token.to_string(), key_authorization);
        PENDING.store(map.len(), Ordering::Release);
    }
}

pub fn remove(token: &str) {
    if let Ok(mut t) = TOKENS.write() {
        if let Some(map) = t.as_mut() {
            map.remove(token);
            PENDING.store(map.len(), Ordering::Release);
        }
    }
}

/// The key authorization for a request path, when it is the challenge URL of a pending
/// order.
pub fn lookup(path: &str) -> Option<String> {
    if PENDING.load(Ordering::Acquire) == 0 {
        return None;
    }
    let token = path.strip_prefix(PATH_PREFIX)?;
    TOKENS.read().ok()?.as_ref()?.get(token).cloned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_only_pending_tokens() {
        assert_eq!(super::lookup("/.well-known/acme-challenge/t1"), None);
        super::insert("t1", "t1.thumb".into());
        assert_eq!(
            super::lookup("/.well-known/acme-challenge/t1").as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(super::lookup("/.well-known/acme-challenge/t2"), None);
        assert_eq!(super::lookup("/t1"), None);
        super::remove("t1");
        assert_eq!(super::lookup("/.well-known/acme-challenge/t1"), None);
    }
}
