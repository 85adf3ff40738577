//! Per-route request and response transformation: headers (remove, rename, set, add, append),
//! query parameters (remove, rename, set, add) and JSON bodies (see [`json`]).
//!
//! Header values with templates are rendered once per request in `request_filter`, before any
//! upstream work, so a value that would carry CR, LF or NUL fails the request with a 400
//! instead of reaching an upstream or a client.

mod exchange;
pub mod json;
mod members;

pub use exchange::{Exchange, Prepared};

use crate::de::OrderedMap;
use crate::invalid::Invalid;
use crate::template::{Template, TemplateScope, TemplateVars};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use json::{JsonOps, JsonOpsConfig};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

/// A route's `request:` block.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestTransformConfig {
    #[serde(default)]
    pub headers: HeaderOpsConfig,
    #[serde(default)]
    pub query: QueryOpsConfig,
    #[serde(default)]
    pub body: Option<JsonOpsConfig>,
}

/// A route's `response:` block.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransformConfig {
    #[serde(default)]
    pub headers: HeaderOpsConfig,
    #[serde(default)]
    pub body: Option<JsonOpsConfig>,
}

/// Header operations, applied in the order remove, rename, set, add, append.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    #[serde(default)]
    pub remove: Vec<String>,
    /// `from: to`, moving every value.
    #[serde(default)]
    pub rename: OrderedMap<String>,
    /// Replace any existing value.
    #[serde(default)]
    pub set: OrderedMap<String>,
    /// Only if the header is absent.
    #[serde(default)]
    pub add: OrderedMap<String>,
    /// Add another value, keeping existing ones.
    #[serde(default)]
    pub append: OrderedMap<String>,
}

/// Query operations, applied in the order remove, rename, set, add.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueryOpsConfig {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: OrderedMap<String>,
    #[serde(default)]
    pub set: OrderedMap<String>,
    #[serde(default)]
    pub add: OrderedMap<String>,
}

/// Framing and connection headers belong to the proxy, never to a transform.
const PROTECTED: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Set,
    Add,
    Append,
}

#[derive(Debug, Clone)]
enum HeaderSource {
    Fixed(HeaderValue),
    Template(Template),
}

/// A header name and its spelling as configured. Pingora keeps a case-preserving copy of every
/// name; handing it the spelling as ready bytes avoids rendering the name on every request.
#[derive(Debug, Clone)]
pub struct WireName {
    pub name: HeaderName,
    pub spelled: Bytes,
}

impl WireName {
    /// The name as written, if it is a valid header name.
    pub fn parse(n: &str) -> Option<Self> {
        Some(WireName {
            name: HeaderName::from_bytes(n.as_bytes()).ok()?,
            spelled: Bytes::from(n.to_string()),
        })
    }
}

/// Compiled header operations.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, WireName)>,
    writes: Vec<(Write, WireName, HeaderSource)>,
    templated: usize,
}

/// A header value that failed the CR/LF/NUL check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeHeaderValue(pub String);

impl HeaderOps {
    fn compile(
        cfg: &HeaderOpsConfig,
        key: &str,
        scope: &TemplateScope<'_>,
    ) -> Result<Self, Invalid> {
        let name = |k: &str, n: &str| {
            let parsed = WireName::parse(n).ok_or_else(|| {
                Invalid::new(format!("{key}.{k}"), format!("invalid header name {n:?}"))
            })?;
            if PROTECTED.contains(&parsed.name.as_str()) {
                return Err(Invalid::new(
                    format!("{key}.{k}"),
                    format!("{n:?} is managed by the proxy and cannot be transformed"),
                ));
            }
            Ok(parsed)
        };
        let mut ops = HeaderOps {
            remove: cfg
                .remove
                .iter()
                .map(|n| name("remove", n).map(|w| w.name))
                .collect::<Result<_, _>>()?,
            rename: cfg
                .rename
                .iter()
                .map(|(f, t)| Ok((name("rename", f)?.name, name("rename", t)?)))
                .collect::<Result<_, Invalid>>()?,
            ..Default::default()
        };
        for (kind, k, map) in [
            (Write::Set, "set", &cfg.set),
            (Write::Add, "add", &cfg.add),
            (Write::Append, "append", &cfg.append),
        ] {
            for (n, v) in map.iter() {
                let t = Template::parse(v, scope)
                    .map_err(|r| Invalid::new(format!("{key}.{k}.{n}"), r))?;
                let source = match t.as_literal() {
                    Some(lit) => HeaderSource::Fixed(HeaderValue::from_str(lit).map_err(|_| {
                        Invalid::new(
                            format!("{key}.{k}.{n}"),
                            "value has characters not allowed in a header".to_string(),
                        )
                    })?),
                    None => {
                        ops.templated += 1;
                        HeaderSource::Template(t)
                    }
                };
                ops.writes.push((kind, name(k, n)?, source));
            }
        }
        Ok(ops)
    }

