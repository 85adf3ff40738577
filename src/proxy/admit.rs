//! `request_filter`'s stage list: everything decided before proxying, in order.

use super::ctx::RequestCtx;
use crate::cache::CacheUse;
use crate::edge::protocol::Protocol;
use crate::edge::{self, NormalizedPath, cors};
use crate::errors::GatewayError;
use crate::rate_limit::KeyInputs;
use crate::router::{RequestView, RouteMatch};
use crate::script::{BodyNeed, RequestInput, Step};
use crate::snapshot::Snapshot;
use crate::traffic::{Destination, MirrorCopy, SplitInputs};
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// How admission ends: the request goes on to its upstream (or fan-out), or the gateway
/// answers it itself.
pub(super) enum Admit {
    Continue,
    Answer(Answer),
}

/// An answer the gateway gives itself during admission.
pub(super) enum Answer {
    /// A refusal, rendered as JSON.
    Refused(GatewayError),
    /// A 200 JSON body (the login endpoint).
    Json(Bytes),
    /// A CORS preflight answer.
    Preflight(Box<ResponseHeader>),
    /// `OPTIONS *`, or `OPTIONS` with `Max-Forwards: 0`: the gateway answers it.
    Options,
    /// The route's script answered (`respond(status, body)`).
    Script(Box<crate::script::ScriptAnswer>),
}

impl From<GatewayError> for Answer {
    fn from(e: GatewayError) -> Self {
        Answer::Refused(e)
    }
}

