//! The in-memory response store behind every cache: a [`Storage`] for pingora-cache.
//!
//! Design:
//! - **Bounded.** The store holds bodies; the byte budget is enforced by pingora-cache's
//!   sharded LRU [`Manager`], which the store shares. Every admission reports its weight (body,
//!   serialized header and a fixed per-entry overhead) and the LRU evicts until its total is
//!   under `max_size`, then pingora calls [`Storage::purge`] for each victim. Entries this
//!   store drops on its own (URL and prefix purges) are removed from the LRU here, so the two
//!   never disagree for long.
//! - **Concurrent.** Entries live in 64 shards keyed by the primary key hash, each behind a
//!   `RwLock` held only for a map operation; bodies are immutable `Bytes`, so a hit clones a
//!   reference count and never copies the body or holds a lock while sending it.
//! - **Streaming.** A miss is sent to the client straight from the origin while the
//!   [`Writer`] accumulates a copy; the copy becomes visible atomically at `finish`, so a
//!   reader never sees half an object. Concurrent misses for one key wait on pingora's cache
//!   lock and are then served from the finished entry (collapsed forwarding). Readers of an
//!   in-progress write are deliberately not supported: pingora fails the whole response when
//!   such a shared write must be abandoned for size, whereas with private writes an oversized
//!   object simply stops being copied and is proxied in full.
//! - **Object bound.** A write that grows past the store's object limit drops its copy at
//!   once (memory is released mid-transfer, not at the end) and `finish` refuses it.
//! - **Variants.** All entries of one URL (its `Vary` variants) sit in one slot, so a purge
//!   removes every variant, and a prefix purge can match on the stored URL.
//!
//! The handles pingora drives per request are [`hit`] (reads) and [`miss`] (writes); the
//! HTTP/1 fast path reads through [`fast`], which renders a hit's head once per entry.

mod fast;
mod hit;
mod miss;

pub use fast::FastHit;

use fast::FastHead;
use hit::Hit;
use miss::Writer;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::{lru::Manager, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKeyRef, CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// LRU shards; eviction picks among them, so more shards mean less lock contention.
pub const LRU_SHARDS: usize = 16;
pub type Lru = Manager<LRU_SHARDS>;

const SHARDS: usize = 64;
/// Accounted on top of body and header bytes: map slots, key copies, the LRU node.
pub const ENTRY_OVERHEAD: usize = 256;

type BinaryMeta = (Vec<u8>, Vec<u8>);

struct Entry {
    variance: Option<HashBinary>,
    /// Kept to rebuild the LRU's key for purges this store starts itself.
    user_tag: Box<str>,
    /// The primary key text (namespace and URL), for prefix purges.
    url: Box<str>,
    meta: BinaryMeta,
    body: Bytes,
    weight: usize,
    /// What the HTTP/1 fast path needs to answer a fresh hit, when it can.
    fast: Option<FastHead>,
    /// The second (Unix time) of the entry's last LRU promotion, or of its creation: the fast
    /// path promotes an entry at most once a second ([`Store::touch`]).
    touched: AtomicU64,
}

/// Whole seconds of Unix time at `t` (0 before the epoch).
fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Entry {
    fn compact_key(&self, primary: HashBinary) -> CompactCacheKey {
        CompactCacheKey {
            primary,
            variance: self.variance.map(Box::new),
            user_tag: self.user_tag.clone(),
        }
    }
}

type Slot = Vec<Arc<Entry>>;

pub struct Store {
    shards: Vec<RwLock<HashMap<HashBinary, Slot>>>,
    lru: &'static Lru,
    /// Largest body a write may grow to before its copy is dropped (a reload may change it).
    max_object: AtomicUsize,
    bytes: AtomicUsize,
    items: AtomicUsize,
}

/// Accounted figures, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes the LRU accounts; kept ≤ the store's `max_size`.
    pub lru_bytes: usize,
    pub lru_items: usize,
    /// Bytes and entries actually held (can trail the LRU by evictions still in flight).
    pub stored_bytes: usize,
    pub stored_items: usize,
    pub limit: usize,
}

fn lock_err() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "cache shard lock poisoned")
}

