//! Aggregate routes: one request fans out to several services concurrently and their JSON
//! answers are merged in config order (never completion order), with explicit conflict rules
//! and partial-failure reporting.
//!
//! Sub-calls go through Pingora's own HTTP connector to peers picked from the same
//! `ServicePool`s as proxied traffic, so they share health state, timeouts and keep-alive
//! behaviour, and no second HTTP stack is involved.

use crate::de::{de_duration, de_opt_duration};
use crate::errors::GatewayError;
use crate::identity::Identity;
use crate::invalid::Invalid;
use crate::template::{Template, TemplateScope, TemplateVars};
use crate::upstream::ServicePool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A route's `aggregate:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub calls: Vec<CallConfig>,
    /// `keyed` (default): each answer under its call's `key`; `top_level`: fields merged.
    #[serde(default)]
    pub merge: MergeMode,
    /// For `top_level`: `error` (default), `first` or `last` (in config order).
    #[serde(default)]
    pub on_conflict: ConflictPolicy,
    /// Whole-route deadline.
    #[serde(default = "default_total", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Largest accepted sub-response body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_total() -> Duration {
    Duration::from_secs(10)
}
fn default_max_body() -> usize {
    1 << 20
}

/// One sub-call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// Name of the answer in the merged object (and in `_errors`).
    pub key: String,
    pub service: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Path template: literal text, route parameters `{id}`, verified claims `{claim.sub}`.
    pub path: String,
    /// Append the client's query string.
    #[serde(default)]
    pub pass_query: bool,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-call deadline (default: the route's `timeout`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// A failing required call fails the route (502); an optional one becomes `null`.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_method() -> String {
    "GET".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    #[default]
    Keyed,
    TopLevel,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    #[default]
    Error,
    First,
    Last,
}

#[derive(Debug)]
struct Call {
    key: String,
    service: usize,
    method: Method,
    path: Template,
    pass_query: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    required: bool,
}

/// A compiled aggregate route.
#[derive(Debug)]
pub struct Aggregate {
    calls: Vec<Call>,
    merge: MergeMode,
    on_conflict: ConflictPolicy,
    max_body: usize,
}

/// Everything a fan-out needs from the incoming request.
pub struct CallContext<'a> {
    /// The snapshot's service pools, which the calls index into.
    pub services: &'a [Arc<ServicePool>],
    pub connector: &'a Connector,
    pub params: &'a [(Arc<str>, String)],
    pub identity: Option<&'a Identity>,
    pub query: Option<&'a str>,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    /// The request's trace, when tracing is on: each call gets its own client span.
    pub trace: Option<crate::trace::CallTrace<'a>>,
}

/// The merged answer, or why there is none.
#[derive(Debug)]
pub enum Outcome {
    /// The JSON body and whether every call succeeded.
    Merged { body: Bytes, complete: bool },
    /// A required call failed.
    CallFailed { call: String, reason: String },
    /// `top_level` merge with `on_conflict: error` met the same field twice.
    Conflict {
        field: String,
        first: String,
        second: String,
    },
}

impl Outcome {
    /// The merged body and whether it is complete, or the refusal to answer with.
    pub fn into_answer(self) -> Result<(Bytes, bool), GatewayError> {
        match self {
            Outcome::Merged { body, complete } => Ok((body, complete)),
            Outcome::CallFailed { call, reason } => {
                Err(GatewayError::AggregateCallFailed { call, reason })
            }
            Outcome::Conflict {
                field,
                first,
                second,
            } => Err(GatewayError::AggregateConflict {
                field,
                first,
                second,
            }),
        }
    }
}

