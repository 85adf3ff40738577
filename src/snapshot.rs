//! The compiled, immutable form of the configuration and the pointer that publishes it.
//!
//! `Snapshot::compile` is the only place config is checked ("parse, don't validate"): whatever
//! it returns is known good, and request-path code never re-checks it. A request loads the
//! pointer once and keeps that `Arc` for its whole life, so a reload never mixes two configs.

use crate::aggregate::Aggregate;
use crate::auth::{Auth, AuthMode, RoutePolicy};
use crate::config::{ConfigError, GatewayConfig};
use crate::edge::cors::Cors;
use crate::edge::headers::{SecurityHeaders, SecurityHeadersConfig};
use crate::edge::{ClientIpResolver, EdgeLimits};
use crate::limits::Limiter;
use crate::metrics::RouteMetrics;
use crate::router::{RouteConfig, RouteTable};
use crate::template::TemplateScope;
use crate::tls::CertStore;
use crate::transform::RouteTransforms;
use crate::upstream::ServicePool;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The shared, atomically swappable pointer to the current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What a route leads to: its service (or fan-out) and its policies.
#[derive(Debug)]
pub struct RouteTarget {
    /// Index into the snapshot's services, for proxy routes.
    pub service: Option<usize>,
    /// The fan-out, for aggregate routes.
    pub aggregate: Option<Arc<Aggregate>>,
    pub policy: RoutePolicy,
    /// Rate-limit policy indexes (into the limiter) that must all admit.
    pub limits: Vec<usize>,
    /// The route's CORS policy (its own, or the top-level one), if any.
    pub cors: Option<Arc<Cors>>,
    /// Security headers after merging the route's block over the top-level one.
    pub security: Arc<SecurityHeaders>,
    /// Request/response transforms, if configured.
    pub transforms: Option<Arc<RouteTransforms>>,
    /// Largest request body.
    pub max_body: u64,
    /// The route's request counters and latency histogram.
    pub metrics: RouteMetrics,
    /// WebSocket handshakes are forwarded (proxy routes only).
    pub websocket: bool,
}

/// Everything the request path needs, compiled from one config file.
pub struct Snapshot {
    pub routes: RouteTable<RouteTarget>,
    services: Vec<Arc<ServicePool>>,
    /// Listener addresses (changing them needs a process upgrade, not a reload).
    pub listen: Vec<SocketAddr>,
    /// TLS listener addresses (changing them needs a process upgrade).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificates of the TLS listeners; replaced on reload, so certificates rotate live.
    pub tls: Option<Arc<CertStore>>,
    /// Plaintext listeners also accept HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// JWT verification and login, if configured.
    pub auth: Option<Arc<Auth>>,
    /// Rate-limit policies and stores, if configured.
    pub limiter: Option<Limiter>,
    /// Finds the client address behind trusted proxies.
    pub client_ip: ClientIpResolver,
    /// The top-level CORS policy, for answers given before a route is known (404, 400).
    pub cors: Option<Arc<Cors>>,
    /// The top-level security headers, for answers given before a route is known.
    pub security: Arc<SecurityHeaders>,
    /// Request size limits.
    pub limits: EdgeLimits,
    /// Client deadlines and the connection limit.
    pub client: crate::connection::ClientConfig,
    /// Pingora process settings (changing them needs a process upgrade, not a reload).
    pub server: crate::config::ServerSettings,
    /// The access log settings.
    pub access_log: crate::access_log::AccessLogConfig,
    /// The admin listener address (changing it needs a process upgrade).
    pub admin: crate::admin::AdminConfig,
    /// What long-lived state was compiled from, to keep it across reloads.
    fingerprints: Fingerprints,
}

/// Identities of the parts that carry state: a reload reuses a part whose fingerprint is
/// unchanged (health state of a pool; the token cache and JWKS of `auth`).
#[derive(Default)]
struct Fingerprints {
    services: Vec<String>,
    auth: Option<[u8; 32]>,
}

