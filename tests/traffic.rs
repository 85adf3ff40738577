//! Traffic management through the real gateway: weighted splits, forced variants, sticky
//! callers and drained entries, against real echo upstreams.

mod common;
use common::*;
use std::collections::HashMap;

const SECRET: &str = "traffic-test-secret-0123456789abcdef-0123";

/// Sends `n` GETs to `path` (with `headers`), 50 at a time, and counts the answering
/// services by the echo's `service` field.
async fn services_answering(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for chunk in 0..n.div_ceil(50) {
        let batch = (0..50.min(n - chunk * 50)).map(|_| {
            let mut r = c.get(gw.url(path));
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            send(r)
        });
        for (status, _, body) in futures::future::join_all(batch).await {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["service"], body["headers"]["x-gateway-route"]);
            *counts
                .entry(body["service"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn a_split_shares_by_weight_forces_variants_and_drains_weight_zero() {
    let stable = EchoServer::start("stable", "127.0.0.1:0").await.unwrap();
    let canary = EchoServer::start("canary", "127.0.0.1:0").await.unwrap();
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  stable: {{backends: ['{}']}}\n  canary: {{backends: ['{}']}}\n\
         routes:\n\
         \x20 - path: /catalog\n    name: catalog\n    split:\n\
         \x20     - {{service: stable, weight: 80}}\n\
         \x20     - {{service: canary, weight: 20, match: {{headers: {{x-canary: always}}}}}}\n\
         \x20 - path: /drained\n    split: [{{service: stable, weight: 1}}, {{service: canary, weight: 0}}]\n",
        stable.addr, canary.addr
    ));
    let counts = services_answering(&gw, "/catalog/1", &[], 2000).await;
    // 20 % of 2,000 is 400, standard deviation ~17.9: five of them either side.
    let to_canary = counts.get("canary").copied().unwrap_or(0);
    assert!((310..=490).contains(&to_canary), "{counts:?}");
    let forced = services_answering(&gw, "/catalog/1", &[("x-canary", "always")], 100).await;
    assert_eq!(forced.get("canary"), Some(&100), "{forced:?}");
    let drained = services_answering(&gw, "/drained/1", &[], 300).await;
    assert_eq!(drained.get("stable"), Some(&300), "{drained:?}");
    let metrics = metrics_text(admin).await;
    let line = |service: &str| {
        format!(
            "apigateway_requests_total{{route=\"catalog\",service=\"{service}\",status=\"2xx\"}} "
        )
    };
    for (service, n) in [("canary", to_canary + 100), ("stable", 2000 - to_canary)] {
        assert!(
            metrics.contains(&format!("{}{n}", line(service))),
            "{service} {n}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_sticky_split_keeps_each_user_on_one_side() {
    let blue = EchoServer::start("blue", "127.0.0.1:0").await.unwrap();
    let green = EchoServer::start("green", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  blue: {{backends: ['{}']}}\n  green: {{backends: ['{}']}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n\
         routes:\n  - path: /app\n    auth: required\n    sticky: user\n\
         \x20   split: [{{service: blue, weight: 1}}, {{service: green, weight: 1}}]\n",
        blue.addr, green.addr
    ));
    let mut sides = HashMap::new();
    for user in 0..40 {
        let token = hs256_token(SECRET, serde_json::json!({"sub": format!("user-{user}")}));
        let bearer = format!("Bearer {token}");
        let seen = services_answering(&gw, "/app/x", &[("authorization", &bearer)], 10).await;
        assert_eq!(seen.len(), 1, "user-{user} moved between sides: {seen:?}");
        *sides.entry(seen.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "users land on both sides: {sides:?}");
}

#[test]
fn bad_splits_are_config_errors_naming_the_key() {
    for (split, expected) in [
        (
            "split: [{service: a, weight: 0}]",
            "routes[0].split: every weight is 0",
        ),
        (
            "split: [{service: ghost, weight: 1}]",
            "routes[0].split[0].service: unknown service \"ghost\"",
        ),
        (
            "split: [{service: a, weight: 1, match: {query: {v: {regex: '(['}}}}]",
            "routes[0].split[0].match.query.v.regex: bad regex",
        ),
        (
            "service: a\n    sticky: user",
            "routes[0].sticky: needs `split`",
        ),
        ("split: [{service: a, weight: -5}]", "weight"),
    ] {
        let (ok, text, _) = check_config(&format!(
            "listen: ['127.0.0.1:0']\nservices:\n  a: {{backends: ['127.0.0.1:9']}}\nroutes:\n  - path: /\n    {split}\n"
        ));
        assert!(!ok, "{split}");
        assert!(text.contains(expected), "{split}: {text}");
    }
}
