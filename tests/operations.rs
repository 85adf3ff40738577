//! Operations through the real binary: SIGHUP hot reload (new routes live, limiter state kept,
//! broken files rejected, no failed request meanwhile), the admin listener's /metrics,
//! /healthz and /readyz, and the JSON access log.

mod common;
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const SECRET: &str = "operations-secret-0123456789-abcdefghi";

fn token(sub: &str) -> String {
    hs256_token(SECRET, json!({"sub": sub}))
}

fn body(a: &EchoServer, b: &EchoServer, routes: &str) -> String {
    format!(
        "services:\n  a: {{backends: ['{}']}}\n  b: {{backends: ['{}']}}\n\
         rate_limits:\n  policies:\n    three: {{requests: 3, period: 60s, key: ip}}\n\
         routes:\n  - {{path: /limited, service: a, rate_limits: [three]}}\n  - {{path: /free, service: a, rate_limits: []}}\n{routes}",
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_swaps_routes_keeps_limits_and_rejects_broken_files() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let b = EchoServer::start("b", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&body(&a, &b, ""));
    let c = client();
    for _ in 0..2 {
        assert_eq!(send(c.get(gw.url("/limited"))).await.0, 200);
    }
    assert_eq!(send(c.get(gw.url("/new"))).await.0, 404);

    // Continuous traffic on an unchanged route while reloading: nothing may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let (c, url) = (client(), gw.url("/free"));
        tokio::spawn(async move {
            // Bounded: at most 20,000 requests even if `stop` never comes.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ok = matches!(c.get(&url).send().await, Ok(r) if r.status() == 200);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    gw.rewrite_config(&body(&a, &b, "  - {path: /new, service: b}\n"));
    gw.signal("HUP");
    let live = eventually(Duration::from_secs(10), || async {
        send(c.get(gw.url("/new/x"))).await.0 == 200
    })
    .await;
    assert!(live, "the new route never went live:\n{}", gw.stderr());
    let (_, _, answer) = send(c.get(gw.url("/new/x"))).await;
    assert_eq!(answer["service"], "b");

    // The unchanged policy kept its counter: one request left, then 429.
    let (status, headers, _) = send(c.get(gw.url("/limited"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(send(c.get(gw.url("/limited"))).await.0, 429);

    // A broken file changes nothing, and the log says why.
    gw.rewrite_config(&body(&a, &b, "  - {path: /new, service: ghost}\n"));
    gw.signal("HUP");
    let logged = eventually(Duration::from_secs(10), || async {
        gw.stderr().contains("config reload rejected")
    })
    .await;
    assert!(logged, "{}", gw.stderr());
    assert!(gw.stderr().contains("routes[2].service"), "{}", gw.stderr());
    assert_eq!(send(c.get(gw.url("/new/x"))).await.0, 200);

    // A changed policy starts from fresh counters.
    gw.rewrite_config(
        &body(&a, &b, "  - {path: /new, service: b}\n").replace("requests: 3", "requests: 4"),
    );
    gw.signal("HUP");
    let fresh = eventually(Duration::from_secs(10), || async {
        send(c.get(gw.url("/limited"))).await.0 == 200
    })
    .await;
    assert!(fresh, "{}", gw.stderr());

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_expose_health_readiness_and_metrics() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let admin = free_port();
    // The first health check takes ~700 ms (the echo sleeps), so /readyz starts at 503.
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  a:\n    backends: ['{}']\n    health_check: {{type: http, path: '/slow?sleep_ms=700', interval: 60s}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n\
         rate_limits:\n  policies:\n    one: {{requests: 1, period: 60s, key: ip}}\n\
         routes:\n  - {{name: api, path: /api, service: a}}\n  - {{name: secure, path: /secure, service: a, auth: required}}\n  - {{name: once, path: /once, service: a, rate_limits: [one]}}\n",
        a.addr
    ));
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let up = eventually(Duration::from_secs(5), || async {
        c.get(url("/healthz")).send().await.is_ok()
    })
    .await;
    assert!(up, "{}", gw.stderr());
    let (status, _, body) = send(c.get(url("/healthz"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _, _) = send(c.get(url("/readyz"))).await;
    assert_eq!(status, 503, "ready before the first health check finished");
    let ready = eventually(Duration::from_secs(10), || async {
        send(c.get(url("/readyz"))).await.0 == 200
    })
    .await;
    assert!(ready, "{}", gw.stderr());

    for _ in 0..3 {
        assert_eq!(send(c.get(gw.url("/api/x"))).await.0, 200);
    }
    assert_eq!(send(c.get(gw.url("/secure"))).await.0, 401);
    assert_eq!(send(c.get(gw.url("/once"))).await.0, 200);
    assert_eq!(send(c.get(gw.url("/once"))).await.0, 429);
    assert_eq!(send(c.get(gw.url("/nowhere"))).await.0, 404);

    let text = metrics_text(admin).await;
    for series in [
        r#"apigateway_requests_total{route="api",service="a",status="2xx"} 3"#,
        r#"apigateway_requests_total{route="secure",service="a",status="4xx"} 1"#,
        r#"apigateway_requests_total{route="(none)",service="(none)",status="4xx"} 1"#,
        r#"apigateway_request_duration_seconds_count{route="api"} 3"#,
        r#"apigateway_upstream_duration_seconds_count{service="a"} 4"#,
        r#"apigateway_auth_failures_total{reason="no_token"} 1"#,
        r#"apigateway_rate_limited_total{policy="one",route="once"} 1"#,
        "apigateway_backend_healthy{backend=",
        "apigateway_build_info{config_hash=",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    let (status, _, _) = send(c.get(url("/other"))).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_without_secrets() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    // A relative path is resolved against the config file's directory.
    let gw = Gateway::start(&format!(
        "access_log: {{path: access.log}}\n\
         services:\n  a: {{backends: ['{}']}}\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n  token_sources: {{header: true, query: access_token}}\n\
         routes:\n  - {{name: secure, path: /secure, service: a, auth: required}}\n",
        a.addr
    ));
    let log = gw.dir().join("access.log");
    let c = client();
    let t = token("alice");
    let (status, headers, _) = send(c.get(gw.url(&format!("/secure/x?access_token={t}")))).await;
    assert_eq!(status, 200);
    let rid = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        send(
            c.get(gw.url("/secure/y"))
                .header("authorization", format!("Bearer {t}"))
        )
        .await
        .0,
        200
    );
    assert_eq!(send(c.get(gw.url("/secure/z"))).await.0, 401);
    let complete = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 3)
    })
    .await;
    assert!(complete, "{}", gw.stderr());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&t), "a token reached the access log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    // The log line is written after the response is sent, so two requests on
    // different connections may log in either order: find lines by content.
    let first = lines
        .iter()
        .find(|l| l["request_id"] == rid.as_str())
        .expect("a line for the first request");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/secure/x");
    assert_eq!(first["route"], "secure");
    assert_eq!(first["service"], "a");
    assert_eq!(first["upstream"], a.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["user"], "alice");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let denied = lines
        .iter()
        .find(|l| l["status"] == 401)
        .expect("a line for the 401");
    assert_eq!(denied["path"], "/secure/z");
    assert_eq!(denied["user"], Value::Null);
}
