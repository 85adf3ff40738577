//! Header hygiene at the edge: the security-header preset, hop-by-hop stripping on responses,
//! and the forwarding headers sent upstream.

use crate::de::OrderedMap;
use crate::header_edit::{CustomName, HeaderEdit, Inline, shared_value};
use crate::header_set::HeaderSet;
use crate::invalid::Invalid;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use serde::Deserialize;
use std::net::IpAddr;

/// A `security_headers:` block (top level, or a route's, merged over the top-level one).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// `false` sends none of the preset (default true at top level; a route inherits).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Headers over the preset; `null` drops a preset header.
    #[serde(default)]
    pub headers: OrderedMap<Option<String>>,
    /// Upstream response headers removed (default `Server`, `X-Powered-By`).
    #[serde(default)]
    pub hide: Option<Vec<String>>,
    /// `Strict-Transport-Security` value, sent on TLS listeners only; `null` disables.
    #[serde(default)]
    pub strict_transport_security: Option<Option<String>>,
}

/// The helmet-like default.
const PRESET: [(&str, &str); 5] = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
];
const DEFAULT_HSTS: &str = "max-age=31536000; includeSubDomains";

/// A compiled security-header policy.
#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    /// Name, its spelling on the wire (kept as bytes so Pingora's case-preserving map takes
    /// it without re-rendering the name on every response), value.
    set: Vec<(HeaderName, Bytes, HeaderValue)>,
    hide: HeaderSet,
    hsts: Option<HeaderValue>,
}

impl SecurityHeaders {
    /// Compiles the top-level block merged with a route's (`route` may be `None`).
    pub fn compile(
        global: Option<&SecurityHeadersConfig>,
        route: Option<&SecurityHeadersConfig>,
        key: &str,
    ) -> Result<Self, Invalid> {
        let layers: Vec<&SecurityHeadersConfig> = global.into_iter().chain(route).collect();
        let enabled = layers.iter().rev().find_map(|l| l.enabled).unwrap_or(true);
        let hide = layers
            .iter()
            .rev()
            .find_map(|l| l.hide.clone())
            .unwrap_or_else(|| vec!["server".into(), "x-powered-by".into()]);
        let err = |r: String| Invalid::new(key, r);
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| err(format!("invalid header name {n:?}")))
        };
        let value = |v: &str| {
            HeaderValue::from_str(v).map_err(|_| err(format!("invalid header value {v:?}")))
        };
        let mut set: Vec<(HeaderName, Bytes, HeaderValue)> = Vec::new();
        let mut hsts = Some(DEFAULT_HSTS.to_string());
        if enabled {
            for (n, v) in PRESET {
                let lower = HeaderName::from_bytes(n.as_bytes()).expect("preset names are valid");
                set.push((
                    lower,
                    Bytes::from_static(n.as_bytes()),
                    HeaderValue::from_static(v),
                ));
            }
            for layer in &layers {
                for (spelled, v) in layer.headers.iter() {
                    let n = name(spelled)?;
                    set.retain(|(k, _, _)| *k != n);
                    if let Some(v) = v {
                        set.push((n, Bytes::from(spelled.clone()), value(v)?));
                    }
                }
                if let Some(h) = &layer.strict_transport_security {
                    hsts = h.clone();
                }
            }
        } else {
            hsts = None;
        }
        Ok(SecurityHeaders {
            set,
            hide: HeaderSet::new(
                hide.iter()
                    .map(|n| name(n))
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .map_err(|e| err(format!("hide: {e}")))?,
            hsts: hsts.map(|h| value(&h)).transpose()?,
        })
    }

    /// Removes the hidden upstream headers (`Server`, `X-Powered-By`).
    pub fn hide(&self, resp: &mut ResponseHeader) {
        self.hide.strip_response(resp);
    }

    /// Sets the policy's headers; HSTS only when the client connection is TLS.
    pub fn apply(&self, resp: &mut ResponseHeader, tls: bool) {
        for (_, spelled, v) in &self.set {
            let _ = resp.insert_header(spelled.clone(), v.clone());
        }
        if tls && let Some(h) = &self.hsts {
            let _ = resp.insert_header("strict-transport-security", h.clone());
        }
    }
}

