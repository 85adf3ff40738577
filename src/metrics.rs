//! Prometheus metrics (prometheus 0.14, the version Pingora 0.9's exporter uses), in one
//! registry served by the admin listener.
//!
//! The request path never looks metrics up by label: each route's counters and histogram are
//! resolved once when the snapshot is compiled ([`RouteMetrics`]), so recording a request is a
//! few atomic adds.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::atomic::{AtomicBool, Ordering};

/// Latency buckets in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream: HistogramVec,
    rate_limited: IntCounterVec,
    auth_failures: IntCounterVec,
    backend_up: IntGaugeVec,
    reloads: IntCounterVec,
    info: IntGaugeVec,
    access_log_dropped: IntCounter,
    password_checks: IntCounter,
    spans_exported: IntCounter,
    spans_dropped: IntCounter,
    trace_export_failures: IntCounter,
    connections_closed: IntCounterVec,
    ejections: IntCounterVec,
    connections_open: prometheus::IntGauge,
    mirror: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    dns_resolutions: IntCounterVec,
    discovered: IntGaugeVec,
    compressed: IntCounterVec,
    cache_requests: IntCounterVec,
    script_errors: IntCounterVec,
    grpc_calls: IntCounterVec,
    cache_evictions: IntCounter,
    cache_lock_waits: IntCounter,
    cache_bytes: prometheus::IntGauge,
    cache_entries: prometheus::IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed and unique, so registering cannot fail.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register(
            &r,
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
        )
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| {
        let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        register(&r, HistogramVec::new(opts, labels).expect("valid metric"))
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        register(
            &r,
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
        )
    };
    Metrics {
        requests: counter(
            "apigateway_requests_total",
            "Requests answered, by route, service and status class",
            &["route", "service", "status"],
        ),
        duration: histogram(
            "apigateway_request_duration_seconds",
            "Time from request start to the end of the response, by route",
            &["route"],
        ),
        upstream: histogram(
            "apigateway_upstream_duration_seconds",
            "Time from picking a backend to its response header, by service",
            &["service"],
        ),
        rate_limited: counter(
            "apigateway_rate_limited_total",
            "Requests refused by a rate-limit policy, by route and policy",
            &["route", "policy"],
        ),
        auth_failures: counter(
            "apigateway_auth_failures_total",
            "Authentication and authorization refusals, by reason",
            &["reason"],
        ),
        backend_up: gauge(
            "apigateway_backend_healthy",
            "1 if the backend passed its last health check, 0 if not",
            &["service", "backend"],
        ),
        reloads: counter(
            "apigateway_config_reloads_total",
            "Config reloads, by result (ok or error)",
            &["result"],
        ),
        info: gauge(
            "apigateway_build_info",
            "Always 1; labels carry the version and the hash of the loaded config file",
            &["version", "config_hash"],
        ),
        spans_exported: register(
            &r,
            IntCounter::new(
                "apigateway_trace_spans_exported_total",
                "Spans the OTLP collector accepted",
            )
            .expect("valid metric"),
        ),
        spans_dropped: register(
            &r,
            IntCounter::new(
                "apigateway_trace_spans_dropped_total",
                "Spans dropped: export queue full, or their export failed after its retries",
            )
            .expect("valid metric"),
        ),
        trace_export_failures: register(
            &r,
            IntCounter::new(
                "apigateway_trace_export_failures_total",
                "OTLP export requests that failed after their retries",
            )
            .expect("valid metric"),
        ),
        password_checks: register(
            &r,
            IntCounter::new(
                "apigateway_password_checks_total",
                "argon2 checks of Basic credentials (pairs not in the verified-credential cache)",
            )
            .expect("valid metric"),
        ),
        access_log_dropped: register(
            &r,
            IntCounter::new(
                "apigateway_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )
            .expect("valid metric"),
        ),
        connections_closed: counter(
            "apigateway_client_connections_closed_total",
            "Client connections the gateway closed itself, by reason (limit, header_timeout, \
             head_too_large)",
            &["reason"],
        ),
        ejections: counter(
            "apigateway_backend_ejections_total",
            "Times passive health took a backend out of rotation, by service and backend",
            &["service", "backend"],
        ),
        connections_open: register(
            &r,
            prometheus::IntGauge::new(
                "apigateway_client_connections_open",
                "Client connections open now",
            )
            .expect("valid metric"),
        ),
        mirror: counter(
            "apigateway_mirror_requests_total",
            "Mirror copies of a route's requests, by result (sent, failed, dropped: too many in \
             flight, body_too_large: sent without the body)",
            &["route", "result"],
        ),
        retry_budget_exhausted: counter(
            "apigateway_retry_budget_exhausted_total",
            "Retries not made because the service's retry budget was spent, by service",
            &["service"],
        ),
        dns_resolutions: counter(
            "apigateway_dns_resolutions_total",
            "DNS resolutions of dns: backends, by service and outcome (changed, unchanged, failed)",
            &["service", "outcome"],
        ),
        discovered: gauge(
            "apigateway_backends",
            "Backends a service with dns: backends has now (fixed ones included)",
            &["service"],
        ),
        compressed: counter(
            "apigateway_compressed_responses_total",
            "Responses the gateway compressed, by content coding",
            &["encoding"],
        ),
        cache_requests: counter(
            "apigateway_cache_requests_total",
            "Requests on cached routes, by cache status (hit, miss, expired, stale, revalidated, bypass)",
            &["status"],
        ),
        script_errors: counter(
            "apigateway_script_errors_total",
            "Script calls that failed (the client got 500 Script error), by route, hook and \
             reason (operations, call_depth, size, timeout, error, return_type)",
            &["route", "hook", "reason"],
        ),
        grpc_calls: counter(
            "apigateway_grpc_calls_total",
            "gRPC calls answered, by route, gRPC service and method (\"other\" past 100 per \
             route) and grpc-status name (\"none\" when the call broke off without one)",
            &["route", "grpc_service", "grpc_method", "grpc_code"],
        ),
        cache_evictions: register(
            &r,
            IntCounter::new(
                "apigateway_cache_evictions_total",
                "Cache entries evicted to stay within cache.max_bytes",
            )
            .expect("valid metric"),
        ),
        cache_lock_waits: register(
            &r,
            IntCounter::new(
                "apigateway_cache_lock_waits_total",
                "Cache misses that waited for another request filling the same key",
            )
            .expect("valid metric"),
        ),
        cache_bytes: register(
            &r,
            prometheus::IntGauge::new(
                "apigateway_cache_bytes",
                "Bytes the response cache holds (bodies, headers and per-entry overhead)",
            )
            .expect("valid metric"),
        ),
        cache_entries: register(
            &r,
            prometheus::IntGauge::new(
                "apigateway_cache_entries",
                "Entries the response cache holds",
            )
            .expect("valid metric"),
        ),
        registry: r,
    }
});

