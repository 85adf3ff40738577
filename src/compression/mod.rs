//! Response compression: `gzip`, `br` and `zstd`, negotiated from `Accept-Encoding` with
//! q-values and the server's preference, streamed chunk by chunk.
//!
//! Pingora's compression module applies one decision rule we cannot configure (first listed
//! coding, no q-values, its own type list and a 20-byte floor, no `no-transform`), so the
//! decision and the header changes are made here; flate2's deflate, the zstd and the brotli
//! crates (see `encoder.rs`) compress the body, each at its own level.

mod encoder;
mod gzip;
mod negotiate;
mod spare;
#[cfg(test)]
mod tests;

pub use encoder::ResponseEncoding;

use crate::edge::declared_length;
use crate::invalid::Invalid;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG, RANGE, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};
use negotiate::Accepted;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd = 0,
    Brotli = 1,
    Gzip = 2,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

    /// The `Accept-Encoding`/`Content-Encoding` token (any case), `x-gzip` included.
    fn from_token(token: &str) -> Option<Self> {
        let is = |name: &str| token.eq_ignore_ascii_case(name);
        if is("zstd") {
            Some(Coding::Zstd)
        } else if is("br") {
            Some(Coding::Brotli)
        } else if is("gzip") || is("x-gzip") {
            Some(Coding::Gzip)
        } else {
            None
        }
    }

    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// Accepted levels and the default. The defaults are for compressing on the fly
    /// (bench/README.md, "Compression"): on a 10 KB JSON answer gzip 2 is 1.3× the work of
    /// gzip 1 for a 1.45× smaller body, where gzip 6 costs 3.3× for 5 % less; brotli 2 beats
    /// brotli 4 on both size and time; zstd 3 is zstd's own default.
    fn levels(self) -> (std::ops::RangeInclusive<u32>, u32) {
        match self {
            Coding::Zstd => (1..=22, 3),
            Coding::Brotli => (1..=11, 2),
            Coding::Gzip => (1..=9, 2),
        }
    }
}

