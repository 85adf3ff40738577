//! DNS discovery: `dns: name:port` backends, resolved (A and AAAA) at load and then on an
//! interval by a background task, never on the request path.
//!
//! A failed resolution keeps the name's last good addresses, so a DNS outage does not empty a
//! pool; an address that stays in the answer keeps its backend state (breaker, load, health).
//! Pingora's discovery trait has no DNS implementation, so this file feeds it: [`Discovered`]
//! holds the current members and [`Discovery`] hands them to the load balancer.

use super::member;
use crate::de::de_duration;
use crate::invalid::Invalid;
use hickory_resolver::config::{NameServerConfig, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `resolver:`: which name servers resolve `dns:` backends, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// Name servers as `ip` or `ip:port`; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<String>,
    /// How often every name is resolved again.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Deadline for resolving one name.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: Vec::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The compiled `resolver:` section.
#[derive(Debug)]
pub struct Resolver {
    /// `None`: the system's configuration.
    servers: Option<Vec<SocketAddr>>,
    pub interval: Duration,
    timeout: Duration,
}

impl Resolver {
    pub fn compile(cfg: &ResolverConfig) -> Result<Self, Invalid> {
        let mut servers = Vec::with_capacity(cfg.servers.len());
        for (i, s) in cfg.servers.iter().enumerate() {
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    Invalid::new(
                        format!("resolver.servers[{i}]"),
                        format!("{s:?} is not an ip or ip:port address"),
                    )
                })?;
            servers.push(addr);
        }
        if cfg.interval < Duration::from_millis(100) {
            return Err(Invalid::new("resolver.interval", "must be at least 100ms"));
        }
        if cfg.timeout.is_zero() {
            return Err(Invalid::new("resolver.timeout", "must be positive"));
        }
        Ok(Resolver {
            servers: (!servers.is_empty()).then_some(servers),
            interval: cfg.interval,
            timeout: cfg.timeout,
        })
    }

    /// The addresses `host` has now (A and AAAA). A fresh hickory resolver per round: the
    /// interval is the refresh policy, and a system configuration is read anew each time.
    async fn lookup(&self, host: &str) -> Result<BTreeSet<IpAddr>, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &self.servers {
            Some(servers) => {
                let config = HickoryConfig::from_name_servers(
                    servers.iter().map(|s| name_server(*s)).collect(),
                );
                hickory_resolver::Resolver::builder_with_config(config, provider)
            }
            None => hickory_resolver::Resolver::builder(provider).map_err(|e| e.to_string())?,
        };
        builder.options_mut().timeout = self.timeout;
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.timeout, resolver.lookup_ip(host))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        let ips: BTreeSet<IpAddr> = answer.iter().collect();
        if ips.is_empty() {
            return Err("no A or AAAA record".into());
        }
        Ok(ips)
    }
}

/// For tests and callers without a `resolver:` section.
impl Default for Resolver {
    fn default() -> Self {
        Resolver::compile(&ResolverConfig::default())
            .expect("the default resolver settings are valid")
    }
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}

/// One `dns:` backend: the name, its port and weight, and its last good addresses.
pub struct DnsName {
    /// Key path, for warnings (`services.api.backends[0].dns`).
    key: String,
    host: Box<str>,
    port: u16,
    weight: usize,
    last: Mutex<Vec<Backend>>,
}

impl DnsName {
    /// Reads `name:port`.
    pub fn compile(spec: &str, weight: usize, key: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Invalid::new(key, format!("{spec:?}: {why} (expected name:port)"));
        let (host, port) = spec.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no name"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        Ok(DnsName {
            key: key.to_string(),
            host: host.into(),
            port,
            weight,
            last: Mutex::new(Vec::new()),
        })
    }

    pub fn same_as(&self, other: &DnsName) -> bool {
        self.host == other.host && self.port == other.port
    }

    /// The last good backends (a panic elsewhere while holding them leaves them usable).
    fn last(&self) -> std::sync::MutexGuard<'_, Vec<Backend>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        inet(&self.last())
    }

    /// Takes a new answer; returns the addresses before it when they changed. Addresses that
    /// stay keep their backend (and with it breaker and load state).
    fn take(&self, ips: &BTreeSet<IpAddr>) -> Option<Vec<SocketAddr>> {
        let mut last = self.last();
        let before = inet(&last);
        let now: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect();
        if before == now {
            return None;
        }
        let kept: HashMap<SocketAddr, Backend> = last
            .drain(..)
            .filter_map(|b| b.as_inet().copied().map(|a| (a, b)))
            .collect();
        *last = now
            .iter()
            .map(|a| match kept.get(a) {
                Some(b) => b.clone(),
                None => member::backend(*a, self.weight, &self.host),
            })
            .collect();
        Some(before)
    }
}

/// The addresses of `backends` (all inet: DNS answers are IP addresses).
fn inet(backends: &[Backend]) -> Vec<SocketAddr> {
    backends
        .iter()
        .filter_map(|b| b.as_inet().copied())
        .collect()
}