/// Runs the admission stages: pin the snapshot and read the caller, check framing and sizes,
/// normalize the path, serve the login endpoint, match the route, answer CORS preflights, then
/// authenticate, rate-limit and prepare transforms.
pub(super) async fn admit(
    shared: &crate::snapshot::SharedSnapshot,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Admit, Answer> {
    let snapshot = shared.load_full();
    ctx.snapshot = Some(snapshot.clone());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    ctx.inbound
        .read(session.req_header(), peer, tls, &snapshot.client_ip);
    ctx.grpc.detect(session.req_header());
    ctx.body
        .set_deadline(ctx.inbound.started + snapshot.client.body_deadline);
    // HTTP/1 connections get it in the connection layer; an HTTP/2 stream whose client never
    // opens its flow-control window would otherwise hold its response forever.
    if session.as_downstream().is_http2() {
        session
            .as_downstream_mut()
            .set_write_timeout(Some(snapshot.client.send_timeout));
    }
    if edge::protocol::holds_interim_answers(session.req_header())
        && let ServerSession::H1(h1) = session.as_downstream_mut()
    {
        h1.set_ignore_info_resp(true);
    }
    let peer_trusted = peer.is_some_and(|p| snapshot.client_ip.is_trusted(&p));
    ctx.trace.start(
        snapshot.tracing.as_ref(),
        session.req_header(),
        peer_trusted,
    );
    check_network(snapshot.ip_restriction.as_ref(), ctx)?;
    edge::check_framing(session.req_header(), || {
        let h1 = session.as_downstream().as_http1()?;
        Some(h1.get_headers_raw_bytes())
    })?;
    snapshot.sizes.check_head(session.req_header())?;
    if edge::protocol::check_request(session.req_header())? == Protocol::AnswerOptions {
        return Ok(Admit::Answer(Answer::Options));
    }
    let path =
        edge::normalize_path(session.req_header().uri.path()).map_err(GatewayError::BadRequest)?;
    if let Some(login) = snapshot.auth().and_then(|a| a.login.as_ref())
        && path.path == login.path
    {
        let body = crate::auth::login::serve(login, session, ctx.inbound.client_ip).await?;
        return Ok(Admit::Answer(Answer::Json(body)));
    }
    let preflight = cors::is_preflight(session.req_header());
    ctx.route = Some(match_route(
        &snapshot,
        session.req_header(),
        &path,
        preflight,
    )?);
    check_network(ctx.target().and_then(|t| t.ip_restriction.as_ref()), ctx)?;
    let Some(target) = ctx.target() else {
        return Err(GatewayError::Internal.into());
    };
    if preflight
        && let (Some(cors), Some(origin)) = (target.cors.as_ref(), ctx.inbound.origin.as_ref())
    {
        return Ok(Admit::Answer(Answer::Preflight(Box::new(
            cors.preflight(origin),
        ))));
    }
    if edge::is_websocket_upgrade(session.req_header()) && !target.websocket {
        return Err(GatewayError::UpgradeNotAllowed.into());
    }
    // Borrowed through the two fields it comes from, so that the gRPC and body stages can be
    // updated while it is held.
    let target = super::ctx::target_of(&ctx.snapshot, &ctx.route).ok_or(GatewayError::Internal)?;
    ctx.grpc
        .admit(&target.grpc, session.req_header(), ctx.inbound.started)?;
    if ctx.grpc.wire().is_some() {
        // A call may stream for as long as it lasts: its messages are limited, not its body.
        ctx.body.set_stream();
    } else {
        edge::check_content_length(session.req_header(), target.max_body)?;
        ctx.body.set_max(target.max_body);
    }
    authenticate(&snapshot, session.req_header(), ctx).await?;
    choose_destination(session.req_header(), ctx);
    rate_limit(&snapshot, session.req_header(), ctx).await?;
    finish_route(&snapshot, ctx)?;
    if let Step::Answer(answer) = script_request(session.req_header(), &path, ctx)? {
        return Ok(Admit::Answer(Answer::Script(answer)));
    }
    ctx.cache = CacheUse::plan(
        ctx.target().and_then(|t| t.cache.as_ref()),
        session.req_header(),
        &path,
        ctx.inbound.tls,
        ctx.identity.as_deref(),
        ctx.pool().map_or("", |p| &p.name),
    );
    let transforms = ctx.target().and_then(|t| t.transforms.clone());
    // Only a route with transforms asks: the check is not free.
    let has_body = transforms.is_some() && !session.is_body_empty();
    let vars = super::ctx::vars_of(&ctx.route, &ctx.identity, &ctx.inbound);
    let prepared = ctx
        .exchange
        .prepare(transforms.as_ref(), &vars, session.req_header(), has_body);
    if prepared?.wants_identity || ctx.script.wants_identity() {
        session.upstream_compression.adjust_decompression(true);
    }
    if let Step::Answer(answer) = script_request_body(session, ctx).await? {
        return Ok(Admit::Answer(Answer::Script(answer)));
    }
    Ok(Admit::Continue)
}

/// Starts the route's script stage and runs `on_request`; a path it sets replaces the
/// route's upstream path.
fn script_request(
    req: &RequestHeader,
    path: &NormalizedPath<'_>,
    ctx: &mut RequestCtx,
) -> Result<Step, GatewayError> {
    let (Some(script), Some(route)) = (
        ctx.target().and_then(|t| t.script.clone()),
        ctx.route.as_ref(),
    ) else {
        return Ok(Step::Continue);
    };
    let input = RequestInput {
        req,
        path: &path.path,
        params: &route.params,
        upstream_path: &route.upstream_path,
        identity: ctx.identity.as_ref(),
        request_id: ctx.inbound.request_id(),
        client_ip: ctx.inbound.client_ip,
    };
    ctx.script.start(&script, input);
    let step = ctx.script.on_request()?;
    if let (Some(p), Some(route)) = (ctx.script.upstream_path(), ctx.route.as_mut()) {
        route.upstream_path = p;
    }
    Ok(step)
}

/// Runs `on_request_body` on a JSON body read whole now, before any upstream is chosen, so
/// a script that refuses it forwards nothing.
async fn script_request_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Step, GatewayError> {
    let has_body = ctx.script.is_started() && !session.is_body_empty();
    let BodyNeed::Read(max) = ctx.script.request_body_need(session.req_header(), has_body) else {
        return Ok(Step::Continue);
    };
    let body = super::body::read_whole(session, max, ctx.body.deadline()).await?;
    ctx.script.on_request_body(&body)
}

/// Refuses a client address an `ip_restriction` list does not admit.
fn check_network(
    list: Option<&crate::edge::ip_access::IpRestriction>,
    ctx: &RequestCtx,
) -> Result<(), GatewayError> {
    match list {
        Some(l) if !l.admits(ctx.inbound.client_ip) => Err(GatewayError::IpNotAllowed),
        _ => Ok(()),
    }
}

/// Verifies the caller against the route's auth policy.
pub(super) async fn authenticate(
    snapshot: &Snapshot,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let Some(target) = ctx.target() else {
        return Ok(());
    };
    let gate = snapshot.gate();
    ctx.identity = gate
        .authenticate(req, &target.policy, ctx.inbound.client_ip)
        .await
        .map_err(|f| gate.refusal(f, &target.policy))?;
    Ok(())
}

/// Sets the service the request goes to: the route's own, or its split's choice.
pub(super) fn choose_destination(req: &RequestHeader, ctx: &mut RequestCtx) {
    let Some(target) = ctx.target() else {
        return;
    };
    let destination = match &target.split {
        Some(split) => {
            let entry = split.choose(&SplitInputs {
                req,
                identity: ctx.identity.as_deref(),
                client_ip: ctx.inbound.client_ip,
            });
            Destination {
                service: Some(split.entries()[entry].service),
                entry: Some(entry),
                mirror: None,
            }
        }
        None => Destination {
            service: target.service,
            entry: None,
            mirror: None,
        },
    };
    // An upgrade is a tunnel, not a request a mirror could answer.
    let mirror = target
        .mirror
        .as_ref()
        .filter(|m| !edge::is_websocket_upgrade(req) && m.samples())
        .map(|_| MirrorCopy::default());
    ctx.destination = Destination {
        mirror,
        ..destination
    };
}

/// Applies the route's rate-limit policies, keyed on verified identity or client IP.
async fn rate_limit(
    snapshot: &Arc<Snapshot>,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let (Some(limiter), Some(route)) = (snapshot.rate_limiter.as_ref(), ctx.route.as_ref()) else {
        return Ok(());
    };
    let target = &snapshot.routes.routes()[route.route].target;
    let inputs = KeyInputs {
        client_ip: ctx.inbound.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        identity: ctx.identity.as_deref(),
        headers: &req.headers,
        route: route.route,
    };
    ctx.admission
        .check(limiter, &target.rate_limits, &inputs, &target.metrics)
        .await
}

/// Renders a template rewrite now that the caller is known. A claim the path needs but the
/// caller lacks refuses the request rather than forwarding a path missing a segment.
pub(super) fn finish_route(snapshot: &Snapshot, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let Some(mut route) = ctx.route.take() else {
        return Ok(());
    };
    let rendered = snapshot.routes.render_rewrite(
        &mut route,
        ctx.identity.as_deref(),
        ctx.inbound.request_id(),
        ctx.inbound.client_ip,
    );
    ctx.route = Some(route);
    rendered.map_err(|_| match ctx.identity {
        None => GatewayError::Unauthorized {
            token_present: false,
        },
        Some(_) => GatewayError::Forbidden,
    })
}

/// Matches the route once. A CORS preflight is matched with the method it asks about.
fn match_route(
    snapshot: &Snapshot,
    req: &RequestHeader,
    path: &NormalizedPath<'_>,
    preflight: bool,
) -> Result<RouteMatch, GatewayError> {
    let asked = preflight
        .then(|| req.headers.get("access-control-request-method"))
        .flatten()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let method = asked.as_ref().unwrap_or(&req.method);
    let host = match snapshot.routes.routes_by_host() {
        true => edge::request_host(
            req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
            req.uri.host(),
        ),
        false => Cow::Borrowed(""),
    };
    path.with_segments(|segments| {
        snapshot.routes.match_request(
            &RequestView {
                segments,
                trailing_slash: path.trailing_slash,
                host: &host,
                method,
            },
            |target| target.conditions.as_ref().is_none_or(|c| c.matches(req)),
        )
    })
}
