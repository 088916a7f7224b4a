//! DNS discovery: backends given as `NAME:PORT` follow every address the name resolves to.
//!
//! [`DnsDiscovery`] is a pingora-load-balancing [`ServiceDiscovery`]; a `Backends` driven by it
//! in [`DiscoveryService`] calls back only when the resolved set changed, and the callback
//! swaps the pool's membership ([`Pool::set_backends`]), which keeps the state of the
//! backends that stayed. A name that fails to resolve keeps its last good addresses (and
//! logs), so a DNS outage never empties a pool. The health checker follows the membership on
//! its own (see [`super::health`]).

use super::Pool;
use crate::config::{BackendSpec, DnsBackendSpec, UpstreamSpec};
use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::{Backend, Backends};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

/// Static backends plus a blocking first resolution of the names, so a pool starts populated.
/// A name that does not resolve at start-up is logged and retried by the discovery service.
pub fn initial_backends(spec: &UpstreamSpec) -> Vec<BackendSpec> {
    let mut out = spec.backends.clone();
    for d in &spec.dns_backends {
        match (d.host.as_str(), d.port).to_socket_addrs() {
            Ok(addrs) => push_resolved(&mut out, d, addrs),
            Err(e) => warn!(
                "upstream {}: cannot resolve {}:{}: {e}; will retry every {:?}",
                spec.name, d.host, d.port, spec.resolve_every
            ),
        }
    }
    out
}

fn push_resolved(
    out: &mut Vec<BackendSpec>,
    d: &DnsBackendSpec,
    addrs: impl Iterator<Item = SocketAddr>,
) {
    let mut addrs: Vec<SocketAddr> = addrs.collect();
    // Resolver order varies between calls; a stable order keeps slot positions stable.
    addrs.sort();
    for addr in addrs {
        if !out.iter().any(|b| b.addr == addr) {
            out.push(BackendSpec {
                max_connections: None,
                addr,
                weight: d.weight,
            });
        }
    }
}

pub struct DnsDiscovery {
    spec: UpstreamSpec,
    /// Last good resolution of each name, by position in `spec.dns_backends`.
    last_good: Mutex<HashMap<usize, Vec<SocketAddr>>>,
}

impl DnsDiscovery {
    pub fn new(spec: &UpstreamSpec, current: &[BackendSpec]) -> DnsDiscovery {
        // Seed the last good set from the start-up resolution.
        let mut last = HashMap::new();
        for (i, d) in spec.dns_backends.iter().enumerate() {
            if let Ok(addrs) = (d.host.as_str(), d.port).to_socket_addrs() {
                let addrs: Vec<SocketAddr> = addrs
                    .filter(|a| current.iter().any(|b| b.addr == *a))
                    .collect();
                last.insert(i, addrs);
            }
        }
        DnsDiscovery {
            spec: spec.clone(),
            last_good: Mutex::new(last),
        }
    }

