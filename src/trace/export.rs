//! The OTLP/HTTP exporter: a bounded queue filled by requests, and one background thread that
//! batches, encodes (`opentelemetry-proto`'s prost messages) and posts to the collector.
//!
//! Ours rather than the `opentelemetry` SDK's batch processor: the SDK builds a span object
//! with attribute vectors on the request path, where the gateway keeps a few ids and
//! timestamps and builds attributes here, off the request path; and the thread starts on the
//! first span, after the process has daemonized, like the access-log writer.

use super::ClientSpan;
use super::config::ExportSettings;
use super::context::{SpanId, TraceId};
use http::HeaderValue;
use once_cell::sync::OnceCell;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prost::Message;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// What the server span says beyond ids and times, filled in the `logging` phase.
#[derive(Debug, Clone, Default)]
pub struct ServerSpan {
    pub method: String,
    pub path: String,
    /// The matched route's pattern (`http.route`) and name (`apigateway.route`).
    pub route_pattern: Option<String>,
    pub route_name: Option<String>,
    pub service: Option<Arc<str>>,
    pub status: u16,
    pub host: Option<String>,
    pub client: Option<IpAddr>,
    pub rate_limit: Option<&'static str>,
    /// The gateway's refusal or failure, for `error.type`.
    pub error: Option<String>,
    /// `enduser.id`, only with `tracing.record_subject`.
    pub subject: Option<String>,
}

/// One finished, sampled request: a server span and its client spans.
pub struct FinishedRequest {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub tracestate: Option<HeaderValue>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub server: ServerSpan,
    pub clients: Vec<ClientSpan>,
}

/// What the exporter thread receives.
enum Item {
    Request(Box<FinishedRequest>),
    /// Wakes the exporter to send what it holds (graceful shutdown).
    Flush,
}

static QUEUE: OnceCell<Option<SyncSender<Item>>> = OnceCell::new();
/// Set on graceful shutdown: the exporter then sends whatever it has right away.
static DRAIN: AtomicBool = AtomicBool::new(false);
/// Requests queued or being exported, so a shutdown can wait until they are out.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Queues a finished request; never blocks: a full queue drops it (and counts it).
pub fn submit(settings: &ExportSettings, request: FinishedRequest) {
    let Some(queue) = QUEUE.get_or_init(|| start(settings)) else {
        return;
    };
    let spans = 1 + request.clients.len() as u64;
    PENDING.fetch_add(1, Ordering::AcqRel);
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue.try_send(Item::Request(Box::new(request)))
    {
        PENDING.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::spans_dropped(spans);
    }
}

/// From now on the exporter sends each batch as soon as it has one (graceful shutdown or
/// upgrade: the process is about to exit), starting with what it holds.
pub fn start_draining() {
    if !DRAIN.swap(true, Ordering::AcqRel)
        && let Some(Some(queue)) = QUEUE.get()
    {
        let _ = queue.try_send(Item::Flush);
    }
}

/// Returns once everything queued so far is exported (or dropped), or after `limit`.
/// Blocking: call it from a blocking thread, which Pingora's shutdown waits for.
pub fn wait_drained(limit: Duration) {
    start_draining();
    let deadline = Instant::now() + limit;
    while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(settings: &ExportSettings) -> Option<SyncSender<Item>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue_size);
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("trace export".into())
        .spawn(move || Exporter::new(settings).run(&rx));
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            log::error!("cannot start the trace exporter: {e}; spans are not exported");
            None
        }
    }
}

