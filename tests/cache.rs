//! The response cache through the real gateway against a scriptable origin that counts its
//! requests and sets cache headers from the query (tests/common/origin.rs): RFC 9111 freshness
//! and storage rules, revalidation, stale answers, coalescing, variants, per-caller keys,
//! purge, the memory bound and reloads.

mod common;
use common::origin::{Origin, json_body};
use common::*;
use reqwest::header::HeaderMap;
use std::time::Duration;

const SECRET: &str = "cache-test-secret-cache-test-secret";

fn config(origin: &Origin, store: &str, admin: Option<u16>) -> String {
    let admin = admin.map_or(String::new(), |p| {
        format!("admin: {{listen: '127.0.0.1:{p}'}}\n")
    });
    format!(
        "{admin}access_log: {{path: access.log}}\n\
         compression: {{}}\n\
         cache: {{{store}}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n\
         services:\n  origin: {{backends: ['{0}']}}\n  canary: {{backends: ['{0}']}}\n\
         routes:\n\
         \x20 - {{path: /ttl, service: origin, cache: {{ttl: 30s}}}}\n\
         \x20 - {{path: /user, service: origin, auth: required, cache: {{vary_by_identity: true}}}}\n\
         \x20 - {{path: /cookies, service: origin, cache: {{store_set_cookie: true}}}}\n\
         \x20 - {{path: /sie, service: origin, cache: {{stale_if_error: 60s}}}}\n\
         \x20 - {{path: /plain, service: origin}}\n\
         \x20 - path: /split\n    cache: {{}}\n    split:\n\
         \x20     - {{service: origin, weight: 100}}\n\
         \x20     - {{service: canary, weight: 0, when: {{headers: {{x-canary: always}}}}}}\n\
         \x20 - {{path: /, service: origin, cache: {{}}}}\n",
        origin.addr
    )
}

fn gateway(origin: &Origin, store: &str) -> Gateway {
    Gateway::start(&config(origin, store, None))
}

/// GET `path` with extra headers; (status, headers, body).
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Vec<u8>) {
    request(gw, reqwest::Method::GET, path, headers).await
}

async fn request(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Vec<u8>) {
    let mut req = client().request(method, gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.bytes().await.unwrap().to_vec())
}

/// The cache status header (`X-Edge-Cache` where a test renames it).
fn cache_status(h: &HeaderMap) -> &str {
    h.get("x-cache-status")
        .or_else(|| h.get("x-edge-cache"))
        .map_or("(none)", |v| v.to_str().unwrap())
}

/// Two GETs of `path`: the two cache statuses and how many requests reached the origin.
async fn twice(gw: &Gateway, origin: &Origin, path: &str) -> (String, String, usize) {
    let before = origin.hits();
    let first = cache_status(&get(gw, path, &[]).await.1).to_string();
    let second = cache_status(&get(gw, path, &[]).await.1).to_string();
    (first, second, origin.hits() - before)
}

