//! The HTTP/1 fast path's side of the store: fresh hits sent without a Pingora session.
//! Kept apart from the store because it mirrors what pingora does on its own hit path
//! (freshness, `Age`, LRU access) and in its HTTP/1 response writer, so it is the part to
//! check against pingora when pingora changes.

use super::{Entry, Store};
use bytes::Bytes;
use pingora_cache::eviction::EvictionManager;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

/// A stored response as the HTTP/1 fast path sends it on a fresh hit, rendered once per
/// admission or meta update (entries are immutable and replaced whole, so it never drifts
/// from `meta`).
pub(super) struct FastHead {
    /// Status line and the stored header fields except `Date` (which is sent as now), not
    /// yet terminated: the hit's own fields follow.
    pub(super) head: Box<[u8]>,
    /// The same fields as a map (with the stored `Date`), for the HTTP/2 and HTTP/3 hits
    /// (cloned per hit instead of parsing `head` and validating each field again), and for
    /// a caller to tell whether a field it would add is there.
    fields: http::HeaderMap,
    code: u16,
    fresh_until: SystemTime,
    /// Age is counted from here (`CacheMeta::age`).
    epoch: SystemTime,
}

impl FastHead {
    /// `None` when the response is not one the fast path sends as is: a variant (Vary), or
    /// without a Content-Length (pingora adds chunked framing then), or a status without a
    /// body. Also returns the Content-Length, which the stored body must match.
    pub(super) fn new(meta: &CacheMeta) -> Option<(FastHead, usize)> {
        if meta.variance().is_some() {
            return None;
        }
        let h = meta.headers();
        if h.contains_key(http::header::VARY) || h.contains_key(http::header::TRANSFER_ENCODING) {
            return None;
        }
        let mut lens = h.get_all(http::header::CONTENT_LENGTH).iter();
        let len = lens.next()?.as_bytes();
        // plain digits, as pingora's range filter reads them
        if len.is_empty() || len.len() > 15 || !len.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let len = std::str::from_utf8(len).ok()?.parse::<usize>().ok()?;
        if lens.next().is_some() {
            return None;
        }
        let mut resp = meta.response_header_copy();
        let code = resp.status.as_u16();
        if !(200..=599).contains(&code) || code == 204 || code == 304 {
            return None;
        }
        // what pingora's hit path and HTTP/1 writer set themselves: a 200 with a length is
        // eligible for ranges, so its range filter says so (`range_header_filter`)...
        if code == 200 {
            resp.insert_header(http::header::ACCEPT_RANGES, "bytes")
                .ok()?;
        }
        // ...and Age and Connection are sent per response. The stored Date stays: it says when
        // the origin made the response (RFC 9111 §4: a hit keeps it). Pingora's writers put
        // the time of the answer there instead, so the general engine cannot do the same.
        resp.remove_header(&http::header::CONNECTION);
        resp.remove_header(&http::header::AGE);
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(resp.status.as_str().as_bytes());
        head.push(b' ');
        if let Some(reason) = resp.get_reason_phrase() {
            head.extend_from_slice(reason.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        resp.header_to_h1_wire(&mut head);
        let f = FastHead {
            head: head.into_boxed_slice(),
            fields: resp.headers.clone(),
            code,
            fresh_until: meta.fresh_until(),
            epoch: meta.epoch(),
        };
        Some((f, len))
    }

    /// What the head takes in memory, for the store's accounting: its bytes, and its fields
    /// again as a map (each name and value, and about 32 bytes of the map's own per field).
    pub(super) fn weight(&self) -> usize {
        let map: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        self.head.len() + map
    }

    /// [`FastHead::new`] for a stored body of `body_len` bytes.
    pub(super) fn for_body(meta: &CacheMeta, body_len: usize) -> Option<FastHead> {
        Self::new(meta).and_then(|(f, len)| (len == body_len).then_some(f))
    }
}

/// A fresh stored response for the HTTP/1 fast path ([`Store::fast_hit`]).
pub struct FastHit {
    entry: Arc<Entry>,
    primary: HashBinary,
    /// Whole seconds since the entry's epoch, as pingora's `Age`.
    age: u64,
    /// The lookup's second (Unix time), for [`Store::touch`].
    at: u64,
}

impl FastHit {
    fn fast(&self) -> &FastHead {
        self.entry
            .fast
            .as_ref()
            .expect("a FastHit is made only from an entry with a fast head")
    }

    /// Status line and stored header fields (the stored `Date` among them), without `Age`
    /// and the final CRLF.
    pub fn head(&self) -> &[u8] {
        &self.fast().head
    }

    pub fn status(&self) -> u16 {
        self.fast().code
    }

    /// The stored fields (those of [`FastHit::head`]) as a map.
    pub fn fields(&self) -> &http::HeaderMap {
        &self.fast().fields
    }

    /// Whether the stored response has a field of this name.
    pub fn has_header(&self, name: &http::HeaderName) -> bool {
        self.fast().fields.contains_key(name)
    }

    pub fn body(&self) -> &Bytes {
        &self.entry.body
    }

    pub fn age(&self) -> u64 {
        self.age
    }
}

impl Store {
    /// The entry stored under `key` (no variance) if the fast path can send it as a fresh
    /// hit at `now`. `None` otherwise. No side effects: a hit that is served is reported
    /// with [`Store::touch`].
    pub fn fast_hit(&self, key: &CacheKey, now: SystemTime) -> Option<FastHit> {
        let primary = key.primary_bin();
        let entry = self.get(&primary, None)?;
        let fast = entry.fast.as_ref()?;
        // CacheMeta::is_fresh
        if fast.fresh_until < now {
            return None;
        }
        // CacheMeta::age
        let age = now.duration_since(fast.epoch).unwrap_or_default().as_secs();
        Some(FastHit {
            entry,
            primary,
            age,
            at: super::unix_secs(now),
        })
    }

    /// Tell the LRU a fast-path hit was served, as pingora's hit path does
    /// (`HttpCache::cache_found`: `EvictionManager::access` with the hit's weight), at most
    /// once a second per entry. A promotion takes the LRU shard's write lock, so on a hot
    /// object every core serving it would queue on that lock on every hit; an entry promoted
    /// (or stored) within the same second is at the head of its shard already, so later hits
    /// in that second change nothing the eviction could tell (memcached bumps an item at most
    /// once a minute for the same reason).
    pub fn touch(&self, hit: &FastHit) {
        let e = &hit.entry;
        if e.touched.load(Relaxed) >= hit.at {
            return;
        }
        // two threads may both get here in one second; both promote, as before
        e.touched.store(hit.at, Relaxed);
        let key = CacheEntryKey::key_only(e.compact_key(hit.primary));
        // Promote only an entry the LRU still tracks: one evicted since the lookup is on its
        // way out of the store, and `access` would admit it again without evicting anything.
        if self.lru.peek(&key) {
            self.lru.access(&key, e.weight, hit.fast().fresh_until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::*;
    use pingora_cache::storage::{MissFinishType, Storage};
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    async fn fill_with(s: &'static Store, key: &CacheKey, headers: &[(&str, &str)], body: &[u8]) {
        let span = Span::inactive().handle();
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).unwrap();
        }
        let now = SystemTime::now();
        let m = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h);
        let mut w = s.get_miss_handler(key, &m, &span).await.unwrap();
        w.write_body(Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        let Ok(MissFinishType::Created(size)) = w.finish().await else {
            panic!("not stored")
        };
        s.lru.admit(
            pingora_cache::CacheEntryKey::key_only(key.to_compact()),
            size,
            now,
        );
    }

    /// A hit promotes its entry in the LRU at most once a second. In one LRU shard, a hit on
    /// each entry a second after they were stored promotes them all in turn, so the first
    /// one hit (A) is the least recent again; another hit on A in that same second leaves
    /// the order alone (before, it took the shard's write lock and moved A up again), and a
    /// hit in the next second promotes it.
    #[tokio::test]
    async fn a_hit_promotes_its_entry_at_most_once_a_second() {
        let s = store(1 << 20, 1 << 16);
        let keys: Vec<CacheKey> = (0..64)
            .map(|i| CacheKey::new(format!("web http://h/{i}"), ""))
            .collect();
        for k in &keys {
            fill_with(s, k, &[("Content-Length", "1")], b"x").await;
        }
        let lru_key = |k: &CacheKey| CacheEntryKey::key_only(k.to_compact());
        // `None` for an empty shard: which shard a key lands in follows the LRU's hasher,
        // seeded anew in each process, so any shard may be empty (about one run in fifty
        // found shard 0 empty and failed here)
        let least_recent = |shard: usize| {
            let l = s.lru.peek_lru(shard)?;
            Some(
                keys.iter()
                    .position(|k| lru_key(k) == l)
                    .expect("a stored key"),
            )
        };
        let t = SystemTime::now() + Duration::from_secs(1);
        let hit = |i: usize, at: SystemTime| s.touch(&s.fast_hit(&keys[i], at).expect("fresh"));
        // a shard holding two entries or more: promoting its least recent shows the next
        let (shard, a) = (0..super::super::LRU_SHARDS)
            .find_map(|shard| {
                let a = least_recent(shard)?;
                hit(a, t);
                (least_recent(shard) != Some(a)).then_some((shard, a))
            })
            .expect("64 entries over 16 shards put two in one");
        let mut second = None;
        loop {
            let x = least_recent(shard).expect("the shard holds A");
            if x == a {
                break;
            }
            second.get_or_insert(x);
            hit(x, t);
        }
        let second = second.expect("the shard's second entry");
        hit(a, t);
        assert_eq!(
            least_recent(shard),
            Some(a),
            "A was promoted in this second already: left where it is"
        );
        hit(a, t + Duration::from_secs(1));
        assert_eq!(
            least_recent(shard),
            Some(second),
            "the next second promotes A"
        );
    }

    #[tokio::test]
    async fn fast_hits_only_for_fresh_plain_entries_with_a_matching_length() {
        let s = store(1 << 20, 1 << 16);
        let now = SystemTime::now();
        let k = CacheKey::new("web http://h/f", "");
        fill_with(
            s,
            &k,
            &[
                ("Content-Length", "5"),
                ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("X-A", "b"),
            ],
            b"hello",
        )
        .await;
        let hit = s.fast_hit(&k, now).expect("fresh plain entry");
        let head = String::from_utf8(hit.head().to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("X-A: b\r\n") || head.contains("x-a: b\r\n"),
            "{head}"
        );
        assert!(head
            .to_ascii_lowercase()
            .contains("accept-ranges: bytes\r\n"));
        assert!(
            head.to_ascii_lowercase()
                .contains("date: sun, 06 nov 1994 08:49:37 gmt\r\n"),
            "the stored Date is kept: {head}"
        );
        assert!(head.ends_with("\r\n") && !head.ends_with("\r\n\r\n"));
        assert_eq!(
            (hit.status(), &hit.body()[..], hit.age()),
            (200, &b"hello"[..], 0)
        );
        assert!(hit.has_header(&http::header::CONTENT_LENGTH));
        assert!(!hit.has_header(&http::HeaderName::from_static("x-cache-status")));
        s.touch(&hit);
        assert_eq!(s.stats().lru_items, 1);
        // stale: left to the general path
        assert!(s.fast_hit(&k, now + Duration::from_secs(61)).is_none());

        // no or a wrong Content-Length, or Vary: never
        let k2 = CacheKey::new("web http://h/nolen", "");
        fill_with(s, &k2, &[], b"x").await;
        assert!(s.fast_hit(&k2, now).is_none());
        let k3 = CacheKey::new("web http://h/badlen", "");
        fill_with(s, &k3, &[("Content-Length", "9")], b"x").await;
        assert!(s.fast_hit(&k3, now).is_none());
        let k4 = CacheKey::new("web http://h/vary", "");
        fill_with(s, &k4, &[("Content-Length", "1"), ("Vary", "A")], b"x").await;
        assert!(s.fast_hit(&k4, now).is_none());
        // the weight covers the rendered head: store and LRU agree
        let st = s.stats();
        assert_eq!(st.stored_bytes, st.lru_bytes, "{st:?}");
    }
}