/// The members of a service with `dns:` backends: fixed ones plus each name's last good set.
pub struct Discovered {
    service: String,
    fixed: BTreeSet<Backend>,
    names: Vec<DnsName>,
    resolver: Arc<Resolver>,
}

impl Discovered {
    /// Resolves every name once, blocking (the config is being loaded); names that do not
    /// resolve are logged and returned as warnings, and start with no address.
    pub fn new(
        service: &str,
        fixed: BTreeSet<Backend>,
        names: Vec<DnsName>,
        resolver: Arc<Resolver>,
    ) -> (Self, Vec<String>) {
        let d = Discovered {
            service: service.to_string(),
            fixed,
            names,
            resolver,
        };
        let warnings = d.resolve_blocking();
        crate::metrics::discovered_backends(service, d.members().len());
        for w in &warnings {
            log::warn!("{w}");
        }
        (d, warnings)
    }

    fn resolve_blocking(&self) -> Vec<String> {
        // Loading may run inside the server's runtime (a reload), where blocking on another
        // runtime is refused: a short-lived thread with its own runtime works from anywhere.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(self.resolve_all()),
                    Err(e) => vec![format!("cannot start the DNS resolver: {e}")],
                }
            })
            .join()
            .unwrap_or_else(|_| vec!["the DNS resolver panicked".into()])
        })
    }

    /// One round over every name; returns the warnings of names that failed.
    async fn resolve_all(&self) -> Vec<String> {
        let answers =
            futures::future::join_all(self.names.iter().map(|n| self.resolver.lookup(&n.host)))
                .await;
        let mut warnings = Vec::new();
        for (name, answer) in self.names.iter().zip(answers) {
            match answer {
                Ok(ips) => {
                    let outcome = match name.take(&ips) {
                        Some(before) => {
                            log::info!(
                                "service {}: {} resolves to {:?} (was {before:?})",
                                self.service,
                                name.host,
                                name.addresses()
                            );
                            "changed"
                        }
                        None => "unchanged",
                    };
                    crate::metrics::dns_resolution(&self.service, outcome);
                }
                Err(e) => {
                    crate::metrics::dns_resolution(&self.service, "failed");
                    let kept = match name.addresses().len() {
                        0 => "it has no address until it resolves".to_string(),
                        n => format!("keeping its {n} last known address(es)"),
                    };
                    warnings.push(format!(
                        "{}: cannot resolve {:?}: {e}; {kept}",
                        name.key, name.host
                    ));
                }
            }
        }
        warnings
    }

    /// Resolves every name again (the background task's round); failures are logged.
    pub async fn refresh(&self) {
        for w in self.resolve_all().await {
            log::warn!("{w}");
        }
    }

    /// Fixed backends and every name's current addresses.
    pub fn members(&self) -> BTreeSet<Backend> {
        let mut all = self.fixed.clone();
        for n in &self.names {
            all.extend(n.last().iter().cloned());
        }
        all
    }

    /// How often the names are resolved again.
    pub fn interval(&self) -> Duration {
        self.resolver.interval
    }
}

/// Pingora's view of a [`Discovered`]: the current members, without waiting on DNS (the
/// background task resolves; this only reads what it found).
pub struct Discovery(pub Arc<Discovered>);

#[async_trait::async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.members(), HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_a_host_and_a_port() {
        for bad in ["api.internal", ":80", "api.internal:http", "api:70000"] {
            let e = DnsName::compile(bad, 1, "services.a.backends[0].dns").err();
            assert_eq!(
                e.map(|e| e.key).as_deref(),
                Some("services.a.backends[0].dns"),
                "{bad}"
            );
        }
        let n = DnsName::compile("api.internal:8080", 2, "k").unwrap();
        assert_eq!((&*n.host, n.port, n.weight), ("api.internal", 8080, 2));
    }

    #[test]
    fn an_answer_keeps_the_backends_of_addresses_that_stay() {
        let n = DnsName::compile("api:80", 1, "k").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first: BTreeSet<_> = [ip("127.0.0.1")].into();
        assert_eq!(n.take(&first), Some(vec![]));
        let kept = n.last.lock().unwrap()[0].clone();
        member::of(&kept)
            .load
            .counter()
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n.take(&first), None, "the same answer changes nothing");
        let second: BTreeSet<_> = [ip("127.0.0.1"), ip("::1")].into();
        assert!(n.take(&second).is_some());
        let last = n.last.lock().unwrap();
        assert_eq!(last.len(), 2);
        let same = last.iter().find(|b| b.addr == kept.addr).unwrap();
        let count = member::of(same).load.counter();
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 7);
    }

    #[test]
    fn resolver_servers_take_an_ip_with_or_without_port() {
        let cfg = ResolverConfig {
            servers: vec!["127.0.0.1:5353".into(), "::1".into()],
            ..Default::default()
        };
        let r = Resolver::compile(&cfg).unwrap();
        let servers = r.servers.unwrap();
        assert_eq!(servers[1], "[::1]:53".parse().unwrap());
        let bad = ResolverConfig {
            servers: vec!["dns.google".into()],
            ..Default::default()
        };
        assert_eq!(
            Resolver::compile(&bad).unwrap_err().key,
            "resolver.servers[0]"
        );
    }
}
