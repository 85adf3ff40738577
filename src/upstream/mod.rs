//! Upstream services: backend pools with load balancing, peer options, active health checks and
//! DNS discovery.
//!
//! Each `services:` entry compiles into a [`ServicePool`] wrapping a Pingora `LoadBalancer`.
//! Health checks and DNS refreshes are driven by one `HealthChecker` background service that
//! walks the *current* snapshot, so pools created by a later config reload are kept fresh too.

mod attempts;
pub mod breaker;
pub mod budget;
pub mod dns;
mod grpc_health;
mod health;
mod least_request;
mod member;
mod membership;
pub mod tls;

pub use attempts::{Attempts, Failure, Retry};
pub use health::{HealthCheckConfig, HealthCheckKind};

use crate::de::de_duration;
use crate::invalid::Invalid;
use member::Chosen;
use pingora::lb::discovery::{ServiceDiscovery, Static};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy, PeerOptions};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// One entry of `services:` as written in the YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `host:port` strings, `{addr, weight}` or `{dns, weight}` maps; at least one.
    pub backends: Vec<BackendConfig>,
    /// `round_robin` (default, weighted) or `consistent_hash` (ketama).
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Key for `consistent_hash`: `client_ip` (default), `path` or `header:NAME`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Extra attempts on another backend after a connect failure (and, for idempotent requests,
    /// after a failure on a reused connection). Default 1.
    #[serde(default = "default_retries")]
    pub retries: usize,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// TLS to the backends (verification on by default).
    #[serde(default)]
    pub tls: Option<tls::UpstreamTlsConfig>,
    /// Speak HTTP/2 to the backends: over TLS offered through ALPN with HTTP/1.1 as fallback;
    /// in plaintext with prior knowledge (h2c, as gRPC servers expect).
    #[serde(default)]
    pub http2: bool,
    /// The circuit breaker fed by real requests (on by default: 5 failures, 10 s cooldown).
    #[serde(default)]
    pub passive_health: breaker::PassiveHealthConfig,
    /// Retries within 20 % of recent requests plus 10 a second, by default.
    #[serde(default)]
    pub retry_budget: budget::RetryBudgetConfig,
}

fn default_retries() -> usize {
    1
}

/// A backend address, optionally weighted, or a name to follow in DNS.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackendConfig {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "default_weight")]
        weight: usize,
    },
    /// `name:port`, resolved (A and AAAA) at load and every `resolver.interval`; each address
    /// found is a backend of this weight.
    Dns {
        dns: String,
        #[serde(default = "default_weight")]
        weight: usize,
    },
}

fn default_weight() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    ConsistentHash,
    /// The power of two choices on requests in flight, weights respected.
    LeastRequest,
    /// The same draw, comparing requests in flight times recent latency (peak-EWMA style).
    Ewma,
}

/// Upstream timeouts. Pingora's defaults are all "none", which lets a stuck upstream hold a
/// request forever, so every one has a finite default here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// Maximum wait for each read from the upstream (so also the time to first byte).
    #[serde(deserialize_with = "de_duration")]
    pub read: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub write: Duration,
    /// How long an unused keep-alive connection stays pooled. Kept below Node.js's 5 s server
    /// keep-alive default so we never reuse a socket the upstream is about to close.
    #[serde(deserialize_with = "de_duration")]
    pub idle: Duration,
    /// Deadline for the response header across every attempt of a request: no retry starts
    /// after it, and each attempt's connect and read timeouts are cut to what is left of it.
    /// None by default (each attempt has its own `connect` and `read`).
    #[serde(deserialize_with = "crate::de::de_opt_duration")]
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(4),
            total: None,
        }
    }
}

/// What the consistent-hash key is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

