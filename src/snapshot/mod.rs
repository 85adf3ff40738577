//! The compiled, immutable form of the configuration and the pointer that publishes it.
//!
//! `Snapshot::compile` is the only place config is checked ("parse, don't validate"): whatever
//! it returns is known good, and request-path code never re-checks it. It runs one step per
//! section; the sections that carry state across reloads ([`sections`]) own the fingerprint
//! that decides whether a reload keeps them. A request loads the pointer once and keeps that
//! `Arc` for its whole life, so a reload never mixes two configs.

mod consumers;
mod route;
pub mod sections;

use crate::auth::Auth;
use crate::cache::CacheSection;
use crate::compression::Compression;
use crate::config::{
    AdminConfig, ClientConfig, ConfigDoc, ConfigError, GatewayConfig, ServerSettings,
};
use crate::edge::cors::Cors;
use crate::edge::headers::SecurityHeaders;
use crate::edge::ip_access::IpRestriction;
use crate::edge::{ClientIpResolver, SizeLimits};
use crate::invalid::Invalid;
use crate::rate_limit::Limiter;
use crate::router::RouteTable;
use crate::tls::CertStore;
use crate::upstream::ServicePool;
use arc_swap::ArcSwap;
use consumers::ConsumerSection;
pub use route::RouteTarget;
use sections::{AuthSection, Listeners, Services};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The shared, atomically swappable pointer to the current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Everything the request path needs, compiled from one config file.
pub struct Snapshot {
    pub routes: RouteTable<RouteTarget>,
    services: Services,
    /// Listener addresses (changing them needs a process upgrade, not a reload).
    pub listen: Vec<SocketAddr>,
    /// TLS listener addresses (changing them needs a process upgrade).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificates of the TLS listeners; replaced on reload, so certificates rotate live.
    pub tls: Option<Arc<CertStore>>,
    /// Plaintext listeners also accept HTTP/2 with prior knowledge.
    pub h2c: bool,
    auth: AuthSection,
    consumers: ConsumerSection,
    /// Rate-limit policies and stores, if configured.
    pub rate_limiter: Option<Limiter>,
    /// Finds the client address behind trusted proxies.
    pub client_ip: ClientIpResolver,
    /// Trace propagation and export, if `tracing:` is configured and enabled.
    pub tracing: Option<crate::trace::Tracing>,
    /// The top-level client network lists, checked on every request.
    pub ip_restriction: Option<IpRestriction>,
    /// The response cache's store, when a route caches (kept across reloads with the same
    /// store settings).
    pub cache: Option<CacheSection>,
    /// The top-level CORS policy, for answers given before a route is known (404, 400).
    pub cors: Option<Arc<Cors>>,
    /// The top-level security headers, for answers given before a route is known.
    pub security: Arc<SecurityHeaders>,
    /// The `Via` entry for requests sent upstream (`None`: turned off).
    pub via: Option<crate::edge::protocol::Via>,
    /// Request size limits (the `limits:` section).
    pub sizes: SizeLimits,
    /// Client deadlines and the connection limit.
    pub client: ClientConfig,
    /// Pingora process settings (changing them needs a process upgrade, not a reload).
    pub server: ServerSettings,
    /// The access log settings.
    pub access_log: crate::access_log::AccessLogConfig,
    /// The admin listener address (changing it needs a process upgrade).
    pub admin: AdminConfig,
    /// The document this snapshot was compiled from (text, revision), when it came from one.
    pub origin: Option<Arc<ConfigDoc>>,
}

