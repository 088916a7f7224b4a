//! Access rules (first match wins, default deny) and the private-destination guard.
//!
//! Rules are evaluated twice, as Squid's `dstdomain` and `dst` are: first with the name
//! alone, before any DNS lookup, and again after resolution. The first pass decides when
//! every rule up to the deciding one can be judged without addresses; a rule that needs them
//! (a network destination not settled by a name in the same rule) makes the pass answer
//! "unknown", and the name is resolved. So a denied name is answered 403 without a lookup
//! whatever DNS says, while a rule on a network and the private guard still see the
//! addresses the proxy will really connect to: a public-looking name that resolves to
//! 127.0.0.1 is caught.

use crate::config::cidr::{canonical, Cidr};
use crate::config::forward::{AccessRule, Destination};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Networks a forward proxy must not reach on a client's behalf unless the operator says
/// so: they are the proxy's own host, its private network or cloud metadata endpoints.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata address
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240 // reserved
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4() {
        // ::a.b.c.d (deprecated compatible form) carries an IPv4 destination too
        if s[0..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
            return is_private_v4(v4);
        }
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site local (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b) // 64:ff9b::/96 NAT64 can reach private IPv4
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

/// What the request is for, as the rules see it.
pub struct Subject<'a> {
    pub client: Option<IpAddr>,
    /// Lower-case host name or IP literal, without brackets or port.
    pub host: &'a str,
    /// `None` before resolution (a name); an IP literal's address is known from the start.
    pub addrs: Option<&'a [SocketAddr]>,
    pub port: u16,
    pub method: &'a str,
}

/// `Some(Ok(label))` of the allowing rule, `Some(Err(label))` of the denying one (or the
/// default), `None` when a rule before the deciding one needs the addresses and
/// `s.addrs` is `None`. With addresses it always decides.
pub fn decide<'r>(rules: &'r [AccessRule], s: &Subject) -> Option<Result<&'r str, &'r str>> {
    for r in rules {
        if matches(r, s)? {
            return Some(if r.allow {
                Ok(r.label.as_str())
            } else {
                Err(r.label.as_str())
            });
        }
    }
    Some(Err("the default rule (deny)"))
}

/// Whether the rule matches; `None` when that depends on addresses not known yet.
fn matches(r: &AccessRule, s: &Subject) -> Option<bool> {
    let client_ok = r.clients.is_empty()
        || s.client
            .is_some_and(|c| r.clients.iter().any(|n: &Cidr| n.contains(c)));
    let port_ok = r.ports.is_empty() || r.ports.contains(&s.port);
    let method_ok = r.methods.is_empty() || r.methods.iter().any(|m| m == s.method);
    if !(client_ok && port_ok && method_ok) {
        return Some(false);
    }
    if r.destinations.is_empty() {
        return Some(true);
    }
    let mut unknown = false;
    for d in &r.destinations {
        match d {
            Destination::Name(h) if h.matches(s.host) => return Some(true),
            Destination::Name(_) => {}
            // Every address must be inside the network; otherwise a name with one address
            // inside and one outside would open the outside one.
            Destination::Net(n) => match s.addrs {
                Some(a) if !a.is_empty() && a.iter().all(|a| n.contains(a.ip())) => {
                    return Some(true)
                }
                Some(_) => {}
                None => unknown = true,
            },
        }
    }
    if unknown {
        None
    } else {
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostMatch;

    #[test]
    fn private_ranges() {
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn first_match_wins_default_deny() {
        let rules = vec![
            AccessRule {
                label: "no-ads".into(),
                allow: false,
                clients: vec![],
                destinations: vec![Destination::Name(
                    HostMatch::parse("*.ads.example").unwrap(),
                )],
                ports: vec![],
                methods: vec![],
            },
            AccessRule {
                label: "lan".into(),
                allow: true,
                clients: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                destinations: vec![],
                ports: vec![],
                methods: vec!["GET".into()],
            },
        ];
        let addrs = ["93.184.216.34:80".parse().unwrap()];
        for known in [Some(&addrs[..]), None] {
            let s = |client: &str, host: &'static str, method: &'static str| Subject {
                client: Some(client.parse().unwrap()),
                host,
                addrs: known,
                port: 80,
                method,
            };
            // no network rule: the name alone decides, before and after resolution
            assert_eq!(
                decide(&rules, &s("10.1.1.1", "x.ads.example", "GET")),
                Some(Err("no-ads"))
            );
            assert_eq!(
                decide(&rules, &s("10.1.1.1", "example.org", "GET")),
                Some(Ok("lan"))
            );
            assert_eq!(
                decide(&rules, &s("10.1.1.1", "example.org", "POST")),
                Some(Err("the default rule (deny)"))
            );
            assert!(
                decide(&rules, &s("11.1.1.1", "example.org", "GET")).is_some_and(|d| d.is_err())
            );
        }
    }

    #[test]
    fn a_network_rule_defers_only_what_comes_after_it() {
        let rule = |label: &str, allow: bool, dest: &str| AccessRule {
            label: label.into(),
            allow,
            clients: vec![],
            destinations: vec![match Cidr::parse(dest) {
                Ok(n) => Destination::Net(n),
                Err(_) => Destination::Name(HostMatch::parse(dest).unwrap()),
            }],
            ports: vec![],
            methods: vec![],
        };
        let rules = vec![
            rule("no-bad", false, "bad.invalid"),
            rule("no-lan", false, "10.0.0.0/8"),
            rule("ok", true, "*.example"),
        ];
        let inside = ["10.1.1.1:80".parse().unwrap()];
        let outside = ["93.184.216.34:80".parse().unwrap()];
        let s = |host: &'static str, addrs: Option<&'static [SocketAddr]>| Subject {
            client: None,
            host,
            addrs,
            port: 80,
            method: "GET",
        };
        // a name rule before the network rule decides without addresses
        assert_eq!(decide(&rules, &s("bad.invalid", None)), Some(Err("no-bad")));
        // after it, the addresses are needed
        assert_eq!(decide(&rules, &s("www.example", None)), None);
        let inside: &'static [SocketAddr] = Box::leak(Box::new(inside));
        let outside: &'static [SocketAddr] = Box::leak(Box::new(outside));
        assert_eq!(
            decide(&rules, &s("www.example", Some(inside))),
            Some(Err("no-lan"))
        );
        assert_eq!(
            decide(&rules, &s("www.example", Some(outside))),
            Some(Ok("ok"))
        );
        // a rule with a matching name and a network is decided by the name
        let mixed = vec![AccessRule {
            destinations: vec![
                Destination::Net(Cidr::parse("10.0.0.0/8").unwrap()),
                Destination::Name(HostMatch::parse("bad.invalid").unwrap()),
            ],
            ..rule("mixed", false, "x.example")
        }];
        assert_eq!(decide(&mixed, &s("bad.invalid", None)), Some(Err("mixed")));
        assert_eq!(decide(&mixed, &s("other.example", None)), None);
    }
}
