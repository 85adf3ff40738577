//! The gRPC-Web bridge (PROTOCOL-WEB.md): a browser's gRPC-Web call becomes a native gRPC
//! call to the upstream, and the answer's trailers travel back inside the body.
//!
//! Pingora has a gRPC-Web module, but it only knows the binary form; the text form
//! (`application/grpc-web-text`, base64 both ways) is what browsers use for server streaming
//! through older proxies, so both are handled here, streamed: base64 is decoded and encoded
//! as chunks pass, keeping only the 0-3 bytes that do not yet make a whole group.

use crate::errors::GatewayError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};

/// The flag of the body frame that carries the trailers.
const TRAILER_FRAME: u8 = 0x80;

/// A bridged call's state: the base64 groups cut between chunks, each way.
#[derive(Debug, Default)]
pub(super) struct WebBridge {
    /// Text form: base64 both ways.
    text: bool,
    /// Request characters that do not make a whole 4-character group yet.
    request_carry: Vec<u8>,
    /// Response bytes that do not make a whole 3-byte group yet.
    response_carry: Vec<u8>,
}

impl WebBridge {
    pub(super) fn new(text: bool) -> Self {
        WebBridge {
            text,
            ..WebBridge::default()
        }
    }

    /// Decodes a text-form request chunk in place (binary passes as it is).
    pub(super) fn on_request_chunk(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), GatewayError> {
        if !self.text {
            return Ok(());
        }
        let mut input = std::mem::take(&mut self.request_carry);
        if let Some(chunk) = body.as_deref() {
            input.extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        }
        let whole = input.len() / 4 * 4;
        let decoded = decode_groups(&input[..whole])?;
        self.request_carry = input[whole..].to_vec();
        if end_of_stream && !self.request_carry.is_empty() {
            return Err(GatewayError::GrpcMalformed(
                "the gRPC-Web text body ends inside a base64 group",
            ));
        }
        *body = Some(Bytes::from(decoded));
        Ok(())
    }

    /// Encodes a text-form response chunk (binary passes as it is).
    pub(super) fn on_response_chunk(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if !self.text {
            return;
        }
        let mut input = std::mem::take(&mut self.response_carry);
        if let Some(chunk) = body.as_deref() {
            input.extend_from_slice(chunk);
        }
        let whole = if end_of_stream {
            input.len()
        } else {
            input.len() / 3 * 3
        };
        self.response_carry = input[whole..].to_vec();
        *body = Some(Bytes::from(STANDARD.encode(&input[..whole])));
    }

    /// The answer's trailers as the body's last frame (base64 in the text form, with what
    /// was left of the body before it).
    pub(super) fn trailer_frame(&mut self, trailers: &http::HeaderMap) -> Bytes {
        let mut block = BytesMut::new();
        for (name, value) in trailers {
            block.put_slice(name.as_str().as_bytes());
            block.put_slice(b":");
            block.put_slice(value.as_bytes());
            block.put_slice(b"\r\n");
        }
        let mut frame = BytesMut::with_capacity(5 + block.len());
        frame.put_u8(TRAILER_FRAME);
        // A header block is far below 4 GiB.
        frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
        frame.put_slice(&block);
        let mut out = Some(frame.freeze());
        self.on_response_chunk(&mut out, true);
        out.unwrap_or_default()
    }
}

/// Decodes whole 4-character groups; a group with padding ends one base64 run and another
/// may follow (clients encode each message on its own).
fn decode_groups(input: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let bad = |_| GatewayError::GrpcMalformed("the gRPC-Web text body is not base64");
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut start = 0;
    for (i, group) in input.chunks(4).enumerate() {
        let end = (i + 1) * 4;
        if group.contains(&b'=') || end == input.len() {
            STANDARD
                .decode_vec(&input[start..end], &mut out)
                .map_err(bad)?;
            start = end;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(bridge: &mut WebBridge, chunks: &[&[u8]]) -> Result<Vec<u8>, GatewayError> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(c));
            bridge.on_request_chunk(&mut body, i + 1 == chunks.len())?;
            out.extend_from_slice(&body.unwrap());
        }
        Ok(out)
    }

    #[test]
    fn text_requests_decode_across_chunks_and_padded_runs() {
        let one = STANDARD.encode([0, 0, 0, 0, 1, 42]);
        let two = STANDARD.encode([0, 0, 0, 0, 2, 7, 9]);
        let whole = format!("{one}{two}");
        for cut in 0..whole.len() {
            let mut b = WebBridge::new(true);
            let (a, z) = whole.as_bytes().split_at(cut);
            assert_eq!(
                feed(&mut b, &[a, z]).unwrap(),
                [0, 0, 0, 0, 1, 42, 0, 0, 0, 0, 2, 7, 9]
            );
        }
        let mut b = WebBridge::new(true);
        assert!(feed(&mut b, &[b"AAAA", b"AA"]).is_err());
        let mut b = WebBridge::new(true);
        assert!(feed(&mut b, &[b"AA*A"]).is_err());
    }

    #[test]
    fn text_answers_encode_as_one_base64_stream() {
        let mut b = WebBridge::new(true);
        let mut out = String::new();
        for chunk in [&[0u8, 0, 0, 0][..], &[2, 8, 1]] {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            b.on_response_chunk(&mut body, false);
            out.push_str(std::str::from_utf8(&body.unwrap()).unwrap());
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        out.push_str(std::str::from_utf8(&b.trailer_frame(&trailers)).unwrap());
        let decoded = STANDARD.decode(out).unwrap();
        assert_eq!(&decoded[..7], &[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(&decoded[7..12], &[0x80, 0, 0, 0, 15]);
        assert_eq!(&decoded[12..], b"grpc-status:0\r\n");
    }

    #[test]
    fn binary_passes_and_frames_trailers() {
        let mut b = WebBridge::new(false);
        let mut body = Some(Bytes::from_static(b"\0\0\0\0\x01x"));
        b.on_request_chunk(&mut body, true).unwrap();
        assert_eq!(body.unwrap(), &b"\0\0\0\0\x01x"[..]);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        trailers.insert("grpc-message", "nope".parse().unwrap());
        let frame = b.trailer_frame(&trailers);
        assert_eq!(frame[0], 0x80);
        assert_eq!(&frame[5..], b"grpc-status:5\r\ngrpc-message:nope\r\n");
    }
}
