//! `explain`: what the gateway would do with a request, without doing it. The route each
//! route's verdict, the upstream path, auth (with the credential verified when one is
//! given), limits, transforms, CORS, cache and the backend picked now. Runs the admission
//! stages' own functions on a request head, so it cannot drift from what requests see; it
//! consumes no rate-limit budget and contacts no upstream.

use super::admit::{authenticate, choose_destination, finish_route};
use super::ctx::RequestCtx;
use crate::cache::CacheUse;
use crate::edge;
use crate::router::{RequestView, RouteMatch};
use crate::snapshot::{SharedSnapshot, Snapshot};
use http::Method;
use pingora::http::RequestHeader;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;

/// Explains requests against the live snapshot (for the admin API).
pub struct Explainer {
    snapshot: SharedSnapshot,
}

impl Explainer {
    pub fn new(snapshot: SharedSnapshot) -> Explainer {
        Explainer { snapshot }
    }
}

#[async_trait::async_trait]
impl crate::services::admin::Explain for Explainer {
    async fn explain(&self, req: RequestHeader) -> Value {
        explain(&self.snapshot.load_full(), &req, None).await
    }
}

/// What the gateway would do with `req` (from `client_ip`, when known).
pub async fn explain(
    snapshot: &Arc<Snapshot>,
    req: &RequestHeader,
    client_ip: Option<IpAddr>,
) -> Value {
    let path = match edge::normalize_path(req.uri.path()) {
        Ok(p) => p,
        Err(e) => return json!({"answer": {"status": 400, "error": format!("bad path: {e}")}}),
    };
    let host = edge::request_host(
        req.headers.get(http::header::HOST).map(|h| h.as_bytes()),
        req.uri.host(),
    );
    let (verdicts, found) = path.with_segments(|segments| {
        let view = RequestView {
            segments,
            trailing_slash: path.trailing_slash,
            host: &host,
            method: &req.method,
        };
        snapshot.routes.explain(&view, |t| {
            t.conditions.as_ref().is_none_or(|c| c.matches(req))
        })
    });
    let routes: Vec<Value> = snapshot
        .routes
        .routes()
        .iter()
        .zip(&verdicts)
        .map(|(r, v)| {
            let mut entry = json!({"route": &*r.name, "path": &*r.pattern});
            if let (Value::Object(e), Ok(Value::Object(v))) = (&mut entry, serde_json::to_value(v))
            {
                e.extend(v);
            }
            entry
        })
        .collect();
    let request = json!({
        "method": req.method.as_str(),
        "path": &*path.path,
        "host": host,
        "query": req.uri.query(),
    });
    let Some(found) = found else {
        let allowed: Vec<&Value> = routes.iter().filter_map(|r| r.get("allowed")).collect();
        let answer = match allowed.is_empty() {
            true => json!({"status": 404, "error": "Route not found"}),
            false => json!({"status": 405, "error": "Method not allowed", "allowed": allowed}),
        };
        return json!({"request": request, "routes": routes, "route": null, "answer": answer});
    };
    let mut out = routed(snapshot, req, client_ip, found).await;
    if let Value::Object(o) = &mut out {
        o.insert("request".into(), request);
        o.insert("routes".into(), Value::Array(routes));
    }
    out
}

/// The matched route's side: auth, destination, rewrite, policies, cache and backend.
async fn routed(
    snapshot: &Arc<Snapshot>,
    req: &RequestHeader,
    client_ip: Option<IpAddr>,
    found: RouteMatch,
) -> Value {
    let route = &snapshot.routes.routes()[found.route];
    let target = &route.target;
    let mut ctx = RequestCtx {
        snapshot: Some(snapshot.clone()),
        route: Some(found),
        ..RequestCtx::default()
    };
    ctx.inbound.client_ip = client_ip;
    let auth = match authenticate(snapshot, req, &mut ctx).await {
        Ok(()) => json!({
            "mode": format!("{:?}", target.policy.mode).to_lowercase(),
            "roles": target.policy.roles,
            "scopes": target.policy.scopes,
            "caller": ctx.identity.as_ref().map(|i| json!({
                "subject": i.subject, "roles": i.roles,
                "consumer": i.consumer.as_ref().map(|c| c.id.to_string()),
            })),
        }),
        Err(refused) => {
            let answer = json!({"status": refused.status(), "error": refused.to_string()});
            return json!({"route": &*route.name, "answer": answer});
        }
    };
    choose_destination(req, &mut ctx);
    if let Err(refused) = finish_route(snapshot, &mut ctx) {
        let answer = json!({"status": refused.status(), "error": refused.to_string()});
        return json!({"route": &*route.name, "auth": auth, "answer": answer});
    }
    let rate_limits: Vec<&str> = snapshot.rate_limiter.as_ref().map_or(Vec::new(), |l| {
        target
            .rate_limits
            .iter()
            .filter_map(|i| l.policy_name(*i))
            .collect()
    });
    let origin = req.headers.get(http::header::ORIGIN);
    let cors = target.cors.as_ref().map(|c| {
        json!({
            "origin": origin.and_then(|o| o.to_str().ok()),
            "origin_allowed": origin.map(|o| c.allows(o.as_bytes())),
        })
    });
    let transforms = target.transforms.as_ref().map(|t| {
        json!({
            "request_headers": !t.request_headers.is_empty(),
            "query": t.query.is_some(),
            "request_body": t.request_body.is_some(),
            "response_headers": !t.response_headers.is_empty(),
            "response_body": t.response_body.is_some(),
        })
    });
    json!({
        "route": &*route.name,
        "answer": target.aggregate.as_ref().map_or(json!("proxied"), |_| json!("aggregate")),
        "auth": auth,
        "upstream": upstream(req, &ctx),
        "rate_limits": rate_limits,
        "transforms": transforms,
        "cors": cors,
        "cache": cache(req, &ctx),
        "compression": target.compression.is_some(),
    })
}

/// The service, the path and query sent, and the backend its balancer picks now.
fn upstream(req: &RequestHeader, ctx: &RequestCtx) -> Value {
    let path = ctx.route.as_ref().map(|m| m.upstream_path.clone());
    let Some(pool) = ctx.pool() else {
        return json!({"path": path});
    };
    let key = super::forward::hash_key(pool.hash_key(), req, ctx.inbound.client_ip);
    let picked = pool.select(&key, &[]).map(|b| b.addr.to_string());
    json!({
        "service": pool.name,
        "path": path,
        "query": req.uri.query(),
        "load_balancing": pool.algorithm(),
        "backend": picked,
        "backends": pool.report(),
    })
}

/// Whether the request would use the route's cache, and under which key.
fn cache(req: &RequestHeader, ctx: &RequestCtx) -> Value {
    let Some(route_cache) = ctx.target().and_then(|t| t.cache.as_ref()) else {
        return Value::Null;
    };
    let Ok(path) = edge::normalize_path(req.uri.path()) else {
        return Value::Null;
    };
    let service = ctx.pool().map_or("", |p| &p.name);
    let mut stage = CacheUse::plan(
        Some(route_cache),
        req,
        &path,
        false,
        ctx.identity.as_deref(),
        service,
    );
    match stage.take_key() {
        Ok(key) => json!({"used": true, "key": key.primary_key_str()}),
        Err(_) if req.method != Method::GET && req.method != Method::HEAD => {
            json!({"used": false, "why": "only GET and HEAD are cached"})
        }
        Err(_) => json!({"used": false, "why": "credentials or an upgrade: bypassed"}),
    }
}
