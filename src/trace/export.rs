//! The OTLP/HTTP exporter: a bounded queue filled by requests, and one background thread that
//! batches, encodes ([`super::otlp`]) and posts to the collector.
//!
//! Ours rather than the `opentelemetry` SDK's batch processor: the SDK builds a span object
//! with attribute vectors on the request path, where the gateway keeps a few ids and
//! timestamps and builds attributes here, off the request path; and the thread starts on the
//! first span, after the process has daemonized, like the access-log writer.

use super::ClientSpan;
use super::config::ExportSettings;
use super::context::{SpanId, TraceId};
use super::otlp::{self, Writer, span};
use http::HeaderValue;
use once_cell::sync::OnceCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the server span says beyond ids and times, filled in the `logging` phase.
#[derive(Debug, Clone, Default)]
pub struct ServerSpan {
    pub method: http::Method,
    /// The request target (`url.path` is its path).
    pub uri: http::Uri,
    /// The matched route's pattern (`http.route`) and name (`apigateway.route`).
    pub route_pattern: Option<Arc<str>>,
    pub route_name: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub status: u16,
    pub host: Option<HeaderValue>,
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

/// Finished requests waiting for the exporter. A request appends under a short lock and wakes
/// the exporter only when a batch is full or the process drains: a channel would wake the
/// exporter thread (a futex call and a context switch) for nearly every request.
struct Queue {
    waiting: Mutex<Vec<FinishedRequest>>,
    wake: Condvar,
    batch_size: usize,
    capacity: usize,
}

static QUEUE: OnceCell<Option<Arc<Queue>>> = OnceCell::new();
/// Set on graceful shutdown: the exporter then sends whatever it has right away.
static DRAIN: AtomicBool = AtomicBool::new(false);
/// Requests queued or being exported, so a shutdown can wait until they are out.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Queues a finished request; never blocks: a full queue drops it (and counts it).
pub fn submit(settings: &ExportSettings, request: FinishedRequest) {
    let Some(queue) = QUEUE.get_or_init(|| start(settings)) else {
        return;
    };
    let mut waiting = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
    if waiting.len() >= queue.capacity {
        drop(waiting);
        crate::metrics::spans_dropped(1 + request.clients.len() as u64);
        return;
    }
    waiting.push(request);
    PENDING.fetch_add(1, Ordering::AcqRel);
    if waiting.len() == queue.batch_size || DRAIN.load(Ordering::Relaxed) {
        queue.wake.notify_one();
    }
}

/// From now on the exporter sends each batch as soon as it has one (graceful shutdown or
/// upgrade: the process is about to exit), starting with what it holds.
pub fn start_draining() {
    if !DRAIN.swap(true, Ordering::AcqRel)
        && let Some(Some(queue)) = QUEUE.get()
    {
        queue.wake.notify_one();
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

fn start(settings: &ExportSettings) -> Option<Arc<Queue>> {
    // A request counts its client spans too; a batch of requests is sized by spans on average.
    let batch_size = (settings.batch_size / 2).max(1);
    let queue = Arc::new(Queue {
        waiting: Mutex::new(Vec::with_capacity(batch_size)),
        wake: Condvar::new(),
        batch_size,
        capacity: settings.queue_size,
    });
    let shared = queue.clone();
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("trace export".into())
        .spawn(move || Exporter::new(settings).run(&shared));
    match spawned {
        Ok(_) => Some(queue),
        Err(e) => {
            log::error!("cannot start the trace exporter: {e}; spans are not exported");
            None
        }
    }
}

struct Exporter {
    settings: ExportSettings,
    /// The encoded `Resource` message.
    resource: Vec<u8>,
    client: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    fn new(settings: ExportSettings) -> Self {
        let instance = format!("{}-{}", hostname(), std::process::id());
        let mut resource = Writer::default();
        resource.attr_str(1, "service.name", &settings.service_name);
        resource.attr_str(1, "service.version", env!("CARGO_PKG_VERSION"));
        resource.attr_str(1, "service.instance.id", &instance);
        let resource = resource.buf;
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

    /// Takes what is waiting every `flush_interval` (or when a batch is full, or at once
    /// while draining) and exports it in batches.
    fn run(&self, queue: &Queue) {
        let mut taken = Vec::new();
        loop {
            {
                let mut waiting = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                if waiting.len() < queue.batch_size && !DRAIN.load(Ordering::Acquire) {
                    waiting = queue
                        .wake
                        .wait_timeout(waiting, self.settings.flush_interval)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                } else if waiting.is_empty() {
                    // Draining with nothing waiting: look again shortly.
                    waiting = queue
                        .wake
                        .wait_timeout(waiting, Duration::from_millis(20))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                std::mem::swap(&mut *waiting, &mut taken);
            }
            for batch in taken.chunks(queue.batch_size) {
                let spans: usize = batch.iter().map(|r| 1 + r.clients.len()).sum();
                self.export(batch, spans as u64);
                PENDING.fetch_sub(batch.len(), Ordering::AcqRel);
            }
            taken.clear();
        }
    }

    /// Posts one batch, retrying connection errors, 429 and 5xx with doubling backoff.
    fn export(&self, batch: &[FinishedRequest], spans: u64) {
        let Some(runtime) = &self.runtime else {
            crate::metrics::spans_dropped(spans);
            return;
        };
        // Shared, so a retry does not copy the batch again.
        let body = bytes::Bytes::from(self.encode(batch));
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
        let mut spans = Writer::default();
        let mut scratch = Writer::default();
        for r in batch {
            write_spans(&mut spans, &mut scratch, r);
        }
        otlp::request(
            &self.resource,
            "apigateway",
            env!("CARGO_PKG_VERSION"),
            &spans.buf,
        )
    }
}

/// The server span and its client spans (each a `spans` field of `ScopeSpans`), with the
/// HTTP semantic conventions.
fn write_spans(out: &mut Writer, scratch: &mut Writer, r: &FinishedRequest) {
    let s = &r.server;
    let trace_state = r.tracestate.as_ref().and_then(|v| v.to_str().ok());
    out.message(2, scratch, |w| {
        w.bytes(span::TRACE_ID, &r.trace_id);
        w.bytes(span::SPAN_ID, &r.span_id);
        if let Some(state) = trace_state {
            w.string(span::TRACE_STATE, state);
        }
        if let Some(parent) = &r.parent {
            w.bytes(span::PARENT_SPAN_ID, parent);
        }
        match s.route_pattern.as_deref() {
            Some(route) => w.string_parts(span::NAME, &[s.method.as_str(), " ", route]),
            None => w.string(span::NAME, s.method.as_str()),
        }
        w.varint(span::KIND, span::SERVER);
        w.fixed64(span::START, r.start_ns);
        w.fixed64(span::END, r.end_ns);
        let a = span::ATTRIBUTES;
        w.attr_str(a, "http.request.method", s.method.as_str());
        w.attr_str(a, "url.path", s.uri.path());
        w.attr_int(a, "http.response.status_code", i64::from(s.status));
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                w.attr_str(a, key, v);
            }
        };
        put("http.route", s.route_pattern.as_deref());
        put("apigateway.route", s.route_name.as_deref());
        put("apigateway.service", s.service.as_deref());
        put(
            "server.address",
            s.host.as_ref().and_then(|h| h.to_str().ok()),
        );
        put("apigateway.rate_limit", s.rate_limit);
        put("error.type", s.error.as_deref());
        put("enduser.id", s.subject.as_deref());
        if let Some(ip) = s.client {
            w.attr_ip(a, "client.address", ip);
        }
        if s.status >= 500 {
            let message = s.error.as_deref().unwrap_or("");
            w.message(span::STATUS, &mut Writer::default(), |st| {
                st.string(span::STATUS_MESSAGE, message);
                st.varint(span::STATUS_CODE, span::ERROR);
            });
        }
        let remote = if r.parent.is_some() {
            span::IS_REMOTE
        } else {
            0
        };
        w.fixed32(span::FLAGS, span::HAS_IS_REMOTE | remote);
    });
    for c in &r.clients {
        out.message(2, scratch, |w| {
            w.bytes(span::TRACE_ID, &r.trace_id);
            w.bytes(span::SPAN_ID, &c.span_id);
            if let Some(state) = trace_state {
                w.string(span::TRACE_STATE, state);
            }
            w.bytes(span::PARENT_SPAN_ID, &r.span_id);
            w.string_parts(span::NAME, &[s.method.as_str(), " ", &c.name]);
            w.varint(span::KIND, span::CLIENT);
            w.fixed64(span::START, c.start_ns);
            w.fixed64(span::END, c.end_ns.max(c.start_ns));
            let a = span::ATTRIBUTES;
            w.attr_str(a, "http.request.method", s.method.as_str());
            w.attr_str(a, "apigateway.service", &c.name);
            if let Some(peer) = c.peer {
                w.attr_ip(a, "network.peer.address", peer.ip());
                w.attr_int(a, "network.peer.port", i64::from(peer.port()));
            }
            if let Some(status) = c.status {
                w.attr_int(a, "http.response.status_code", i64::from(status));
            }
            if let Some(e) = c.error {
                w.attr_str(a, "error.type", e);
            }
            if c.error.is_some() || c.status.is_some_and(|s| s >= 500) {
                w.message(span::STATUS, &mut Writer::default(), |st| {
                    st.string(span::STATUS_MESSAGE, c.error.unwrap_or(""));
                    st.varint(span::STATUS_CODE, span::ERROR);
                });
            }
            w.fixed32(span::FLAGS, span::HAS_IS_REMOTE);
        });
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
