//! The compile step of `routes:`: each entry becomes a [`RouteTarget`] (what the route leads to
//! and its policies) attached to the router's matcher.

use super::sections::Services;
use crate::aggregate::Aggregate;
use crate::auth::{AuthMethod, AuthMode, RoutePolicy};
use crate::cache::{CacheSection, RouteCache};
use crate::compression::Compression;
use crate::config::{GatewayConfig, RouteConfig};
use crate::edge::cors::Cors;
use crate::edge::headers::SecurityHeaders;
use crate::edge::ip_access::IpRestriction;
use crate::grpc::{GrpcRoute, Protocol};
use crate::invalid::Invalid;
use crate::metrics::RouteMetrics;
use crate::rate_limit::Limiter;
use crate::router::{RouteSpec, RouteTable, param_names};
use crate::script::RouteScript;
use crate::template::TemplateScope;
use crate::traffic::{Mirror, Split, Variant};
use crate::transform::RouteTransforms;
use std::borrow::Cow;
use std::sync::Arc;

/// What a route leads to: its service (or fan-out) and its policies.
#[derive(Debug)]
pub struct RouteTarget {
    /// The route's `match:` conditions, which the router asks about.
    pub conditions: Option<Variant>,
    /// Index into the snapshot's services, for proxy routes to one service.
    pub service: Option<usize>,
    /// The weighted split, for proxy routes to several services.
    pub split: Option<Split>,
    /// Shadow copies of forwarded requests, to another service.
    pub mirror: Option<Mirror>,
    /// The fan-out, for aggregate routes.
    pub aggregate: Option<Arc<Aggregate>>,
    pub policy: RoutePolicy,
    /// Rate-limit policy indexes (into the limiter) that must all admit.
    pub rate_limits: Vec<usize>,
    /// The route's own client network lists (the top-level ones are checked before routing).
    pub ip_restriction: Option<IpRestriction>,
    /// The route's CORS policy (its own, or the top-level one), if any.
    pub cors: Option<Arc<Cors>>,
    /// The route's response compression (its own, or the top-level one), if any.
    pub compression: Option<Arc<Compression>>,
    /// The route's response cache settings, if it caches.
    pub cache: Option<Arc<RouteCache>>,
    /// Security headers after merging the route's block over the top-level one.
    pub security: Arc<SecurityHeaders>,
    /// Request/response transforms, if configured.
    pub transforms: Option<Arc<RouteTransforms>>,
    /// The route's script, if it has one.
    pub script: Option<Arc<RouteScript>>,
    /// Largest request body.
    pub max_body: u64,
    /// The route's request counters and latency histogram.
    pub metrics: RouteMetrics,
    /// WebSocket handshakes are forwarded (proxy routes only).
    pub websocket: bool,
    /// How the route's gRPC calls are handled (defaults unless `protocol: grpc`).
    pub grpc: Arc<GrpcRoute>,
}

/// The parts of the snapshot a route refers to, compiled before the routes.
pub(super) struct RouteInputs<'a> {
    pub cfg: &'a GatewayConfig,
    pub services: &'a Services,
    pub auth_configured: bool,
    pub consumers: Option<&'a crate::consumer::Consumers>,
    pub limiter: Option<&'a Limiter>,
    pub cors: &'a Option<Arc<Cors>>,
    pub compression: &'a Option<Arc<Compression>>,
    /// The cache store, when some route caches.
    pub cache: Option<&'a CacheSection>,
    pub security: &'a Arc<SecurityHeaders>,
    /// Where relative paths (script files) are resolved.
    pub base: &'a std::path::Path,
}

/// Compiles every route into the route table; errors carry `routes[i].key`.
pub(super) fn compile_routes(inputs: &RouteInputs<'_>) -> Result<RouteTable<RouteTarget>, Invalid> {
    let routes = &inputs.cfg.routes;
    if routes.is_empty() {
        return Err(Invalid::new("routes", "at least one route is required"));
    }
    let specs: Vec<RouteSpec<'_>> = routes.iter().map(RouteConfig::spec).collect();
    RouteTable::compile(&specs, |i| compile_target(i, &routes[i], inputs))
}