/// A compiled service: its backends, how to pick one, and how to talk to it.
pub struct ServicePool {
    pub name: String,
    /// The name as a header value (`X-Gateway-Route`), made once.
    pub name_value: http::HeaderValue,
    /// The name, shared by the spans of attempts to this service.
    pub label: std::sync::Arc<str>,
    balancer: Balancer,
    hash_key: Option<HashKey>,
    /// Extra attempts after a failed one (see [`ServiceConfig::retries`]).
    pub retries: usize,
    peer_options: PeerOptions,
    tls: Option<tls::PeerTls>,
    /// Time from picking a backend to its response header.
    pub upstream_latency: prometheus::Histogram,
    health_interval: Option<Duration>,
    /// The backend of a one-backend service without an active health check or DNS: always
    /// the answer (breaker and retry exclusions permitting), so the balancer is not consulted.
    only: Option<Backend>,
    breakers: Option<breaker::BreakerPolicy>,
    /// How many retries the service's recent traffic allows.
    pub retry_budget: budget::RetryBudget,
    /// `timeouts.total`: the deadline across a request's attempts.
    pub total_timeout: Option<Duration>,
    /// `http2: true`: the backends speak HTTP/2 (h2c in plaintext), as gRPC needs.
    pub http2: bool,
    /// What `least_request` and `ewma` compare; `None` for the other balancers.
    measure: Option<least_request::Measure>,
    /// The DNS names of the service and what they resolved to, when it has `dns:` backends.
    discovered: Option<Arc<dns::Discovered>>,
    /// Warnings of names that did not resolve when the service was built.
    unresolved: Vec<String>,
}

/// One backend as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub struct BackendReport {
    pub address: String,
    /// The host as written (or the DNS name it was found under).
    pub host: String,
    pub weight: usize,
    /// The active health check's view (always true without one).
    pub healthy: bool,
    /// `closed`, `open`, `half-open`, or `off` without passive health.
    pub breaker: &'static str,
    /// Attempts in flight (counted for `least_request` and `ewma` only).
    pub in_flight: usize,
}

/// A balancer's backends and whether its health check counts each ready.
fn ready(backends: &pingora::lb::Backends) -> Vec<(Backend, bool)> {
    backends
        .get_backend()
        .iter()
        .map(|b| (b.clone(), backends.ready(b)))
        .collect()
}

/// How many backends selection may skip over (unhealthy or already tried) before giving up.
const MAX_SELECT_ITERATIONS: usize = 256;