    /// Renders the templated values for this request; `None` skips an operation whose
    /// variable the request lacks.
    fn prepare(
        &self,
        vars: &TemplateVars<'_>,
    ) -> Result<Vec<Option<HeaderValue>>, UnsafeHeaderValue> {
        let mut out = Vec::with_capacity(self.templated);
        for (_, name, source) in &self.writes {
            if let HeaderSource::Template(t) = source {
                let value = match t.render(vars, crate::template::verbatim) {
                    // From the String itself: validated, not copied.
                    Ok(v) => Some(
                        HeaderValue::try_from(v)
                            .map_err(|_| UnsafeHeaderValue(name.name.to_string()))?,
                    ),
                    Err(_) => None,
                };
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Applies the operations with the values from [`Self::prepare`].
    fn apply(&self, target: &mut impl HeaderEdit, rendered: &[Option<HeaderValue>]) {
        for name in &self.remove {
            target.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = target.map().get_all(from).iter().cloned().collect();
            if !values.is_empty() {
                target.remove(from);
                target.remove(&to.name);
                for v in values {
                    target.append(to, v);
                }
            }
        }
        let mut next = rendered.iter();
        for (kind, name, source) in &self.writes {
            let value = match source {
                HeaderSource::Fixed(v) => v.clone(),
                HeaderSource::Template(_) => match next.next() {
                    Some(Some(v)) => v.clone(),
                    _ => continue,
                },
            };
            match kind {
                Write::Set => target.insert(name, value),
                Write::Add if target.map().contains_key(&name.name) => {}
                Write::Add => target.insert(name, value),
                Write::Append => target.append(name, value),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.writes.is_empty()
    }
}

/// Header editing over Pingora's request and response headers, which keep a case-preserving
/// copy of names beside the `HeaderMap` and so must be edited through their own methods.
pub trait HeaderEdit {
    fn map(&self) -> &HeaderMap;
    fn insert(&mut self, name: &WireName, value: HeaderValue);
    fn append(&mut self, name: &WireName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! header_edit {
    ($t:ty) => {
        impl HeaderEdit for $t {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn insert(&mut self, name: &WireName, value: HeaderValue) {
                // Only fails on invalid values, which a HeaderValue cannot be.
                let _ = self.insert_header(name.spelled.clone(), value);
            }
            fn append(&mut self, name: &WireName, value: HeaderValue) {
                let _ = self.append_header(name.spelled.clone(), value);
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
header_edit!(RequestHeader);
header_edit!(ResponseHeader);

/// Compiled query operations. Names are compared as written in the query (not decoded); new
/// values are percent-encoded, so a template can never add a parameter.
#[derive(Debug, Clone, Default)]
pub struct QueryOps {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

impl QueryOps {
    fn compile(
        cfg: &QueryOpsConfig,
        key: &str,
        scope: &TemplateScope<'_>,
    ) -> Result<Self, Invalid> {
        let name = |k: &str, n: &str| {
            if n.is_empty()
                || n.bytes()
                    .any(|b| b"&=#? ".contains(&b) || b.is_ascii_control())
            {
                return Err(Invalid::new(
                    format!("{key}.{k}"),
                    format!("invalid parameter name {n:?}"),
                ));
            }
            Ok(n.to_string())
        };
        let templates = |k: &str, m: &OrderedMap<String>| {
            m.iter()
                .map(|(n, v)| {
                    let t = Template::parse(v, scope)
                        .map_err(|r| Invalid::new(format!("{key}.{k}.{n}"), r))?;
                    Ok((name(k, n)?, t))
                })
                .collect::<Result<Vec<_>, Invalid>>()
        };
        Ok(QueryOps {
            remove: cfg
                .remove
                .iter()
                .map(|n| name("remove", n))
                .collect::<Result<_, _>>()?,
            rename: cfg
                .rename
                .iter()
                .map(|(f, t)| Ok((name("rename", f)?, name("rename", t)?)))
                .collect::<Result<_, Invalid>>()?,
            set: templates("set", &cfg.set)?,
            add: templates("add", &cfg.add)?,
        })
    }

    /// Rewrites a raw query string (without `?`).
    pub fn apply(&self, query: &str, vars: &TemplateVars<'_>) -> String {
        let mut pairs: Vec<(String, Option<String>)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (p.to_string(), None),
            })
            .collect();
        pairs.retain(|(k, _)| !self.remove.contains(k));
        for (from, to) in &self.rename {
            if pairs.iter().any(|(k, _)| k == from) {
                pairs.retain(|(k, _)| k != to);
                for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
                    *k = to.clone();
                }
            }
        }
        let render = |t: &Template| {
            t.render(vars, crate::template::verbatim).ok().map(|v| {
                percent_encoding::utf8_percent_encode(&v, crate::template::UNRESERVED).to_string()
            })
        };
        for (name, t) in &self.set {
            if let Some(v) = render(t) {
                pairs.retain(|(k, _)| k != name);
                pairs.push((name.clone(), Some(v)));
            }
        }
        for (name, t) in &self.add {
            if !pairs.iter().any(|(k, _)| k == name)
                && let Some(v) = render(t)
            {
                pairs.push((name.clone(), Some(v)));
            }
        }
        let mut out = String::with_capacity(query.len() + 16);
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(k);
            if let Some(v) = v {
                out.push('=');
                out.push_str(v);
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// A route's compiled transforms.
#[derive(Debug, Clone, Default)]
pub struct RouteTransforms {
    pub request_headers: HeaderOps,
    pub query: Option<QueryOps>,
    pub request_body: Option<JsonOps>,
    pub response_headers: HeaderOps,
    pub response_body: Option<JsonOps>,
}

/// The per-request rendered header values of a route's transforms.
#[derive(Debug, Default)]
pub struct PreparedHeaders {
    request: Vec<Option<HeaderValue>>,
    response: Vec<Option<HeaderValue>>,
}

impl RouteTransforms {
    /// Compiles a route's `request:` and `response:` blocks; error keys start at `request` or
    /// `response`.
    pub fn compile(
        request: Option<&RequestTransformConfig>,
        response: Option<&ResponseTransformConfig>,
        scope: &TemplateScope<'_>,
    ) -> Result<Option<Self>, Invalid> {
        if request.is_none() && response.is_none() {
            return Ok(None);
        }
        let mut t = RouteTransforms::default();
        if let Some(r) = request {
            let k = "request";
            t.request_headers = HeaderOps::compile(&r.headers, &format!("{k}.headers"), scope)?;
            let q = QueryOps::compile(&r.query, &format!("{k}.query"), scope)?;
            t.query = (!q.is_empty()).then_some(q);
            t.request_body = r
                .body
                .as_ref()
                .map(|b| JsonOps::compile(b, &format!("{k}.body"), scope))
                .transpose()?;
        }
        if let Some(r) = response {
            let k = "response";
            t.response_headers = HeaderOps::compile(&r.headers, &format!("{k}.headers"), scope)?;
            t.response_body = r
                .body
                .as_ref()
                .map(|b| JsonOps::compile(b, &format!("{k}.body"), scope))
                .transpose()?;
        }
        Ok(Some(t))
    }

    /// Renders this request's templated header values (request and response side).
    pub fn prepare(&self, vars: &TemplateVars<'_>) -> Result<PreparedHeaders, UnsafeHeaderValue> {
        Ok(PreparedHeaders {
            request: self.request_headers.prepare(vars)?,
            response: self.response_headers.prepare(vars)?,
        })
    }

    /// Applies the request header operations.
    pub fn apply_request_headers(&self, req: &mut RequestHeader, p: &PreparedHeaders) {
        if !self.request_headers.is_empty() {
            self.request_headers.apply(req, &p.request);
        }
    }

    /// Applies the response header operations.
    pub fn apply_response_headers(&self, resp: &mut ResponseHeader, p: &PreparedHeaders) {
        if !self.response_headers.is_empty() {
            self.response_headers.apply(resp, &p.response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn vars<'a>(params: &'a [(Arc<str>, String)]) -> TemplateVars<'a> {
        TemplateVars {
            params,
            identity: None,
            request_id: "rid",
            client_ip: None,
        }
    }

    fn compile(yaml: &str) -> RouteTransforms {
        let cfg: RequestTransformConfig = serde_yaml::from_str(yaml).unwrap();
        let params = vec!["id".to_string()];
        let scope = TemplateScope {
            params: &params,
            claims: false,
        };
        RouteTransforms::compile(Some(&cfg), None, &scope)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn header_operations_in_order() {
        let t = compile(
            "headers: {remove: [x-drop], rename: {x-old: x-new}, set: {x-id: '{id}'}, add: {x-a: '1', x-keep: no}, append: {x-m: '2'}}",
        );
        let params = vec![(Arc::<str>::from("id"), "42".to_string())];
        let p = t.prepare(&vars(&params)).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in [
            ("x-drop", "1"),
            ("x-old", "o1"),
            ("x-keep", "k"),
            ("x-m", "1"),
        ] {
            req.append_header(n, v).unwrap();
        }
        t.apply_request_headers(&mut req, &p);
        let h = &req.headers;
        assert!(h.get("x-drop").is_none() && h.get("x-old").is_none());
        assert_eq!(h["x-new"], "o1");
        assert_eq!(h["x-id"], "42");
        assert_eq!(h["x-a"], "1");
        assert_eq!(h["x-keep"], "k");
        assert_eq!(h.get_all("x-m").iter().count(), 2);
    }

    #[test]
    fn query_operations_encode_values() {
        let t = compile(
            "query: {remove: [token], rename: {q: search}, set: {page: '{id}'}, add: {lang: en, q2: 'a b&c'}}",
        );
        let params = vec![(Arc::<str>::from("id"), "7".to_string())];
        let out = t
            .query
            .as_ref()
            .unwrap()
            .apply("q=x&token=s&page=1&flag", &vars(&params));
        assert_eq!(out, "search=x&flag&page=7&lang=en&q2=a%20b%26c");
    }

    #[test]
    fn framing_headers_are_refused() {
        let cfg: RequestTransformConfig =
            serde_yaml::from_str("headers: {set: {Content-Length: '5'}}").unwrap();
        let scope = TemplateScope {
            params: &[],
            claims: false,
        };
        let err = RouteTransforms::compile(Some(&cfg), None, &scope).unwrap_err();
        assert_eq!(err.key, "request.headers.set");
    }
}