/// Set once the first round of health checks has finished.
static HEALTH_CHECKED: AtomicBool = AtomicBool::new(false);

/// One route's pre-resolved metrics.
#[derive(Clone)]
pub struct RouteMetrics {
    /// 1xx, 2xx, 3xx, 4xx, 5xx, and "none" (client gone before an answer).
    by_class: [IntCounter; 6],
    duration: Histogram,
    route: String,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

impl RouteMetrics {
    /// Resolves the handles for a route (`service` is the service name or `aggregate`).
    pub fn new(route: &str, service: &str) -> Self {
        let m = &*METRICS;
        let class = |c: &str| m.requests.with_label_values(&[route, service, c]);
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
                class("none"),
            ],
            duration: m.duration.with_label_values(&[route]),
            route: route.to_string(),
        }
    }

    /// Records a finished request.
    pub fn observe(&self, status: u16, seconds: f64) {
        let i = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.by_class[i].inc();
        self.duration.observe(seconds);
    }

    /// Counts a refusal by `policy` (a rare path: looked up by label).
    pub fn rate_limited(&self, policy: &str) {
        METRICS
            .rate_limited
            .with_label_values(&[self.route.as_str(), policy])
            .inc();
    }
}

/// Metrics for requests that matched no route.
pub static UNMATCHED: Lazy<RouteMetrics> = Lazy::new(|| RouteMetrics::new("(none)", "(none)"));

/// The upstream latency histogram of a service.
pub fn upstream_histogram(service: &str) -> Histogram {
    METRICS.upstream.with_label_values(&[service])
}

/// Counts an authentication refusal (`no_token`, `invalid_token`, `forbidden`).
pub fn auth_failure(reason: &'static str) {
    METRICS.auth_failures.with_label_values(&[reason]).inc();
}

/// Records a backend's health after a check.
pub fn backend_health(service: &str, backend: &str, healthy: bool) {
    METRICS
        .backend_up
        .with_label_values(&[service, backend])
        .set(i64::from(healthy));
}

/// Counts a response compressed with `encoding`.
pub fn compressed(encoding: &'static str) {
    METRICS.compressed.with_label_values(&[encoding]).inc();
}

/// Counts a request on a cached route by how the cache answered (`HIT`, `MISS`, ...).
pub fn cache_outcome(status: &'static str) {
    let label = match status {
        "HIT" => "hit",
        "MISS" => "miss",
        "EXPIRED" => "expired",
        "STALE" => "stale",
        "REVALIDATED" => "revalidated",
        _ => "bypass",
    };
    METRICS.cache_requests.with_label_values(&[label]).inc();
}

/// Counts a failed script call.
pub fn record_script_error(route: &str, hook: &str, reason: &str) {
    METRICS
        .script_errors
        .with_label_values(&[route, hook, reason])
        .inc();
}

/// The counter of one route's calls of one gRPC method ending with one status.
pub fn grpc_calls(route: &str, service: &str, method: &str, code: &str) -> IntCounter {
    METRICS
        .grpc_calls
        .with_label_values(&[route, service, method, code])
}

