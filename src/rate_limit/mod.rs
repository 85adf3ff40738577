//! Per-client rate limiting: named GCRA policies, keys taken only from verified identity or the
//! resolved client address, exact `X-RateLimit-*` / `RateLimit-*` headers, an in-process store
//! and a Redis store shared by a cluster, and optional per-key concurrency limits.

mod admission;
pub mod by_consumer;
pub mod local;
pub mod quota;
pub mod redis_store;

pub use admission::Admission;

use crate::de::de_duration;
use crate::invalid::Invalid;
use http::HeaderValue;
use local::{Gcra, LocalStore, Verdict};
use pingora::http::ResponseHeader;
use redis_store::{RedisConfig, RedisStore};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The top-level `rate_limits:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Named policies.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Policy applied to routes that do not list `rate_limits`.
    #[serde(default)]
    pub default: Option<String>,
    /// `local` (default, per process) or `redis` (shared by every instance).
    #[serde(default)]
    pub store: StoreKind,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// What a Redis outage means: `allow`, `deny` (503) or `local` (default: per-process limits).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Keys tracked in the local store before it starts forgetting active keys.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// How often idle keys are dropped from the local store.
    #[serde(default = "default_sweep", deserialize_with = "de_duration")]
    pub sweep_interval: Duration,
}

impl RateLimitsConfig {
    /// No policies, local store: the limiter consumers' quotas need without a `rate_limits:`
    /// section.
    pub fn quotas_only() -> Self {
        RateLimitsConfig {
            policies: BTreeMap::new(),
            default: None,
            store: StoreKind::Local,
            redis: None,
            on_store_error: OnStoreError::Local,
            max_keys: default_max_keys(),
            sweep_interval: default_sweep(),
        }
    }
}

fn default_max_keys() -> usize {
    1_000_000
}
fn default_sweep() -> Duration {
    Duration::from_secs(10)
}

/// One named policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Requests admitted per `period`, sustained.
    pub requests: u64,
    #[serde(deserialize_with = "de_duration")]
    pub period: Duration,
    /// Requests admitted at once (bucket size); default `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `user` (default), `consumer`, `ip`, `header:NAME`, `claim:NAME`, `route` or `global`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Optional cap on requests in flight per key.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

fn default_key() -> String {
    "user".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    Allow,
    Deny,
    #[default]
    Local,
}

/// What a policy keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Verified `sub`, else the client IP.
    User,
    Ip,
    /// A request header, else the client IP.
    Header(http::HeaderName),
    /// A verified claim, else the client IP.
    Claim(crate::identity::ClaimPath),
    /// The verified consumer's id, else the client IP.
    Consumer,
    Route,
    Global,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    /// Prefix of this policy's store keys: its name and settings, so a reload that keeps the
    /// policy keeps its counters and one that changes it starts fresh.
    store_id: Box<[u8]>,
    pub gcra: Gcra,
    pub key: KeySource,
    pub concurrency: Option<u32>,
    limit_value: HeaderValue,
    policy_value: HeaderValue,
}

/// Where the caller's identity comes from when building keys.
pub struct KeyInputs<'a> {
    pub client_ip: IpAddr,
    pub identity: Option<&'a crate::identity::Identity>,
    pub headers: &'a http::HeaderMap,
    pub route: usize,
}

/// The policy closest to exhaustion, reported in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReport {
    pub policy: Arc<str>,
    pub limit: u64,
    pub window_secs: u64,
    pub verdict: Verdict,
    /// Precomputed per policy: `X-RateLimit-Limit` and `RateLimit-Policy` values.
    limit_value: HeaderValue,
    policy_value: HeaderValue,
}

impl LimitReport {
    /// Adds `X-RateLimit-*` and the IETF draft `RateLimit-Policy` / `RateLimit` headers.
    pub fn write(&self, h: &mut ResponseHeader) {
        self.for_each_header(|name, value| {
            let _ = h.insert_header(name, value);
        });
    }

