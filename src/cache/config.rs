//! `cache:` at the top level (the store) and on a route (whether and how it is cached), and
//! their compile steps.

use super::{CacheSection, RouteCache, StoreSettings};
use crate::de::{de_duration, de_opt_duration};
use crate::invalid::Invalid;
use http::HeaderName;
use serde::Deserialize;
use std::time::Duration;

/// The top-level `cache:`: the one in-memory store every cached route shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheStoreConfig {
    /// Bytes of stored responses (bodies and headers); the least recently used go first.
    pub max_bytes: u64,
    /// The largest response stored; bigger ones are passed through uncached.
    pub max_object_bytes: u64,
    /// Most `Vary` variants kept per URL.
    pub max_variants: usize,
    /// How long concurrent misses for one key wait for the first one to fill it.
    #[serde(deserialize_with = "de_duration")]
    pub lock_timeout: Duration,
    /// The response header that says how the cache answered.
    pub status_header: String,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            max_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
            max_variants: 16,
            lock_timeout: Duration::from_secs(5),
            status_header: "X-Cache-Status".into(),
        }
    }
}

impl CacheStoreConfig {
    pub(super) fn compile(&self, key: &str) -> Result<(StoreSettings, HeaderName), Invalid> {
        let at = |k: &str| format!("{key}.{k}");
        if self.max_bytes == 0 {
            return Err(Invalid::new(at("max_bytes"), "must be more than 0"));
        }
        if self.max_object_bytes == 0 || self.max_object_bytes > self.max_bytes {
            return Err(Invalid::new(
                at("max_object_bytes"),
                "must be more than 0 and at most max_bytes",
            ));
        }
        if self.max_variants == 0 {
            return Err(Invalid::new(at("max_variants"), "must be at least 1"));
        }
        if self.lock_timeout.is_zero() {
            return Err(Invalid::new(at("lock_timeout"), "must be more than 0"));
        }
        let status_header = HeaderName::try_from(self.status_header.as_str()).map_err(|_| {
            Invalid::new(
                at("status_header"),
                format!("{:?} is not a header name", self.status_header),
            )
        })?;
        let settings = StoreSettings {
            max_bytes: self.max_bytes,
            max_object_bytes: self.max_object_bytes,
            max_variants: self.max_variants,
            lock_timeout: self.lock_timeout,
        };
        Ok((settings, status_header))
    }
}

/// A route's `cache:`: its responses are stored and served from the shared store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Freshness for responses without `s-maxage`, `max-age` or `Expires`; without it such
    /// responses are not stored.
    #[serde(deserialize_with = "de_opt_duration")]
    pub ttl: Option<Duration>,
    /// How long a stale entry may be served while it is refreshed, when the response does
    /// not say (`stale-while-revalidate`).
    #[serde(deserialize_with = "de_opt_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// How long a stale entry may be served when the upstream fails, when the response does
    /// not say (`stale-if-error`).
    #[serde(deserialize_with = "de_opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// Requests with credentials use the cache, each caller under its own key.
    pub vary_by_identity: bool,
    /// Request headers whose values become part of the key.
    pub key_headers: Vec<String>,
    /// Only these query parameters (in name order) become part of the key; all of the
    /// query as sent when absent.
    pub key_query: Option<Vec<String>>,
    /// Store responses that set cookies (they are passed through uncached otherwise).
    pub store_set_cookie: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            vary_by_identity: false,
            key_headers: Vec::new(),
            key_query: None,
            store_set_cookie: false,
        }
    }
}

impl CacheConfig {
    /// The route's cache settings over the shared store; `None` when `enabled: false`.
    pub fn compile(
        &self,
        key: &str,
        route: &str,
        section: &CacheSection,
    ) -> Result<Option<RouteCache>, Invalid> {
        if !self.enabled {
            return Ok(None);
        }
        let at = |k: &str| format!("{key}.{k}");
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Invalid::new(
                at("ttl"),
                "must be more than 0 (leave it out to store only responses that say how long)",
            ));
        }
        let seconds =
            |d: Option<Duration>| d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let key_headers = self
            .key_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::try_from(h.as_str()).map_err(|_| {
                    Invalid::new(
                        at(&format!("key_headers[{i}]")),
                        format!("{h:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_query = self.key_query.clone().map(|mut names| {
            names.sort();
            names.dedup();
            names
        });
        Ok(Some(RouteCache {
            store: section.store.clone(),
            route: route.to_string(),
            status_header: section.status_header.clone(),
            ttl: self.ttl,
            stale_while_revalidate: seconds(self.stale_while_revalidate),
            stale_if_error: seconds(self.stale_if_error),
            vary_by_identity: self.vary_by_identity,
            key_headers,
            key_query,
            store_set_cookie: self.store_set_cookie,
        }))
    }
}
