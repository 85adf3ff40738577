//! The consumer sections as written in the YAML file: `consumers:` (inline), the entries of a
//! `consumers_file`, and `consumer_auth:` (where credentials are read and what goes upstream).

use crate::de::de_duration;
use crate::throttle::InvalidTokenLimitConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One consumer: an application or partner calling the API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique id, sent upstream as `X-Consumer-Id` and used as the limit key.
    pub id: String,
    /// Optional display name, sent upstream as `X-Consumer-Username`.
    #[serde(default)]
    pub username: Option<String>,
    /// Groups; they act as roles for routes' `roles:` checks.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys, stored only as hashes (`apigateway consumer new-key` prints one).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Basic credentials (RFC 7617), the password as an argon2id hash.
    #[serde(default)]
    pub basic: Option<BasicCredentialConfig>,
    /// Rate-limit policies (names in `rate_limits.policies`) applied to every request of this
    /// consumer, beside the route's own.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Request quotas per day or month.
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
    /// Extra headers sent upstream with this consumer's requests.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One `api_keys[]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// `sha256:` and the 64 hex digits of the SHA-256 of the key.
    pub hash: String,
    /// A label for operators (which key this is).
    #[serde(default)]
    pub name: Option<String>,
    /// When the key was made (`2026-12-03` or RFC 3339), for operators.
    #[serde(default)]
    pub created: Option<String>,
    /// From then on the key is refused (`2027-12-03` = midnight UTC, or RFC 3339).
    #[serde(default)]
    pub expires: Option<String>,
}

/// A consumer's Basic credentials.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialConfig {
    pub username: String,
    /// argon2id PHC string, as `apigateway hash-password` prints (the login users file format).
    pub password_hash: String,
}

/// A request quota: at most `requests` per `period`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: u64,
    /// `day` or `month`.
    pub period: Option<QuotaPeriod>,
    /// `false` (default): UTC calendar days or months; `true`: the last 24 hours or 30 days.
    #[serde(default)]
    pub rolling: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// A `consumers_file`: the same entries as the inline `consumers:` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersFile {
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
}

/// The top-level `consumer_auth:` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerAuthConfig {
    pub api_key: ApiKeySourcesConfig,
    pub basic: BasicSettingsConfig,
    /// Send API keys and Basic credentials upstream (default false: removed).
    pub forward_credentials: bool,
    /// Names of the headers describing a verified consumer upstream.
    pub headers: ConsumerHeadersConfig,
    /// Invalid API keys and Basic passwords one client IP may present per period before it is
    /// refused unchecked, when there is no `auth:` section (else `auth.invalid_token_limit`
    /// counts them with invalid tokens).
    pub invalid_credential_limit: InvalidTokenLimitConfig,
}

/// Where API keys are read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeySourcesConfig {
    /// Header names, any of which may carry the key.
    pub headers: Vec<String>,
    /// A query parameter carrying the key (off by default: URLs end up in logs).
    pub query: Option<String>,
}

impl Default for ApiKeySourcesConfig {
    fn default() -> Self {
        ApiKeySourcesConfig {
            headers: vec!["apikey".into()],
            query: None,
        }
    }
}

/// Basic authentication settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BasicSettingsConfig {
    /// The realm in `WWW-Authenticate: Basic realm="…"`.
    pub realm: String,
    /// How long a verified username and password pair is remembered (argon2 runs once per
    /// pair per this time).
    #[serde(deserialize_with = "de_duration")]
    pub cache_ttl: Duration,
    /// Verified pairs remembered at most.
    pub cache_size: usize,
}

impl Default for BasicSettingsConfig {
    fn default() -> Self {
        BasicSettingsConfig {
            realm: "apigateway".into(),
            cache_ttl: Duration::from_secs(300),
            cache_size: 10_000,
        }
    }
}

/// Upstream header names for a verified consumer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerHeadersConfig {
    pub id: String,
    pub username: String,
    pub groups: String,
}

impl Default for ConsumerHeadersConfig {
    fn default() -> Self {
        ConsumerHeadersConfig {
            id: "X-Consumer-Id".into(),
            username: "X-Consumer-Username".into(),
            groups: "X-Consumer-Groups".into(),
        }
    }
}
