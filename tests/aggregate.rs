//! Aggregate routes through the real gateway: concurrency, deterministic merges, conflicts,
//! timeouts, optional vs required failures, bad answers, and the same auth/limits/identity as
//! proxied routes.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SECRET: &str = "aggregate-secret-0123456789-abcdefghijk";

fn token(sub: &str) -> String {
    hs256_token(SECRET, json!({"sub": sub, "role": "user"}))
}

/// Two echo services `a` and `b` plus the given aggregate route block.
async fn setup(route: &str) -> (EchoServer, EchoServer, Gateway) {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let b = EchoServer::start("b", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  a: {{backends: ['{}']}}\n  b: {{backends: ['{}']}}\nauth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\nrate_limits:\n  policies:\n    three: {{requests: 3, period: 60s, key: user}}\nroutes:\n{route}",
        a.addr, b.addr
    ));
    (a, b, gw)
}

async fn get(gw: &Gateway, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    send(client().get(gw.url(path)).bearer_auth(token("alice"))).await
}

#[tokio::test]
async fn calls_run_concurrently_and_merge_by_key_in_config_order() {
    let (_a, _b, gw) = setup(
        "  - path: /dash/:id
    auth: required
    aggregate:
      calls:
        - {key: first, service: a, path: '/items/{id}?sleep_ms=700'}
        - {key: second, service: b, path: '/users/{claim.sub}?sleep_ms=700', pass_query: true}
",
    )
    .await;
    let start = Instant::now();
    let (status, headers, body) = get(&gw, "/dash/42?x=1").await;
    let took = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_millis(1300),
        "calls ran one after the other: {took:?}"
    );
    assert_eq!(headers["x-gateway-completed"], "true");
    assert_eq!(body["first"]["path"], "/items/42");
    assert_eq!(body["second"]["path"], "/users/alice");
    assert_eq!(body["second"]["query"], "sleep_ms=700&x=1");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["first", "second"]);
    // Every call gets the verified identity and the request id.
    for k in ["first", "second"] {
        assert_eq!(body[k]["headers"]["x-user-id"], "alice");
        assert_eq!(
            body[k]["headers"]["x-request-id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
}

#[tokio::test]
async fn top_level_merge_follows_config_order_not_completion_order() {
    // `a` answers slowly, `b` fast: completion order is b, a; config order is a, b.
    let route = |policy: &str| {
        format!(
            "  - path: /{policy}
    auth: required
    aggregate:
      merge: top_level
      on_conflict: {policy}
      calls:
        - {{key: slow, service: a, path: '/x?sleep_ms=300'}}
        - {{key: fast, service: b, path: /x}}
"
        )
    };
    let (_a, _b, gw) = setup(&[route("first"), route("last"), route("error")].concat()).await;
    assert_eq!(get(&gw, "/first").await.2["service"], "a");
    assert_eq!(get(&gw, "/last").await.2["service"], "b");
    let (status, _, body) = get(&gw, "/error").await;
    assert_eq!(status, 502);
    assert!(
        body["error"].as_str().unwrap().contains("conflict"),
        "{body}"
    );
}

#[tokio::test]
async fn optional_failures_become_null_and_required_ones_fail_the_route() {
    let (_a, _b, gw) = setup(
        "  - path: /partial
    auth: required
    aggregate:
      max_body_bytes: 2000
      calls:
        - {key: ok, service: a, path: /x}
        - {key: slow, service: b, path: '/x?sleep_ms=2000', timeout: 200ms, required: false}
        - {key: text, service: b, path: '/x?raw=1', required: false}
        - {key: big, service: b, path: '/x?pad=5000', required: false}
        - {key: broken, service: b, path: '/x?status=500', required: false}
  - path: /required
    auth: required
    aggregate:
      calls:
        - {key: ok, service: a, path: /x}
        - {key: slow, service: b, path: '/x?sleep_ms=2000', timeout: 200ms}
  - path: /total
    auth: required
    aggregate:
      timeout: 300ms
      calls:
        - {key: slow, service: a, path: '/x?sleep_ms=2000', required: false}
",
    )
    .await;
    let start = Instant::now();
    let (status, headers, body) = get(&gw, "/partial").await;
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-gateway-completed"], "false");
    assert_eq!(body["ok"]["service"], "a");
    let errors = &body["_errors"];
    for key in ["slow", "text", "big", "broken"] {
        assert_eq!(body[key], Value::Null, "{key}");
        assert!(
            errors[key].is_string(),
            "{key} missing from _errors: {errors}"
        );
    }
    assert!(errors["slow"].as_str().unwrap().contains("timed out"));
    assert!(errors["text"].as_str().unwrap().contains("not valid JSON"));
    assert!(errors["big"].as_str().unwrap().contains("larger than 2000"));
    assert!(errors["broken"].as_str().unwrap().contains("HTTP 500"));

    let (status, _, body) = get(&gw, "/required").await;
    assert_eq!(status, 502);
    assert_eq!(
        body["error"],
        "Aggregate call \"slow\" failed: timed out after 200ms"
    );

    let start = Instant::now();
    let (status, _, body) = get(&gw, "/total").await;
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert!(
        body["_errors"]["slow"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
}

#[tokio::test]
async fn auth_and_rate_limits_apply_to_aggregate_routes() {
    let (a, _b, gw) = setup(
        "  - path: /dash
    auth: required
    rate_limits: [three]
    aggregate:
      calls:
        - {key: one, service: a, path: /x}
",
    )
    .await;
    let (status, _, _) = send(client().get(gw.url("/dash"))).await;
    assert_eq!(status, 401);
    for i in 0..3 {
        let (status, h, _) = get(&gw, "/dash").await;
        assert_eq!(status, 200);
        assert_eq!(h["x-ratelimit-remaining"], (2 - i).to_string());
    }
    assert_eq!(get(&gw, "/dash").await.0, 429);
    assert_eq!(a.requests(), 3, "refused requests must not fan out");
}

#[test]
fn aggregate_config_errors_name_the_call() {
    let yaml = |route: &str| {
        format!(
            "listen: ['127.0.0.1:0']\nservices:\n  a: {{backends: ['127.0.0.1:1']}}\nroutes:\n{route}"
        )
    };
    let cases = [
        (
            "  - path: /d\n    aggregate: {calls: [{key: x, service: nope, path: /}]}\n",
            "calls[0].service",
        ),
        (
            "  - path: /d/:id\n    aggregate: {calls: [{key: x, service: a, path: '/{other}'}]}\n",
            "calls[0].path",
        ),
        (
            "  - path: /d\n    aggregate: {calls: [{key: x, service: a, path: '/{claim.sub}'}]}\n",
            "auth: required",
        ),
        (
            "  - path: /d\n    aggregate: {calls: [{key: x, service: a, path: /}, {key: x, service: a, path: /}]}\n",
            "calls[1].key",
        ),
        (
            "  - path: /d\n    service: a\n    aggregate: {calls: [{key: x, service: a, path: /}]}\n",
            "exactly one",
        ),
    ];
    for (route, expected) in cases {
        let (ok, out, _) = check_config(&yaml(route));
        assert!(!ok, "accepted: {route}");
        assert!(out.contains("routes[0]"), "{out}");
        assert!(out.contains(expected), "{expected:?} missing: {out}");
    }
}
