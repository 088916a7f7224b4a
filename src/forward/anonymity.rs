//! What the origin learns about the client.
//!
//! - `off`: the client's headers pass unchanged and the proxy announces itself the way
//!   Squid does by default (`Via` and `X-Forwarded-For`).
//! - `standard`: every header that can carry the client's address or the proxy chain is
//!   removed and none is added.
//! - `strict`: as standard, and `From` and `Referer` go too while `User-Agent` is replaced
//!   by a fixed string, so the origin cannot tell clients apart by them.
//!
//! The fields a proxy adds are the one request edit's ([`crate::policy::edit::Announce`],
//! chosen by [`announce`]); this module removes what the client sent. `Proxy-Authorization`
//! and other `Proxy-*` headers are for this proxy and never forwarded in any mode.

use crate::config::forward::Anonymity;
use crate::policy::edit::Announce;
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The User-Agent every request carries under `strict`.
pub const STRICT_USER_AGENT: &str = "Mozilla/5.0";

/// Headers that name the client or the proxies in between.
const CLIENT_HEADERS: &[&str] = &[
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-addr",
    "x-remote-ip",
];

/// What the request edit adds for `mode`: under `off`, Via and the X-Forwarded-For chain
/// extended by `client`; otherwise nothing.
pub fn announce(mode: Anonymity, client: Option<IpAddr>) -> Announce<'static> {
    match mode {
        Anonymity::Off => Announce::Via { client },
        Anonymity::Standard | Anonymity::Strict => Announce::Nothing,
    }
}

/// The client's own fields that `mode` removes, after the request edit.
pub fn apply(req: &mut RequestHeader, mode: Anonymity) {
    let proxy_headers: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for h in proxy_headers {
        req.remove_header(&h);
    }
    if mode == Anonymity::Off {
        return;
    }
    for h in CLIENT_HEADERS {
        req.remove_header(*h);
    }
    if mode == Anonymity::Strict {
        req.remove_header("from");
        req.remove_header("referer");
        let _ = req.insert_header("user-agent", STRICT_USER_AGENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            ("x-forwarded-for", "10.0.0.7"),
            ("forwarded", "for=10.0.0.7"),
            ("via", "1.1 other"),
            ("proxy-authorization", "Basic eDp5"),
            ("referer", "http://a/"),
            ("from", "me@example.com"),
            ("user-agent", "curl/8"),
            ("accept", "*/*"),
        ] {
            r.insert_header(k, v).unwrap();
        }
        r
    }

    /// The forward proxy's whole edit: the policy's, then this module's.
    fn edit(r: &mut RequestHeader, mode: Anonymity, client: Option<IpAddr>) {
        crate::policy::edit::request(r, None, announce(mode, client), false, false, None)
            .expect("edit");
        apply(r, mode);
    }

    #[test]
    fn standard_removes_client_headers_and_adds_none() {
        let mut r = req();
        edit(
            &mut r,
            Anonymity::Standard,
            Some("10.0.0.7".parse().unwrap()),
        );
        for h in ["x-forwarded-for", "forwarded", "via", "proxy-authorization"] {
            assert!(r.headers.get(h).is_none(), "{h}");
        }
        assert_eq!(r.headers.get("user-agent").unwrap(), "curl/8");
        assert_eq!(r.headers.get("referer").unwrap(), "http://a/");
    }

    #[test]
    fn strict_rewrites_user_agent() {
        let mut r = req();
        edit(&mut r, Anonymity::Strict, None);
        assert!(r.headers.get("referer").is_none());
        assert!(r.headers.get("from").is_none());
        assert_eq!(r.headers.get("user-agent").unwrap(), STRICT_USER_AGENT);
        assert_eq!(r.headers.get("accept").unwrap(), "*/*");
    }

    #[test]
    fn off_announces_the_proxy() {
        let mut r = req();
        edit(&mut r, Anonymity::Off, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(
            r.headers
                .get(&crate::policy::fields::X_FORWARDED_FOR)
                .unwrap(),
            "10.0.0.7, 10.0.0.9"
        );
        let via: Vec<_> = r.headers.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 other", crate::policy::edit::VIA]);
        assert!(r.headers.get("proxy-authorization").is_none());
    }

    #[test]
    fn off_keeps_every_incoming_hop() {
        let mut r = req();
        r.append_header("x-forwarded-for", "10.0.0.8").unwrap();
        edit(&mut r, Anonymity::Off, Some("10.0.0.9".parse().unwrap()));
        let xff = r
            .headers
            .get_all(&crate::policy::fields::X_FORWARDED_FOR)
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(xff, ["10.0.0.7, 10.0.0.8, 10.0.0.9"]);
    }
}
