//! The script stage of one request: the views handed to the route's script, and what its
//! calls decided, carried from phase to phase.

use super::api::{Reply, RequestState, RequestView, ResponseView, apply_edits};
use super::{Hook, RouteScript, ScriptError, json};
use crate::errors::GatewayError;
use crate::identity::Identity;
use crate::transform::WireName;
use crate::transform::json::{BodyBuffer, Collected, body_rewritable, is_json};
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use rhai::{Dynamic, Map};
use std::net::IpAddr;
use std::sync::Arc;

/// What a request hook decided.
pub enum Step {
    /// Go on to the upstream.
    Continue,
    /// Answer the client with this instead (`respond(status, body)`).
    Answer(Box<ScriptAnswer>),
}

/// A script's own answer, checked and encoded.
pub struct ScriptAnswer {
    pub status: u16,
    /// The JSON body.
    pub body: Bytes,
    pub headers: Vec<(WireName, HeaderValue)>,
}

/// Whether `on_request_body` needs the request body read before the upstream is chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyNeed {
    None,
    /// Read it whole, up to this many bytes.
    Read(usize),
}

/// The request as the script stage is started with.
pub struct RequestInput<'a> {
    pub req: &'a RequestHeader,
    /// The normalized path the route matched.
    pub path: &'a str,
    pub params: &'a [(Arc<str>, String)],
    /// The path the route forwards to.
    pub upstream_path: &'a str,
    pub identity: Option<&'a Arc<Identity>>,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
}

/// Per-request script state; empty on routes without a script.
#[derive(Default)]
pub struct ScriptRun {
    script: Option<Arc<RouteScript>>,
    request: Option<RequestView>,
    /// The body forwarded in place of the client's, once `on_request_body` replaced it.
    request_body: Option<Bytes>,
    response: Option<ResponseView>,
    response_body: Option<BodyBuffer>,
}

impl ScriptRun {
    /// Starts the stage on a route with a script, with a view of the request.
    pub fn start(&mut self, script: &Arc<RouteScript>, input: RequestInput<'_>) {
        let req = input.req;
        self.request = Some(RequestView::new(RequestState {
            method: req.method.as_str().into(),
            path: input.path.into(),
            query: req.uri.query().unwrap_or("").into(),
            headers: req.headers.clone(),
            params: input.params.to_vec(),
            identity: input.identity.cloned(),
            request_id: input.request_id.into(),
            client_ip: input.client_ip,
            route: script.route.clone(),
            edits: Vec::new(),
            upstream_path: input.upstream_path.to_string(),
            path_changed: false,
            upstream_query: None,
            vars: Map::new(),
        }));
        self.script = Some(script.clone());
    }

    /// Whether the response body is for the script: it is then asked for uncompressed, and
    /// decompressed if the upstream compresses anyway.
    pub fn wants_identity(&self) -> bool {
        self.script
            .as_ref()
            .is_some_and(|s| s.has(Hook::OnResponseBody))
    }

    /// Whether the route has a script (the stage was started).
    pub fn is_started(&self) -> bool {
        self.script.is_some()
    }

    /// Runs `on_request`, if the script has it.
    pub fn on_request(&mut self) -> Result<Step, GatewayError> {
        let (Some(script), Some(req)) = (self.script.clone(), self.request.clone()) else {
            return Ok(Step::Continue);
        };
        if !script.has(Hook::OnRequest) {
            return Ok(Step::Continue);
        }
        let out = script.call(Hook::OnRequest, (req,));
        let step = out.and_then(|v| request_step(v, "nothing, or respond(status, body)"));
        self.checked(Hook::OnRequest, step.map(|(step, _)| step))
    }

    /// The path `on_request` set for the upstream, if it set one.
    pub fn upstream_path(&self) -> Option<String> {
        let state = self.request.as_ref()?.state();
        state.path_changed.then(|| state.upstream_path.clone())
    }

    /// The query `on_request` set for the upstream, if it set one.
    pub fn upstream_query(&self) -> Option<String> {
        self.request.as_ref()?.state().upstream_query.clone()
    }

    /// Whether the request body must be read for `on_request_body`: a JSON body on a route
    /// whose script has the hook.
    pub fn request_body_need(&self, req: &RequestHeader, has_body: bool) -> BodyNeed {
        match &self.script {
            Some(s) if s.has(Hook::OnRequestBody) && has_body => {
                let ct = req.headers.get(http::header::CONTENT_TYPE);
                if is_json(ct.map(|v| v.as_bytes())) {
                    BodyNeed::Read(s.limits.max_request_body_bytes)
                } else {
                    BodyNeed::None
                }
            }
            _ => BodyNeed::None,
        }
    }

    /// Runs `on_request_body` on the whole body: it may keep it (returning nothing), replace
    /// it, or answer. A body that is not JSON is the client's error (400).
    pub fn on_request_body(&mut self, body: &Bytes) -> Result<Step, GatewayError> {
        let (Some(script), Some(req)) = (self.script.clone(), self.request.clone()) else {
            return Ok(Step::Continue);
        };
        let value = script
            .parse_body(Hook::OnRequestBody, body)
            .map_err(|_| GatewayError::InvalidJsonBody)?;
        // Shared, so the body a script returns is not copied on the way out.
        let out = script.call(Hook::OnRequestBody, (req, value.into_shared()));
        let step = out.and_then(|v| request_step(v, "the body, nothing, or respond(...)"));
        let (step, replaced) = self.checked(Hook::OnRequestBody, step)?;
        self.request_body = replaced;
        Ok(step)
    }

