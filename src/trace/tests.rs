use super::*;
use crate::header_edit::HeaderEdit;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn tracing(yaml: &str) -> Tracing {
    let cfg: TracingConfig = serde_yaml::from_str(yaml).unwrap();
    Tracing::compile(&cfg).unwrap().unwrap()
}

fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
    for (n, v) in headers {
        req.append_header(n.to_string(), *v).unwrap();
    }
    req
}

fn upstream_of(trace: &RequestTrace, client: &RequestHeader) -> RequestHeader {
    let mut up = client.clone();
    HeaderEdit::apply(&mut up, |h| trace.on_upstream_request(h)).unwrap();
    up
}

#[test]
fn a_trusted_parent_is_continued_with_a_new_span_per_attempt() {
    let t = tracing("sampling_ratio: 0\n");
    let client = request(&[("traceparent", PARENT), ("tracestate", "a=1")]);
    let mut trace = RequestTrace::default();
    trace.start(Some(&t), &client, false);
    let (trace_id, server_span) = trace.ids().unwrap();
    assert_eq!(hex::encode(trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    let service: Arc<str> = Arc::from("users");
    trace.begin_attempt(&service, None);
    let first = upstream_of(&trace, &client);
    trace.end_attempt(Err("ConnectRefused"));
    trace.begin_attempt(&service, None);
    let second = upstream_of(&trace, &client);
    let (a, b) = (
        &first.headers["traceparent"],
        &second.headers["traceparent"],
    );
    assert_ne!(a, b, "each attempt has its own span");
    for h in [a, b] {
        let p = context::parse_traceparent(h.as_bytes()).unwrap();
        assert_eq!(p.trace_id, trace_id);
        assert_ne!(p.span_id, server_span);
        assert!(p.sampled, "the parent's decision wins over the ratio");
    }
    assert_eq!(first.headers["tracestate"], "a=1");
}

#[test]
fn untrusted_or_malformed_context_starts_a_new_trace() {
    let t = tracing("trust_incoming: false\n");
    let client = request(&[("traceparent", PARENT), ("tracestate", "a=1")]);
    let mut trace = RequestTrace::default();
    trace.start(Some(&t), &client, false);
    let up = upstream_of(&trace, &client);
    assert!(
        !up.headers["traceparent"]
            .to_str()
            .unwrap()
            .contains("4bf92f35")
    );
    assert!(up.headers.get("tracestate").is_none());
    // The same header from a trusted proxy is continued.
    let mut trusted = RequestTrace::default();
    trusted.start(Some(&t), &client, true);
    assert_eq!(
        hex::encode(trusted.ids().unwrap().0),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // Malformed: replaced, never forwarded.
    let bad = request(&[("traceparent", "00-xyz-01")]);
    let mut fresh = RequestTrace::default();
    fresh.start(Some(&tracing("{}")), &bad, false);
    let up = upstream_of(&fresh, &bad);
    assert!(context::parse_traceparent(up.headers["traceparent"].as_bytes()).is_some());
}

#[test]
fn ratio_zero_propagates_unsampled_and_off_does_nothing() {
    let t = tracing("sampling_ratio: 0.0\n");
    let client = request(&[]);
    let mut trace = RequestTrace::default();
    trace.start(Some(&t), &client, false);
    let up = upstream_of(&trace, &client);
    assert!(up.headers["traceparent"].to_str().unwrap().ends_with("-00"));
    let mut off = RequestTrace::default();
    off.start(None, &client, false);
    assert!(off.ids().is_none());
    assert!(
        upstream_of(&off, &client)
            .headers
            .get("traceparent")
            .is_none()
    );
}

#[test]
fn bad_settings_name_their_key() {
    let err = |yaml: &str| {
        let cfg: TracingConfig = serde_yaml::from_str(yaml).unwrap();
        Tracing::compile(&cfg).unwrap_err().key
    };
    assert_eq!(err("sampling_ratio: 1.5\n"), "tracing.sampling_ratio");
    assert_eq!(
        err("otlp: {endpoint: 'not a url'}\n"),
        "tracing.otlp.endpoint"
    );
    assert_eq!(err("otlp: {protocol: grpc}\n"), "tracing.otlp.protocol");
    assert_eq!(err("otlp: {queue_size: 0}\n"), "tracing.otlp.queue_size");
    let off: TracingConfig = serde_yaml::from_str("enabled: false\n").unwrap();
    assert!(Tracing::compile(&off).unwrap().is_none());
}
