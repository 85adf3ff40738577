//! Unit tests of the cache capability: keys, bypass, storage decisions, variants and the
//! store's bookkeeping. tests/cache.rs drives the same through the real gateway.

use super::policy::{KeyParts, variance};
use super::*;
use crate::testing::response;
use pingora::http::RequestHeader;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use std::time::SystemTime;

fn section(store: &str) -> CacheSection {
    let cfg: CacheStoreConfig = serde_yaml::from_str(store).unwrap();
    CacheSection::compile(Some(&cfg), None).unwrap()
}

fn route(yaml: &str) -> RouteCache {
    let cfg: CacheConfig = serde_yaml::from_str(yaml).unwrap();
    cfg.compile("cache", "r", &section("{}")).unwrap().unwrap()
}

fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    crate::testing::request("GET", uri, headers)
}

fn key_of(route: &RouteCache, uri: &str, headers: &[(&str, &str)], who: Option<&str>) -> String {
    let req = request(uri, headers);
    route.primary_key(&KeyParts {
        tls: false,
        host: "api.test",
        path: req.uri.path(),
        query: req.uri.query(),
        req: &req,
        identity: who,
        service: "svc",
    })
}

#[test]
fn the_key_starts_with_the_url_and_frames_every_extra_part() {
    let plain = route("{}");
    assert_eq!(
        key_of(&plain, "/a?x=1&y=2", &[], None),
        "http://api.test/a?x=1&y=2\nr1:rs3:svc"
    );
    let keyed = route("{key_headers: [x-tenant], key_query: [y, x]}");
    let k = key_of(
        &keyed,
        "/a?z=9&y=2&x=1",
        &[("x-tenant", "t1")],
        Some("sub:alice"),
    );
    assert_eq!(
        k,
        "http://api.test/a?x=1&y=2\nr1:rs3:svch8:x-tenant3:t1,i9:sub:alice"
    );
    // Only allowed parameters, in name order: these two share an entry.
    assert_eq!(
        key_of(&keyed, "/a?y=2&x=1", &[], None),
        key_of(&keyed, "/a?utm=3&x=1&y=2", &[], None)
    );
    // A value cannot pose as the next part.
    assert_ne!(
        key_of(&keyed, "/a", &[("x-tenant", "t1,i9:sub:alice")], None),
        key_of(&keyed, "/a", &[("x-tenant", "t1")], Some("sub:alice"))
    );
}

#[test]
fn credentials_bypass_unless_the_route_keys_by_identity() {
    let path = crate::edge::normalize_path("/a/").unwrap();
    let plan = |r: &Arc<RouteCache>, headers: &[(&str, &str)]| {
        let mut stage = CacheUse::plan(Some(r), &request("/a/", headers), &path, true, None, "svc");
        stage
            .take_key()
            .ok()
            .map(|k| k.primary_key_str().unwrap().to_string())
    };
    let shared = Arc::new(route("{}"));
    assert_eq!(
        plan(&shared, &[]).as_deref(),
        Some("https:///a/\nr1:rs3:svc")
    );
    assert_eq!(plan(&shared, &[("authorization", "Bearer t")]), None);
    assert_eq!(plan(&shared, &[("cookie", "a=1")]), None);
    assert_eq!(plan(&shared, &[("upgrade", "websocket")]), None);
    // Opted in, but no verified caller to key by: still never shared.
    let per_user = Arc::new(route("{vary_by_identity: true}"));
    assert_eq!(plan(&per_user, &[("authorization", "Bearer t")]), None);
}

#[test]
fn storage_follows_the_response_headers() {
    let stored = |r: &RouteCache, status: u16, headers: &[(&str, &str)]| {
        matches!(
            r.response_meta(&response(status, headers)),
            RespCacheable::Cacheable(_)
        )
    };
    let plain = route("{}");
    let ttl = route("{ttl: 10s}");
    assert!(stored(&plain, 200, &[("cache-control", "max-age=5")]));
    assert!(!stored(&plain, 200, &[]), "no freshness and no ttl");
    assert!(stored(&ttl, 200, &[]));
    assert!(stored(&ttl, 404, &[]));
    assert!(!stored(&ttl, 302, &[]), "302 only with explicit freshness");
    assert!(stored(&plain, 302, &[("cache-control", "max-age=5")]));
    assert!(!stored(&ttl, 500, &[("cache-control", "max-age=5")]));
    for refused in ["no-store", "private", "private, max-age=60"] {
        assert!(
            !stored(&ttl, 200, &[("cache-control", refused)]),
            "{refused}"
        );
    }
    assert!(!stored(&ttl, 200, &[("vary", "accept, *")]));
    assert!(!stored(&ttl, 200, &[("set-cookie", "a=1")]));
    assert!(stored(
        &route("{ttl: 10s, store_set_cookie: true}"),
        200,
        &[("set-cookie", "a=1")]
    ));
    assert!(
        !stored(&ttl, 200, &[("content-length", "2000000")]),
        "over max_object_bytes"
    );

    // no-cache: stored, already stale. The route's stale windows fill in unsaid ones.
    let r = route("{stale_if_error: 30s, stale_while_revalidate: 5s}");
    let RespCacheable::Cacheable(meta) =
        r.response_meta(&response(200, &[("cache-control", "no-cache")]))
    else {
        panic!("no-cache is stored");
    };
    assert!(!meta.is_fresh(SystemTime::now()));
    assert_eq!(
        (meta.stale_if_error_sec(), meta.stale_while_revalidate_sec()),
        (30, 5)
    );
    let RespCacheable::Cacheable(meta) = r.response_meta(&response(
        200,
        &[("cache-control", "max-age=9, stale-if-error=1")],
    )) else {
        panic!("stored");
    };
    assert_eq!((meta.stale_if_error_sec(), meta.fresh_sec()), (1, 9));
}