impl Snapshot {
    /// Reads, parses and compiles a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg = GatewayConfig::load(path)?;
        Self::compile(&cfg, path)
    }

    /// Compiles a parsed config; errors name `file` and the offending key.
    pub fn compile(cfg: &GatewayConfig, file: &Path) -> Result<Self, ConfigError> {
        Self::compile_with(cfg, file, None)
    }

    /// Compiles a config as a reload of `previous`: service pools, auth (token cache, JWKS)
    /// and the rate-limit store whose config did not change are carried over.
    pub fn compile_with(
        cfg: &GatewayConfig,
        file: &Path,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            reason,
        };
        let listen = parse_addrs(&cfg.listen, "listen").map_err(|(k, r)| invalid(k, r))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let (tls_listen, tls) = match &cfg.tls {
            Some(t) => {
                let addrs = parse_addrs(&t.listen, "tls.listen").map_err(|(k, r)| invalid(k, r))?;
                if addrs.is_empty() {
                    return Err(invalid(
                        "tls.listen".into(),
                        "at least one address is required".into(),
                    ));
                }
                let certs = CertStore::load(t, base, "tls").map_err(|(k, r)| invalid(k, r))?;
                (addrs, Some(Arc::new(certs)))
            }
            None => (Vec::new(), None),
        };
        if listen.is_empty() && tls_listen.is_empty() {
            return Err(invalid(
                "listen".into(),
                "at least one address is required (in listen or tls.listen)".into(),
            ));
        }

        let mut services = Vec::with_capacity(cfg.services.len());
        let mut fingerprints = Fingerprints::default();
        let mut index = HashMap::new();
        for (name, svc) in &cfg.services {
            let key = format!("services.{name}");
            // TLS files are part of a service's identity: a reload after a certificate or CA
            // rotation must rebuild the pool rather than keep the old material.
            let tls_files = svc
                .tls
                .as_ref()
                .map(|t| files_digest(t.referenced_files().map(|f| base.join(f))));
            let fingerprint = format!("{name}|{svc:?}|{tls_files:?}");
            let kept = previous.and_then(|p| {
                let i = p
                    .fingerprints
                    .services
                    .iter()
                    .position(|f| *f == fingerprint)?;
                Some(p.services[i].clone())
            });
            let pool = match kept {
                Some(pool) => pool,
                // ServicePool errors already start with the key path; split it back off.
                None => Arc::new(ServicePool::compile(name, svc, &key, base).map_err(|e| {
                    match e.split_once(": ") {
                        Some((k, r)) => invalid(k.to_string(), r.to_string()),
                        None => invalid(key.clone(), e),
                    }
                })?),
            };
            index.insert(name.as_str(), services.len());
            services.push(pool);
            fingerprints.services.push(fingerprint);
        }
        if cfg.routes.is_empty() {
            return Err(invalid(
                "routes".into(),
                "at least one route is required".into(),
            ));
        }
        let auth_cfg = cfg.auth.as_ref().map(|a| a.clone().relative_to(base));
        fingerprints.auth = auth_cfg.as_ref().map(auth_fingerprint);
        let kept_auth = previous
            .filter(|p| p.fingerprints.auth.is_some() && p.fingerprints.auth == fingerprints.auth)
            .and_then(|p| p.auth.clone());
        let auth = match (kept_auth, &auth_cfg) {
            (Some(kept), _) => Some(kept),
            (None, Some(a)) => Some(Arc::new(Auth::compile(a).map_err(|(k, r)| invalid(k, r))?)),
            (None, None) => None,
        };
        let previous_limiter = previous.and_then(|p| p.limiter.as_ref());
        let limiter = cfg
            .rate_limits
            .as_ref()
            .map(|l| Limiter::compile(l, previous_limiter))
            .transpose()
            .map_err(|(k, r)| invalid(k, r))?;
        cfg.client.check().map_err(|(k, r)| invalid(k, r))?;
        let client_ip =
            ClientIpResolver::compile(&cfg.trusted_proxies).map_err(|(k, r)| invalid(k, r))?;
        let global_cors = cfg
            .cors
            .as_ref()
            .map(|c| Cors::compile(c, "cors"))
            .transpose()
            .map_err(|(k, r)| invalid(k, r))?
            .flatten()
            .map(Arc::new);
        let global_security = Arc::new(
            SecurityHeaders::compile(cfg.security_headers.as_ref(), None, "security_headers")
                .map_err(|(k, r)| invalid(k, r))?,
        );
        let mut route_index = 0;
        let routes = RouteTable::compile(&cfg.routes, |route| {
            let name = route
                .name
                .clone()
                .unwrap_or_else(|| format!("routes[{route_index}]"));
            route_index += 1;
            let static_key = |(k, r): (&'static str, String)| (k.to_string(), r);
            let (service, aggregate) = route_destination(route, &index, cfg).map_err(static_key)?;
            let aggregate_route = aggregate.is_some();
            if route.websocket && aggregate_route {
                return Err((
                    "websocket".into(),
                    "only proxy routes (with `service:`) can forward WebSocket upgrades".into(),
                ));
            }
            let policy = route_policy(route, auth.is_some()).map_err(static_key)?;
            let edge = route_edge(
                route,
                &global_cors,
                &global_security,
                cfg.security_headers.as_ref(),
                &cfg.limits,
            )?;
            let limits = match &limiter {
                Some(l) => l
                    .route_policies(route.rate_limits.as_deref())
                    .map_err(|e| ("rate_limits".to_string(), e))?,
                None if route.rate_limits.as_ref().is_some_and(|r| !r.is_empty()) => {
                    return Err((
                        "rate_limits".into(),
                        "needs the top-level `rate_limits:` section".into(),
                    ));
                }
                None => Vec::new(),
            };
            Ok(RouteTarget {
                service,
                aggregate,
                policy,
                limits,
                cors: edge.cors,
                security: edge.security,
                transforms: edge.transforms,
                max_body: edge.max_body,
                metrics: RouteMetrics::new(
                    &name,
                    route.service.as_deref().unwrap_or(if aggregate_route {
                        "aggregate"
                    } else {
                        ""
                    }),
                ),
                websocket: route.websocket,
            })
        })
        .map_err(|e| invalid(e.key, e.reason))?;
        if let Some(login) = auth.as_ref().and_then(|a| a.login.as_ref())
            && let Some(r) = routes.routes().iter().find(|r| r.pattern == login.path)
        {
            log::warn!(
                "{} has the login path {:?}; the login endpoint takes precedence",
                r.name,
                login.path
            );
        }
        for (i, pool) in services.iter().enumerate() {
            let used = routes.routes().iter().any(|r| {
                r.target.service == Some(i)
                    || r.target
                        .aggregate
                        .as_ref()
                        .is_some_and(|a| a.services().any(|s| s == i))
            });
            if !used {
                log::warn!("service {:?} is not used by any route", pool.name);
            }
        }
        Ok(Snapshot {
            routes,
            services,
            listen,
            tls_listen,
            tls,
            h2c: cfg.h2c,
            auth,
            limiter,
            client_ip,
            cors: global_cors,
            security: global_security,
            limits: cfg.limits,
            client: cfg.client,
            server: cfg.server.clone(),
            access_log: cfg.access_log.clone(),
            admin: cfg.admin.clone(),
            fingerprints,
        })
    }

    /// The service a route points at.
    pub fn service(&self, index: usize) -> &ServicePool {
        &self.services[index]
    }

    /// All services.
    pub fn services(&self) -> &[Arc<ServicePool>] {
        &self.services
    }

    /// JWKS sources to keep fresh.
    pub fn jwks_sources(&self) -> &[Arc<crate::auth::jwks::JwksSource>] {
        self.auth.as_ref().map_or(&[], |a| a.jwks.as_slice())
    }
}

