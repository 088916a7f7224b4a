//! When a failed attempt is tried again. Connect failures move to another backend while the
//! upstream's `retries` allow. A request whose reused (pooled) connection failed before any
//! response byte is sent again on a fresh connection, but only when sending it twice is
//! safe: an idempotent method whose whole body the proxy still holds. A POST is never sent
//! twice.

use super::answer::Failure;

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

/// What the client is told when no backend is left to try: the last connect failure if
/// there was one (every backend refused or timed out: 502 or 504), else that none was
/// usable (503).
pub fn exhausted(last_connect_failure: Option<Failure>) -> Failure {
    last_connect_failure.unwrap_or(Failure::NoBackend)
}

/// What the client is told when the pool had no backend for it (see
/// [`crate::upstream::NoBackend`]): a full or timed-out queue is an overload (503 with
/// Retry-After), an empty pool as [`exhausted`] says.
pub fn no_backend(
    why: crate::upstream::NoBackend,
    last_connect_failure: Option<Failure>,
) -> Failure {
    match why {
        crate::upstream::NoBackend::None => exhausted(last_connect_failure),
        _ => Failure::Overloaded,
    }
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
        assert_eq!(exhausted(None), Failure::NoBackend);
        assert_eq!(exhausted(Some(Failure::ConnectFailed)).status(), 502);
    }
}
