//! Writing a message's headers by names prepared once.

use http::{HeaderMap, HeaderName, HeaderValue, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

/// A message's headers, open for writes by prepared names.
///
/// Pingora's `insert_header` takes any spelling, so it renders and parses the name again on
/// every call, allocating for names outside the standard set (300 to 650 instructions and one
/// or two allocations a header). It gives no mutable access to its map because an HTTP/1
/// message records each name's case beside it. A message that records none (every HTTP/2
/// one) has nothing else to keep in step: its map is taken out and written directly.
pub enum HeaderEdit<'a> {
    /// A request that records header case: writes go through Pingora, which records it.
    CasedRequest(&'a mut RequestHeader),
    /// A response that records header case, likewise.
    CasedResponse(&'a mut ResponseHeader),
    /// A message's map, taken out of it while it is edited.
    Plain(&'a mut HeaderMap),
}

/// A header name outside the standard set, with its spelling for messages that record case.
/// Pingora records a `&HeaderName` in title case when it is a standard name and copies any
/// other one; a prepared spelling is recorded as it is.
pub struct CustomName {
    name: HeaderName,
    wire: bytes::Bytes,
}

impl CustomName {
    /// A lowercase name (checked at compile time when used in a `static`).
    pub const fn new(lower: &'static str) -> Self {
        CustomName {
            name: HeaderName::from_static(lower),
            wire: bytes::Bytes::from_static(lower.as_bytes()),
        }
    }

    /// The name, for lookups.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

/// Room for the headers the gateway adds to a request (up to nine by default: `Host`, `Via`,
/// the request id, the route, four forwarding headers, `TE`, more with an identity), so its
/// map grows once. Eight left a gRPC call's map one short, and it grew a second time.
const ADDED: usize = 12;

impl HeaderEdit<'_> {
    /// Runs `edit` over `req`'s headers. An HTTP/2 request without recorded case carries its
    /// target in the URI alone, so it survives the trip through its `http` parts.
    pub fn apply<R>(req: &mut RequestHeader, edit: impl FnOnce(&mut HeaderEdit<'_>) -> R) -> R {
        if req.has_case() || req.version != Version::HTTP_2 {
            return edit(&mut HeaderEdit::CasedRequest(req));
        }
        let end_stream = req.send_end_stream();
        let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
        parts.headers.reserve(ADDED);
        let out = edit(&mut HeaderEdit::Plain(&mut parts.headers));
        *req = RequestHeader::from(parts);
        if let Some(end) = end_stream {
            req.set_send_end_stream(end);
        }
        out
    }

    /// Runs `edit` over `resp`'s headers. A response without recorded case or a reason
    /// phrase of its own survives the trip through its `http` parts.
    pub fn apply_response<R>(
        resp: &mut ResponseHeader,
        edit: impl FnOnce(&mut HeaderEdit<'_>) -> R,
    ) -> R {
        if resp.has_case() || resp.get_reason_phrase() != resp.status.canonical_reason() {
            return edit(&mut HeaderEdit::CasedResponse(resp));
        }
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
        let out = edit(&mut HeaderEdit::Plain(&mut parts.headers));
        *resp = ResponseHeader::from(parts);
        out
    }

    /// The headers as they stand.
    pub fn headers(&self) -> &HeaderMap {
        match self {
            HeaderEdit::CasedRequest(req) => &req.headers,
            HeaderEdit::CasedResponse(resp) => &resp.headers,
            HeaderEdit::Plain(map) => map,
        }
    }

    /// Sets `name` to `value`, replacing what it had.
    pub fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        match self {
            HeaderEdit::CasedRequest(req) => req.insert_header(name, value),
            HeaderEdit::CasedResponse(resp) => resp.insert_header(name, value),
            HeaderEdit::Plain(map) => map.try_insert(name.clone(), value).map(drop).map_err(full),
        }
    }

    /// Sets the custom header `name` to `value`, replacing what it had.
    pub fn insert_custom(&mut self, name: &CustomName, value: HeaderValue) -> Result<()> {
        match self {
            HeaderEdit::CasedRequest(req) => req.insert_header(name.wire.clone(), value),
            HeaderEdit::CasedResponse(resp) => resp.insert_header(name.wire.clone(), value),
            HeaderEdit::Plain(_) => self.insert(&name.name, value),
        }
    }

    /// Adds `value` under `name`, keeping what it had.
    pub fn append(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        match self {
            HeaderEdit::CasedRequest(req) => req.append_header(name, value).map(drop),
            HeaderEdit::CasedResponse(resp) => resp.append_header(name, value).map(drop),
            HeaderEdit::Plain(map) => map.try_append(name.clone(), value).map(drop).map_err(full),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        match self {
            HeaderEdit::CasedRequest(req) => drop(req.remove_header(name)),
            HeaderEdit::CasedResponse(resp) => drop(resp.remove_header(name)),
            HeaderEdit::Plain(map) => drop(map.remove(name)),
        }
    }
}

/// A map at `http`'s size limit, as Pingora reports it for its own maps.
fn full(e: http::header::MaxSizeReached) -> Box<Error> {
    Error::because(ErrorType::InvalidHTTPHeader, "too many headers", e)
}

/// A header value for bytes rendered per request, held in one allocation that its clones
/// share. `HeaderValue::from_str` copies into a buffer of its own, which the value's first
/// clone (the upstream request and the response each take one) moves into a second, shared
/// allocation.
pub fn shared_value<T>(owner: T) -> Result<HeaderValue, http::header::InvalidHeaderValue>
where
    T: AsRef<[u8]> + Send + 'static,
{
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(owner))
}

/// Up to `N` bytes inline, for [`shared_value`]: a request id, an address, a short host.
pub struct Inline<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Inline<N> {
    /// The first `len` bytes of `buf`.
    pub fn new(buf: [u8; N], len: usize) -> Self {
        Inline {
            buf,
            len: len.min(N),
        }
    }

    /// A copy of `bytes`, if they fit.
    pub fn copy(bytes: &[u8]) -> Option<Self> {
        let mut buf = [0u8; N];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Inline::new(buf, bytes.len()))
    }
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static X_ONE: CustomName = CustomName::new("x-one");

    fn h2_request() -> RequestHeader {
        let mut req = RequestHeader::build_no_case("POST", b"/svc/Call?q=1", None).unwrap();
        req.set_version(Version::HTTP_2);
        req.insert_header("x-kept", "k").unwrap();
        req.insert_header("x-gone", "g").unwrap();
        req.set_send_end_stream(false);
        req
    }

    fn edit_all(req: &mut RequestHeader) -> bool {
        HeaderEdit::apply(req, |h| {
            h.insert_custom(&X_ONE, HeaderValue::from_static("1"))
                .unwrap();
            h.insert(&http::header::HOST, HeaderValue::from_static("a"))
                .unwrap();
            h.append(&http::header::VIA, HeaderValue::from_static("v1"))
                .unwrap();
            h.append(&http::header::VIA, HeaderValue::from_static("v2"))
                .unwrap();
            h.remove(&HeaderName::from_static("x-gone"));
            matches!(h, HeaderEdit::Plain(_)) && h.headers().contains_key("x-kept")
        })
    }

    #[test]
    fn an_http2_request_is_edited_on_its_map_and_keeps_its_target_and_end_stream() {
        let mut req = h2_request();
        assert!(edit_all(&mut req));
        assert_eq!(req.uri, "/svc/Call?q=1");
        assert_eq!(req.method, "POST");
        assert_eq!(req.version, Version::HTTP_2);
        assert_eq!(req.send_end_stream(), Some(false));
        assert!(!req.has_case());
        let h = &req.headers;
        assert_eq!(h["x-one"], "1");
        assert_eq!(h["host"], "a");
        assert_eq!(h["x-kept"], "k");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["v1", "v2"]);
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn shared_values_check_their_bytes_and_share_them() {
        let v = shared_value(Inline::<8>::copy(b"10.0.0.1").unwrap()).unwrap();
        assert_eq!(v, "10.0.0.1");
        assert_eq!(v.clone().as_bytes().as_ptr(), v.as_bytes().as_ptr());
        assert!(Inline::<4>::copy(b"12345").is_none());
        assert!(shared_value(Inline::<4>::copy(b"a\nb").unwrap()).is_err());
        assert_eq!(shared_value(Inline::new(*b"abcdef", 3)).unwrap(), "abc");
    }

    #[test]
    fn a_cased_request_records_the_names_it_is_given() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Gone", "g").unwrap();
        req.insert_header("X-Kept", "k").unwrap();
        assert!(!edit_all(&mut req));
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("X-Kept: k"), "{wire}");
        assert!(wire.contains("Host: a"), "{wire}");
        assert!(wire.contains("x-one: 1"), "{wire}");
        assert!(!wire.contains("X-Gone"), "{wire}");
    }
}
