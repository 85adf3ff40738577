//! Rate limiting through the real gateway: exact headers, bursts at edges, keys, trusted
//! proxies, the key cap, concurrency, and cluster-wide limits on a real redis-server.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "limits-secret-0123456789-abcdefghijklmn";

fn token(sub: &str) -> String {
    token_with(json!({"sub": sub}))
}

/// An HS256 token with these claims plus a 10-minute `exp`.
fn token_with(claims: serde_json::Value) -> String {
    hs256_token(SECRET, claims)
}

/// Config with one upstream, an `auth:` section, the given policies and routes.
fn config(up: &EchoServer, limits: &str, routes: &str, extra: &str) -> String {
    format!(
        "services:\n  api: {{backends: ['{}']}}\nauth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\nrate_limits:\n{limits}{extra}routes:\n{routes}",
        up.addr
    )
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("<missing>")
}

#[tokio::test]
async fn headers_are_exact_and_429_never_reaches_the_upstream() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    five: {requests: 5, period: 60s, key: ip}\n",
        "  - {path: /, service: api, rate_limits: [five]}\n",
        "",
    ));
    let c = client();
    for i in 1..=5u64 {
        let (status, h, _) = send(c.get(gw.url("/x"))).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-ratelimit-limit"), "5");
        assert_eq!(header(&h, "x-ratelimit-remaining"), (5 - i).to_string());
        // Each admitted request occupies 12 s of the 60 s bucket.
        assert_eq!(header(&h, "x-ratelimit-reset"), (12 * i).to_string());
        assert_eq!(header(&h, "ratelimit-policy"), "\"five\";q=5;w=60");
        assert_eq!(
            header(&h, "ratelimit"),
            format!("\"five\";r={};t={}", 5 - i, 12 * i)
        );
    }
    let (status, h, body) = send(c.get(gw.url("/x"))).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["status"], 429);
    assert_eq!(header(&h, "retry-after"), "12");
    assert_eq!(header(&h, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(up.requests(), 5);
}

#[tokio::test]
async fn a_burst_straddling_a_window_edge_is_not_admitted_twice() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    ten: {requests: 10, period: 1s, key: ip}\n",
        "  - {path: /, service: api, rate_limits: [ten]}\n",
        "",
    ));
    let c = client();
    let start = Instant::now();
    let mut admitted = 0;
    for _ in 0..20 {
        if send(c.get(gw.url("/"))).await.0 == 200 {
            admitted += 1;
        }
    }
    // A fixed window would admit 20 here if the burst straddled its edge; GCRA admits the
    // burst plus what refilled while we sent (one per 100 ms).
    let refilled = (start.elapsed().as_millis() / 100) as usize;
    assert!(
        admitted <= 10 + refilled + 1,
        "{admitted} admitted in {:?}",
        start.elapsed()
    );
    assert!(admitted >= 10);
}

#[tokio::test]
async fn steady_traffic_under_the_limit_never_sees_429() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    rate: {requests: 20, period: 1s, burst: 2, key: ip}\n",
        "  - {path: /, service: api, rate_limits: [rate]}\n",
        "",
    ));
    let c = client();
    // 10 requests/s against a 20/s limit with almost no burst allowance, for 2 seconds.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..20 {
        tick.tick().await;
        let (status, _, _) = send(c.get(gw.url("/"))).await;
        assert_eq!(status, 200, "request {i}");
    }
}

