//! The `auth:` section as written in the YAML file, and the per-route auth keys.

use super::jwks::JwksConfig;
use super::login::LoginConfig;
use crate::de::{de_duration, de_opt_duration};
use crate::throttle::InvalidTokenLimitConfig;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The top-level `auth:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static keys, each pinned to one algorithm.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// JWKS key sets (file or URL).
    #[serde(default)]
    pub jwks: Vec<JwksConfig>,
    /// Required `iss` value, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any of), if set; `aud` is then required.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// Reject tokens valid for longer than this (from now, and from `iat`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub token_sources: TokenSourcesConfig,
    /// Tokens longer than this are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (bounded; entries end at the token's `exp`).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Claim naming the consumer a token belongs to (`sub`, or `iss` for one consumer per
    /// issuer); a token naming none is still valid, as an anonymous consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Claim holding roles: a string or array, dotted path for nested claims.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Header → claim path sent upstream for verified callers; client copies are always removed.
    #[serde(default)]
    pub identity_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub login: Option<LoginConfig>,
    /// Invalid tokens one client IP may present per period before it is refused unverified.
    #[serde(default)]
    pub invalid_token_limit: InvalidTokenLimitConfig,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_cache_size() -> usize {
    10_000
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "role".into()
}

impl AuthConfig {
    /// Resolves relative file paths against `base` (the config file's directory), so the
    /// config works whatever directory the gateway is started from.
    /// Every file this section reads.
    pub fn referenced_files(&self) -> Vec<&std::path::Path> {
        let mut files: Vec<&std::path::Path> = Vec::new();
        for k in &self.keys {
            for f in [&k.secret_file, &k.public_key_file, &k.private_key_file]
                .into_iter()
                .flatten()
            {
                files.push(f);
            }
        }
        files.extend(self.jwks.iter().filter_map(|j| j.file.as_deref()));
        if let Some(l) = &self.login {
            files.push(&l.users_file);
        }
        files
    }

    pub fn relative_to(mut self, base: &std::path::Path) -> Self {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for k in &mut self.keys {
            k.secret_file.as_mut().map(fix);
            k.public_key_file.as_mut().map(fix);
            k.private_key_file.as_mut().map(fix);
        }
        for j in &mut self.jwks {
            j.file.as_mut().map(fix);
        }
        if let Some(l) = &mut self.login {
            fix(&mut l.users_file);
        }
        self
    }
}

/// Where tokens are looked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSourcesConfig {
    /// `Authorization: Bearer <token>`.
    pub header: bool,
    /// Cookie name carrying the token (removed before forwarding).
    pub cookie: Option<String>,
    /// Query parameter carrying the token (removed before forwarding).
    pub query: Option<String>,
}

impl Default for TokenSourcesConfig {
    fn default() -> Self {
        TokenSourcesConfig {
            header: true,
            cookie: None,
            query: None,
        }
    }
}

/// One `auth.keys[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: Algorithm,
    /// HMAC secret inline (demo only), from an environment variable, or from a file.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA/PS, EC, Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// PEM private key, only needed to sign login tokens.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

/// Per-route authentication mode.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No token looked at (client identity headers are still removed).
    #[default]
    None,
    /// A token is verified if present; a bad one is still refused.
    Optional,
    /// A valid token is required.
    Required,
}

/// How a route's `scopes` list is matched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMatch {
    #[default]
    All,
    Any,
}
