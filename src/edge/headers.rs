//! Header hygiene at the edge: the security-header preset, hop-by-hop stripping on responses,
//! and the forwarding headers sent upstream.

use crate::de::OrderedMap;
use crate::invalid::Invalid;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
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
    hide: Vec<HeaderName>,
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
            hide: hide.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            hsts: hsts.map(|h| value(&h)).transpose()?,
        })
    }

    /// Removes the hidden upstream headers (`Server`, `X-Powered-By`).
    pub fn hide(&self, resp: &mut ResponseHeader) {
        for n in &self.hide {
            if resp.headers.contains_key(n) {
                resp.remove_header(n);
            }
        }
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

/// Strips hop-by-hop headers from an upstream response (RFC 9110 §7.6.1): the ones its
/// `Connection` header names, and the standard set. Pingora writes its own `Connection` and
/// framing headers downstream; everything else would otherwise be relayed.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    // A `101` accepted on a WebSocket route needs its `Upgrade` (which its `Connection` names)
    // to reach the client; the request policy only forwards WebSocket handshakes.
    let switching = resp.status == 101;
    let nominated: Vec<HeaderName> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !matches!(n.as_str(), "content-length" | "transfer-encoding"))
        .filter(|n| !(switching && *n == http::header::UPGRADE))
        .collect();
    for n in nominated {
        resp.remove_header(&n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authenticate",
    ] {
        if resp.headers.contains_key(n) {
            resp.remove_header(n);
        }
    }
    if !switching && resp.headers.contains_key(http::header::UPGRADE) {
        resp.remove_header(&http::header::UPGRADE);
    }
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

/// Sets `X-Forwarded-For/-Proto/-Host`, `X-Real-IP` and `Forwarded`. From an untrusted peer,
/// client-sent values are replaced; from a trusted proxy they are kept and the peer appended
/// to `X-Forwarded-For`. Headers some frameworks use to override the path are always removed.
pub fn forwarded_headers(up: &mut RequestHeader, hop: &Hop<'_>) -> pingora::Result<()> {
    for n in ["x-original-url", "x-rewrite-url"] {
        if up.headers.contains_key(n) {
            up.remove_header(n);
        }
    }
    if let Some(peer) = hop.peer {
        let prev = up
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .filter(|v| hop.peer_trusted && !v.trim().is_empty());
        match prev {
            Some(prev) => {
                let joined = format!("{prev}, {peer}");
                up.insert_header("x-forwarded-for", joined)?
            }
            None => up.insert_header("x-forwarded-for", peer.to_string())?,
        }
    }
    if let Some(ip) = hop.client_ip {
        up.insert_header("x-real-ip", ip.to_string())?;
    }
    if hop.peer_trusted {
        if !up.headers.contains_key("x-forwarded-proto") {
            up.insert_header("x-forwarded-proto", hop.proto)?;
        }
        if !up.headers.contains_key("x-forwarded-host")
            && let Some(h) = hop.host
        {
            up.insert_header("x-forwarded-host", h.clone())?;
        }
        return Ok(());
    }
    up.insert_header("x-forwarded-proto", hop.proto)?;
    match hop.host {
        Some(h) => up.insert_header("x-forwarded-host", h.clone())?,
        None => {
            up.remove_header("x-forwarded-host");
        }
    }
    if up.headers.contains_key("forwarded") {
        up.remove_header("forwarded");
    }
    Ok(())
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
}
