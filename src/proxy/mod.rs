//! The Pingora `ProxyHttp` implementation: the list of phases a request goes through.
//!
//! Each phase only orchestrates; the logic lives in the module that owns it (`edge`, `router`,
//! `auth`, `limits`, `transform`, `aggregate`, `upstream`, `errors`). Per-request state lives
//! in the typed [`RequestCtx`].

mod answer;

use crate::aggregate::{Aggregate, CallContext, Outcome};
use crate::auth::AuthFailure;
use crate::auth::jwt::Identity;
use crate::edge::headers::{Hop, forwarded_headers, strip_response_hop_by_hop};
use crate::edge::{self, NormalizedPath, cors};
use crate::errors::GatewayError;
use crate::limits::{Decision, KeyInputs, LimitReport};
use crate::router::{RequestView, RouteMatch};
use crate::snapshot::{RouteTarget, SharedSnapshot, Snapshot};
use crate::template::TemplateVars;
use crate::transform::PreparedHeaders;
use crate::transform::json::{BodyBuffer, Collected, is_json};
use crate::upstream::breaker::Attempt;
use crate::upstream::{HashKey, ServicePool};
use answer::{classify, decorate, is_timeout, respond, respond_json, write};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's proxy logic; one instance serves every listener.
pub struct Gateway {
    snapshot: SharedSnapshot,
    /// Client for aggregate sub-calls; created on first use, inside the running server (a
    /// daemon forks after startup, and connection pools must live in the child).
    connector: once_cell::sync::OnceCell<Connector>,
}

/// Everything one request carries between phases.
pub struct RequestCtx {
    /// The config this request runs against, loaded once in `request_filter`.
    snapshot: Option<Arc<Snapshot>>,
    /// Incoming well-formed `X-Request-Id` or a generated one.
    pub request_id: String,
    /// The matched route and the path to forward.
    pub route: Option<RouteMatch>,
    /// The verified caller, if the route authenticated one.
    pub identity: Option<Arc<Identity>>,
    /// The socket peer.
    pub peer_ip: Option<IpAddr>,
    /// The client address (the peer, or behind trusted proxies the forwarded one).
    pub client_ip: Option<IpAddr>,
    /// The request's `Origin`, for CORS.
    origin: Option<HeaderValue>,
    /// Whether the client connection is TLS (HSTS is only sent then).
    tls: bool,
    /// Rate-limit state reported on the response.
    limit_report: Option<LimitReport>,
    /// Concurrency slots held until the request ends (released on drop).
    _limit_guards: Vec<pingora_limits::inflight::Guard>,
    /// This request's rendered transform header values.
    prepared: Option<PreparedHeaders>,
    /// Request body collected for a JSON transform.
    request_body: Option<BodyBuffer>,
    /// Response body collected for a JSON transform.
    response_body: Option<BodyBuffer>,
    /// Request body bytes received so far (chunked bodies are checked against the limit).
    body_bytes: u64,
    /// Backends already tried for this request (skipped on retry).
    tried: Vec<SocketAddr>,
    /// A gateway-level error decided in an earlier phase, rendered by `fail_to_proxy`.
    error: Option<GatewayError>,
    /// The rate-limit outcome, for the access log.
    limit_outcome: Option<&'static str>,
    pub started: Instant,
    /// When the first backend was picked, and how long until its response header.
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
}

impl RequestCtx {
    fn target(&self) -> Option<&RouteTarget> {
        let snapshot = self.snapshot.as_ref()?;
        Some(&snapshot.routes.routes()[self.route.as_ref()?.route].target)
    }

    fn pool(&self) -> Option<&ServicePool> {
        Some(self.snapshot.as_ref()?.service(self.target()?.service?))
    }

    /// Reports the outcome of the attempt on the backend tried last to its circuit breaker.
    fn record_attempt(&self, outcome: Attempt) {
        if let (Some(pool), Some(addr)) = (self.pool(), self.tried.last()) {
            pool.record_attempt(addr, outcome);
        }
    }

    /// The values transform templates are rendered with.
    fn vars(&self) -> TemplateVars<'_> {
        TemplateVars {
            params: self.route.as_ref().map_or(&[][..], |r| &r.params[..]),
            identity: self.identity.as_deref(),
            request_id: &self.request_id,
            client_ip: self.client_ip,
        }
    }
}