impl ServicePool {
    /// Builds the pool; `key` is the key path used in error messages (`services.users`).
    /// Relative TLS file paths resolve against `base`, the config file's directory.
    pub fn compile(
        name: &str,
        cfg: &ServiceConfig,
        key: &str,
        base: &std::path::Path,
        resolver: &Arc<dns::Resolver>,
    ) -> Result<Self, Invalid> {
        let membership = membership::Membership::compile(cfg, key)?;
        let only = match (
            membership.fixed.len(),
            &cfg.health_check,
            membership.names.len(),
        ) {
            (1, None, 0) => membership.fixed.iter().next().cloned(),
            _ => None,
        };
        let breakers = breaker::BreakerPolicy::compile(&cfg.passive_health);
        let hash_key = match (cfg.load_balancing, cfg.hash_key.as_deref()) {
            (
                LoadBalancing::RoundRobin | LoadBalancing::LeastRequest | LoadBalancing::Ewma,
                None,
            ) => None,
            (
                LoadBalancing::RoundRobin | LoadBalancing::LeastRequest | LoadBalancing::Ewma,
                Some(_),
            ) => {
                return Err(Invalid::new(
                    format!("{key}.hash_key"),
                    "only meaningful with load_balancing: consistent_hash",
                ));
            }
            (LoadBalancing::ConsistentHash, k) => Some(
                parse_hash_key(k.unwrap_or("client_ip"))
                    .map_err(|e| Invalid::new(format!("{key}.hash_key"), e.to_string()))?,
            ),
        };
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| tls::PeerTls::compile(t, base, &format!("{key}.tls")))
            .transpose()?;
        let measure = match cfg.load_balancing {
            LoadBalancing::LeastRequest => Some(least_request::Measure::InFlight),
            LoadBalancing::Ewma => Some(least_request::Measure::InFlightTimesLatency),
            _ => None,
        };
        let (discovery, discovered, unresolved): (Box<dyn ServiceDiscovery + Send + Sync>, _, _) =
            if membership.names.is_empty() {
                (Static::new(membership.fixed), None, Vec::new())
            } else {
                let (d, warnings) = dns::Discovered::new(
                    name,
                    membership.fixed,
                    membership.names,
                    resolver.clone(),
                );
                let d = Arc::new(d);
                (Box::new(dns::Discovery(d.clone())), Some(d), warnings)
            };
        let mut backends = Backends::new(discovery);
        if let Some(hc) = &cfg.health_check {
            health::validate_health_check(hc, key)?;
            backends.set_health_check(
                health::build_health_check(hc, tls.as_ref())
                    .map_err(|e| e.within(&format!("{key}.health_check")))?,
            );
        }
        let balancer = match cfg.load_balancing {
            LoadBalancing::RoundRobin | LoadBalancing::LeastRequest | LoadBalancing::Ewma => {
                Balancer::RoundRobin(load(backends, key)?)
            }
            LoadBalancing::ConsistentHash => Balancer::Consistent(load(backends, key)?),
        };
        Ok(ServicePool {
            name: name.to_string(),
            label: std::sync::Arc::from(name),
            name_value: http::HeaderValue::from_str(name).map_err(|_| {
                Invalid::new(
                    key,
                    "a service name must be printable ASCII (it is sent as a header)",
                )
            })?,
            balancer,
            hash_key,
            retries: cfg.retries,
            peer_options: peer_options(cfg),
            tls,
            upstream_latency: crate::metrics::upstream_histogram(name),
            health_interval: cfg.health_check.as_ref().map(|h| h.interval),
            only,
            breakers,
            total_timeout: cfg.timeouts.total,
            http2: cfg.http2,
            measure,
            discovered,
            unresolved,
            retry_budget: budget::RetryBudget::compile(
                &cfg.retry_budget,
                &format!("{key}.retry_budget"),
                name,
            )?,
        })
    }

    /// The key source for consistent hashing, if the pool hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    /// Picks a healthy backend not in `exclude` (addresses already tried for this request)
    /// whose circuit breaker admits a request.
    pub fn select(&self, key: &[u8], exclude: &[std::net::SocketAddr]) -> Option<Chosen> {
        let admitted = |b: &Backend| {
            !matches!(&b.addr, SocketAddr::Inet(a) if exclude.contains(a))
                && self
                    .breakers
                    .as_ref()
                    .is_none_or(|br| br.admits(&member::of(b).breaker))
        };
        if let Some(only) = &self.only {
            // Without health checks Pingora counts every backend healthy: same answer, without
            // the balancer's per-request hashing of the backend.
            return admitted(only).then(|| Chosen::of(only));
        }
        let picked =
            if let (Some(measure), Balancer::RoundRobin(lb)) = (self.measure, &self.balancer) {
                measure.pick(lb.backends(), admitted, |b| &member::of(b).load)
            } else {
                let accept = |b: &Backend, healthy: bool| healthy && admitted(b);
                match &self.balancer {
                    Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
                    Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
                }
            };
        picked.map(|b| Chosen::of(&b))
    }

    /// Every backend with its health, breaker state and load, for the admin API.
    pub fn report(&self) -> Vec<BackendReport> {
        let backends: Vec<(Backend, bool)> = match (&self.only, &self.balancer) {
            (Some(only), _) => vec![(only.clone(), true)],
            (None, Balancer::RoundRobin(lb)) => ready(lb.backends()),
            (None, Balancer::Consistent(lb)) => ready(lb.backends()),
        };
        backends
            .into_iter()
            .map(|(b, healthy)| {
                let m = member::of(&b);
                BackendReport {
                    address: b.addr.to_string(),
                    host: m.host.to_string(),
                    weight: b.weight,
                    healthy,
                    breaker: self
                        .breakers
                        .as_ref()
                        .map_or("off", |p| p.state(&m.breaker)),
                    in_flight: m.load.in_flight(),
                }
            })
            .collect()
    }

    /// The balancing algorithm's name.
    pub fn algorithm(&self) -> &'static str {
        use least_request::Measure;
        match (&self.balancer, self.measure) {
            (Balancer::Consistent(_), _) => "consistent_hash",
            (_, Some(Measure::InFlight)) => "least_request",
            (_, Some(Measure::InFlightTimesLatency)) => "ewma",
            (Balancer::RoundRobin(_), None) => "round_robin",
        }
    }

    /// The in-flight counter of a backend, when the service balances on it.
    pub fn outstanding_counter(&self, b: &Chosen) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
        self.measure.map(|_| b.member.load.counter())
    }

    /// Whether the balancer wants attempt latencies (`ewma`).
    pub fn tracks_latency(&self) -> bool {
        self.measure == Some(least_request::Measure::InFlightTimesLatency)
    }

    /// Feeds an attempt's time to its response header to the `ewma` balancer.
    pub fn observe_latency(&self, b: &Chosen, took: Duration) {
        b.member.load.observe(took);
    }

    /// Feeds one attempt's outcome to the backend's circuit breaker.
    pub fn record_attempt(&self, b: &Chosen, outcome: breaker::Attempt) {
        if let Some(breakers) = &self.breakers
            && breakers.record(&b.member.breaker, outcome)
        {
            log::warn!(
                "service {}: backend {} failed repeatedly, taken out of rotation (passive health)",
                self.name,
                b.addr
            );
            crate::metrics::backend_ejected(&self.name, &b.addr.to_string());
        }
    }

    /// Builds the peer for a selected backend with this service's timeouts, pooling and TLS;
    /// `upgrades` forwards WebSocket handshakes (only for routes that allow them).
    pub fn peer(&self, backend: &Chosen, upgrades: bool) -> HttpPeer {
        let addr = backend.addr;
        let mut options = self.peer_options.clone();
        // Only routes that opt into WebSocket forward an upgrade handshake: a backend answering
        // `101` to a request the gateway did not mean to tunnel would bypass it.
        if upgrades {
            options.http_upstream_request_policy = HttpUpstreamRequestPolicy::standard();
        }
        match &self.tls {
            Some(tls) => tls.peer(addr, &backend.member.host, options),
            None => {
                let mut peer = HttpPeer::new(addr, false, String::new());
                peer.options = options;
                peer
            }
        }
    }

    /// How often the active health check runs, if the service has one.
    pub fn health_interval(&self) -> Option<Duration> {
        self.health_interval
    }

    /// Runs one round of the active health check and publishes each backend's state.
    pub async fn run_health_check(&self) {
        let backends = self.backends();
        backends.run_health_check(true).await;
        for b in backends.get_backend().iter() {
            crate::metrics::backend_health(&self.name, &b.addr.to_string(), backends.ready(b));
        }
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }

    /// How often the service's DNS names are resolved again, if it has any.
    pub fn discovery_interval(&self) -> Option<Duration> {
        self.discovered.as_ref().map(|d| d.interval())
    }

    /// Resolves the service's DNS names again and hands the balancer the new members.
    pub async fn refresh_discovery(&self) {
        let Some(discovered) = &self.discovered else {
            return;
        };
        discovered.refresh().await;
        let before = self.backends().get_backend();
        let updated = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.update().await,
            Balancer::Consistent(lb) => lb.update().await,
        };
        if let Err(e) = updated {
            log::warn!("service {}: cannot update backends: {e}", self.name);
        }
        let after = self.backends().get_backend();
        for gone in before.difference(&after) {
            crate::metrics::backend_forgotten(&self.name, &gone.addr.to_string());
        }
        crate::metrics::discovered_backends(&self.name, after.len());
    }

    /// Warnings of DNS names that did not resolve when the service was built.
    pub fn unresolved(&self) -> &[String] {
        &self.unresolved
    }
}