/// Hop-by-hop response headers (RFC 9110 §7.6.1) and `Connection`, which nominates more.
static HOP_BY_HOP: Lazy<HeaderSet> = Lazy::new(|| {
    HeaderSet::new([
        http::header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        http::header::TE,
        http::header::TRAILER,
        http::header::PROXY_AUTHENTICATE,
        http::header::UPGRADE,
    ])
    .expect("seven names")
});
const HOP_CONNECTION: u64 = 1;
const HOP_UPGRADE: u64 = 1 << 6;

/// Strips hop-by-hop headers from an upstream response (RFC 9110 §7.6.1): the ones its
/// `Connection` header names, and the standard set. Pingora writes its own `Connection` and
/// framing headers downstream; everything else would otherwise be relayed.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    // A `101` accepted on a WebSocket route needs its `Upgrade` (which its `Connection` names)
    // to reach the client; the request policy only forwards WebSocket handshakes.
    let switching = resp.status == 101;
    let present = HOP_BY_HOP.present_in(&resp.headers);
    if present & HOP_CONNECTION != 0 {
        let nominated: Vec<HeaderName> = resp
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `close` is no header; `keep-alive` is in the standard set below.
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !matches!(n.as_str(), "content-length" | "transfer-encoding"))
            .filter(|n| !(switching && *n == http::header::UPGRADE))
            .collect();
        for n in nominated {
            resp.remove_header(&n);
        }
    }
    let mut remove = present & !HOP_CONNECTION;
    if switching {
        remove &= !HOP_UPGRADE;
    }
    HOP_BY_HOP.remove_from_response(resp, remove);
}

/// The client hop as the gateway saw it, for the forwarding headers.
pub struct Hop<'a> {
    /// The socket peer.
    pub peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its forwarding headers are kept and extended).
    pub peer_trusted: bool,
    /// The client address decided by `trusted_proxies`.
    pub client_ip: Option<IpAddr>,
    /// The host the client asked for.
    pub host: Option<&'a HeaderValue>,
    pub proto: &'static str,
}

// Prepared names: a `&str` name is parsed (and for these, copied) again on every use.
/// The request id, sent upstream and back to the client.
pub static X_REQUEST_ID: CustomName = CustomName::new("x-request-id");
/// The client and proxy chain, read from trusted proxies and sent upstream.
pub static X_FORWARDED_FOR: CustomName = CustomName::new("x-forwarded-for");
static X_ORIGINAL_URL: CustomName = CustomName::new("x-original-url");
static X_REWRITE_URL: CustomName = CustomName::new("x-rewrite-url");
static X_FORWARDED_PROTO: CustomName = CustomName::new("x-forwarded-proto");
static X_FORWARDED_HOST: CustomName = CustomName::new("x-forwarded-host");
static X_REAL_IP: CustomName = CustomName::new("x-real-ip");

/// The forwarding headers the gateway reads, replaces or removes; bits below index it.
static FORWARDING: Lazy<HeaderSet> = Lazy::new(|| {
    HeaderSet::new([
        X_ORIGINAL_URL.name().clone(),
        X_REWRITE_URL.name().clone(),
        http::header::FORWARDED,
        X_FORWARDED_FOR.name().clone(),
        X_FORWARDED_PROTO.name().clone(),
        X_FORWARDED_HOST.name().clone(),
    ])
    .expect("six names")
});
const PATH_OVERRIDES: u64 = 0b11;
const FORWARDED: u64 = 1 << 2;
const XFF: u64 = 1 << 3;
const XFP: u64 = 1 << 4;
const XFH: u64 = 1 << 5;

