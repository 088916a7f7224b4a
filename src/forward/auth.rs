//! Basic proxy authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose, so a verified `Proxy-Authorization` value is remembered for a
//! short time, keyed by its SHA-256 (never the plain header), and the check itself runs on
//! the blocking pool so that a burst of logins cannot stall the proxy's event loop. Failed
//! checks are not remembered: every wrong guess costs a full bcrypt round.

use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a verified credential is trusted without another bcrypt check.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered credentials; the cache is pruned, then cleared, beyond it.
pub const CACHE_MAX: usize = 4096;

pub struct Auth {
    pub realm: String,
    users: HashMap<String, String>,
    verified: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

impl Auth {
    pub fn new(realm: &str, users: &[(String, String)]) -> Auth {
        Auth {
            realm: realm.to_string(),
            users: users.iter().cloned().collect(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The user name, or why the credentials were refused (for the log, never the client).
    pub async fn check(&self, header: Option<&[u8]>) -> Result<String, &'static str> {
        let Some(raw) = header else {
            return Err("no Proxy-Authorization");
        };
        let key = openssl::sha::sha256(raw);
        if let Ok(m) = self.verified.lock() {
            if let Some((at, user)) = m.get(&key) {
                if at.elapsed() < CACHE_TTL {
                    return Ok(user.clone());
                }
            }
        }
        let text = std::str::from_utf8(raw).map_err(|_| "malformed credentials")?;
        let (scheme, b64) = text.trim().split_once(' ').ok_or("malformed credentials")?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err("not Basic credentials");
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "malformed credentials")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "malformed credentials")?;
        let (user, pass) = decoded.split_once(':').ok_or("malformed credentials")?;
        let hash = self.users.get(user).ok_or("unknown user")?.clone();
        let pass = pass.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !ok {
            return Err("wrong password");
        }
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= CACHE_MAX {
                m.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
            }
            m.insert(key, (Instant::now(), user.to_string()));
        }
        Ok(user.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_and_caches() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let a = Auth::new("r", &[("u".into(), hash)]);
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:pw")
        );
        let bad = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:nope")
        );
        assert_eq!(a.check(Some(good.as_bytes())).await, Ok("u".into()));
        assert_eq!(a.verified.lock().unwrap().len(), 1);
        assert_eq!(a.check(Some(good.as_bytes())).await, Ok("u".into()));
        assert!(a.check(Some(bad.as_bytes())).await.is_err());
        assert!(a.check(None).await.is_err());
        assert!(a.check(Some(b"Bearer x")).await.is_err());
    }
}
