//! The router's lookup structure, so a request costs the same with one route or 10,000.
//!
//! Routes are bucketed by their host pattern: exact names in a hash map, `*.suffix` patterns
//! in a second map probed once per label of the request's host (longest suffix first), and
//! host-less routes last. That is the order the router's precedence gives (an exact host is
//! more specific than any wildcard, a longer suffix than a shorter one), and two patterns of
//! the same kind and length cannot both match one host, so the first bucket with a match
//! decides exactly as a scan of the sorted list would. Within a bucket, routes keep their
//! sorted order (longest prefix first); a large bucket also gets a map from prefix to routes,
//! probed once per distinct prefix length, so many paths on one host stay cheap too.

use crate::config::HostMatch;
use ahash::AHashMap;

/// A bucket at or below this size is scanned: a few string compares beat hashing the path.
const SCAN_MAX: usize = 8;

/// Positions (in the router's sorted list) of the routes that share a host pattern.
#[derive(Default)]
struct Bucket {
    positions: Vec<u32>,
    by_prefix: Option<PrefixIndex>,
}

struct PrefixIndex {
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
    routes: AHashMap<Box<[u8]>, Vec<u32>>,
}

impl Bucket {
    fn seal<'r>(&mut self, prefix_of: &impl Fn(u32) -> &'r str) {
        if self.positions.len() <= SCAN_MAX {
            return;
        }
        let mut routes: AHashMap<Box<[u8]>, Vec<u32>> = AHashMap::new();
        let mut lengths = Vec::new();
        for &p in &self.positions {
            let prefix = prefix_of(p);
            lengths.push(prefix.len());
            routes.entry(prefix.as_bytes().into()).or_default().push(p);
        }
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        self.by_prefix = Some(PrefixIndex { lengths, routes });
    }

    /// The first route (in sorted order) whose prefix starts `path` and for which `accept`
    /// holds (its `match` conditions).
    #[inline]
    fn find<'r>(
        &self,
        path: &[u8],
        prefix_of: &impl Fn(u32) -> &'r str,
        accept: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        match &self.by_prefix {
            None => self
                .positions
                .iter()
                .copied()
                .find(|&p| path.starts_with(prefix_of(p).as_bytes()) && accept(p)),
            Some(ix) => ix
                .lengths
                .iter()
                .filter(|&&n| n <= path.len())
                .find_map(|&n| {
                    let candidates = ix.routes.get(&path[..n])?;
                    candidates.iter().copied().find(|&p| accept(p))
                }),
        }
    }
}

#[derive(Default)]
pub struct Index {
    exact: AHashMap<Box<str>, Bucket>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    suffix: AHashMap<Box<str>, Bucket>,
    any: Bucket,
}

impl Index {
    /// `hosts` in the router's sorted order; `prefix_of(position)` gives a route's prefix.
    pub fn build<'a, 'r>(
        hosts: impl Iterator<Item = &'a HostMatch>,
        prefix_of: &impl Fn(u32) -> &'r str,
    ) -> Index {
        let mut ix = Index::default();
        for (pos, host) in hosts.enumerate() {
            let bucket = match host {
                HostMatch::Any => &mut ix.any,
                HostMatch::Exact(h) => ix.exact.entry(h.as_str().into()).or_default(),
                HostMatch::Suffix(s) => ix.suffix.entry(s.as_str().into()).or_default(),
            };
            bucket.positions.push(pos as u32);
        }
        for b in ix.exact.values_mut().chain(ix.suffix.values_mut()) {
            b.seal(prefix_of);
        }
        ix.any.seal(prefix_of);
        ix
    }

    /// `host` without port, in any case; `path` without query.
    #[inline]
    pub fn find<'r>(
        &self,
        host: &str,
        path: &str,
        prefix_of: &impl Fn(u32) -> &'r str,
        accept: &impl Fn(u32) -> bool,
    ) -> Option<usize> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let path = path.as_bytes();
        let in_bucket = |b: &Bucket| b.find(path, prefix_of, accept);
        if !self.exact.is_empty() {
            if let Some(p) = self.exact.get(host).and_then(in_bucket) {
                return Some(p as usize);
            }
        }
        if !self.suffix.is_empty() {
            // A suffix must leave at least one byte of the host before it, as
            // `HostMatch::matches` requires: start at the first dot past position 0.
            let dots = host.bytes().enumerate().skip(1).filter(|&(_, b)| b == b'.');
            for (i, _) in dots {
                if let Some(p) = self.suffix.get(&host[i..]).and_then(in_bucket) {
                    return Some(p as usize);
                }
            }
        }
        in_bucket(&self.any).map(|p| p as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index must answer exactly what a scan of the sorted list answers.
    #[test]
    fn agrees_with_a_scan_of_the_sorted_list() {
        let hosts = [
            "a.example.com",
            "b.example.com",
            "*.example.com",
            "*.com",
            "*",
        ];
        let prefixes = ["/", "/api", "/api/v1", "/apx", "/static/"];
        // Every host × prefix, some twice with a condition that holds for odd positions only,
        // sorted as the router sorts them. Enough per host to build prefix maps.
        let mut routes: Vec<(HostMatch, &str, bool)> = Vec::new();
        for h in hosts {
            for p in prefixes {
                for cond in [false, true] {
                    routes.push((HostMatch::parse(h).expect("host"), p, cond));
                }
            }
        }
        routes.sort_by(|a, b| {
            b.0.specificity()
                .cmp(&a.0.specificity())
                .then(b.1.len().cmp(&a.1.len()))
                .then(b.2.cmp(&a.2))
        });
        let prefix_of = |p: u32| routes[p as usize].1;
        let ix = Index::build(routes.iter().map(|r| &r.0), &prefix_of);
        assert!(ix.exact.values().all(|b| b.by_prefix.is_some()));
        assert!(!ix.exact.is_empty());
        for accept_odd in [false, true] {
            let accept = |p: u32| !routes[p as usize].2 || (accept_odd && p % 2 == 1);
            let (mut checked, mut matched) = (0, 0);
            for host in [
                "a.example.com",
                "A.Example.COM",
                "x.example.com",
                "example.com",
                "x.org",
                "com",
                ".example.com",
            ] {
                for path in [
                    "/",
                    "/api",
                    "/api/v1/x",
                    "/apx",
                    "/ap",
                    "/static",
                    "/static/a",
                    "",
                ] {
                    let scan = routes.iter().enumerate().position(|(i, r)| {
                        r.0.matches(host) && path.starts_with(r.1) && accept(i as u32)
                    });
                    let found = ix.find(host, path, &prefix_of, &accept);
                    assert_eq!(found, scan, "host {host} path {path}");
                    checked += 1;
                    matched += usize::from(found.is_some());
                }
            }
            assert_eq!(checked, 56);
            // Most lookups find a route (every host but `.example.com` has `*` to fall to).
            assert!(matched >= 40, "{matched} of {checked} matched");
        }
    }
}
