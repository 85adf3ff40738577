//! Active health checks: the `health_check:` settings of a service and the Pingora check
//! built from them (TCP connect, an HTTP GET expecting 200, or the standard gRPC health call).

use super::grpc_health::GrpcHealthCheck;
use super::tls;
use crate::de::de_duration;
use crate::invalid::Invalid;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;
use std::time::Duration;

/// How a backend is checked: a TCP connect, an HTTP GET of `path` expecting 200, or
/// `grpc.health.v1.Health/Check` for `service` expecting SERVING.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Tcp,
    Http,
    Grpc,
}

/// Active health check settings for one service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Path requested by `http` checks; a 200 answer means healthy.
    pub path: String,
    /// Host header (`:authority`) sent by `http` and `grpc` checks.
    pub host: String,
    /// The service a `grpc` check asks about; empty (default) asks about the server as a
    /// whole.
    pub service: String,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    pub healthy_threshold: usize,
    /// Consecutive failures that take a backend out.
    pub unhealthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            path: "/health".into(),
            host: "localhost".into(),
            service: String::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

pub(super) fn validate_health_check(hc: &HealthCheckConfig, key: &str) -> Result<(), Invalid> {
    let key = format!("{key}.health_check");
    if hc.interval < Duration::from_millis(10) {
        return Err(Invalid::new(
            format!("{key}.interval"),
            "must be at least 10ms",
        ));
    }
    if hc.timeout.is_zero() {
        return Err(Invalid::new(format!("{key}.timeout"), "must be positive"));
    }
    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
        return Err(Invalid::new(key.clone(), "thresholds must be at least 1"));
    }
    if hc.kind == HealthCheckKind::Http && !hc.path.starts_with('/') {
        return Err(Invalid::new(format!("{key}.path"), "must start with `/`"));
    }
    if hc.kind != HealthCheckKind::Grpc && !hc.service.is_empty() {
        return Err(Invalid::new(
            format!("{key}.service"),
            "only `type: grpc` checks ask about a service",
        ));
    }
    Ok(())
}

/// The connection an `http` or `grpc` check makes: the service's TLS, the check's timeout for
/// connecting and for each read.
fn prepare_peer(peer: &mut HttpPeer, hc: &HealthCheckConfig, tls: Option<&tls::PeerTls>) {
    if let Some(tls) = tls {
        tls.configure(peer, &hc.host);
    }
    peer.options.connection_timeout = Some(hc.timeout);
    peer.options.read_timeout = Some(hc.timeout);
}

/// `http` checks of a TLS service speak TLS with the service's settings (SNI defaults to
/// `health_check.host` there, since one check template serves every backend).
pub(super) fn build_health_check(
    hc: &HealthCheckConfig,
    tls: Option<&tls::PeerTls>,
) -> Result<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>, Invalid> {
    Ok(match hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check
        }
        HealthCheckKind::Http => {
            let mut check = HttpHealthCheck::new(&hc.host, tls.is_some());
            prepare_peer(&mut check.peer_template, hc, tls);
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
                .map_err(|e| Invalid::new("path", e.to_string()))?;
            req.insert_header("host", &hc.host)
                .map_err(|e| Invalid::new("host", e.to_string()))?;
            check.req = req;
            Box::new(check)
        }
        HealthCheckKind::Grpc => {
            let mut check = GrpcHealthCheck::new(&hc.service, &hc.host, tls.is_some())
                .map_err(|e| Invalid::new("host", e.to_string()))?;
            prepare_peer(&mut check.peer_template, hc, tls);
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            Box::new(check)
        }
    })
}