    /// The full backend list: static ones first, then each name's addresses.
    pub async fn resolve(&self) -> Vec<BackendSpec> {
        let mut out = self.spec.backends.clone();
        for (i, d) in self.spec.dns_backends.iter().enumerate() {
            let fresh = match tokio::net::lookup_host((d.host.as_str(), d.port)).await {
                Ok(addrs) => {
                    let v: Vec<SocketAddr> = addrs.collect();
                    if v.is_empty() {
                        Err("no addresses".to_string())
                    } else {
                        Ok(v)
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let mut last = match self.last_good.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            let addrs = match fresh {
                Ok(v) => {
                    last.insert(i, v.clone());
                    v
                }
                Err(e) => {
                    let kept = last.get(&i).cloned().unwrap_or_default();
                    warn!(
                        "upstream {}: cannot resolve {}:{}: {e}; keeping the last good set ({} addresses)",
                        self.spec.name,
                        d.host,
                        d.port,
                        kept.len()
                    );
                    kept
                }
            };
            push_resolved(&mut out, d, addrs.into_iter());
        }
        out
    }
}

fn to_backend(b: &BackendSpec) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(b.addr),
        weight: b.weight as usize,
        ext: Default::default(),
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let set = self.resolve().await.iter().map(to_backend).collect();
        Ok((set, HashMap::new()))
    }
}

/// Re-resolves the names of every pool that has some, every `resolve_every`.
/// Resolves the names of the pools in force ([`super::live`]) that have some.
pub struct DiscoveryService;

async fn run_pool(pool: Arc<Pool>, mut shutdown: ShutdownWatch) {
    let current: Vec<BackendSpec> = pool
        .slots()
        .iter()
        .map(|s| BackendSpec {
            max_connections: s.max_conns.map(|n| n as u32),
            addr: s.addr,
            weight: s.weight,
        })
        .collect();
    let backends = Backends::new(Box::new(DnsDiscovery::new(&pool.spec, &current)));
    let mut tick = tokio::time::interval(pool.spec.resolve_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let p = pool.clone();
        let res = backends
            .update(move |set| {
                let mut specs: Vec<BackendSpec> = set
                    .iter()
                    .filter_map(|b| {
                        b.addr.as_inet().map(|a| BackendSpec {
                            max_connections: None,
                            addr: *a,
                            weight: b.weight as u32,
                        })
                    })
                    .collect();
                // Static backends first, in config order, then the rest sorted (BTreeSet order
                // is by address), so positions stay put across updates.
                specs.sort_by_key(|b| {
                    p.spec
                        .backends
                        .iter()
                        .position(|s| s.addr == b.addr)
                        .unwrap_or(usize::MAX)
                });
                let old: BTreeSet<SocketAddr> = p.slots().iter().map(|s| s.addr).collect();
                let new: BTreeSet<SocketAddr> = specs.iter().map(|b| b.addr).collect();
                if old != new {
                    info!(
                        "upstream {}: backends now {:?} (were {:?})",
                        p.name,
                        new.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        old.iter().map(|a| a.to_string()).collect::<Vec<_>>()
                    );
                    p.set_backends(&specs);
                }
            })
            .await;
        if let Err(e) = res {
            warn!("upstream {}: discovery failed: {e}", pool.name);
        }
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::per_pool(shutdown, |p| !p.spec.dns_backends.is_empty(), run_pool).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(backends: &str) -> UpstreamSpec {
        let y = format!(
            "listeners: [{{name: web, address: 127.0.0.1:1, protocol: http}}]\nupstreams: [{{name: a, backends: [{backends}]}}]\n"
        );
        Config::from_yaml("t.yaml", &y).expect("valid").upstreams[0].clone()
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_good_addresses() {
        let s = spec("{address: 'localhost:4567'}, {address: 127.0.0.2:80}");
        let first = initial_backends(&s);
        assert!(
            first
                .iter()
                .any(|b| b.addr == "127.0.0.1:4567".parse().unwrap()),
            "{first:?}"
        );
        let mut d = DnsDiscovery::new(&s, &first);
        let good = d.resolve().await;
        assert!(good
            .iter()
            .any(|b| b.addr == "127.0.0.1:4567".parse().unwrap()));
        // The same position now names something that does not resolve.
        d.spec.dns_backends[0].host = "nonexistent.invalid".into();
        let kept = d.resolve().await;
        let addrs = |v: &[BackendSpec]| v.iter().map(|b| b.addr).collect::<BTreeSet<_>>();
        assert_eq!(addrs(&kept), addrs(&good));
    }

    #[test]
    fn a_name_that_never_resolved_leaves_the_static_backends() {
        let s = spec("{address: 'nonexistent.invalid:80'}, {address: 127.0.0.2:80}");
        let v = initial_backends(&s);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].addr, "127.0.0.2:80".parse().unwrap());
    }

    #[test]
    fn membership_change_keeps_the_state_of_backends_that_stay() {
        let mut s = spec("{address: 127.0.0.2:80}, {address: 127.0.0.3:80}");
        // the operator's changes are kept by upstream name: one of this test's own
        s.name = "discovery-membership-test".into();
        let pool = Pool::new(&s);
        crate::upstream::live::update(&pool, "127.0.0.2:80".parse().unwrap(), |mut o| {
            o.state = Some(crate::upstream::live::AdminState::Drain);
            Some(o)
        });
        let kept = pool.slots()[0].clone();
        assert!(kept.drained.load(std::sync::atomic::Ordering::Relaxed));
        let moved = pool.slots()[1].clone();
        moved.completed(std::time::Duration::from_micros(300));
        moved.completed(std::time::Duration::from_micros(500));
        moved
            .healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let b = |a: &str| BackendSpec {
            max_connections: None,
            addr: a.parse().unwrap(),
            weight: 1,
        };
        pool.set_backends(&[b("127.0.0.2:80"), b("127.0.0.4:80"), b("127.0.0.3:80")]);
        let now = pool.slots();
        assert_eq!(now.len(), 3);
        assert!(
            Arc::ptr_eq(&now[0], &kept),
            "an unmoved backend keeps its slot"
        );
        let m = pool.slot_by_label("127.0.0.3:80").expect("still there");
        assert_eq!(m.index, 2);
        assert!(
            !m.healthy.load(std::sync::atomic::Ordering::Relaxed),
            "health carried over"
        );
        let t = m.totals();
        assert_eq!((t.completed, t.latency_us), (2, 800), "totals carried over");
        assert!(pool.slot_by_label("127.0.0.4:80").is_some());
        pool.set_backends(&[b("127.0.0.2:80")]);
        assert_eq!(pool.slots().len(), 1);
        assert!(pool.select(0, 0).is_none(), "the only backend is drained");
    }
}
