//! Micro-benchmarks of the per-request decisions: backend selection and routing.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use stepstone::config::{BackendSpec, Config};
use stepstone::policy::route::{NoFields, Router};
use stepstone::upstream::{select, Pool, Upstreams};

fn pool(selection: &str, n: usize) -> Pool {
    let mut y = String::from("listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams:\n  - name: a\n    selection: ");
    y.push_str(selection);
    y.push_str("\n    backends:\n");
    for i in 0..n {
        y.push_str(&format!(
            "      - {{address: 127.0.0.1:{}, weight: {}}}\n",
            9000 + i,
            1 + i % 3
        ));
    }
    let cfg = Config::from_yaml("bench", &y).expect("config");
    Pool::new(&cfg.upstreams[0])
}

fn selection(c: &mut Criterion) {
    // Selection must stay O(1) or O(log n) in the backend count.
    let mut g = c.benchmark_group("select");
    for n in [2, 100, 1000] {
        for sel in [
            "round_robin",
            "random",
            "least_connections",
            "power_of_two",
            "consistent_hash",
        ] {
            let p = pool(sel, n);
            let mut k = 0u64;
            g.bench_function(format!("{sel}/{n}"), |b| {
                b.iter(|| {
                    k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    black_box(p.select(black_box(k), 0))
                })
            });
        }
    }
    g.finish();
    c.bench_function("hash_key/fnv_32B", |b| {
        b.iter(|| select::hash_bytes(black_box(b"session=4f1c2a9e7d3b11ee9b5c0242")))
    });
    let specs: Vec<BackendSpec> = (0..16)
        .map(|i| BackendSpec {
            addr: format!("127.0.0.1:{}", 9000 + i).parse().expect("addr"),
            weight: 10,
            max_connections: None,
        })
        .collect();
    c.bench_function("ring_build/16x10", |b| {
        b.iter(|| stepstone::upstream::Members::build(black_box(&specs)))
    });
}

/// `hosts` exact host routes plus 500 wildcard+prefix routes, as an edge with many customer
/// names has; the lookup asks for the last host, the worst place in a linear scan.
fn routes_config(hosts: usize) -> String {
    let mut y = String::from("listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:9}]}]\nroutes:\n");
    for i in 0..hosts {
        y.push_str(&format!(
            "  - {{listener: web, host: 'svc{i}.example.com', upstream: a}}\n"
        ));
    }
    if hosts > 1 {
        for i in 0..500 {
            y.push_str(&format!(
                "  - {{listener: web, host: '*.w{i}.example.net', path_prefix: /p{i}, upstream: a}}\n"
            ));
        }
    }
    y
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for hosts in [1, 100, 1_000, 10_000] {
        let cfg = Config::from_yaml("bench", &routes_config(hosts)).expect("config");
        let ups = Upstreams::new(&cfg.upstreams);
        let r = Router::new(0, &cfg.routes, &ups.pools);
        let last = format!("svc{}.example.com", hosts - 1);
        assert!(r.find(&last, "/x", &NoFields).is_some());
        g.bench_function(format!("last_of_{hosts}_hosts"), |b| {
            b.iter(|| r.find(black_box(&last), black_box("/api/v1/items"), &NoFields))
        });
        g.bench_function(format!("wildcard_miss_{hosts}_hosts"), |b| {
            b.iter(|| r.find(black_box("a.b.c.example.org"), black_box("/"), &NoFields))
        });
    }
    g.finish();
}

criterion_group!(benches, selection, routing);
criterion_main!(benches);