fn load<S>(backends: Backends, key: &str) -> Result<LoadBalancer<S>, Invalid>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    use futures::FutureExt;
    let lb = LoadBalancer::<S>::from_backends(backends);
    // Static discovery completes without awaiting anything, so this never yields Pending.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(Invalid::new(
            format!("{key}.backends"),
            format!("cannot load backends: {e}"),
        )),
        None => Err(Invalid::new(
            format!("{key}.backends"),
            "static backend discovery unexpectedly blocked",
        )),
    }
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s {
        "client_ip" => Ok(HashKey::ClientIp),
        "path" => Ok(HashKey::Path),
        other => match other.strip_prefix("header:") {
            Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            None => Err(format!(
                "unknown hash key {other:?} (expected client_ip, path or header:NAME)"
            )),
        },
    }
}

/// Concurrent streams the gateway puts on one HTTP/2 upstream connection: RFC 9113 §5.1.2
/// asks servers to allow at least 100.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Options of a service's peers; upgrades are denied here and allowed per request in
/// [`ServicePool::peer`].
fn peer_options(cfg: &ServiceConfig) -> PeerOptions {
    let t = &cfg.timeouts;
    let mut o = PeerOptions::new();
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
    o.connection_timeout = Some(t.connect);
    o.total_connection_timeout = Some(t.connect);
    o.read_timeout = Some(t.read);
    o.write_timeout = Some(t.write);
    o.idle_timeout = Some(t.idle);
    if cfg.http2 {
        // Over TLS: offer h2 then http/1.1. In plaintext Pingora reads (2, 2) as h2c.
        let min = if cfg.tls.is_some() { 1 } else { 2 };
        o.set_http_version(2, min);
        // Pingora opens one connection per stream by default; gRPC clients multiplex calls
        // over few connections, as HTTP/2 means (the server's SETTINGS_MAX_CONCURRENT_STREAMS
        // still bounds each connection).
        o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    o
}
