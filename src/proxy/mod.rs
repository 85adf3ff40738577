//! The Pingora `ProxyHttp` implementation: the list of phases a request goes through.
//!
//! Each phase is a short ordered list of calls into stages that capabilities own: the edge
//! (`edge::Inbound`, `edge::BodyLimit`), the router (`RouteMatch`), auth (the identity), rate
//! limits (`rate_limit::Admission`), transforms (`transform::Exchange`) and the upstream
//! (`upstream::Attempts`). Per-request state lives in the typed [`RequestCtx`], one field per
//! stage. A new capability adds one field there and one line in each phase it acts in.

mod admit;
mod answer;
mod body;
mod ctx;
pub mod explain;
mod forward;
mod report;

use crate::aggregate::{Aggregate, CallContext};
use crate::cache::CacheUse;
use crate::edge;
use crate::errors::GatewayError;
use crate::header_edit::HeaderEdit;
use crate::upstream::breaker::Attempt;
use crate::upstream::{Failure, Retry};
use admit::{Admit, Answer};
use answer::{
    classify, close_if_draining, decorate, is_timeout, respond, respond_json, respond_script, write,
};
use async_trait::async_trait;
use bytes::Bytes;
pub use ctx::RequestCtx;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use std::time::Duration;

/// The gateway's proxy logic; one instance serves every listener.
pub struct Gateway {
    snapshot: crate::snapshot::SharedSnapshot,
    /// Client for aggregate sub-calls; created on first use, inside the running server (a
    /// daemon forks after startup, and connection pools must live in the child).
    connector: once_cell::sync::OnceCell<Connector>,
}

impl Gateway {
    pub fn new(snapshot: crate::snapshot::SharedSnapshot) -> Self {
        Gateway {
            snapshot,
            connector: once_cell::sync::OnceCell::new(),
        }
    }

    /// Writes an answer the gateway gave during admission.
    async fn answer(&self, session: &mut Session, ctx: &RequestCtx, a: Answer) -> Result<bool> {
        match a {
            Answer::Refused(e) => respond(session, ctx, &e).await,
            Answer::Json(body) => respond_json(session, ctx, body, &[]).await,
            Answer::Script(a) => respond_script(session, ctx, *a).await,
            Answer::Options => {
                let mut header = ResponseHeader::build(200, Some(3))?;
                header.insert_header(http::header::ALLOW, edge::protocol::ALLOW_ALL)?;
                header.insert_header(http::header::CONTENT_LENGTH, "0")?;
                ctx.inbound.decorate(&mut header, None, None);
                write(session, header, Bytes::new()).await?;
                Ok(true)
            }
            Answer::Preflight(mut header) => {
                // The preflight carries its own CORS headers and no rate-limit report.
                let security = ctx.target().map(|t| &*t.security);
                ctx.inbound.decorate(&mut header, security, None);
                write(session, *header, Bytes::new()).await?;
                Ok(true)
            }
        }
    }

    /// Runs an aggregate route's fan-out and writes its merged answer.
    async fn aggregate(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        agg: &Aggregate,
    ) -> Result<bool> {
        let (Some(snapshot), Some(route)) = (ctx.snapshot.as_ref(), ctx.route.as_ref()) else {
            return respond(session, ctx, &GatewayError::Internal).await;
        };
        let cx = CallContext {
            services: snapshot.services(),
            connector: self.connector.get_or_init(|| Connector::new(None)),
            params: &route.params,
            identity: ctx.identity.as_deref(),
            query: session.req_header().uri.query(),
            request_id: ctx.inbound.request_id(),
            client_ip: ctx.inbound.client_ip,
            trace: ctx.trace.calls(),
        };
        match agg.run(&cx).await.into_answer() {
            Ok((body, complete)) => {
                let body = ctx.exchange.rewrite_answer(body, &ctx.vars());
                let completed = if complete { "true" } else { "false" };
                respond_json(session, ctx, body, &[("x-gateway-completed", completed)]).await
            }
            Err(err) => respond(session, ctx, &err).await,
        }
    }

