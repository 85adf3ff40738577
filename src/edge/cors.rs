//! CORS: preflight answers at the gateway and `Access-Control-*` headers on actual responses.
//!
//! Preflights are answered before authentication because browsers never send credentials on
//! them; the route's policy decides, and an origin it does not allow simply gets no
//! `Access-Control-Allow-Origin`, which makes the browser refuse.

use crate::de::de_duration;
use crate::invalid::Invalid;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use serde::Deserialize;
use std::time::Duration;

/// A `cors:` block (top level, or a route's, which replaces the top-level one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `false` turns CORS off (e.g. for one route under a global policy).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Exact origins (`https://app.example.com`), wildcards (`https://*.example.com`), or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default = "default_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read; default: the rate-limit headers and `X-Request-Id`.
    #[serde(default = "default_expose")]
    pub expose_headers: Vec<String>,
    /// Allow cookies / `Authorization` on cross-origin requests (never with `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "default_max_age", deserialize_with = "de_duration")]
    pub max_age: Duration,
}

fn yes() -> bool {
    true
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_headers() -> Vec<String> {
    ["Authorization", "Content-Type", "X-Request-Id"]
        .map(String::from)
        .to_vec()
}
fn default_expose() -> Vec<String> {
    [
        "X-Request-Id",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
    ]
    .map(String::from)
    .to_vec()
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

impl CorsConfig {
    /// The policy for a route bridging gRPC-Web: browsers may also send the headers
    /// gRPC-Web clients add, and read the status of a trailers-only answer.
    pub fn with_grpc_web(&self) -> CorsConfig {
        let mut cfg = self.clone();
        let add = |list: &mut Vec<String>, names: &[&str]| {
            for name in names {
                if !list.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    list.push((*name).to_string());
                }
            }
        };
        add(
            &mut cfg.allow_headers,
            &["Content-Type", "X-Grpc-Web", "X-User-Agent", "Grpc-Timeout"],
        );
        add(
            &mut cfg.expose_headers,
            &["Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"],
        );
        cfg
    }
}

#[derive(Debug, Clone)]
enum OriginPattern {
    Exact(String),
    /// `https://*.example.com` as (`https://`, `.example.com`).
    Wildcard(String, String),
}

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<OriginPattern>,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    /// Compiles a `cors:` block; `None` when it is disabled.
    pub fn compile(cfg: &CorsConfig, key: &str) -> Result<Option<Self>, Invalid> {
        if !cfg.enabled {
            return Ok(None);
        }
        let err = |k: &str, r: String| Invalid::new(format!("{key}.{k}"), r);
        if cfg.allow_origins.is_empty() {
            return Err(err(
                "allow_origins",
                "at least one origin is required".into(),
            ));
        }
        let any_origin = cfg.allow_origins.iter().any(|o| o == "*");
        if any_origin && cfg.allow_credentials {
            return Err(err(
                "allow_credentials",
                "cannot be combined with allow_origins `*` (browsers refuse it); list the origins"
                    .into(),
            ));
        }
        let mut origins = Vec::new();
        for o in cfg.allow_origins.iter().filter(|o| *o != "*") {
            origins.push(parse_origin(o).map_err(|r| err("allow_origins", r))?);
        }
        let list = |k: &str, items: &[String]| {
            HeaderValue::from_str(&items.join(", "))
                .map_err(|_| err(k, "contains characters not allowed in a header".into()))
        };
        Ok(Some(Cors {
            any_origin,
            origins,
            methods: list("allow_methods", &cfg.allow_methods)?,
            headers: list("allow_headers", &cfg.allow_headers)?,
            expose: if cfg.expose_headers.is_empty() {
                None
            } else {
                Some(list("expose_headers", &cfg.expose_headers)?)
            },
            credentials: cfg.allow_credentials,
            max_age: HeaderValue::from(cfg.max_age.as_secs()),
        }))
    }

    /// Whether `origin` may read responses.
    pub fn allows(&self, origin: &[u8]) -> bool {
        if self.any_origin {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|p| match p {
            OriginPattern::Exact(o) => *o == origin,
            OriginPattern::Wildcard(scheme, suffix) => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty() && !label.contains(['/', ':', '@', '?', '#'])
                }),
        })
    }

    /// The 204 answer to a preflight from `origin`.
    pub fn preflight(&self, origin: &HeaderValue) -> ResponseHeader {
        // 204 is a valid status; `build` cannot fail on it.
        let mut h = ResponseHeader::build(204, Some(8)).expect("204 is a valid status");
        let _ = h.insert_header("content-length", "0");
        if self.allows(origin.as_bytes()) {
            self.allow_origin(&mut h, origin);
            let _ = h.insert_header("access-control-allow-methods", self.methods.clone());
            let _ = h.insert_header("access-control-allow-headers", self.headers.clone());
            let _ = h.insert_header("access-control-max-age", self.max_age.clone());
        }
        let _ = h.append_header(
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        h
    }

    /// Adds the CORS headers to an actual (non-preflight) response.
    pub fn apply(&self, h: &mut ResponseHeader, origin: Option<&HeaderValue>) {
        if let Some(origin) = origin.filter(|o| self.allows(o.as_bytes())) {
            self.allow_origin(h, origin);
            if let Some(expose) = &self.expose {
                let _ = h.insert_header("access-control-expose-headers", expose.clone());
            }
        }
        let _ = h.append_header("vary", "Origin");
    }

    fn allow_origin(&self, h: &mut ResponseHeader, origin: &HeaderValue) {
        if self.any_origin {
            let _ = h.insert_header("access-control-allow-origin", "*");
        } else {
            let _ = h.insert_header("access-control-allow-origin", origin.clone());
        }
        if self.credentials {
            let _ = h.insert_header("access-control-allow-credentials", "true");
        }
    }
}

