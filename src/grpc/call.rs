//! `GrpcCall`: one gRPC call's state, from its arrival to its status.

use super::framing::MessageFrames;
use super::web::WebBridge;
use super::{GrpcRoute, Wire, metrics, timeout};
use crate::errors::GatewayError;
use crate::header_edit::{CustomName, HeaderEdit};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant};

// Prepared names: a `&str` name is parsed again on every lookup.
static GRPC_TIMEOUT: CustomName = CustomName::new("grpc-timeout");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A gRPC call's per-request stage (idle for requests that are no call): its wire, its
/// route's settings, its deadline, where its request messages stand, the gRPC-Web bridge when
/// it is bridged, and the status it ended with.
#[derive(Debug, Default)]
pub struct GrpcCall {
    wire: Option<Wire>,
    route: Option<Arc<GrpcRoute>>,
    deadline: Option<Instant>,
    frames: MessageFrames,
    web: Option<WebBridge>,
    /// `grpc-status` from the answer's trailers.
    status: Option<u32>,
}

impl GrpcCall {
    /// Reads the content type: whether the request is a gRPC call, on which wire. Runs
    /// first, so that even a refusal before routing is an answer a gRPC client can read.
    pub fn detect(&mut self, req: &RequestHeader) {
        self.wire = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| Wire::of(v.as_bytes()));
    }

    /// The call's wire; `None` when the request is no gRPC call.
    pub fn wire(&self) -> Option<Wire> {
        self.wire
    }

    /// Once the route is known: refuses what the route does not take, arms the gRPC-Web
    /// bridge, and sets the deadline (the client's `grpc-timeout`, capped by the route).
    pub fn admit(
        &mut self,
        route: &Arc<GrpcRoute>,
        req: &RequestHeader,
        started: Instant,
    ) -> Result<(), GatewayError> {
        let wire = match self.wire {
            None if route.only_grpc => return Err(GatewayError::GrpcRequired),
            None => return Ok(()),
            Some(wire) => wire,
        };
        if wire != Wire::Native {
            if route.web {
                self.web = Some(WebBridge::new(wire == Wire::WebText));
            } else if route.only_grpc {
                return Err(GatewayError::GrpcWebNotEnabled);
            }
        }
        let asked = match req.headers.get(GRPC_TIMEOUT.name()) {
            Some(v) => Some(
                timeout::parse(v.as_bytes()).ok_or(GatewayError::GrpcMalformed(
                    "grpc-timeout is not 1-8 digits and a unit (H, M, S, m, u, n)",
                ))?,
            ),
            None => None,
        };
        let allowed = match (asked, route.max_timeout) {
            (Some(a), Some(max)) => Some(a.min(max)),
            (a, max) => a.or(max),
        };
        self.deadline = allowed.map(|d| started + d);
        self.route = Some(route.clone());
        Ok(())
    }

    /// Gives an attempt the call's timeouts instead of the service's HTTP ones: the route's
    /// idle timeout for each read and write, and no read past the deadline.
    pub fn on_attempt(&self, peer: &mut HttpPeer) {
        let Some(route) = self.route.as_ref() else {
            return;
        };
        let left = self.deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let read = left.map_or(route.idle_timeout, |l| l.min(route.idle_timeout));
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(route.idle_timeout);
    }

    /// Tells the upstream what is left of the deadline, keeps `TE: trailers` (gRPC servers
    /// check it), and turns a bridged gRPC-Web request into a native one.
    pub fn on_upstream_request(&self, upstream: &mut HeaderEdit<'_>) -> pingora::Result<()> {
        if self.route.is_none() {
            return Ok(());
        }
        upstream.insert(&http::header::TE, HeaderValue::from_static("trailers"))?;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let value = HeaderValue::try_from(timeout::format(left))
                .map_err(|e| Error::because(ErrorType::InternalError, "grpc-timeout", e))?;
            upstream.insert_custom(&GRPC_TIMEOUT, value)?;
        }
        if self.web.is_some() {
            let content_type = upstream
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| native_content_type(v.as_bytes()))
                .unwrap_or_else(|| "application/grpc".into());
            let value = HeaderValue::try_from(content_type)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "content-type", e))?;
            upstream.insert(&http::header::CONTENT_TYPE, value)?;
            // The text form's decoded length differs; HTTP/2 needs no length anyway.
            upstream.remove(&http::header::CONTENT_LENGTH);
        }
        Ok(())
    }

    /// Decodes a bridged text body and follows the messages: one over the route's limit or
    /// a malformed prefix refuses the call.
    pub fn on_request_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), GatewayError> {
        let Some(route) = self.route.as_ref() else {
            return Ok(());
        };
        if let Some(web) = self.web.as_mut() {
            web.on_request_chunk(body, end_of_stream)?;
        }
        if let Some(chunk) = body.as_deref() {
            self.frames.on_chunk(chunk, route.max_message_bytes)?;
        }
        if end_of_stream {
            self.frames.on_end()?;
        }
        Ok(())
    }

    /// A bridged call's answer says gRPC-Web; it has no length (its trailers join the body).
    pub fn on_response_header(&mut self, h: &mut ResponseHeader) {
        let (Some(_), Some(wire)) = (self.web.as_ref(), self.wire) else {
            return;
        };
        let is_grpc = h
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| Wire::of(v.as_bytes()) == Some(Wire::Native));
        if !is_grpc {
            // Not a gRPC answer (an upstream's HTTP error page): nothing to bridge.
            self.web = None;
            return;
        }
        // Static content types are valid header values.
        let _ = h.insert_header(http::header::CONTENT_TYPE, wire.content_type());
        h.remove_header(&http::header::CONTENT_LENGTH);
    }

    /// Encodes a bridged text answer's body.
    pub fn on_response_body(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Some(web) = self.web.as_mut() {
            web.on_response_chunk(body, end_of_stream);
        }
    }

    /// Reads the status from the answer's trailers; a bridged call gets them as the body's
    /// last frame instead (returned, for Pingora to send as body).
    pub fn on_response_trailers(&mut self, trailers: &http::HeaderMap) -> Option<Bytes> {
        self.status = status_of(trailers);
        self.web.as_mut().map(|web| web.trailer_frame(trailers))
    }

    /// The status the call ended with: from the trailers, else from the answer's head
    /// (trailers-only answers, the gateway's own included).
    pub fn status(&self, answer: Option<&ResponseHeader>) -> Option<u32> {
        self.wire?;
        self.status
            .or_else(|| answer.and_then(|h| status_of(&h.headers)))
    }

    /// The call's service and method, from its path.
    pub fn method<'p>(&self, path: &'p str) -> Option<(&'p str, &'p str)> {
        self.wire.map(|_| metrics::split_path(path))
    }

    /// Counts the call, ended with `status` (see [`GrpcCall::status`]), under its route's
    /// gRPC metrics.
    pub fn record(&self, path: &str, status: Option<u32>) {
        if let Some(route) = self.route.as_ref() {
            route.metrics.record(path, status);
        }
    }
}

