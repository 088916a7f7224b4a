//! Interim (1xx) responses from a backend: which ones reach the client.
//!
//! RFC 9110 §15.2: a proxy forwards 1xx responses, except that a server never sends one to
//! an HTTP/1.0 client, and a `100 Continue` only answers an `Expect: 100-continue` the
//! client sent (the backend's 100 to an expectation the client did not make means nothing
//! to it). A `101` is the upgrade's answer and is not decided here.
//!
//! HTTP/2 clients get none: Pingora's HTTP/2 server session (which both engines write
//! through) discards informational heads, as its stream handle is private to it. Both
//! engines therefore drop them alike; the final response follows as usual. HTTP/3 clients
//! take them (RFC 9114 4.1: interim HEADERS frames before the final one), as HTTP/1.1
//! clients do.

/// Who an interim response would go to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Client {
    pub http10: bool,
    pub h2: bool,
    /// The request carried `Expect: 100-continue` (HTTP/1.1).
    pub expects_continue: bool,
}

/// Is the backend's interim response with status `code` (100-199, not 101) forwarded?
pub fn forwarded(code: u16, c: Client) -> bool {
    if c.h2 || c.http10 {
        return false;
    }
    match code {
        100 => c.expects_continue,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_client_can_take() {
        let h11 = Client::default();
        assert!(forwarded(103, h11));
        assert!(forwarded(102, h11));
        assert!(!forwarded(100, h11));
        let expecting = Client {
            expects_continue: true,
            ..h11
        };
        assert!(forwarded(100, expecting));
        let h10 = Client {
            http10: true,
            ..h11
        };
        assert!(!forwarded(103, h10));
        let h2 = Client { h2: true, ..h11 };
        assert!(!forwarded(103, h2));
    }
}
