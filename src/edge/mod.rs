//! Edge hygiene applied before routing: path normalization, host extraction, request ids,
//! request size limits; CORS, security headers and forwarding headers in the submodules.
//!
//! The router and every later check must see the same path the upstream receives, so the path
//! is normalized once here and the normalized form is what gets routed and forwarded.

mod client_ip;
pub mod cors;
pub mod headers;
mod inbound;
pub mod ip_access;
pub mod protocol;

pub use client_ip::ClientIpResolver;
pub use inbound::{BodyLimit, Inbound};

use crate::errors::GatewayError;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::borrow::Cow;

/// The `limits:` section: request sizes refused with nginx-like statuses before any work.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SizeLimits {
    /// Longest request target (path and query) in bytes: 414 above.
    pub max_uri_bytes: usize,
    /// Total bytes of header names and values: 431 above.
    pub max_header_bytes: usize,
    /// Most header fields: 431 above (Pingora itself refuses more than 256 with 400).
    pub max_headers: usize,
    /// Largest request body; routes may override with `max_body_bytes`. 413 above, from
    /// `Content-Length` before reading, or while streaming a chunked body.
    pub max_body_bytes: u64,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

impl SizeLimits {
    /// Checks the request line and header block.
    pub fn check_head(&self, req: &RequestHeader) -> Result<(), GatewayError> {
        if req.raw_path().len() > self.max_uri_bytes {
            return Err(GatewayError::UriTooLong);
        }
        if req.headers.len() > self.max_headers {
            return Err(GatewayError::HeadersTooLarge);
        }
        let bytes: usize = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if bytes > self.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        Ok(())
    }
}

/// Whether the request asks to switch to WebSocket: `Upgrade: websocket` (any case, possibly
/// among other protocols) made an upgrade by `Connection: upgrade` (RFC 9110 §7.8). A bare
/// `Upgrade` header is only a hop-by-hop header, stripped like the others.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let has_token = |name: http::header::HeaderName, token: &str| {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case(token))
    };
    has_token(http::header::UPGRADE, "websocket") && has_token(http::header::CONNECTION, "upgrade")
}

/// Refuses every request whose body end two HTTP parsers could disagree on (request
/// smuggling): `Content-Length` that is not `1*DIGIT` or several that differ (Pingora reads
/// it as a signed integer, so `+5` and `-0` would pass), `Transfer-Encoding` together with
/// `Content-Length` (RFC 9112 §6.3 lets a server reject it; Pingora would let chunked win),
/// any coding but a single `chunked`, and `Transfer-Encoding` in an HTTP/1.0 request (RFC
/// 9112 §6.1: faulty framing).
///
/// Pingora already drops `Content-Length` when `Transfer-Encoding` is present (and closes the
/// connection after the answer), so `raw_head` gives the request head as received, read only
/// when a `Transfer-Encoding` header is present.
pub fn check_framing(
    req: &RequestHeader,
    raw_head: impl FnOnce() -> Option<bytes::Bytes>,
) -> Result<(), GatewayError> {
    let invalid = |reason| Err(GatewayError::InvalidFraming(reason));
    let mut codings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if req.version < http::Version::HTTP_11 {
            return invalid("Transfer-Encoding in an HTTP/1.0 request");
        }
        if req.headers.contains_key(http::header::CONTENT_LENGTH)
            || raw_head().is_some_and(|head| declares_content_length(&head))
        {
            return invalid("both Content-Length and Transfer-Encoding");
        }
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return invalid("Transfer-Encoding other than a single chunked");
        }
    }
    check_content_lengths(&req.headers).map_err(GatewayError::InvalidFraming)
}

/// Every `Content-Length` (header lines and comma-separated values) is plain digits and they
/// all agree (RFC 9112 §6.3: anything else makes the message length unknowable).
fn check_content_lengths(headers: &http::HeaderMap) -> Result<(), &'static str> {
    let mut first: Option<&[u8]> = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            match first {
                Some(f) if f != digits => return Err("conflicting Content-Length values"),
                _ => first = Some(digits),
            }
        }
    }
    Ok(())
}