/// `grpc-status` as a number, when present and numeric.
fn status_of(headers: &http::HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// `application/grpc-web-text+proto` → `application/grpc+proto`.
fn native_content_type(web: &[u8]) -> String {
    let web = String::from_utf8_lossy(web).to_ascii_lowercase();
    let rest = web
        .strip_prefix("application/grpc-web-text")
        .or_else(|| web.strip_prefix("application/grpc-web"))
        .unwrap_or("");
    format!("application/grpc{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{GrpcConfig, Protocol};

    fn route(cfg: GrpcConfig) -> Arc<GrpcRoute> {
        Arc::new(GrpcRoute::compile(Protocol::Grpc, Some(&cfg), true, "call-test").unwrap())
    }

    fn request(content_type: &str, timeout: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/demo.Greeter/SayHello", None).unwrap();
        req.insert_header("content-type", content_type).unwrap();
        if let Some(t) = timeout {
            req.insert_header("grpc-timeout", t).unwrap();
        }
        req
    }

    #[test]
    fn the_deadline_is_the_clients_capped_by_the_route() {
        let capped = route(GrpcConfig {
            max_timeout: Some(Duration::from_secs(2)),
            ..GrpcConfig::default()
        });
        let now = Instant::now();
        for (asked, expect) in [(Some("1S"), 1), (Some("5S"), 2), (None, 2)] {
            let req = request("application/grpc", asked);
            let mut call = GrpcCall::default();
            call.detect(&req);
            call.admit(&capped, &req, now).unwrap();
            assert_eq!(call.deadline, Some(now + Duration::from_secs(expect)));
        }
        let req = request("application/grpc", Some("1s"));
        let mut call = GrpcCall::default();
        call.detect(&req);
        assert!(matches!(
            call.admit(&capped, &req, now),
            Err(GatewayError::GrpcMalformed(_))
        ));
    }

    #[test]
    fn a_grpc_route_takes_only_calls_and_web_only_when_enabled() {
        let r = route(GrpcConfig::default());
        let mut call = GrpcCall::default();
        let json = request("application/json", None);
        call.detect(&json);
        assert_eq!(
            call.admit(&r, &json, Instant::now()),
            Err(GatewayError::GrpcRequired)
        );
        let web = request("application/grpc-web-text", None);
        call.detect(&web);
        assert_eq!(
            call.admit(&r, &web, Instant::now()),
            Err(GatewayError::GrpcWebNotEnabled)
        );
        let r = route(GrpcConfig {
            web: true,
            ..GrpcConfig::default()
        });
        call.admit(&r, &web, Instant::now()).unwrap();
        let mut upstream = web.clone();
        HeaderEdit::apply(&mut upstream, |h| call.on_upstream_request(h)).unwrap();
        assert_eq!(upstream.headers["content-type"], "application/grpc");
        assert_eq!(upstream.headers["te"], "trailers");
    }

    #[test]
    fn web_content_types_map_to_native_ones() {
        assert_eq!(
            native_content_type(b"application/grpc-web"),
            "application/grpc"
        );
        assert_eq!(
            native_content_type(b"application/grpc-web-text+proto"),
            "application/grpc+proto"
        );
    }
}
