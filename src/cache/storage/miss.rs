//! Pingora's write handle for one response being stored. The copy stays private to the
//! writer until `finish`, so a reader never sees half an object and an object that outgrows
//! the limit simply stops being copied (the store's design notes are in [`super`]).

use super::fast::FastHead;
use super::{BinaryMeta, Entry, Store, ENTRY_OVERHEAD};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_error::{Error, ErrorType, Result};
use std::sync::Arc;

/// Copies one response into the store as it streams to the client.
pub(super) struct Writer {
    pub(super) store: &'static Store,
    pub(super) primary: HashBinary,
    pub(super) variance: Option<HashBinary>,
    pub(super) user_tag: Box<str>,
    pub(super) url: Box<str>,
    pub(super) meta: BinaryMeta,
    pub(super) body: Vec<u8>,
    pub(super) oversized: bool,
    /// The fast path's rendering of `meta`, and the Content-Length it requires.
    pub(super) fast: Option<(FastHead, usize)>,
}

#[async_trait]
impl HandleMiss for Writer {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.oversized {
            return Ok(());
        }
        if self.body.len() + data.len() > self.store.max_object() {
            // Free the partial copy now rather than when the transfer ends.
            self.oversized = true;
            self.body = Vec::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.oversized {
            return Error::e_explain(
                ErrorType::InternalError,
                "response exceeds the cache's object size limit; not stored",
            );
        }
        let w = *self;
        let mut body = w.body;
        body.shrink_to_fit();
        let body_len = body.len();
        let fast = w.fast.and_then(|(f, len)| (len == body_len).then_some(f));
        let weight = body_len
            + w.meta.0.len()
            + w.meta.1.len()
            + fast.as_ref().map_or(0, FastHead::weight)
            + ENTRY_OVERHEAD;
        let entry = Arc::new(Entry {
            variance: w.variance,
            user_tag: w.user_tag,
            url: w.url,
            meta: w.meta,
            body: Bytes::from(body),
            weight,
            fast,
            touched: std::sync::atomic::AtomicU64::new(super::unix_secs(
                std::time::SystemTime::now(),
            )),
        });
        w.store.put(w.primary, entry)?;
        Ok(MissFinishType::Created(weight))
    }
}
