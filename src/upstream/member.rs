//! A service's members: what the gateway keeps about each backend beside Pingora's health
//! state, and how `backends:` entries become backends.
//!
//! The state rides in the `Backend`'s extensions (Pingora's `Backend` compares and hashes only
//! address and weight), so it follows the backend through Pingora's selection without a lookup
//! table, and a backend that DNS discovery keeps across refreshes keeps its breaker and load.

use super::breaker::Breaker;
use super::dns::DnsName;
use super::least_request::Load;
use super::{BackendConfig, ServiceConfig};
use crate::invalid::Invalid;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::sync::Arc;

/// One backend's own state.
pub struct Member {
    /// The host as written in the config (or the DNS name): the default TLS server name.
    pub host: Box<str>,
    pub breaker: Breaker,
    pub load: Load,
}

/// A backend at `addr` with fresh state.
pub fn backend(addr: std::net::SocketAddr, weight: usize, host: &str) -> Backend {
    let mut b = Backend {
        addr: SocketAddr::Inet(addr),
        weight,
        ext: Default::default(),
    };
    b.ext.insert(Arc::new(Member {
        host: host.into(),
        breaker: Breaker::default(),
        load: Load::default(),
    }));
    b
}

/// The state of a backend of one of our pools.
pub fn of(b: &Backend) -> &Member {
    // Every backend a pool holds is made by `backend` above (fixed ones at compile time,
    // discovered ones by `dns.rs`), so the extension is always there.
    b.ext
        .get::<Arc<Member>>()
        .expect("pool backends are built by member::backend")
}

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
    Ok(backend(resolved, weight, host))
}
