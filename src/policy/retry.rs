//! When a failed try is tried again, for every engine.
//!
//! A try that failed for a reason in the upstream's `retry_on` (a connect failure, a reset or
//! a timeout before the response head, or a status named there) goes to another backend
//! ([`retry`]) when all of these hold:
//! - nothing of the response went to the client yet (the engines decide on the response head,
//!   before forwarding it);
//! - the method is idempotent, or the failure is a connect failure (nothing was sent);
//! - the request body can be sent again: at most [`REPLAY_BOUND`] bytes, held by the proxy;
//! - the upstream's `retries` are not used up, and its `read_timeout` has not passed since
//!   the first try began;
//! - for a failure after sending, the upstream's retry budget ([`crate::upstream::budget`])
//!   has a token.
//!
//! Separately, a request whose reused (pooled) connection failed before any response byte is
//! sent again on a fresh connection, but only when sending it twice is safe: an idempotent
//! method whose whole body the proxy still holds. That is not a backend failure, so it costs
//! neither a retry nor a token.

use super::answer::Failure;
use crate::upstream::Pool;
use std::time::{Duration, Instant};

/// Request bodies up to this size are held so that a retry can send them again, as
/// Pingora's retry buffer does.
pub const REPLAY_BOUND: u64 = 64 * 1024;

/// Why a try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No connection to the backend: nothing was sent.
    ConnectFailure,
    /// The connection failed or closed before the response head.
    Reset,
    /// No response head within the try's time ([`try_timeout`]).
    Timeout,
    /// The backend answered this status.
    Status(u16),
}

/// A failed try, as an engine saw it.
#[derive(Clone, Copy, Debug)]
pub struct Try<'a> {
    pub method: &'a str,
    pub cause: Cause,
    /// Tries so far, this one included (1-based).
    pub attempts: u32,
    /// The whole request body can be sent again ([`body_replayable`]).
    pub body_replayable: bool,
    /// Some byte of the response already went to the client. A forwarded interim (1xx)
    /// response is not the response: after a 103 from one backend, the final answer may
    /// still come from another (which may send its own 103 first; RFC 8297 allows several).
    /// Whether a 1xx is forwarded depends on the client's protocol (`policy::interim`), so
    /// counting it would make retries protocol-dependent.
    pub response_started: bool,
    /// When the first try began. Read only when the other conditions would retry: a
    /// request answered as usual costs no clock reading here.
    pub started: Instant,
}

/// Whether `cause` is one the upstream retries at all (before the other conditions).
pub fn wanted(pool: &Pool, cause: Cause) -> bool {
    let on = &pool.spec.retry_on;
    match cause {
        Cause::ConnectFailure => on.connect_failure,
        Cause::Reset => on.reset,
        Cause::Timeout => on.timeout,
        Cause::Status(c) => on.status(c),
    }
}

/// Whether the failed try `t` is tried again on another backend. A `true` has taken a token
/// from the budget and counted the retry, so an engine asks once per failed try.
pub fn retry(pool: &Pool, t: Try<'_>) -> bool {
    if t.response_started || !wanted(pool, t.cause) {
        return false;
    }
    let sent = t.cause != Cause::ConnectFailure;
    if sent && (!idempotent(t.method) || !t.body_replayable) {
        return false;
    }
    if t.attempts > pool.retries || t.started.elapsed() >= pool.read_timeout {
        return false;
    }
    // A connect failure did no work on any backend: its retry adds no load to the pool, and
    // is bounded by `retries` alone (else one dead backend without health checks would
    // fail every request the budget cannot cover).
    if sent && !pool.budget.withdraw() {
        log::warn!(
            "upstream {}: retry budget exhausted, not retrying ({:?})",
            pool.name,
            t.cause
        );
        return false;
    }
    match t.cause {
        Cause::ConnectFailure => pool.budget.count(Some(0), 0),
        Cause::Reset => pool.budget.count(Some(1), 0),
        Cause::Timeout => pool.budget.count(Some(2), 0),
        Cause::Status(c) => pool.budget.count(None, c),
    }
    true
}

/// The backends to skip when none is left that has not failed this request (`tried`):
/// then a retry may go to one that answered badly, never to one that refused the
/// connection (`refused`). `None`: nothing changes.
pub fn skip_fewer(tried: u64, refused: u64) -> Option<u64> {
    (tried != refused).then_some(refused)
}

/// A request to `pool` begins: it pays into the retry budget.
pub fn begin(pool: &Pool) {
    pool.budget.deposit();
}

/// Whether a request body can be sent again: its length, when known, is within
/// [`REPLAY_BOUND`], and the engine's copy was not cut short (`truncated`).
pub fn body_replayable(content_length: Option<u64>, truncated: bool) -> bool {
    !truncated && content_length.is_none_or(|n| n <= REPLAY_BOUND)
}

/// Whether an engine that streams the request body should hold it instead, so that a retry
/// after sending can replay it: only when such a retry could happen at all.
pub fn hold_body(pool: &Pool, method: &str, content_length: u64) -> bool {
    may_resend(pool, idempotent(method)) && content_length <= REPLAY_BOUND
}

