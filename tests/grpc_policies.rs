//! gRPC calls meet the gateway's policies: refusals as gRPC statuses, bad input, deadlines,
//! the gRPC health check, and metrics and access log by method and status.

mod common;
#[path = "common/greeter.rs"]
mod greeter;
#[path = "common/grpc_setup.rs"]
mod grpc_setup;

use common::{Gateway, eventually, free_port, hs256_token};
use greeter::GreeterServer;
use greeter::demo::HelloRequest;
use grpc_setup::*;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "grpc-secret-0123456789-abcdefghijklmno";

#[tokio::test]
async fn the_gateways_refusals_are_grpc_statuses() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let dead = common::dead_addr();
    let gw = Gateway::start(&format!(
        "h2c: true\n\
         auth:\n  keys: [{{kid: k, alg: HS256, secret: {SECRET}}}]\n\
         rate_limits:\n  policies:\n    once: {{requests: 1, period: 60s, key: ip}}\n\
         services:\n  greeter: {{backends: ['{}'], http2: true}}\n  dead: {{backends: ['{dead}'], http2: true, retries: 0}}\n\
         routes:\n\
         \x20 - {{path: /demo.Greeter/SayHello, match: exact, service: greeter, strip_prefix: false, protocol: grpc, auth: required, roles: [admin]}}\n\
         \x20 - {{path: /demo.Greeter/SayHellos, match: exact, service: greeter, strip_prefix: false, protocol: grpc, rate_limits: [once]}}\n\
         \x20 - {{path: /demo.Greeter/CollectHellos, match: exact, service: dead, strip_prefix: false, protocol: grpc}}\n\
         \x20 - {{path: /demo.Greeter/Chat, match: exact, service: greeter, strip_prefix: false, protocol: grpc, ip_restriction: {{deny: ['127.0.0.0/8']}}}}\n",
        up.addr
    ));
    let mut c = client(&gw).await;

    let err = status(c.say_hello(hello("x")).await);
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "No token provided");
    let mut req = tonic::Request::new(hello("x"));
    let user = hs256_token(SECRET, serde_json::json!({"sub": "u", "role": "user"}));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {user}").parse().unwrap());
    let err = status(c.say_hello(req).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut req = tonic::Request::new(hello("admin"));
    let admin = hs256_token(SECRET, serde_json::json!({"sub": "a", "role": "admin"}));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    assert_eq!(
        c.say_hello(req).await.unwrap().get_ref().message,
        "Hello, admin!"
    );

    // Rate limits count calls: the second call in the minute is refused.
    assert!(c.say_hellos(hello("once")).await.is_ok());
    let err = status(c.say_hellos(hello("twice")).await);
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "Rate limit exceeded");
    assert!(err.metadata().get("retry-after").is_some());

    let err = status(c.collect_hellos(futures::stream::iter([hello("a")])).await);
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let err = status(c.chat(futures::stream::iter([hello("a")])).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // No route for the method: UNIMPLEMENTED, as a server without the method answers.
    let raw = tonic::client::Grpc::new(
        Channel::from_shared(gw.url(""))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let err = unknown_method(raw).await;
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(up.calls(), 2, "refused calls never reached the service");
}

/// The status of a call that must fail.
fn status<T>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    r.map(|_| ()).unwrap_err()
}