impl Gateway {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        Gateway {
            snapshot,
            connector: once_cell::sync::OnceCell::new(),
        }
    }

    /// Pins the snapshot and records who is asking: request id, peer, client IP, origin.
    fn begin(&self, session: &Session, ctx: &mut RequestCtx) -> Arc<Snapshot> {
        let req = session.req_header();
        ctx.request_id = edge::request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        let snapshot = self.snapshot.load_full();
        ctx.snapshot = Some(snapshot.clone());
        ctx.peer_ip = peer_ip(session);
        ctx.client_ip = ctx.peer_ip.map(|peer| {
            let xff = req.headers.get_all("x-forwarded-for");
            snapshot
                .client_ip
                .resolve(peer, xff.iter().map(|v| v.as_bytes()))
        });
        ctx.origin = req.headers.get("origin").cloned();
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        snapshot
    }

    /// Verifies the caller against the route's auth policy.
    async fn authenticate(
        &self,
        snapshot: &Snapshot,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let (Some(auth), Some(target)) = (snapshot.auth.as_ref(), ctx.target()) else {
            return Ok(());
        };
        match auth.authenticate(req, &target.policy, ctx.client_ip).await {
            Ok(identity) => {
                ctx.identity = identity;
                Ok(())
            }
            Err(AuthFailure::NoToken) => {
                crate::metrics::auth_failure("no_token");
                Err(GatewayError::Unauthorized {
                    token_present: false,
                })
            }
            Err(AuthFailure::InvalidToken) => {
                crate::metrics::auth_failure("invalid_token");
                Err(GatewayError::Unauthorized {
                    token_present: true,
                })
            }
            Err(AuthFailure::Forbidden) => {
                crate::metrics::auth_failure("forbidden");
                Err(GatewayError::Forbidden)
            }
            Err(AuthFailure::TooManyInvalidTokens { retry_after }) => {
                crate::metrics::auth_failure("invalid_token_throttled");
                Err(GatewayError::TooManyInvalidTokens { retry_after })
            }
        }
    }

    /// Applies the route's rate-limit policies, keyed on verified identity or client IP.
    async fn rate_limit(
        &self,
        snapshot: &Snapshot,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let (Some(limiter), Some(target)) = (snapshot.limiter.as_ref(), ctx.target()) else {
            return Ok(());
        };
        if target.limits.is_empty() {
            return Ok(());
        }
        let inputs = KeyInputs {
            client_ip: ctx.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            identity: ctx.identity.as_deref(),
            headers: &req.headers,
            route: ctx.route.as_ref().map_or(0, |r| r.route),
        };
        match limiter.check(&target.limits, &inputs).await {
            Decision::Admit { report, guards } => {
                ctx.limit_report = report;
                ctx._limit_guards = guards;
                ctx.limit_outcome = Some("admitted");
                Ok(())
            }
            Decision::Refuse(report) => {
                target.metrics.rate_limited(&report.policy);
                ctx.limit_outcome = Some("refused");
                Err(GatewayError::RateLimited(Box::new(report)))
            }
            Decision::StoreDown => {
                ctx.limit_outcome = Some("store_down");
                Err(GatewayError::LimiterUnavailable)
            }
        }
    }

    /// Renders the route's transform values and decides which bodies get rewritten.
    fn prepare_transforms(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let Some(t) = ctx.target().and_then(|t| t.transforms.clone()) else {
            return Ok(());
        };
        let prepared = t
            .prepare(&ctx.vars())
            .map_err(|e| GatewayError::UnsafeHeaderValue { header: e.0 })?;
        ctx.prepared = Some(prepared);
        let has_body = !session.is_body_empty();
        let req = session.req_header();
        if let Some(ops) = &t.request_body
            && has_body
            && is_json(
                req.headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
            )
        {
            edge::check_content_length(req, ops.max_body as u64)?;
            ctx.request_body = Some(BodyBuffer::new(ops.max_body));
        }
        if t.response_body.is_some() {
            // Ask for identity encoding; an upstream that compresses anyway is decompressed.
            session.upstream_compression.adjust_decompression(true);
        }
        Ok(())
    }

    /// Everything `request_filter` decides before proxying; `Ok(true)` when it answered.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool, Answer> {
        let snapshot = self.begin(session, ctx);
        edge::check_framing(session.req_header(), || {
            let h1 = session.as_downstream().as_http1()?;
            Some(h1.get_headers_raw_bytes())
        })?;
        snapshot.limits.check_head(session.req_header())?;
        let path = edge::normalize_path(session.req_header().uri.path())
            .map_err(GatewayError::BadRequest)?;
        if let Some(login) = snapshot.auth.as_ref().and_then(|a| a.login.as_ref())
            && path.path == login.path
        {
            let body = crate::auth::login::serve(login, session, ctx.client_ip).await?;
            return Err(Answer::Json(body));
        }
        let preflight = cors::is_preflight(session.req_header());
        ctx.route = Some(match_route(
            &snapshot,
            session.req_header(),
            &path,
            preflight,
        )?);
        if preflight
            && let (Some(cors), Some(origin)) = (
                ctx.target().and_then(|t| t.cors.clone()),
                ctx.origin.clone(),
            )
        {
            return Err(Answer::Preflight(cors.preflight(&origin)));
        }
        if edge::is_websocket_upgrade(session.req_header())
            && !ctx.target().is_some_and(|t| t.websocket)
        {
            return Err(GatewayError::UpgradeNotAllowed.into());
        }
        let max_body = ctx.target().map_or(u64::MAX, |t| t.max_body);
        edge::check_content_length(session.req_header(), max_body)?;
        self.authenticate(&snapshot, session.req_header(), ctx)
            .await?;
        self.rate_limit(&snapshot, session.req_header(), ctx)
            .await?;
        self.prepare_transforms(session, ctx)?;
        Ok(false)
    }

    /// Runs an aggregate route and writes its answer.
    async fn aggregate(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        agg: &Aggregate,
    ) -> Result<bool> {
        let (Some(snapshot), Some(route)) = (ctx.snapshot.as_ref(), ctx.route.as_ref()) else {
            return respond(session, ctx, &GatewayError::Internal).await;
        };
        let connector = self.connector.get_or_init(|| Connector::new(None));
        let cx = CallContext {
            snapshot,
            connector,
            params: &route.params,
            identity: ctx.identity.as_deref(),
            query: session.req_header().uri.query(),
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
        };
        let err = match agg.run(&cx).await {
            Outcome::Merged { body, complete } => {
                let completed = if complete { "true" } else { "false" };
                let body = match ctx.target().and_then(|t| t.transforms.as_ref()) {
                    Some(t) => match &t.response_body {
                        Some(ops) => ops.apply(&body, &ctx.vars()).map_or(body, Bytes::from),
                        None => body,
                    },
                    None => body,
                };
                let extra = [("x-gateway-completed", completed)];
                return respond_json(session, ctx, body, &extra).await;
            }
            Outcome::CallFailed { call, reason } => {
                GatewayError::AggregateCallFailed { call, reason }
            }
            Outcome::Conflict {
                field,
                first,
                second,
            } => GatewayError::AggregateConflict {
                field,
                first,
                second,
            },
        };
        respond(session, ctx, &err).await
    }
}

