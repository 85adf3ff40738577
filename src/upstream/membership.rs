//! How a service's `backends:` entries become backends: fixed addresses resolved once, and
//! DNS names handed to discovery.

use super::dns::DnsName;
use super::member;
use super::{BackendConfig, ServiceConfig};
use crate::invalid::Invalid;
use pingora::lb::Backend;
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;

/// A service's `backends:` sorted out: fixed addresses resolved now, DNS names for discovery.
pub struct Membership {
    pub fixed: BTreeSet<Backend>,
    pub names: Vec<DnsName>,
}

impl Membership {
    /// Reads `cfg.backends`; `key` is the service's key path (`services.users`).
    pub fn compile(cfg: &ServiceConfig, key: &str) -> Result<Self, Invalid> {
        if cfg.backends.is_empty() {
            return Err(Invalid::new(
                format!("{key}.backends"),
                "at least one backend is required",
            ));
        }
        let mut out = Membership {
            fixed: BTreeSet::new(),
            names: Vec::new(),
        };
        for (i, b) in cfg.backends.iter().enumerate() {
            let bkey = format!("{key}.backends[{i}]");
            let (addr, weight) = match b {
                BackendConfig::Addr(a) => (a.as_str(), 1),
                BackendConfig::Weighted { addr, weight } => (addr.as_str(), *weight),
                BackendConfig::Dns { dns, weight } => {
                    check_weight(*weight, &bkey)?;
                    let name = DnsName::compile(dns, *weight, &format!("{bkey}.dns"))?;
                    if out.names.iter().any(|n| n.same_as(&name)) {
                        return Err(Invalid::new(bkey, format!("duplicate backend {dns:?}")));
                    }
                    out.names.push(name);
                    continue;
                }
            };
            check_weight(weight, &bkey)?;
            let backend = fixed_backend(addr, weight, &bkey)?;
            if !out.fixed.insert(backend) {
                return Err(Invalid::new(bkey, format!("duplicate backend {addr:?}")));
            }
        }
        Ok(out)
    }
}

fn check_weight(weight: usize, bkey: &str) -> Result<(), Invalid> {
    if weight == 0 {
        return Err(Invalid::new(format!("{bkey}.weight"), "must be at least 1"));
    }
    Ok(())
}

/// Resolves a `host:port` backend once, at load time: Pingora would otherwise resolve with
/// blocking DNS (and panic on failure) when building a peer on the request path. Names that
/// should follow DNS changes are `dns:` backends.
fn fixed_backend(addr: &str, weight: usize, bkey: &str) -> Result<Backend, Invalid> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| Invalid::new(bkey, format!("cannot resolve {addr:?} as host:port: {e}")))?
        .next()
        .ok_or_else(|| Invalid::new(bkey, format!("{addr:?} resolves to no address")))?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(member::backend(resolved, weight, host))
}
