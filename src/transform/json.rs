//! JSON body operations by dotted path, and the buffer that collects a streamed body for them.
//!
//! Pingora's body filters see the body chunk by chunk and `response_body_filter` is synchronous,
//! so a body is collected in a [`BodyBuffer`], rewritten once at end of stream, and emitted as
//! one chunk. Bodies over the cap are never held whole: the buffer flushes what it has and
//! passes the rest through.

use super::members::{Members, NotMembers};
use crate::de::OrderedMap;
use crate::edge;
use crate::invalid::Invalid;
use crate::template::{Template, TemplateScope, TemplateVars, verbatim};
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::server::WholeBody;
use serde::Deserialize;
use serde_json::Value;

/// A `body:` block of `request:` or `response:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JsonOpsConfig {
    /// Dotted paths to delete.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `from.path: to.path`, moving the value (no-op when `from` is absent).
    #[serde(default)]
    pub rename: OrderedMap<String>,
    /// `path: value`, replacing any existing value; string values are templates.
    #[serde(default)]
    pub set: OrderedMap<Value>,
    /// `path: value`, only where the path is absent.
    #[serde(default)]
    pub add: OrderedMap<Value>,
    /// Largest body rewritten (default 1 MiB). Larger requests get 413; larger responses pass
    /// through untouched.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    1 << 20
}

/// A dotted path such as `user.address.city`.
#[derive(Debug, Clone)]
struct JsonPath(Vec<String>);

impl JsonPath {
    fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<String> = s.split('.').map(String::from).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!(
                "invalid JSON path {s:?} (use dotted names, e.g. a.b)"
            ));
        }
        Ok(JsonPath(parts))
    }
}

/// A value to write: fixed JSON, or a string template rendered per request.
#[derive(Debug, Clone)]
enum NewValue {
    Fixed(Value),
    Template(Template),
}

/// Compiled JSON operations, applied in the order remove, rename, set, add.
#[derive(Debug, Clone)]
pub struct JsonOps {
    remove: Vec<JsonPath>,
    rename: Vec<(JsonPath, JsonPath)>,
    set: Vec<(JsonPath, NewValue)>,
    add: Vec<(JsonPath, NewValue)>,
    pub max_body: usize,
}

/// Why a body could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON (or nested deeper than serde_json's 128 levels).
    Invalid,
    /// Valid JSON whose top level is not an object: paths cannot apply.
    NotAnObject,
}

impl JsonOps {
    /// Compiles a `body:` block; `key` is its key path for errors.
    pub fn compile(
        cfg: &JsonOpsConfig,
        key: &str,
        scope: &TemplateScope<'_>,
    ) -> Result<Self, Invalid> {
        let path = |k: &str, p: &str| {
            JsonPath::parse(p).map_err(|r| Invalid::new(format!("{key}.{k}"), r))
        };
        let value = |k: &str, v: &Value| match v {
            Value::String(s) => Template::parse(s, scope)
                .map(NewValue::Template)
                .map_err(|r| Invalid::new(format!("{key}.{k}"), r)),
            other => Ok(NewValue::Fixed(other.clone())),
        };
        if cfg.max_body_bytes == 0 {
            return Err(Invalid::new(
                format!("{key}.max_body_bytes"),
                "must be positive",
            ));
        }
        Ok(JsonOps {
            remove: cfg
                .remove
                .iter()
                .map(|p| path("remove", p))
                .collect::<Result<_, _>>()?,
            rename: cfg
                .rename
                .iter()
                .map(|(f, t)| Ok((path("rename", f)?, path("rename", t)?)))
                .collect::<Result<_, Invalid>>()?,
            set: cfg
                .set
                .iter()
                .map(|(p, v)| Ok((path("set", p)?, value("set", v)?)))
                .collect::<Result<_, Invalid>>()?,
            add: cfg
                .add
                .iter()
                .map(|(p, v)| Ok((path("add", p)?, value("add", v)?)))
                .collect::<Result<_, Invalid>>()?,
            max_body: cfg.max_body_bytes,
        })
    }

    /// Rewrites a JSON body. A template whose variable is missing (anonymous caller) skips
    /// its operation. Only the members the operations touch are parsed (see [`Members`]).
    pub fn apply(&self, body: &[u8], vars: &TemplateVars<'_>) -> Result<Vec<u8>, JsonError> {
        let mut doc = Members::parse(body).map_err(|e| match e {
            NotMembers::Invalid => JsonError::Invalid,
            NotMembers::NotAnObject => JsonError::NotAnObject,
        })?;
        for p in &self.remove {
            doc.remove(&p.0);
        }
        for (from, to) in &self.rename {
            doc.rename(&from.0, &to.0);
        }
        for (p, v) in &self.set {
            if let Some(v) = render(v, vars) {
                doc.put(&p.0, v);
            }
        }
        for (p, v) in &self.add {
            if !doc.exists(&p.0)
                && let Some(v) = render(v, vars)
            {
                doc.put(&p.0, v);
            }
        }
        doc.to_vec(body.len()).map_err(|_| JsonError::Invalid)
    }
}