/// How `admit` ends a request early.
enum Answer {
    Error(GatewayError),
    /// A 200 JSON body (the login endpoint).
    Json(Bytes),
    /// A CORS preflight answer.
    Preflight(ResponseHeader),
}

impl From<GatewayError> for Answer {
    fn from(e: GatewayError) -> Self {
        Answer::Error(e)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// Creates the empty per-request context.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: None,
            request_id: String::new(),
            route: None,
            identity: None,
            peer_ip: None,
            client_ip: None,
            origin: None,
            tls: false,
            limit_report: None,
            _limit_guards: Vec::new(),
            prepared: None,
            request_body: None,
            response_body: None,
            body_bytes: 0,
            tried: Vec::new(),
            error: None,
            limit_outcome: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_time: None,
        }
    }

    /// Pins the config snapshot, checks sizes, normalizes the path, serves the login endpoint,
    /// matches the route once, answers CORS preflights, then authenticates, rate-limits and
    /// prepares transforms. Every refusal is answered here as JSON; aggregate routes are
    /// answered here too.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(_) => {}
            Err(Answer::Error(e)) => return respond(session, ctx, &e).await,
            Err(Answer::Json(body)) => return respond_json(session, ctx, body, &[]).await,
            Err(Answer::Preflight(mut header)) => {
                let _ = header.insert_header("x-request-id", ctx.request_id.as_str());
                if let Some(t) = ctx.target() {
                    t.security.apply(&mut header, ctx.tls);
                }
                write(session, header, Bytes::new()).await?;
                return Ok(true);
            }
        }
        if let Some(agg) = ctx.target().and_then(|t| t.aggregate.clone()) {
            return self.aggregate(session, ctx, &agg).await;
        }
        Ok(false)
    }

    /// Picks a healthy backend of the matched route's service, skipping ones already tried.
    /// Called again on every retry.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let Some(pool) = ctx.pool() else {
            ctx.error = Some(GatewayError::Internal);
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let key = hash_key(pool.hash_key(), session, ctx.client_ip);
        match pool.select(&key, &ctx.tried) {
            Some(backend) => {
                let upgrades = ctx.target().is_some_and(|t| t.websocket);
                let peer = pool.peer(&backend, upgrades);
                ctx.tried.push(backend.addr);
                Ok(Box::new(peer))
            }
            None => {
                let err = if ctx.tried.is_empty() {
                    GatewayError::NoHealthyBackend {
                        service: pool.name.clone(),
                    }
                } else {
                    GatewayError::UpstreamUnavailable
                };
                let msg = err.to_string();
                ctx.error = Some(err);
                Error::e_explain(ErrorType::HTTPStatus(502), msg)
            }
        }
    }

    /// Rewrites the path and query, sets the forwarding headers, replaces client-sent identity
    /// headers with the verified identity's, and applies the request header transforms.
    /// Pingora has already stripped hop-by-hop headers (its standard upstream request policy).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(route), Some(pool), Some(target), Some(snapshot)) = (
            ctx.route.as_ref(),
            ctx.pool(),
            ctx.target(),
            ctx.snapshot.as_ref(),
        ) else {
            return Ok(());
        };
        let req = session.req_header();
        let mut query = req.uri.query().map(|q| match &snapshot.auth {
            Some(auth) => auth.strip_query(q),
            None => Cow::Borrowed(q),
        });
        if let Some(ops) = target.transforms.as_ref().and_then(|t| t.query.as_ref()) {
            query = Some(Cow::Owned(
                ops.apply(query.as_deref().unwrap_or(""), &ctx.vars()),
            ));
        }
        let uri = match query {
            Some(q) if !q.is_empty() => Cow::Owned(format!("{}?{q}", route.upstream_path)),
            _ => Cow::Borrowed(route.upstream_path.as_str()),
        };
        let uri = uri
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewritten uri", e))?;
        upstream.set_uri(uri);
        // An absolute-form target was routed on its authority: forward that, not `Host`.
        let host = match req.uri.authority() {
            Some(a) => {
                let h = HeaderValue::from_str(a.as_str())
                    .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "authority", e))?;
                upstream.insert_header(http::header::HOST, h.clone())?;
                Some(h)
            }
            None => req.headers.get(http::header::HOST).cloned(),
        };
        upstream.insert_header("x-gateway-route", pool.name.as_str())?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(auth) = &snapshot.auth {
            auth.apply_upstream(
                upstream,
                ctx.identity.as_deref(),
                target.policy.forward_authorization,
            )?;
        }
        let hop = Hop {
            peer: ctx.peer_ip,
            peer_trusted: ctx
                .peer_ip
                .is_some_and(|p| snapshot.client_ip.is_trusted(&p)),
            client_ip: ctx.client_ip,
            host: host.as_ref(),
            proto: if ctx.tls { "https" } else { "http" },
        };
        forwarded_headers(upstream, &hop)?;
        if let (Some(t), Some(p)) = (target.transforms.as_ref(), ctx.prepared.as_ref()) {
            t.apply_request_headers(upstream, p);
            if ctx.request_body.is_some() {
                // The rewritten body's length is unknown until it is complete: Pingora sends
                // it chunked.
                upstream.remove_header(&http::header::CONTENT_LENGTH);
            }
            if t.response_body.is_some() {
                upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
            }
        }
        Ok(())
    }

    /// Enforces the body limit on streamed bodies and rewrites a JSON request body once it is
    /// complete. Runs after the upstream got the headers, so refusals here close the upstream
    /// connection with an incomplete body.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora bounds each read (`client.body_timeout`); this bounds the whole body, so a
        // client trickling bytes cannot hold the connection and the upstream request forever.
        if !end_of_stream
            && let Some(snapshot) = ctx.snapshot.as_ref()
            && ctx.started.elapsed() > snapshot.client.body_deadline
        {
            ctx.error = Some(GatewayError::RequestTimeout);
            return Error::e_explain(ErrorType::HTTPStatus(408), "request body deadline passed");
        }
        if let Some(chunk) = body.as_ref() {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.target().map_or(u64::MAX, |t| t.max_body) {
                ctx.error = Some(GatewayError::PayloadTooLarge);
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limit");
            }
        }
        let Some(buffer) = ctx.request_body.as_mut() else {
            return Ok(());
        };
        match buffer.push(body.as_ref(), end_of_stream) {
            Collected::Pending => *body = None,
            Collected::PassThrough => {}
            Collected::Overflow(_) => {
                ctx.error = Some(GatewayError::PayloadTooLarge);
                return Error::e_explain(ErrorType::HTTPStatus(413), "body over transform cap");
            }
            Collected::Complete(all) => {
                let ops = ctx.target().and_then(|t| t.transforms.clone());
                let ops = ops.as_ref().and_then(|t| t.request_body.as_ref());
                match ops.map(|o| o.apply(&all, &ctx.vars())) {
                    Some(Ok(rewritten)) => *body = Some(Bytes::from(rewritten)),
                    Some(Err(_)) => {
                        ctx.error = Some(GatewayError::InvalidJsonBody);
                        return Error::e_explain(ErrorType::HTTPStatus(400), "invalid JSON body");
                    }
                    None => *body = Some(all),
                }
            }
        }
        Ok(())
    }

    /// Strips hop-by-hop headers and the hidden ones (`Server`, `X-Powered-By`) from the
    /// upstream's response.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        if let Err(reason) = edge::check_response_framing(upstream_response) {
            ctx.record_attempt(Attempt::Failed);
            ctx.error = Some(GatewayError::UpstreamUnavailable);
            let service = ctx.pool().map_or("", |p| p.name.as_str());
            log::warn!("service {service}: invalid upstream response ({reason}), answered 502");
            // An error here also keeps Pingora from pooling the connection.
            return Error::e_explain(ErrorType::InvalidHTTPHeader, reason).map_err(|e| e.into_up());
        }
        let overloaded = matches!(upstream_response.status.as_u16(), 502..=504);
        ctx.record_attempt(if overloaded {
            Attempt::Failed
        } else {
            Attempt::Succeeded
        });
        strip_response_hop_by_hop(upstream_response);
        if let Some(t) = ctx.target() {
            t.security.hide(upstream_response);
        }
        Ok(())
    }

    /// Adds the request id, rate-limit headers, security headers and CORS, applies response
    /// header transforms, and arms the JSON body rewrite (dropping `Content-Length`, since
    /// the body filter runs after the header is sent).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        decorate(ctx, upstream_response);
        close_if_draining(session);
        let Some(t) = ctx.target().and_then(|t| t.transforms.clone()) else {
            return Ok(());
        };
        if let Some(p) = ctx.prepared.as_ref() {
            t.apply_response_headers(upstream_response, p);
        }
        if let Some(ops) = &t.response_body
            && body_rewritable(session.req_header(), upstream_response, ops.max_body)
        {
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            ctx.response_body = Some(BodyBuffer::new(ops.max_body));
        }
        Ok(())
    }

    /// Collects a JSON response body and emits the rewritten body at end of stream; bodies
    /// over the cap or not valid JSON objects pass through unchanged.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(buffer) = ctx.response_body.as_mut() else {
            return Ok(None);
        };
        match buffer.push(body.as_ref(), end_of_stream) {
            Collected::Pending => *body = None,
            Collected::PassThrough => {}
            Collected::Overflow(all) => *body = Some(all),
            Collected::Complete(all) => {
                let t = ctx.target().and_then(|t| t.transforms.clone());
                let ops = t.as_ref().and_then(|t| t.response_body.as_ref());
                *body = Some(match ops.map(|o| o.apply(&all, &ctx.vars())) {
                    Some(Ok(rewritten)) => Bytes::from(rewritten),
                    _ => all,
                });
            }
        }
        Ok(None)
    }

    /// A connect failure is always safe to retry (nothing was sent); allow it on another backend
    /// while the service's retry budget lasts.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.record_attempt(Attempt::Failed);
        let budget = ctx.pool().map_or(0, |p| p.retries);
        e.set_retry(ctx.tried.len() <= budget);
        e
    }

    /// After connecting, retry only idempotent requests whose body can be replayed, and only
    /// within the retry budget; a POST that reached the upstream is never sent twice, and a
    /// request the gateway itself refused (body limit, bad JSON) is never retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // The backend failed (not the client, not a refusal of ours): tell its breaker.
        let backend_failed = e.esource() == &ErrorSource::Upstream && ctx.error.is_none();
        if backend_failed {
            ctx.record_attempt(Attempt::Failed);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let budget = ctx.pool().map_or(0, |p| p.retries);
        if ctx.error.is_some()
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.tried.len() > budget
        {
            e.set_retry(false);
        } else if backend_failed && !is_timeout(&e) {
            // The backend broke the connection before answering (crash, reset, garbage): an
            // idempotent request goes to another backend, as nginx's `proxy_next_upstream
            // error` does. Timeouts are not retried: a slow service would get the load twice.
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Renders every fatal error as JSON, once; Pingora's default would send an empty body.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
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
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let target = ctx.target();
        let metrics = target.map_or(&*crate::metrics::UNMATCHED, |t| &t.metrics);
        metrics.observe(status, elapsed.as_secs_f64());
        let pool = ctx.pool();
        if let (Some(pool), Some(t)) = (pool, ctx.upstream_time) {
            pool.upstream_latency.observe(t.as_secs_f64());
        }
        let Some(snapshot) = ctx.snapshot.as_ref().filter(|s| s.access_log.enabled) else {
            return;
        };
        let req = session.req_header();
        let route = ctx
            .route
            .as_ref()
            .map(|m| snapshot.routes.routes()[m.route].name.as_str());
        let service = match (pool, target) {
            (Some(p), _) => Some(p.name.as_str()),
            (None, Some(t)) if t.aggregate.is_some() => Some("aggregate"),
            _ => None,
        };
        let record = crate::access_log::AccessRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            path: req.uri.path(),
            route,
            service,
            upstream: ctx.tried.last().map(|a| a.to_string()),
            status,
            bytes: session.body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: ctx.upstream_time.map(|t| t.as_secs_f64() * 1000.0),
            user: ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
            rate_limit: ctx.limit_outcome,
            error: e.map(|e| e.etype().as_str().to_string()),
        };
        crate::access_log::write(&snapshot.access_log, &record);
    }

    /// Client-caused failures (4xx, client disconnects) are not the operator's problem.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        matches!(e.etype(), ErrorType::HTTPStatus(c) if *c < 500)
            || e.esource() == &ErrorSource::Downstream
    }
}

