//! The TCP / TLS passthrough listeners' counters: per connection, so for connection-per-
//! request traffic as hot as the HTTP routes' per-request ones, and striped the same way
//! ([`super::routes`]); summed into their families when `/metrics` is read.

use super::routes::{counter, families, gauge, Family, Scraped};
use crate::striped::Striped;
use prometheus::proto::{MetricFamily, MetricType};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
struct Counts {
    conns: AtomicU64,
    /// Up on the thread that accepted, down on the one that closed (the same one without
    /// work stealing); only the sum means anything.
    active: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// One L4 listener's counters, resolved once per listener name (a reload that keeps the
/// name keeps counting into the same series).
pub struct L4Counts {
    name: String,
    counts: Striped<Counts>,
}

impl L4Counts {
    /// The counters of the listener `name`.
    pub fn of(name: &str) -> &'static L4Counts {
        register();
        let mut all = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.iter().find(|c| c.name == name) {
            return c;
        }
        // leaked once per listener name: the counters live as long as their series
        let c: &'static L4Counts = Box::leak(Box::new(L4Counts {
            name: name.to_string(),
            counts: Striped::default(),
        }));
        all.push(c);
        c
    }

    /// A connection was admitted.
    #[inline]
    pub fn opened(&self) {
        let c = self.counts.mine();
        c.conns.fetch_add(1, Relaxed);
        c.active.fetch_add(1, Relaxed);
    }

    /// An admitted connection ended.
    #[inline]
    pub fn closed(&self) {
        self.counts.mine().active.fetch_sub(1, Relaxed);
    }

    /// Bytes relayed: `up` from the client, `down` to it.
    #[inline]
    pub fn relayed(&self, up: u64, down: u64) {
        let c = self.counts.mine();
        c.bytes_in.fetch_add(up, Relaxed);
        c.bytes_out.fetch_add(down, Relaxed);
    }
}

static LISTENERS: Mutex<Vec<&'static L4Counts>> = Mutex::new(Vec::new());

const FAMILIES: [Family; 3] = [
    (
        "stepstone_l4_connections_total",
        "Connections accepted by the TCP / TLS passthrough listeners",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "stepstone_l4_connections_active",
        "Open connections on the TCP / TLS passthrough listeners",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "stepstone_l4_bytes_total",
        "Bytes relayed by the TCP / TLS passthrough listeners (in: from clients, out: to clients)",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
];

fn register() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        Scraped::register(&FAMILIES, collect);
    });
}

/// Every listener's stripes, summed into the families above.
fn collect() -> Vec<MetricFamily> {
    let all = LISTENERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut metrics: [Vec<_>; 3] = Default::default();
    for l in all {
        let (mut conns, mut active, mut up, mut down) = (0u64, 0i64, 0u64, 0u64);
        for c in l.counts.each() {
            conns = conns.wrapping_add(c.conns.load(Relaxed));
            active = active.wrapping_add(c.active.load(Relaxed));
            up = up.wrapping_add(c.bytes_in.load(Relaxed));
            down = down.wrapping_add(c.bytes_out.load(Relaxed));
        }
        let name = l.name.as_str();
        metrics[0].push(counter(&[("listener", name)], conns));
        metrics[1].push(gauge(&[("listener", name)], active));
        metrics[2].push(counter(&[("listener", name), ("direction", "in")], up));
        metrics[2].push(counter(&[("listener", name), ("direction", "out")], down));
    }
    families(&FAMILIES, metrics)
}