    /// The same headers as a list, for a refusal (errors carry their headers themselves).
    pub fn to_headers(&self) -> Box<[(&'static str, HeaderValue)]> {
        let mut out = Vec::with_capacity(6);
        self.for_each_header(|name, value| out.push((name, value)));
        out.into_boxed_slice()
    }

    fn for_each_header(&self, mut put: impl FnMut(&'static str, HeaderValue)) {
        use std::fmt::Write;
        let v = &self.verdict;
        // The per-request values are rendered into one buffer and handed out as slices of it:
        // one allocation instead of one per header value.
        let mut buf = bytes::BytesMut::with_capacity(48 + self.policy.len());
        let _ = write!(buf, "{}", v.remaining);
        let remaining = buf.len();
        let _ = write!(buf, "{}", v.reset_secs);
        let reset = buf.len();
        let _ = write!(
            buf,
            "\"{}\";r={};t={}",
            self.policy, v.remaining, v.reset_secs
        );
        let ratelimit = buf.len();
        if !v.allowed {
            let _ = write!(buf, "{}", v.retry_after_secs);
        }
        let buf = buf.freeze();
        // Digits and a policy name checked at compile time: always valid header values.
        put(X_LIMIT, self.limit_value.clone());
        put(POLICY, self.policy_value.clone());
        let mut slice = |name: &'static str, r: std::ops::Range<usize>| {
            if let Ok(value) = HeaderValue::from_maybe_shared(buf.slice(r)) {
                put(name, value);
            }
        };
        slice(X_REMAINING, 0..remaining);
        slice(X_RESET, remaining..reset);
        slice(RATELIMIT, reset..ratelimit);
        if !v.allowed {
            slice("retry-after", ratelimit..buf.len());
        }
    }
}

// `&'static str` names: Pingora keeps their bytes as the case-preserved name without copying
// (a `HeaderName` would be copied into a fresh buffer first).
const X_LIMIT: &str = "x-ratelimit-limit";
const X_REMAINING: &str = "x-ratelimit-remaining";
const X_RESET: &str = "x-ratelimit-reset";
const POLICY: &str = "ratelimit-policy";
const RATELIMIT: &str = "ratelimit";

/// The outcome of all policies of a route.
pub enum Decision {
    /// Admitted; report (if any) goes on the response; guards hold concurrency slots.
    Admit {
        report: Option<LimitReport>,
        guards: Vec<pingora_limits::inflight::Guard>,
    },
    /// Refused with 429.
    Refuse(LimitReport),
    /// The shared store is down and `on_store_error: deny`.
    StoreDown,
}

/// The compiled `rate_limits:` section.
pub struct Limiter {
    policies: Vec<Arc<Policy>>,
    by_name: BTreeMap<String, usize>,
    default: Option<usize>,
    /// Shared with the next snapshot on reload (see [`Limiter::compile`]).
    pub local: Arc<LocalStore>,
    max_keys: usize,
    redis: Option<RedisStore>,
    on_store_error: OnStoreError,
    inflight: Arc<pingora_limits::inflight::Inflight>,
    pub sweep_interval: Duration,
    /// Consumers' own policies and quotas.
    consumer_limits: by_consumer::ConsumerLimits,
    /// In-process quota counts (shared with the next snapshot on reload).
    quotas: Arc<quota::LocalQuotas>,
}

impl Limiter {
    /// Compiles the `rate_limits:` section. With the previous snapshot's limiter, its key store
    /// and in-flight counters are kept (store keys carry each policy's settings, so only
    /// unchanged policies find their old counters).
    pub fn compile(
        cfg: &RateLimitsConfig,
        previous: Option<&Limiter>,
        consumers: Option<&crate::consumer::Consumers>,
    ) -> Result<Self, Invalid> {
        let mut policies = Vec::new();
        let mut by_name = BTreeMap::new();
        for (name, p) in &cfg.policies {
            let key = format!("rate_limits.policies.{name}");
            policies.push(Arc::new(compile_policy(name, p, &key)?));
            by_name.insert(name.clone(), policies.len() - 1);
        }
        let default = match &cfg.default {
            Some(d) => Some(*by_name.get(d).ok_or_else(|| {
                Invalid::new(
                    "rate_limits.default".to_string(),
                    format!("no policy named {d:?}"),
                )
            })?),
            None => None,
        };
        let redis = match (cfg.store, &cfg.redis) {
            (StoreKind::Redis, Some(r)) => Some(RedisStore::compile(r)?),
            (StoreKind::Redis, None) => {
                return Err(Invalid::new(
                    "rate_limits.redis",
                    "required with store: redis",
                ));
            }
            (StoreKind::Local, _) => None,
        };
        if cfg.max_keys == 0 {
            return Err(Invalid::new("rate_limits.max_keys", "must be at least 1"));
        }
        let kept = previous.filter(|p| p.max_keys == cfg.max_keys);
        let consumer_limits = by_consumer::ConsumerLimits::compile(consumers, &by_name)?;
        Ok(Limiter {
            consumer_limits,
            quotas: by_consumer::kept_quotas(previous),
            policies,
            by_name,
            default,
            local: kept.map_or_else(
                || Arc::new(LocalStore::new(cfg.max_keys)),
                |p| p.local.clone(),
            ),
            max_keys: cfg.max_keys,
            redis,
            on_store_error: cfg.on_store_error,
            inflight: kept.map_or_else(
                || Arc::new(pingora_limits::inflight::Inflight::new()),
                |p| p.inflight.clone(),
            ),
            sweep_interval: cfg.sweep_interval.max(Duration::from_millis(100)),
        })
    }