    /// Applies the script's request changes to what the upstream receives: its header edits,
    /// its query, and the length of a replaced body.
    pub fn on_upstream_request(&self, upstream: &mut RequestHeader) -> pingora::Result<()> {
        let Some(req) = &self.request else {
            return Ok(());
        };
        apply_edits(&req.state().edits, upstream);
        if let Some(body) = &self.request_body {
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        }
        if self.wants_identity() {
            upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    /// Sends the replaced body in place of the client's (which was read whole already, and
    /// which Pingora sends from its retry buffer, again on a retry).
    pub fn on_request_chunk(&self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Some(replaced) = &self.request_body {
            *body = end_of_stream.then(|| replaced.clone());
        }
    }

    /// Runs `on_response` on the upstream's head and applies its changes; arms the body
    /// collection for `on_response_body` (the head then goes out chunked).
    pub fn on_response_header(
        &mut self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> Result<(), GatewayError> {
        let (Some(script), Some(view)) = (self.script.clone(), self.request.clone()) else {
            return Ok(());
        };
        if !script.has(Hook::OnResponse) && !script.has(Hook::OnResponseBody) {
            return Ok(());
        }
        let res = ResponseView::new(resp.status.as_u16(), resp.headers.clone());
        if script.has(Hook::OnResponse) {
            let out = script.call(Hook::OnResponse, (view, res.clone()));
            let checked = out.and_then(|v| unit_only(v, "nothing"));
            self.checked(Hook::OnResponse, checked)?;
            let state = res.state();
            apply_edits(&state.edits, resp);
            if state.status_changed {
                resp.set_status(state.status)
                    .map_err(|_| GatewayError::Internal)?;
            }
        }
        let cap = script.limits.max_response_body_bytes;
        if script.has(Hook::OnResponseBody) && body_rewritable(req, resp, cap) {
            let buffer = BodyBuffer::for_response(resp, cap).map_err(|_| GatewayError::Internal)?;
            self.response_body = Some(buffer);
        }
        res.state().sent = true;
        self.response = Some(res);
        Ok(())
    }

    /// Collects a JSON response body and emits the script's body at its end. A body over the
    /// cap passes unchanged; a failing call ends the response (its head is already sent).
    pub fn on_response_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), GatewayError> {
        let Some(buffer) = self.response_body.as_mut() else {
            return Ok(());
        };
        let all = match buffer.push(body.as_ref(), end_of_stream) {
            Collected::Pending => {
                *body = None;
                return Ok(());
            }
            Collected::PassThrough => return Ok(()),
            Collected::Overflow(all) => {
                *body = Some(all);
                return Ok(());
            }
            Collected::Complete(all) => all,
        };
        let (Some(script), Some(req), Some(res)) = (
            self.script.clone(),
            self.request.clone(),
            self.response.clone(),
        ) else {
            return Ok(());
        };
        // Not JSON after all (the upstream lied in Content-Type): passed unchanged.
        let Ok(value) = script.parse_body(Hook::OnResponseBody, &all) else {
            *body = Some(all);
            return Ok(());
        };
        let out = script.call(Hook::OnResponseBody, (req, res, value.into_shared()));
        let replaced = out.map(Dynamic::flatten).and_then(|v| match v.is_unit() {
            true => Ok(None),
            false => to_json(&v, "the body, or nothing").map(Some),
        });
        *body = Some(self.checked(Hook::OnResponseBody, replaced)?.unwrap_or(all));
        Ok(())
    }

    /// Logs and counts a failed call; the client gets only `500 Script error`.
    fn checked<T>(&self, hook: Hook, result: Result<T, ScriptError>) -> Result<T, GatewayError> {
        result.map_err(|err| {
            let route = self.script.as_ref().map_or("", |s| s.route.as_str());
            let request_id = self
                .request
                .as_ref()
                .map(|r| r.state().request_id.clone())
                .unwrap_or_default();
            log::warn!(
                "route {route}: script {} failed: {err} [request {request_id}]",
                hook.name()
            );
            crate::metrics::record_script_error(route, hook.name(), err.reason());
            GatewayError::ScriptFailed
        })
    }
}

/// A request hook's value: nothing (go on), a reply (answer), or a body (replace it).
fn request_step(
    value: Dynamic,
    expected: &'static str,
) -> Result<(Step, Option<Bytes>), ScriptError> {
    let value = value.flatten();
    if value.is_unit() {
        return Ok((Step::Continue, None));
    }
    if value.is::<Reply>() {
        let reply = value.cast::<Reply>();
        let answer = ScriptAnswer {
            status: reply.status,
            body: to_json(&reply.body, "data as respond()'s body")?,
            headers: reply.headers,
        };
        return Ok((Step::Answer(Box::new(answer)), None));
    }
    if expected.starts_with("nothing") {
        return Err(ScriptError::ReturnType {
            expected,
            found: value.type_name().to_string(),
        });
    }
    Ok((Step::Continue, Some(to_json(&value, expected)?)))
}

fn unit_only(value: Dynamic, expected: &'static str) -> Result<(), ScriptError> {
    match value.is_unit() {
        true => Ok(()),
        false => Err(ScriptError::ReturnType {
            expected,
            found: value.type_name().to_string(),
        }),
    }
}

/// A script value as JSON; one holding a request, a response or a function is not data.
pub fn to_json(value: &Dynamic, expected: &'static str) -> Result<Bytes, ScriptError> {
    json::write(value)
        .map(Bytes::from)
        .ok_or_else(|| ScriptError::ReturnType {
            expected,
            found: value.type_name().to_string(),
        })
}