/// A route's destination: a service to proxy to, or a fan-out.
type Destination = (Option<usize>, Option<Arc<Aggregate>>);

/// A route's destination: exactly one of `service` or `aggregate`.
fn route_destination(
    route: &RouteConfig,
    index: &HashMap<&str, usize>,
    cfg: &GatewayConfig,
) -> Result<Destination, (&'static str, String)> {
    match (&route.service, &route.aggregate) {
        (Some(name), None) => {
            let service = index.get(name.as_str()).copied().ok_or_else(|| {
                let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
                (
                    "service",
                    format!(
                        "unknown service {name:?} (defined services: {})",
                        known.join(", ")
                    ),
                )
            })?;
            Ok((Some(service), None))
        }
        (None, Some(agg)) => {
            let params = crate::router::param_names(&route.path);
            let authenticated = route.auth == AuthMode::Required;
            let compiled = Aggregate::compile(agg, "aggregate", index, &params, authenticated)
                .map_err(|(k, r)| ("aggregate", format!("{k}: {r}")))?;
            Ok((None, Some(Arc::new(compiled))))
        }
        _ => Err((
            "service",
            "set exactly one of `service` or `aggregate`".into(),
        )),
    }
}

/// Checks and compiles a route's auth settings.
fn route_policy(
    route: &RouteConfig,
    auth_configured: bool,
) -> Result<RoutePolicy, (&'static str, String)> {
    let wants_identity = !route.roles.is_empty() || !route.scopes.is_empty();
    if route.auth != AuthMode::None && !auth_configured {
        return Err((
            "auth",
            "needs the top-level `auth:` section (keys or jwks)".into(),
        ));
    }
    if wants_identity && route.auth != AuthMode::Required {
        return Err(("auth", "`roles`/`scopes` need `auth: required`".into()));
    }
    Ok(RoutePolicy {
        mode: route.auth,
        roles: route.roles.clone(),
        scopes: route.scopes.clone(),
        scope_match: route.scope_match,
        forward_authorization: route.forward_authorization,
    })
}

