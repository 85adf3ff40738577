//! The one error type a client can see, and its JSON rendering.
//!
//! Every response the gateway produces itself (as opposed to relaying an upstream answer) goes
//! through [`GatewayError::to_response`], so clients always get `application/json` bodies shaped
//! like `{"error": "...", "status": 404, "request_id": "..."}`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::fmt;

/// A failure the gateway reports to the client, with the status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No route matches the request path (and host).
    RouteNotFound,
    /// A route matches the path but not the method; `allow` lists the methods that would match.
    MethodNotAllowed { allow: Vec<String> },
    /// The request is malformed in a way Pingora's parser let through (e.g. a path escaping `/`).
    BadRequest(&'static str),
    /// Every backend of the service is marked unhealthy or was already tried.
    NoHealthyBackend { service: String },
    /// The upstream refused, reset or closed the connection, or sent an invalid response.
    UpstreamUnavailable,
    /// The upstream did not connect, answer or accept the request in time.
    UpstreamTimeout,
    /// A bug or resource failure inside the gateway.
    Internal,
    /// No token (`token_present: false`) or an unacceptable one on a route that needs one.
    Unauthorized { token_present: bool },
    /// A valid token without the role or scope the route requires.
    Forbidden,
    /// The client address is refused by an `ip_restriction` list.
    IpNotAllowed,
    /// No credential on a route that accepts API keys or Basic credentials: `what` names what
    /// the route accepts ("API key", "credentials"); `challenges` are its `WWW-Authenticate`
    /// values.
    MissingCredentials {
        what: &'static str,
        challenges: Box<[http::HeaderValue]>,
    },
    /// An unknown, expired or wrong API key or Basic password (never says which).
    CredentialRefused {
        what: &'static str,
        challenges: Box<[http::HeaderValue]>,
    },
    /// Two different credentials in one request (a token and an API key, two keys...).
    AmbiguousCredentials,
    /// A verified caller that is no registered consumer, on a route requiring one.
    ConsumerRequired,
    /// Login with an unknown email or a wrong password (never says which).
    InvalidCredentials,
    /// Too many login attempts from one client IP.
    TooManyLoginAttempts { retry_after: u64 },
    /// A request body over the size the endpoint accepts.
    PayloadTooLarge,
    /// A request target longer than `limits.max_uri_bytes`.
    UriTooLong,
    /// More header bytes or header fields than `limits` allow.
    HeadersTooLarge,
    /// A header transform would have produced a value with CR, LF or NUL (from a claim).
    UnsafeHeaderValue { header: String },
    /// A JSON request body transform got a body that is not a JSON object.
    InvalidJsonBody,
    /// A `Content-Length` that is not plain digits (`+5`, `-0`, `5,5`) or several that
    /// disagree: the body's end is ambiguous, so the connection is closed after the answer.
    InvalidFraming(&'static str),
    /// The client did not send the request head or body within `client:` deadlines.
    RequestTimeout,
    /// `client.max_connections` connections are open already.
    TooManyConnections,
    /// Too many requests with invalid tokens from one client IP (checked before verifying).
    TooManyInvalidTokens { retry_after: u64 },
    /// A WebSocket handshake on a route without `websocket: true`.
    UpgradeNotAllowed,
    /// An `Expect` the gateway cannot meet (only `100-continue` is defined).
    ExpectationFailed,
    /// A request line with an HTTP major version other than 1 (on an HTTP/1 connection).
    VersionNotSupported,
    /// A rate-limit policy refused the request; it carries the limit headers to send
    /// (`X-RateLimit-*`, `RateLimit*`, `Retry-After`) so errors need not know the limiter.
    RateLimited(Box<[(&'static str, http::HeaderValue)]>),
    /// A consumer's quota is used up; it carries `Retry-After` and the quota's
    /// `RateLimit-Policy` / `RateLimit` items.
    QuotaExceeded(Box<[(&'static str, http::HeaderValue)]>),
    /// The shared rate-limit store is down and `on_store_error: deny`.
    LimiterUnavailable,
    /// The route's script failed (limits, a runtime error, a bad return value); what went
    /// wrong is logged, never sent.
    ScriptFailed,
    /// A gRPC request message bigger than the route's `grpc.max_message_bytes`.
    GrpcMessageTooLarge { limit: u64 },
    /// A gRPC request that breaks the protocol: a bad message prefix, a stream ending inside
    /// a message, a `grpc-timeout` that is not 1-8 digits and a unit.
    GrpcMalformed(&'static str),
    /// A request that is no gRPC call on a `protocol: grpc` route.
    GrpcRequired,
    /// A gRPC-Web call on a route without `grpc.web: true`.
    GrpcWebNotEnabled,
    /// A required call of an aggregate route failed.
    AggregateCallFailed { call: String, reason: String },
    /// Two calls of a `top_level` aggregate set the same field and `on_conflict: error`.
    AggregateConflict {
        field: String,
        first: String,
        second: String,
    },
}

impl GatewayError {
    /// The HTTP status code sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::RouteNotFound => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BadRequest(_) => 400,
            GatewayError::NoHealthyBackend { .. } | GatewayError::UpstreamUnavailable => 502,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::Internal | GatewayError::ScriptFailed => 500,
            GatewayError::Unauthorized { .. } | GatewayError::InvalidCredentials => 401,
            GatewayError::Forbidden
            | GatewayError::IpNotAllowed
            | GatewayError::ConsumerRequired => 403,
            GatewayError::MissingCredentials { .. } | GatewayError::CredentialRefused { .. } => 401,
            GatewayError::AmbiguousCredentials => 400,
            GatewayError::TooManyLoginAttempts { .. } => 429,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::UriTooLong => 414,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::UnsafeHeaderValue { .. }
            | GatewayError::InvalidJsonBody
            | GatewayError::InvalidFraming(_)
            | GatewayError::UpgradeNotAllowed => 400,
            GatewayError::RateLimited(_)
            | GatewayError::QuotaExceeded(_)
            | GatewayError::TooManyInvalidTokens { .. } => 429,
            GatewayError::LimiterUnavailable | GatewayError::TooManyConnections => 503,
            GatewayError::RequestTimeout => 408,
            GatewayError::ExpectationFailed => 417,
            GatewayError::VersionNotSupported => 505,
            GatewayError::AggregateCallFailed { .. } | GatewayError::AggregateConflict { .. } => {
                502
            }
            GatewayError::GrpcMessageTooLarge { .. } => 413,
            GatewayError::GrpcMalformed(_) => 400,
            GatewayError::GrpcRequired | GatewayError::GrpcWebNotEnabled => 415,
        }
    }

    /// The gRPC status code a gRPC client gets for this error (trailers-only answer). Follows
    /// gRPC's own table (statuscodes.md): malformed input is INTERNAL, a message over the
    /// limit RESOURCE_EXHAUSTED; a rate limit is RESOURCE_EXHAUSTED (as Envoy's
    /// `rate_limited_as_resource_exhausted`), an unknown method UNIMPLEMENTED.
    pub fn grpc_code(&self) -> u8 {
        const INTERNAL: u8 = 13;
        match self {
            GatewayError::RouteNotFound
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::GrpcWebNotEnabled
            | GatewayError::GrpcRequired => 12, // UNIMPLEMENTED
            GatewayError::Unauthorized { .. }
            | GatewayError::InvalidCredentials
            | GatewayError::MissingCredentials { .. }
            | GatewayError::CredentialRefused { .. }
            | GatewayError::AmbiguousCredentials => 16, // UNAUTHENTICATED
            GatewayError::Forbidden
            | GatewayError::IpNotAllowed
            | GatewayError::ConsumerRequired => 7, // PERMISSION_DENIED
            GatewayError::RateLimited(_)
            | GatewayError::QuotaExceeded(_)
            | GatewayError::TooManyInvalidTokens { .. }
            | GatewayError::TooManyLoginAttempts { .. }
            | GatewayError::PayloadTooLarge
            | GatewayError::GrpcMessageTooLarge { .. }
            | GatewayError::UriTooLong
            | GatewayError::HeadersTooLarge => 8, // RESOURCE_EXHAUSTED
            GatewayError::NoHealthyBackend { .. }
            | GatewayError::UpstreamUnavailable
            | GatewayError::LimiterUnavailable
            | GatewayError::TooManyConnections
            | GatewayError::AggregateCallFailed { .. }
            | GatewayError::AggregateConflict { .. } => 14, // UNAVAILABLE
            GatewayError::UpstreamTimeout | GatewayError::RequestTimeout => 4, // DEADLINE_EXCEEDED
            GatewayError::BadRequest(_)
            | GatewayError::UnsafeHeaderValue { .. }
            | GatewayError::InvalidJsonBody
            | GatewayError::InvalidFraming(_)
            | GatewayError::UpgradeNotAllowed
            | GatewayError::ExpectationFailed
            | GatewayError::VersionNotSupported
            | GatewayError::GrpcMalformed(_)
            | GatewayError::Internal
            | GatewayError::ScriptFailed => INTERNAL,
        }
    }

    /// Builds the complete JSON response (header and body) for this error.
    pub fn to_response(&self, request_id: &str) -> (ResponseHeader, Bytes) {
        // A struct (not `json!`) keeps the documented field order: error, status, request_id.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: String,
            status: u16,
            request_id: &'a str,
        }
        let body = Body {
            error: self.to_string(),
            status: self.status(),
            request_id,
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        // Every status above is a valid 3-digit code, the only thing `build` checks.
        let mut header =
            ResponseHeader::build(self.status(), Some(4)).expect("static status codes are valid");
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len().to_string());
        let _ = header.insert_header("cache-control", "no-store");
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                let _ = header.insert_header("allow", allow.join(", "));
            }
            // RFC 6750 §3: say which scheme is expected, and why a presented token failed.
            GatewayError::Unauthorized {
                token_present: false,
            }
            | GatewayError::InvalidCredentials => {
                let _ = header.insert_header("www-authenticate", r#"Bearer realm="apigateway""#);
            }
            GatewayError::Unauthorized {
                token_present: true,
            } => {
                let _ = header.insert_header(
                    "www-authenticate",
                    r#"Bearer realm="apigateway", error="invalid_token""#,
                );
            }
            GatewayError::Forbidden => {
                let _ = header.insert_header(
                    "www-authenticate",
                    r#"Bearer realm="apigateway", error="insufficient_scope""#,
                );
            }
            GatewayError::MissingCredentials { challenges, .. }
            | GatewayError::CredentialRefused { challenges, .. } => {
                for c in challenges.iter() {
                    let _ = header.append_header("www-authenticate", c.clone());
                }
            }
            GatewayError::TooManyLoginAttempts { retry_after }
            | GatewayError::TooManyInvalidTokens { retry_after } => {
                let _ = header.insert_header("retry-after", retry_after.to_string());
            }
            GatewayError::RateLimited(headers) | GatewayError::QuotaExceeded(headers) => {
                // Appended: a quota's `RateLimit` items are one field line each.
                for (name, value) in headers.iter() {
                    let _ = header.append_header(*name, value.clone());
                }
            }
            GatewayError::LimiterUnavailable | GatewayError::TooManyConnections => {
                let _ = header.insert_header("retry-after", "1");
            }
            _ => {}
        }
        // `X-Request-Id` and the other headers every answer carries are added by the proxy's
        // `decorate`, the one place for them.
        (header, body)
    }
}

impl GatewayError {
    /// The whole answer as HTTP/1.1 bytes ending the connection, for the connection layer,
    /// which answers before Pingora has a session to write through.
    pub fn to_http1_bytes(&self, request_id: &str) -> Vec<u8> {
        let (header, body) = self.to_response(request_id);
        let reason = header.status.canonical_reason().unwrap_or("");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", header.status.as_u16()).into_bytes();
        for (name, value) in header.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&body);
        out
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::RouteNotFound => f.write_str("Route not found"),
            GatewayError::MethodNotAllowed { .. } => f.write_str("Method not allowed"),
            GatewayError::BadRequest(why) => write!(f, "Bad request: {why}"),
            GatewayError::NoHealthyBackend { service } => {
                write!(f, "No healthy backend for service {service}")
            }
            GatewayError::UpstreamUnavailable => f.write_str("Upstream unavailable"),
            GatewayError::UpstreamTimeout => f.write_str("Upstream timed out"),
            GatewayError::Internal => f.write_str("Internal gateway error"),
            GatewayError::ScriptFailed => f.write_str("Script error"),
            GatewayError::Unauthorized {
                token_present: false,
            } => f.write_str("No token provided"),
            GatewayError::Unauthorized {
                token_present: true,
            } => f.write_str("Invalid token"),
            GatewayError::Forbidden => f.write_str("Insufficient permissions"),
            GatewayError::IpNotAllowed => f.write_str("Forbidden"),
            GatewayError::MissingCredentials { what, .. } => write!(f, "No {what} provided"),
            GatewayError::CredentialRefused { what, .. } => write!(f, "Invalid {what}"),
            GatewayError::AmbiguousCredentials => {
                f.write_str("Bad request: more than one credential in the request")
            }
            GatewayError::ConsumerRequired => {
                f.write_str("This route requires a registered consumer")
            }
            GatewayError::InvalidCredentials => f.write_str("Invalid email or password"),
            GatewayError::TooManyLoginAttempts { .. } => f.write_str("Too many login attempts"),
            GatewayError::PayloadTooLarge => f.write_str("Request body too large"),
            GatewayError::UriTooLong => f.write_str("Request URI too long"),
            GatewayError::HeadersTooLarge => f.write_str("Request header fields too large"),
            GatewayError::UnsafeHeaderValue { header } => write!(
                f,
                "Bad request: the value for header {header} would contain CR, LF or NUL"
            ),
            GatewayError::InvalidJsonBody => {
                f.write_str("Bad request: the body must be a JSON object")
            }
            GatewayError::InvalidFraming(reason) => write!(f, "Bad request: {reason}"),
            GatewayError::RequestTimeout => f.write_str("Request timed out"),
            GatewayError::TooManyConnections => f.write_str("Too many connections"),
            GatewayError::TooManyInvalidTokens { .. } => {
                f.write_str("Too many requests with invalid tokens")
            }
            GatewayError::UpgradeNotAllowed => {
                f.write_str("Bad request: WebSocket upgrades are not enabled on this route")
            }
            GatewayError::ExpectationFailed => {
                f.write_str("Expectation failed: only Expect: 100-continue is supported")
            }
            GatewayError::VersionNotSupported => {
                f.write_str("HTTP version not supported: use HTTP/1.1 or HTTP/2")
            }
            GatewayError::RateLimited(_) => f.write_str("Rate limit exceeded"),
            GatewayError::QuotaExceeded(_) => f.write_str("Quota exceeded"),
            GatewayError::LimiterUnavailable => f.write_str("Rate limiter unavailable"),
            GatewayError::GrpcMessageTooLarge { limit } => {
                write!(f, "gRPC message larger than {limit} bytes")
            }
            GatewayError::GrpcMalformed(why) => write!(f, "Malformed gRPC request: {why}"),
            GatewayError::GrpcRequired => {
                f.write_str("This route takes gRPC calls only (content-type application/grpc)")
            }
            GatewayError::GrpcWebNotEnabled => f.write_str("gRPC-Web is not enabled on this route"),
            GatewayError::AggregateCallFailed { call, reason } => {
                write!(f, "Aggregate call {call:?} failed: {reason}")
            }
            GatewayError::AggregateConflict {
                field,
                first,
                second,
            } => write!(
                f,
                "Aggregate conflict: calls {first:?} and {second:?} both set {field:?}"
            ),
        }
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_with_status_and_request_id() {
        let (header, body) = GatewayError::RouteNotFound.to_response("abc");
        assert_eq!(header.status.as_u16(), 404);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "Route not found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["request_id"], "abc");
        assert!(body.starts_with(br#"{"error":"Route not found","status":404,"#));
        assert_eq!(
            header
                .headers
                .get("content-length")
                .unwrap()
                .to_str()
                .unwrap(),
            body.len().to_string()
        );
    }

    #[test]
    fn raw_answer_is_a_complete_closing_response() {
        let raw = GatewayError::RequestTimeout.to_http1_bytes("");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains(r#""status":408"#), "{body}");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let e = GatewayError::MethodNotAllowed {
            allow: vec!["GET".into(), "HEAD".into()],
        };
        let (header, _) = e.to_response("x");
        assert_eq!(header.status.as_u16(), 405);
        assert_eq!(header.headers.get("allow").unwrap(), "GET, HEAD");
    }
}
