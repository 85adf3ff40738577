//! An OTLP/HTTP trace receiver for tests: decodes each `ExportTraceServiceRequest` with
//! `opentelemetry-proto` and keeps the spans; can answer 500 or stall to play a sick collector.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Span>>,
    resources: Mutex<Vec<Vec<(String, String)>>>,
    status: AtomicU16,
    posts: AtomicUsize,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::Relaxed);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(receive(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpReceiver { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Answer every export with this status from now on.
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.spans.lock().unwrap().clone()
    }

    pub fn posts(&self) -> usize {
        self.state.posts.load(Ordering::Relaxed)
    }

    /// The resource attributes of every export received.
    pub fn resources(&self) -> Vec<Vec<(String, String)>> {
        self.state.resources.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.posts.fetch_add(1, Ordering::Relaxed);
    let ok = req.uri().path() == "/v1/traces"
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = state.status.load(Ordering::Relaxed);
    let decoded = (ok && status == 200)
        .then(|| ExportTraceServiceRequest::decode(body).ok())
        .flatten();
    for rs in decoded.map(|e| e.resource_spans).unwrap_or_default() {
        if let Some(r) = rs.resource {
            let attrs = r
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), string_of(kv.value.as_ref())))
                .collect();
            state.resources.lock().unwrap().push(attrs);
        }
        for ss in rs.scope_spans {
            state.spans.lock().unwrap().extend(ss.spans);
        }
    }
    Response::builder()
        .status(if ok { status } else { 400 })
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn string_of(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// A span's attribute as text.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| string_of(kv.value.as_ref()))
}
