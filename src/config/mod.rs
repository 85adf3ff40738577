//! The YAML file: top-level structure, Pingora server settings, and loading with errors that
//! name the file, the key path and the line.
//!
//! Capability modules own their config structs (`upstream::ServiceConfig`, `auth::AuthConfig`);
//! this module assembles them into the file's shape ([`GatewayConfig`], [`route::RouteConfig`])
//! and holds the sections no capability owns (server, client, admin). Semantic checks happen
//! when the config is compiled into a snapshot.

pub mod admin;
pub mod client;
mod locate;
pub mod route;
pub mod server;

use crate::auth::AuthConfig;
use crate::invalid::Invalid;
use crate::rate_limit::RateLimitsConfig;
use crate::upstream::ServiceConfig;
pub use admin::AdminConfig;
pub use client::ClientConfig;
pub use route::RouteConfig;
use serde::Deserialize;
pub use server::ServerSettings;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Pingora process settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Plaintext addresses the proxy listens on, e.g. `0.0.0.0:8080` or `[::]:8080`.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Plaintext listeners also accept HTTP/2 with prior knowledge (h2c), for internal
    /// clients such as gRPC. HTTP/1.1 keeps working on the same port.
    #[serde(default)]
    pub h2c: bool,
    /// HTTPS listeners and their certificates.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Named upstream services.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Name servers and interval for `dns:` backends.
    #[serde(default)]
    pub resolver: crate::upstream::dns::ResolverConfig,
    /// Ordered route list (priority is by specificity, see `router`).
    pub routes: Vec<RouteConfig>,
    /// JWT verification, identity headers and the login endpoint.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Consumers: applications and partners with API keys, Basic credentials, groups, limits.
    #[serde(default)]
    pub consumers: Vec<crate::consumer::ConsumerConfig>,
    /// A YAML file with more consumers (`consumers: [...]`), read again on every reload.
    #[serde(default)]
    pub consumers_file: Option<PathBuf>,
    /// Where API keys and Basic credentials are read, and the consumer headers sent upstream.
    #[serde(default)]
    pub consumer_auth: Option<crate::consumer::ConsumerAuthConfig>,
    /// W3C trace propagation and OTLP span export.
    #[serde(default)]
    pub tracing: Option<crate::trace::TracingConfig>,
    /// Rate-limit policies and their store.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsConfig>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed when finding the client IP.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// CORS for every route that does not set its own.
    #[serde(default)]
    pub cors: Option<crate::edge::cors::CorsConfig>,
    /// Response compression for every route that does not set its own.
    #[serde(default)]
    pub compression: Option<crate::compression::CompressionConfig>,
    /// The response cache's store (size, object size, variants, lock timeout, status header).
    #[serde(default)]
    pub cache: Option<crate::cache::CacheStoreConfig>,
    /// Client networks admitted and refused on every route (checked before routes' own lists).
    #[serde(default)]
    pub ip_restriction: Option<crate::edge::ip_access::IpRestrictionConfig>,
    /// The security-header preset and its overrides (on by default).
    #[serde(default)]
    pub security_headers: Option<crate::edge::headers::SecurityHeadersConfig>,
    /// The `Via` entry added to requests sent upstream.
    #[serde(default)]
    pub via: crate::edge::protocol::ViaConfig,
    /// Request size limits.
    #[serde(default)]
    pub limits: crate::edge::SizeLimits,
    /// Client deadlines (request head, body, sending, keep-alive) and the connection limit.
    #[serde(default)]
    pub client: ClientConfig,
    /// The admin listener (metrics and health endpoints).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The JSON access log.
    #[serde(default)]
    pub access_log: crate::access_log::AccessLogConfig,
}

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the schema (unknown key, wrong type...).
    Syntax { file: PathBuf, message: String },
    /// The YAML parses but is inconsistent (missing service, duplicate route...); `line` is
    /// where the key is in the file, when it can be found.
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
        line: Option<usize>,
        /// Further errors found in the same pass: key, reason, line.
        more: Vec<(String, String, Option<usize>)>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "{}: cannot read config file: {source}", file.display())
            }
            ConfigError::Syntax { file, message } => write!(f, "{}: {message}", file.display()),
            ConfigError::Invalid {
                file,
                key,
                reason,
                line,
                more,
            } => {
                write!(f, "{}: {key}: {reason}", file.display())?;
                if let Some(n) = line {
                    write!(f, " (line {n})")?;
                }
                for (key, reason, line) in more {
                    write!(f, "\n  and {key}: {reason}")?;
                    if let Some(n) = line {
                        write!(f, " (line {n})")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A compile step's error, placed in `file` (read again to find the key's line: this is
    /// the error path, and the parsed config keeps no positions).
    pub fn invalid(file: &Path, e: Invalid) -> Self {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        Self::invalid_in(file, &text, e)
    }

    /// A compile step's error in a document whose text is at hand.
    pub fn invalid_in(name: &Path, text: &str, e: Invalid) -> Self {
        let line = locate::line_of(text, &e.key);
        let more = e
            .more
            .into_iter()
            .map(|m| {
                let line = locate::line_of(text, &m.key);
                (m.key, m.reason, line)
            })
            .collect();
        ConfigError::Invalid {
            file: name.to_path_buf(),
            key: e.key,
            reason: e.reason,
            line,
            more,
        }
    }

    /// The key path the error names, when it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A configuration document and where it came from: a file, or a key in etcd.
#[derive(Debug, Clone)]
pub struct ConfigDoc {
    /// How errors name it: the file's path, or `etcd://HOST:PORT/PREFIX/config`.
    pub name: PathBuf,
    /// Where relative paths in it (users files, certificates) are resolved.
    pub base: PathBuf,
    pub text: String,
    /// The etcd revision it was read at (none for a file).
    pub revision: Option<i64>,
    /// Node-local top-level sections (a fleet node's bootstrap file: `server`, `listen`,
    /// `admin`, `access_log`) that replace the shared document's.
    pub local: Option<std::sync::Arc<serde_yaml::Mapping>>,
}

impl ConfigDoc {
    /// Reads a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Ok(ConfigDoc {
            name: path.to_path_buf(),
            base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            text,
            revision: None,
            local: None,
        })
    }

    /// Parses the document (with the node-local sections over it); schema errors carry
    /// serde_yaml's key path, and its line when there are no node-local sections.
    pub fn parse(&self) -> Result<GatewayConfig, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            file: self.name.clone(),
            message,
        };
        let Some(local) = &self.local else {
            return GatewayConfig::parse(&self.text).map_err(syntax);
        };
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&self.text).map_err(|e| syntax(e.to_string()))?;
        match value.as_mapping_mut() {
            Some(map) => map.extend(local.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => return Err(syntax("the document must be a YAML mapping".into())),
        }
        serde_yaml::from_value(value).map_err(|e| syntax(e.to_string()))
    }

    /// A short hash of the text (the `config_hash` label of `apigateway_build_info`).
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.text.as_bytes())[..6])
    }
}