#[test]
fn variants_follow_vary_but_not_accept_encoding() {
    let meta = |vary: &str| {
        CacheMeta::new(
            SystemTime::now(),
            SystemTime::now(),
            0,
            0,
            response(200, &[("vary", vary)]),
        )
    };
    let en = request(
        "/",
        &[("accept-language", "en"), ("accept-encoding", "gzip")],
    );
    let en_br = request("/", &[("accept-language", "en"), ("accept-encoding", "br")]);
    let de = request("/", &[("accept-language", "de")]);
    let m = meta("Accept-Language, Accept-Encoding");
    assert!(variance(&m, &en).is_some());
    assert_eq!(variance(&m, &en), variance(&m, &en_br));
    assert_ne!(variance(&m, &en), variance(&m, &de));
    assert_eq!(variance(&meta("accept-encoding"), &en), None);
}

#[test]
fn status_names_follow_the_cache_phase() {
    use pingora_cache::{CachePhase as P, NoCacheReason as R};
    let of = CacheStatus::of;
    assert_eq!(of(P::Hit, false), Some(CacheStatus::Hit));
    assert_eq!(of(P::StaleUpdating, false), Some(CacheStatus::Stale));
    assert_eq!(
        of(P::Disabled(R::OriginNotCache), false),
        Some(CacheStatus::Miss)
    );
    assert_eq!(
        of(P::Disabled(R::NeverEnabled), true),
        Some(CacheStatus::Bypass)
    );
    assert_eq!(of(P::Disabled(R::NeverEnabled), false), None);
    assert_eq!(CacheStatus::Revalidated.as_str(), "REVALIDATED");
}

/// Writes `body` under `key` the way Pingora does on a miss.
async fn fill(store: &'static MemoryStore, key: &CacheKey, body: &[u8]) {
    let meta = CacheMeta::new(
        SystemTime::now(),
        SystemTime::now(),
        0,
        0,
        response(200, &[]),
    );
    let span = Span::inactive().handle();
    let mut miss = store.get_miss_handler(key, &meta, &span).await.unwrap();
    miss.write_body(bytes::Bytes::copy_from_slice(body), true)
        .await
        .unwrap();
    // A retired store refuses; the callers check what was kept.
    let _ = miss.finish().await;
}

#[tokio::test]
async fn the_store_purges_by_url_caps_variants_and_empties_when_retired() {
    let section = section("{max_variants: 2, max_object_bytes: 100, max_bytes: 1000}");
    let store = section.store.memory;
    let span = Span::inactive().handle();
    let primary = "http://h/a?x\nextra";
    fill(store, &CacheKey::new(primary, ""), b"one").await;
    fill(store, &CacheKey::new("http://h/ab\n", ""), b"two").await;
    let (meta, mut hit) = store
        .lookup(&CacheKey::new(primary, ""), &span)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.response_header().status, 200);
    assert_eq!(hit.read_body().await.unwrap().unwrap(), "one");

    // Secondary variants: at most max_variants - 1 besides the primary slot.
    for v in [1u8, 2] {
        let mut key = CacheKey::new(primary, "");
        key.set_variance_key([v; 16]);
        fill(store, &key, b"variant").await;
    }
    assert_eq!(store.len(), 3, "the older secondary variant was dropped");

    // A body over max_object_bytes is refused at the end, and nothing is kept.
    let big = CacheKey::new("http://h/big\n", "");
    let meta = CacheMeta::new(
        SystemTime::now(),
        SystemTime::now(),
        0,
        0,
        response(200, &[]),
    );
    let mut miss = store.get_miss_handler(&big, &meta, &span).await.unwrap();
    miss.write_body(vec![0; 101].into(), true).await.unwrap();
    assert!(miss.finish().await.is_err());
    assert!(store.lookup(&big, &span).await.unwrap().is_none());

    assert_eq!(
        store.purge_urls("http://h/a?x", false),
        2,
        "URL and its variant"
    );
    assert_eq!(store.purge_urls("http://h/", true), 1);
    assert_eq!(
        store.variant_lists(),
        0,
        "variant lists go with their entries"
    );
    assert!(store.is_empty());

    fill(store, &CacheKey::new(primary, ""), b"one").await;
    // The same settings keep the store; others start a new one, and dropping the last
    // section holding the old store empties it.
    let same = CacheSection::compile(
        Some(
            &serde_yaml::from_str("{max_variants: 2, max_object_bytes: 100, max_bytes: 1000}")
                .unwrap(),
        ),
        Some(&section),
    )
    .unwrap();
    assert!(std::ptr::eq(same.store.memory, store));
    let other = CacheSection::compile(None, Some(&section)).unwrap();
    assert!(!std::ptr::eq(other.store.memory, store));
    drop((section, same));
    assert!(store.is_empty());
    fill(store, &CacheKey::new(primary, ""), b"late").await;
    assert!(store.is_empty(), "a retired store takes nothing new");
}