struct Exporter {
    settings: ExportSettings,
    resource: Resource,
    client: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    fn new(settings: ExportSettings) -> Self {
        let instance = format!("{}-{}", hostname(), std::process::id());
        let resource = Resource {
            attributes: vec![
                kv("service.name", &settings.service_name),
                kv("service.version", env!("CARGO_PKG_VERSION")),
                kv("service.instance.id", &instance),
            ],
            ..Default::default()
        };
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| log::error!("trace exporter runtime: {e}"))
            .ok();
        Exporter {
            settings,
            resource,
            client,
            runtime,
        }
    }

    /// Collects up to `batch_size` spans or for `flush_interval`, then exports them.
    fn run(&self, queue: &Receiver<Item>) {
        loop {
            let mut batch = Vec::new();
            let mut spans = 0;
            let deadline = Instant::now() + self.settings.flush_interval;
            while spans < self.settings.batch_size {
                let wait = if DRAIN.load(Ordering::Acquire) {
                    Duration::from_millis(20)
                } else {
                    deadline.saturating_duration_since(Instant::now())
                };
                match queue.recv_timeout(wait) {
                    Ok(Item::Request(r)) => {
                        spans += 1 + r.clients.len();
                        batch.push(*r);
                    }
                    Ok(Item::Flush) | Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if !batch.is_empty() {
                self.export(&batch, spans as u64);
                PENDING.fetch_sub(batch.len(), Ordering::AcqRel);
            }
        }
    }

    /// Posts one batch, retrying connection errors, 429 and 5xx with doubling backoff.
    fn export(&self, batch: &[FinishedRequest], spans: u64) {
        let Some(runtime) = &self.runtime else {
            crate::metrics::spans_dropped(spans);
            return;
        };
        let body = self.encode(batch);
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..=self.settings.max_retries {
            // The request is built inside the runtime: reqwest arms its timeout when sending.
            let sent = runtime.block_on(async {
                self.client
                    .post(self.settings.endpoint.clone())
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
            });
            let retry = match sent {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::spans_exported(spans);
                    return;
                }
                Ok(r) => r.status().as_u16() == 429 || r.status().is_server_error(),
                Err(_) => true,
            };
            if !retry || attempt == self.settings.max_retries {
                break;
            }
            std::thread::sleep(backoff);
            backoff *= 2;
        }
        crate::metrics::trace_export_failed();
        crate::metrics::spans_dropped(spans);
    }

    fn encode(&self, batch: &[FinishedRequest]) -> Vec<u8> {
        let spans = batch.iter().flat_map(spans_of).collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "apigateway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }
}

/// The server span and its client spans in OTLP form, with the HTTP semantic conventions.
fn spans_of(r: &FinishedRequest) -> Vec<Span> {
    let s = &r.server;
    let mut attributes = vec![
        kv("http.request.method", &s.method),
        kv("url.path", &s.path),
        int("http.response.status_code", i64::from(s.status)),
    ];
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            attributes.push(kv(key, v));
        }
    };
    put("http.route", s.route_pattern.as_deref());
    put("apigateway.route", s.route_name.as_deref());
    put("apigateway.service", s.service.as_deref());
    put("server.address", s.host.as_deref());
    put(
        "client.address",
        s.client.map(|ip| ip.to_string()).as_deref(),
    );
    put("apigateway.rate_limit", s.rate_limit);
    put("error.type", s.error.as_deref());
    put("enduser.id", s.subject.as_deref());
    let trace_state = r
        .tracestate
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let failed = s.status >= 500;
    let mut out = vec![Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: trace_state.clone(),
        name: format!("{} {}", s.method, s.route_pattern.as_deref().unwrap_or(""))
            .trim_end()
            .to_string(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: r.start_ns,
        end_time_unix_nano: r.end_ns,
        attributes,
        status: failed.then(|| Status {
            code: StatusCode::Error as i32,
            message: s.error.clone().unwrap_or_default(),
        }),
        flags: 0x100 | u32::from(r.parent.is_some()) << 9,
        ..Default::default()
    }];
    for c in &r.clients {
        let mut attributes = vec![
            kv("http.request.method", &s.method),
            kv("apigateway.service", &c.name),
        ];
        if let Some(peer) = c.peer {
            attributes.push(kv("network.peer.address", &peer.ip().to_string()));
            attributes.push(int("network.peer.port", i64::from(peer.port())));
        }
        if let Some(status) = c.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        if let Some(e) = c.error {
            attributes.push(kv("error.type", e));
        }
        let failed = c.error.is_some() || c.status.is_some_and(|s| s >= 500);
        out.push(Span {
            trace_id: r.trace_id.to_vec(),
            span_id: c.span_id.to_vec(),
            parent_span_id: r.span_id.to_vec(),
            trace_state: trace_state.clone(),
            name: format!("{} {}", s.method, c.name),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: c.start_ns,
            end_time_unix_nano: c.end_ns.max(c.start_ns),
            attributes,
            status: failed.then(|| Status {
                code: StatusCode::Error as i32,
                message: c.error.unwrap_or_default().to_string(),
            }),
            flags: 0x100,
            ..Default::default()
        });
    }
    out
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