/// Calls `/demo.Greeter/Nope`, a method no route has.
async fn unknown_method(mut grpc: tonic::client::Grpc<Channel>) -> tonic::Status {
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HelloRequest, greeter::demo::HelloReply>::default();
    let path = http::uri::PathAndQuery::from_static("/demo.Greeter/Nope");
    grpc.unary(tonic::Request::new(hello("x")), path, codec)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn bad_input_gets_the_right_status_never_json() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, ", grpc: {max_message_bytes: 64}");
    let mut c = client(&gw).await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.say_hello(hello(&"x".repeat(100))))
        .await
        .unwrap_or_else(|_| panic!("hung: {}", gw.stderr()))
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "gRPC message larger than 64 bytes");
    // A message over the limit in the middle of a client stream ends the call.
    let names = futures::stream::iter([hello("a"), hello(&"y".repeat(100))]);
    let err = c.collect_hellos(names).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let mut req = tonic::Request::new(hello("t"));
    req.metadata_mut()
        .insert("grpc-timeout", "10s".parse().unwrap());
    let err = c.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("grpc-timeout"), "{err:?}");

    // Raw HTTP/2: a bad flag byte, and a body ending inside a message.
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (body, why) in [
        (&b"\x07\0\0\0\x01x"[..], "flag"),
        (&b"\0\0\0\0\x09abc"[..], "ended inside a message"),
    ] {
        let resp = http
            .post(gw.url("/demo.Greeter/SayHello"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "13", "{why}");
        let message = resp.headers()["grpc-message"].to_str().unwrap().to_string();
        assert!(
            message.contains(&why.replace(' ', "%20")) || message.contains(why),
            "{message}"
        );
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // A plain HTTP request on the gRPC route: an HTTP client's JSON error.
    let resp = http
        .get(gw.url("/demo.Greeter/SayHello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(resp.headers()["content-type"], "application/json");
    // Only the client stream reached the service (with its first, small message): messages
    // are checked as they stream, not buffered.
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn deadlines_are_passed_on_and_capped() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = gateway(&up, ", grpc: {max_timeout: 2s}");
    let mut c = client(&gw).await;
    let mut req = tonic::Request::new(hello("d"));
    req.set_timeout(Duration::from_millis(1500));
    let seen = c.say_hello(req).await.unwrap().into_inner().metadata;
    let left = grpc_timeout(&seen["grpc-timeout"]);
    assert!(
        left <= Duration::from_millis(1500) && left > Duration::from_millis(1000),
        "{left:?}"
    );
    // A longer deadline, or none, is cut to the route's cap.
    for asked in [Some(Duration::from_secs(60)), None] {
        let mut req = tonic::Request::new(hello("d"));
        if let Some(t) = asked {
            req.set_timeout(t);
        }
        let seen = c.say_hello(req).await.unwrap().into_inner().metadata;
        let left = grpc_timeout(&seen["grpc-timeout"]);
        assert!(
            left <= Duration::from_secs(2) && left > Duration::from_millis(1500),
            "{left:?}"
        );
    }
}

/// Reads a `grpc-timeout` the service received.
fn grpc_timeout(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "u" => Duration::from_micros(n),
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        _ => panic!("unexpected unit in {v}"),
    }
}

#[tokio::test]
async fn a_service_that_ignores_the_deadline_is_cut_at_it() {
    // An HTTP/2 upstream that knows nothing of grpc-timeout and answers after 3 s.
    let slow = common::EchoServer::start("slow", "127.0.0.1:0")
        .await
        .unwrap();
    slow.set_delay_ms(3000);
    let gw = Gateway::start(&format!(
        "h2c: true\nservices:\n  slow: {{backends: ['{}'], http2: true}}\nroutes:\n  - {{path: /demo.Greeter/, service: slow, strip_prefix: false, protocol: grpc, grpc: {{max_timeout: 300ms}}}}\n",
        slow.addr
    ));
    let mut c = client(&gw).await;
    let started = Instant::now();
    let err = c.say_hello(hello("slow")).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_grpc_health_check_switches_a_backend_out_and_back() {
    let a = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let b = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "h2c: true\nservices:\n  greeter:\n    backends: ['{}', '{}']\n    http2: true\n    health_check: {{type: grpc, service: demo.Greeter, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1}}\nroutes:\n  - {{path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc}}\n",
        a.addr, b.addr
    ));
    let c = client(&gw).await;
    // Ten calls that all land on `b` (and none on `a`).
    let only_b = || {
        let (mut c, a, b) = (c.clone(), &a, &b);
        async move {
            let (a0, b0) = (a.calls(), b.calls());
            for _ in 0..10 {
                c.say_hello(hello("h")).await.unwrap();
            }
            a.calls() == a0 && b.calls() == b0 + 10
        }
    };
    assert!(!only_b().await, "both backends serve at first");
    a.set_serving(false).await;
    assert!(
        eventually(Duration::from_secs(5), only_b).await,
        "{}",
        gw.stderr()
    );
    a.set_serving(true).await;
    let both = eventually(Duration::from_secs(5), || async { !only_b().await }).await;
    assert!(both, "a SERVING backend comes back");
}

#[tokio::test]
async fn calls_are_counted_and_logged_by_method_and_status() {
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let admin = free_port();
    let gw = gateway_with(
        &up,
        &format!("admin: {{listen: '127.0.0.1:{admin}'}}\naccess_log: {{path: access.log}}\n"),
        "  - {name: greeter, path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc, grpc: {max_message_bytes: 64}}\n",
    );
    let mut c = client(&gw).await;
    c.say_hello(hello("a")).await.unwrap();
    c.say_hello(failing("b", Code::NotFound)).await.unwrap_err();
    c.say_hello(hello(&"z".repeat(100))).await.unwrap_err();
    let mut stream = c
        .say_hellos(HelloRequest {
            name: "s".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    let line = |method: &str, code: &str| {
        format!(
            "apigateway_grpc_calls_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"demo.Greeter\",route=\"greeter\"}} 1"
        )
    };
    let expected = [
        line("SayHello", "OK"),
        line("SayHello", "NOT_FOUND"),
        line("SayHello", "RESOURCE_EXHAUSTED"),
        line("SayHellos", "OK"),
    ];
    let counted = eventually(Duration::from_secs(5), || async {
        let text = common::metrics_text(admin).await;
        expected.iter().all(|l| text.contains(l.as_str()))
    })
    .await;
    assert!(counted, "{}", common::metrics_text(admin).await);
    let logged = eventually(Duration::from_secs(5), || async {
        let log = std::fs::read_to_string(gw.dir().join("access.log")).unwrap_or_default();
        log.lines().count() == 4
    })
    .await;
    assert!(logged);
    let log = std::fs::read_to_string(gw.dir().join("access.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<_> = lines.iter().map(|l| l["grpc_status"].as_u64()).collect();
    assert_eq!(statuses, [Some(0), Some(5), Some(8), Some(0)], "{log}");
    assert_eq!(lines[0]["grpc_service"], "demo.Greeter");
    assert_eq!(lines[3]["grpc_method"], "SayHellos");
}

#[tokio::test]
async fn api_keys_come_from_metadata_and_transforms_edit_it() {
    use sha2::{Digest, Sha256};
    let up = GreeterServer::start("127.0.0.1:0").await.unwrap();
    let key = format!("test_{}", uuid::Uuid::new_v4().simple());
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let gw = gateway_with(
        &up,
        &format!(
            "consumer_auth:\n  api_key: {{headers: [x-api-key]}}\n\
             consumers:\n  - {{id: partner, api_keys: [{{hash: 'sha256:{hash}'}}]}}\n"
        ),
        "  - path: /demo.Greeter/\n    service: greeter\n    strip_prefix: false\n    protocol: grpc\n    auth: required\n    auth_methods: [api_key]\n    request:\n      headers:\n        remove: [x-drop]\n        set: {x-caller: '{request_id}'}\n",
    );
    let mut c = client(&gw).await;
    let err = c.say_hello(hello("anon")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "No API key provided");
    let mut req = tonic::Request::new(hello("partner"));
    req.metadata_mut().insert("x-api-key", key.parse().unwrap());
    req.metadata_mut()
        .insert("x-drop", "secret".parse().unwrap());
    let seen = c.say_hello(req).await.unwrap().into_inner().metadata;
    assert_eq!(seen["x-consumer-id"], "partner");
    assert!(
        !seen.contains_key("x-api-key"),
        "the key never reaches the service"
    );
    assert!(!seen.contains_key("x-drop"));
    assert_eq!(seen["x-caller"].len(), 36, "{seen:?}");
    let mut req = tonic::Request::new(hello("wrong"));
    req.metadata_mut()
        .insert("x-api-key", "test_wrong".parse().unwrap());
    let err = c.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
