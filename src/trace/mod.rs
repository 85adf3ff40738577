//! Distributed tracing: W3C Trace Context in and out, a server span per request and a client
//! span per upstream attempt and aggregate call, exported over OTLP/HTTP by a background thread.
//!
//! Per request the gateway keeps a few ids and timestamps ([`RequestTrace`]); only a sampled,
//! finished request is encoded ([`record`]), on its own thread, into the exporter's bounded
//! queue of protobuf bytes. The exporter thread wraps batches of them and posts them.

pub mod config;
pub mod context;
pub mod export;
mod otlp;
pub mod record;

pub use config::{Tracing, TracingConfig};
pub use context::{SpanId, TraceId};

use crate::header_edit::{CustomName, HeaderEdit};
use context::Parent;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

static TRACEPARENT: CustomName = CustomName::new("traceparent");
static TRACESTATE: CustomName = CustomName::new("tracestate");

/// One client span: an upstream attempt or an aggregate call.
#[derive(Debug, Clone)]
pub struct ClientSpan {
    pub span_id: SpanId,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The service (proxy attempts) or `service call-key` (aggregate calls).
    pub name: Arc<str>,
    pub peer: Option<SocketAddr>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

/// Per-request tracing state; empty (and free) when tracing is off.
#[derive(Default)]
pub struct RequestTrace {
    active: Option<Active>,
}

struct Active {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    tracestate: Option<HeaderValue>,
    start_ns: u64,
    /// The span id of the attempt in progress, named in its `traceparent`.
    attempt: Option<SpanId>,
    /// The attempts' client spans, recorded only when the request is sampled.
    attempts: Vec<ClientSpan>,
    /// Aggregate calls run concurrently from a shared reference.
    calls: Mutex<Vec<ClientSpan>>,
}

/// What an aggregate call needs to join the trace.
pub struct CallTrace<'a> {
    pub trace_id: TraceId,
    pub sampled: bool,
    spans: &'a Mutex<Vec<ClientSpan>>,
}

impl CallTrace<'_> {
    /// A new span id and its `traceparent` for one call.
    pub fn begin(&self) -> (SpanId, u64, HeaderValue) {
        let span = new_span_id();
        (
            span,
            now_ns(),
            context::traceparent(&self.trace_id, &span, self.sampled),
        )
    }

    /// Records a finished call.
    pub fn end(&self, span: ClientSpan) {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(span);
    }
}

impl RequestTrace {
    /// Starts the server span: continues the client's trace when its `traceparent` is valid
    /// and trusted (`trust_incoming`, or the peer is a trusted proxy), else starts a new one
    /// sampled by ratio.
    pub fn start(&mut self, tracing: Option<&Tracing>, req: &RequestHeader, peer_trusted: bool) {
        let Some(tracing) = tracing else {
            return;
        };
        let trusted = tracing.trust_incoming || peer_trusted;
        let parent = trusted
            .then(|| req.headers.get("traceparent"))
            .flatten()
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let (trace_id, parent_span, sampled, tracestate) = match parent {
            Some(Parent {
                trace_id,
                span_id,
                sampled,
            }) => (
                trace_id,
                Some(span_id),
                sampled,
                context::tracestate(req.headers.get_all("tracestate").iter()),
            ),
            None => {
                let id = new_trace_id();
                (id, None, tracing.samples(&id), None)
            }
        };
        self.active = Some(Active {
            trace_id,
            span_id: new_span_id(),
            parent: parent_span,
            sampled,
            tracestate,
            start_ns: if sampled { now_ns() } else { 0 },
            attempt: None,
            attempts: Vec::new(),
            calls: Mutex::new(Vec::new()),
        });
    }

    /// `, trace <id>` for error-log lines about this request; empty when tracing is off.
    pub fn log_suffix(&self) -> String {
        self.active.as_ref().map_or_else(String::new, |a| {
            format!(", trace {}", hex::encode(a.trace_id))
        })
    }