    /// Resolves a route's `rate_limits` list (None = the default policy) into policy indexes.
    /// The name of policy `index`, as configured.
    pub fn policy_name(&self, index: usize) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, i)| **i == index)
            .map(|(n, _)| n.as_str())
    }

    pub fn route_policies(&self, names: Option<&[String]>) -> Result<Vec<usize>, String> {
        match names {
            None => Ok(self.default.into_iter().collect()),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.by_name.get(n).copied().ok_or_else(|| {
                        let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
                        format!("no policy named {n:?} (defined: {})", known.join(", "))
                    })
                })
                .collect(),
        }
    }

    /// A consumer's own policies (beside its routes').
    pub fn consumer_policies(&self, consumer: &crate::identity::ConsumerTag) -> &[usize] {
        self.consumer_limits.policies(consumer)
    }

    /// Applies every listed policy; all must admit.
    pub async fn check(&self, policy_ids: &[usize], inputs: &KeyInputs<'_>) -> Decision {
        let mut report: Option<LimitReport> = None;
        let mut guards = Vec::new();
        for &id in policy_ids {
            let policy = &self.policies[id];
            let text = key_text(policy, inputs);
            let key = self.local.key(&[&policy.store_id, text.tag, text.value()]);
            let verdict = match self.verdict(policy, key, &text).await {
                Some(v) => v,
                None if self.on_store_error == OnStoreError::Deny => return Decision::StoreDown,
                None => continue,
            };
            let this = LimitReport {
                policy: policy.name.clone(),
                limit: policy.gcra.requests,
                window_secs: policy.gcra.period.as_secs().max(1),
                verdict,
                limit_value: policy.limit_value.clone(),
                policy_value: policy.policy_value.clone(),
            };
            if !verdict.allowed {
                return Decision::Refuse(this);
            }
            if let Some(max) = policy.concurrency {
                let (guard, in_flight) = self.inflight.incr(key, 1);
                if in_flight > max as isize {
                    let mut refused = this;
                    refused.verdict.allowed = false;
                    refused.verdict.retry_after_secs = 1;
                    return Decision::Refuse(refused);
                }
                guards.push(guard);
            }
            let closer = report.as_ref().is_none_or(|r| {
                ratio(verdict.remaining, this.limit) < ratio(r.verdict.remaining, r.limit)
            });
            if closer {
                report = Some(this);
            }
        }
        Decision::Admit { report, guards }
    }

    /// `None` when the shared store failed and the configured answer is not `local`.
    /// `key` is `text` hashed for the local store (with a per-process seed).
    async fn verdict(&self, policy: &Policy, key: u128, text: &KeyText<'_>) -> Option<Verdict> {
        let local = || self.local.check(key, &policy.gcra);
        let Some(redis) = &self.redis else {
            return Some(local());
        };
        let key = redis_key(&[&policy.store_id, b"\xff", text.tag, text.value()]);
        match redis.check(&key, &policy.gcra).await {
            Ok(v) => Some(v),
            Err(_) if self.on_store_error == OnStoreError::Local => Some(local()),
            Err(_) => None,
        }
    }
}

/// A fixed-size, deterministic Redis key for `parts` (the first 128 bits of their SHA-256, in
/// hex), whatever the length of a header, claim or consumer id: every gateway instance must
/// derive the same key, so there is no per-process seed.
fn redis_key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

fn ratio(remaining: u64, limit: u64) -> f64 {
    remaining as f64 / limit.max(1) as f64
}

/// The text a policy keys on: a static tag and the identifying bytes, borrowed from the
/// request where possible so the common keys (user, IP, route) cost no allocation.
struct KeyText<'a> {
    tag: &'static [u8],
    value: KeyValue<'a>,
}

enum KeyValue<'a> {
    Borrowed(&'a [u8]),
    Inline([u8; 8], usize),
    Owned(Vec<u8>),
}

impl KeyText<'_> {
    fn value(&self) -> &[u8] {
        match &self.value {
            KeyValue::Borrowed(b) => b,
            KeyValue::Inline(b, len) => &b[..*len],
            KeyValue::Owned(v) => v,
        }
    }
}

