//! What a request's bookkeeping costs when threads serve the same route at once: the
//! in-flight count, the backend pick (round-robin cursor, the backend's counters), the
//! upstream connection count and the end-of-request counters and duration histogram, through
//! the same functions the engines call. With one thread every cache line stays in its core;
//! with two, any counter both threads write moves between the cores on each request, which
//! is what a many-core process pays per request on a hot route (benches/SCALING.md).
//!
//! The second group does the same for a cache hit on one hot object: the fast path's lookup
//! and its report to the LRU (`cache::fast_hit`, `cache::fast_hit_served`).
//!
//! `cargo bench --bench counters`; compare `.../1_thread` with `.../2_threads` (time per
//! request on each thread while the other does the same).

use criterion::{criterion_group, criterion_main, Criterion};
use pingora_cache::eviction::EvictionManager;
use pingora_cache::storage::{MissFinishType, Storage};
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};
use stepstone::cache::storage::{Lru, Store};
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

/// `threads` threads each run `one` `iters` times at once; the mean of their times.
fn at_once(threads: usize, iters: u64, one: impl Fn() + Send + Sync + 'static) -> Duration {
    let one = Arc::new(one);
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (one, start) = (one.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    one();
                }
                t.elapsed()
            })
        })
        .collect();
    let total: Duration = workers
        .into_iter()
        .map(|w| w.join().expect("bench thread"))
        .sum();
    total / threads as u32
}

fn thread_label(threads: usize) -> String {
    if threads == 1 {
        "1_thread".to_string()
    } else {
        format!("{threads}_threads")
    }
}

/// A store holding one fresh 1 KiB object, admitted to the LRU as pingora would.
fn hot_store(key: &CacheKey) -> &'static Store {
    let lru: &'static Lru = Box::leak(Box::new(Lru::with_capacity(1 << 24, 64)));
    let store: &'static Store = Box::leak(Box::new(Store::new(lru, 1 << 20)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut h = pingora_http::ResponseHeader::build(200, None).expect("header");
        h.append_header("Content-Length", "1024").expect("header");
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, h);
        let span = pingora_cache::trace::Span::inactive().handle();
        let mut w = store
            .get_miss_handler(key, &meta, &span)
            .await
            .expect("miss handler");
        w.write_body(bytes::Bytes::from(vec![b'x'; 1024]), true)
            .await
            .expect("body");
        let Ok(MissFinishType::Created(size)) = w.finish().await else {
            panic!("not stored");
        };
        lru.admit(CacheEntryKey::key_only(key.to_compact()), size, now);
    });
    store
}

fn cache_hits(c: &mut Criterion) {
    let key = CacheKey::new("web http://bench/hot", "");
    let store = hot_store(&key);
    let mut g = c.benchmark_group("cache_hit");
    for threads in [1usize, 2] {
        let key = key.clone();
        g.bench_function(format!("one_object/{}", thread_label(threads)), move |b| {
            let key = key.clone();
            b.iter_custom(|iters| {
                let key = key.clone();
                at_once(threads, iters, move || {
                    let hit = store
                        .fast_hit(&key, SystemTime::now())
                        .expect("a fresh hit");
                    store.touch(&hit);
                })
            })
        });
    }
    g.finish();
}

fn bookkeeping(c: &mut Criterion) {
    let cfg = Config::from_yaml("bench", CONFIG).expect("config");
    set_routes(&cfg);
    let pool = Arc::new(Pool::new(&cfg.upstreams[0]));
    let mut g = c.benchmark_group("bookkeeping");
    for threads in [1usize, 2] {
        let pool = pool.clone();
        g.bench_function(format!("one_route/{}", thread_label(threads)), move |b| {
            b.iter_custom(|iters| {
                let pool = pool.clone();
                at_once(threads, iters, move || {
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
                    one_request(&pool, &view)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bookkeeping, cache_hits);
criterion_main!(benches);