/// Sets `X-Forwarded-For/-Proto/-Host`, `X-Real-IP` and `Forwarded`. From an untrusted peer,
/// client-sent values are replaced; from a trusted proxy they are kept and the peer appended
/// to `X-Forwarded-For`. Headers some frameworks use to override the path are always removed.
pub fn forwarded_headers(up: &mut HeaderEdit<'_>, hop: &Hop<'_>) -> pingora::Result<()> {
    let present = FORWARDING.present_in(up.headers());
    FORWARDING.remove_from(up, present & PATH_OVERRIDES);
    let peer_value = hop.peer.map(ip_value);
    if let (Some(peer), Some(peer_value)) = (hop.peer, &peer_value) {
        let prev = (hop.peer_trusted && present & XFF != 0)
            .then(|| up.headers().get(X_FORWARDED_FOR.name()))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty());
        let value = match prev {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {peer}")).map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "x-forwarded-for", e)
            })?,
            None => peer_value.clone(),
        };
        up.insert_custom(&X_FORWARDED_FOR, value)?;
    }
    if let Some(ip) = hop.client_ip {
        // Usually the client is the peer itself: its value is already rendered.
        let value = match peer_value {
            Some(v) if hop.peer == Some(ip) => v,
            _ => ip_value(ip),
        };
        up.insert_custom(&X_REAL_IP, value)?;
    }
    let proto = HeaderValue::from_static(hop.proto);
    if hop.peer_trusted {
        if present & XFP == 0 {
            up.insert_custom(&X_FORWARDED_PROTO, proto)?;
        }
        if present & XFH == 0
            && let Some(h) = hop.host
        {
            up.insert_custom(&X_FORWARDED_HOST, h.clone())?;
        }
        return Ok(());
    }
    up.insert_custom(&X_FORWARDED_PROTO, proto)?;
    match hop.host {
        Some(h) => up.insert_custom(&X_FORWARDED_HOST, h.clone())?,
        None => FORWARDING.remove_from(up, present & XFH),
    }
    FORWARDING.remove_from(up, present & FORWARDED);
    Ok(())
}

/// An IPv4 address in dotted decimal, written into `buf` without `fmt` (which costs about a
/// thousand instructions per address).
pub fn ipv4_text(v4: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).expect("digits and dots are ASCII")
}

/// An IP address as a header value. Every request renders one or two, so IPv4 (nearly all of
/// them) is written digit by digit instead of through the formatting machinery.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let len = ipv4_text(v4, &mut buf).len();
            shared_value(Inline::new(buf, len)).expect("digits and dots are a valid value")
        }
        IpAddr::V6(_) => {
            HeaderValue::from_str(&ip.to_string()).expect("an IPv6 address is a valid value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(global: &str, route: Option<&str>) -> SecurityHeaders {
        let g: SecurityHeadersConfig = serde_yaml::from_str(global).unwrap();
        let r: Option<SecurityHeadersConfig> = route.map(|r| serde_yaml::from_str(r).unwrap());
        SecurityHeaders::compile(Some(&g), r.as_ref(), "security_headers").unwrap()
    }

    #[test]
    fn preset_overrides_and_route_merge() {
        let s = compile(
            "headers: {X-Frame-Options: null, Content-Security-Policy: \"frame-ancestors 'none'\"}",
            Some("headers: {Referrer-Policy: same-origin}"),
        );
        let mut resp = ResponseHeader::build(200, None).unwrap();
        s.apply(&mut resp, false);
        let h = &resp.headers;
        assert!(h.get("x-frame-options").is_none());
        assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
        assert_eq!(h["referrer-policy"], "same-origin");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.get("strict-transport-security").is_none());
        s.apply(&mut resp, true);
        assert_eq!(resp.headers["strict-transport-security"], DEFAULT_HSTS);
        let off = compile("{}", Some("enabled: false"));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        off.apply(&mut resp, true);
        assert!(resp.headers.is_empty());
    }

    #[test]
    fn hop_by_hop_response_headers_are_stripped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("connection", "keep-alive, x-internal"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ] {
            resp.append_header(n, v).unwrap();
        }
        strip_response_hop_by_hop(&mut resp);
        let names: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["connection", "x-kept"]);
    }

    #[test]
    fn ip_values_match_the_standard_formatting() {
        for ip in [
            "0.0.0.0",
            "10.200.3.45",
            "255.255.255.255",
            "1.20.100.9",
            "2001:db8::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed), ip);
        }
    }

    #[test]
    fn too_many_hidden_headers_are_a_config_error() {
        let names: Vec<String> = (0..70).map(|i| format!("x-h{i}")).collect();
        let cfg = SecurityHeadersConfig {
            hide: Some(names),
            ..Default::default()
        };
        let err = SecurityHeaders::compile(Some(&cfg), None, "security_headers")
            .err()
            .unwrap();
        assert_eq!(err.key, "security_headers");
        assert!(err.reason.contains("at most 64"), "{}", err.reason);
    }
}