/// Checks an upstream response's framing before it is relayed: conflicting `Content-Length`s,
/// or `Content-Length` beside `Transfer-Encoding`, mean the upstream and the gateway may
/// disagree on where the body ends — the next response on that connection could be forged.
/// Pingora relays such responses as they are; the gateway answers 502 and drops the
/// connection instead.
pub fn check_response_framing(resp: &pingora::http::ResponseHeader) -> Result<(), &'static str> {
    use pingora::protocols::http::v1::client::ContentLengthDropped;
    // Pingora's HTTP/1 client drops the `Content-Length` of such an answer before any hook
    // runs; our patch of it (vendor/pingora-core) leaves this mark instead of nothing.
    if (resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        && resp.headers.contains_key(http::header::CONTENT_LENGTH))
        || resp.extensions.get::<ContentLengthDropped>().is_some()
    {
        return Err("both Content-Length and Transfer-Encoding");
    }
    check_content_lengths(&resp.headers)
}

/// Whether a raw request head has a `Content-Length` header line.
fn declares_content_length(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// The `Content-Length` a request or response declares, if any and readable.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Checks a declared `Content-Length` against a body limit.
pub fn check_content_length(req: &RequestHeader, max: u64) -> Result<(), GatewayError> {
    match declared_length(&req.headers) {
        Some(n) if n > max => Err(GatewayError::PayloadTooLarge),
        _ => Ok(()),
    }
}

/// A normalized request path: dot segments resolved and empty segments dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// The normalized path, always starting with `/`; the request's own text when it was
    /// already normal (most are), so nothing is copied.
    pub path: Cow<'a, str>,
    /// Whether the original path ended with `/` (after at least one segment).
    pub trailing_slash: bool,
}

impl NormalizedPath<'_> {
    /// The path's segments, without empty ones.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Calls `f` with the path's segments, kept on the stack for paths of up to 16 segments
    /// (routing runs once per request; a heap list each time is measurable).
    pub fn with_segments<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let mut stack = [""; 16];
        let mut n = 0;
        for seg in self.path.split('/').filter(|s| !s.is_empty()) {
            if n == stack.len() {
                return f(&self.segments());
            }
            stack[n] = seg;
            n += 1;
        }
        f(&stack[..n])
    }
}

/// Normalizes a request path (RFC 3986 §6.2.2): percent-encoded unreserved characters are
/// decoded (so `%2e` is a dot and `%61` an `a`), other escapes are kept with uppercase hex,
/// dot segments are resolved and repeated slashes merged (nginx `merge_slashes`).
///
/// Refused with 400, because upstreams disagree on what they mean and a router that guessed
/// differently would authorize one path and forward another: an encoded slash, backslash or NUL
/// (`%2F`, `%5C`, `%00`), a raw backslash, a `;` (matrix parameters, which servlet containers
/// strip before routing), a malformed escape, and a path climbing above `/`.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath<'_>, &'static str> {
    if !raw.starts_with('/') {
        return Err("path must start with /");
    }
    if already_normal(raw) {
        return Ok(NormalizedPath {
            trailing_slash: raw.len() > 1 && raw.ends_with('/'),
            path: Cow::Borrowed(raw),
        });
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("path escapes the root");
                }
            }
            _ => out.push(seg),
        }
    }
    let last = decoded.rsplit('/').next().unwrap_or("");
    let trailing_slash = !out.is_empty() && matches!(last, "" | "." | "..");
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(NormalizedPath {
        path: Cow::Owned(path),
        trailing_slash,
    })
}

