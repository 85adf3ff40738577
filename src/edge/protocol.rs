//! Request rules of RFC 9110/9112 the gateway enforces as a server and as an HTTP-to-HTTP
//! gateway, before routing (docs/conformance.md lists each with its test).

use crate::errors::GatewayError;
use crate::invalid::Invalid;
use http::{HeaderValue, Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

/// `via:` (top level): the `Via` entry added to every request sent upstream. RFC 9110 §7.6.3
/// requires one of an HTTP-to-HTTP gateway; it lets an upstream (or the next proxy) see the
/// hop and refuse loops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViaConfig {
    /// Off only when an upstream mishandles `Via` (some caches vary on it, some proxies
    /// refuse a request that already has one); say why in a comment where you turn it off.
    pub enabled: bool,
    /// The name the gateway gives itself (a token: no spaces).
    pub pseudonym: String,
}

impl Default for ViaConfig {
    fn default() -> Self {
        ViaConfig {
            enabled: true,
            pseudonym: "apigateway".into(),
        }
    }
}

/// The `Via` values, made once per protocol version the gateway receives.
#[derive(Debug, Clone)]
pub struct Via {
    http10: HeaderValue,
    http11: HeaderValue,
    http2: HeaderValue,
}

impl Via {
    /// `None` when turned off; a pseudonym that is not a token is an error at `key.pseudonym`.
    pub fn compile(cfg: &ViaConfig, key: &str) -> Result<Option<Via>, Invalid> {
        if !cfg.enabled {
            return Ok(None);
        }
        let token = !cfg.pseudonym.is_empty()
            && cfg
                .pseudonym
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Invalid::new(
                format!("{key}.pseudonym"),
                format!(
                    "{:?} is not a token (letters, digits, - . _ and the like)",
                    cfg.pseudonym
                ),
            ));
        }
        let value = |v: &str| HeaderValue::from_str(&format!("{v} {}", cfg.pseudonym));
        Ok(Some(Via {
            http10: value("1.0").expect("a token is a valid header value"),
            http11: value("1.1").expect("a token is a valid header value"),
            http2: value("2").expect("a token is a valid header value"),
        }))
    }

    /// The entry for a request received with `version`.
    pub fn value(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.http10,
            Version::HTTP_11 => &self.http11,
            _ => &self.http2,
        }
    }
}

/// The methods a `TRACE` refusal and the gateway's own `OPTIONS` answers list.
pub const ALLOW_ALL: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// What the protocol rules make of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Route and forward it.
    Forward,
    /// The gateway answers it as the final recipient: `OPTIONS *`, or `OPTIONS` with
    /// `Max-Forwards: 0` (RFC 9110 §7.6.2, §9.3.7): 200 with `Allow`.
    AnswerOptions,
}

/// Checks what RFC 9112 §3.2 and RFC 9110 require of every request: a `Host` on HTTP/1.1
/// (400), `TRACE` refused (405: it would echo credentials back, the cross-site
/// tracing attack), an `Expect` other than `100-continue` refused (417).
pub fn check_request(req: &RequestHeader) -> Result<Protocol, GatewayError> {
    // (More than one `Host` never gets here: Pingora's parser refuses it.)
    if req.version == Version::HTTP_11
        && !req.headers.contains_key(http::header::HOST)
        && req.uri.authority().is_none()
    {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if req.method == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed {
            allow: ALLOW_ALL.split(", ").map(str::to_string).collect(),
        });
    }
    if let Some(expect) = req.headers.get(http::header::EXPECT)
        && !expect
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    {
        return Err(GatewayError::ExpectationFailed);
    }
    if req.method == Method::OPTIONS && (req.uri.path() == "*" || max_forwards(req) == Some(0)) {
        return Ok(Protocol::AnswerOptions);
    }
    Ok(Protocol::Forward)
}

/// The `Max-Forwards` value, when it is a number.
fn max_forwards(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `Max-Forwards` to send upstream: one less than received, on `OPTIONS` (RFC 9110
/// §7.6.2; `TRACE` is refused and other methods ignore the field).
pub fn forwarded_max_forwards(req: &RequestHeader) -> Option<HeaderValue> {
    if req.method != Method::OPTIONS {
        return None;
    }
    max_forwards(req).map(|n| HeaderValue::from(n.saturating_sub(1)))
}

/// Whether the request line of an HTTP/1 head names a major version other than 1
/// (`HTTP/2.0`, `HTTP/3.1`): RFC 9110 §15.6.6 answers those 505, where Pingora's parser says
/// only 400. Looks at the first line only.
pub fn unsupported_version(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(head);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(version) = line.rsplit(|b| *b == b' ').next() else {
        return false;
    };
    match version.strip_prefix(b"HTTP/") {
        Some([major, b'.', _minor]) => major.is_ascii_digit() && *major != b'1',
        Some([major]) => major.is_ascii_digit() && *major != b'1',
        _ => false,
    }
}

/// An interim answer (1xx other than 101 Switching Protocols, which ends the HTTP exchange
/// itself). Pingora relays it to the client as the upstream sent it (RFC 9110 §15.2); the
/// response stages belong to the final answer that follows and skip it.
pub fn is_interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Whether interim (1xx) answers must be held back from this client: RFC 9110 §15.2 forbids
/// sending them to an HTTP/1.0 client, which would take the first one for the final answer.
pub fn holds_interim_answers(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_10 || req.version == Version::HTTP_09
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;

    fn with_version(mut req: RequestHeader, v: Version) -> RequestHeader {
        req.set_version(v);
        req
    }

    #[test]
    fn host_trace_and_expect_rules() {
        let check = |req: &RequestHeader| check_request(req).map_err(|e| e.status());
        assert_eq!(check(&request("GET", "/", &[])), Err(400));
        assert_eq!(
            check(&request("GET", "/", &[("host", "a")])),
            Ok(Protocol::Forward)
        );
        let old = with_version(request("GET", "/", &[]), Version::HTTP_10);
        assert_eq!(check(&old), Ok(Protocol::Forward));
        assert_eq!(check(&request("TRACE", "/", &[("host", "a")])), Err(405));
        let expect = |v| request("POST", "/", &[("host", "a"), ("expect", v)]);
        assert_eq!(check(&expect("100-Continue")), Ok(Protocol::Forward));
        assert_eq!(check(&expect("something")), Err(417));
        let options = |mf| request("OPTIONS", "/", &[("host", "a"), ("max-forwards", mf)]);
        assert_eq!(check(&options("0")), Ok(Protocol::AnswerOptions));
        assert_eq!(check(&options("3")), Ok(Protocol::Forward));
        assert_eq!(
            forwarded_max_forwards(&options("3")),
            Some(HeaderValue::from(2u64))
        );
    }

    #[test]
    fn interim_answers_are_1xx_but_101_and_held_from_http10() {
        let answer = |code| ResponseHeader::build(code, None).unwrap();
        assert!(is_interim(&answer(103)));
        assert!(is_interim(&answer(100)));
        assert!(!is_interim(&answer(101)));
        assert!(!is_interim(&answer(200)));
        let old = with_version(request("GET", "/", &[]), Version::HTTP_10);
        assert!(holds_interim_answers(&old));
        assert!(!holds_interim_answers(&request("GET", "/", &[])));
    }

    #[test]
    fn only_major_version_one_is_served_on_http1() {
        assert!(unsupported_version(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"));
        assert!(unsupported_version(b"GET / HTTP/3.1\r\n\r\n"));
        assert!(!unsupported_version(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!unsupported_version(b"GET / HTTP/1.0\n\n"));
        assert!(!unsupported_version(b"garbage\r\n\r\n"));
    }
}
