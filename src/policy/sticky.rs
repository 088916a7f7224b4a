//! Sticky sessions: a cookie the proxy sets pins a client to a backend, as HAProxy's
//! `cookie SRV insert` and nginx's `sticky cookie` do. The cookie's value is the backend's
//! token ([`crate::upstream::sticky`]), opaque to the client.
//!
//! - A request whose cookie names a backend of the upstream goes to that backend while it is
//!   usable (healthy, not ejected, not drained) and has room; otherwise, or when it failed
//!   for this request, the upstream's own algorithm chooses, whichever it is.
//! - The response sets a new cookie, naming the backend that served it, when that is not the
//!   one the request's cookie named: no cookie or no valid one, its backend gone, not usable,
//!   full, or failed for this request (then the session moves, as with HAProxy's
//!   `option redispatch`).
//! - A split over sticky upstreams is sticky too: a cookie of one of its upstreams chooses
//!   that side ([`split_side`]).
//!
//! The cookie is not removed from the request the backend sees (HAProxy's `indirect` would).

use super::route::Fields;
use crate::upstream::{Pool, Slot};

/// What a request's sticky cookie said, carried from routing to the response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The backend (slot index) the cookie names.
    pub pin: Option<usize>,
}

/// The slot index whose token is `value`.
pub fn find(pool: &Pool, value: &[u8]) -> Option<usize> {
    pool.members
        .load()
        .slots
        .iter()
        .position(|s| pool.sticky_token(s).is_some_and(|t| t.as_bytes() == value))
}

/// The affinity of a request to a backend of `pool`, from its cookies.
pub fn affinity(pool: &Pool, fields: &dyn Fields) -> Affinity {
    let Some(s) = &pool.spec.sticky else {
        return Affinity::default();
    };
    Affinity {
        pin: fields.cookie(&s.cookie).and_then(|v| find(pool, v)),
    }
}

/// Whether the request has a valid cookie of `pool` (one naming one of its backends): for a
/// split, that upstream's side is the client's.
pub fn split_side(pool: &Pool, fields: &dyn Fields) -> bool {
    pool.spec
        .sticky
        .as_ref()
        .and_then(|s| fields.cookie(&s.cookie))
        .is_some_and(|v| find(pool, v).is_some())
}

/// The `Set-Cookie` value for a response from `served`, when the request's cookie named
/// another backend or none. `tls`: the client came over https, so the cookie is `Secure`.
pub fn set_cookie(pool: &Pool, a: &Affinity, served: &Slot, tls: bool) -> Option<String> {
    let s = pool.spec.sticky.as_ref()?;
    if a.pin == Some(served.index) {
        return None;
    }
    let token = pool.sticky_token(served)?;
    let mut v = format!("{}={token}; Path=/", s.cookie);
    if !s.ttl.is_zero() {
        v.push_str(&format!("; Max-Age={}", s.ttl.as_secs().max(1)));
    }
    v.push_str("; HttpOnly");
    if tls {
        v.push_str("; Secure");
    }
    Some(v)
}

/// Add a `Set-Cookie` field to an HTTP/1 response head written as bytes (ending in the
/// empty line).
pub fn push_h1(head: &mut Vec<u8>, value: &str) {
    let at = head.len().saturating_sub(2);
    let line = format!("set-cookie: {value}\r\n");
    head.splice(at..at, line.bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::route::ParsedFields;

    fn pool(sticky: &str) -> Pool {
        let y = format!("listeners: [{{name: web, address: 127.0.0.1:1, protocol: http}}]\nupstreams: [{{name: a, {sticky} backends: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2}}]}}]\n");
        Pool::new(&Config::from_yaml("t.yaml", &y).expect("valid").upstreams[0])
    }

    #[test]
    fn a_valid_cookie_pins_and_a_missing_or_bad_one_renews() {
        let p = pool("sticky: {cookie: SRV, ttl: 1h},");
        let second = p.slots()[1].clone();
        let token = p.sticky_token(&second).expect("token").to_string();
        let cookie = format!("a=1; SRV={token}");
        let h = [httparse::Header {
            name: "Cookie",
            value: cookie.as_bytes(),
        }];
        let a = affinity(&p, &ParsedFields(&h));
        assert_eq!(a, Affinity { pin: Some(1) });
        assert_eq!(set_cookie(&p, &a, &second, false), None);
        // served by another backend (the pinned one was down, full or failed): a new cookie
        let first = p.slots()[0].clone();
        let moved = set_cookie(&p, &a, &first, false).expect("cookie");
        assert!(!moved.contains(&token), "{moved}");
        let bad = [httparse::Header {
            name: "Cookie",
            value: b"SRV=127.0.0.1:2",
        }];
        let a = affinity(&p, &ParsedFields(&bad));
        assert_eq!(a, Affinity { pin: None });
        assert_eq!(
            set_cookie(&p, &a, &second, true),
            Some(format!(
                "SRV={token}; Path=/; Max-Age=3600; HttpOnly; Secure"
            ))
        );
        // a backend that is down is passed over by the choice ([`Pool::select_queued_for`])
        second
            .healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(split_side(&p, &ParsedFields(&h)));
        assert!(!split_side(&p, &ParsedFields(&bad)));
    }

    #[tokio::test]
    async fn the_pin_overrides_every_algorithm_and_yields_when_unusable() {
        for sel in [
            "round_robin",
            "random",
            "least_connections",
            "power_of_two",
            "consistent_hash",
        ] {
            let y = format!("listeners: [{{name: web, address: 127.0.0.1:1, protocol: http}}]\nupstreams: [{{name: a, selection: {sel}, sticky: {{}}, backends: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2}}, {{address: 127.0.0.1:3}}]}}]\n");
            let p = Pool::new(&Config::from_yaml("t.yaml", &y).expect("valid").upstreams[0]);
            for hash in 0..20u64 {
                let pick = p.select_queued_for(Some(2), hash, 0).await.expect("pick");
                assert_eq!(pick.slot.index, 2, "{sel}");
            }
            // tried (failed for this request), then down: the algorithm chooses elsewhere
            let pick = p
                .select_queued_for(Some(2), 0, crate::upstream::bit(2))
                .await;
            assert_ne!(pick.expect("pick").slot.index, 2, "{sel}");
            p.slots()[2]
                .healthy
                .store(false, std::sync::atomic::Ordering::Relaxed);
            for hash in 0..20u64 {
                let pick = p.select_queued_for(Some(2), hash, 0).await.expect("pick");
                assert_ne!(pick.slot.index, 2, "{sel}");
            }
        }
    }

    #[test]
    fn no_cookie_without_sticky_and_session_cookies_without_ttl() {
        let p = pool("");
        let s = p.slots()[0].clone();
        let a = Affinity { pin: None };
        assert_eq!(set_cookie(&p, &a, &s, false), None);
        let p = pool("sticky: {ttl: 0s},");
        let s = p.slots()[0].clone();
        let v = set_cookie(&p, &a, &s, false).expect("cookie");
        assert!(v.starts_with("SRV=") && !v.contains("Max-Age"), "{v}");
        let mut head = b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n".to_vec();
        push_h1(&mut head, "SRV=1");
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nx: y\r\nset-cookie: SRV=1\r\n\r\n"
        );
    }
}