fn compile_target(
    index: usize,
    route: &RouteConfig,
    inputs: &RouteInputs<'_>,
) -> Result<RouteTarget, Invalid> {
    let name = route
        .name
        .clone()
        .unwrap_or_else(|| format!("routes[{index}]"));
    let (service, aggregate, split) = destination(route, inputs.services, &name)?;
    if route.sticky.is_some() && split.is_none() {
        return Err(Invalid::new("sticky", "needs `split`"));
    }
    if route.websocket && aggregate.is_some() {
        return Err(Invalid::new(
            "websocket",
            "only proxy routes (with `service:`) can forward WebSocket upgrades",
        ));
    }
    let metrics_service = match (&route.service, &aggregate) {
        (Some(s), _) => s.as_str(),
        (None, Some(_)) => "aggregate",
        (None, None) => "split",
    };
    let mirror = match &route.mirror {
        _ if aggregate.is_some() && route.mirror.is_some() => {
            return Err(Invalid::new("mirror", "only proxy routes can mirror"));
        }
        Some(m) => Some(Mirror::compile(
            m,
            "mirror",
            |n| inputs.services.find(n),
            &name,
        )?),
        None => None,
    };
    let cache = cache(route, &name, inputs.cache, aggregate.is_some())?;
    let grpc = grpc(route, &name, service, split.as_ref(), inputs.services)?;
    let script = script(route, &name, inputs.base, aggregate.is_some())?;
    Ok(RouteTarget {
        conditions: route
            .conditions
            .as_ref()
            .map(|c| Variant::compile(c, "when"))
            .transpose()?,
        service,
        split,
        mirror,
        aggregate,
        policy: policy(route, inputs)?,
        rate_limits: rate_limits(route, inputs.limiter)?,
        ip_restriction: match &route.ip_restriction {
            Some(c) => IpRestriction::compile(c, "ip_restriction")?,
            None => None,
        },
        cors: cors(route, inputs)?,
        compression: match &route.compression {
            Some(c) => Compression::compile(c, "compression")?.map(Arc::new),
            None => inputs.compression.clone(),
        },
        cache,
        security: match &route.security_headers {
            Some(own) => Arc::new(SecurityHeaders::compile(
                inputs.cfg.security_headers.as_ref(),
                Some(own),
                "security_headers",
            )?),
            None => inputs.security.clone(),
        },
        transforms: transforms(route)?,
        script,
        max_body: route
            .max_body_bytes
            .unwrap_or(inputs.cfg.limits.max_body_bytes),
        metrics: RouteMetrics::new(&name, metrics_service),
        websocket: route.websocket,
        grpc,
    })
}

/// The route's own CORS policy or the top-level one; a route bridging gRPC-Web lets browsers
/// send and read gRPC-Web's headers too.
fn cors(route: &RouteConfig, inputs: &RouteInputs<'_>) -> Result<Option<Arc<Cors>>, Invalid> {
    let web = route.grpc.as_ref().is_some_and(|g| g.web);
    let cfg = match (&route.cors, web) {
        (Some(own), false) => Cow::Borrowed(own),
        // The top-level block compiled already; errors in it are reported under `cors`.
        (own, true) => match own.as_ref().or(inputs.cfg.cors.as_ref()) {
            Some(cfg) => Cow::Owned(cfg.with_grpc_web()),
            None => return Ok(None),
        },
        (None, false) => return Ok(inputs.cors.clone()),
    };
    Ok(Cors::compile(&cfg, "cors")?.map(Arc::new))
}

/// A route's gRPC settings; a gRPC route proxies to services that all speak HTTP/2.
fn grpc(
    route: &RouteConfig,
    name: &str,
    service: Option<usize>,
    split: Option<&Split>,
    services: &Services,
) -> Result<Arc<GrpcRoute>, Invalid> {
    let mut targets: Vec<usize> = service.into_iter().collect();
    if let Some(split) = split {
        targets.extend(split.entries().iter().map(|e| e.service));
    }
    if route.protocol == Protocol::Grpc && targets.is_empty() {
        return Err(Invalid::new(
            "protocol",
            "only proxy routes (`service:` or `split:`) can be gRPC routes",
        ));
    }
    let http2 = targets.iter().all(|&i| services.get(i).http2);
    GrpcRoute::compile(route.protocol, route.grpc.as_ref(), http2, name).map(Arc::new)
}

/// A route's destination: a service to proxy to, a fan-out, or a split between services.
type Destination = (Option<usize>, Option<Arc<Aggregate>>, Option<Split>);

/// Exactly one of `service`, `aggregate` or `split`.
fn destination(
    route: &RouteConfig,
    services: &Services,
    route_name: &str,
) -> Result<Destination, Invalid> {
    match (&route.service, &route.aggregate, &route.split) {
        (Some(name), None, None) => {
            let index = services
                .find(name)
                .map_err(|reason| Invalid::new("service", reason))?;
            Ok((Some(index), None, None))
        }
        (None, None, Some(entries)) => {
            let split = Split::compile(
                entries,
                route.sticky.as_deref(),
                "split",
                |name| services.find(name),
                route_name,
            )?;
            Ok((None, None, Some(split)))
        }
        (None, Some(agg), None) => {
            let params = param_names(&route.path);
            let authenticated = route.auth == AuthMode::Required;
            let compiled =
                Aggregate::compile(agg, "aggregate", &services.names(), &params, authenticated)?;
            Ok((None, Some(Arc::new(compiled)), None))
        }
        _ => Err(Invalid::new(
            "service",
            "set exactly one of `service`, `aggregate` or `split`",
        )),
    }
}

