//! W3C Trace Context (`traceparent`, `tracestate`): strict parsing of what a client sends and
//! the header values the gateway sends on.
//!
//! Hand-written: the format is one fixed-width line, and the `opentelemetry` propagator would
//! bring its whole context machinery to every request for what is a 55-byte check.

use http::HeaderValue;

/// A trace id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// The parent a client's `traceparent` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// `tracestate` longer than this is dropped (W3C: 512 characters is what must be kept).
pub const MAX_TRACESTATE: usize = 512;
/// ... and so is one with more list members than this.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Parses `traceparent`. Version `00` must be exactly 55 characters; a later version (not
/// `ff`) may carry more after a `-`, of which only the first four fields are read. Anything
/// else, including all-zero ids and uppercase hex, is no parent: the gateway starts a trace.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version = hex_bytes::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&value[3..35])?;
    let span_id = hex_bytes::<8>(&value[36..52])?;
    let flags = hex_bytes::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Lowercase hex only, as the spec requires.
fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N || text.iter().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Joins a request's `tracestate` lines, or `None` when they break its limits (too long, too
/// many members, or not visible ASCII): an oversized state is dropped, not truncated.
pub fn tracestate<'a>(lines: impl Iterator<Item = &'a HeaderValue>) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for line in lines {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(line.as_bytes());
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    let members = joined
        .split(|&b| b == b',')
        .filter(|m| !m.trim_ascii().is_empty());
    if joined.is_empty() || members.count() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    if joined.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// `00-<trace>-<span>-<flags>`, the value sent upstream and (optionally) to the client.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    lower_hex(trace_id, &mut out[3..35]);
    out[35] = b'-';
    lower_hex(span_id, &mut out[36..52]);
    out[52] = b'-';
    out[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    let mut value =
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value");
    // Unique to each request: kept out of HPACK's dynamic table, as `edge::request_id` says.
    value.set_sensitive(true);
    value
}

/// Lowercase hex of `bytes` into `out` (twice as long). A table lookup per digit: this runs
/// for every request while tracing is on, and `hex::encode_to_slice` costs twice as much.
fn lower_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_read_and_written_back() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // A later version may append fields; only the first four are read.
        let future = GOOD.replacen("00-", "cc-", 1) + "-what-the-future-holds";
        assert_eq!(
            parse_traceparent(future.as_bytes()).unwrap().trace_id,
            p.trace_id
        );
    }

    #[test]
    fn malformed_parents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn tracestate_is_joined_within_its_limits() {
        let a = HeaderValue::from_static("congo=t61rcWkgMzE");
        let b = HeaderValue::from_static("rojo=00f067aa0ba902b7");
        assert_eq!(
            tracestate([&a, &b].into_iter()).unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        let long = HeaderValue::from_str(&"k=".repeat(300)).unwrap();
        assert_eq!(tracestate([&long].into_iter()), None);
        let many = HeaderValue::from_str(
            &(0..33)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .unwrap();
        assert_eq!(tracestate([&many].into_iter()), None);
        assert_eq!(tracestate(std::iter::empty()), None);
    }
}
