//! Host patterns (routes, SNI routes, forward-proxy destinations), CIDR networks (trusted
//! proxies, purge_from, forward-proxy clients and destinations), the private-address guard
//! and the forward proxy's first-match access rules.
//!
//! The properties are the ones the features rely on: a parsed pattern matches what it names
//! and, case aside, nothing else; a network contains its own addresses and prints back to
//! itself; an IPv4 address is judged the same in its IPv4-mapped IPv6 form (a dual-stack
//! socket reports clients that way); the access decision is the first matching rule's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use stepstone::config::cidr::{canonical, Cidr};
use stepstone::config::forward::{AccessRule, Destination};
use stepstone::config::{valid_hostname, HostMatch};
use stepstone::forward::acl::{decide, is_private, Subject};

fn host_match(pattern: &str, host: &str) {
    let Ok(m) = HostMatch::parse(pattern) else {
        return;
    };
    let lower = host.to_ascii_lowercase();
    match &m {
        HostMatch::Any => assert!(m.matches(host)),
        HostMatch::Exact(h) => {
            assert!(valid_hostname(h) && *h == h.to_ascii_lowercase(), "{h:?}");
            assert!(m.matches(h) && m.matches(&h.to_ascii_uppercase()));
            assert_eq!(m.matches(host), *h == lower, "{m:?} vs {host:?}");
            assert!(m.specificity() > HostMatch::Suffix(h.clone()).specificity());
        }
        HostMatch::Suffix(s) => {
            let bare = s.strip_prefix('.').expect("suffix starts with a dot");
            assert!(
                valid_hostname(bare) && *s == s.to_ascii_lowercase(),
                "{s:?}"
            );
            assert!(m.matches(&format!("a{s}")));
            // `*.example.com` is for subdomains; the bare domain is a separate pattern.
            assert!(!m.matches(bare) && !m.matches(s));
            let want = lower.len() > s.len() && lower.ends_with(s.as_str());
            assert_eq!(m.matches(host), want, "{m:?} vs {host:?}");
            assert!(m.specificity() > HostMatch::Any.specificity());
        }
    }
}

fn ip_of(b: &[u8; 17]) -> IpAddr {
    if b[0] & 1 == 0 {
        Ipv4Addr::new(b[1], b[2], b[3], b[4]).into()
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[1..]);
        Ipv6Addr::from(a).into()
    }
}

fn mapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().into()),
        IpAddr::V6(_) => None,
    }
}

fn cidr(text: &str, ip: IpAddr) {
    // An address written alone is a network of one address that contains it.
    let host = Cidr::parse(&ip.to_string()).expect("an address is a network");
    assert!(host.contains(ip), "{host} does not contain {ip}");
    if let Some(m) = mapped(ip) {
        assert!(host.contains(m), "{host} does not contain {m}");
        let mh = Cidr::parse(&m.to_string()).expect("an address is a network");
        assert!(
            mh.contains(ip) && mh.contains(m),
            "{mh} does not contain {ip}"
        );
    }
    assert_eq!(
        is_private(ip),
        mapped(ip).map_or(is_private(ip), is_private),
        "{ip}"
    );

    let Ok(n) = Cidr::parse(text) else {
        return;
    };
    let max = if n.network().is_ipv4() { 32 } else { 128 };
    assert!(n.prefix() <= max);
    assert_eq!(
        Cidr::parse(&n.to_string()),
        Ok(n),
        "{text:?} printed as {n}"
    );
    assert!(
        n.contains(n.network()),
        "{n} does not contain its own network address"
    );
    if n.prefix() == 0 {
        assert_eq!(
            n.contains(ip),
            n.network().is_ipv4() == canonical(ip).is_ipv4(),
            "{n}: {ip}"
        );
    }
    if let Some(m) = mapped(ip) {
        assert_eq!(n.contains(ip), n.contains(m), "{n}: {ip} vs {m}");
    }
}

/// The same destination parsing as the forward proxy's config validation.
fn destination(d: &str) -> Option<Destination> {
    match Cidr::parse(d) {
        Ok(n) => Some(Destination::Net(n)),
        Err(_) if d.contains('/') || d.contains(':') => None,
        Err(_) => HostMatch::parse(d).ok().map(Destination::Name),
    }
}

fuzz_target!(|input: (&str, &str, &str, [u8; 17], [u8; 17], u16, u8)| {
    let (pattern, host, net, a, b, port, sel) = input;
    host_match(pattern, host);
    let (ipa, ipb) = (ip_of(&a), ip_of(&b));
    cidr(net, ipa);

    // Up to two rules built from the inputs.
    let mut rules = Vec::new();
    for (i, spec) in [pattern, net].into_iter().enumerate() {
        let Some(dest) = destination(spec) else {
            continue;
        };
        rules.push(AccessRule {
            label: format!("r{i}"),
            allow: sel & (1 << i) != 0,
            clients: Cidr::parse(net)
                .into_iter()
                .filter(|_| sel & 4 != 0)
                .collect(),
            destinations: vec![dest],
            ports: if sel & 8 != 0 { vec![port] } else { vec![] },
            methods: if sel & 16 != 0 {
                vec!["GET".into()]
            } else {
                vec![]
            },
        });
    }
    let addrs = [SocketAddr::new(ipb, port)];
    let method = if sel & 32 != 0 { "GET" } else { "POST" };
    let subject = Subject {
        client: Some(ipa),
        host: &host.to_ascii_lowercase(),
        addrs: Some(&addrs),
        port,
        method,
    };
    let got = decide(&rules, &subject).expect("with addresses the rules always decide");
    // Deciding on the name first (before any lookup) never contradicts the decision with
    // the addresses: it decides the same, or waits for them.
    let by_name = Subject {
        addrs: None,
        ..subject
    };
    if let Some(early) = decide(&rules, &by_name) {
        assert_eq!(early, got, "the name alone decided otherwise");
    }
    if rules.is_empty() {
        assert!(got.is_err(), "nothing allows by default");
    }
    let (Ok(label) | Err(label)) = got;
    if let Some(r) = rules.iter().find(|r| r.label == label) {
        assert_eq!(got.is_ok(), r.allow);
        // First match wins: an earlier rule that also matches would have decided.
        let idx = rules.iter().position(|x| x.label == label).unwrap_or(0);
        for earlier in &rules[..idx] {
            let alone = decide(std::slice::from_ref(earlier), &subject)
                .expect("with addresses the rules always decide");
            assert!(
                alone.is_err_and(|l| l != earlier.label),
                "{} matched first",
                earlier.label
            );
        }
    }
    let mut all = rules.clone();
    all.push(AccessRule {
        label: "all".into(),
        allow: true,
        clients: vec![],
        destinations: vec![],
        ports: vec![],
        methods: vec![],
    });
    assert!(decide(&all, &subject).is_some_and(|d| d.is_ok()) || rules.iter().any(|r| !r.allow));
});
