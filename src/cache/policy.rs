//! Which responses are stored and for how long (RFC 9111 §3 and §4.2), how `Vary` splits an
//! entry into variants (§4.1), and the key a request is stored under.

use super::RouteCache;
use crate::identity::Identity;
use http::header::{ACCEPT_ENCODING, SET_COOKIE, VARY};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::filters::calculate_expires_header_time;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable, VarianceBuilder};
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// Statuses stored under the route's default `ttl` (heuristically cacheable, RFC 9110
/// §15.1; 206 is left out because the gateway always fetches whole bodies).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses stored when the response itself says for how long.
fn explicitly_cacheable(status: u16) -> bool {
    heuristically_cacheable(status) || matches!(status, 302 | 307)
}

impl RouteCache {
    /// Decides whether a response is stored and builds its metadata: explicit freshness
    /// (`s-maxage`, `max-age`, `Expires`) first, else the route's `ttl`; `no-store`,
    /// `private`, `Vary: *` and (unless allowed) `Set-Cookie` keep it out; `no-cache` stores
    /// it stale so every use revalidates.
    pub(super) fn response_meta(&self, resp: &ResponseHeader) -> RespCacheable {
        use RespCacheable::Uncacheable;
        if varies_on_everything(resp) {
            return Uncacheable(NoCacheReason::Custom("vary *"));
        }
        if !self.store_set_cookie && resp.headers.contains_key(SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if crate::edge::declared_length(&resp.headers)
            .is_some_and(|n| n > self.store.max_object_bytes())
        {
            return Uncacheable(NoCacheReason::ResponseTooLarge);
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc
            .as_ref()
            .is_some_and(|c| c.is_cacheable() == Cacheable::No)
        {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let status = resp.status.as_u16();
        let explicit = cc
            .as_ref()
            .and_then(|c| c.fresh_duration())
            .map(|ttl| fresh_until(now, ttl))
            .or_else(|| calculate_expires_header_time(resp));
        let until = match (explicit, self.ttl) {
            (Some(until), _) if explicitly_cacheable(status) => until,
            (None, Some(ttl)) if heuristically_cacheable(status) => fresh_until(now, ttl),
            _ => return Uncacheable(NoCacheReason::OriginNotCache),
        };
        let seconds =
            |d: Option<Duration>| d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let swr = seconds(
            cc.as_ref()
                .and_then(|c| c.serve_stale_while_revalidate_duration()),
        )
        .or(self.stale_while_revalidate)
        .unwrap_or(0);
        let sie = seconds(cc.as_ref().and_then(|c| c.serve_stale_if_error_duration()))
            .or(self.stale_if_error)
            .unwrap_or(0);
        let mut header = resp.clone();
        if let Some(c) = &cc {
            c.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(until, now, swr, sie, header))
    }
}

/// `now + ttl`; a zero ttl (`no-cache`, `max-age=0`) is already stale.
fn fresh_until(now: SystemTime, ttl: Duration) -> SystemTime {
    if ttl.is_zero() {
        now - Duration::from_secs(1)
    } else {
        now + ttl
    }
}

/// The listed `Vary` header names, lowercase.
fn vary_names(headers: &http::HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

fn varies_on_everything(resp: &ResponseHeader) -> bool {
    vary_names(&resp.headers).any(|n| n == "*")
}

/// The variant of a stored response a request asks for: the values of the request headers
/// its `Vary` names. `Accept-Encoding` is left out: the upstream is asked for `identity` and
/// the gateway encodes per client, so one entry serves every encoding.
pub(super) fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for name in vary_names(meta.headers()) {
        if name == ACCEPT_ENCODING.as_str() {
            continue;
        }
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(v.as_bytes());
        }
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// The parts of a request its key is made of.
pub(super) struct KeyParts<'a> {
    pub tls: bool,
    pub host: &'a str,
    /// The normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub req: &'a RequestHeader,
    /// The caller, when the route keys by identity.
    pub identity: Option<&'a str>,
    /// The service chosen for the request (a split route's entries are kept apart).
    pub service: &'a str,
}

impl RouteCache {
    /// The primary key: `scheme://host/path?query` (the URL a purge names), then on the next
    /// line, each length-prefixed so no value can pose as another, the route and service, the
    /// configured headers and the caller. The method is not in it: only GET and HEAD are cached, and HEAD is answered
    /// from the GET entry.
    pub(super) fn primary_key(&self, parts: &KeyParts<'_>) -> String {
        let scheme = if parts.tls { "https" } else { "http" };
        let mut key = format!("{scheme}://{}{}", parts.host, parts.path);
        if let Some(query) = self.key_query_of(parts.query) {
            key.push('?');
            key.push_str(&query);
        }
        key.push('\n');
        let _ = write!(
            key,
            "r{}:{}s{}:{}",
            self.route.len(),
            self.route,
            parts.service.len(),
            parts.service
        );
        for name in &self.key_headers {
            let mut value = Vec::new();
            for v in parts.req.headers.get_all(name) {
                value.extend_from_slice(v.as_bytes());
                value.push(b',');
            }
            let value = String::from_utf8_lossy(&value);
            let _ = write!(
                key,
                "h{}:{}{}:{}",
                name.as_str().len(),
                name,
                value.len(),
                value
            );
        }
        if let Some(who) = parts.identity {
            let _ = write!(key, "i{}:{}", who.len(), who);
        }
        key
    }

    /// The query as it goes into the key: as sent, or only the allowed parameters sorted by
    /// name (so `?b=2&a=1` and `?a=1&b=2` share an entry).
    fn key_query_of(&self, query: Option<&str>) -> Option<String> {
        let query = query.filter(|q| !q.is_empty());
        let Some(allowed) = &self.key_query else {
            return query.map(str::to_string);
        };
        let mut pairs: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                allowed.iter().any(|a| a == name)
            })
            .collect();
        pairs.sort();
        (!pairs.is_empty()).then(|| pairs.join("&"))
    }

    /// Who the caller is for the key: the consumer, else the token's subject.
    pub(super) fn identity_key(identity: &Identity) -> Option<String> {
        match (&identity.consumer, &identity.subject) {
            (Some(c), _) => Some(format!("consumer:{}", c.id)),
            (None, Some(sub)) => Some(format!("sub:{sub}")),
            (None, None) => None,
        }
    }
}