#[tokio::test]
async fn users_have_their_own_buckets_and_anonymous_callers_fall_back_to_ip() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  default: per_user\n  policies:\n    per_user: {requests: 3, period: 60s, key: user}\n",
        "  - {path: /api, service: api, auth: optional}\n",
        "",
    ));
    let c = client();
    let (alice, bob) = (token("alice"), token("bob"));
    for _ in 0..3 {
        assert_eq!(send(c.get(gw.url("/api")).bearer_auth(&alice)).await.0, 200);
    }
    assert_eq!(send(c.get(gw.url("/api")).bearer_auth(&alice)).await.0, 429);
    assert_eq!(send(c.get(gw.url("/api")).bearer_auth(&bob)).await.0, 200);
    // Anonymous callers share their address's bucket, separate from alice's.
    let anon_a = client_from("127.0.0.2");
    for _ in 0..3 {
        assert_eq!(send(anon_a.get(gw.url("/api"))).await.0, 200);
    }
    assert_eq!(send(anon_a.get(gw.url("/api"))).await.0, 429);
    assert_eq!(
        send(client_from("127.0.0.3").get(gw.url("/api"))).await.0,
        200
    );
    // An unverifiable token is refused (401), never used as a key.
    assert_eq!(
        send(c.get(gw.url("/api")).bearer_auth("forged.token.value"))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_is_ignored_and_trusted_proxies_are_honoured() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    two: {requests: 2, period: 60s, key: ip}\n",
        "  - {path: /, service: api, rate_limits: [two]}\n",
        "trusted_proxies: [127.0.0.2]\n",
    ));
    let untrusted = client_from("127.0.0.3");
    let mut statuses = Vec::new();
    for i in 0..4 {
        let xff = format!("198.51.100.{i}");
        statuses.push(
            send(untrusted.get(gw.url("/")).header("x-forwarded-for", xff))
                .await
                .0,
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "spoofed X-Forwarded-For changed the key"
    );

    let proxy = client_from("127.0.0.2");
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..2 {
            let req = proxy
                .get(gw.url("/"))
                .header("x-forwarded-for", format!("6.6.6.6, {client}"));
            assert_eq!(send(req).await.0, 200, "{client}");
        }
        let req = proxy
            .get(gw.url("/"))
            .header("x-forwarded-for", format!("6.6.6.6, {client}"));
        assert_eq!(send(req).await.0, 429, "{client}");
    }
}

#[tokio::test]
async fn key_cap_forgets_keys_instead_of_growing() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  max_keys: 64\n  policies:\n    once: {requests: 1, period: 1h, key: 'header:x-key'}\n",
        "  - {path: /, service: api, rate_limits: [once]}\n",
        "",
    ));
    let c = client();
    assert_eq!(
        send(c.get(gw.url("/")).header("x-key", "victim")).await.0,
        200
    );
    assert_eq!(
        send(c.get(gw.url("/")).header("x-key", "victim")).await.0,
        429
    );
    for i in 0..2000 {
        send(c.get(gw.url("/")).header("x-key", format!("k{i}"))).await;
    }
    // The victim's bucket was forgotten to make room: bounded memory, documented trade-off.
    assert_eq!(
        send(c.get(gw.url("/")).header("x-key", "victim")).await.0,
        200
    );
    assert!(gw.stderr().contains("reached max_keys"));
}

#[tokio::test]
async fn concurrency_limit_per_key() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    one_at_a_time: {requests: 1000, period: 1s, key: ip, concurrency: 1}\n",
        "  - {path: /, service: api, rate_limits: [one_at_a_time]}\n",
        "",
    ));
    let c = client();
    let slow = send(c.get(gw.url("/?sleep_ms=1500")));
    let second = async {
        // Issued once the slow one is in flight at the upstream.
        assert!(eventually(Duration::from_secs(5), || async { up.requests() == 1 }).await);
        send(c.get(gw.url("/"))).await.0
    };
    let ((first, _, _), second) = tokio::join!(slow, second);
    assert_eq!(first, 200);
    assert_eq!(second, 429);
    assert_eq!(
        send(c.get(gw.url("/"))).await.0,
        200,
        "slot released after the slow request"
    );
}

