//! Tracing through the real gateway (issue #18): W3C Trace Context in and out, server and
//! client spans exported over OTLP/HTTP to a receiver decoding the protobuf, sampling, sick
//! collectors, and the flush on a graceful shutdown.

mod common;
use common::otlp::{OtlpReceiver, attr};
use common::*;
use serde_json::Value;
use std::time::Duration;

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn tracing(otlp: &OtlpReceiver, extra: &str) -> String {
    format!(
        "tracing:\n  response_header: traceresponse\n  otlp: {{endpoint: '{}', flush_interval: 100ms}}\n{extra}",
        otlp.endpoint()
    )
}

/// The `traceparent` the upstream received (from the echo body).
fn sent_upstream(body: &Value) -> String {
    body["headers"]["traceparent"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn spans_of(
    otlp: &OtlpReceiver,
    trace: &str,
    at_least: usize,
) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    let found = eventually(Duration::from_secs(10), || async {
        otlp.spans()
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == trace)
            .count()
            >= at_least
    })
    .await;
    assert!(
        found,
        "fewer than {at_least} spans of trace {trace} arrived"
    );
    otlp.spans()
        .into_iter()
        .filter(|s| hex::encode(&s.trace_id) == trace)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_clients_trace_and_carry_http_attributes() {
    let otlp = OtlpReceiver::start().await;
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("access.log");
    let gw = Gateway::start(&format!(
        "services:\n  up: {{backends: ['{}']}}\n{}access_log: {{path: '{}'}}\n\
         routes:\n  - {{name: users, path: /api/users/:id, service: up}}\n",
        up.addr,
        tracing(&otlp, ""),
        log_file.display()
    ));
    let (status, headers, body) = send(
        client()
            .get(gw.url("/api/users/7"))
            .header("traceparent", PARENT)
            .header("tracestate", "vendor=abc"),
    )
    .await;
    assert_eq!(status, 200);
    let upstream = sent_upstream(&body);
    assert!(
        upstream.starts_with(&format!("00-{PARENT_TRACE}-")) && upstream.ends_with("-01"),
        "{upstream}"
    );
    assert_eq!(body["headers"]["tracestate"], "vendor=abc");
    let answered = headers["traceresponse"].to_str().unwrap().to_string();
    assert!(
        answered.starts_with(&format!("00-{PARENT_TRACE}-")),
        "{answered}"
    );

    let spans = spans_of(&otlp, PARENT_TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let client_span = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex::encode(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.span_id, client_span.parent_span_id);
    assert_eq!(
        upstream,
        format!("00-{PARENT_TRACE}-{}-01", hex::encode(&client_span.span_id))
    );
    assert_eq!(
        answered,
        format!("00-{PARENT_TRACE}-{}-01", hex::encode(&server.span_id))
    );
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/api/users/7"));
    assert_eq!(
        attr(server, "http.route").as_deref(),
        Some("/api/users/:id")
    );
    assert_eq!(attr(server, "apigateway.route").as_deref(), Some("users"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(client_span, "network.peer.port"),
        Some(up.addr.port().to_string())
    );
    assert_eq!(
        attr(client_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(server.end_time_unix_nano >= client_span.end_time_unix_nano);
    let resource = &otlp.resources()[0];
    assert!(
        resource.contains(&("service.name".into(), "apigateway".into())),
        "{resource:?}"
    );

    // The access log line carries the ids.
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .contains(&format!("\"trace_id\":\"{PARENT_TRACE}\""))
    })
    .await;
    assert!(logged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_and_every_aggregate_call_gets_its_own_client_span() {
    let otlp = OtlpReceiver::start().await;
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  pair: {{backends: ['{}', '{}'], retries: 1}}\n  up: {{backends: ['{}']}}\n  down: {{backends: ['{}']}}\n{}\
         routes:\n  - {{path: /pair, service: pair}}\n  - {{path: /down, service: down}}\n\
         \x20 - path: /agg\n    aggregate: {{calls: [{{key: a, service: up, path: /a}}, {{key: b, service: up, path: /b}}]}}\n",
        dead_addr(),
        up.addr,
        up.addr,
        dead_addr(),
        tracing(&otlp, "")
    ));
    // Round robin over a dead and a live backend: some requests need a second attempt.
    let mut traces = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = send(client().get(gw.url("/pair"))).await;
        assert_eq!(status, 200);
        let t = headers["traceresponse"].to_str().unwrap()[3..35].to_string();
        traces.push(t);
    }
    let mut retried = 0;
    for t in &traces {
        let spans = spans_of(&otlp, t, 2).await;
        let clients: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
        if clients.len() == 2 {
            retried += 1;
            assert!(
                clients.iter().any(|c| attr(c, "error.type").is_some()),
                "the failed attempt says why"
            );
            assert_ne!(clients[0].span_id, clients[1].span_id);
        }
    }
    assert!(retried >= 1, "no request needed a retry");

    // A failed request's error-log line names its request id and trace id.
    let (status, headers, _) = send(client().get(gw.url("/down"))).await;
    assert_eq!(status, 502);
    let trace = headers["traceresponse"].to_str().unwrap()[3..35].to_string();
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    let logged = eventually(Duration::from_secs(5), || async {
        gw.stderr()
            .lines()
            .any(|l| l.contains(&request_id) && l.contains(&trace))
    })
    .await;
    assert!(logged, "{}", gw.stderr());

    let (status, headers, body) = send(client().get(gw.url("/agg"))).await;
    assert_eq!(status, 200);
    let t = headers["traceresponse"].to_str().unwrap()[3..35].to_string();
    let spans = spans_of(&otlp, &t, 3).await;
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == 3)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for key in ["a", "b"] {
        let sent = body[key]["headers"]["traceparent"].as_str().unwrap();
        assert!(sent.contains(&t), "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_trust_and_malformed_context() {
    let otlp = OtlpReceiver::start().await;
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  up: {{backends: ['{}']}}\n{}  sampling_ratio: 0\n  trust_incoming: false\n\
         trusted_proxies: ['127.0.0.2']\nroutes:\n  - {{path: /x, service: up}}\n",
        up.addr,
        tracing(&otlp, "")
    ));
    // A new trace sampled out: propagated with the flag cleared, never exported.
    let (_, headers, body) = send(client().get(gw.url("/x"))).await;
    let sent = sent_upstream(&body);
    assert!(sent.ends_with("-00"), "{sent}");
    let new_trace = headers["traceresponse"].to_str().unwrap()[3..35].to_string();
    // Client context is ignored from an untrusted peer...
    let (_, _, body) = send(client().get(gw.url("/x")).header("traceparent", PARENT)).await;
    assert!(!sent_upstream(&body).contains(PARENT_TRACE));
    // ...and continued from a trusted proxy, its sampled flag winning over the ratio.
    let proxy = client_from("127.0.0.2");
    let (_, _, body) = send(proxy.get(gw.url("/x")).header("traceparent", PARENT)).await;
    assert!(sent_upstream(&body).starts_with(&format!("00-{PARENT_TRACE}-")));
    assert!(sent_upstream(&body).ends_with("-01"));
    spans_of(&otlp, PARENT_TRACE, 2).await;
    // A malformed header from a trusted proxy is replaced, not forwarded.
    let (_, _, body) = send(proxy.get(gw.url("/x")).header("traceparent", "00-zz-01")).await;
    let replaced = sent_upstream(&body);
    assert!(
        replaced.len() == 55 && replaced.starts_with("00-"),
        "{replaced}"
    );
    assert!(
        otlp.spans()
            .iter()
            .all(|s| hex::encode(&s.trace_id) != new_trace)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_collector_changes_nothing_for_clients_and_is_counted() {
    let admin = free_port();
    let otlp = OtlpReceiver::start().await;
    otlp.answer(500);
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\nservices:\n  up: {{backends: ['{}']}}\n\
         tracing:\n  otlp: {{endpoint: '{}', flush_interval: 50ms, max_retries: 1, queue_size: 4, batch_size: 2}}\n\
         routes:\n  - {{path: /x, service: up}}\n",
        up.addr,
        otlp.endpoint()
    ));
    let c = client();
    for _ in 0..40 {
        let started = std::time::Instant::now();
        assert_eq!(send(c.get(gw.url("/x"))).await.0, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let counted = eventually(Duration::from_secs(10), || async {
        let m = metrics_text(admin).await;
        m.contains("apigateway_trace_export_failures_total")
            && !m.contains("apigateway_trace_export_failures_total 0")
            && !m.contains("apigateway_trace_spans_dropped_total 0")
    })
    .await;
    assert!(counted, "{}", metrics_text(admin).await);
    assert!(otlp.posts() >= 2, "the exporter retried");
    let m = metrics_text(admin).await;
    assert!(m.contains("apigateway_trace_spans_exported_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_waiting_for_their_batch_are_flushed_on_graceful_shutdown() {
    let otlp = OtlpReceiver::start().await;
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "services:\n  up: {{backends: ['{}']}}\n\
         tracing:\n  response_header: traceresponse\n  otlp: {{endpoint: '{}', flush_interval: 60s}}\n\
         routes:\n  - {{path: /x, service: up}}\n",
        up.addr,
        otlp.endpoint()
    ));
    let (_, headers, _) = send(client().get(gw.url("/x"))).await;
    let t = headers["traceresponse"].to_str().unwrap()[3..35].to_string();
    assert!(
        otlp.spans().is_empty(),
        "nothing is sent before the minute is up"
    );
    gw.signal("QUIT");
    let flushed = eventually(Duration::from_secs(15), || async {
        otlp.spans()
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == t)
            .count()
            >= 2
    })
    .await;
    assert!(flushed, "spans not flushed on SIGQUIT:\n{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_drops_spans_quietly() {
    let admin = free_port();
    let up = EchoServer::start("up", "127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "admin: {{listen: '127.0.0.1:{admin}'}}\nservices:\n  up: {{backends: ['{}']}}\n\
         tracing:\n  otlp: {{endpoint: 'http://{}/v1/traces', flush_interval: 50ms, max_retries: 0, timeout: 200ms}}\n\
         routes:\n  - {{path: /x, service: up}}\n",
        up.addr,
        dead_addr()
    ));
    for _ in 0..10 {
        assert_eq!(send(client().get(gw.url("/x"))).await.0, 200);
    }
    let dropped = eventually(Duration::from_secs(10), || async {
        metrics_text(admin)
            .await
            .lines()
            .any(|l| l.starts_with("apigateway_trace_spans_dropped_total ") && !l.ends_with(" 0"))
    })
    .await;
    assert!(dropped, "{}", metrics_text(admin).await);
}

#[test]
fn bad_tracing_settings_are_config_errors_naming_the_key() {
    let base = "listen: ['127.0.0.1:0']\nservices: {up: {backends: ['127.0.0.1:1']}}\nroutes: [{path: /a, service: up}]\n";
    for (yaml, key) in [
        (
            "tracing: {sampling_ratio: -0.1}\n",
            "tracing.sampling_ratio",
        ),
        (
            "tracing: {otlp: {endpoint: 'ftp://x/v1/traces'}}\n",
            "tracing.otlp.endpoint",
        ),
        (
            "tracing: {otlp: {protocol: grpc}}\n",
            "tracing.otlp.protocol",
        ),
    ] {
        let (ok, out, _) = check_config(&format!("{base}{yaml}"));
        assert!(!ok && out.contains(key), "{yaml}\n{out}");
    }
}