fn render(v: &NewValue, vars: &TemplateVars<'_>) -> Option<Value> {
    match v {
        NewValue::Fixed(v) => Some(v.clone()),
        NewValue::Template(t) => t.render(vars, verbatim).ok().map(Value::String),
    }
}

/// Collects a body up to a cap.
#[derive(Debug)]
pub struct BodyBuffer {
    buf: BytesMut,
    cap: usize,
    /// The cap was exceeded: everything from then on passes through.
    pub overflowed: bool,
}

/// What to do with the current chunk.
pub enum Collected {
    /// Keep collecting; emit nothing now.
    Pending,
    /// End of stream: here is the whole body.
    Complete(Bytes),
    /// The cap was exceeded; emit this (everything held so far plus the chunk) unchanged.
    Overflow(Bytes),
    /// Already overflowed earlier: emit the chunk unchanged.
    PassThrough,
}

impl BodyBuffer {
    /// Starts collecting a response body that will be replaced at its end: its head loses
    /// `Content-Length` (the filter runs after the head is sent) and goes out chunked, and is
    /// marked `WholeBody`, so head and body leave in one write.
    pub fn for_response(resp: &mut ResponseHeader, cap: usize) -> pingora::Result<Self> {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        resp.extensions_mut().insert(WholeBody);
        Ok(Self::new(cap))
    }

    pub fn new(cap: usize) -> Self {
        BodyBuffer {
            buf: BytesMut::new(),
            cap,
            overflowed: false,
        }
    }

    /// Takes one chunk from a body filter.
    pub fn push(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) -> Collected {
        if self.overflowed {
            return Collected::PassThrough;
        }
        if let Some(c) = chunk {
            self.buf.extend_from_slice(c);
        }
        if self.buf.len() > self.cap {
            self.overflowed = true;
            return Collected::Overflow(self.buf.split().freeze());
        }
        if end_of_stream {
            Collected::Complete(self.buf.split().freeze())
        } else {
            Collected::Pending
        }
    }
}

/// Whether a response body can be collected and rewritten: JSON, not compressed (Pingora
/// decompressed it if the upstream ignored our identity request), has a body, and a declared
/// length within the cap.
pub fn body_rewritable(req: &RequestHeader, resp: &ResponseHeader, cap: usize) -> bool {
    let status = resp.status.as_u16();
    if req.method == Method::HEAD || status == 204 || status == 304 || status < 200 {
        return false;
    }
    let h = &resp.headers;
    if !is_json(h.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes())) {
        return false;
    }
    if h.get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    edge::declared_length(h).is_none_or(|n| n <= cap as u64)
}

/// Whether a `Content-Type` value is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type.and_then(|c| std::str::from_utf8(c).ok()) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(yaml: &str) -> JsonOps {
        let cfg: JsonOpsConfig = serde_yaml::from_str(yaml).unwrap();
        let scope = TemplateScope {
            params: &[],
            claims: false,
        };
        JsonOps::compile(&cfg, "body", &scope).unwrap()
    }

    fn vars() -> TemplateVars<'static> {
        TemplateVars::for_test("rid-1")
    }

    #[test]
    fn remove_rename_set_add_in_order() {
        let o = ops(
            "remove: [secret, a.hidden]\nrename: {name: user.name}\nset: {v: 2, rid: '{request_id}'}\nadd: {v: 3, new.x: true}\n",
        );
        let out = o
            .apply(
                br#"{"secret":1,"a":{"hidden":1,"k":2},"name":"n","v":1}"#,
                &vars(),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"k":2},"v":2,"user":{"name":"n"},"rid":"rid-1","new":{"x":true}}"#
        );
    }

    #[test]
    fn non_objects_and_garbage_are_reported() {
        let o = ops("remove: [x]\n");
        assert_eq!(o.apply(b"[1,2]", &vars()), Err(JsonError::NotAnObject));
        assert_eq!(o.apply(b"{nope", &vars()), Err(JsonError::Invalid));
    }

    #[test]
    fn buffer_overflows_into_pass_through() {
        let mut b = BodyBuffer::new(4);
        assert!(matches!(
            b.push(Some(&Bytes::from_static(b"ab")), false),
            Collected::Pending
        ));
        match b.push(Some(&Bytes::from_static(b"cde")), false) {
            Collected::Overflow(all) => assert_eq!(&all[..], b"abcde"),
            _ => panic!("expected overflow"),
        }
        assert!(matches!(
            b.push(Some(&Bytes::from_static(b"f")), true),
            Collected::PassThrough
        ));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some(b"application/json; charset=utf-8")));
        assert!(is_json(Some(b"application/problem+json")));
        assert!(!is_json(Some(b"text/html")));
        assert!(!is_json(None));
    }
}