fn redis_limits(redis: &RedisServer, on_error: &str) -> String {
    format!(
        "  store: redis\n  redis: {{url: '{}', timeout: 50ms}}\n  on_store_error: {on_error}\n  policies:\n    shared: {{requests: 10, period: 60s, key: ip}}\n",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let route = "  - {path: /, service: api, rate_limits: [shared]}\n";
    let a = Gateway::start(&config(&up, &redis_limits(&redis, "deny"), route, ""));
    let b = Gateway::start(&config(&up, &redis_limits(&redis, "deny"), route, ""));
    let c = client();
    let mut admitted = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, h, _) = send(c.get(gw.url("/"))).await;
        if status == 200 {
            admitted += 1;
            assert_eq!(
                header(&h, "x-ratelimit-remaining"),
                (10 - admitted).to_string()
            );
        } else {
            assert_eq!(status, 429);
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(up.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_on_store_error_and_recovers() {
    let mut redis = RedisServer::start();
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let route = "  - {path: /, service: api, rate_limits: [shared]}\n";
    let allow = Gateway::start(&config(&up, &redis_limits(&redis, "allow"), route, ""));
    let deny = Gateway::start(&config(&up, &redis_limits(&redis, "deny"), route, ""));
    let local = Gateway::start(&config(&up, &redis_limits(&redis, "local"), route, ""));
    let c = client();
    for gw in [&allow, &deny, &local] {
        assert_eq!(send(c.get(gw.url("/"))).await.0, 200);
    }

    redis.stop();
    let timed = |gw: &Gateway| {
        let req = c.get(gw.url("/"));
        async move {
            let start = Instant::now();
            let (status, _, body) = send(req).await;
            (status, body, start.elapsed())
        }
    };
    for _ in 0..3 {
        let (status, _, took) = timed(&allow).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "allow took {took:?}");
        let (status, body, took) = timed(&deny).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "Rate limiter unavailable");
        assert!(took < Duration::from_secs(1), "deny took {took:?}");
    }
    // local: the per-process store takes over with the same policy (10 per 60 s).
    let mut local_admitted = 0;
    for _ in 0..15 {
        if timed(&local).await.0 == 200 {
            local_admitted += 1;
        }
    }
    assert_eq!(local_admitted, 10);
    assert!(deny.stderr().contains("redis unavailable"));

    redis.restart();
    let back = eventually(Duration::from_secs(15), || async {
        send(c.get(deny.url("/"))).await.0 == 200
    })
    .await;
    assert!(back, "deny gateway never recovered");
    assert!(
        eventually(Duration::from_secs(5), || async {
            deny.stderr().contains("redis recovered")
        })
        .await
    );
}

#[tokio::test]
async fn several_policies_all_apply_and_the_closest_to_exhaustion_is_reported() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    roomy: {requests: 100, period: 60s, key: ip}\n    tight: {requests: 3, period: 60s, key: global}\n",
        "  - {path: /, service: api, rate_limits: [roomy, tight]}\n",
        "",
    ));
    let c = client();
    let (_, h, _) = send(c.get(gw.url("/"))).await;
    assert_eq!(header(&h, "ratelimit-policy"), "\"tight\";q=3;w=60");
    assert_eq!(header(&h, "x-ratelimit-remaining"), "2");
    send(c.get(gw.url("/"))).await;
    send(c.get(gw.url("/"))).await;
    // `tight` is global: another client is refused too, and told which policy refused it.
    let (status, h, _) = send(client_from("127.0.0.5").get(gw.url("/"))).await;
    assert_eq!(status, 429);
    assert_eq!(header(&h, "ratelimit"), "\"tight\";r=0;t=60");
}

#[tokio::test]
async fn claim_and_route_keys() {
    let up = EchoServer::start("api", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&config(
        &up,
        "  policies:\n    per_tenant: {requests: 2, period: 60s, key: 'claim:tenant'}\n    per_route: {requests: 2, period: 60s, key: route}\n",
        "  - {path: /t, service: api, auth: required, rate_limits: [per_tenant]}\n  - {path: /r, service: api, rate_limits: [per_route]}\n",
        "",
    ));
    let c = client();
    // Two users of tenant acme share its bucket; tenant globex has its own.
    for (sub, tenant, expected) in [
        ("u1", "acme", 200),
        ("u2", "acme", 200),
        ("u3", "acme", 429),
        ("u1", "globex", 200),
    ] {
        let t = token_with(json!({"sub": sub, "tenant": tenant}));
        assert_eq!(
            send(c.get(gw.url("/t")).bearer_auth(t)).await.0,
            expected,
            "{sub}@{tenant}"
        );
    }
    // A route key is shared by every client of the route.
    assert_eq!(
        send(client_from("127.0.0.6").get(gw.url("/r"))).await.0,
        200
    );
    assert_eq!(
        send(client_from("127.0.0.7").get(gw.url("/r"))).await.0,
        200
    );
    assert_eq!(
        send(client_from("127.0.0.8").get(gw.url("/r"))).await.0,
        429
    );
}
