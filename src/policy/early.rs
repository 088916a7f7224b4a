//! 0-RTT (TLS early data) over HTTP/3, with `quic.early_data: true`: what a request that
//! arrived before the client's handshake ended may do (RFC 8470).
//!
//! Early data can be captured and replayed by an attacker, who cannot finish the handshake.
//! So a request read while the handshake is still in progress goes on at once only when its
//! method is idempotent (RFC 9110 9.2.2: repeating it changes nothing more), and it carries
//! `Early-Data: 1` so the origin may still answer 425 Too Early. Any other request waits for
//! the handshake to end, which a replay never reaches; it then goes on unmarked, no longer
//! early. Nginx's `ssl_early_data` forwards every method and leaves the choice to the
//! origin; waiting costs a client one round trip and costs a replay everything.

/// The field an early request carries to the origin (RFC 8470 5.1).
pub const EARLY_DATA_FIELD: &str = "early-data";

/// What to do with a request read before the handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// Forward now, marked `Early-Data: 1`.
    Forward,
    /// Wait until the handshake has ended, then forward unmarked; if it fails, drop it.
    AwaitHandshake,
}

/// The step for `method` in early data.
pub fn step(method: &str) -> Early {
    if matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    ) {
        Early::Forward
    } else {
        Early::AwaitHandshake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_go_in_early_data() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert_eq!(step(m), Early::Forward, "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE", "get"] {
            assert_eq!(step(m), Early::AwaitHandshake, "{m}");
        }
    }
}
