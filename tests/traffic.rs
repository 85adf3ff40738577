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
         \x20     - {{service: canary, weight: 20, when: {{headers: {{x-canary: always}}}}}}\n\
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

#[tokio::test]
async fn a_route_with_conditions_takes_its_requests_before_the_same_path_without() {
    let stable = EchoServer::start("stable", "127.0.0.1:0").await.unwrap();
    let beta = EchoServer::start("beta", "127.0.0.1:0").await.unwrap();
    // The conditional route comes second in the file and still wins when its conditions hold.
    let gw = Gateway::start(&format!(
        "services:\n  stable: {{backends: ['{}']}}\n  beta: {{backends: ['{}']}}\n\
         routes:\n\
         \x20 - {{path: /shop, service: stable}}\n\
         \x20 - path: /shop\n    service: beta\n\
         \x20   when: {{cookies: {{tier: {{prefix: beta}}}}, query: {{v: {{regex: '^2'}}}}}}\n\
         \x20 - {{path: /labs, service: beta, when: {{headers: {{x-labs: 'on'}}}}}}\n",
        stable.addr, beta.addr
    ));
    let both = [("cookie", "a=1; tier=beta-7")];
    let seen = services_answering(&gw, "/shop/x?v=2.1", &both, 20).await;
    assert_eq!(seen.get("beta"), Some(&20), "{seen:?}");
    let seen = services_answering(&gw, "/shop/x?v=1", &both, 20).await;
    assert_eq!(
        seen.get("stable"),
        Some(&20),
        "every condition must hold: {seen:?}"
    );
    let seen = services_answering(&gw, "/shop/x?v=2", &[], 20).await;
    assert_eq!(seen.get("stable"), Some(&20), "{seen:?}");
    let c = client();
    let (status, _, body) = send(c.get(gw.url("/labs")).header("x-labs", "on")).await;
    assert_eq!((status, body["service"].as_str()), (200, Some("beta")));
    let (status, _, body) = send(c.get(gw.url("/labs"))).await;
    assert_eq!(status, 404, "no route without the header: {body}");
    assert_eq!(body["error"], "Route not found");
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
            "split: [{service: a, weight: 1, when: {query: {v: {regex: '(['}}}}]",
            "routes[0].split[0].when.query.v.regex: bad regex",
        ),
        (
            "service: a\n    sticky: user",
            "routes[0].sticky: needs `split`",
        ),
        ("split: [{service: a, weight: -5}]", "weight"),
        (
            "service: a\n    mirror: {service: a, sample_ratio: 1.5}",
            "routes[0].mirror.sample_ratio: 1.5 is not between 0 and 1",
        ),
        (
            "service: a\n    mirror: {service: ghost}",
            "routes[0].mirror.service: unknown service \"ghost\"",
        ),
    ] {
        let (ok, text, _) = check_config(&format!(
            "listen: ['127.0.0.1:0']\nservices:\n  a: {{backends: ['127.0.0.1:9']}}\nroutes:\n  - path: /\n    {split}\n"
        ));
        assert!(!ok, "{split}");
        assert!(text.contains(expected), "{split}: {text}");
    }
}

/// A request as a mirror received it.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A loopback HTTP/1 server that records every request and answers 500 (which the gateway
/// must ignore); the receiver gets them as they arrive.
async fn recording_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Received>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let _ = tx.send(Received {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let mut answer = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"mirror says no"),
                            ));
                            *answer.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A port that accepts connections and never answers.
async fn hanging_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_mirror_gets_a_marked_copy_and_its_answer_is_discarded() {
    let main = EchoServer::start("main", "127.0.0.1:0").await.unwrap();
    let (shadow, mut received) = recording_server().await;
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  main: {{backends: ['{}']}}\n  shadow: {{backends: ['{shadow}']}}\n\
         routes:\n  - path: /orders\n    name: orders\n    service: main\n\
         \x20   mirror: {{service: shadow, max_body_bytes: 16}}\n",
        main.addr
    ));
    let c = client();
    let (status, headers, body) = send(
        c.post(gw.url("/orders/7?x=1"))
            .header("x-client", "yes")
            .body("{\"qty\":2}"),
    )
    .await;
    assert_eq!(
        (status, body["service"].as_str()),
        (200, Some("main")),
        "the client's answer is the main service's"
    );
    let copy = tokio::time::timeout(std::time::Duration::from_secs(5), received.recv())
        .await
        .expect("the mirror got a copy")
        .unwrap();
    assert_eq!(
        (copy.method.as_str(), copy.path.as_str()),
        ("POST", "/7?x=1")
    );
    assert_eq!(copy.body, b"{\"qty\":2}");
    assert_eq!(copy.headers["x-client"], "yes");
    assert_eq!(copy.headers["x-gateway-mirror"], "1");
    assert_eq!(copy.headers["x-request-id"], headers["x-request-id"]);
    // Over the 16-byte cap: the copy goes without its body, and is counted.
    let (status, _, _) = send(c.post(gw.url("/orders/8")).body("x".repeat(100))).await;
    assert_eq!(status, 200);
    let bare = tokio::time::timeout(std::time::Duration::from_secs(5), received.recv())
        .await
        .expect("the mirror got the second copy")
        .unwrap();
    assert_eq!((bare.path.as_str(), bare.body.len()), ("/8", 0));
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            let m = metrics_text(admin).await;
            m.contains(
                "apigateway_mirror_requests_total{result=\"body_too_large\",route=\"orders\"} 1",
            ) && m.contains("apigateway_mirror_requests_total{result=\"sent\",route=\"orders\"} 2")
        })
        .await,
        "{}",
        metrics_text(admin).await
    );
}

