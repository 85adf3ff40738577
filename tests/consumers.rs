//! Consumers through the real gateway (issue #17): API keys, Basic credentials, consumer
//! identity upstream, per-consumer limits and quotas. (IP lists: `tests/ip_restriction.rs`.)

mod common;
use common::*;
use serde_json::Value;

const SECRET: &str = "consumer-test-secret-0123456789-abcdefgh";

/// A random API key and its stored hash line, made here rather than by the gateway.
fn minted_key() -> (String, String) {
    use sha2::{Digest, Sha256};
    let key = format!("test_{}", uuid::Uuid::new_v4().simple());
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (key, format!("sha256:{hex}"))
}

fn argon2_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn header<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body["headers"][name].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_consumers_and_never_reach_the_upstream() {
    let (k1, h1) = minted_key();
    let (k2, h2) = minted_key();
    let (_up, gw) = echo_gateway(
        &format!(
            "consumer_auth:\n  api_key: {{headers: [apikey, X-API-Key], query: api_key}}\n\
             consumers:\n\
             \x20 - {{id: partner, username: Partner Inc, groups: [partners], headers: {{X-Tier: gold}}, api_keys: [{{hash: '{h1}', name: ci, created: '2026-12-01'}}]}}\n\
             \x20 - {{id: lapsed, api_keys: [{{hash: '{h2}', expires: '2020-01-01'}}]}}\n"
        ),
        "  - {path: /partner, service: up, auth: required, auth_methods: [api_key]}\n\
         \x20 - {path: /beta, service: up, auth: required, auth_methods: [api_key], roles: [beta]}\n\
         \x20 - {path: /open, service: up}\n",
    )
    .await;
    let c = client();
    let get = |path: &str| c.get(gw.url(path));

    let (status, headers, body) = send(get("/partner")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("No API key provided"))
    );
    assert!(headers.get("www-authenticate").is_none());

    for (name, value) in [("apikey", k1.as_str()), ("X-API-Key", k1.as_str())] {
        let (status, _, body) = send(get("/partner/x").header(name, value)).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(header(&body, "x-consumer-id"), Some("partner"));
        assert_eq!(header(&body, "x-consumer-username"), Some("Partner Inc"));
        assert_eq!(header(&body, "x-consumer-groups"), Some("partners"));
        assert_eq!(header(&body, "x-tier"), Some("gold"));
        assert!(
            body["headers"].get("apikey").is_none() && body["headers"].get("x-api-key").is_none()
        );
    }
    let (status, _, body) = send(get(&format!("/partner?a=1&api_key={k1}&b=2"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["query"], "a=1&b=2");

    // Unknown and expired keys get the same answer.
    let unknown = send(get("/partner").header("apikey", "test_0000")).await;
    let expired = send(get("/partner").header("apikey", &k2)).await;
    assert_eq!((unknown.0, expired.0), (401, 401));
    assert_eq!(unknown.2["error"], "Invalid API key");
    assert_eq!(unknown.2["error"], expired.2["error"]);

    // Groups act as roles; two different keys are ambiguous.
    assert_eq!(send(get("/beta").header("apikey", &k1)).await.0, 403);
    let two = get("/partner")
        .header("apikey", &k1)
        .header("x-api-key", "test_other");
    let (status, _, body) = send(two).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            400,
            Some("Bad request: more than one credential in the request")
        )
    );

    // A client's own consumer headers never reach an upstream, on any route.
    let spoof = get("/open")
        .header("x-consumer-id", "partner")
        .header("x-consumer-groups", "admins")
        .header("x-tier", "platinum");
    let (status, _, body) = send(spoof).await;
    assert_eq!(status, 200);
    for h in ["x-consumer-id", "x-consumer-groups", "x-tier"] {
        assert!(body["headers"].get(h).is_none(), "{h} reached the upstream");
    }
    assert!(!gw.stderr().contains(&k1), "a key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_are_checked_once_per_pair_and_challenge_on_refusal() {
    let admin_port = free_port();
    let tricky = "pa:ss wörd";
    let (_up, gw) = echo_gateway(
        &format!(
            "admin: {{listen: '127.0.0.1:{admin_port}'}}\n\
             consumer_auth: {{basic: {{realm: Staff}}}}\n\
             consumers:\n\
             \x20 - {{id: ann, groups: [staff], basic: {{username: 'zoë@example.com', password_hash: '{}'}}}}\n",
            argon2_hash(tricky)
        ),
        "  - {path: /staff, service: up, auth: required, auth_methods: [basic], roles: [staff]}\n",
    )
    .await;
    let c = client();
    let get = |auth: Option<String>| {
        let r = c.get(gw.url("/staff"));
        match auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    };
    let (status, headers, body) = send(get(None)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("No credentials provided"))
    );
    assert_eq!(
        headers["www-authenticate"],
        r#"Basic realm="Staff", charset="UTF-8""#
    );
    for _ in 0..3 {
        let (status, _, body) = send(get(Some(basic("zoë@example.com", tricky)))).await;
        assert_eq!(status, 200);
        assert_eq!(header(&body, "x-consumer-id"), Some("ann"));
        assert!(body["headers"].get("authorization").is_none());
    }
    let metrics = metrics_text(admin_port).await;
    assert!(
        metrics.contains("apigateway_password_checks_total 1\n"),
        "{metrics}"
    );

    let wrong = send(get(Some(basic("zoë@example.com", "pa:ss")))).await;
    let unknown = send(get(Some(basic("nobody@example.com", tricky)))).await;
    assert_eq!((wrong.0, unknown.0), (401, 401));
    assert_eq!(wrong.2["error"], "Invalid credentials");
    assert_eq!(wrong.2["error"], unknown.2["error"]);
    assert_eq!(
        wrong.1["www-authenticate"],
        r#"Basic realm="Staff", charset="UTF-8""#
    );
    assert!(!gw.stderr().contains(tricky), "a password was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_accept_their_listed_methods_and_tokens_map_to_consumers() {
    let (key, hash) = minted_key();
    let (_up, gw) = echo_gateway(
        &format!(
            "auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n  consumer_claim: sub\n\
             consumers:\n\
             \x20 - {{id: svc-a, groups: [partners], api_keys: [{{hash: '{hash}'}}]}}\n\
             \x20 - {{id: jo, groups: [partners], basic: {{username: jo, password_hash: '{}'}}}}\n",
            argon2_hash("jo-password")
        ),
        "  - {path: /any, service: up, auth: required, auth_methods: [jwt, api_key, basic]}\n\
         \x20 - {path: /members, service: up, auth: required, require_consumer: true, roles: [partners]}\n\
         \x20 - {path: /maybe, service: up, auth: optional, auth_methods: [api_key]}\n",
    )
    .await;
    let c = client();
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            hs256_token(SECRET, serde_json::json!({"sub": sub}))
        )
    };

    // Each method alone on a route accepting all three.
    let by_token = send(
        c.get(gw.url("/any"))
            .header("authorization", token("svc-a")),
    )
    .await;
    let by_key = send(c.get(gw.url("/any")).header("apikey", &key)).await;
    let by_basic = send(
        c.get(gw.url("/any"))
            .header("authorization", basic("jo", "jo-password")),
    )
    .await;
    assert_eq!((by_token.0, by_key.0, by_basic.0), (200, 200, 200));
    assert_eq!(header(&by_token.2, "x-consumer-id"), Some("svc-a"));
    assert_eq!(header(&by_key.2, "x-consumer-id"), Some("svc-a"));
    assert_eq!(header(&by_basic.2, "x-consumer-id"), Some("jo"));
    let (status, headers, body) = send(c.get(gw.url("/any"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("No credentials provided"))
    );
    let challenges: Vec<_> = headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");

    // A token and a key together are ambiguous.
    let both = c
        .get(gw.url("/any"))
        .header("authorization", token("svc-a"))
        .header("apikey", &key);
    assert_eq!(send(both).await.0, 400);

    // A token naming a consumer gets its groups as roles; a valid token naming none is an
    // anonymous consumer: fine where no consumer is required, 403 where one is.
    assert_eq!(
        send(
            c.get(gw.url("/members"))
                .header("authorization", token("svc-a"))
        )
        .await
        .0,
        200
    );
    let (status, _, body) = send(
        c.get(gw.url("/members"))
            .header("authorization", token("stranger")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("This route requires a registered consumer"))
    );
    let (status, _, body) = send(
        c.get(gw.url("/any"))
            .header("authorization", token("stranger")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["headers"].get("x-consumer-id").is_none());

    // Optional: no key passes anonymously, a bad key is still refused.
    assert_eq!(send(c.get(gw.url("/maybe"))).await.0, 200);
    assert_eq!(
        send(c.get(gw.url("/maybe")).header("apikey", "test_bad"))
            .await
            .0,
        401
    );
}

#[test]
fn new_key_prints_a_key_and_the_sha256_of_it() {
    use sha2::{Digest, Sha256};
    let out = std::process::Command::new(binary())
        .args(["consumer", "new-key"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key: ")).unwrap();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap();
    assert!(key.starts_with("agk_") && key.len() >= 4 + 32, "{key}");
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hash, format!("sha256:{hex}"));
}

fn header_values(h: &reqwest::header::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_have_their_own_limits_and_a_quota_counts_only_admitted_requests() {
    let (ka, ha) = minted_key();
    let (kb, hb) = minted_key();
    let (_up, gw) = echo_gateway(
        &format!(
            "rate_limits:\n  policies:\n    per_consumer: {{requests: 1, period: 60s, key: consumer}}\n    tight: {{requests: 2, period: 60s, key: consumer}}\n\
             consumers:\n\
             \x20 - {{id: a, api_keys: [{{hash: '{ha}'}}], quotas: [{{requests: 3, period: day}}]}}\n\
             \x20 - {{id: b, api_keys: [{{hash: '{hb}'}}], rate_limits: [tight]}}\n"
        ),
        "  - {path: /limited, service: up, auth: required, auth_methods: [api_key], rate_limits: [per_consumer]}\n\
         \x20 - {path: /free, service: up, auth: required, auth_methods: [api_key], rate_limits: []}\n",
    )
    .await;
    let c = client();
    let get = |path: &str, key: &str| c.get(gw.url(path)).header("apikey", key);

    // Keyed per consumer: a's second request on /limited is refused, b's first is not.
    assert_eq!(send(get("/limited", &ka)).await.0, 200);
    let (status, _, body) = send(get("/limited", &ka)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("Rate limit exceeded"))
    );
    assert_eq!(send(get("/limited", &kb)).await.0, 200);

    // a's quota (3 a day) counted the admitted request only: two more pass on /free.
    for remaining in [1, 0] {
        let (status, h, _) = send(get("/free", &ka)).await;
        assert_eq!(status, 200);
        assert_eq!(
            header_values(&h, "ratelimit-policy"),
            ["\"quota-day\";q=3;w=86400"]
        );
        let limit = header_values(&h, "ratelimit");
        assert!(
            limit[0].starts_with(&format!("\"quota-day\";r={remaining};t=")),
            "{limit:?}"
        );
    }
    let (status, h, body) = send(get("/free", &ka)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("Quota exceeded"))
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert!(header_values(&h, "ratelimit")[0].starts_with("\"quota-day\";r=0;t="));

    // b's own policy (2 a minute) applies on a route that has none.
    assert_eq!(send(get("/free", &kb)).await.0, 200);
    assert_eq!(
        send(get("/free", &kb)).await.0,
        429,
        "b used 1 on /limited and 1 here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_on_redis_are_shared_by_gateways_and_survive_a_restart() {
    let redis = RedisServer::start();
    let (key, hash) = minted_key();
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let config = format!(
        "services:\n  up: {{backends: ['{}']}}\n\
         rate_limits:\n  store: redis\n  redis: {{url: '{}', timeout: 500ms}}\n  on_store_error: deny\n  policies: {{}}\n\
         consumers:\n  - {{id: shared, api_keys: [{{hash: '{hash}'}}], quotas: [{{requests: 4, period: month}}]}}\n\
         routes:\n  - {{path: /q, service: up, auth: required, auth_methods: [api_key], rate_limits: []}}\n",
        up.addr,
        redis.url()
    );
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let c = client();
    let get = |gw: &Gateway| c.get(gw.url("/q")).header("apikey", &key);
    for gw in [&a, &b, &a, &b] {
        assert_eq!(send(get(gw)).await.0, 200);
    }
    assert_eq!(send(get(&a)).await.0, 429);
    assert_eq!(send(get(&b)).await.0, 429);
    drop(a);
    let restarted = Gateway::start(&config);
    let (status, _, body) = send(get(&restarted)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("Quota exceeded"))
    );
    assert_eq!(up.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_consumers_file_adds_and_revokes_keys() {
    let (old, old_hash) = minted_key();
    let (new, new_hash) = minted_key();
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let body = format!(
        "services:\n  up: {{backends: ['{}']}}\nconsumers_file: consumers.yaml\n\
         routes:\n  - {{path: /k, service: up, auth: required, auth_methods: [api_key]}}\n",
        up.addr
    );
    let gw = Gateway::start_with_files(
        &body,
        &[(
            "consumers.yaml",
            &format!("consumers:\n  - {{id: app, api_keys: [{{hash: '{old_hash}'}}]}}\n"),
        )],
    );
    let c = client();
    let status = |k: String| {
        let req = c.get(gw.url("/k")).header("apikey", k);
        async move { send(req).await.0 }
    };
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 401);
    std::fs::write(
        gw.dir().join("consumers.yaml"),
        format!("consumers:\n  - {{id: app, api_keys: [{{hash: '{new_hash}'}}]}}\n"),
    )
    .unwrap();
    gw.signal("HUP");
    let swapped = eventually(std::time::Duration::from_secs(10), || {
        let (o, n) = (status(old.clone()), status(new.clone()));
        async move { o.await == 401 && n.await == 200 }
    })
    .await;
    assert!(
        swapped,
        "the reload did not swap the keys:\n{}",
        gw.stderr()
    );

    // A broken file is refused as a whole: the old consumers stay.
    std::fs::write(
        gw.dir().join("consumers.yaml"),
        "consumers:\n  - {id: app, api_keys: [{hash: nope}]}\n",
    )
    .unwrap();
    gw.signal("HUP");
    let logged = eventually(std::time::Duration::from_secs(10), || {
        let text = gw.stderr();
        async move { text.contains("consumers.yaml: consumers[0].api_keys[0].hash") }
    })
    .await;
    assert!(logged, "{}", gw.stderr());
    assert_eq!(status(new.clone()).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_and_passwords_count_in_the_invalid_credential_throttle() {
    let (key, hash) = minted_key();
    let (_up, gw) = echo_gateway(
        &format!(
            "consumer_auth: {{invalid_credential_limit: {{failures: 2, period: 60s}}}}\n\
             consumers:\n  - {{id: app, api_keys: [{{hash: '{hash}'}}], basic: {{username: app, password_hash: '{}'}}}}\n",
            argon2_hash("right")
        ),
        "  - {path: /k, service: up, auth: required, auth_methods: [api_key, basic]}\n",
    )
    .await;
    let c = client();
    let with_key = |k: &str| c.get(gw.url("/k")).header("apikey", k.to_string());
    assert_eq!(send(with_key("test_wrong1")).await.0, 401);
    let wrong_basic = c
        .get(gw.url("/k"))
        .header("authorization", basic("app", "wrong"));
    assert_eq!(send(wrong_basic).await.0, 401);
    // Over the limit: unknown keys and uncached passwords are refused unchecked...
    let (status, h, body) = send(with_key("test_wrong2")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("Too many requests with invalid tokens"))
    );
    assert!(h.get("retry-after").is_some());
    let right_basic = c
        .get(gw.url("/k"))
        .header("authorization", basic("app", "right"));
    assert_eq!(send(right_basic).await.0, 429);
    // ...while a valid key still passes, and another address is not throttled.
    assert_eq!(send(with_key(&key)).await.0, 200);
    let other = client_from("127.0.0.2");
    let (status, _, _) = send(other.get(gw.url("/k")).header("apikey", "test_wrong3")).await;
    assert_eq!(status, 401);
}

#[test]
fn consumer_config_errors_name_the_key() {
    let base = "listen: ['127.0.0.1:0']\nservices: {up: {backends: ['127.0.0.1:1']}}\n";
    let cases = [
        (
            "consumers: [{id: a, rate_limits: [nope]}]\nroutes: [{path: /a, service: up}]\n",
            "consumers[0].rate_limits[0]: no policy named \"nope\"",
        ),
        (
            "routes: [{path: /a, service: up, auth: required, auth_methods: [api_key]}]\n",
            "routes[0].auth_methods[0]",
        ),
        (
            "consumers: [{id: a, quotas: [{requests: 10}]}]\nroutes: [{path: /a, service: up}]\n",
            "consumers[0].quotas[0].period",
        ),
        (
            "consumers: [{id: a}, {id: a}]\nroutes: [{path: /a, service: up}]\n",
            "consumers[1].id",
        ),
        (
            "consumers: [{id: a}]\nroutes: [{path: /a, service: up, require_consumer: true}]\n",
            "routes[0].auth",
        ),
    ];
    for (yaml, expected) in cases {
        let (ok, out, _) = check_config(&format!("{base}{yaml}"));
        assert!(!ok, "{yaml}");
        assert!(out.contains(expected), "{yaml}\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_quota_counts_survive_a_reload() {
    let (key, hash) = minted_key();
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let body = |route: &str| {
        format!(
            "services:\n  up: {{backends: ['{}']}}\n\
             consumers: [{{id: app, api_keys: [{{hash: '{hash}'}}], quotas: [{{requests: 2, period: day}}]}}]\n\
             routes:\n  - {{path: {route}, service: up, auth: required, auth_methods: [api_key]}}\n",
            up.addr
        )
    };
    let gw = Gateway::start(&body("/a"));
    let c = client();
    for _ in 0..2 {
        assert_eq!(
            send(c.get(gw.url("/a")).header("apikey", &key)).await.0,
            200
        );
    }
    gw.rewrite_config(&body("/b"));
    gw.signal("HUP");
    let reloaded = eventually(std::time::Duration::from_secs(10), || {
        let req = c.get(gw.url("/b")).header("apikey", &key);
        async move { send(req).await.0 != 404 }
    })
    .await;
    assert!(reloaded, "{}", gw.stderr());
    let (status, _, body) = send(c.get(gw.url("/b")).header("apikey", &key)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("Quota exceeded"))
    );
}
