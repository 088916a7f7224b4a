//! The response cache, built on pingora-cache's request-phase hooks.
//!
//! - [`storage`]: the bounded, concurrent in-memory store and its LRU accounting.
//! - [`policy`]: RFC 9111 decisions (what is stored, for how long, keys and variants).
//! - [`purge`]: the `PURGE` method, restricted to `purge_from` networks.
//!
//! Pingora wants `'static` storage, eviction manager, lock and predictor. They are created
//! once per process by [`init`] (leaked boxes behind a `OnceCell`), sized by the config's
//! shared `max_size`. Every cached route (and the forward proxy) holds a [`RouteCache`] with
//! its own per-route settings and calls its methods from the matching `ProxyHttp` hooks:
//!
//! | hook | call |
//! |---|---|
//! | `request_filter` | [`purge::handle`] |
//! | `request_cache_filter` | [`RouteCache::enable`] |
//! | `cache_key_callback` | [`RouteCache::key`] |
//! | `cache_hit_filter` | [`on_hit`] |
//! | `upstream_response_filter` | keeps a revalidating 304 for the next hook |
//! | `response_cache_filter` | [`RouteCache::response_cacheable`], [`RouteCache::revalidated`] after a 304 |
//! | `cache_vary_filter` | [`policy::variance`] |
//! | `should_serve_stale` | [`should_serve_stale`] |
//! | `response_filter` | [`RouteCache::response_filter`] |
//!
//! Fresh, non-variant hits for plain HTTP/1 GET/HEAD requests are served by the fast path
//! (the lean engine in `http::fast`) through [`fast_hit`] / [`fast_hit_served`] instead: same key
//! function, same store, same freshness and LRU access, without a Pingora session.
//!
//! Collapsed forwarding is pingora's cache lock: the first miss for a key fetches, the others
//! wait for it and are then served the stored object. A predictor remembers keys whose
//! responses were not storable, so later requests for them skip the lock (BYPASS) instead of
//! queueing behind each other.

pub mod policy;
pub mod purge;
pub mod storage;

use crate::config::cache::CacheSpec;
use crate::config::Config;
use once_cell::sync::OnceCell;
use pingora_cache::eviction::EvictionManager;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use pingora_cache::{CacheKey, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable};
use pingora_core::{Error, ErrorSource};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Duration;
use storage::{Lru, Stats, Store};

/// A writer holding a key's lock longer than this lets waiting readers compete again.
pub const CACHE_LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys remembered as uncacheable, per predictor shard.
const PREDICTOR_SHARD_CAPACITY: usize = 4096;

struct Globals {
    store: &'static Store,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static (dyn CacheablePredictor + Sync),
}

static GLOBALS: OnceCell<Globals> = OnceCell::new();

/// Bring the shared store to `cfg`, at start and at each reload: made the first time any
/// cache is enabled (its memory is taken as entries come), resized when caches' `max_size` or
/// `max_object_size` changed ([`Store::resize`]: a smaller size evicts now), and emptied when
/// no cache is left (the store stays, bound to nothing, for a later reload). Returns the
/// entries evicted.
pub fn apply_config(cfg: &Config) -> usize {
    let Some(size) = cfg.cache_store_size else {
        return store().map_or(0, |s| s.resize(0, 0));
    };
    let routes = cfg.routes.iter().filter_map(|r| r.cache.as_ref());
    let forward = cfg
        .listeners
        .iter()
        .filter_map(|l| l.forward.as_ref()?.cache.as_ref());
    let max_object = routes
        .chain(forward)
        .map(|c| c.max_object_size)
        .max()
        .unwrap_or(size);
    match store() {
        Some(s) => s.resize(
            usize::try_from(size).unwrap_or(usize::MAX),
            usize::try_from(max_object).unwrap_or(usize::MAX),
        ),
        None => {
            init(size, max_object);
            0
        }
    }
}

/// Create the shared store bounded by `max_size` bytes. Later calls keep the first store.
fn init(max_size: u64, max_object_size: u64) {
    GLOBALS.get_or_init(|| {
        let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
        // Preallocation per LRU shard, assuming ~16KiB objects; it grows as needed.
        let per_shard = (max_size / (16 << 10) / storage::LRU_SHARDS).clamp(64, 65_536);
        let lru: &'static Lru = Box::leak(Box::new(Lru::with_capacity(max_size, per_shard)));
        let max_object = usize::try_from(max_object_size).unwrap_or(max_size);
        let store: &'static Store = Box::leak(Box::new(Store::new(lru, max_object)));
        let lock: &'static CacheKeyLockImpl =
            Box::leak(CacheLock::new_boxed(CACHE_LOCK_AGE_TIMEOUT));
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(PREDICTOR_SHARD_CAPACITY, None)));
        Globals {
            store,
            lock,
            predictor,
        }
    });
}

/// The shared store's accounted figures, once [`init`] ran.
pub fn stats() -> Option<Stats> {
    GLOBALS.get().map(|g| g.store.stats())
}

fn store() -> Option<&'static Store> {
    GLOBALS.get().map(|g| g.store)
}

