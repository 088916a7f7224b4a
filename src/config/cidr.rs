//! IPv4/IPv6 networks in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address meaning
//! that one host), shared by every feature that restricts clients by address: the cache's
//! `purge_from`, the forward proxy's allow lists.
//!
//! The network is stored already masked, so `contains` is one mask and one compare. An
//! IPv4-mapped IPv6 client (`::ffff:10.1.2.3`, which a dual-stack socket reports) is matched
//! against IPv4 networks as the IPv4 address it carries.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Same as `str::parse`, for call sites that read better with a constructor.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        s.parse()
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> IpAddr {
        self.net
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// True when any network in `list` contains `ip`.
    pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
        list.iter().any(|c| c.contains(ip))
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| "expected an IP address or network such as 10.0.0.0/8".to_string())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length must be between 0 and {max}")),
            },
        };
        // `contains` sees IPv4-mapped clients as IPv4, so a network inside ::ffff:0:0/96 is
        // kept as the IPv4 network it is; as IPv6 it would never match anyone.
        let (ip, prefix) = match ip {
            IpAddr::V6(a) if prefix >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (ip, prefix),
            },
            _ => (ip, prefix),
        };
        let net = match ip {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// True when any network of `list` contains `ip`.
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    Cidr::any_contains(list, ip)
}

/// IPv4-mapped IPv6 addresses as IPv4, everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_networks() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped v6 matches");
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("2001:db8::1")));
        // host bits are masked off
        assert_eq!(
            "192.168.1.77/24".parse::<Cidr>().unwrap().to_string(),
            "192.168.1.0/24"
        );
    }

    #[test]
    fn v6_networks() {
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let lo: Cidr = "::1/128".parse().unwrap();
        assert!(lo.contains(ip("::1")));
    }

    /// Found by the `acl` fuzz target: `::ffff:10.0.0.1` (how a dual-stack socket shows an
    /// IPv4 client) as a network matched nothing, not even itself.
    #[test]
    fn v4_mapped_networks() {
        let host: Cidr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(host.contains(ip("10.0.0.1")));
        assert!(host.contains(ip("::ffff:10.0.0.1")));
        assert!(!host.contains(ip("10.0.0.2")));
        assert_eq!(host.to_string(), "10.0.0.1/32");
        let net: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(net, "10.0.0.0/8".parse().unwrap());
        assert!(net.contains(ip("::ffff:10.9.8.7")));
        // wider than the mapped block: stays IPv6, as ::/0 does for IPv4 clients
        let wide: Cidr = "::ffff:0:0/95".parse().unwrap();
        assert!(wide.network().is_ipv6());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "abc",
            "10.0.0.0/-1",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }
}
