//! What a request's bookkeeping costs when threads serve the same route at once: the
//! in-flight count, the backend pick (round-robin cursor, the backend's counters), the
//! upstream connection count and the end-of-request counters and duration histogram, through
//! the same functions the engines call. With one thread every cache line stays in its core;
//! with two, any counter both threads write moves between the cores on each request, which
//! is what a many-core process pays per request on a hot route (benches/SCALING.md).
//!
//! `cargo bench --bench counters`; compare `one_route/1_thread` with `one_route/2_threads`
//! (time per request on each thread while the other counts too).

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use stepstone::config::Config;
use stepstone::observability::{fast_request_done, set_routes, ReqView, RequestObs};
use stepstone::upstream::Pool;

const CONFIG: &str = "
listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]
upstreams:
  - name: app
    selection: round_robin
    backends:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
      - address: 127.0.0.1:9004
routes:
  - listener: web
    upstream: app
";

/// One request's bookkeeping, as the lean engine does it for a keep-alive request.
fn one_request(pool: &Pool, view: &ReqView) {
    let mut obs = RequestObs::default();
    obs.peer_selected();
    let pick = pool.select(0, 0);
    obs.connected(Some(0), true);
    fast_request_done(
        view,
        Some(0),
        pick.as_ref().map(|p| &*p.slot),
        &obs,
        200,
        1024,
        false,
    );
}

fn bookkeeping(c: &mut Criterion) {
    let cfg = Config::from_yaml("bench", CONFIG).expect("config");
    set_routes(&cfg);
    let pool = Arc::new(Pool::new(&cfg.upstreams[0]));
    let mut g = c.benchmark_group("bookkeeping");
    for threads in [1usize, 2] {
        let name = if threads == 1 {
            "one_route/1_thread".to_string()
        } else {
            format!("one_route/{threads}_threads")
        };
        let pool = pool.clone();
        g.bench_function(name, move |b| {
            b.iter_custom(|iters| {
                let start = Arc::new(Barrier::new(threads));
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let (pool, start) = (pool.clone(), start.clone());
                        std::thread::spawn(move || {
                            let view = ReqView {
                                client: None,
                                method: "GET",
                                uri: "/",
                                version: "HTTP/1.1",
                                host: "-",
                                referer: "-",
                                user_agent: "-",
                                bytes_in: 0,
                            };
                            start.wait();
                            let t = Instant::now();
                            for _ in 0..iters {
                                one_request(&pool, &view);
                            }
                            t.elapsed()
                        })
                    })
                    .collect();
                // each thread's time for `iters` requests while the others count too
                let total: Duration = workers
                    .into_iter()
                    .map(|w| w.join().expect("bench thread"))
                    .sum();
                total / threads as u32
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bookkeeping);
criterion_main!(benches);
