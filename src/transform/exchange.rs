//! The transform stage of one request: the route's header values rendered once, and the JSON
//! bodies collected and rewritten on both sides.

use super::RouteTransforms;
use super::json::{BodyBuffer, Collected, body_rewritable, is_json};
use crate::edge;
use crate::errors::GatewayError;
use crate::template::TemplateVars;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::borrow::Cow;
use std::sync::Arc;

/// Per-request transform state; empty on routes without transforms.
#[derive(Default)]
pub struct Exchange {
    transforms: Option<Arc<RouteTransforms>>,
    prepared: Option<super::PreparedHeaders>,
    /// Request body collected for a JSON rewrite.
    request_body: Option<BodyBuffer>,
    /// Response body collected for a JSON rewrite.
    response_body: Option<BodyBuffer>,
}

/// What `prepare` asks of the proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// The response body will be rewritten: ask the upstream for identity encoding (and
    /// decompress if it compresses anyway).
    pub wants_identity: bool,
}

impl Exchange {
    /// Renders the route's templated header values and decides which bodies get rewritten.
    /// A value that would carry CR, LF or NUL, or a JSON body declared over the cap, is
    /// refused here, before any upstream work.
    pub fn prepare(
        &mut self,
        transforms: Option<&Arc<RouteTransforms>>,
        vars: &TemplateVars<'_>,
        req: &RequestHeader,
        has_body: bool,
    ) -> Result<Prepared, GatewayError> {
        let Some(t) = transforms else {
            return Ok(Prepared::default());
        };
        self.prepared = Some(
            t.prepare(vars)
                .map_err(|e| GatewayError::UnsafeHeaderValue { header: e.0 })?,
        );
        let content_type = req.headers.get(http::header::CONTENT_TYPE);
        if let Some(ops) = &t.request_body
            && has_body
            && is_json(content_type.map(|v| v.as_bytes()))
        {
            edge::check_content_length(req, ops.max_body as u64)?;
            self.request_body = Some(BodyBuffer::new(ops.max_body));
        }
        self.transforms = Some(t.clone());
        Ok(Prepared {
            wants_identity: t.response_body.is_some(),
        })
    }