#[tokio::test]
async fn a_hanging_mirror_changes_nothing_for_clients_and_extra_copies_are_dropped() {
    let main = EchoServer::start("main", "127.0.0.1:0").await.unwrap();
    let stuck = hanging_server().await;
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  main: {{backends: ['{}']}}\n  stuck: {{backends: ['{stuck}'], timeouts: {{read: 30s}}}}\n\
         routes:\n  - path: /orders\n    name: orders\n    service: main\n\
         \x20   mirror: {{service: stuck, max_in_flight: 2}}\n",
        main.addr
    ));
    let c = client();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let (status, _, body) = send(c.get(gw.url(&format!("/orders/{i}")))).await;
        assert_eq!((status, body["service"].as_str()), (200, Some("main")));
    }
    // Twenty requests against a mirror that never answers: as fast as without one.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let m = metrics_text(admin).await;
    assert!(
        m.contains("apigateway_mirror_requests_total{result=\"dropped\",route=\"orders\"} 18"),
        "{m}"
    );
}

#[tokio::test]
async fn a_spent_retry_budget_stops_a_retry_storm() {
    let live = EchoServer::start("live", "127.0.0.1:0").await.unwrap();
    let admin = free_port();
    // Round robin over a dead and a live backend, the breaker off: every other request needs
    // a retry. The budget allows 2 a second and no share of the traffic.
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\n\
         services:\n  pair:\n    backends: ['{}', '{}']\n    retries: 1\n\
         \x20   passive_health: {{failures: 0}}\n\
         \x20   retry_budget: {{ratio: 0.0, min_per_second: 2}}\n\
         routes:\n  - {{path: /, service: pair}}\n",
        dead_addr(),
        live.addr
    ));
    let c = client();
    let (mut ok, mut failed) = (0, 0);
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let (status, _, _) = send(c.get(gw.url("/x"))).await;
        match status {
            200 => ok += 1,
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Each second of the run grants 2 retries; the other dead-first requests fail fast.
    let seconds = started.elapsed().as_secs() + 1;
    assert!(failed > 0, "no retry was refused: {ok} ok");
    assert!(
        ok >= 20,
        "the live backend answered its half: {ok} ok, {failed} failed"
    );
    let granted = 40 - failed - 20;
    assert!(
        granted <= 2 * seconds as usize,
        "{granted} retries in {seconds} s"
    );
    let m = metrics_text(admin).await;
    assert!(
        m.contains(&format!(
            "apigateway_retry_budget_exhausted_total{{service=\"pair\"}} {failed}"
        )),
        "{failed} refused: {m}"
    );
}

#[tokio::test]
async fn the_total_deadline_cuts_an_attempts_read_timeout() {
    let slow = EchoServer::start("slow", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  slow:\n    backends: ['{}']\n    timeouts: {{read: 10s, total: 400ms}}\n\
         routes:\n  - {{path: /, service: slow}}\n",
        slow.addr
    ));
    let started = std::time::Instant::now();
    let (status, _, body) = send(client().get(gw.url("/x?sleep_ms=5000"))).await;
    assert_eq!(status, 504, "{body}");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(350) && took < std::time::Duration::from_secs(3),
        "{took:?}: the 400 ms deadline, not the 10 s read timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_most_of_a_concurrent_load_to_the_faster_backend() {
    let fast = EchoServer::start("fast", "127.0.0.1:0").await.unwrap();
    let slow = EchoServer::start("slow", "127.0.0.1:0").await.unwrap();
    slow.set_delay_ms(150);
    let gw = Gateway::start(&format!(
        "services:\n  pair:\n    backends: ['{}', '{}']\n    load_balancing: least_request\n\
         routes:\n  - {{path: /, service: pair}}\n",
        fast.addr, slow.addr
    ));
    // 200 requests, 10 at a time: round robin would send 100 to each; with the slow one
    // holding its requests 150 ms, least-request draws it only when both draws land on it.
    let counts = services_answering_concurrently(&gw, 200, 10).await;
    let to_fast = counts.get("fast").copied().unwrap_or(0);
    assert!(to_fast >= 150, "{counts:?}");
    assert!(
        counts.get("slow").copied().unwrap_or(0) > 0,
        "the slow one still gets some: {counts:?}"
    );
}

/// Sends `n` GETs, `concurrency` in flight at a time (a new one as soon as one ends), and
/// counts the answering services.
async fn services_answering_concurrently(
    gw: &Gateway,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    use futures::StreamExt;
    let c = client();
    let answers: Vec<_> = futures::stream::iter(0..n)
        .map(|_| send(c.get(gw.url("/x"))))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for (status, _, body) in answers {
        assert_eq!(status, 200, "{body}");
        *counts
            .entry(body["service"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_moves_away_from_a_backend_that_turns_slow() {
    let a = EchoServer::start("a", "127.0.0.1:0").await.unwrap();
    let b = EchoServer::start("b", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  pair:\n    backends: ['{}', '{}']\n    load_balancing: ewma\n\
         routes:\n  - {{path: /, service: pair}}\n",
        a.addr, b.addr
    ));
    // Round robin would send each 10 of every 20; the balancer learns from one slow answer.
    // Slow is 300 ms: far above a fast answer even when parallel tests starve the machine.
    a.set_delay_ms(300);
    let first = services_answering_concurrently(&gw, 20, 1).await;
    assert!(first.get("b").copied().unwrap_or(0) >= 17, "{first:?}");
    a.set_delay_ms(0);
    b.set_delay_ms(300);
    let second = services_answering_concurrently(&gw, 20, 1).await;
    assert!(second.get("a").copied().unwrap_or(0) >= 16, "{second:?}");
}