/// Whether `raw` (starting with `/`) is its own normal form: no escapes, no characters that
/// are refused, no empty segment but a final one, no dot segment.
fn already_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes
        .iter()
        .any(|b| matches!(b, b'%' | b'\\' | b';') || b.is_ascii_control() || *b >= 0x80)
    {
        return false;
    }
    let inner = &raw[1..];
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if raw == "/" {
        return true;
    }
    inner
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Decodes `%XX` escapes of unreserved characters and refuses the ambiguous ones.
fn decode_unreserved(raw: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let hi = chars.next().and_then(|c| c.to_digit(16));
                let lo = chars.next().and_then(|c| c.to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err("malformed percent-encoding in path");
                };
                match (hi * 16 + lo) as u8 {
                    b'/' | b'\\' | 0 => return Err("encoded slash, backslash or NUL in path"),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(b as char),
                    b => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(HEX[(b >> 4) as usize] as char);
                        out.push(HEX[(b & 15) as usize] as char);
                    }
                }
            }
            '\\' => return Err("backslash in path"),
            ';' => return Err("`;` (matrix parameters) in path"),
            c if c.is_control() => return Err("control character in path"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The first value of cookie `name` in the request's `Cookie` headers (RFC 6265 pairs, quotes
/// around the value dropped): the token source and the traffic split's conditions read it.
pub fn request_cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The query without any `name=…` (or bare `name`) parameter: credentials carried in the query
/// (a token, an API key) are not forwarded. Borrowed when there is none to remove.
pub fn without_query_param<'a>(query: Cow<'a, str>, name: &str) -> Cow<'a, str> {
    let is_it = |pair: &&str| pair.split('=').next() == Some(name);
    if !query.split('&').any(|p| is_it(&p)) {
        return query;
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !is_it(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// The request's host, lowercase, without port or trailing dot; empty if absent.
/// `uri_host` is the authority of an absolute-form target. Borrowed unless it had to be
/// lowercased.
pub fn request_host<'a>(host_header: Option<&'a [u8]>, uri_host: Option<&'a str>) -> Cow<'a, str> {
    // An absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2); Pingora forwards
    // that authority as `Host`, so routing on it keeps routing and forwarding consistent.
    let raw = uri_host
        .or_else(|| host_header.and_then(|h| std::str::from_utf8(h).ok()))
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Keeps a client's `X-Request-Id` when it is well formed (1–128 of `[A-Za-z0-9._:-]`), so
/// traces can span the gateway; otherwise generates a fresh UUID. A header value, since it is
/// sent upstream and back to the client: the incoming one is shared, not copied.
pub fn request_id(incoming: Option<&http::HeaderValue>) -> http::HeaderValue {
    let mut id = match incoming {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b)) =>
        {
            v.clone()
        }
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            crate::header_edit::shared_value(buf).expect("a UUID is a valid header value")
        }
    };
    // A value unique to each request: HPACK would add it to both HTTP/2 connections' dynamic
    // tables, evicting the reusable entries (`:path`, `x-forwarded-for`…) and paying for the
    // eviction on every request (~5k instructions a gRPC call). Sensitive values are sent as
    // never-indexed literals; HTTP/1.1 ignores the flag.
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).unwrap();
            }
            r
        };
        assert!(is_websocket_upgrade(&req(&[
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "WebSocket")
        ])));
        assert!(is_websocket_upgrade(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c, websocket")
        ])));
        assert!(!is_websocket_upgrade(&req(&[("Upgrade", "websocket")])));
        assert!(!is_websocket_upgrade(&req(&[
            ("Connection", "upgrade"),
            ("Upgrade", "h2c")
        ])));
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        let n = |p| normalize_path(p).map(|n| n.path);
        assert_eq!(n("/"), Ok("/".into()));
        assert_eq!(n("//api///users"), Ok("/api/users".into()));
        assert_eq!(n("/api/./users/../orders"), Ok("/api/orders".into()));
        assert_eq!(n("/api/%2e%2E/admin"), Ok("/admin".into()));
        assert_eq!(n("/api/.%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/api/users/"), Ok("/api/users/".into()));
        assert_eq!(n("/api/users/."), Ok("/api/users/".into()));
        assert_eq!(n("/.."), Err("path escapes the root"));
        assert_eq!(n("/a/../../etc"), Err("path escapes the root"));
        assert_eq!(n("/a..b/..."), Ok("/a..b/...".into()));
        assert!(n("relative").is_err());
        assert_eq!(n("/%61pi/x%2dy%41"), Ok("/api/x-yA".into()));
        assert_eq!(n("/a%20b/%c3%a9"), Ok("/a%20b/%C3%A9".into()));
        assert_eq!(n("/a/%252e%252e/b"), Ok("/a/%252e%252e/b".into()));
        // Already normal paths are borrowed, not copied; the others are rebuilt.
        for normal in ["/", "/api/users", "/api/users/", "/a..b/..."] {
            let p = normalize_path(normal).unwrap();
            assert!(matches!(p.path, Cow::Borrowed(_)), "{normal}");
        }
        for rebuilt in ["//a", "/a//b", "/a/./b", "/a/b/..", "/a%41", "/é"] {
            let p = normalize_path(rebuilt).unwrap();
            assert!(matches!(p.path, Cow::Owned(_)), "{rebuilt}");
        }
        let deep = format!("/{}", vec!["s"; 20].join("/"));
        let p = normalize_path(&deep).unwrap();
        assert_eq!(p.with_segments(|s| s.len()), 20);
        let joined = normalize_path("/a/b/")
            .unwrap()
            .with_segments(|s| s.join(","));
        assert_eq!(joined, "a,b");
        for bad in [
            "/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b", "/a%00", "/a;x", "/a%zz", "/a%4",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_length_must_be_plain_equal_digits() {
        let req = |values: &[&str]| {
            let mut r = RequestHeader::build("POST", b"/", None).unwrap();
            for v in values {
                r.append_header("content-length", *v).unwrap();
            }
            check_framing(&r, || None)
        };
        assert!(req(&["5"]).is_ok());
        assert!(req(&["5, 5"]).is_ok());
        assert!(req(&["5", "5"]).is_ok());
        assert!(req(&[]).is_ok());
        for bad in [
            &["+5"][..],
            &["-0"],
            &["5,6"],
            &["0x5"],
            &["5_0"],
            &[""],
            &["5", "6"],
        ] {
            assert!(
                matches!(req(bad), Err(GatewayError::InvalidFraming(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn transfer_encoding_must_be_a_single_chunked_without_length() {
        let req = |version: http::Version, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("POST", b"/", None).unwrap();
            r.set_version(version);
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).unwrap();
            }
            check_framing(&r, || None)
        };
        let v11 = http::Version::HTTP_11;
        assert!(req(v11, &[("transfer-encoding", "chunked")]).is_ok());
        assert!(req(v11, &[("transfer-encoding", "Chunked")]).is_ok());
        for (version, bad) in [
            (
                v11,
                &[("transfer-encoding", "chunked"), ("content-length", "5")][..],
            ),
            (v11, &[("transfer-encoding", "xchunked")]),
            (v11, &[("transfer-encoding", "gzip, chunked")]),
            (
                v11,
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
            ),
            (http::Version::HTTP_10, &[("transfer-encoding", "chunked")]),
        ] {
            assert!(
                matches!(req(version, bad), Err(GatewayError::InvalidFraming(_))),
                "{bad:?}"
            );
        }
        // The length Pingora removed is still found in the raw head.
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.append_header("transfer-encoding", "chunked").unwrap();
        let raw = bytes::Bytes::from_static(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(check_framing(&r, || Some(raw)).is_err());
    }

    #[test]
    fn host_strips_port_case_and_dot() {
        assert_eq!(
            request_host(Some(b"API.Example.com.:8080"), None),
            "api.example.com"
        );
        assert_eq!(request_host(Some(b"[::1]:8080"), None), "[::1]");
        assert_eq!(request_host(None, Some("h.test")), "h.test");
        assert_eq!(request_host(Some(b"b.test"), Some("a.test")), "a.test");
        assert_eq!(request_host(None, None), "");
    }

    #[test]
    fn request_id_kept_only_when_well_formed() {
        let value = |b: &[u8]| http::HeaderValue::from_bytes(b).unwrap();
        assert_eq!(request_id(Some(&value(b"abc-123"))), "abc-123");
        assert_ne!(request_id(Some(&value(b"bad id"))), "bad id");
        assert_eq!(request_id(Some(&value(&[b'a'; 129]))).len(), 36);
        let fresh = request_id(None);
        assert_eq!(fresh.len(), 36);
        assert!(uuid::Uuid::parse_str(fresh.to_str().unwrap()).is_ok());
        assert!(fresh.is_sensitive() && request_id(Some(&value(b"abc"))).is_sensitive());
    }
}
