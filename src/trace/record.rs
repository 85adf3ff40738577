//! A finished, sampled request's spans, encoded as OTLP on the request's own thread.
//!
//! Encoding here rather than on the exporter thread costs the request thread a few thousand
//! instructions in the `logging` phase, after the response is sent; in exchange nothing owned
//! by a request crosses threads. Queuing request objects instead (reference-counted route and
//! service names, the request's URI) made the exporter free memory and drop reference counts
//! that the request threads keep using, and the cache lines bouncing between the cores cost
//! more CPU than the encoding itself (tracing at 100 % sampling 1.18–1.20× of off).

use super::ClientSpan;
use super::context::{SpanId, TraceId};
use super::otlp::{Writer, span};
use std::cell::RefCell;
use std::net::IpAddr;

/// What the server span says beyond ids and times, borrowed from the request at its end.
#[derive(Debug, Clone, Default)]
pub struct ServerSpan<'a> {
    pub method: &'a str,
    /// `url.path`.
    pub path: &'a str,
    /// The matched route's pattern (`http.route`) and name (`apigateway.route`).
    pub route_pattern: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub service: Option<&'a str>,
    pub status: u16,
    /// `server.address`: the request's `Host`.
    pub host: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub rate_limit: Option<&'static str>,
    /// The gateway's refusal or failure, for `error.type`.
    pub error: Option<String>,
    /// `enduser.id`, only with `tracing.record_subject`.
    pub subject: Option<&'a str>,
}

/// One finished, sampled request: its ids and times, the server span's attributes and its
/// client spans.
pub struct FinishedRequest<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub tracestate: Option<&'a str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub server: &'a ServerSpan<'a>,
    pub clients: &'a [ClientSpan],
}

thread_local! {
    /// Each worker thread's buffers for the spans of the request it finishes and one nested
    /// message; they keep their capacity, so encoding allocates nothing once warm.
    static BUFFERS: RefCell<(Writer, Writer)> = RefCell::default();
}

/// Encodes the request's spans and hands the bytes to the exporter's queue.
pub fn submit(settings: &super::config::ExportSettings, r: &FinishedRequest<'_>) {
    BUFFERS.with_borrow_mut(|(out, scratch)| {
        out.buf.clear();
        write_spans(out, scratch, r);
        super::export::submit(settings, &out.buf, 1 + r.clients.len());
    });
}

/// The server span and its client spans (each a `spans` field of `ScopeSpans`), with the
/// HTTP semantic conventions.
pub fn write_spans(out: &mut Writer, scratch: &mut Writer, r: &FinishedRequest<'_>) {
    let s = r.server;
    out.message(2, scratch, |w| {
        w.bytes(span::TRACE_ID, &r.trace_id);
        w.bytes(span::SPAN_ID, &r.span_id);
        if let Some(state) = r.tracestate {
            w.string(span::TRACE_STATE, state);
        }
        if let Some(parent) = &r.parent {
            w.bytes(span::PARENT_SPAN_ID, parent);
        }
        match s.route_pattern {
            Some(route) => w.string_parts(span::NAME, &[s.method, " ", route]),
            None => w.string(span::NAME, s.method),
        }
        w.varint(span::KIND, span::SERVER);
        w.fixed64(span::START, r.start_ns);
        w.fixed64(span::END, r.end_ns);
        let a = span::ATTRIBUTES;
        w.attr_str(a, "http.request.method", s.method);
        w.attr_str(a, "url.path", s.path);
        w.attr_int(a, "http.response.status_code", i64::from(s.status));
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                w.attr_str(a, key, v);
            }
        };
        put("http.route", s.route_pattern);
        put("apigateway.route", s.route_name);
        put("apigateway.service", s.service);
        put("server.address", s.host);
        put("apigateway.rate_limit", s.rate_limit);
        put("error.type", s.error.as_deref());
        put("enduser.id", s.subject);
        if let Some(ip) = s.client {
            w.attr_ip(a, "client.address", ip);
        }
        if s.status >= 500 {
            w.status_error(s.error.as_deref().unwrap_or(""));
        }
        let remote = if r.parent.is_some() {
            span::IS_REMOTE
        } else {
            0
        };
        w.fixed32(span::FLAGS, span::HAS_IS_REMOTE | remote);
    });
    for c in r.clients {
        out.message(2, scratch, |w| write_client(w, r, c));
    }
}

fn write_client(w: &mut Writer, r: &FinishedRequest<'_>, c: &ClientSpan) {
    w.bytes(span::TRACE_ID, &r.trace_id);
    w.bytes(span::SPAN_ID, &c.span_id);
    if let Some(state) = r.tracestate {
        w.string(span::TRACE_STATE, state);
    }
    w.bytes(span::PARENT_SPAN_ID, &r.span_id);
    w.string_parts(span::NAME, &[r.server.method, " ", &c.name]);
    w.varint(span::KIND, span::CLIENT);
    // An attempt still open when the request ended (the client went away) ends with it.
    let end = if c.end_ns == 0 { r.end_ns } else { c.end_ns };
    w.fixed64(span::START, c.start_ns);
    w.fixed64(span::END, end.max(c.start_ns));
    let a = span::ATTRIBUTES;
    w.attr_str(a, "http.request.method", r.server.method);
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
        w.status_error(c.error.unwrap_or(""));
    }
    w.fixed32(span::FLAGS, span::HAS_IS_REMOTE);
}
