//! The `grpc` active health check: the standard `grpc.health.v1.Health/Check` call, healthy
//! when the backend answers SERVING for the configured service.
//!
//! Pingora's `HttpHealthCheck` sends a bodiless GET and reads only the status; a gRPC check
//! needs a request message, HTTP/2 and the status in the trailers. The two messages have one
//! field each (`service`, a string; `status`, an enum), so they are written and read here
//! rather than generated: a protobuf code generator in the gateway's build for two fields
//! would cost more than it saves.

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// `HealthCheckResponse.status` SERVING.
const SERVING: u64 = 1;
/// The largest answer read: a status and some unknown fields.
const MAX_ANSWER: usize = 1024;

/// A `grpc.health.v1.Health/Check` call per check.
pub(super) struct GrpcHealthCheck {
    pub peer_template: HttpPeer,
    pub consecutive_success: usize,
    pub consecutive_failure: usize,
    request: RequestHeader,
    /// The framed `HealthCheckRequest`.
    message: bytes::Bytes,
    connector: Connector,
}

impl GrpcHealthCheck {
    /// A check of `service` (empty: the server as a whole), with `authority` as `:authority`,
    /// over TLS when `tls`.
    pub fn new(service: &str, authority: &str, tls: bool) -> Result<Self> {
        let mut request = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)?;
        request.insert_header("host", authority)?;
        request.insert_header("content-type", "application/grpc")?;
        request.insert_header("te", "trailers")?;
        let mut peer_template = HttpPeer::new("0.0.0.0:1", tls, String::new());
        // Prior knowledge in plaintext, ALPN h2 over TLS.
        peer_template.options.set_http_version(2, 2);
        Ok(GrpcHealthCheck {
            peer_template,
            consecutive_success: 1,
            consecutive_failure: 1,
            request,
            message: frame(&health_request(service)),
            connector: Connector::new(None),
        })
    }
}

#[async_trait::async_trait]
impl HealthCheck for GrpcHealthCheck {
    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.consecutive_success
        } else {
            self.consecutive_failure
        }
    }

    async fn check(&self, target: &Backend) -> Result<()> {
        let mut peer = self.peer_template.clone();
        peer._address = target.addr.clone();
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        session.set_write_timeout(peer.options.read_timeout);
        session.set_read_timeout(peer.options.read_timeout);
        session
            .write_request_header(Box::new(self.request.clone()))
            .await?;
        session
            .write_request_body(self.message.clone(), true)
            .await?;
        session.read_response_header().await?;
        let head = session.response_header().map(|h| h.status.as_u16());
        if head != Some(200) {
            return fail(format!("HTTP status {head:?}"));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = session.read_response_body().await? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return fail("answer too large".into());
            }
            answer.extend_from_slice(&chunk);
        }
        let status_header = session
            .response_header()
            .and_then(|h| h.headers.get("grpc-status").cloned());
        let trailer = match &mut session {
            HttpSession::H2(h2) => h2
                .read_trailers()
                .await?
                .and_then(|t| t.get("grpc-status").cloned()),
            _ => None,
        };
        match trailer.or(status_header) {
            Some(s) if s == "0" => {}
            other => return fail(format!("grpc-status {other:?}")),
        }
        match unframe(&answer).and_then(serving_status) {
            Some(SERVING) => Ok(()),
            other => fail(format!("status {other:?}, not SERVING")),
        }
    }
}

fn fail(why: String) -> Result<()> {
    Error::e_explain(
        ErrorType::CustomCode("grpc health check", 0),
        format!("grpc.health.v1 check failed: {why}"),
    )
}

/// `HealthCheckRequest { service = 1 }`: a string field, absent when empty.
fn health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        out.push(0x0a); // field 1, length-delimited
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A message behind its 5-byte gRPC prefix (uncompressed).
fn frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The one uncompressed message of an answer.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (prefix, rest) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    (prefix[0] == 0 && rest.len() == len).then_some(rest)
}

/// `HealthCheckResponse.status` (field 1, varint); 0 (UNKNOWN) when absent.
fn serving_status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = take_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = usize::try_from(take_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_request_and_reads_the_status() {
        assert_eq!(health_request(""), b"");
        assert_eq!(health_request("demo.Greeter"), b"\x0a\x0cdemo.Greeter");
        assert_eq!(&frame(b"ab")[..], b"\0\0\0\0\x02ab");
        assert_eq!(unframe(b"\0\0\0\0\x02\x08\x01"), Some(&b"\x08\x01"[..]));
        assert_eq!(unframe(b"\0\0\0\0\x03\x08\x01"), None);
        assert_eq!(serving_status(b"\x08\x01"), Some(1));
        assert_eq!(serving_status(b"\x08\x02"), Some(2));
        assert_eq!(serving_status(b""), Some(0));
        // Unknown fields are skipped; a cut varint is no answer.
        assert_eq!(serving_status(b"\x12\x02hi\x08\x01"), Some(1));
        assert_eq!(serving_status(b"\x08\x81"), None);
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(take_varint(&mut &v[..]), Some(300));
    }
}