    /// Tells Pingora why the request failed in our own terms; `fail_to_proxy` renders it.
    fn fail(ctx: &mut RequestCtx, err: GatewayError, status: u16) -> Box<Error> {
        let msg = err.to_string();
        ctx.error = Some(err);
        Error::explain(ErrorType::HTTPStatus(status), msg)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Box<RequestCtx>;

    /// Creates the empty per-request context.
    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::default()
    }

    /// No downstream modules. Pingora's default adds a disabled compression module, which
    /// still costs a context and a filter call per request and phase; the gateway answers
    /// uncompressed until it compresses itself.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Admits the request (see `admit::admit` for the stage order) or answers it: every
    /// refusal as JSON, the login endpoint, CORS preflights, and aggregate routes.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        match admit::admit(&self.snapshot, session, ctx).await {
            Ok(Admit::Continue) => {}
            Ok(Admit::Answer(a)) | Err(a) => return self.answer(session, ctx, a).await,
        }
        match ctx.target().and_then(|t| t.aggregate.clone()) {
            Some(agg) => self.aggregate(session, ctx, &agg).await,
            None => Ok(false),
        }
    }

    /// Turns the response cache on for a request whose route caches and that may use it
    /// (decided at admission by `cache::CacheUse::plan`). Pingora then looks the key up and
    /// answers hits, stale entries and coalesced misses itself.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        ctx.cache.enable(&mut session.cache);
        Ok(())
    }

    /// The cache key planned at admission.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        ctx.cache.take_key()
    }

    /// Whether the upstream's answer is stored, and for how long.
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        Ok(ctx.cache.response_cacheable(resp))
    }

    /// Which variant of a stored answer the request wants, by the answer's `Vary`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        ctx.cache.variance(meta, req)
    }

    /// A stale entry stands in while it is refreshed and when the upstream fails (within the
    /// entry's own windows, which Pingora checks); the failure is then no longer ours to report.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        let serve = CacheUse::serve_stale(error);
        if serve && error.is_some() {
            ctx.error = None;
        }
        serve
    }

    /// Picks a healthy backend of the matched route's service, skipping ones already tried.
    /// Called again on every retry.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(pool), Some(target)) = (
            ctx::pool_of(&ctx.snapshot, &ctx.destination),
            ctx::target_of(&ctx.snapshot, &ctx.route),
        ) else {
            return Err(Self::fail(ctx, GatewayError::Internal, 500));
        };
        let key = forward::hash_key(pool.hash_key(), session.req_header(), ctx.inbound.client_ip);
        let picked = ctx.attempts.pick(pool, &key, target.websocket);
        match picked {
            Ok(mut peer) => {
                use pingora::upstreams::peer::Peer;
                ctx.grpc.on_attempt(&mut peer);
                ctx.trace
                    .begin_attempt(&pool.label, peer.address().as_inet().copied());
                Ok(Box::new(peer))
            }
            Err(err) => Err(Self::fail(ctx, err, 502)),
        }
    }

    /// Sets the upstream path and query, `Host`, the gateway's and the verified identity's
    /// headers, the forwarding headers, and the request header transforms. Pingora has already
    /// stripped hop-by-hop headers (its standard upstream request policy).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forward::set_uri(upstream, session.req_header(), ctx)?;
        forward::strip_client_copies(upstream, ctx)?;
        HeaderEdit::apply(upstream, |up| {
            forward::set_headers(up, session.req_header(), ctx)?;
            ctx.grpc.on_upstream_request(up)?;
            ctx.trace.on_upstream_request(up)
        })?;
        ctx.script.on_upstream_request(upstream)?;
        ctx.exchange.on_upstream_request(upstream)?;
        ctx.cache.on_upstream_request(upstream)?;
        if let Some(copy) = ctx.destination.mirror.as_mut() {
            copy.head = Some(Box::new(upstream.clone()));
        }
        Ok(())
    }

    /// Enforces the body size and deadline on streamed bodies, rewrites a JSON request body
    /// once it is complete, and then sends the mirror copy. Runs after the upstream got the
    /// headers, so refusals here close the upstream connection with an incomplete body.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let len = body.as_ref().map_or(0, Bytes::len);
        ctx.script.on_request_chunk(body, end_of_stream);
        let vars = ctx::vars_of(&ctx.route, &ctx.identity, &ctx.inbound);
        let checked = ctx
            .body
            .on_chunk(len, end_of_stream)
            .and_then(|()| ctx.grpc.on_request_body(body, end_of_stream))
            .and_then(|()| ctx.exchange.on_request_body(body, end_of_stream, &vars));
        match checked {
            Ok(()) => {
                report::copy_body_for_mirror(ctx, body.as_deref());
                if end_of_stream {
                    report::send_mirror(ctx);
                }
                Ok(())
            }
            Err(err) => {
                let status = err.status();
                // Blamed on the client: Pingora's HTTP/2 upstream path takes any other
                // error here for a failed upstream write, logs it, and keeps waiting for an
                // answer to a request whose body will never end.
                Err(Self::fail(ctx, err, status).into_down())
            }
        }
    }

    /// Checks the upstream's framing, reports the attempt to the backend's breaker, and strips
    /// hop-by-hop headers and the hidden ones (`Server`, `X-Powered-By`).
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if edge::protocol::is_interim(upstream_response) {
            return Ok(());
        }
        let Some(pool) = ctx::pool_of(&ctx.snapshot, &ctx.destination) else {
            return Ok(());
        };
        if let Err(reason) = edge::check_response_framing(upstream_response) {
            ctx.attempts.record(pool, Attempt::Failed);
            ctx.trace.end_attempt(Err("invalid_response"));
            log::warn!(
                "service {}: invalid upstream response ({reason}), answered 502 [request {}{}]",
                pool.name,
                ctx.inbound.request_id(),
                ctx.trace.log_suffix()
            );
            ctx.error = Some(GatewayError::UpstreamUnavailable);
            // An error here also keeps Pingora from pooling the connection.
            return Error::e_explain(ErrorType::InvalidHTTPHeader, reason).map_err(|e| e.into_up());
        }
        ctx.attempts
            .on_response_header(pool, upstream_response.status.as_u16());
        ctx.trace.end_attempt(Ok(upstream_response.status.as_u16()));
        edge::headers::strip_response_hop_by_hop(upstream_response);
        if let Some(t) = ctx.target() {
            t.security.hide(upstream_response);
        }
        Ok(())
    }

    /// Adds the request id, rate-limit headers, security headers, CORS and the cache status,
    /// applies the response transforms (headers, and arming the JSON body rewrite), then
    /// decides on compression. Runs for cached answers too.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if edge::protocol::is_interim(upstream_response) {
            return Ok(());
        }
        decorate(ctx, upstream_response);
        ctx.grpc.on_response_header(upstream_response);
        ctx.cache.on_response(&session.cache, upstream_response);
        close_if_draining(session);
        ctx.exchange
            .on_response_header(session.req_header(), upstream_response)?;
        if let Err(err) = ctx
            .script
            .on_response_header(session.req_header(), upstream_response)
        {
            return Err(Self::fail(ctx, err, 500));
        }
        answer::choose_encoding(session, upstream_response, ctx);
        Ok(())
    }

    /// The upstream's body has ended: the attempt no longer counts as in flight on its
    /// backend (`least_request`), though the client may still be receiving it.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.attempts.on_response_end();
        }
        Ok(None)
    }

    /// Rewrites a collected JSON response body at its end, then compresses what is sent.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let vars = ctx::vars_of(&ctx.route, &ctx.identity, &ctx.inbound);
        ctx.exchange.on_response_body(body, end_of_stream, &vars);
        if let Err(err) = ctx.script.on_response_body(body, end_of_stream) {
            // The head is sent: the client sees the answer cut short, never half of it.
            return Err(Self::fail(ctx, err, 500));
        }
        ctx.encoding.on_body(body, end_of_stream);
        ctx.grpc.on_response_body(body, end_of_stream);
        Ok(None)
    }

    /// Reads a gRPC call's status from the answer's trailers; a bridged gRPC-Web call gets
    /// them as its body's last frame (Pingora sends what this returns as body).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Bytes>> {
        Ok(ctx.grpc.on_response_trailers(trailers))
    }

    /// A connect failure is always safe to retry (nothing was sent); allow it on another
    /// backend while the service's retry budget lasts.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Pingora's name for the failure (`ConnectRefused`, `ReadTimedout`) goes on the span.
        ctx.trace.end_attempt(Err(e.etype().as_str()));
        if let Some(pool) = ctx.pool() {
            ctx.attempts.record(pool, Attempt::Failed);
            e.set_retry(ctx.attempts.retry_after_connect_failure(pool));
        }
        e
    }

    /// After connecting, the upstream stage decides whether another backend gets the request
    /// (`upstream::Attempts::retry_after_failure`); the backend's breaker hears of a failure
    /// that was the backend's.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let failure = Failure {
            refused_by_gateway: ctx.error.is_some(),
            idempotent: session.req_header().method.is_idempotent(),
            body_truncated: session.as_ref().retry_buffer_truncated(),
            backend_failed: e.esource() == &ErrorSource::Upstream && ctx.error.is_none(),
            timeout: is_timeout(&e),
        };
        ctx.trace.end_attempt(Err(e.etype().as_str()));
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(pool) = ctx.pool() else {
            e.set_retry(false);
            return e;
        };
        if failure.backend_failed {
            ctx.attempts.record(pool, Attempt::Failed);
        }
        match ctx.attempts.retry_after_failure(pool.retries, failure) {
            Retry::No => e.set_retry(false),
            Retry::Yes => e.set_retry(true),
            Retry::IfReused => e.retry.decide_reuse(client_reused),
        }
        // Pingora's own decision stands unless it is a retry the budget cannot pay for.
        if e.retry.retry() && !pool.retry_budget.try_retry() {
            e.set_retry(false);
        }
        e
    }

    /// Renders every fatal error as JSON, once; Pingora's default would send an empty body.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let err = ctx.error.take().or_else(|| classify(e));
        // The connection is not reused after a proxy failure (the request body may be half
        // read): say so, or a client may send its next request into a closing socket.
        session.set_keepalive(None);
        let code = match &err {
            Some(err) => {
                if session.response_written().is_none()
                    && let Err(write_err) = respond(session, ctx, err).await
                {
                    log::debug!("could not send error response: {write_err}");
                }
                err.status()
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Records the request's metrics and writes its access log line. Always runs, whatever
    /// answered the request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let outcome = report::Outcome::of(session, ctx);
        report::record_metrics(ctx, &outcome);
        ctx.grpc
            .record(session.req_header().uri.path(), outcome.grpc_status);
        ctx.cache.record(&session.cache);
        report::write_access_log(session, e, ctx, &outcome);
        report::finish_trace(session, ctx, &outcome);
    }

    /// How Pingora names the request in its error-log lines: with the request id and, when
    /// tracing is on, the trace id, so a logged failure can be found in the access log and in
    /// the traces.
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        format!(
            "{}, request {}{}",
            session.as_downstream().request_summary(),
            ctx.inbound.request_id(),
            ctx.trace.log_suffix()
        )
    }

    /// Client-caused failures (4xx, client disconnects) are not the operator's problem.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        matches!(e.etype(), ErrorType::HTTPStatus(c) if *c < 500)
            || e.esource() == &ErrorSource::Downstream
    }
}