/// While the process drains (graceful upgrade or shutdown), answers carry `Connection: close`,
/// so clients reconnect (to the new process) instead of reusing a connection that is about to
/// be dropped between two requests.
pub(crate) fn close_if_draining(session: &mut Session) {
    if crate::reloader::is_draining() || session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
}

/// Whether a response body can be collected and rewritten: JSON, not compressed (Pingora
/// decompressed it if the upstream ignored our identity request), has a body, and a declared
/// length within the cap.
fn body_rewritable(req: &RequestHeader, resp: &ResponseHeader, cap: usize) -> bool {
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

/// Matches the route once. A CORS preflight is matched with the method it asks about.
fn match_route(
    snapshot: &Snapshot,
    req: &RequestHeader,
    path: &NormalizedPath,
    preflight: bool,
) -> Result<RouteMatch, GatewayError> {
    let segments = path.segments();
    let asked = preflight
        .then(|| req.headers.get("access-control-request-method"))
        .flatten()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let method = asked.unwrap_or_else(|| req.method.clone());
    let host = edge::request_host(
        req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
        req.uri.host(),
    );
    snapshot.routes.match_request(&RequestView {
        segments: &segments,
        trailing_slash: path.trailing_slash,
        host: &host,
        method: &method,
    })
}

fn hash_key<'a>(
    key: Option<&HashKey>,
    session: &'a Session,
    client: Option<IpAddr>,
) -> Cow<'a, [u8]> {
    match key {
        None => Cow::Borrowed(&[]),
        Some(HashKey::ClientIp) => Cow::Owned(
            client
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
        ),
        Some(HashKey::Path) => Cow::Borrowed(session.req_header().uri.path().as_bytes()),
        Some(HashKey::Header(name)) => Cow::Borrowed(
            session
                .req_header()
                .headers
                .get(name)
                .map_or(&[][..], |v| v.as_bytes()),
        ),
    }
}

/// The socket peer's address.
fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