    /// The query to forward after the route's query operations; `vars` is only built for a
    /// route that has some.
    pub fn on_query<'a, 'v>(
        &self,
        query: Option<Cow<'a, str>>,
        vars: impl FnOnce() -> TemplateVars<'v>,
    ) -> Option<Cow<'a, str>> {
        match self.transforms.as_ref().and_then(|t| t.query.as_ref()) {
            Some(ops) => Some(Cow::Owned(
                ops.apply(query.as_deref().unwrap_or(""), &vars()),
            )),
            None => query,
        }
    }

    /// Applies the request header operations to the upstream request.
    pub fn on_upstream_request(&self, upstream: &mut RequestHeader) -> pingora::Result<()> {
        let (Some(t), Some(p)) = (self.transforms.as_ref(), self.prepared.as_ref()) else {
            return Ok(());
        };
        t.apply_request_headers(upstream, p);
        if self.request_body.is_some() {
            // The rewritten body's length is unknown until it is complete: Pingora sends it
            // chunked.
            upstream.remove_header(&http::header::CONTENT_LENGTH);
        }
        if t.response_body.is_some() {
            upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    /// Collects a JSON request body and replaces it with the rewritten one at its end.
    pub fn on_request_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        vars: &TemplateVars<'_>,
    ) -> Result<(), GatewayError> {
        let Some(buffer) = self.request_body.as_mut() else {
            return Ok(());
        };
        match buffer.push(body.as_ref(), end_of_stream) {
            Collected::Pending => *body = None,
            Collected::PassThrough => {}
            Collected::Overflow(_) => return Err(GatewayError::PayloadTooLarge),
            Collected::Complete(all) => {
                let ops = self
                    .transforms
                    .as_ref()
                    .and_then(|t| t.request_body.as_ref());
                *body = Some(match ops {
                    Some(o) => Bytes::from(
                        o.apply(&all, vars)
                            .map_err(|_| GatewayError::InvalidJsonBody)?,
                    ),
                    None => all,
                });
            }
        }
        Ok(())
    }

    /// Applies the response header operations and arms the JSON body rewrite (dropping
    /// `Content-Length`, since the body filter runs after the header is sent).
    pub fn on_response_header(
        &mut self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> pingora::Result<()> {
        let Some(t) = self.transforms.as_ref() else {
            return Ok(());
        };
        self.on_gateway_answer(resp);
        if let Some(ops) = &t.response_body
            && body_rewritable(req, resp, ops.max_body)
        {
            self.response_body = Some(BodyBuffer::for_response(resp, ops.max_body)?);
        }
        Ok(())
    }

    /// Collects a JSON response body and emits the rewritten body at its end; bodies over the
    /// cap or not JSON objects pass through unchanged.
    pub fn on_response_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        vars: &TemplateVars<'_>,
    ) {
        let Some(buffer) = self.response_body.as_mut() else {
            return;
        };
        match buffer.push(body.as_ref(), end_of_stream) {
            Collected::Pending => *body = None,
            Collected::PassThrough => {}
            Collected::Overflow(all) => *body = Some(all),
            Collected::Complete(all) => *body = Some(self.rewrite_answer(all, vars)),
        }
    }

    /// Applies the response header operations to an answer the gateway wrote itself.
    pub fn on_gateway_answer(&self, resp: &mut ResponseHeader) {
        if let (Some(t), Some(p)) = (self.transforms.as_ref(), self.prepared.as_ref()) {
            t.apply_response_headers(resp, p);
        }
    }

    /// A whole JSON response body after the route's body operations (unchanged when it is not
    /// a JSON object).
    pub fn rewrite_answer(&self, body: Bytes, vars: &TemplateVars<'_>) -> Bytes {
        match self
            .transforms
            .as_ref()
            .and_then(|t| t.response_body.as_ref())
        {
            Some(ops) => ops.apply(&body, vars).map_or(body, Bytes::from),
            None => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::TemplateScope;
    use crate::transform::{RequestTransformConfig, ResponseTransformConfig};

    fn transforms(request: &str, response: &str) -> Arc<RouteTransforms> {
        let req: RequestTransformConfig = serde_yaml::from_str(request).unwrap();
        let resp: ResponseTransformConfig = serde_yaml::from_str(response).unwrap();
        let scope = TemplateScope {
            params: &[],
            claims: false,
        };
        Arc::new(
            RouteTransforms::compile(Some(&req), Some(&resp), &scope)
                .unwrap()
                .unwrap(),
        )
    }

    fn vars() -> TemplateVars<'static> {
        TemplateVars::for_test("rid-1")
    }

    fn json_request() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/x", None).unwrap();
        req.insert_header("content-type", "application/json")
            .unwrap();
        req
    }

    #[test]
    fn request_body_is_collected_then_rewritten_once() {
        let t = transforms(
            "headers: {set: {x-req: '{request_id}'}}\nbody: {set: {added: yes}}\n",
            "{}",
        );
        let mut ex = Exchange::default();
        let req = json_request();
        let prepared = ex.prepare(Some(&t), &vars(), &req, true).unwrap();
        assert!(!prepared.wants_identity);
        let mut upstream = req.clone();
        upstream.insert_header("content-length", "9").unwrap();
        ex.on_upstream_request(&mut upstream).unwrap();
        assert_eq!(upstream.headers["x-req"], "rid-1");
        assert!(upstream.headers.get("content-length").is_none());
        let mut chunk = Some(Bytes::from_static(b"{\"a\":"));
        ex.on_request_body(&mut chunk, false, &vars()).unwrap();
        assert_eq!(chunk, None, "held back until the body is complete");
        let mut last = Some(Bytes::from_static(b"1}"));
        ex.on_request_body(&mut last, true, &vars()).unwrap();
        assert_eq!(last.unwrap(), &b"{\"a\":1,\"added\":\"yes\"}"[..]);
    }

    #[test]
    fn invalid_json_request_body_is_refused() {
        let t = transforms("body: {remove: [a]}\n", "{}");
        let mut ex = Exchange::default();
        ex.prepare(Some(&t), &vars(), &json_request(), true)
            .unwrap();
        let mut body = Some(Bytes::from_static(b"not json"));
        assert_eq!(
            ex.on_request_body(&mut body, true, &vars()),
            Err(GatewayError::InvalidJsonBody)
        );
    }

    #[test]
    fn response_body_rewrite_is_armed_only_for_json_identity_bodies() {
        let t = transforms("{}", "body: {remove: [secret]}\n");
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        let mut ex = Exchange::default();
        assert!(
            ex.prepare(Some(&t), &vars(), &req, false)
                .unwrap()
                .wants_identity
        );
        let mut gz = ResponseHeader::build(200, None).unwrap();
        gz.insert_header("content-type", "application/json")
            .unwrap();
        gz.insert_header("content-encoding", "gzip").unwrap();
        ex.on_response_header(&req, &mut gz).unwrap();
        assert!(ex.response_body.is_none());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        resp.insert_header("content-length", "27").unwrap();
        ex.on_response_header(&req, &mut resp).unwrap();
        assert!(resp.headers.get("content-length").is_none());
        let mut body = Some(Bytes::from_static(b"{\"secret\":1,\"kept\":true}"));
        ex.on_response_body(&mut body, true, &vars());
        assert_eq!(body.unwrap(), &b"{\"kept\":true}"[..]);
    }

    #[test]
    fn routes_without_transforms_pass_everything_through() {
        let mut ex = Exchange::default();
        let req = json_request();
        assert_eq!(
            ex.prepare(None, &vars(), &req, true).unwrap(),
            Prepared::default()
        );
        let mut body = Some(Bytes::from_static(b"x"));
        ex.on_request_body(&mut body, true, &vars()).unwrap();
        assert_eq!(body.unwrap(), &b"x"[..]);
        assert_eq!(
            ex.on_query(Some(Cow::Borrowed("a=1")), vars).as_deref(),
            Some("a=1")
        );
    }
}