/// A fresh stored response for `key` that the HTTP/1 fast path may send as a HIT, as the
/// general path would: not for a key the predictor sends around the cache (BYPASS), and only
/// a complete, non-variant entry whose freshness holds now. No side effects; call
/// [`fast_hit_served`] once it is sent. `key` keeps its hash, computed here once: the
/// predictor and the store would each compute it again (BLAKE2b over the key, 3% of the CPU
/// of an HTTP/2 hit).
pub fn fast_hit(key: &mut CacheKey) -> Option<storage::FastHit> {
    let g = GLOBALS.get()?;
    key.set_primary_bin_override(pingora_cache::key::CacheHashKey::primary_bin(&*key));
    if !g.predictor.cacheable_prediction(key) {
        return None;
    }
    g.store.fast_hit(key, std::time::SystemTime::now())
}

/// The LRU access for a hit the fast path serves.
pub fn fast_hit_served(hit: &storage::FastHit) {
    if let Some(s) = store() {
        s.touch(hit);
    }
}

/// Serve stale on any failure to get a response from upstream (connect errors, timeouts, no
/// healthy backend, 5xx), and while revalidating (`error` is `None`) whenever the entry's
/// stale-while-revalidate window allows, which pingora checks before asking.
pub fn should_serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| e.esource() != &ErrorSource::Downstream)
}

/// `cache_hit_filter`: a hit answers without reading the request body. Pingora would then
/// close the connection; instead keep it and let the session drain the unread body after the
/// response (bounded by the route's `max_body_size` and pingora's drain timeout).
pub fn on_hit(session: &mut Session) {
    session
        .downstream_session
        .set_close_on_response_before_downstream_finish(false);
}

/// One cache's settings: a cached route's, or a forward-proxy listener's.
pub struct RouteCache {
    pub spec: CacheSpec,
}

impl RouteCache {
    pub fn new(spec: CacheSpec) -> RouteCache {
        RouteCache { spec }
    }

    /// `request_cache_filter`: turn the cache on for GET and HEAD.
    pub fn enable(&self, session: &mut Session) {
        let Some(g) = GLOBALS.get() else { return };
        if !policy::request_cacheable(session.req_header()) {
            return;
        }
        let eviction: &'static (dyn EvictionManager + Sync) = g.store.lru();
        let mut overrides = CacheOptionOverrides::default();
        // A reader gives up waiting for a writer after this long and fetches uncached.
        overrides.wait_timeout = Some(CACHE_LOCK_AGE_TIMEOUT * 3);
        session.cache.enable(
            g.store,
            Some(eviction),
            Some(g.predictor),
            Some(g.lock),
            Some(overrides),
        );
        session.cache.set_max_file_size_bytes(
            usize::try_from(self.spec.max_object_size).unwrap_or(usize::MAX),
        );
    }

    /// `cache_key_callback`.
    pub fn key(&self, session: &Session, namespace: &str, tls: bool) -> CacheKey {
        policy::cache_key(namespace, tls, session.req_header())
    }

    /// `response_cache_filter`.
    pub fn response_cacheable(&self, session: &Session, resp: &ResponseHeader) -> RespCacheable {
        policy::response_cacheable(session.req_header(), resp, &self.spec)
    }

    /// `response_cache_filter` after a 304 revalidated the stale entry: pingora hands over
    /// the stored head with only a few of the 304's fields merged in; every field the 304
    /// carries updates the stored response ([`policy::merge_not_modified`], RFC 9111
    /// §4.3.4), so the next hit, on either engine, serves the new values.
    pub fn revalidated(
        &self,
        session: &Session,
        merged: &ResponseHeader,
        not_modified: &ResponseHeader,
    ) -> RespCacheable {
        let head = policy::merge_not_modified(merged, not_modified);
        self.response_cacheable(session, &head)
    }

    /// `response_filter`: report the cache status and, after a successful unsafe request,
    /// drop what is stored for its URL (RFC 9111 §4.4).
    pub fn response_filter(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        namespace: &str,
        tls: bool,
    ) -> pingora_core::Result<()> {
        resp.insert_header(self.spec.status_header.clone(), status(session))?;
        let m = &session.req_header().method;
        let unsafe_method = !(m == http::Method::GET
            || m == http::Method::HEAD
            || m == http::Method::OPTIONS
            || m == http::Method::TRACE);
        if unsafe_method && (200..400).contains(&resp.status.as_u16()) {
            if let Some(s) = store() {
                s.purge_primary(&policy::cache_key(namespace, tls, session.req_header()));
            }
        }
        Ok(())
    }
}

/// HIT | MISS | EXPIRED | STALE | REVALIDATED | BYPASS for this request.
pub fn status(session: &Session) -> &'static str {
    if session.cache.predicted_uncacheable_reason().is_some() {
        // skipped the lookup: this key was recently answered with something not storable
        return "BYPASS";
    }
    match session.cache.phase() {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        // looked up, then not stored (uncacheable answer, too large, lock gave up...)
        CachePhase::Disabled(
            NoCacheReason::OriginNotCache
            | NoCacheReason::ResponseTooLarge
            | NoCacheReason::StorageError
            | NoCacheReason::InternalError
            | NoCacheReason::UpstreamError
            | NoCacheReason::CacheLockGiveUp
            | NoCacheReason::CacheLockTimeout
            | NoCacheReason::CacheLockRetryLimit
            | NoCacheReason::Custom(_),
        ) => "MISS",
        _ => "BYPASS",
    }
}