impl Store {
    pub fn new(lru: &'static Lru, max_object: usize) -> Store {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            lru,
            max_object: AtomicUsize::new(max_object),
            bytes: AtomicUsize::new(0),
            items: AtomicUsize::new(0),
        }
    }

    pub fn lru(&self) -> &'static Lru {
        self.lru
    }

    fn shard(&self, primary: &HashBinary) -> &RwLock<HashMap<HashBinary, Slot>> {
        &self.shards[primary[0] as usize % SHARDS]
    }

    pub fn stats(&self) -> Stats {
        Stats {
            lru_bytes: self.lru.total_size(),
            lru_items: self.lru.total_items(),
            stored_bytes: self.bytes.load(Relaxed),
            stored_items: self.items.load(Relaxed),
            limit: self.lru.weight_limit(),
        }
    }

    fn get(&self, primary: &HashBinary, variance: Option<&HashBinary>) -> Option<Arc<Entry>> {
        let shard = self.shard(primary).read().ok()?;
        shard
            .get(primary)?
            .iter()
            .find(|e| e.variance.as_ref() == variance)
            .cloned()
    }

    /// Put `entry` at (primary, variance), replacing what was there. Returns the replaced one.
    fn put(&self, primary: HashBinary, entry: Arc<Entry>) -> Result<Option<Arc<Entry>>> {
        let weight = entry.weight;
        let mut shard = self.shard(&primary).write().map_err(|_| lock_err())?;
        let slot = shard.entry(primary).or_default();
        let old = match slot.iter().position(|e| e.variance == entry.variance) {
            Some(i) => Some(std::mem::replace(&mut slot[i], entry)),
            None => {
                slot.push(entry);
                None
            }
        };
        drop(shard);
        self.bytes.fetch_add(weight, Relaxed);
        match &old {
            Some(o) => {
                self.bytes.fetch_sub(o.weight, Relaxed);
            }
            None => {
                self.items.fetch_add(1, Relaxed);
            }
        }
        Ok(old)
    }

    /// Remove the entries of `primary` that `pick` selects; returns them.
    fn take(&self, primary: &HashBinary, pick: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let Ok(mut shard) = self.shard(primary).write() else {
            return Vec::new();
        };
        let Some(slot) = shard.get_mut(primary) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        slot.retain(|e| {
            if pick(e) {
                removed.push(e.clone());
                false
            } else {
                true
            }
        });
        if slot.is_empty() {
            shard.remove(primary);
        }
        drop(shard);
        for e in &removed {
            self.bytes.fetch_sub(e.weight, Relaxed);
            self.items.fetch_sub(1, Relaxed);
        }
        removed
    }

    fn forget(&self, primary: HashBinary, removed: &[Arc<Entry>]) {
        for e in removed {
            let key = e.compact_key(primary);
            self.lru.remove(CacheEntryKeyRef::KeyOnly(&key));
        }
    }

    pub(super) fn max_object(&self) -> usize {
        self.max_object.load(Relaxed)
    }

    /// New bounds (a reload): `max_object` applies to writes that start from now on, and
    /// `limit` to the LRU's next admission; a smaller `limit` also evicts now, each LRU
    /// shard's least recently used entry first and the heaviest shard first (the LRU is
    /// sharded, as its own eviction is), until the store is within it, as nginx's cache
    /// manager does after `max_size` shrinks. Returns how many entries went.
    pub fn resize(&self, limit: usize, max_object: usize) -> usize {
        self.max_object.store(max_object, Relaxed);
        self.lru.set_weight_limit(limit);
        let mut evicted = 0;
        // each round takes one LRU entry out: bounded even if the LRU's figures were off
        for _ in 0..=self.lru.total_items() {
            if self.lru.total_size() <= limit {
                break;
            }
            let heaviest = (0..LRU_SHARDS).max_by_key(|&s| self.lru.shard_weight(s));
            let Some(key) = heaviest.and_then(|s| self.lru.peek_lru(s)) else {
                break;
            };
            let key = key.into_key();
            self.lru.remove(CacheEntryKeyRef::KeyOnly(&key));
            let variance = key.variance.as_deref().copied();
            evicted += self.take(&key.primary, |e| e.variance == variance).len();
        }
        evicted
    }

    /// Remove every variant stored under `key`'s primary key (a URL in a namespace).
    /// Returns how many entries went.
    pub fn purge_primary(&self, key: &CacheKey) -> usize {
        let primary = key.primary_bin();
        let removed = self.take(&primary, |_| true);
        self.forget(primary, &removed);
        removed.len()
    }

    /// Remove every entry whose primary key text starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let mut count = 0;
        for shard in &self.shards {
            let primaries: Vec<HashBinary> = match shard.read() {
                Ok(s) => s
                    .iter()
                    .filter(|(_, slot)| slot.iter().any(|e| e.url.starts_with(prefix)))
                    .map(|(p, _)| *p)
                    .collect(),
                Err(_) => continue,
            };
            for p in primaries {
                let removed = self.take(&p, |e| e.url.starts_with(prefix));
                self.forget(p, &removed);
                count += removed.len();
            }
        }
        count
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(&key.primary_bin(), key.variance_bin().as_ref()) else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&entry.meta.0, &entry.meta.1)?;
        let end = entry.body.len();
        let hit = Hit {
            body: entry.body.clone(),
            start: 0,
            end,
            done: false,
            weight: entry.weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let hint = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(self.max_object());
        Ok(Box::new(Writer {
            store: self,
            primary: key.primary_bin(),
            variance: key.variance_bin(),
            user_tag: key.user_tag.clone().into_boxed_str(),
            url: String::from_utf8_lossy(key.primary_key()).into(),
            meta: meta.serialize()?,
            body: Vec::with_capacity(hint),
            oversized: false,
            fast: FastHead::new(meta),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Entries carry no generation id, so an exact target is matched on its key alone.
        let key = target.key();
        let variance = key.variance_bin();
        let removed = self.take(&key.primary, |e| e.variance == variance);
        if removed.is_empty() {
            Ok(PurgeOutcome::NotFound)
        } else {
            Ok(PurgeOutcome::Purged(None))
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let primary = key.primary_bin();
        let Some(old) = self.get(&primary, key.variance_bin().as_ref()) else {
            return Ok(false);
        };
        let fast = FastHead::for_body(meta, old.body.len());
        let meta = meta.serialize()?;
        let weight = old.body.len()
            + meta.0.len()
            + meta.1.len()
            + fast.as_ref().map_or(0, FastHead::weight)
            + ENTRY_OVERHEAD;
        let entry = Arc::new(Entry {
            variance: old.variance,
            user_tag: old.user_tag.clone(),
            url: old.url.clone(),
            meta,
            body: old.body.clone(),
            weight,
            fast,
            touched: AtomicU64::new(unix_secs(std::time::SystemTime::now())),
        });
        self.put(primary, entry)?;
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::storage::MissFinishType;
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    pub(super) fn store(limit: usize, max_object: usize) -> &'static Store {
        let lru: &'static Lru = Box::leak(Box::new(Lru::with_capacity(limit, 64)));
        Box::leak(Box::new(Store::new(lru, max_object)))
    }

    fn meta() -> CacheMeta {
        let h = ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    /// Admit like pingora's finish_miss_handler does: storage first, then the LRU, then
    /// purge what it evicted.
    async fn fill(s: &'static Store, key: &CacheKey, body: &[u8]) -> bool {
        let span = Span::inactive().handle();
        let mut w = s.get_miss_handler(key, &meta(), &span).await.unwrap();
        for chunk in body.chunks(1000) {
            w.write_body(Bytes::copy_from_slice(chunk), false)
                .await
                .unwrap();
        }
        let Ok(MissFinishType::Created(size)) = w.finish().await else {
            return false;
        };
        let evicted = s.lru.admit(
            pingora_cache::CacheEntryKey::key_only(key.to_compact()),
            size,
            SystemTime::now(),
        );
        for k in evicted {
            s.purge(PurgeTarget::Exact(&k), PurgeType::Eviction, &span)
                .await
                .unwrap();
        }
        true
    }

    async fn read(s: &'static Store, key: &CacheKey) -> Option<Vec<u8>> {
        let span = Span::inactive().handle();
        let (_, mut h) = s.lookup(key, &span).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(b) = h.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        Some(out)
    }

    #[tokio::test]
    async fn write_then_read_and_replace() {
        let s = store(1 << 20, 1 << 16);
        let k = CacheKey::new("web http://h/a", "");
        assert!(read(s, &k).await.is_none());
        assert!(fill(s, &k, b"hello").await);
        assert_eq!(read(s, &k).await.unwrap(), b"hello");
        assert!(fill(s, &k, b"bye").await);
        assert_eq!(read(s, &k).await.unwrap(), b"bye");
        let st = s.stats();
        assert_eq!(st.stored_items, 1);
        assert_eq!(st.stored_bytes, st.lru_bytes);
    }

    #[tokio::test]
    async fn filling_four_times_the_bound_stays_within_it() {
        let limit = 256 << 10;
        let s = store(limit, 64 << 10);
        let body = vec![7u8; 10_000];
        for i in 0..(4 * limit / 10_000) {
            let k = CacheKey::new(format!("web http://h/{i}"), "");
            assert!(fill(s, &k, &body).await);
            let st = s.stats();
            assert!(st.lru_bytes <= limit, "{st:?}");
            assert!(st.stored_bytes <= limit, "{st:?}");
        }
        let st = s.stats();
        assert!(st.stored_items > 10, "{st:?}");
        assert_eq!(st.stored_bytes, st.lru_bytes, "{st:?}");
    }

    #[tokio::test]
    async fn a_smaller_bound_evicts_at_once_and_a_larger_one_lets_the_store_grow() {
        let s = store(1 << 20, 64 << 10);
        let body = vec![7u8; 10_000];
        for i in 0..50 {
            assert!(fill(s, &CacheKey::new(format!("web http://h/{i}"), ""), &body).await);
        }
        assert_eq!(s.stats().stored_items, 50);
        let evicted = s.resize(100_000, 4096);
        let st = s.stats();
        assert!(
            st.lru_bytes <= 100_000 && st.stored_bytes <= 100_000,
            "{st:?}"
        );
        assert_eq!(evicted, 50 - st.stored_items, "{st:?}");
        assert_eq!(
            (st.stored_items, st.stored_bytes),
            (st.lru_items, st.lru_bytes)
        );
        assert_eq!(st.limit, 100_000);
        // the new object bound applies to the next write
        let big = CacheKey::new("web http://h/big", "");
        assert!(!fill(s, &big, &body).await);
        s.resize(1 << 20, 64 << 10);
        assert!(fill(s, &big, &body).await);
        assert_eq!(s.stats().stored_items, st.stored_items + 1);
        assert_eq!(s.resize(0, 0), st.stored_items + 1);
        assert_eq!(s.stats().stored_bytes, 0);
    }

    #[tokio::test]
    async fn oversized_writes_are_refused() {
        let s = store(1 << 20, 4096);
        let k = CacheKey::new("web http://h/big", "");
        assert!(!fill(s, &k, &[1u8; 5000]).await);
        assert!(read(s, &k).await.is_none());
        assert_eq!(s.stats().stored_items, 0);
    }

    #[tokio::test]
    async fn purges_by_url_and_prefix_keep_the_lru_in_step() {
        let s = store(1 << 20, 1 << 16);
        for p in ["/img/a", "/img/b", "/css/c"] {
            fill(s, &CacheKey::new(format!("web http://h{p}"), ""), b"x").await;
        }
        fill(s, &CacheKey::new("other http://h/img/a", ""), b"x").await;
        assert_eq!(s.purge_primary(&CacheKey::new("web http://h/css/c", "")), 1);
        assert_eq!(s.purge_prefix("web http://h/img/"), 2);
        let st = s.stats();
        assert_eq!(st.stored_items, 1, "the other namespace keeps its entry");
        assert_eq!(st.lru_items, 1);
        assert_eq!(st.stored_bytes, st.lru_bytes);
    }

    #[tokio::test]
    async fn seek_serves_ranges() {
        let s = store(1 << 20, 1 << 16);
        let k = CacheKey::new("web http://h/r", "");
        fill(s, &k, b"0123456789").await;
        let span = Span::inactive().handle();
        let (_, mut h) = s.lookup(&k, &span).await.unwrap().unwrap();
        h.seek(2, Some(5)).unwrap();
        assert_eq!(h.read_body().await.unwrap().unwrap(), &b"234"[..]);
        assert!(h.read_body().await.unwrap().is_none());
        assert!(h.seek(10, None).is_err());
    }
}
