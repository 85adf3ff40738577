//! Responses the gateway writes itself (errors, login, aggregates, CORS preflights), and the
//! headers every response gets whoever produced it.

use super::RequestCtx;
use crate::errors::GatewayError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// Adds what every response carries: the request id, the rate-limit report, the security
/// headers (not on native gRPC answers) and CORS of the route (or the top-level ones when no
/// route matched).
pub(super) fn decorate(ctx: &RequestCtx, h: &mut ResponseHeader) {
    ctx.admission.on_response(h);
    let (security, cors) = match (ctx.target(), ctx.snapshot.as_ref()) {
        (Some(t), _) => (Some(&*t.security), t.cors.as_deref()),
        (None, Some(s)) => (Some(&*s.security), s.cors.as_deref()),
        (None, None) => (None, None),
    };
    // Security headers guard documents in browsers; a native gRPC client reads none of them.
    let security = security.filter(|_| ctx.grpc.wire() != Some(crate::grpc::Wire::Native));
    ctx.inbound.decorate(h, security, cors);
    ctx.trace
        .on_response(ctx.snapshot.as_ref().and_then(|s| s.tracing.as_ref()), h);
}

/// Decides whether the proxied response is compressed (the route's compression stage), once
/// the transforms have shaped its header.
pub(super) fn choose_encoding(session: &Session, h: &mut ResponseHeader, ctx: &mut RequestCtx) {
    // The snapshot and route fields, not `ctx.target()`: `ctx.encoding` is set meanwhile.
    let target = super::ctx::target_of(&ctx.snapshot, &ctx.route);
    let Some(compression) = target.and_then(|t| t.compression.as_deref()) else {
        return;
    };
    let req = session.req_header();
    let http11 = req.version == http::Version::HTTP_11;
    ctx.encoding = compression.on_response_header(req, h, http11);
}

/// While the process drains (graceful upgrade or shutdown), answers carry `Connection: close`,
/// so clients reconnect (to the new process) instead of reusing a connection that is about to
/// be dropped between two requests.
pub(super) fn close_if_draining(session: &mut Session) {
    if crate::services::reload::is_draining() || session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
}

/// Writes a gateway-generated error and tells Pingora the request is answered.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    err: &GatewayError,
) -> Result<bool> {
    let (mut header, mut body) = err.to_response(ctx.inbound.request_id());
    if let Some(wire) = ctx.grpc.wire() {
        header = crate::grpc::trailers_only(err, header, wire);
        body = Bytes::new();
    }
    decorate(ctx, &mut header);
    if matches!(err, GatewayError::InvalidFraming(_)) {
        // Where this request's body ends is ambiguous: never read another one after it.
        session.set_keepalive(None);
    }
    write(session, header, body).await?;
    Ok(true)
}

/// Writes a 200 JSON answer produced by the gateway itself (login, aggregates), with the
/// route's response header transforms.
pub(super) async fn respond_json(
    session: &mut Session,
    ctx: &RequestCtx,
    body: Bytes,
    extra: &[(&'static str, &str)],
) -> Result<bool> {
    write_json(session, ctx, 200, body, |header| {
        for (name, value) in extra {
            header.insert_header(*name, *value)?;
        }
        Ok(())
    })
    .await
}

/// Writes a route script's own answer (`respond(status, body, headers)`); its headers may
/// replace the content type and cache policy.
pub(super) async fn respond_script(
    session: &mut Session,
    ctx: &RequestCtx,
    answer: crate::script::ScriptAnswer,
) -> Result<bool> {
    write_json(session, ctx, answer.status, answer.body, |header| {
        for (name, value) in answer.headers {
            header.insert_header(name.spelled, value)?;
        }
        Ok(())
    })
    .await
}

/// A whole JSON answer the gateway writes: `extra` headers over the defaults, decorated like
/// every answer, the route's response header transforms, compressed whole.
async fn write_json(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: Bytes,
    extra: impl FnOnce(&mut ResponseHeader) -> Result<()>,
) -> Result<bool> {
    let mut header = ResponseHeader::build(status, Some(8))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("cache-control", "no-store")?;
    extra(&mut header)?;
    header.insert_header("content-length", body.len().to_string())?;
    decorate(ctx, &mut header);
    ctx.exchange.on_gateway_answer(&mut header);
    let body = compress_whole(session, ctx, &mut header, body);
    write(session, header, body).await?;
    Ok(true)
}

/// Compresses a gateway-written answer under the route's compression settings. The body is
/// whole already, so it keeps a `Content-Length` instead of being chunked.
fn compress_whole(
    session: &Session,
    ctx: &RequestCtx,
    header: &mut ResponseHeader,
    body: Bytes,
) -> Bytes {
    let Some(compression) = ctx.target().and_then(|t| t.compression.as_deref()) else {
        return body;
    };
    let mut encoding = compression.on_response_header(session.req_header(), header, false);
    if !encoding.is_active() {
        return body;
    }
    let mut out = Some(body);
    encoding.on_body(&mut out, true);
    let out = out.unwrap_or_default();
    // A header value from a number is always valid.
    let _ = header.insert_header(http::header::CONTENT_LENGTH, out.len().to_string());
    out
}

/// Writes a complete response (no body for HEAD).
pub(super) async fn write(
    session: &mut Session,
    header: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    close_if_draining(session);
    if head_only && let ServerSession::H2(h2) = session.as_downstream_mut() {
        // The stream ends with the head (END_STREAM on HEADERS): a gRPC trailers-only answer
        // must, and Pingora's session would end it with a separate empty DATA frame, or with
        // a reset when the request failed mid-body. There are no downstream modules to run.
        return h2.write_response_header(Box::new(header), true);
    }
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Whether the error is a connect, TLS handshake, read or write timeout.
pub(super) fn is_timeout(e: &Error) -> bool {
    use ErrorType::*;
    matches!(
        e.etype(),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
    )
}

/// Maps a Pingora error to what the client should see; `None` when the client is already gone.
pub(super) fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(400), _) => Some(GatewayError::BadRequest("malformed request")),
        (HTTPStatus(504), _) => Some(GatewayError::UpstreamTimeout),
        (HTTPStatus(c), _) if (500..600).contains(c) => Some(GatewayError::UpstreamUnavailable),
        (HTTPStatus(_), _) => Some(GatewayError::Internal),
        (_, ErrorSource::Upstream) if is_timeout(e) => Some(GatewayError::UpstreamTimeout),
        (_, ErrorSource::Upstream) => Some(GatewayError::UpstreamUnavailable),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => None,
        // A client that stopped sending its body: tell it why (nginx answers 408 too).
        (ReadTimedout, ErrorSource::Downstream) => Some(GatewayError::RequestTimeout),
        (_, ErrorSource::Downstream) => Some(GatewayError::BadRequest("malformed request")),
        _ => Some(GatewayError::Internal),
    }
}
