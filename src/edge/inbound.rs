//! The edge stage of one request: who is asking (request id, peer and client address, origin,
//! TLS) and how much body it sent, plus the headers every answer carries.

use super::ClientIpResolver;
use super::cors::Cors;
use super::headers::{SecurityHeaders, X_FORWARDED_FOR, X_REQUEST_ID};
use crate::errors::GatewayError;
use crate::header_edit::HeaderEdit;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::time::Instant;

/// Who is asking, read once when the request arrives.
pub struct Inbound {
    /// Incoming well-formed `X-Request-Id` or a generated one; empty only when Pingora failed
    /// the request before `request_filter` ran. Checked ASCII, see [`Inbound::request_id`].
    request_id: HeaderValue,
    /// The socket peer.
    pub peer_ip: Option<IpAddr>,
    /// The client address: the peer, or behind trusted proxies the forwarded one.
    pub client_ip: Option<IpAddr>,
    /// The request's `Origin`, for CORS.
    pub origin: Option<HeaderValue>,
    /// Whether the client connection is TLS (HSTS is only sent then).
    pub tls: bool,
    pub started: Instant,
}

impl Inbound {
    /// Before anything is known about the request.
    pub fn new() -> Self {
        Inbound {
            request_id: HeaderValue::from_static(""),
            peer_ip: None,
            client_ip: None,
            origin: None,
            tls: false,
            started: Instant::now(),
        }
    }

    /// Reads the request id, client address and origin of `req` from socket peer `peer`.
    pub fn read(
        &mut self,
        req: &RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
        resolver: &ClientIpResolver,
    ) {
        self.request_id = super::request_id(req.headers.get(X_REQUEST_ID.name()));
        self.peer_ip = peer;
        // `X-Forwarded-For` is only looked up when a trusted proxy could have sent it.
        self.client_ip = peer.map(|peer| match resolver.is_trusted(&peer) {
            true => {
                let xff = req.headers.get_all(X_FORWARDED_FOR.name());
                resolver.resolve(peer, xff.iter().map(|v| v.as_bytes()))
            }
            false => peer,
        });
        self.origin = req.headers.get(http::header::ORIGIN).cloned();
        self.tls = tls;
    }

    /// The request id as text (for logs, templates and error bodies).
    pub fn request_id(&self) -> &str {
        // Only ever a checked incoming id or a UUID: always ASCII.
        self.request_id.to_str().unwrap_or("")
    }

    /// The request id as a header value, shared by the upstream request and the response.
    pub fn request_id_value(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The scheme the client used, for `X-Forwarded-Proto`.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Adds what every answer carries, whoever produced it: the request id, the security
    /// headers and CORS of the route (or the top-level ones when no route matched).
    pub fn decorate(
        &self,
        h: &mut ResponseHeader,
        security: Option<&SecurityHeaders>,
        cors: Option<&Cors>,
    ) {
        if !self.request_id.is_empty() {
            let id = self.request_id.clone();
            let _ = HeaderEdit::apply_response(h, |h| h.insert_custom(&X_REQUEST_ID, id));
        }
        if let Some(security) = security {
            security.apply(h, self.tls);
        }
        if let Some(cors) = cors {
            cors.apply(h, self.origin.as_ref());
        }
    }
}

impl Default for Inbound {
    fn default() -> Self {
        Self::new()
    }
}

/// The request body's limits while it streams: its size (chunked bodies have no declared
/// length) and its whole-body deadline (Pingora bounds each read, not the whole body).
#[derive(Default)]
pub struct BodyLimit {
    received: u64,
    max: Option<u64>,
    deadline: Option<Instant>,
}

impl BodyLimit {
    /// The whole body must have arrived by `at` (`client.body_deadline` after the head).
    pub fn set_deadline(&mut self, at: Instant) {
        self.deadline = Some(at);
    }

    /// When the whole body must have arrived, once the head is read.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The route's largest body, once the route is known.
    pub fn set_max(&mut self, max: u64) {
        self.max = Some(max);
    }

    /// The body is a long-lived stream (a gRPC call): neither its size nor a deadline for its
    /// end applies (its own stage limits its messages).
    pub fn set_stream(&mut self) {
        self.max = None;
        self.deadline = None;
    }

    /// Counts one chunk; a body over the size or past the deadline is refused.
    pub fn on_chunk(&mut self, len: usize, end_of_stream: bool) -> Result<(), GatewayError> {
        if !end_of_stream && self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(GatewayError::RequestTimeout);
        }
        self.received += len as u64;
        if self.max.is_some_and(|max| self.received > max) {
            return Err(GatewayError::PayloadTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_the_caller_behind_a_trusted_proxy() {
        let resolver = ClientIpResolver::compile(&["10.0.0.0/8".to_string()]).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "203.0.113.7").unwrap();
        req.insert_header("x-request-id", "abc-1").unwrap();
        req.insert_header("origin", "https://app.example").unwrap();
        let mut inbound = Inbound::new();
        inbound.read(&req, Some([10, 1, 2, 3].into()), true, &resolver);
        assert_eq!(inbound.request_id(), "abc-1");
        assert_eq!(inbound.client_ip, Some([203, 0, 113, 7].into()));
        assert_eq!(inbound.proto(), "https");
        let mut untrusted = Inbound::new();
        untrusted.read(&req, Some([192, 0, 2, 1].into()), false, &resolver);
        assert_eq!(untrusted.client_ip, Some([192, 0, 2, 1].into()));
        let mut h = ResponseHeader::build(200, None).unwrap();
        untrusted.decorate(&mut h, None, None);
        assert_eq!(h.headers["x-request-id"], "abc-1");
    }

    #[test]
    fn body_limit_counts_chunks_and_keeps_the_deadline() {
        let mut limit = BodyLimit::default();
        limit.on_chunk(1 << 20, false).unwrap();
        let mut limit = BodyLimit::default();
        limit.set_deadline(Instant::now() + Duration::from_secs(60));
        limit.set_max(10);
        limit.on_chunk(6, false).unwrap();
        assert_eq!(limit.on_chunk(5, true), Err(GatewayError::PayloadTooLarge));
        let mut late = BodyLimit::default();
        late.set_deadline(Instant::now() - Duration::from_secs(1));
        assert_eq!(late.on_chunk(1, false), Err(GatewayError::RequestTimeout));
        late.on_chunk(1, true).unwrap();
    }
}