impl Snapshot {
    /// Reads, parses and compiles a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::compile_doc(ConfigDoc::read(path)?, None).map(|(_, s)| s)
    }

    /// Parses and compiles a document (a file's or an etcd key's), as a reload of `previous`
    /// when given; the snapshot keeps the document.
    pub fn compile_doc(
        doc: ConfigDoc,
        previous: Option<&Snapshot>,
    ) -> Result<(GatewayConfig, Self), ConfigError> {
        let cfg = doc.parse()?;
        let mut snapshot = Self::compile_sections(&cfg, &doc.base, previous)
            .map_err(|e| ConfigError::invalid_in(&doc.name, &doc.text, e))?;
        snapshot.origin = Some(Arc::new(doc));
        Ok((cfg, snapshot))
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
        let base = file.parent().unwrap_or(Path::new("."));
        Self::compile_sections(cfg, base, previous).map_err(|e| ConfigError::invalid(file, e))
    }

    fn compile_sections(
        cfg: &GatewayConfig,
        base: &Path,
        previous: Option<&Snapshot>,
    ) -> Result<Self, Invalid> {
        let listeners = Listeners::compile(&cfg.listen, cfg.tls.as_ref(), base)?;
        let services = Services::compile(cfg, base, previous.map(|p| &p.services))?;
        let consumers = ConsumerSection::compile(cfg, base, previous.map(|p| &p.consumers))?;
        let auth = AuthSection::compile(
            cfg.auth.as_ref(),
            base,
            previous.map(|p| &p.auth),
            &consumers,
        )?;
        let quotas_only =
            crate::rate_limit::by_consumer::ConsumerLimits::needed(consumers.consumers.as_deref())
                .then(crate::rate_limit::RateLimitsConfig::quotas_only);
        let rate_limiter = cfg
            .rate_limits
            .as_ref()
            .or(quotas_only.as_ref())
            .map(|l| {
                Limiter::compile(
                    l,
                    previous.and_then(|p| p.rate_limiter.as_ref()),
                    consumers.consumers.as_deref(),
                )
            })
            .transpose()?;
        cfg.client.check()?;
        cfg.admin.token(base)?;
        let client_ip = ClientIpResolver::compile(&cfg.trusted_proxies)?;
        let tracing = match &cfg.tracing {
            Some(t) => crate::trace::Tracing::compile(t)?,
            None => None,
        };
        let ip_restriction = match &cfg.ip_restriction {
            Some(c) => IpRestriction::compile(c, "ip_restriction")?,
            None => None,
        };
        let cors = cfg
            .cors
            .as_ref()
            .map(|c| Cors::compile(c, "cors"))
            .transpose()?
            .flatten()
            .map(Arc::new);
        let security = Arc::new(SecurityHeaders::compile(
            cfg.security_headers.as_ref(),
            None,
            "security_headers",
        )?);
        let compression = cfg
            .compression
            .as_ref()
            .map(|c| Compression::compile(c, "compression"))
            .transpose()?
            .flatten()
            .map(Arc::new);
        let cache = Self::compile_cache(cfg, previous)?;
        let routes = route::compile_routes(&route::RouteInputs {
            cfg,
            services: &services,
            auth_configured: auth.auth.is_some(),
            consumers: consumers.consumers.as_deref(),
            limiter: rate_limiter.as_ref(),
            cors: &cors,
            security: &security,
            compression: &compression,
            cache: cache.as_ref(),
            base,
        })?;
        let snapshot = Snapshot {
            routes,
            services,
            listen: listeners.listen,
            tls_listen: listeners.tls_listen,
            tls: listeners.tls,
            h2c: cfg.h2c,
            auth,
            consumers,
            rate_limiter,
            client_ip,
            ip_restriction,
            tracing,
            cache,
            cors,
            security,
            via: crate::edge::protocol::Via::compile(&cfg.via, "via")?,
            sizes: cfg.limits,
            client: cfg.client,
            server: cfg.server.clone(),
            access_log: cfg.access_log.clone().relative_to(base),
            admin: cfg.admin.clone(),
            origin: None,
        };
        snapshot.warn_about_unreachable_parts();
        Ok(snapshot)
    }

    /// The cache store, when any route caches; the previous snapshot's is kept if its
    /// settings did not change.
    fn compile_cache(
        cfg: &GatewayConfig,
        previous: Option<&Snapshot>,
    ) -> Result<Option<CacheSection>, Invalid> {
        let cached = cfg
            .routes
            .iter()
            .any(|r| r.cache.as_ref().is_some_and(|c| c.enabled));
        if !cached {
            return Ok(None);
        }
        let previous = previous.and_then(|p| p.cache.as_ref());
        CacheSection::compile(cfg.cache.as_ref(), previous).map(Some)
    }

    /// Warnings for a config that loads but has parts no request can reach.
    fn warn_about_unreachable_parts(&self) {
        let routes = self.routes.routes();
        if let Some(login) = self.auth().and_then(|a| a.login.as_ref())
            && let Some(r) = routes.iter().find(|r| *r.pattern == *login.path)
        {
            log::warn!(
                "{} has the login path {:?}; the login endpoint takes precedence",
                r.name,
                login.path
            );
        }
        for (i, pool) in self.services.pools().iter().enumerate() {
            let used = routes.iter().any(|r| {
                r.target.service == Some(i)
                    || r.target.mirror.as_ref().is_some_and(|m| m.service == i)
                    || r.target
                        .split
                        .as_ref()
                        .is_some_and(|s| s.entries().iter().any(|e| e.service == i))
                    || r.target
                        .aggregate
                        .as_ref()
                        .is_some_and(|a| a.services().any(|s| s == i))
            });
            if !used {
                log::warn!("service {:?} is not used by any route", pool.name);
            }
        }
    }

    /// The service a route points at.
    pub fn service(&self, index: usize) -> &ServicePool {
        self.services.get(index)
    }

    /// The service as shared, for work that outlives the request.
    pub fn shared_service(&self, index: usize) -> &std::sync::Arc<ServicePool> {
        self.services.shared(index)
    }

    /// All services.
    pub fn services(&self) -> &[Arc<ServicePool>] {
        self.services.pools()
    }

    /// JWT verification and login, if configured.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.auth.as_ref()
    }

    /// Consumers, if configured.
    pub fn consumers(&self) -> Option<&Arc<crate::consumer::Consumers>> {
        self.consumers.consumers.as_ref()
    }

    /// The authentication stage's view of the snapshot.
    pub fn gate(&self) -> crate::auth::Gate<'_> {
        crate::auth::Gate {
            auth: self.auth().map(|a| &**a),
            consumers: self.consumers().map(|c| &**c),
        }
    }

    /// JWKS sources to keep fresh.
    pub fn jwks_sources(&self) -> &[Arc<crate::auth::jwks::JwksSource>] {
        self.auth().map_or(&[], |a| a.jwks.as_slice())
    }
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
        assert!(Arc::ptr_eq(&first.services()[0], &same.services()[0]));
        assert!(Arc::ptr_eq(&first.services()[1], &same.services()[1]));
        assert!(Arc::ptr_eq(first.auth().unwrap(), same.auth().unwrap()));
        let (l1, l2) = (
            first.rate_limiter.as_ref().unwrap(),
            same.rate_limiter.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(&l1.local, &l2.local));

        let changed = compile(
            &BASE
                .replace("['127.0.0.1:2']", "['127.0.0.1:3']")
                .replace("0123456789-abcdef", "0123456789-abcdeg"),
            Some(&same),
        );
        assert!(Arc::ptr_eq(&same.services()[0], &changed.services()[0]));
        assert!(!Arc::ptr_eq(&same.services()[1], &changed.services()[1]));
        assert!(!Arc::ptr_eq(same.auth().unwrap(), changed.auth().unwrap()));
        let fresh = compile(BASE, None);
        assert!(!Arc::ptr_eq(&fresh.services()[0], &first.services()[0]));
    }
}
