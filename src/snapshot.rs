//! The compiled, immutable form of the configuration and the pointer that publishes it.
//!
//! `Snapshot::compile` is the only place config is checked ("parse, don't validate"): whatever
//! it returns is known good, and request-path code never re-checks it. A request loads the
//! pointer once and keeps that `Arc` for its whole life, so a reload never mixes two configs.

use crate::config::{ConfigError, GatewayConfig};
use crate::router::RouteTable;
use crate::upstream::ServicePool;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The shared, atomically swappable pointer to the current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Everything the request path needs, compiled from one config file.
pub struct Snapshot {
    /// Routes; each route's target is an index into `services`.
    pub routes: RouteTable<usize>,
    services: Vec<ServicePool>,
    /// Listener addresses (changing them needs a process upgrade, not a reload).
    pub listen: Vec<SocketAddr>,
}

impl Snapshot {
    /// Reads, parses and compiles a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg = GatewayConfig::load(path)?;
        Self::compile(&cfg, path)
    }

    /// Compiles a parsed config; errors name `file` and the offending key.
    pub fn compile(cfg: &GatewayConfig, file: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            reason,
        };
        if cfg.listen.is_empty() {
            return Err(invalid(
                "listen".into(),
                "at least one address is required".into(),
            ));
        }
        let listen = cfg
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        format!("listen[{i}]"),
                        format!("{a:?} is not an ip:port address ({e})"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut services = Vec::with_capacity(cfg.services.len());
        let mut index = HashMap::new();
        for (name, svc) in &cfg.services {
            let key = format!("services.{name}");
            // ServicePool errors already start with the key path; split it back off.
            let pool =
                ServicePool::compile(name, svc, &key).map_err(|e| match e.split_once(": ") {
                    Some((k, r)) => invalid(k.to_string(), r.to_string()),
                    None => invalid(key.clone(), e),
                })?;
            index.insert(name.as_str(), services.len());
            services.push(pool);
        }
        if cfg.routes.is_empty() {
            return Err(invalid(
                "routes".into(),
                "at least one route is required".into(),
            ));
        }
        let routes = RouteTable::compile(&cfg.routes, |name| {
            index.get(name).copied().ok_or_else(|| {
                let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
                format!(
                    "unknown service {name:?} (defined services: {})",
                    known.join(", ")
                )
            })
        })
        .map_err(|e| invalid(e.key, e.reason))?;
        for pool in &services {
            if !routes
                .routes()
                .iter()
                .any(|r| services_name(&services, r.target) == pool.name)
            {
                log::warn!("service {:?} is not used by any route", pool.name);
            }
        }
        Ok(Snapshot {
            routes,
            services,
            listen,
        })
    }

    /// The service a route points at.
    pub fn service(&self, index: usize) -> &ServicePool {
        &self.services[index]
    }

    /// All services.
    pub fn services(&self) -> &[ServicePool] {
        &self.services
    }
}

fn services_name(services: &[ServicePool], i: usize) -> &str {
    &services[i].name
}