    /// Whether this request's spans will be exported (tracing on and sampled).
    pub fn is_sampled(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.sampled)
    }

    /// The trace and server span ids, for logs.
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        self.active.as_ref().map(|a| (a.trace_id, a.span_id))
    }

    /// Opens a client span for an upstream attempt (each retry gets its own).
    pub fn begin_attempt(&mut self, service: &Arc<str>, peer: Option<SocketAddr>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let span_id = new_span_id();
        a.attempt = Some(span_id);
        if a.sampled {
            a.attempts.push(ClientSpan {
                span_id,
                start_ns: now_ns(),
                end_ns: 0,
                name: service.clone(),
                peer,
                status: None,
                error: None,
            });
        }
    }

    /// Closes the open attempt with the upstream's status or why it failed.
    pub fn end_attempt(&mut self, outcome: Result<u16, &'static str>) {
        let Some(span) = self
            .active
            .as_mut()
            .and_then(|a| a.attempts.last_mut())
            .filter(|s| s.end_ns == 0)
        else {
            return;
        };
        span.end_ns = now_ns();
        match outcome {
            Ok(status) => span.status = Some(status),
            Err(error) => span.error = Some(error),
        }
    }

    /// Sends the trace upstream: `traceparent` naming the current attempt's span, the client's
    /// `tracestate` if it was kept, and no client copy of either otherwise.
    pub fn on_upstream_request(&self, upstream: &mut HeaderEdit<'_>) -> pingora::Result<()> {
        let Some(a) = self.active.as_ref() else {
            return Ok(());
        };
        let span = a.attempt.unwrap_or(a.span_id);
        upstream.insert_custom(
            &TRACEPARENT,
            context::traceparent(&a.trace_id, &span, a.sampled),
        )?;
        match &a.tracestate {
            Some(state) => upstream.insert_custom(&TRACESTATE, state.clone())?,
            None => upstream.remove(TRACESTATE.name()),
        }
        Ok(())
    }

    /// Answers the client with the trace, when `tracing.response_header` is set.
    pub fn on_response(&self, tracing: Option<&Tracing>, h: &mut ResponseHeader) {
        if let (Some(a), Some(name)) = (
            self.active.as_ref(),
            tracing.and_then(|t| t.response_header.as_ref()),
        ) {
            let value = context::traceparent(&a.trace_id, &a.span_id, a.sampled);
            let _ = h.insert_header(name.clone(), value);
        }
    }

    /// What an aggregate route's calls need to join the trace.
    pub fn calls(&self) -> Option<CallTrace<'_>> {
        self.active.as_ref().map(|a| CallTrace {
            trace_id: a.trace_id,
            sampled: a.sampled,
            spans: &a.calls,
        })
    }

    /// Ends the server span and queues its spans for export if the request is sampled.
    /// Runs in `logging`, after the response is sent, so the encoding adds nothing to it.
    pub fn finish(&self, tracing: Option<&Tracing>, server: &record::ServerSpan<'_>) {
        let (Some(tracing), Some(a)) = (tracing, self.active.as_ref()) else {
            return;
        };
        if !a.sampled {
            return;
        }
        let calls = a
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let clients = if calls.is_empty() {
            std::borrow::Cow::Borrowed(a.attempts.as_slice())
        } else {
            std::borrow::Cow::Owned([a.attempts.as_slice(), calls.as_slice()].concat())
        };
        record::submit(
            &tracing.export,
            &record::FinishedRequest {
                trace_id: a.trace_id,
                span_id: a.span_id,
                parent: a.parent,
                tracestate: a.tracestate.as_ref().and_then(|v| v.to_str().ok()),
                start_ns: a.start_ns,
                end_ns: now_ns(),
                server,
                clients: &clients,
            },
        );
    }
}

impl Tracing {
    /// The ratio sampler's decision for a new trace.
    fn samples(&self, id: &TraceId) -> bool {
        let low = u64::from_be_bytes(id[8..].try_into().expect("8 bytes"));
        self.sample.admits(low)
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Nanoseconds since the epoch (OTLP's timestamps).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests;