/// A route's edge policies, compiled.
struct RouteEdge {
    cors: Option<Arc<Cors>>,
    security: Arc<SecurityHeaders>,
    transforms: Option<Arc<RouteTransforms>>,
    max_body: u64,
}

/// Compiles a route's CORS, security headers, transforms and body limit.
fn route_edge(
    route: &RouteConfig,
    global_cors: &Option<Arc<Cors>>,
    global_security: &Arc<SecurityHeaders>,
    global_security_cfg: Option<&SecurityHeadersConfig>,
    limits: &EdgeLimits,
) -> Result<RouteEdge, (String, String)> {
    let cors = match &route.cors {
        Some(c) => Cors::compile(c, "cors")?.map(Arc::new),
        None => global_cors.clone(),
    };
    let security = match &route.security_headers {
        Some(own) => Arc::new(SecurityHeaders::compile(
            global_security_cfg,
            Some(own),
            "security_headers",
        )?),
        None => global_security.clone(),
    };
    let params = crate::router::param_names(&route.path);
    let scope = TemplateScope {
        params: &params,
        claims: route.auth != AuthMode::None,
    };
    let transforms =
        RouteTransforms::compile(route.request.as_ref(), route.response.as_ref(), &scope)?
            .map(Arc::new);
    Ok(RouteEdge {
        cors,
        security,
        transforms,
        max_body: route.max_body_bytes.unwrap_or(limits.max_body_bytes),
    })
}

/// The auth section's identity: its settings and the bytes of every file it reads (keys, key
/// sets, users), so rotating a key file and reloading never keeps tokens cached under old keys.
fn auth_fingerprint(cfg: &crate::auth::AuthConfig) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{cfg:?}").as_bytes());
    h.update(files_digest(cfg.referenced_files()));
    h.finalize().into()
}

/// Digest of files' names and contents (an unreadable file counts as a distinct content).
fn files_digest(files: impl IntoIterator<Item = impl AsRef<Path>>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for file in files {
        let file = file.as_ref();
        h.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(bytes) => h.update(&bytes),
            Err(_) => h.update(b"\0unreadable"),
        }
    }
    h.finalize().into()
}

/// Parses `ip:port` listener addresses; `key` names the list in errors.
fn parse_addrs(addrs: &[String], key: &str) -> Result<Vec<SocketAddr>, (String, String)> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|e| {
                (
                    format!("{key}[{i}]"),
                    format!("{a:?} is not an ip:port address ({e})"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: ['127.0.0.1:0']\nservices:\n  a: {backends: ['127.0.0.1:1']}\n  b: {backends: ['127.0.0.1:2']}\nauth:\n  keys: [{kid: k, alg: HS256, secret: snapshot-test-secret-0123456789-abcdef}]\nrate_limits:\n  policies: {p: {requests: 5, period: 1s}}\nroutes:\n  - {path: /a, service: a}\n  - {path: /b, service: b}\n";

    fn compile(text: &str, previous: Option<&Snapshot>) -> Snapshot {
        let cfg = GatewayConfig::parse(text).unwrap();
        Snapshot::compile_with(&cfg, Path::new("test.yaml"), previous).unwrap()
    }

    #[test]
    fn reload_keeps_state_of_unchanged_parts_only() {
        let first = compile(BASE, None);
        let same = compile(
            &BASE.replace("/b, service: b}", "/b2, service: b}"),
            Some(&first),
        );
        assert!(Arc::ptr_eq(&first.services[0], &same.services[0]));
        assert!(Arc::ptr_eq(&first.services[1], &same.services[1]));
        assert!(Arc::ptr_eq(
            first.auth.as_ref().unwrap(),
            same.auth.as_ref().unwrap()
        ));
        let (l1, l2) = (
            first.limiter.as_ref().unwrap(),
            same.limiter.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(&l1.local, &l2.local));

        let changed = compile(
            &BASE
                .replace("['127.0.0.1:2']", "['127.0.0.1:3']")
                .replace("0123456789-abcdef", "0123456789-abcdeg"),
            Some(&same),
        );
        assert!(Arc::ptr_eq(&same.services[0], &changed.services[0]));
        assert!(!Arc::ptr_eq(&same.services[1], &changed.services[1]));
        assert!(!Arc::ptr_eq(
            same.auth.as_ref().unwrap(),
            changed.auth.as_ref().unwrap()
        ));
        let fresh = compile(BASE, None);
        assert!(!Arc::ptr_eq(&fresh.services[0], &first.services[0]));
    }
}