impl Aggregate {
    /// Compiles an `aggregate:` block of route `key`. `params` are the route's parameter names.
    pub fn compile(
        cfg: &AggregateConfig,
        key: &str,
        services: &HashMap<&str, usize>,
        params: &[String],
        authenticated: bool,
    ) -> Result<Self, Invalid> {
        if cfg.calls.is_empty() {
            return Err(Invalid::new(
                format!("{key}.calls"),
                "at least one call is required",
            ));
        }
        if cfg.timeout.is_zero() || cfg.max_body_bytes == 0 {
            return Err(Invalid::new(
                key.to_string(),
                "timeout and max_body_bytes must be positive",
            ));
        }
        let mut calls = Vec::new();
        for (i, c) in cfg.calls.iter().enumerate() {
            let ck = format!("{key}.calls[{i}]");
            if cfg.calls[..i].iter().any(|o| o.key == c.key) || c.key == "_errors" {
                return Err(Invalid::new(
                    format!("{ck}.key"),
                    format!("duplicate or reserved key {:?}", c.key),
                ));
            }
            let service = *services.get(c.service.as_str()).ok_or_else(|| {
                Invalid::new(
                    format!("{ck}.service"),
                    format!("unknown service {:?}", c.service),
                )
            })?;
            let method =
                Method::from_bytes(c.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    Invalid::new(
                        format!("{ck}.method"),
                        format!("invalid method {:?}", c.method),
                    )
                })?;
            let scope = TemplateScope {
                params,
                claims: authenticated,
            };
            let path = if c.path.starts_with('/') {
                Template::parse(&c.path, &scope)
            } else {
                Err(format!("{:?} must start with `/`", c.path))
            }
            .map_err(|r| Invalid::new(format!("{ck}.path"), r))?;
            let mut headers = Vec::new();
            for (name, value) in &c.headers {
                let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Invalid::new(
                        format!("{ck}.headers"),
                        format!("invalid header name {name:?}"),
                    )
                })?;
                let v = HeaderValue::from_str(value).map_err(|_| {
                    Invalid::new(
                        format!("{ck}.headers.{name}"),
                        "invalid header value".to_string(),
                    )
                })?;
                headers.push((n, v));
            }
            calls.push(Call {
                key: c.key.clone(),
                service,
                method,
                path,
                pass_query: c.pass_query,
                headers,
                timeout: c.timeout.unwrap_or(cfg.timeout).min(cfg.timeout),
                required: c.required,
            });
        }
        Ok(Aggregate {
            calls,
            merge: cfg.merge,
            on_conflict: cfg.on_conflict,
            max_body: cfg.max_body_bytes,
        })
    }

    /// Services the calls use (for the "unused service" check).
    pub fn services(&self) -> impl Iterator<Item = usize> + '_ {
        self.calls.iter().map(|c| c.service)
    }

    /// Runs every call concurrently, each bounded by its deadline (never longer than the
    /// route's), then merges in config order.
    pub async fn run(&self, cx: &CallContext<'_>) -> Outcome {
        let results: Vec<Result<Value, String>> =
            futures::future::join_all(self.calls.iter().map(|c| async move {
                let span = cx.trace.as_ref().map(|t| t.begin());
                let parent = span.as_ref().map(|(_, _, header)| header);
                let result = match tokio::time::timeout(c.timeout, self.call(c, cx, parent)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {:?}", c.timeout)),
                };
                if let (Some(t), Some((span_id, start_ns, _))) = (&cx.trace, span) {
                    t.end(self.call_span(c, cx, span_id, start_ns, &result));
                }
                result
            }))
            .await;
        self.merge(results)
    }

    /// Merges the calls' results (in config order) into the answer: keyed by call, or fields
    /// at the top level; failed optional calls are listed under `_errors`.
    pub fn merge(&self, results: Vec<Result<Value, String>>) -> Outcome {
        let mut errors = Map::new();
        let mut answers = Vec::with_capacity(results.len());
        for (call, result) in self.calls.iter().zip(results) {
            match result {
                Ok(v) => answers.push((call, Some(v))),
                Err(reason) if call.required => {
                    return Outcome::CallFailed {
                        call: call.key.clone(),
                        reason,
                    };
                }
                Err(reason) => {
                    errors.insert(call.key.clone(), Value::String(reason));
                    answers.push((call, None));
                }
            }
        }
        let complete = errors.is_empty();
        let merged = match self.merge {
            MergeMode::Keyed => {
                let mut out = Map::new();
                for (call, v) in answers {
                    out.insert(call.key.clone(), v.unwrap_or(Value::Null));
                }
                out
            }
            MergeMode::TopLevel => match self.merge_top_level(answers, &mut errors) {
                Ok(m) => m,
                Err(o) => return o,
            },
        };
        let mut merged = merged;
        if !errors.is_empty() {
            merged.insert("_errors".into(), Value::Object(errors));
        }
        Outcome::Merged {
            body: Bytes::from(Value::Object(merged).to_string()),
            complete,
        }
    }

    fn merge_top_level(
        &self,
        answers: Vec<(&Call, Option<Value>)>,
        errors: &mut Map<String, Value>,
    ) -> Result<Map<String, Value>, Outcome> {
        let mut out = Map::new();
        let mut owner: HashMap<String, &str> = HashMap::new();
        for (call, v) in answers {
            let fields = match v {
                Some(Value::Object(m)) => m,
                Some(_) if call.required => {
                    return Err(Outcome::CallFailed {
                        call: call.key.clone(),
                        reason: "answer is not a JSON object".into(),
                    });
                }
                Some(_) => {
                    errors.insert(call.key.clone(), "answer is not a JSON object".into());
                    continue;
                }
                None => continue,
            };
            for (field, value) in fields {
                match (out.contains_key(&field), self.on_conflict) {
                    (true, ConflictPolicy::Error) => {
                        return Err(Outcome::Conflict {
                            first: owner.get(&field).copied().unwrap_or("?").to_string(),
                            second: call.key.clone(),
                            field,
                        });
                    }
                    (true, ConflictPolicy::First) => {}
                    _ => {
                        owner.insert(field.clone(), &call.key);
                        out.insert(field, value);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The client span of a finished call: named after its service and key.
    fn call_span(
        &self,
        call: &Call,
        cx: &CallContext<'_>,
        span_id: crate::trace::SpanId,
        start_ns: u64,
        result: &Result<Value, String>,
    ) -> crate::trace::ClientSpan {
        let service = &cx.services[call.service];
        crate::trace::ClientSpan {
            span_id,
            start_ns,
            end_ns: crate::trace::now_ns(),
            name: Arc::from(format!("{} {}", service.name, call.key)),
            peer: None,
            status: None,
            error: result.as_ref().err().map(|_| "aggregate_call_failed"),
        }
    }

    async fn call(
        &self,
        call: &Call,
        cx: &CallContext<'_>,
        traceparent: Option<&HeaderValue>,
    ) -> Result<Value, String> {
        let pool = &cx.services[call.service];
        let backend = pool
            .select(b"", &[])
            .ok_or_else(|| format!("no healthy backend for service {}", pool.name))?;
        let peer = pool.peer(&backend, false);
        let path = self.render(call, cx)?;
        let mut req = RequestHeader::build(call.method.clone(), path.as_bytes(), None)
            .map_err(|e| format!("bad request line: {e}"))?;
        let set = |req: &mut RequestHeader, n: HeaderName, v: HeaderValue| {
            req.insert_header(n, v).map_err(|e| e.to_string())
        };
        set(
            &mut req,
            http::header::HOST,
            HeaderValue::from_str(&backend.addr.to_string()).map_err(|e| e.to_string())?,
        )?;
        set(
            &mut req,
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_str(cx.request_id).map_err(|e| e.to_string())?,
        )?;
        set(
            &mut req,
            HeaderName::from_static("x-gateway-route"),
            HeaderValue::from_str(&pool.name).map_err(|e| e.to_string())?,
        )?;
        if let Some(ip) = cx.client_ip {
            let v = HeaderValue::from_str(&ip.to_string()).map_err(|e| e.to_string())?;
            set(&mut req, HeaderName::from_static("x-forwarded-for"), v)?;
        }
        if let Some(identity) = cx.identity {
            for (n, v) in &identity.headers {
                set(&mut req, n.clone(), v.clone())?;
            }
        }
        for (n, v) in &call.headers {
            set(&mut req, n.clone(), v.clone())?;
        }
        if let Some(t) = traceparent {
            set(&mut req, HeaderName::from_static("traceparent"), t.clone())?;
        }
        let (mut session, _reused) = cx
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
        session.set_write_timeout(peer.options.write_timeout);
        session.set_read_timeout(peer.options.read_timeout);
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("send: {}", e.etype().as_str()))?;
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("send: {}", e.etype().as_str()))?;
        session
            .read_response_header()
            .await
            .map_err(|e| format!("response: {}", e.etype().as_str()))?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| format!("body: {}", e.etype().as_str()))?
        {
            if body.len() + chunk.len() > self.max_body {
                return Err(format!("answer larger than {} bytes", self.max_body));
            }
            body.extend_from_slice(&chunk);
        }
        cx.connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        if !(200..300).contains(&status) {
            return Err(format!("HTTP {status}"));
        }
        // serde_json refuses nesting deeper than 128 levels, which bounds recursion.
        serde_json::from_slice(&body).map_err(|_| "answer is not valid JSON".to_string())
    }

    fn render(&self, call: &Call, cx: &CallContext<'_>) -> Result<String, String> {
        let vars = TemplateVars {
            params: cx.params,
            identity: cx.identity,
            request_id: cx.request_id,
            client_ip: cx.client_ip,
        };
        let mut out = call
            .path
            // Claims are percent-encoded: a claim can never add path segments or a query.
            .render(&vars, crate::template::percent_encoded)
            .map_err(|m| m.to_string())?;
        if call.pass_query
            && let Some(q) = cx.query.filter(|q| !q.is_empty())
        {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(q);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
