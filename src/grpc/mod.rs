//! gRPC calls through the gateway: detection, deadlines, message limits, gRPC-shaped answers,
//! the gRPC-Web bridge and per-method metrics.
//!
//! A request is a gRPC call when its content type is `application/grpc*` (or
//! `application/grpc-web*`), on any route; a route with `protocol: grpc` takes nothing else.
//! Calls stream both ways untouched: the stage only reads the messages' 5-byte prefixes (to
//! enforce `max_message_bytes` and catch malformed framing), passes the deadline on in
//! `grpc-timeout`, and reads `grpc-status` where the answer carries it (headers or trailers).
//! Every answer the gateway gives a call itself is trailers-only (HTTP 200, `grpc-status`,
//! `grpc-message`), as gRPC clients expect.

mod answer;
mod call;
mod framing;
mod metrics;
mod timeout;
mod web;

pub use answer::trailers_only;
pub use call::GrpcCall;
pub use metrics::CallMetrics;

use crate::invalid::Invalid;
use serde::Deserialize;
use std::time::Duration;

/// What a route carries: plain HTTP (default; gRPC calls are still recognised by their
/// content type) or only gRPC.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

/// A route's `grpc:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Accept gRPC-Web (`application/grpc-web`, `application/grpc-web-text`) from browsers
    /// and bridge it to the native gRPC upstream.
    pub web: bool,
    /// Largest request message (after its 5-byte prefix); bigger ones are refused with
    /// RESOURCE_EXHAUSTED. Default 4 MiB, gRPC's own default.
    pub max_message_bytes: u64,
    /// Caps the deadline a client asks for in `grpc-timeout`, and is the deadline of calls
    /// that send none. None by default: a call without a deadline may last as long as it
    /// keeps talking.
    #[serde(deserialize_with = "crate::de::de_opt_duration")]
    pub max_timeout: Option<Duration>,
    /// Longest silence from the upstream on a call (the wait for its answer included) before
    /// the gateway ends it. Replaces the service's `timeouts.read` and `write`, which are
    /// meant for short HTTP exchanges and would cut long-lived streams. Default 5 minutes.
    #[serde(deserialize_with = "crate::de::de_duration")]
    pub idle_timeout: Duration,
}

/// gRPC's default largest message.
const DEFAULT_MAX_MESSAGE: u64 = 4 * 1024 * 1024;

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            web: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            max_timeout: None,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A route's gRPC settings, compiled; every proxy route has them, used for the calls it gets.
#[derive(Debug)]
pub struct GrpcRoute {
    /// `protocol: grpc`: requests that are no gRPC call are refused.
    pub only_grpc: bool,
    pub web: bool,
    pub max_message_bytes: u64,
    pub max_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    /// Calls by service, method and status.
    pub metrics: CallMetrics,
}

impl GrpcRoute {
    /// Compiles a route's `protocol` and `grpc:` block; `http2` says whether the route's
    /// services speak HTTP/2 (gRPC needs it).
    pub fn compile(
        protocol: Protocol,
        cfg: Option<&GrpcConfig>,
        http2: bool,
        route: &str,
    ) -> Result<GrpcRoute, Invalid> {
        if cfg.is_some() && protocol != Protocol::Grpc {
            return Err(Invalid::new("grpc", "needs `protocol: grpc`"));
        }
        if protocol == Protocol::Grpc && !http2 {
            return Err(Invalid::new(
                "protocol",
                "gRPC needs HTTP/2 to the upstream: set `http2: true` on the route's services",
            ));
        }
        let defaults = GrpcConfig::default();
        let cfg = cfg.unwrap_or(&defaults);
        if cfg.max_message_bytes == 0 {
            return Err(Invalid::new("grpc.max_message_bytes", "must be positive"));
        }
        if cfg.idle_timeout.is_zero() {
            return Err(Invalid::new("grpc.idle_timeout", "must be positive"));
        }
        if cfg.max_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Invalid::new("grpc.max_timeout", "must be positive"));
        }
        Ok(GrpcRoute {
            only_grpc: protocol == Protocol::Grpc,
            web: cfg.web,
            max_message_bytes: cfg.max_message_bytes,
            max_timeout: cfg.max_timeout,
            idle_timeout: cfg.idle_timeout,
            metrics: CallMetrics::new(route),
        })
    }
}

/// How a call is carried on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Native gRPC over HTTP/2.
    Native,
    /// gRPC-Web, binary (`application/grpc-web`, `application/grpc-web+proto`).
    Web,
    /// gRPC-Web, base64 (`application/grpc-web-text`).
    WebText,
}

impl Wire {
    /// Reads the content type: `None` when the request is no gRPC call.
    pub fn of(content_type: &[u8]) -> Option<Wire> {
        const GRPC: &[u8] = b"application/grpc";
        let rest = content_type
            .get(..GRPC.len())
            .filter(|p| p.eq_ignore_ascii_case(GRPC))
            .map(|_| &content_type[GRPC.len()..])?;
        let is = |suffix: &[u8]| {
            rest.get(..suffix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(suffix))
                && matches!(rest.get(suffix.len()), None | Some(b'+' | b';'))
        };
        if is(b"-web-text") {
            Some(Wire::WebText)
        } else if is(b"-web") {
            Some(Wire::Web)
        } else if is(b"") {
            Some(Wire::Native)
        } else {
            None
        }
    }

    /// The content type of answers on this wire.
    pub fn content_type(self) -> &'static str {
        match self {
            Wire::Native => "application/grpc",
            Wire::Web => "application/grpc-web+proto",
            Wire::WebText => "application/grpc-web-text+proto",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_their_wire() {
        assert_eq!(Wire::of(b"application/grpc"), Some(Wire::Native));
        assert_eq!(Wire::of(b"application/grpc+proto"), Some(Wire::Native));
        assert_eq!(Wire::of(b"Application/GRPC;charset=x"), Some(Wire::Native));
        assert_eq!(Wire::of(b"application/grpc-web"), Some(Wire::Web));
        assert_eq!(Wire::of(b"application/grpc-web+proto"), Some(Wire::Web));
        assert_eq!(Wire::of(b"application/grpc-web-text"), Some(Wire::WebText));
        assert_eq!(
            Wire::of(b"application/grpc-web-text+proto"),
            Some(Wire::WebText)
        );
        assert_eq!(Wire::of(b"application/grpcx"), None);
        assert_eq!(Wire::of(b"application/grpc-webby"), None);
        assert_eq!(Wire::of(b"application/json"), None);
        assert_eq!(Wire::of(b""), None);
    }

    #[test]
    fn a_grpc_route_needs_http2_and_sane_limits() {
        let err = GrpcRoute::compile(Protocol::Grpc, None, false, "r").unwrap_err();
        assert_eq!(err.key, "protocol");
        let cfg = GrpcConfig {
            max_message_bytes: 0,
            ..GrpcConfig::default()
        };
        let err = GrpcRoute::compile(Protocol::Grpc, Some(&cfg), true, "r").unwrap_err();
        assert_eq!(err.key, "grpc.max_message_bytes");
        let err = GrpcRoute::compile(Protocol::Http, Some(&cfg), true, "r").unwrap_err();
        assert_eq!(err.key, "grpc");
        let route = GrpcRoute::compile(Protocol::Http, None, false, "r").unwrap();
        assert!(!route.only_grpc);
        assert_eq!(route.max_message_bytes, DEFAULT_MAX_MESSAGE);
    }
}
