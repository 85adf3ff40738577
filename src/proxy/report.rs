//! `logging`'s steps: the request's metrics and its access log line.

use super::ctx::RequestCtx;
use crate::access_log::AccessRecord;
use crate::trace::record::ServerSpan;
use pingora::Error;
use pingora::proxy::Session;
use std::time::Duration;

/// How a request ended, read once for both the metrics and the access log.
pub(super) struct Outcome {
    /// The status sent, 0 when none was.
    pub status: u16,
    /// From the request's arrival to now.
    pub elapsed: Duration,
    /// A gRPC call's `grpc-status` (trailers, else the answer's head), for its metric and
    /// the access log.
    pub grpc_status: Option<u32>,
}

impl Outcome {
    pub(super) fn of(session: &Session, ctx: &RequestCtx) -> Self {
        Outcome {
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            elapsed: ctx.inbound.started.elapsed(),
            grpc_status: ctx.grpc.status(session.response_written()),
        }
    }
}

/// Observes the route's and the service's latency histograms.
pub(super) fn record_metrics(ctx: &RequestCtx, outcome: &Outcome) {
    let metrics = ctx.route_metrics().unwrap_or(&*crate::metrics::UNMATCHED);
    metrics.observe(outcome.status, outcome.elapsed.as_secs_f64());
    if let (Some(pool), Some(t)) = (ctx.pool(), ctx.attempts.upstream_time()) {
        pool.upstream_latency.observe(t.as_secs_f64());
    }
}

/// Writes the access log line, when the access log is on.
pub(super) fn write_access_log(
    session: &Session,
    e: Option<&Error>,
    ctx: &RequestCtx,
    outcome: &Outcome,
) {
    let Some(snapshot) = ctx.snapshot.as_ref().filter(|s| s.access_log.enabled) else {
        return;
    };
    let req = session.req_header();
    let target = ctx.target();
    let route = ctx
        .route
        .as_ref()
        .map(|m| &*snapshot.routes.routes()[m.route].name);
    let trace = ctx.trace.ids();
    let service = match (ctx.pool(), target) {
        (Some(p), _) => Some(p.name.as_str()),
        (None, Some(t)) if t.aggregate.is_some() => Some("aggregate"),
        _ => None,
    };
    let grpc = ctx.grpc.method(req.uri.path());
    let record = AccessRecord {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        request_id: ctx.inbound.request_id(),
        client_ip: ctx.inbound.client_ip,
        method: req.method.as_str(),
        path: req.uri.path(),
        route,
        service,
        upstream: ctx.attempts.last().map(|a| a.to_string()),
        status: outcome.status,
        bytes: session.body_bytes_sent(),
        duration_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        upstream_ms: ctx
            .attempts
            .upstream_time()
            .map(|t| t.as_secs_f64() * 1000.0),
        user: ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
        rate_limit: ctx.admission.outcome(),
        cache: ctx.cache.status().map(crate::cache::CacheStatus::as_str),
        grpc_service: grpc.map(|(s, _)| s),
        grpc_method: grpc.map(|(_, m)| m),
        grpc_status: outcome.grpc_status,
        error: e.map(|e| e.etype().as_str().to_string()),
        trace_id: trace.map(|(t, _)| hex::encode(t)),
        span_id: trace.map(|(_, s)| hex::encode(s)),
    };
    crate::access_log::write(&snapshot.access_log, &record);
}

/// Ends the request's server span and queues it for export, when tracing is on.
pub(super) fn finish_trace(session: &Session, ctx: &RequestCtx, outcome: &Outcome) {
    // What the server span says is only gathered for a request that will be exported.
    let Some(snapshot) = ctx
        .snapshot
        .as_ref()
        .filter(|s| s.tracing.is_some() && ctx.trace.is_sampled())
    else {
        return;
    };
    let tracing = snapshot.tracing.as_ref();
    let req = session.req_header();
    let route = ctx
        .route
        .as_ref()
        .map(|m| &snapshot.routes.routes()[m.route]);
    let span = ServerSpan {
        method: req.method.as_str(),
        path: req.uri.path(),
        route_pattern: route.map(|r| &*r.pattern),
        route_name: route.map(|r| &*r.name),
        service: ctx.pool().map(|p| &*p.label),
        status: outcome.status,
        host: req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
        client: ctx.inbound.client_ip,
        rate_limit: ctx.admission.outcome(),
        error: ctx.error.as_ref().map(|e| e.to_string()),
        subject: subject(ctx).filter(|_| tracing.is_some_and(|t| t.record_subject)),
    };
    ctx.trace.finish(tracing, &span);
}

/// Keeps the forwarded body's chunk for the mirror copy, up to the mirror's cap.
pub(super) fn copy_body_for_mirror(ctx: &mut RequestCtx, chunk: Option<&[u8]>) {
    let (Some(chunk), Some(copy)) = (chunk, ctx.destination.mirror.as_mut()) else {
        return;
    };
    if let Some(mirror) =
        super::ctx::target_of(&ctx.snapshot, &ctx.route).and_then(|t| t.mirror.as_ref())
    {
        copy.take_body(chunk, mirror.max_body);
    }
}

/// Sends the request's mirror copy, when it is in the route's sample and was forwarded, as
/// soon as its body is complete: beside the upstream exchange (as Envoy's shadow does), so the
/// two exchanges share the thread's wake-ups. A request whose body never completes is not
/// mirrored.
pub(super) fn send_mirror(ctx: &mut RequestCtx) {
    let Some(copy) = ctx.destination.mirror.take() else {
        return;
    };
    let (Some(snapshot), Some(route)) = (ctx.snapshot.as_ref(), ctx.route.as_ref()) else {
        return;
    };
    if let Some(mirror) = snapshot.routes.routes()[route.route].target.mirror.as_ref() {
        mirror.send(copy, snapshot.shared_service(mirror.service));
    }
}

/// The authenticated consumer's id, else the verified subject.
fn subject(ctx: &RequestCtx) -> Option<&str> {
    let identity = ctx.identity.as_ref()?;
    match &identity.consumer {
        Some(c) => Some(&c.id),
        None => identity.subject.as_deref(),
    }
}
