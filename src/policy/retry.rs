//! When a failed attempt is tried again. Connect failures move to another backend while the
//! upstream's `retries` allow. A request whose reused (pooled) connection failed before any
//! response byte is sent again on a fresh connection, but only when sending it twice is
//! safe: an idempotent method whose whole body the proxy still holds. A POST is never sent
//! twice.

pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// After connect attempt number `attempts` (1-based) failed.
pub fn after_connect_failure(attempts: u32, retries: u32) -> bool {
    attempts <= retries
}

/// After a connection failed before the response began. `reused`: it came from the pool.
/// `body_held`: the whole request (head and body) can be sent again.
pub fn after_stale_connection(method: &str, body_held: bool, reused: bool) -> bool {
    reused && body_held && idempotent(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_requests_are_repeated() {
        assert!(after_stale_connection("GET", true, true));
        assert!(!after_stale_connection("GET", true, false));
        assert!(!after_stale_connection("POST", true, true));
        assert!(!after_stale_connection("PUT", false, true));
        assert!(after_connect_failure(1, 1) && !after_connect_failure(2, 1));
    }
}