/// Checks and compiles a route's auth settings.
fn policy(route: &RouteConfig, inputs: &RouteInputs<'_>) -> Result<RoutePolicy, Invalid> {
    let wants_identity =
        !route.roles.is_empty() || !route.scopes.is_empty() || route.require_consumer;
    let methods = route
        .auth_methods
        .clone()
        .unwrap_or_else(|| vec![AuthMethod::Jwt]);
    if methods.is_empty() {
        return Err(Invalid::new(
            "auth_methods",
            "list at least one of jwt, api_key, basic",
        ));
    }
    if route.auth != AuthMode::None {
        for (i, m) in methods.iter().enumerate() {
            if methods[..i].contains(m) {
                return Err(Invalid::new(format!("auth_methods[{i}]"), "listed twice"));
            }
            let missing = match m {
                AuthMethod::Jwt if !inputs.auth_configured => {
                    "`jwt` needs the top-level `auth:` section (keys or jwks)"
                }
                AuthMethod::ApiKey | AuthMethod::Basic if inputs.consumers.is_none() => {
                    "`api_key` and `basic` need consumers (`consumers:` or `consumers_file`)"
                }
                _ => continue,
            };
            let key = match &route.auth_methods {
                Some(_) => format!("auth_methods[{i}]"),
                None => "auth".to_string(),
            };
            return Err(Invalid::new(key, missing));
        }
    } else if route.auth_methods.is_some() {
        return Err(Invalid::new(
            "auth_methods",
            "needs `auth: required` or `auth: optional`",
        ));
    }
    if wants_identity && route.auth != AuthMode::Required {
        return Err(Invalid::new(
            "auth",
            "`roles`/`scopes`/`require_consumer` need `auth: required`",
        ));
    }
    Ok(RoutePolicy {
        mode: route.auth,
        methods,
        require_consumer: route.require_consumer,
        roles: route.roles.clone(),
        scopes: route.scopes.clone(),
        scope_match: route.scope_match,
        forward_authorization: route.forward_authorization,
    })
}

/// The route's rate-limit policies (the default one when it names none).
fn rate_limits(route: &RouteConfig, limiter: Option<&Limiter>) -> Result<Vec<usize>, Invalid> {
    match limiter {
        Some(l) => l
            .route_policies(route.rate_limits.as_deref())
            .map_err(|reason| Invalid::new("rate_limits", reason)),
        None if route.rate_limits.as_ref().is_some_and(|r| !r.is_empty()) => Err(Invalid::new(
            "rate_limits",
            "needs the top-level `rate_limits:` section",
        )),
        None => Ok(Vec::new()),
    }
}

/// The route's cache settings over the shared store.
fn cache(
    route: &RouteConfig,
    name: &str,
    section: Option<&CacheSection>,
    aggregate: bool,
) -> Result<Option<Arc<RouteCache>>, Invalid> {
    let (Some(cfg), Some(section)) = (&route.cache, section) else {
        return Ok(None);
    };
    if aggregate && cfg.enabled {
        return Err(Invalid::new("cache", "only proxy routes can be cached"));
    }
    Ok(cfg.compile("cache", name, section)?.map(Arc::new))
}

/// The route's request and response transforms, with the templates it may use.
fn transforms(route: &RouteConfig) -> Result<Option<Arc<RouteTransforms>>, Invalid> {
    let params = param_names(&route.path);
    let scope = TemplateScope {
        params: &params,
        claims: route.auth != AuthMode::None,
    };
    Ok(
        RouteTransforms::compile(route.request.as_ref(), route.response.as_ref(), &scope)?
            .map(Arc::new),
    )
}

/// The route's compiled script. Aggregate routes answer from their calls, so nothing would
/// run it.
fn script(
    route: &RouteConfig,
    name: &str,
    base: &std::path::Path,
    aggregate: bool,
) -> Result<Option<Arc<RouteScript>>, Invalid> {
    match &route.script {
        Some(_) if aggregate => Err(Invalid::new("script", "only proxy routes run scripts")),
        Some(cfg) => RouteScript::compile(cfg, base, "script", name).map(|s| Some(Arc::new(s))),
        None => Ok(None),
    }
}
