//! Compiled request conditions of a forced variant: header, cookie and query-parameter values.

use super::config::{ValueMatchConfig, VariantConfig};
use crate::edge::request_cookie;
use crate::invalid::Invalid;
use http::HeaderName;
use pingora::http::RequestHeader;
use regex::Regex;
use std::borrow::Cow;

/// Longest compiled regex program: a pattern is the operator's, but a typo should not make a
/// multi-megabyte automaton on every reload.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A value condition.
#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl ValueMatch {
    fn compile(cfg: &ValueMatchConfig, key: &str) -> Result<Self, Invalid> {
        let rule = match cfg {
            ValueMatchConfig::Exact(v) => return Ok(ValueMatch::Exact(v.clone())),
            ValueMatchConfig::Rule(r) => r,
        };
        match (&rule.exact, &rule.prefix, &rule.regex) {
            (Some(v), None, None) => Ok(ValueMatch::Exact(v.clone())),
            (None, Some(v), None) => Ok(ValueMatch::Prefix(v.clone())),
            (None, None, Some(pattern)) => regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(ValueMatch::Regex)
                .map_err(|e| Invalid::new(format!("{key}.regex"), format!("bad regex: {e}"))),
            _ => Err(Invalid::new(
                key,
                "set exactly one of `exact`, `prefix` or `regex` (or a plain string)",
            )),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => value == v,
            ValueMatch::Prefix(p) => value.starts_with(p.as_str()),
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Conditions that must all hold for a request to take a variant.
#[derive(Debug)]
pub struct Variant {
    headers: Vec<(HeaderName, ValueMatch)>,
    cookies: Vec<(String, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
}

impl Variant {
    /// Compiles `cfg`; errors name `key.headers.NAME` and the like.
    pub fn compile(cfg: &VariantConfig, key: &str) -> Result<Self, Invalid> {
        let mut headers = Vec::new();
        for (name, m) in &cfg.headers {
            let k = format!("{key}.headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Invalid::new(&k, "not a valid header name"))?;
            headers.push((header, ValueMatch::compile(m, &k)?));
        }
        let named = |map: &std::collections::BTreeMap<String, ValueMatchConfig>, what: &str| {
            map.iter()
                .map(|(n, m)| {
                    Ok((
                        n.clone(),
                        ValueMatch::compile(m, &format!("{key}.{what}.{n}"))?,
                    ))
                })
                .collect::<Result<Vec<_>, Invalid>>()
        };
        let variant = Variant {
            headers,
            cookies: named(&cfg.cookies, "cookies")?,
            query: named(&cfg.query, "query")?,
        };
        if variant.headers.is_empty() && variant.cookies.is_empty() && variant.query.is_empty() {
            return Err(Invalid::new(
                key,
                "name at least one header, cookie or query parameter",
            ));
        }
        Ok(variant)
    }

    /// Whether every condition holds. A header condition holds when any of its values
    /// matches; a cookie or parameter sent twice is read at its first occurrence.
    pub fn matches(&self, req: &RequestHeader) -> bool {
        self.headers.iter().all(|(name, m)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        }) && self
            .cookies
            .iter()
            .all(|(name, m)| request_cookie(req, name).is_some_and(|v| m.matches(v)))
            && self
                .query
                .iter()
                .all(|(name, m)| query_param(req, name).is_some_and(|v| m.matches(&v)))
    }
}

/// The first value of query parameter `name`, `+` and percent escapes decoded (form
/// encoding, as browsers send it).
pub fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<Cow<'a, str>> {
    let decode = |s: &'a str| -> Cow<'a, str> {
        if !s.contains(['+', '%']) {
            return Cow::Borrowed(s);
        }
        let spaced = s.replace('+', " ");
        Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    };
    req.uri
        .query()?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| decode(n) == name)
        .map(|(_, v)| decode(v))
}
