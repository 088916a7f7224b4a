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
    let mut g = c.benchmark_group("select");
    for sel in [
        "round_robin",
        "random",
        "least_connections",
        "power_of_two",
        "consistent_hash",
    ] {
        let p = pool(sel, 8);
        let mut k = 0u64;
        g.bench_function(sel, |b| {
            b.iter(|| {
                k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
                black_box(p.select(black_box(k), 0))
            })
        });
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

fn routing(c: &mut Criterion) {
    let mut y = String::from("listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:9}]}]\nroutes:\n");
    for i in 0..20 {
        y.push_str(&format!("  - {{listener: web, host: 'svc{i}.example.com', path_prefix: /api/v{i}, upstream: a}}\n"));
    }
    y.push_str("  - {listener: web, host: '*.example.com', upstream: a}\n  - {listener: web, upstream: a}\n");
    let cfg = Config::from_yaml("bench", &y).expect("config");
    let ups = Upstreams::new(&cfg.upstreams);
    let r = Router::new(0, &cfg.routes, &ups.pools);
    c.bench_function("route/22_routes_exact_hit", |b| {
        b.iter(|| {
            r.find(
                black_box("svc17.example.com"),
                black_box("/api/v17/items"),
                &NoFields,
            )
        })
    });
    c.bench_function("route/22_routes_fallthrough", |b| {
        b.iter(|| r.find(black_box("other.test"), black_box("/"), &NoFields))
    });
}

criterion_group!(benches, selection, routing);
criterion_main!(benches);
