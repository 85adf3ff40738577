//! The gateway's own answers to a gRPC call: trailers-only responses.

use super::Wire;
use crate::errors::GatewayError;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use pingora::http::ResponseHeader;

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%`.
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Turns the error's HTTP answer (`GatewayError::to_response`) into a trailers-only gRPC
/// answer: HTTP 200, the wire's content type, `grpc-status` and `grpc-message`, no body. The
/// error's other headers (`WWW-Authenticate`, `Retry-After`, rate-limit headers) stay, as
/// metadata a client may read.
pub fn trailers_only(err: &GatewayError, mut header: ResponseHeader, wire: Wire) -> ResponseHeader {
    // 200 is a valid status.
    let _ = header.set_status(200);
    header.remove_header(&http::header::CONTENT_LENGTH);
    header.remove_header(&http::header::CACHE_CONTROL);
    let message = utf8_percent_encode(&err.to_string(), MESSAGE).to_string();
    // Static content types, digits and a percent-encoded message are valid header values.
    let _ = header.insert_header(http::header::CONTENT_TYPE, wire.content_type());
    let _ = header.insert_header("grpc-status", err.grpc_code().to_string());
    let _ = header.insert_header("grpc-message", message);
    if wire != Wire::Native {
        // A gRPC-Web answer over HTTP/1.1 says where it ends.
        let _ = header.insert_header(http::header::CONTENT_LENGTH, "0");
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_becomes_a_trailers_only_answer() {
        let err = GatewayError::Unauthorized {
            token_present: false,
        };
        let (header, _) = err.to_response("id");
        let h = trailers_only(&err, header, Wire::Native);
        assert_eq!(h.status.as_u16(), 200);
        assert_eq!(h.headers["content-type"], "application/grpc");
        assert_eq!(h.headers["grpc-status"], "16");
        assert_eq!(h.headers["grpc-message"], "No token provided");
        assert!(h.headers.get("content-length").is_none());
        assert!(h.headers.get("www-authenticate").is_some());
    }

    #[test]
    fn the_message_is_percent_encoded_and_web_answers_have_a_length() {
        let err = GatewayError::GrpcMalformed("100% \u{e9}t\u{e9}\n");
        let (header, _) = err.to_response("id");
        let h = trailers_only(&err, header, Wire::WebText);
        assert_eq!(
            h.headers["grpc-message"],
            "Malformed gRPC request: 100%25 %C3%A9t%C3%A9%0A"
        );
        assert_eq!(h.headers["content-type"], "application/grpc-web-text+proto");
        assert_eq!(h.headers["content-length"], "0");
    }
}