/// Whether a request to `pool` could be sent again after it was sent (a retry on the
/// backend's answer or its silence): only an idempotent one, where such retries are on.
pub fn may_resend(pool: &Pool, idempotent: bool) -> bool {
    pool.retries > 0 && pool.spec.retry_on.after_sending() && idempotent
}

/// How long one read from the backend may wait in the try that begins `elapsed` after the
/// first: `per_try_timeout`, within what is left of `read_timeout` for all tries together.
pub fn try_timeout(pool: &Pool, elapsed: Duration) -> Duration {
    let left = pool
        .read_timeout
        .saturating_sub(elapsed)
        .max(Duration::from_millis(1));
    pool.spec.per_try_timeout.map_or(left, |t| t.min(left))
}

pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
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
        assert_eq!(exhausted(None), Failure::NoBackend);
        assert_eq!(exhausted(Some(Failure::ConnectFailed)).status(), 502);
    }

    fn pool(extra: &str) -> Pool {
        let y = format!(
            "listeners: [{{name: web, address: 127.0.0.1:1, protocol: http}}]\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}], {extra}}}]\n"
        );
        let c = crate::config::Config::from_yaml("t.yaml", &y).expect("valid");
        Pool::new(&c.upstreams[0])
    }

    fn failed(method: &str, cause: Cause) -> Try<'_> {
        Try {
            method,
            cause,
            attempts: 1,
            body_replayable: true,
            response_started: false,
            started: Instant::now(),
        }
    }

    #[test]
    fn what_is_retried() {
        let p = pool("retries: 2, retry_on: [connect_failure, timeout, \"503\", 429]");
        assert!(retry(&p, failed("GET", Cause::Status(503))));
        assert!(retry(&p, failed("GET", Cause::Status(429))));
        assert!(!retry(&p, failed("GET", Cause::Status(502))));
        assert!(!retry(&p, failed("GET", Cause::Reset)));
        assert!(retry(&p, failed("GET", Cause::Timeout)));
        // a POST only when nothing was sent
        assert!(!retry(&p, failed("POST", Cause::Status(503))));
        assert!(retry(&p, failed("POST", Cause::ConnectFailure)));
        let started = Try {
            response_started: true,
            ..failed("GET", Cause::Status(503))
        };
        assert!(!retry(&p, started));
        let big = Try {
            body_replayable: false,
            ..failed("PUT", Cause::Status(503))
        };
        assert!(!retry(&p, big));
        let third = Try {
            attempts: 3,
            ..failed("GET", Cause::Status(503))
        };
        assert!(!retry(&p, third));
        // the same try is retried within the read timeout, and not once it has passed
        let quick = pool("retries: 2, retry_on: [\"503\"], read_timeout: 200ms");
        assert!(retry(&quick, failed("GET", Cause::Status(503))));
        let late = failed("GET", Cause::Status(503));
        std::thread::sleep(Duration::from_millis(210));
        assert!(!retry(&quick, late), "past the read timeout");
        let counts = p.budget.counts();
        assert!(counts.contains(&("503".to_string(), 1)), "{counts:?}");
        assert!(counts.contains(&("connect_failure".to_string(), 1)));
    }

    #[test]
    fn a_spent_budget_stops_retries_after_sending_only() {
        let p = pool("retries: 1, retry_on: [connect_failure, \"503\"], retry_budget_percent: 0");
        while p.budget.withdraw() {}
        assert!(!retry(&p, failed("GET", Cause::Status(503))));
        assert!(retry(&p, failed("GET", Cause::ConnectFailure)));
    }

    #[test]
    fn by_default_only_connect_failures() {
        let p = pool("retries: 1");
        assert!(retry(&p, failed("GET", Cause::ConnectFailure)));
        assert!(!retry(&p, failed("GET", Cause::Status(503))));
        assert!(!retry(&p, failed("GET", Cause::Timeout)));
        assert!(!hold_body(&p, "GET", 10));
        let p = pool("retries: 1, retry_on: [\"5xx\"]");
        assert!(retry(&p, failed("GET", Cause::Status(500))));
        assert!(!retry(&p, failed("GET", Cause::ConnectFailure)));
        assert!(hold_body(&p, "PUT", REPLAY_BOUND) && !hold_body(&p, "PUT", REPLAY_BOUND + 1));
        assert!(!hold_body(&p, "POST", 10));
    }

    #[test]
    fn bodies_and_timeouts() {
        assert!(body_replayable(None, false) && body_replayable(Some(REPLAY_BOUND), false));
        assert!(!body_replayable(Some(REPLAY_BOUND + 1), false));
        assert!(!body_replayable(None, true));
        let p = pool("read_timeout: 10s, per_try_timeout: 2s");
        assert_eq!(try_timeout(&p, Duration::ZERO), Duration::from_secs(2));
        assert_eq!(
            try_timeout(&p, Duration::from_secs(9)),
            Duration::from_secs(1)
        );
        let p = pool("read_timeout: 10s");
        assert_eq!(
            try_timeout(&p, Duration::from_secs(4)),
            Duration::from_secs(6)
        );
    }
}
