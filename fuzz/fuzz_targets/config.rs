//! Config parsing and compilation: any bytes either fail with a `ConfigError` or compile into a
//! snapshot; never a panic. Backends must be literal `ip:port` here, so compiling never waits
//! on DNS.
#![no_main]

use apigateway::config::GatewayConfig;
use apigateway::snapshot::Snapshot;
use apigateway::upstream::BackendConfig;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = GatewayConfig::parse(text) else {
        return;
    };
    let literal = |addr: &str| addr.parse::<std::net::SocketAddr>().is_ok();
    let resolvable_offline = cfg.services.values().all(|s| {
        s.backends.iter().all(|b| match b {
            BackendConfig::Addr(a) => literal(a),
            BackendConfig::Weighted { addr, .. } => literal(addr),
        })
    });
    if resolvable_offline {
        let _ = Snapshot::compile(&cfg, Path::new("/nonexistent/fuzz/gateway.yaml"));
    }
});
