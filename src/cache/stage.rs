//! The cache stage of one request: whether it may use its route's cache and under which
//! key, what the cache did (`X-Cache-Status`), and what is counted.

use super::RouteCache;
use super::policy::{KeyParts, variance};
use crate::edge::NormalizedPath;
use crate::identity::Identity;
use http::HeaderValue;
use http::header::{ACCEPT_ENCODING, AUTHORIZATION, COOKIE, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorSource, ErrorType};
use pingora_cache::key::HashBinary;
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, HttpCache, NoCacheReason, RespCacheable,
};
use std::sync::Arc;

/// How the cache answered, as `X-Cache-Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry, without asking the upstream.
    Hit,
    /// Nothing usable was stored; the upstream answered (and the answer may now be stored).
    Miss,
    /// A stale entry was replaced by the upstream's new answer.
    Expired,
    /// A stale entry was served: while it is refreshed in the background, or because the
    /// upstream failed.
    Stale,
    /// A stale entry was confirmed by the upstream (304) and served.
    Revalidated,
    /// The request may not use the cache (method, credentials, upgrade).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    pub(super) fn of(phase: CachePhase, bypassed: bool) -> Option<CacheStatus> {
        use CachePhase as P;
        Some(match phase {
            P::Hit => CacheStatus::Hit,
            P::Miss => CacheStatus::Miss,
            P::Expired => CacheStatus::Expired,
            P::Stale | P::StaleUpdating => CacheStatus::Stale,
            P::Revalidated | P::RevalidatedNoCache(_) => CacheStatus::Revalidated,
            P::Bypass => CacheStatus::Bypass,
            P::Disabled(NoCacheReason::NeverEnabled) if bypassed => CacheStatus::Bypass,
            P::Disabled(NoCacheReason::NeverEnabled) | P::Uninit | P::CacheKey => return None,
            // Looked up, then the answer turned out not to be storable.
            P::Disabled(_) => CacheStatus::Miss,
        })
    }
}

/// The request's use of the cache, decided once it is admitted.
#[derive(Default)]
pub struct CacheUse {
    /// The route's cache settings, when the route has any.
    route: Option<Arc<RouteCache>>,
    /// The key to look up, until Pingora takes it; `None` with a route means bypassed.
    key: Option<CacheKey>,
    /// Whether the request was allowed to use the cache.
    enabled: bool,
    status: Option<CacheStatus>,
}

impl CacheUse {
    /// Decides, right after admission, whether the request may use its route's cache and
    /// builds its key. GET and HEAD only; a request with credentials (`Authorization`,
    /// cookies, a verified caller) bypasses unless the route keys by identity.
    pub fn plan(
        route: Option<&Arc<RouteCache>>,
        req: &RequestHeader,
        path: &NormalizedPath<'_>,
        tls: bool,
        identity: Option<&Identity>,
        service: &str,
    ) -> CacheUse {
        let Some(route) = route else {
            return CacheUse::default();
        };
        let mut stage = CacheUse {
            route: Some(route.clone()),
            ..CacheUse::default()
        };
        let method_ok = matches!(req.method, http::Method::GET | http::Method::HEAD);
        let upgrade = req.headers.contains_key(http::header::UPGRADE);
        let credentials = identity.is_some()
            || req.headers.contains_key(AUTHORIZATION)
            || req.headers.contains_key(COOKIE);
        let who = match (credentials, route.vary_by_identity) {
            (false, _) => None,
            (true, true) => match identity.and_then(RouteCache::identity_key) {
                Some(who) => Some(who),
                // Credentials but no verified caller to key them by: never shared.
                None => return stage,
            },
            (true, false) => return stage,
        };
        if !method_ok || upgrade {
            return stage;
        }
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("")
            .to_ascii_lowercase();
        let primary = route.primary_key(&KeyParts {
            tls,
            host: &host,
            path: &path.path,
            query: req.uri.query(),
            req,
            identity: who.as_deref(),
            service,
        });
        stage.key = Some(CacheKey::new(primary, ""));
        stage.enabled = true;
        stage
    }

    /// Turns Pingora's cache on for this request, over the route's store, eviction and lock
    /// (`request_cache_filter`).
    pub fn enable(&self, cache: &mut HttpCache) {
        let (Some(route), true) = (&self.route, self.enabled) else {
            return;
        };
        let store = route.store.memory;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(route.store.lock_timeout());
        cache.enable(
            store,
            Some(&store.eviction),
            None,
            Some(&store.lock),
            Some(overrides),
        );
    }

    /// The key, handed to Pingora once (`cache_key_callback`).
    pub fn take_key(&mut self) -> pingora::Result<CacheKey> {
        self.key
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key already taken"))
    }

    /// The upstream is asked for an unencoded body, so the entry serves every client (the
    /// gateway compresses per client on the way out).
    pub fn on_upstream_request(&self, upstream: &mut RequestHeader) -> pingora::Result<()> {
        if self.enabled {
            upstream.insert_header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))?;
        }
        Ok(())
    }

    /// Whether and how long the upstream's response is stored (`response_cache_filter`).
    pub fn response_cacheable(&self, resp: &ResponseHeader) -> RespCacheable {
        match &self.route {
            Some(route) => route.response_meta(resp),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        }
    }

    /// The variant of a stored response this request wants (`cache_vary_filter`).
    pub fn variance(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        variance(meta, req)
    }

    /// A stale entry may stand in while it is refreshed, and when the upstream fails: cannot
    /// be reached, times out, has no healthy backend, or answers 5xx. Pingora has already
    /// checked the entry's own `stale-while-revalidate` / `stale-if-error` window.
    pub fn serve_stale(error: Option<&Error>) -> bool {
        match error {
            None => true,
            Some(e) => {
                matches!(e.etype(), ErrorType::HTTPStatus(code) if *code >= 500)
                    || e.esource() == &ErrorSource::Upstream
            }
        }
    }

    /// Says how the cache answered, in the configured status header.
    pub fn on_response(&mut self, cache: &HttpCache, header: &mut ResponseHeader) {
        let Some(route) = &self.route else {
            return;
        };
        self.status = CacheStatus::of(cache.phase(), !self.enabled);
        if let Some(status) = self.status {
            let _ = header.insert_header(
                route.status_header.clone(),
                HeaderValue::from_static(status.as_str()),
            );
        }
    }

    /// How the cache answered, once the response header is known.
    pub fn status(&self) -> Option<CacheStatus> {
        self.status
    }

    /// Counts the outcome once the request is done.
    pub fn record(&self, cache: &HttpCache) {
        if let Some(status) = self.status {
            crate::metrics::cache_outcome(status.as_str());
        }
        if self.enabled && cache.lock_duration().is_some() {
            crate::metrics::cache_lock_wait();
        }
    }
}
