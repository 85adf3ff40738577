//! The Pingora `ProxyHttp` implementation: the list of phases a request goes through.
//!
//! Each phase only orchestrates; the logic lives in the module that owns it (`edge`, `router`,
//! `upstream`, `errors`). Per-request state lives in the typed [`RequestCtx`].

use crate::aggregate::{Aggregate, CallContext, Outcome};
use crate::auth::AuthFailure;
use crate::auth::jwt::Identity;
use crate::edge::{self, NormalizedPath};
use crate::errors::GatewayError;
use crate::limits::{Decision, KeyInputs, LimitReport};
use crate::router::{RequestView, RouteMatch};
use crate::snapshot::{RouteTarget, SharedSnapshot, Snapshot};
use crate::upstream::{HashKey, ServicePool};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The gateway's proxy logic; one instance serves every listener.
pub struct Gateway {
    snapshot: SharedSnapshot,
    /// Client for aggregate sub-calls; created on first use, inside the running server (a
    /// daemon forks after startup, and connection pools must live in the child).
    connector: once_cell::sync::OnceCell<Connector>,
}

impl Gateway {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        Gateway {
            snapshot,
            connector: once_cell::sync::OnceCell::new(),
        }
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
        match agg.run(&cx).await {
            Outcome::Merged { body, complete } => {
                let completed = if complete { "true" } else { "false" };
                respond_json(session, ctx, body, &[("x-gateway-completed", completed)]).await
            }
            Outcome::CallFailed { call, reason } => {
                respond(
                    session,
                    ctx,
                    &GatewayError::AggregateCallFailed { call, reason },
                )
                .await
            }
            Outcome::Conflict {
                field,
                first,
                second,
            } => {
                let err = GatewayError::AggregateConflict {
                    field,
                    first,
                    second,
                };
                respond(session, ctx, &err).await
            }
        }
    }
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
    /// The client address (the peer, or behind trusted proxies the forwarded one).
    pub client_ip: Option<IpAddr>,
    /// Rate-limit state reported on the response.
    limit_report: Option<LimitReport>,
    /// Concurrency slots held until the request ends (released on drop).
    _limit_guards: Vec<pingora_limits::inflight::Guard>,
    /// Backends already tried for this request (skipped on retry).
    tried: Vec<SocketAddr>,
    /// A gateway-level error decided in an earlier phase, rendered by `fail_to_proxy`.
    error: Option<GatewayError>,
    pub started: Instant,
}

impl RequestCtx {
    fn target(&self) -> Option<&RouteTarget> {
        let snapshot = self.snapshot.as_ref()?;
        Some(&snapshot.routes.routes()[self.route.as_ref()?.route].target)
    }

