//! The X-Forwarded-* fields the proxy writes on every request it forwards, and the host a
//! request is for.
//!
//! - `X-Forwarded-For`: the incoming chain (every such field, in order, joined into one
//!   list, if shorter than [`XFF_CHAIN_MAX`]), then the client's address.
//! - `X-Forwarded-Proto`: `https` on a TLS listener, else `http`; an incoming one is replaced.
//! - `X-Forwarded-Host`: the host the client asked for ([`request_host`]); replaced too.

use std::net::IpAddr;

/// An incoming X-Forwarded-For chain longer than this is dropped rather than extended: a
/// client can make it anything, and the backend's header limits are not ours to exceed.
pub const XFF_CHAIN_MAX: usize = 400;

/// The host a request is for, as received (port included): the URI's authority (HTTP/2's
/// `:authority`, an absolute-form target) wins over `Host`, as RFC 9110 §7.2 and RFC 9113
/// §8.3.1 ask; then `Host`. The access log, routing and X-Forwarded-Host all use this.
pub fn request_host<'a>(
    authority: Option<&'a str>,
    host_field: Option<&'a str>,
) -> Option<&'a str> {
    authority.filter(|a| !a.is_empty()).or(host_field)
}

pub use crate::config::strip_port;

pub fn proto(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Append the X-Forwarded-For value: `prev, client` or `client`. `prev`: the incoming
/// X-Forwarded-For fields in order. A list field may be split over several lines (RFC 9110
/// §5.3), and a chain cut to its first line loses the hops before the last proxy that wrote
/// one, so all of them are joined, as nginx's `$proxy_add_x_forwarded_for` does; empty ones
/// add nothing. A joined chain of [`XFF_CHAIN_MAX`] bytes or more is dropped whole.
pub fn x_forwarded_for<'a>(
    prev: impl IntoIterator<Item = &'a [u8]>,
    client: IpAddr,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    for p in prev.into_iter().map(<[u8]>::trim_ascii) {
        if p.is_empty() {
            continue;
        }
        // a chain over the bound is dropped as soon as it is (the rest is not copied)
        if out.len() - start + p.len() >= XFF_CHAIN_MAX {
            out.truncate(start);
            break;
        }
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    push_ip(out, client);
}

/// Append the three X-Forwarded-* fields as HTTP/1 header lines.
pub fn h1_lines<'a>(
    out: &mut Vec<u8>,
    prev_xff: impl IntoIterator<Item = &'a [u8]>,
    client: Option<IpAddr>,
    tls: bool,
    host: Option<&[u8]>,
) {
    if let Some(ip) = client {
        out.extend_from_slice(b"x-forwarded-for: ");
        x_forwarded_for(prev_xff, ip, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: ");
    out.extend_from_slice(proto(tls).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
}

/// A decimal number, without the formatting machinery (this runs per message).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// An address as text, IPv4 without the formatting machinery (this runs per request).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // on the stack first: one capacity check for the address, not one per byte
            let mut b = [0u8; 15];
            let mut n = 0;
            for (i, &o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    b[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    b[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    b[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                b[n] = b'0' + o % 10;
                n += 1;
            }
            out.extend_from_slice(&b[..n]);
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.20.255.1",
            "127.0.0.1",
            "199.9.100.99",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("utf-8"), ip.to_string());
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn chain_is_extended_or_dropped() {
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut out = Vec::new();
        x_forwarded_for([&b"1.1.1.1"[..]], ip, &mut out);
        assert_eq!(out, b"1.1.1.1, 10.0.0.9");
        out.clear();
        x_forwarded_for([&[b'a'; XFF_CHAIN_MAX][..]], ip, &mut out);
        assert_eq!(out, b"10.0.0.9");
        out.clear();
        x_forwarded_for([], ip, &mut out);
        assert_eq!(out, b"10.0.0.9");
    }

    #[test]
    fn every_incoming_field_joins_the_chain() {
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut out = b"x-forwarded-for: ".to_vec();
        let fields: [&[u8]; 4] = [b"1.1.1.1, 2.2.2.2", b"", b" ", b"3.3.3.3 "];
        x_forwarded_for(fields, ip, &mut out);
        assert_eq!(out, b"x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        // the bound is on the joined chain: each field short, together too long
        out.clear();
        let part = [b'a'; XFF_CHAIN_MAX / 2];
        x_forwarded_for([&part[..], &part[..], b"4.4.4.4"], ip, &mut out);
        assert_eq!(out, b"10.0.0.9");
        // one byte under the bound is kept, as a single field of that length is
        out.clear();
        let (a, b) = ([b'a'; 100], [b'b'; XFF_CHAIN_MAX - 103]);
        x_forwarded_for([&a[..], &b[..]], ip, &mut out);
        assert_eq!(out.len(), XFF_CHAIN_MAX - 1 + 2 + 8);
    }

    #[test]
    fn host_prefers_the_authority() {
        assert_eq!(request_host(Some("a:1"), Some("b")), Some("a:1"));
        assert_eq!(request_host(None, Some("b")), Some("b"));
        assert_eq!(request_host(Some(""), None), None);
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("a.example.com:"), "a.example.com");
        assert_eq!(strip_port("a:b:80"), "a:b");
        assert_eq!(strip_port("host123"), "host123");
        assert_eq!(strip_port("example.com:8o"), "example.com:8o");
        assert_eq!(strip_port(":80"), "");
        assert_eq!(strip_port(""), "");
    }
}
