//! The compile steps of the sections that carry long-lived state across reloads: each step
//! owns the fingerprint that decides whether a reload may keep what the previous snapshot built.

use crate::auth::{Auth, AuthConfig};
use crate::config::GatewayConfig;
use crate::invalid::Invalid;
use crate::tls::{CertStore, TlsConfig};
use crate::upstream::dns::Resolver;
use crate::upstream::{BackendConfig, ServicePool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The listener addresses and the certificates of the TLS ones.
pub struct Listeners {
    /// Plaintext addresses (changing them needs a process upgrade, not a reload).
    pub listen: Vec<SocketAddr>,
    /// TLS addresses (changing them needs a process upgrade).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificates of the TLS listeners; replaced on reload, so certificates rotate live.
    pub tls: Option<Arc<CertStore>>,
}

impl Listeners {
    /// Parses `listen` and `tls`; at least one address must be given.
    pub fn compile(
        listen: &[String],
        tls: Option<&TlsConfig>,
        base: &Path,
    ) -> Result<Self, Invalid> {
        let listen = parse_addrs(listen, "listen")?;
        let (tls_listen, tls) = match tls {
            Some(t) => {
                let addrs = parse_addrs(&t.listen, "tls.listen")?;
                if addrs.is_empty() {
                    return Err(Invalid::new(
                        "tls.listen",
                        "at least one address is required",
                    ));
                }
                (addrs, Some(Arc::new(CertStore::load(t, base, "tls")?)))
            }
            None => (Vec::new(), None),
        };
        if listen.is_empty() && tls_listen.is_empty() {
            return Err(Invalid::new(
                "listen",
                "at least one address is required (in listen or tls.listen)",
            ));
        }
        Ok(Listeners {
            listen,
            tls_listen,
            tls,
        })
    }
}

/// The service pools, by index, with what each was compiled from.
pub struct Services {
    pools: Vec<Arc<ServicePool>>,
    index: HashMap<String, usize>,
    /// Settings and TLS file contents per pool: an unchanged one keeps its pool (and with it
    /// the health and breaker state) across a reload.
    fingerprints: Vec<String>,
}

impl Services {
    /// Compiles `services:`, reusing the pools of `previous` whose fingerprint is unchanged.
    pub fn compile(
        gateway: &GatewayConfig,
        base: &Path,
        previous: Option<&Services>,
    ) -> Result<Self, Invalid> {
        let cfg = &gateway.services;
        let resolver = Arc::new(Resolver::compile(&gateway.resolver)?);
        let mut out = Services {
            pools: Vec::with_capacity(cfg.len()),
            index: HashMap::with_capacity(cfg.len()),
            fingerprints: Vec::with_capacity(cfg.len()),
        };
        for (name, svc) in cfg {
            // TLS files are part of a service's identity: a reload after a certificate or CA
            // rotation must rebuild the pool rather than keep the old material.
            let tls_files = svc
                .tls
                .as_ref()
                .map(|t| files_digest(t.referenced_files().map(|f| base.join(f))));
            // A service following DNS is rebuilt when the resolver settings change.
            let resolver_cfg = svc
                .backends
                .iter()
                .any(|b| matches!(b, BackendConfig::Dns { .. }))
                .then_some(&gateway.resolver);
            let fingerprint = format!("{name}|{svc:?}|{tls_files:?}|{resolver_cfg:?}");
            let kept = previous.and_then(|p| {
                let i = p.fingerprints.iter().position(|f| *f == fingerprint)?;
                Some(p.pools[i].clone())
            });
            let pool = match kept {
                Some(pool) => pool,
                None => Arc::new(ServicePool::compile(
                    name,
                    svc,
                    &format!("services.{name}"),
                    base,
                    &resolver,
                )?),
            };
            out.index.insert(name.clone(), out.pools.len());
            out.pools.push(pool);
            out.fingerprints.push(fingerprint);
        }
        Ok(out)
    }

    /// The pool at `index`.
    pub fn get(&self, index: usize) -> &ServicePool {
        &self.pools[index]
    }

    /// The pool as shared, for work that outlives the request (mirror copies).
    pub fn shared(&self, index: usize) -> &Arc<ServicePool> {
        &self.pools[index]
    }

    /// All pools, in name order.
    pub fn pools(&self) -> &[Arc<ServicePool>] {
        &self.pools
    }

    /// The index of the service called `name`, or an error listing the defined ones.
    pub fn find(&self, name: &str) -> Result<usize, String> {
        self.index.get(name).copied().ok_or_else(|| {
            let mut known: Vec<&str> = self.index.keys().map(String::as_str).collect();
            known.sort_unstable();
            format!(
                "unknown service {name:?} (defined services: {})",
                known.join(", ")
            )
        })
    }

    /// Name to index, for sections that refer to services by name (aggregate calls).
    pub fn names(&self) -> HashMap<&str, usize> {
        self.index.iter().map(|(n, i)| (n.as_str(), *i)).collect()
    }
}

/// JWT verification and login, with the fingerprint that keeps its token cache and key sets.
#[derive(Default)]
pub struct AuthSection {
    pub auth: Option<Arc<Auth>>,
    /// Settings plus the bytes of every file the section reads (keys, key sets, users), so
    /// rotating a key file and reloading never keeps tokens cached under old keys.
    fingerprint: Option<[u8; 32]>,
}

impl AuthSection {
    /// Compiles `auth:`, keeping `previous` when nothing it was built from changed.
    pub fn compile(
        cfg: Option<&AuthConfig>,
        base: &Path,
        previous: Option<&AuthSection>,
        consumers: &super::consumers::ConsumerSection,
    ) -> Result<Self, Invalid> {
        let Some(cfg) = cfg.map(|a| a.clone().relative_to(base)) else {
            return Ok(AuthSection::default());
        };
        // Tokens are mapped to consumers when verified: new consumers mean a new token cache.
        let fingerprint = Some(auth_fingerprint(&cfg, consumers.fingerprint));
        let kept = previous
            .filter(|p| p.fingerprint == fingerprint)
            .and_then(|p| p.auth.clone());
        let auth = match kept {
            Some(auth) => auth,
            None => Arc::new(Auth::compile(&cfg, consumers.consumers.as_ref())?),
        };
        Ok(AuthSection {
            auth: Some(auth),
            fingerprint,
        })
    }
}

fn auth_fingerprint(cfg: &AuthConfig, consumers: Option<[u8; 32]>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(consumers.unwrap_or_default());
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
fn parse_addrs(addrs: &[String], key: &str) -> Result<Vec<SocketAddr>, Invalid> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|e| {
                Invalid::new(
                    format!("{key}[{i}]"),
                    format!("{a:?} is not an ip:port address ({e})"),
                )
            })
        })
        .collect()
}