    fn pool(&self) -> Option<&ServicePool> {
        Some(self.snapshot.as_ref()?.service(self.target()?.service?))
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
            client_ip: None,
            limit_report: None,
            _limit_guards: Vec::new(),
            tried: Vec::new(),
            error: None,
            started: Instant::now(),
        }
    }

    /// Pins the config snapshot, assigns the request id, normalizes the path, serves the login
    /// endpoint, matches the route once, then authenticates the caller against the route's
    /// policy. Every refusal (400/401/403/404/405) is answered here as JSON.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = edge::request_id(
            session
                .req_header()
                .headers
                .get("x-request-id")
                .map(|v| v.as_bytes()),
        );
        let snapshot = self.snapshot.load_full();
        ctx.snapshot = Some(snapshot.clone());
        ctx.client_ip = peer_ip(session).map(|peer| {
            let xff = session.req_header().headers.get_all("x-forwarded-for");
            snapshot
                .client_ip
                .resolve(peer, xff.iter().map(|v| v.as_bytes()))
        });
        let path = match edge::normalize_path(session.req_header().uri.path()) {
            Ok(p) => p,
            Err(why) => return respond(session, ctx, &GatewayError::BadRequest(why)).await,
        };
        if let Some(login) = snapshot.auth.as_ref().and_then(|a| a.login.as_ref())
            && path.path == login.path
        {
            let answer = crate::auth::login::serve(login, session, ctx.client_ip).await;
            return match answer {
                Ok(body) => respond_json(session, ctx, body, &[]).await,
                Err(e) => respond(session, ctx, &e).await,
            };
        }
        match match_route(&snapshot, session.req_header(), &path) {
            Ok(m) => ctx.route = Some(m),
            Err(e) => return respond(session, ctx, &e).await,
        }
        if let (Some(auth), Some(target)) = (snapshot.auth.as_ref(), ctx.target()) {
            match auth
                .authenticate(session.req_header(), &target.policy)
                .await
            {
                Ok(identity) => ctx.identity = identity,
                Err(failure) => {
                    let err = match failure {
                        AuthFailure::NoToken => GatewayError::Unauthorized {
                            token_present: false,
                        },
                        AuthFailure::InvalidToken => GatewayError::Unauthorized {
                            token_present: true,
                        },
                        AuthFailure::Forbidden => GatewayError::Forbidden,
                    };
                    return respond(session, ctx, &err).await;
                }
            }
        }
        if let (Some(limiter), Some(target)) = (snapshot.limiter.as_ref(), ctx.target())
            && !target.limits.is_empty()
        {
            let inputs = KeyInputs {
                client_ip: ctx.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                identity: ctx.identity.as_deref(),
                headers: &session.req_header().headers,
                route: ctx.route.as_ref().map_or(0, |r| r.route),
            };
            match limiter.check(&target.limits, &inputs).await {
                Decision::Admit { report, guards } => {
                    ctx.limit_report = report;
                    ctx._limit_guards = guards;
                }
                Decision::Refuse(report) => {
                    let err = GatewayError::RateLimited(Box::new(report));
                    return respond(session, ctx, &err).await;
                }
                Decision::StoreDown => {
                    return respond(session, ctx, &GatewayError::LimiterUnavailable).await;
                }
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
        let Some(pool) = ctx.pool() else {
            ctx.error = Some(GatewayError::Internal);
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let key = hash_key(pool.hash_key(), session, ctx.client_ip);
        match pool.select(&key, &ctx.tried) {
            Some(backend) => {
                let peer = pool.peer(&backend);
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

    /// Rewrites the path, sets the forwarding headers, and replaces client-sent identity
    /// headers with the verified identity's.
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
        let query = session
            .req_header()
            .uri
            .query()
            .map(|q| match &snapshot.auth {
                Some(auth) => auth.strip_query(q),
                None => Cow::Borrowed(q),
            });
        let uri = match query {
            Some(q) if !q.is_empty() => Cow::Owned(format!("{}?{q}", route.upstream_path)),
            _ => Cow::Borrowed(route.upstream_path.as_str()),
        };
        let uri = uri
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewritten uri", e))?;
        upstream.set_uri(uri);
        upstream.insert_header("x-gateway-route", pool.name.as_str())?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(auth) = &snapshot.auth {
            auth.apply_upstream(
                upstream,
                ctx.identity.as_deref(),
                target.policy.forward_authorization,
            )?;
        }
        forwarded_headers(session, upstream)
    }

    /// Adds the request id to every proxied response.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(report) = &ctx.limit_report {
            report.write(upstream_response);
        }
        Ok(())
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
        let budget = ctx.pool().map_or(0, |p| p.retries);
        e.set_retry(ctx.tried.len() <= budget);
        e
    }

    /// After connecting, retry only idempotent requests whose body can be replayed, and only
    /// within the retry budget; a POST that reached the upstream is never sent twice.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let budget = ctx.pool().map_or(0, |p| p.retries);
        if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.tried.len() > budget
        {
            e.set_retry(false);
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
        let code = match &err {
            Some(err) => {
                if session.response_written().is_none() {
                    let (header, body) = err.to_response(&ctx.request_id);
                    if let Err(write_err) = write(session, header, body).await {
                        log::debug!("could not send error response: {write_err}");
                    }
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

    /// Client-caused failures (4xx, client disconnects) are not the operator's problem.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        matches!(e.etype(), ErrorType::HTTPStatus(c) if *c < 500)
            || e.esource() == &ErrorSource::Downstream
    }
}

fn match_route(
    snapshot: &Snapshot,
    req: &RequestHeader,
    path: &NormalizedPath,
) -> Result<RouteMatch, GatewayError> {
    let segments = path.segments();
    let host = edge::request_host(
        req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
        req.uri.host(),
    );
    snapshot.routes.match_request(&RequestView {
        segments: &segments,
        trailing_slash: path.trailing_slash,
        host: &host,
        method: &req.method,
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

/// `X-Forwarded-For` gets the peer appended; `X-Forwarded-Proto`/`-Host` describe the hop the
/// client made to us, so client-sent values are replaced.
fn forwarded_headers(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    if let Some(ip) = peer_ip(session) {
        let xff = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        upstream.insert_header("x-forwarded-for", xff)?;
    }
    upstream.insert_header("x-forwarded-proto", "http")?;
    let host = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
        });
    match host {
        Some(h) => upstream.insert_header("x-forwarded-host", h)?,
        None => {
            upstream.remove_header("x-forwarded-host");
        }
    }
    Ok(())
}

/// Maps a Pingora error to what the client should see; `None` when the client is already gone.
fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(400), _) => Some(GatewayError::BadRequest("malformed request")),
        (HTTPStatus(504), _) => Some(GatewayError::UpstreamTimeout),
        (HTTPStatus(c), _) if (500..600).contains(c) => Some(GatewayError::UpstreamUnavailable),
        (HTTPStatus(_), _) => Some(GatewayError::Internal),
        (
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ErrorSource::Upstream,
        ) => Some(GatewayError::UpstreamTimeout),
        (_, ErrorSource::Upstream) => Some(GatewayError::UpstreamUnavailable),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => None,
        (ReadTimedout, ErrorSource::Downstream) => None,
        (_, ErrorSource::Downstream) => Some(GatewayError::BadRequest("malformed request")),
        _ => Some(GatewayError::Internal),
    }
}

/// Writes a gateway-generated error and tells Pingora the request is answered.
async fn respond(session: &mut Session, ctx: &RequestCtx, err: &GatewayError) -> Result<bool> {
    let (header, body) = err.to_response(&ctx.request_id);
    write(session, header, body).await?;
    Ok(true)
}

/// Writes a 200 JSON answer produced by the gateway itself (login, aggregates).
async fn respond_json(
    session: &mut Session,
    ctx: &RequestCtx,
    body: Bytes,
    extra: &[(&'static str, &str)],
) -> Result<bool> {
    let mut header = ResponseHeader::build(200, Some(8))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("x-request-id", ctx.request_id.as_str())?;
    for (name, value) in extra {
        header.insert_header(*name, *value)?;
    }
    if let Some(report) = &ctx.limit_report {
        report.write(&mut header);
    }
    write(session, header, body).await?;
    Ok(true)
}

async fn write(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