/// Whether the gateway's access log names a HIT.
fn access_log_has_hit(gw: &Gateway) -> bool {
    std::fs::read_to_string(gw.dir().join("access.log"))
        .is_ok_and(|s| s.contains(r#""cache":"HIT""#))
}

/// Waits out a one-second freshness lifetime (HTTP cache times have one-second resolution).
async fn let_expire() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

#[tokio::test]
async fn a_stored_answer_is_served_without_the_upstream_and_compressed_per_client() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let path = "/data?size=3000&cc=max-age%3D60";
    let (status, h, body) = get(&gw, path, &[("accept-encoding", "gzip")]).await;
    assert_eq!((status, cache_status(&h)), (200, "MISS"));
    assert_eq!(h["content-encoding"], "gzip");
    // The upstream is asked for an unencoded body: one entry serves every client.
    assert_eq!(origin.last_accept_encoding().as_deref(), Some("identity"));
    assert!(!body.is_empty());

    let (status, h, body) = get(&gw, path, &[("accept-encoding", "zstd")]).await;
    assert_eq!((status, cache_status(&h)), (200, "HIT"));
    assert_eq!(h["content-encoding"], "zstd");
    assert_eq!(zstd::decode_all(&body[..]).unwrap(), json_body(3000));
    assert!(h.contains_key("age"), "a HIT carries Age: {h:?}");
    let (_, h, body) = get(&gw, path, &[]).await;
    assert_eq!((cache_status(&h), body), ("HIT", json_body(3000)));
    let (status, h, body) = request(&gw, reqwest::Method::HEAD, path, &[]).await;
    assert_eq!((status, cache_status(&h), body.len()), (200, "HIT", 0));
    assert_eq!(
        origin.hits(),
        1,
        "only the first request reached the origin"
    );
    let logged = eventually(Duration::from_secs(3), || async { access_log_has_hit(&gw) }).await;
    assert!(logged, "the access log names the cache status");

    // Not for the cache: other methods, credentials, cookies.
    let post = request(&gw, reqwest::Method::POST, path, &[]).await;
    assert_eq!(cache_status(&post.1), "BYPASS");
    let auth = get(&gw, path, &[("authorization", "Bearer whatever")]).await;
    assert_eq!(cache_status(&auth.1), "BYPASS");
    let cookie = get(&gw, path, &[("cookie", "session=1")]).await;
    assert_eq!(cache_status(&cookie.1), "BYPASS");
    assert_eq!(origin.hits(), 4);
    // A HEAD miss fills the entry with a GET; the path is keyed normalized.
    let path = "/h//x/./y?size=1500&cc=max-age%3D60";
    let (_, h, body) = request(&gw, reqwest::Method::HEAD, path, &[]).await;
    assert_eq!((cache_status(&h), body.len()), ("MISS", 0));
    let (_, h, body) = get(&gw, "/h/x/y?size=1500&cc=max-age%3D60", &[]).await;
    assert_eq!((cache_status(&h), body), ("HIT", json_body(1500)));
    // Ranges and validators are answered from the entry.
    let (status, h, body) = get(&gw, path, &[("range", "bytes=0-9")]).await;
    assert_eq!(
        (status, cache_status(&h), body),
        (206, "HIT", json_body(1500)[..10].to_vec())
    );
    let lm = "/l?lm=Wed%2C%2021%20Oct%202015%2007%3A28%3A00%20GMT&cc=max-age%3D60";
    get(&gw, lm, &[]).await;
    let since = ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT");
    let (status, h, _) = get(&gw, lm, &[since]).await;
    assert_eq!((status, cache_status(&h)), (304, "HIT"));
    let hits = origin.hits();
    // A split route keeps each service's answers apart.
    let split = "/split?echo=x-gateway-route&cc=max-age%3D60";
    for (canary, status, service) in [
        ("no", "MISS", "origin"),
        ("always", "MISS", "canary"),
        ("no", "HIT", "origin"),
        ("always", "HIT", "canary"),
    ] {
        let (_, h, body) = get(&gw, split, &[("x-canary", canary)]).await;
        assert_eq!(
            (cache_status(&h), body.as_slice()),
            (status, service.as_bytes())
        );
    }
    assert_eq!(origin.hits(), hits + 2);
    // A route without `cache:` says nothing.
    let plain = get(&gw, "/plain?cc=max-age%3D60", &[]).await;
    assert!(!plain.1.contains_key("x-cache-status"));
}

#[tokio::test]
async fn freshness_and_storage_follow_the_response_headers() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let cases: &[(&str, &str, &str, usize)] = &[
        ("/a?cc=no-store", "MISS", "MISS", 2),
        ("/a?cc=private%2C%20max-age%3D60", "MISS", "MISS", 2),
        (
            "/a?cc=max-age%3D60%2C%20s-maxage%3D0&etag=%22e%22",
            "MISS",
            "REVALIDATED",
            2,
        ),
        ("/a?cc=max-age%3D0%2C%20s-maxage%3D60", "MISS", "HIT", 1),
        ("/a?nothing", "MISS", "MISS", 2),
        ("/ttl?nothing", "MISS", "HIT", 1),
        ("/ttl?cc=no-store", "MISS", "MISS", 2),
        (
            "/a?expires=Fri%2C%2001%20Jan%202100%2000%3A00%3A00%20GMT",
            "MISS",
            "HIT",
            1,
        ),
        (
            "/a?expires=Thu%2C%2001%20Jan%201970%2000%3A00%3A00%20GMT",
            "MISS",
            "EXPIRED",
            2,
        ),
        ("/a?status=500&cc=max-age%3D60", "MISS", "MISS", 2),
        ("/a?status=404&cc=max-age%3D60", "MISS", "HIT", 1),
        ("/a?vary=*&cc=max-age%3D60", "MISS", "MISS", 2),
        ("/a?cookie&cc=max-age%3D60", "MISS", "MISS", 2),
        ("/cookies?cookie&cc=max-age%3D60", "MISS", "HIT", 1),
    ];
    for (path, first, second, hits) in cases {
        let got = twice(&gw, &origin, path).await;
        assert_eq!(
            got,
            (first.to_string(), second.to_string(), *hits),
            "{path}"
        );
    }
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_their_validators() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let path = "/r?etag=%22v1%22&cc=max-age%3D1";
    let (_, h, first) = get(&gw, path, &[]).await;
    assert_eq!(cache_status(&h), "MISS");
    // A client's own conditional request is answered 304 from the entry.
    let (status, h, body) = get(&gw, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((status, cache_status(&h), body.len()), (304, "HIT", 0));
    assert_eq!(origin.hits(), 1);

    let_expire().await;
    let (status, h, body) = get(&gw, path, &[]).await;
    assert_eq!((status, cache_status(&h)), (200, "REVALIDATED"));
    assert_eq!(body, first, "the stored body is served after a 304");
    assert_eq!(origin.last_if_none_match().as_deref(), Some("\"v1\""));
    assert_eq!(origin.hits(), 2);
    // The 304 refreshed the entry.
    assert_eq!(cache_status(&get(&gw, path, &[]).await.1), "HIT");
    assert_eq!(origin.hits(), 2);

    // `no-cache`: stored, but every use asks the upstream first.
    let path = "/r?etag=%22n1%22&cc=no-cache";
    assert_eq!(
        twice(&gw, &origin, path).await,
        ("MISS".into(), "REVALIDATED".into(), 2)
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let path = "/s?count&cc=max-age%3D1%2C%20stale-while-revalidate%3D30";
    assert_eq!(get(&gw, path, &[]).await.2, br#"{"n":1}"#);
    let_expire().await;
    let (_, h, body) = get(&gw, path, &[]).await;
    assert_eq!(
        (cache_status(&h), body.as_slice()),
        ("STALE", &br#"{"n":1}"#[..])
    );
    let refreshed = eventually(Duration::from_secs(5), || async {
        let (_, h, body) = get(&gw, path, &[]).await;
        cache_status(&h) == "HIT" && body == br#"{"n":2}"#
    })
    .await;
    assert!(refreshed, "the entry was never refreshed:\n{}", gw.stderr());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn stale_if_error_covers_a_failing_and_a_vanished_upstream() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    // The window from the response, and the route's default for responses without one.
    let own = "/s?count&cc=max-age%3D1%2C%20stale-if-error%3D60";
    let route_default = "/sie?count&cc=max-age%3D1";
    let plain = "/x?count&cc=max-age%3D1";
    for p in [own, route_default, plain] {
        assert_eq!(cache_status(&get(&gw, p, &[]).await.1), "MISS");
    }
    let_expire().await;
    origin.set_failing(true);
    for p in [own, route_default] {
        let (status, h, body) = get(&gw, p, &[]).await;
        assert_eq!((status, cache_status(&h)), (200, "STALE"), "{p}");
        assert!(body.starts_with(br#"{"n":"#), "{p}");
    }
    // Without a window the failure is the answer.
    assert_eq!(get(&gw, plain, &[]).await.0, 503);

    drop(origin);
    let (status, h, _) = get(&gw, own, &[]).await;
    assert_eq!((status, cache_status(&h)), (200, "STALE"));
    assert!(get(&gw, plain, &[]).await.0 >= 500);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_cause_one_upstream_request() {
    let origin = Origin::start().await;
    let admin = free_port();
    let gw = Gateway::start(&config(&origin, "", Some(admin)));
    let path = "/c?delay=500&size=5000&cc=max-age%3D60";
    let requests = (0..100).map(|_| get(&gw, path, &[]));
    let answers = futures::future::join_all(requests).await;
    assert_eq!(
        origin.hits(),
        1,
        "100 concurrent misses, one upstream request"
    );
    for (status, _, body) in &answers {
        assert_eq!((*status, body.len()), (200, 5000));
    }
    let misses = answers
        .iter()
        .filter(|a| cache_status(&a.1) == "MISS")
        .count();
    assert_eq!(misses, 1);
    let text = metrics_text(admin).await;
    let waits = metric_value(&text, "apigateway_cache_lock_waits_total");
    assert!(waits >= 50.0, "lock waits {waits}:\n{text}");
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn vary_keeps_variants_apart_up_to_the_cap() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "max_variants: 2");
    let path = "/v?vary=x-lang&echo=x-lang&cc=max-age%3D60";
    for (lang, status) in [("en", "MISS"), ("de", "MISS"), ("en", "HIT"), ("de", "HIT")] {
        let (_, h, body) = get(&gw, path, &[("x-lang", lang)]).await;
        assert_eq!(
            (cache_status(&h), body.as_slice()),
            (status, lang.as_bytes())
        );
    }
    assert_eq!(origin.hits(), 2);
    // A third variant pushes out the oldest secondary one (de); the primary (en) stays.
    for (lang, status) in [("fr", "MISS"), ("en", "HIT"), ("de", "MISS")] {
        let (_, h, body) = get(&gw, path, &[("x-lang", lang)]).await;
        assert_eq!(
            (cache_status(&h), body.as_slice()),
            (status, lang.as_bytes()),
            "{lang}"
        );
    }
    // Vary: Accept-Encoding does not split the entry: the gateway encodes per client.
    let path = "/v?vary=accept-encoding&cc=max-age%3D60";
    let (_, h, _) = get(&gw, path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(cache_status(&h), "MISS");
    let (_, h, _) = get(&gw, path, &[("accept-encoding", "br")]).await;
    assert_eq!(
        (cache_status(&h), h["content-encoding"].to_str().unwrap()),
        ("HIT", "br")
    );
}

#[tokio::test]
async fn per_caller_keys_never_share_an_entry() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            hs256_token(SECRET, serde_json::json!({"sub": sub}))
        )
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let path = "/user?echo=x-user-id&cc=max-age%3D60";
    for (who, status) in [
        (&alice, "MISS"),
        (&bob, "MISS"),
        (&alice, "HIT"),
        (&bob, "HIT"),
    ] {
        let (code, h, body) = get(&gw, path, &[("authorization", who)]).await;
        let expected = if who == &alice { "alice" } else { "bob" };
        assert_eq!(code, 200);
        assert_eq!(
            (cache_status(&h), body.as_slice()),
            (status, expected.as_bytes())
        );
    }
    assert_eq!(origin.hits(), 2);
    // Without a token the route refuses before the cache is asked.
    assert_eq!(get(&gw, path, &[]).await.0, 401);
}

#[tokio::test]
async fn the_admin_listener_purges_one_url_or_a_prefix() {
    let origin = Origin::start().await;
    let admin = free_port();
    let gw = Gateway::start(&config(&origin, "", Some(admin)));
    let (a, b, other) = (
        "/p/a?cc=max-age%3D60",
        "/p/b?cc=max-age%3D60",
        "/q?cc=max-age%3D60",
    );
    for p in [a, b, other] {
        get(&gw, p, &[]).await;
        get(&gw, p, &[]).await;
    }
    let purge = |query: String| {
        let url = format!("http://127.0.0.1:{admin}/cache?{query}");
        async move {
            let resp = client().delete(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let base = format!("http://127.0.0.1:{}", gw.port);
    let (status, body) = purge(format!("url={}", encode(&format!("{base}{a}")))).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)));
    assert_eq!(cache_status(&get(&gw, a, &[]).await.1), "MISS");
    let (status, body) = purge(format!("prefix={}", encode(&format!("{base}/p/")))).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(2)));
    assert_eq!(cache_status(&get(&gw, b, &[]).await.1), "MISS");
    assert_eq!(cache_status(&get(&gw, other, &[]).await.1), "HIT");
    let (status, body) = purge(String::new()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("url="), "{body}");

    let text = metrics_text(admin).await;
    assert!(metric_value(&text, "apigateway_cache_requests_total{status=\"hit\"}") >= 4.0);
    assert!(metric_value(&text, "apigateway_cache_requests_total{status=\"miss\"}") >= 5.0);
}

#[tokio::test]
async fn memory_stays_within_max_bytes_and_big_answers_pass_uncached() {
    let origin = Origin::start().await;
    let admin = free_port();
    let gw = Gateway::start(&config(
        &origin,
        "max_bytes: 65536, max_object_bytes: 16384, status_header: X-Edge-Cache",
        Some(admin),
    ));
    // Ten times the store's size in distinct keys.
    for i in 0..160 {
        let (status, _, body) = get(&gw, &format!("/m{i}?size=4000&cc=max-age%3D60"), &[]).await;
        assert_eq!((status, body.len()), (200, 4000));
    }
    let bounded = eventually(Duration::from_secs(5), || async {
        let text = metrics_text(admin).await;
        let bytes = metric_value(&text, "apigateway_cache_bytes");
        bytes > 0.0 && bytes <= 65536.0
    })
    .await;
    let text = metrics_text(admin).await;
    assert!(bounded, "{text}");
    assert!(
        metric_value(&text, "apigateway_cache_evictions_total") >= 100.0,
        "{text}"
    );
    assert!(
        metric_value(&text, "apigateway_cache_entries") >= 10.0,
        "{text}"
    );
    // Eviction is least-recently-used per shard of the store (Pingora's LRU picks the
    // fuller of two random shards), so which of the last keys survive is not fixed; that
    // recent ones do is.
    let mut recent_hits = 0;
    for i in 150..160 {
        let (_, h, _) = get(&gw, &format!("/m{i}?size=4000&cc=max-age%3D60"), &[]).await;
        assert!(h.contains_key("x-edge-cache"), "the renamed status header");
        recent_hits += usize::from(&h["x-edge-cache"] == "HIT");
    }
    assert!(
        recent_hits >= 3,
        "{recent_hits} of the 10 newest entries were kept"
    );

    // Over max_object_bytes: answered whole, never stored (with and without a length).
    for path in [
        "/big?size=40000&cc=max-age%3D60",
        "/big?size=40000&chunked&cc=max-age%3D60",
    ] {
        for _ in 0..2 {
            let (status, h, body) = get(&gw, path, &[]).await;
            assert_eq!(
                (status, body.len(), cache_status(&h)),
                (200, 40000, "MISS"),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn entries_survive_a_reload_that_keeps_the_store_settings() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "");
    let path = "/k?cc=max-age%3D60";
    get(&gw, path, &[]).await;
    let reload = |store: &str, marker: &str| {
        let body = config(&origin, store, None).replace("/plain", marker);
        gw.rewrite_config(&body);
        gw.signal("HUP");
    };
    reload("", "/plain2");
    let live = eventually(Duration::from_secs(10), || async {
        !get(&gw, "/plain2", &[])
            .await
            .1
            .contains_key("x-cache-status")
    })
    .await;
    assert!(live, "{}", gw.stderr());
    assert_eq!(cache_status(&get(&gw, path, &[]).await.1), "HIT");
    // New store settings start an empty store.
    reload("max_bytes: 2000000", "/plain3");
    let live = eventually(Duration::from_secs(10), || async {
        !get(&gw, "/plain3", &[])
            .await
            .1
            .contains_key("x-cache-status")
    })
    .await;
    assert!(live, "{}", gw.stderr());
    assert_eq!(cache_status(&get(&gw, path, &[]).await.1), "MISS");
}

#[test]
fn bad_cache_settings_are_config_errors_with_key_paths() {
    let yaml = |top: &str, route: &str| {
        format!(
            "listen: ['127.0.0.1:0']\n{top}services:\n  a: {{backends: ['127.0.0.1:1']}}\n\
             routes:\n  - {{path: /, service: a, {route}}}\n"
        )
    };
    for (top, route, expected) in [
        ("", "cache: {ttl: 0s}", "routes[0].cache.ttl"),
        ("", "cache: {ttl: soon}", "invalid duration"),
        ("", "cache: {ttl: 1s, colour: red}", "colour"),
        (
            "",
            "cache: {key_headers: ['bad header']}",
            "routes[0].cache.key_headers[0]",
        ),
        ("cache: {max_bytes: 0}\n", "cache: {}", "cache.max_bytes"),
        (
            "cache: {max_bytes: 10, max_object_bytes: 20}\n",
            "cache: {}",
            "cache.max_object_bytes",
        ),
        (
            "cache: {status_header: 'x cache'}\n",
            "cache: {}",
            "cache.status_header",
        ),
        (
            "cache: {lock_timeout: 0s}\n",
            "cache: {}",
            "cache.lock_timeout",
        ),
    ] {
        let (ok, out, _) = check_config(&yaml(top, route));
        assert!(!ok, "accepted {top} {route}");
        assert!(out.contains(expected), "{expected:?} missing from: {out}");
    }
    let aggregate = "listen: ['127.0.0.1:0']\nservices:\n  a: {backends: ['127.0.0.1:1']}\n\
        routes:\n  - path: /\n    cache: {}\n    aggregate:\n      calls: [{key: x, service: a, path: /x}]\n";
    let (ok, out, _) = check_config(aggregate);
    assert!(!ok && out.contains("routes[0].cache"), "{out}");
}