/// Counts an entry evicted for space.
pub fn cache_evicted() {
    METRICS.cache_evictions.inc();
}

/// Counts a miss that waited on the cache lock.
pub fn cache_lock_wait() {
    METRICS.cache_lock_waits.inc();
}

/// Adjusts the bytes and entries the cache holds.
pub fn cache_stored(bytes: i64, entries: i64) {
    METRICS.cache_bytes.add(bytes);
    METRICS.cache_entries.add(entries);
}

/// Forgets the health of a backend DNS no longer lists.
pub fn backend_forgotten(service: &str, backend: &str) {
    let _ = METRICS.backend_up.remove_label_values(&[service, backend]);
}

/// Counts one resolution of a service's DNS name.
pub fn dns_resolution(service: &str, outcome: &'static str) {
    METRICS
        .dns_resolutions
        .with_label_values(&[service, outcome])
        .inc();
}

/// Publishes how many backends a service with DNS discovery has.
pub fn discovered_backends(service: &str, count: usize) {
    METRICS
        .discovered
        .with_label_values(&[service])
        .set(count as i64);
}

/// Counts a backend taken out of rotation by its circuit breaker.
pub fn backend_ejected(service: &str, backend: &str) {
    METRICS
        .ejections
        .with_label_values(&[service, backend])
        .inc();
}

/// Counts a reload attempt.
pub fn config_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    METRICS.reloads.with_label_values(&[result]).inc();
}

/// Publishes the version and config hash (the previous config's series is removed).
pub fn set_config_hash(hash: &str) {
    let info: &IntGaugeVec = &METRICS.info;
    info.reset();
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), hash])
        .set(1);
}

/// Counts a client connection closed by the gateway (`limit`, `header_timeout`,
/// `head_too_large`).
pub fn connection_closed(reason: &'static str) {
    METRICS
        .connections_closed
        .with_label_values(&[reason])
        .inc();
}

/// Tracks the open client connections (+1 on accept, -1 on close).
pub fn connections_open(delta: i64) {
    METRICS.connections_open.add(delta);
}

/// The counter of retries a service's budget refused.
pub fn retry_budget_exhausted(service: &str) -> IntCounter {
    METRICS.retry_budget_exhausted.with_label_values(&[service])
}

/// A route's mirror counters, by result, resolved once when the route is compiled.
#[derive(Clone)]
pub struct MirrorMetrics {
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
    pub body_too_large: IntCounter,
}

impl std::fmt::Debug for MirrorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorMetrics")
    }
}

impl MirrorMetrics {
    pub fn new(route: &str) -> Self {
        let c = |result: &str| METRICS.mirror.with_label_values(&[route, result]);
        MirrorMetrics {
            sent: c("sent"),
            failed: c("failed"),
            dropped: c("dropped"),
            body_too_large: c("body_too_large"),
        }
    }
}

/// Counts spans the collector accepted.
pub fn spans_exported(n: u64) {
    METRICS.spans_exported.inc_by(n);
}

/// Counts spans dropped (queue full, or a failed export).
pub fn spans_dropped(n: u64) {
    METRICS.spans_dropped.inc_by(n);
}

/// Counts one export request that failed after its retries.
pub fn trace_export_failed() {
    METRICS.trace_export_failures.inc();
}

/// Counts one argon2 check of a Basic password.
pub fn password_check() {
    METRICS.password_checks.inc();
}

pub fn access_log_dropped() {
    METRICS.access_log_dropped.inc();
}

/// Marks that health checks have run once (for `/readyz`).
pub fn health_checked() {
    HEALTH_CHECKED.store(true, Ordering::Release);
}

pub fn is_health_checked() -> bool {
    HEALTH_CHECKED.load(Ordering::Acquire)
}

/// The registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding into a Vec only fails on invalid metric families, which ours are not.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    out
}

/// Every metric the gateway exports with its label names, whether or not it has a sample yet
/// (a dashboard may only query these).
pub fn catalogue() -> Vec<(String, Vec<String>)> {
    use prometheus::core::Collector;
    let m = &*METRICS;
    let collectors: [&dyn Collector; 28] = [
        &m.requests,
        &m.duration,
        &m.upstream,
        &m.rate_limited,
        &m.auth_failures,
        &m.backend_up,
        &m.reloads,
        &m.info,
        &m.access_log_dropped,
        &m.password_checks,
        &m.spans_exported,
        &m.spans_dropped,
        &m.trace_export_failures,
        &m.connections_closed,
        &m.ejections,
        &m.connections_open,
        &m.mirror,
        &m.retry_budget_exhausted,
        &m.dns_resolutions,
        &m.discovered,
        &m.compressed,
        &m.cache_requests,
        &m.script_errors,
        &m.grpc_calls,
        &m.cache_evictions,
        &m.cache_lock_waits,
        &m.cache_bytes,
        &m.cache_entries,
    ];
    let mut out: Vec<(String, Vec<String>)> = collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| (d.fq_name.clone(), d.variable_labels.clone()))
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