/// Anonymous callers of identity-keyed policies fall back to their address, and an IPv6
/// address counts as its /64 (one subscriber usually owns the whole /64).
fn key_text<'a>(policy: &'a Policy, inputs: &'a KeyInputs<'_>) -> KeyText<'a> {
    let ip = || match inputs.client_ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 8];
            b[..4].copy_from_slice(&v4.octets());
            KeyText {
                tag: b"ip:",
                value: KeyValue::Inline(b, 4),
            }
        }
        IpAddr::V6(v6) => {
            let mut b = [0; 8];
            b.copy_from_slice(&v6.octets()[..8]);
            KeyText {
                tag: b"ip6/64:",
                value: KeyValue::Inline(b, 8),
            }
        }
    };
    let borrowed = |tag, value| KeyText {
        tag,
        value: KeyValue::Borrowed(value),
    };
    match &policy.key {
        KeySource::User => match inputs.identity.and_then(|i| i.subject.as_deref()) {
            Some(sub) => borrowed(b"user:", sub.as_bytes()),
            None => ip(),
        },
        KeySource::Consumer => match inputs.identity.and_then(|i| i.consumer.as_ref()) {
            Some(c) => borrowed(b"consumer:", c.id.as_bytes()),
            None => ip(),
        },
        KeySource::Ip => ip(),
        KeySource::Header(name) => match inputs.headers.get(name) {
            Some(v) => borrowed(b"hdr:", v.as_bytes()),
            None => ip(),
        },
        KeySource::Claim(path) => {
            let values = inputs
                .identity
                .map(|i| crate::identity::strings_at(&i.claims, path))
                .unwrap_or_default();
            if values.is_empty() {
                ip()
            } else {
                KeyText {
                    tag: b"claim:",
                    value: KeyValue::Owned(values.join(",").into_bytes()),
                }
            }
        }
        KeySource::Route => KeyText {
            tag: b"route:",
            value: KeyValue::Inline((inputs.route as u64).to_le_bytes(), 8),
        },
        KeySource::Global => borrowed(b"global", b""),
    }
}

fn compile_policy(name: &str, p: &PolicyConfig, key: &str) -> Result<Policy, Invalid> {
    if p.requests == 0 {
        return Err(Invalid::new(
            format!("{key}.requests"),
            "must be at least 1",
        ));
    }
    if p.period < Duration::from_millis(1) {
        return Err(Invalid::new(
            format!("{key}.period"),
            "must be at least 1ms",
        ));
    }
    let burst = p.burst.unwrap_or(p.requests);
    if burst == 0 {
        return Err(Invalid::new(format!("{key}.burst"), "must be at least 1"));
    }
    if p.concurrency == Some(0) {
        return Err(Invalid::new(
            format!("{key}.concurrency"),
            "must be at least 1",
        ));
    }
    let source = match p.key.as_str() {
        "user" => KeySource::User,
        "consumer" => KeySource::Consumer,
        "ip" => KeySource::Ip,
        "route" => KeySource::Route,
        "global" => KeySource::Global,
        other => {
            if let Some(h) = other.strip_prefix("header:") {
                KeySource::Header(http::HeaderName::from_bytes(h.trim().as_bytes()).map_err(
                    |_| Invalid::new(format!("{key}.key"), format!("invalid header name {h:?}")),
                )?)
            } else if let Some(c) = other.strip_prefix("claim:") {
                KeySource::Claim(
                    crate::identity::ClaimPath::parse(c.trim())
                        .map_err(|e| Invalid::new(format!("{key}.key"), e))?,
                )
            } else {
                return Err(Invalid::new(
                    format!("{key}.key"),
                    format!(
                        "unknown key {other:?} (expected user, consumer, ip, header:NAME, claim:NAME, route or global)"
                    ),
                ));
            }
        }
    };
    let policy_value = HeaderValue::from_str(&format!(
        "\"{name}\";q={};w={}",
        p.requests,
        p.period.as_secs().max(1)
    ))
    .map_err(|_| {
        Invalid::new(
            key.to_string(),
            "policy name must be printable ASCII".to_string(),
        )
    })?;
    Ok(Policy {
        store_id: format!("{name}|{p:?}").into_bytes().into_boxed_slice(),
        limit_value: HeaderValue::from(p.requests),
        policy_value,
        name: Arc::from(name),
        gcra: Gcra {
            requests: p.requests,
            period: p.period,
            burst,
        },
        key: source,
        concurrency: p.concurrency,
    })
}

#[cfg(test)]
mod tests;
