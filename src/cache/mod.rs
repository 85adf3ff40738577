//! HTTP caching at the edge (RFC 9111, shared cache) on `pingora-cache`: which requests may
//! use the cache and under what key ([`CacheUse`]), which responses are stored and for how
//! long (`policy.rs`), and the bounded in-memory store they live in (`store.rs`).
//!
//! Bodies are stored as the upstream sent them, uncompressed (the upstream is asked for
//! `identity`), and compressed per client on the way out, so one entry serves every
//! `Accept-Encoding`.

mod config;
mod policy;
mod stage;
mod store;
#[cfg(test)]
mod tests;

pub use config::{CacheConfig, CacheStoreConfig};
pub use stage::{CacheStatus, CacheUse};
pub use store::MemoryStore;

use crate::invalid::Invalid;
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

/// What decides whether a store can be kept across a reload: changing any of it starts an
/// empty store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub max_variants: usize,
    pub lock_timeout: Duration,
}

/// The shared store of a snapshot. When the last snapshot holding it goes away (a reload
/// with other store settings), the store is emptied.
pub struct CacheStore {
    settings: StoreSettings,
    pub memory: &'static MemoryStore,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("settings", &self.settings)
            .finish()
    }
}

impl CacheStore {
    /// The largest response stored.
    pub fn max_object_bytes(&self) -> u64 {
        self.settings.max_object_bytes
    }

    /// How long a miss waits for another request filling the same key.
    pub fn lock_timeout(&self) -> Duration {
        self.settings.lock_timeout
    }
}

impl Drop for CacheStore {
    fn drop(&mut self) {
        self.memory.retire();
    }
}

/// The top-level `cache:` compiled: the store and the status header's name.
#[derive(Debug, Clone)]
pub struct CacheSection {
    pub store: Arc<CacheStore>,
    pub status_header: HeaderName,
}

impl CacheSection {
    /// Compiles the top-level `cache:` (defaults when absent), keeping `previous`'s store if
    /// its settings are the same.
    pub fn compile(
        cfg: Option<&CacheStoreConfig>,
        previous: Option<&CacheSection>,
    ) -> Result<CacheSection, Invalid> {
        let default = CacheStoreConfig::default();
        let (settings, status_header) = cfg.unwrap_or(&default).compile("cache")?;
        let store = match previous {
            Some(p) if p.store.settings == settings => p.store.clone(),
            _ => Arc::new(CacheStore {
                memory: MemoryStore::leak(&settings),
                settings,
            }),
        };
        Ok(CacheSection {
            store,
            status_header,
        })
    }
}

/// A route's compiled `cache:` block.
#[derive(Debug)]
pub struct RouteCache {
    pub store: Arc<CacheStore>,
    /// The route's name: part of every key, so routes sharing a path (`when:`) never share
    /// entries.
    route: String,
    status_header: HeaderName,
    /// Freshness for responses that give none (no `max-age`, `s-maxage` or `Expires`).
    ttl: Option<Duration>,
    /// `stale-while-revalidate` / `stale-if-error` seconds when the response sets none.
    stale_while_revalidate: Option<u32>,
    stale_if_error: Option<u32>,
    vary_by_identity: bool,
    key_headers: Vec<HeaderName>,
    /// Only these query parameters, sorted, go into the key; `None` keeps the whole query.
    key_query: Option<Vec<String>>,
    store_set_cookie: bool,
}
