//! The in-memory response store behind `pingora-cache`: entries in sharded maps, their total
//! size bounded by `pingora-cache`'s LRU eviction manager (weight = bytes).
//!
//! `pingora-cache` ships only a test storage (`MemCache`: unbounded, no byte accounting), so
//! the store is ours. A body is kept whole and read back in one piece; writers fill a private
//! buffer and publish it at the end, and readers of a key being filled wait on the cache lock
//! instead of reading a partial body.

use super::StoreSettings;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::{EvictionManager, lru};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::lock::CacheLock;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

const SHARDS: usize = 16;
/// What an entry costs beyond its body and serialized header: the map slot, the key, the
/// `Arc` and the LRU node.
const ENTRY_OVERHEAD: usize = 256;

/// What is kept of a `CacheMeta`. Kept as parts rather than `CacheMeta::serialize` bytes:
/// rebuilding is a header clone, where deserializing decompresses the header with zstd on
/// every hit. What the parts lose is the entry's provenance when it differs from its
/// creation (after a full refetch of a primary `Vary` slot), which only makes older
/// secondary variants count as misses.
#[derive(Clone)]
struct StoredMeta {
    header: ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
}

impl StoredMeta {
    fn of(meta: &CacheMeta) -> StoredMeta {
        StoredMeta {
            header: meta.response_header().clone(),
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
        }
    }

    fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        // Age and freshness count from the last revalidation, which `new` cannot take.
        if self.updated != self.created {
            meta.set_epoch_override(self.updated);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    /// Bytes the header takes, roughly.
    fn size(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum()
    }
}

/// One stored response.
struct Entry {
    meta: StoredMeta,
    body: Bytes,
    /// `scheme://host/path?query` of the request, for purging by URL or prefix.
    url: Box<str>,
    compact: CompactCacheKey,
    /// The primary key's id, for a secondary `Vary` variant.
    variant_of: Option<u128>,
    weight: usize,
}

/// The store, its eviction manager and its cache lock. Pingora wants `&'static` references
/// to all three, so one is leaked per distinct [`StoreSettings`] and shared by every snapshot
/// with those settings (entries survive reloads that keep them).
pub struct MemoryStore {
    shards: Vec<RwLock<HashMap<u128, Arc<Entry>>>>,
    /// Secondary `Vary` variants per primary key, oldest first, to cap them.
    variants: Mutex<HashMap<u128, VecDeque<u128>>>,
    pub(super) eviction: lru::Manager<SHARDS>,
    pub(super) lock: CacheLock,
    max_object: usize,
    max_variants: usize,
    /// Set when no snapshot uses the store any more: it is emptied and stores nothing new.
    retired: AtomicBool,
}

impl MemoryStore {
    /// A new store for `settings`, leaked: it lives as long as the process.
    pub(super) fn leak(settings: &StoreSettings) -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            variants: Mutex::default(),
            eviction: lru::Manager::with_capacity(settings.max_bytes as usize, 64),
            lock: CacheLock::new(settings.lock_timeout),
            max_object: settings.max_object_bytes as usize,
            max_variants: settings.max_variants,
            retired: AtomicBool::new(false),
        }))
    }

    fn shard(&self, id: u128) -> &RwLock<HashMap<u128, Arc<Entry>>> {
        &self.shards[(id as usize) % SHARDS]
    }

    fn get(&self, id: u128) -> Option<Arc<Entry>> {
        self.shard(id).read().ok()?.get(&id).cloned()
    }

    /// Publishes a finished entry; gives back the weight it was admitted with.
    fn insert(&'static self, key: &CacheKey, entry: Entry) -> usize {
        let id = id_of(key);
        let weight = entry.weight;
        let old = self
            .shard(id)
            .write()
            .map(|mut s| s.insert(id, Arc::new(entry)));
        if let Ok(Some(old)) = old {
            crate::metrics::cache_stored(-(old.weight as i64), -1);
        }
        crate::metrics::cache_stored(weight as i64, 1);
        if let Some(primary) = variant_of(key) {
            self.cap_variants(primary, id);
        }
        weight
    }

    /// Keeps at most `max_variants` per URL: the primary slot and the newest secondaries.
    fn cap_variants(&self, primary: u128, id: u128) {
        let dropped = {
            let Ok(mut variants) = self.variants.lock() else {
                return;
            };
            let list = variants.entry(primary).or_default();
            list.retain(|v| *v != id);
            list.push_back(id);
            let keep = self.max_variants.saturating_sub(1);
            let extra = list.len().saturating_sub(keep);
            list.drain(..extra).collect::<Vec<_>>()
        };
        for old in dropped {
            self.remove(old);
        }
    }

    /// Removes one entry, from the maps and the eviction manager; true if it was there.
    fn remove(&self, id: u128) -> bool {
        let removed = self.shard(id).write().ok().and_then(|mut s| s.remove(&id));
        let Some(entry) = removed else {
            return false;
        };
        self.eviction
            .remove((&CacheEntryKey::key_only(entry.compact.clone())).into());
        crate::metrics::cache_stored(-(entry.weight as i64), -1);
        // Forget the variant, so the lists only hold what is stored.
        if let (Some(primary), Ok(mut variants)) = (entry.variant_of, self.variants.lock())
            && let Some(list) = variants.get_mut(&primary)
        {
            list.retain(|v| *v != id);
            if list.is_empty() {
                variants.remove(&primary);
            }
        }
        true
    }

    /// Removes every entry whose URL is `url` (`prefix: false`) or starts with it; all
    /// variants and per-identity entries of a URL go together. Gives the count removed.
    pub fn purge_urls(&self, url: &str, prefix: bool) -> usize {
        let matches = |e: &Entry| match prefix {
            true => e.url.starts_with(url),
            false => &*e.url == url,
        };
        let ids: Vec<u128> = self
            .shards
            .iter()
            .filter_map(|s| s.read().ok())
            .flat_map(|s| {
                s.iter()
                    .filter(|(_, e)| matches(e))
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.into_iter().filter(|id| self.remove(*id)).count()
    }

    /// Empties the store for good: called when the last snapshot using it is gone.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let ids: Vec<u128> = self
            .shards
            .iter()
            .filter_map(|s| s.read().ok())
            .flat_map(|s| s.keys().copied().collect::<Vec<_>>())
            .collect();
        for id in ids {
            self.remove(id);
        }
        if let Ok(mut v) = self.variants.lock() {
            v.clear();
        }
    }

    /// Entries held now (for tests and the admin answer).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.read().ok())
            .map(|s| s.len())
            .sum()
    }

    /// URLs with secondary variants tracked (they must go with their entries).
    #[cfg(test)]
    pub(super) fn variant_lists(&self) -> usize {
        self.variants.lock().map_or(0, |v| v.len())
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The map key of a cache key: its combined (primary and variance) hash.
fn id_of<K: CacheHashKey>(key: &K) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

/// The primary key's id when `key` names a secondary `Vary` variant.
fn variant_of(key: &CacheKey) -> Option<u128> {
    key.variance_bin()
        .map(|_| u128::from_be_bytes(key.primary_bin()))
}

/// The URL part of a primary key (see `key::CacheKeyParts::primary`): up to the first newline.
fn url_of(key: &CacheKey) -> Box<str> {
    let primary = key.primary_key();
    let end = primary
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(primary.len());
    String::from_utf8_lossy(&primary[..end]).into()
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(id_of(key)) else {
            return Ok(None);
        };
        let meta = entry.meta.to_meta();
        let end = entry.body.len();
        let hit = StoredBody {
            body: entry.body.clone(),
            range: 0..end,
            weight: entry.weight,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Fill {
            store: self,
            key: key.clone(),
            meta: StoredMeta::of(meta),
            body: BytesMut::new(),
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if !self.remove(id_of(target.key())) {
            return Ok(PurgeOutcome::NotFound);
        }
        if matches!(purge_type, PurgeType::Eviction) {
            crate::metrics::cache_evicted();
        }
        Ok(PurgeOutcome::Purged(None))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let id = id_of(key);
        let meta = StoredMeta::of(meta);
        let Ok(mut shard) = self.shard(id).write() else {
            return Ok(false);
        };
        // A purge may have removed the entry while it was being revalidated.
        let Some(old) = shard.get(&id) else {
            return Ok(false);
        };
        let entry = Entry {
            meta,
            body: old.body.clone(),
            url: old.url.clone(),
            compact: old.compact.clone(),
            variant_of: old.variant_of,
            weight: old.weight,
        };
        shard.insert(id, Arc::new(entry));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A stored body being read back, possibly a byte range of it.
struct StoredBody {
    body: Bytes,
    range: std::ops::Range<usize>,
    weight: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for StoredBody {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.clone())))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek past the stored body");
        }
        self.range = start..end;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A response being written into the store; published whole when it ends.
struct Fill {
    store: &'static MemoryStore,
    key: CacheKey,
    meta: StoredMeta,
    body: BytesMut,
    /// The body passed `max_object_bytes`: nothing is kept, and `finish` refuses.
    too_large: bool,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        // Over the limit the client still gets its answer; only the copy is dropped (Pingora's
        // own max-file-size check would fail the request mid-body instead).
        if self.too_large || self.body.len() + data.len() > self.store.max_object {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return Error::e_explain(
                ErrorType::InternalError,
                "response larger than cache.max_object_bytes, not stored",
            );
        }
        if self.store.retired.load(Ordering::Acquire) {
            return Error::e_explain(ErrorType::InternalError, "cache store retired by a reload");
        }
        let weight = self.body.len() + self.meta.size() + ENTRY_OVERHEAD;
        let entry = Entry {
            meta: self.meta,
            body: self.body.freeze(),
            url: url_of(&self.key),
            compact: self.key.to_compact(),
            variant_of: variant_of(&self.key),
            weight,
        };
        Ok(MissFinishType::Created(self.store.insert(&self.key, entry)))
    }
}
