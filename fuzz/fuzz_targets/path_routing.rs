//! Path normalization and route matching on a fixed table: never a panic, and a normalized
//! path is a fixed point (normalizing it again changes nothing) without dot segments.
#![no_main]

use apigateway::config::GatewayConfig;
use apigateway::edge::normalize_path;
use apigateway::router::RequestView;
use apigateway::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;
use once_cell::sync::Lazy;
use std::path::Path;

static SNAPSHOT: Lazy<Snapshot> = Lazy::new(|| {
    let cfg = GatewayConfig::parse(
        "listen: ['127.0.0.1:0']
services:
  a: {backends: ['127.0.0.1:1']}
routes:
  - {path: /api/users, service: a}
  - {path: /api/users/:id, service: a, methods: [GET]}
  - {path: /api/users/:id/orders/:order, service: a}
  - {path: /api, service: a, host: example.com}
  - {path: /files/*rest, service: a}
  - {path: /, service: a}
",
    )
    .expect("fuzz config parses");
    Snapshot::compile(&cfg, Path::new("/nonexistent/fuzz/gateway.yaml")).expect("compiles")
});

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = raw.split_once(' ').unwrap_or(("GET", raw));
    let (host, path) = rest.split_once(' ').unwrap_or(("example.com", rest));
    let Ok(normalized) = normalize_path(path) else {
        return;
    };
    let again = normalize_path(&normalized.path).expect("a normalized path normalizes");
    assert_eq!(again.path, normalized.path, "normalization is idempotent");
    let segments = normalized.segments();
    assert!(!segments.iter().any(|s| *s == "." || *s == ".."));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let _ = SNAPSHOT.routes.match_request(&RequestView {
        segments: &segments,
        trailing_slash: normalized.trailing_slash,
        host,
        method: &method,
    });
});