impl GatewayConfig {
    /// Reads and parses a file; schema errors carry serde_yaml's key path and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Syntax {
            file: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A short hash of a config file's bytes (the `config_hash` label of `apigateway_build_info`).
pub fn file_hash(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(&Sha256::digest(&bytes)[..6]),
        Err(_) => "unreadable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = "listen: ['127.0.0.1:0']\nservices:\n  a:\n    backends: ['127.0.0.1:1']\nroutes:\n  - path: /a\n    service: a\n";

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = GatewayConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.server.grace_period_seconds, 10);
        assert!(c.routes[0].strip_prefix);
        assert_eq!(c.services["a"].retries, 1);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = MINIMAL.replace("    service: a\n", "    service: a\n    servise: b\n");
        let err = GatewayConfig::parse(&text).unwrap_err();
        assert!(err.contains("routes[0]"), "{err}");
        assert!(err.contains("servise"), "{err}");
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn durations_accept_units_and_reject_garbage() {
        let ok = MINIMAL.replace(
            "    backends: ['127.0.0.1:1']\n",
            "    backends: ['127.0.0.1:1']\n    timeouts: {connect: 250ms, read: 2}\n",
        );
        let c = GatewayConfig::parse(&ok).unwrap();
        assert_eq!(c.services["a"].timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.services["a"].timeouts.read, Duration::from_secs(2));
        let bad = ok.replace("250ms", "fast");
        let err = GatewayConfig::parse(&bad).unwrap_err();
        assert!(
            err.contains("services.a.timeouts.connect") || err.contains("services.a.timeouts"),
            "{err}"
        );
    }
}
