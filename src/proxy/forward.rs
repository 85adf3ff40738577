//! `upstream_request_filter`'s steps: what the upstream receives.

use super::ctx::RequestCtx;
use crate::edge::headers::{Hop, X_REQUEST_ID, forwarded_headers};
use crate::header_edit::{CustomName, HeaderEdit, Inline, shared_value};
use crate::upstream::HashKey;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;

/// Sets the upstream path and query: the route's path, the query without a token parameter,
/// after the route's query operations.
pub(super) fn set_uri(
    upstream: &mut RequestHeader,
    req: &RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let (Some(route), Some(snapshot)) = (ctx.route.as_ref(), ctx.snapshot.as_ref()) else {
        return Ok(());
    };
    let query = req.uri.query().map(|q| {
        let q = match snapshot.auth() {
            Some(auth) => auth.strip_query(q),
            None => Cow::Borrowed(q),
        };
        match snapshot.consumers() {
            Some(consumers) => consumers.strip_query(q),
            None => q,
        }
    });
    let query = match ctx.script.upstream_query() {
        Some(set) => Some(Cow::Owned(set)),
        None => query,
    };
    let query = ctx.exchange.on_query(query, || ctx.vars());
    let uri = match query {
        Some(q) if !q.is_empty() => Cow::Owned(format!("{}?{q}", route.upstream_path)),
        _ => Cow::Borrowed(route.upstream_path.as_str()),
    };
    let uri = match req.uri.path_and_query() {
        // Most requests go upstream as they came (normalizing changed nothing): the request's
        // target is shared rather than copied and parsed again.
        Some(same) if same.as_str() == uri => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(same.clone());
            http::Uri::from_parts(parts)
                .map_err(|e| Error::because(ErrorType::InternalError, "request uri", e))?
        }
        _ => uri
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewritten uri", e))?,
    };
    upstream.set_uri(uri);
    Ok(())
}

static X_GATEWAY_ROUTE: CustomName = CustomName::new("x-gateway-route");

/// Removes client-sent copies of the headers the gateway vouches for: the credentials' and
/// the verified identity's.
pub(super) fn strip_client_copies(upstream: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let (Some(target), Some(snapshot)) = (ctx.target(), ctx.snapshot.as_ref()) else {
        return Ok(());
    };
    if let Some(auth) = snapshot.auth() {
        auth.strip_client_copies(upstream, target.policy.forward_authorization)?;
    }
    if let Some(consumers) = snapshot.consumers() {
        consumers.strip_client_copies(upstream);
    }
    Ok(())
}

/// Sets `Host` (an absolute-form target was routed on its authority: forward that), the
/// gateway's own headers, the verified identity's headers and the forwarding headers.
pub(super) fn set_headers(
    upstream: &mut HeaderEdit<'_>,
    req: &RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let (Some(pool), Some(snapshot)) = (ctx.pool(), ctx.snapshot.as_ref()) else {
        return Ok(());
    };
    let host = match req.uri.authority() {
        Some(a) => {
            let h = match Inline::<64>::copy(a.as_str().as_bytes()) {
                Some(short) => shared_value(short),
                None => HeaderValue::from_str(a.as_str()),
            }
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "authority", e))?;
            upstream.insert(&http::header::HOST, h.clone())?;
            Some(h)
        }
        None => req.headers.get(http::header::HOST).cloned(),
    };
    upstream.insert_custom(&X_GATEWAY_ROUTE, pool.name_value.clone())?;
    if let Some(via) = &snapshot.via {
        upstream.append(&http::header::VIA, via.value(req.version).clone())?;
    }
    if let Some(hops) = crate::edge::protocol::forwarded_max_forwards(req) {
        upstream.insert(&http::header::MAX_FORWARDS, hops)?;
    }
    upstream.insert_custom(&X_REQUEST_ID, ctx.inbound.request_id_value().clone())?;
    if let Some(identity) = ctx.identity.as_deref() {
        for (name, value) in &identity.headers {
            upstream.insert(name, value.clone())?;
        }
    }
    let peer = ctx.inbound.peer_ip;
    let hop = Hop {
        peer,
        peer_trusted: peer.is_some_and(|p| snapshot.client_ip.is_trusted(&p)),
        client_ip: ctx.inbound.client_ip,
        host: host.as_ref(),
        proto: ctx.inbound.proto(),
    };
    forwarded_headers(upstream, &hop)
}

/// The bytes a consistent-hash service hashes for this request.
pub(super) fn hash_key<'a>(
    key: Option<&HashKey>,
    req: &'a RequestHeader,
    client: Option<IpAddr>,
) -> Cow<'a, [u8]> {
    match key {
        None => Cow::Borrowed(&[]),
        Some(HashKey::ClientIp) => Cow::Owned(
            client
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
        ),
        Some(HashKey::Path) => Cow::Borrowed(req.uri.path().as_bytes()),
        Some(HashKey::Header(name)) => {
            Cow::Borrowed(req.headers.get(name).map_or(&[][..], |v| v.as_bytes()))
        }
    }
}