/// `compression:` at the top level or on a route (a route's replaces the top-level one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// The server's preference among codings a client accepts equally.
    pub algorithms: Vec<String>,
    /// Level per coding (`{gzip: 6, br: 4, zstd: 3}` by default).
    pub level: BTreeMap<String, u32>,
    /// Bodies shorter than this (by `Content-Length`) are sent as they are.
    pub min_size: u64,
    /// Media types compressed: `type/subtype`, `type/*` or a `+suffix` (`+json`).
    pub types: Vec<String>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            algorithms: vec!["zstd".into(), "br".into(), "gzip".into()],
            level: BTreeMap::new(),
            min_size: 1024,
            types: [
                "application/json",
                "+json",
                "text/*",
                "application/javascript",
                "application/xml",
                "+xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// A media-type rule of `types`.
#[derive(Debug)]
enum TypeRule {
    Exact(String),
    /// `text/*` kept as `text/`.
    Prefix(String),
    /// `+json`.
    Suffix(String),
}

/// A compiled `compression:` block.
#[derive(Debug)]
pub struct Compression {
    preference: Vec<Coding>,
    levels: [u32; Coding::ALL.len()],
    min_size: u64,
    types: Vec<TypeRule>,
}

impl Compression {
    /// `None` when `enabled: false`; errors name `key.algorithms[i]`, `key.level.NAME`, ….
    pub fn compile(cfg: &CompressionConfig, key: &str) -> Result<Option<Self>, Invalid> {
        if !cfg.enabled {
            return Ok(None);
        }
        let mut preference = Vec::new();
        for (i, name) in cfg.algorithms.iter().enumerate() {
            let c = Coding::from_token(name).ok_or_else(|| {
                Invalid::new(
                    format!("{key}.algorithms[{i}]"),
                    format!("unknown algorithm {name:?} (expected zstd, br or gzip)"),
                )
            })?;
            if preference.contains(&c) {
                return Err(Invalid::new(
                    format!("{key}.algorithms[{i}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
            preference.push(c);
        }
        if preference.is_empty() {
            return Err(Invalid::new(
                format!("{key}.algorithms"),
                "list at least one of zstd, br, gzip (or set enabled: false)",
            ));
        }
        let mut levels = Coding::ALL.map(|c| c.levels().1);
        for (name, &level) in &cfg.level {
            let k = format!("{key}.level.{name}");
            let c = Coding::from_token(name)
                .ok_or_else(|| Invalid::new(&k, "unknown algorithm (expected zstd, br or gzip)"))?;
            let (range, _) = c.levels();
            if !range.contains(&level) {
                return Err(Invalid::new(
                    k,
                    format!(
                        "{level} is out of range for {name} ({}..={})",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            levels[c as usize] = level;
        }
        let types = cfg
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| type_rule(t).map_err(|r| Invalid::new(format!("{key}.types[{i}]"), r)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Compression {
            preference,
            levels,
            min_size: cfg.min_size,
            types,
        }))
    }

    /// Decides on a response: when it is compressed, adjusts its header (`Content-Encoding`,
    /// `Vary`, weakened `ETag`, no length) and returns the encoder for its body. `http11`: the
    /// client speaks HTTP/1.1, whose streamed bodies are chunked.
    pub fn on_response_header(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        http11: bool,
    ) -> ResponseEncoding {
        let length = declared_length(&resp.headers);
        if !self.eligible(req, resp, length) {
            return ResponseEncoding::default();
        }
        let small = length.is_some_and(|n| n < self.min_size);
        // Only a client that refuses identity gets a small body compressed. For the others a
        // small answer is left as it is, without `Vary` (as nginx's `gzip_min_length`): one
        // more header costs small API answers a header-map regrowth each.
        if small && !may_refuse_identity(req) {
            return ResponseEncoding::default();
        }
        // From here the answer depends on Accept-Encoding, whatever this request gets.
        add_vary(resp);
        let Some(accepted) = Accepted::parse(
            req.headers
                .get_all(ACCEPT_ENCODING)
                .iter()
                .map(|v| v.as_bytes()),
        ) else {
            return ResponseEncoding::default();
        };
        let Some(coding) = accepted.choose(&self.preference) else {
            return ResponseEncoding::default();
        };
        // A client that refuses identity gets its coding whatever the size.
        if accepted.identity && small {
            return ResponseEncoding::default();
        }
        let encoding = ResponseEncoding::new(coding, self.levels[coding as usize], length);
        if encoding.is_active() {
            set_encoded_headers(resp, coding, http11);
            crate::metrics::compressed(coding.token());
        }
        encoding
    }

    /// Whether the response may be compressed at all, before looking at `Accept-Encoding`.
    /// `length`: the response's declared `Content-Length`.
    fn eligible(&self, req: &RequestHeader, resp: &ResponseHeader, length: Option<u64>) -> bool {
        let status = resp.status.as_u16();
        req.method != Method::HEAD
            && !req.headers.contains_key(RANGE)
            && !matches!(status, 100..=199 | 204 | 206 | 304)
            && resp
                .headers
                .get(CONTENT_ENCODING)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
            && length != Some(0)
            && !no_transform(resp)
            && resp
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| self.compresses_type(t))
    }

    fn compresses_type(&self, content_type: &str) -> bool {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .as_bytes();
        // Rules are stored lowercase; media types compare case-insensitively.
        let head = |n: usize| media.get(..n);
        let tail = |n: usize| media.len().checked_sub(n).map(|i| &media[i..]);
        self.types.iter().any(|rule| match rule {
            TypeRule::Exact(t) => media.eq_ignore_ascii_case(t.as_bytes()),
            TypeRule::Prefix(p) => {
                head(p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
            }
            TypeRule::Suffix(s) => {
                tail(s.len()).is_some_and(|t| t.eq_ignore_ascii_case(s.as_bytes()))
            }
        })
    }
}

fn type_rule(t: &str) -> Result<TypeRule, String> {
    let t = t.trim().to_ascii_lowercase();
    if let Some(suffix) = t.strip_prefix('+') {
        if suffix.is_empty() || suffix.contains('/') {
            return Err(format!("{t:?} is not a +suffix"));
        }
        return Ok(TypeRule::Suffix(t));
    }
    match t.split_once('/') {
        Some((ty, "*")) if !ty.is_empty() && ty != "*" => Ok(TypeRule::Prefix(format!("{ty}/"))),
        Some((ty, sub)) if !ty.is_empty() && !sub.is_empty() && !sub.contains('*') => {
            Ok(TypeRule::Exact(t))
        }
        _ => Err(format!(
            "{t:?} is not a media type (type/subtype, type/* or +suffix)"
        )),
    }
}

/// Whether `Accept-Encoding` could refuse identity (it names `identity` or `*`).
fn may_refuse_identity(req: &RequestHeader) -> bool {
    req.headers.get_all(ACCEPT_ENCODING).iter().any(|v| {
        let b = v.as_bytes();
        b.contains(&b'*') || b.windows(8).any(|w| w.eq_ignore_ascii_case(b"identity"))
    })
}

/// `Cache-Control: no-transform` (RFC 9111 §5.2.2.6): intermediaries must not change the body.
fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is already there.
fn add_vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        // A `&'static str` name: Pingora copies a `HeaderName` it has no title case for.
        let _ = resp.append_header("Vary", HeaderValue::from_static("Accept-Encoding"));
    }
}

fn set_encoded_headers(resp: &mut ResponseHeader, coding: Coding, http11: bool) {
    let _ = resp.insert_header(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    // The compressed length is not known until the end: the body is streamed.
    resp.remove_header(&CONTENT_LENGTH);
    // Byte ranges of the compressed form are not offered.
    resp.remove_header(&ACCEPT_RANGES);
    if http11 {
        let _ = resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    // RFC 9110 §8.8.1: a strong validator names one byte sequence; the compressed variant is
    // a different one. A strong ETag is weakened (as nginx does), a malformed one dropped.
    if let Some(etag) = resp.headers.get(ETAG).cloned() {
        let bytes = etag.as_bytes();
        if bytes.starts_with(b"\"") {
            if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", bytes].concat()) {
                let _ = resp.insert_header("ETag", weak);
            }
        } else if !bytes.starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
}