fn parse_origin(o: &str) -> Result<OriginPattern, String> {
    let lower = o.to_ascii_lowercase();
    let Some((scheme, host)) = lower.split_once("://") else {
        return Err(format!("{o:?} is not an origin (scheme://host[:port])"));
    };
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(format!(
            "{o:?} is not an origin (scheme://host[:port], no path)"
        ));
    }
    match host.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && !suffix.contains('*') => Ok(
            OriginPattern::Wildcard(format!("{scheme}://"), suffix.to_string()),
        ),
        Some(_) => Err(format!(
            "{o:?}: `*` may only replace leading labels, as in https://*.example.com"
        )),
        None if host.contains('*') => Err(format!("{o:?}: `*` may only lead the host")),
        None => Ok(OriginPattern::Exact(lower)),
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key("origin")
        && req.headers.contains_key("access-control-request-method")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Result<Option<Cors>, Invalid> {
        let cfg: CorsConfig = serde_yaml::from_str(yaml).unwrap();
        Cors::compile(&cfg, "cors")
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let c = cors("allow_origins: ['http://localhost:3000', 'https://*.example.com']")
            .unwrap()
            .unwrap();
        assert!(c.allows(b"http://localhost:3000"));
        assert!(c.allows(b"HTTP://LOCALHOST:3000"));
        assert!(!c.allows(b"http://localhost:3001"));
        assert!(c.allows(b"https://a.example.com"));
        assert!(c.allows(b"https://a.b.example.com"));
        assert!(!c.allows(b"https://example.com"));
        assert!(!c.allows(b"https://evil.com/.example.com"));
        assert!(!c.allows(b"http://a.example.com"));
        assert!(!c.allows(b"https://evilexample.com"));
    }

    #[test]
    fn star_with_credentials_is_refused() {
        let err = cors("allow_origins: ['*']\nallow_credentials: true").unwrap_err();
        assert_eq!(err.key, "cors.allow_credentials");
        assert!(cors("allow_origins: []").is_err());
        assert!(cors("allow_origins: ['example.com']").is_err());
        assert!(cors("allow_origins: ['https://a.*.com']").is_err());
        assert!(cors("enabled: false").unwrap().is_none());
    }
}
