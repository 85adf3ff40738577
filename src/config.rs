//! The YAML file: top-level structure, Pingora server settings, and loading with errors that
//! name the file, the key path and the line.
//!
//! Capability modules own their own config structs (`router::RouteConfig`,
//! `upstream::ServiceConfig`); this module only assembles them and turns the file into a
//! [`GatewayConfig`]. Semantic checks happen when the config is compiled into a snapshot.

use crate::auth::AuthConfig;
use crate::limits::RateLimitsConfig;
use crate::router::RouteConfig;
use crate::upstream::ServiceConfig;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Ordered route list (priority is by specificity, see `router`).
    pub routes: Vec<RouteConfig>,
    /// JWT verification, identity headers and the login endpoint.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Rate-limit policies and their store.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsConfig>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed when finding the client IP.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// CORS for every route that does not set its own.
    #[serde(default)]
    pub cors: Option<crate::edge::cors::CorsConfig>,
    /// The security-header preset and its overrides (on by default).
    #[serde(default)]
    pub security_headers: Option<crate::edge::headers::SecurityHeadersConfig>,
    /// Request size limits.
    #[serde(default)]
    pub limits: crate::edge::EdgeLimits,
    /// Client deadlines (request head, body, sending, keep-alive) and the connection limit.
    #[serde(default)]
    pub client: crate::connection::ClientConfig,
    /// The admin listener (metrics and health endpoints).
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    /// The JSON access log.
    #[serde(default)]
    pub access_log: crate::access_log::AccessLogConfig,
}

/// The subset of Pingora's `ServerConf` a user can set, with defaults that fit systemd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads for the proxy; 0 means one per CPU core.
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// File for the error log when running as a daemon (stderr otherwise).
    pub error_log: Option<String>,
    /// Run in the background (same as `-d`).
    pub daemon: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Seconds between the shutdown signal and closing listeners. Pingora defaults to 300 s,
    /// longer than systemd's stop timeout, so we default to 10.
    pub grace_period_seconds: u64,
    /// Seconds in-flight requests get to finish after listeners close.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle connections kept per upstream pool.
    pub upstream_keepalive_pool_size: usize,
    /// Let idle worker threads steal tasks from busy ones. Off by default: one single-threaded
    /// runtime per thread avoids cross-thread wake-ups and measured faster on our benchmarks.
    pub work_stealing: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 0,
            pid_file: "/tmp/apigateway.pid".into(),
            upgrade_sock: "/tmp/apigateway_upgrade.sock".into(),
            error_log: None,
            daemon: false,
            user: None,
            group: None,
            grace_period_seconds: 10,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 128,
            work_stealing: false,
        }
    }
}

impl ServerSettings {
    /// Converts to Pingora's `ServerConf`.
    pub fn to_server_conf(&self) -> pingora::server::configuration::ServerConf {
        let mut conf = pingora::server::configuration::ServerConf {
            threads: if self.threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                self.threads
            },
            pid_file: self.pid_file.clone(),
            upgrade_sock: self.upgrade_sock.clone(),
            error_log: self.error_log.clone(),
            daemon: self.daemon,
            user: self.user.clone(),
            group: self.group.clone(),
            grace_period_seconds: Some(self.grace_period_seconds),
            graceful_shutdown_timeout_seconds: Some(self.graceful_shutdown_timeout_seconds),
            upstream_keepalive_pool_size: self.upstream_keepalive_pool_size,
            work_stealing: self.work_stealing,
            ..Default::default()
        };
        // Retries are decided per service in the proxy; this is only Pingora's outer bound.
        conf.max_retries = 16;
        conf
    }
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
    /// The YAML parses but is inconsistent (missing service, duplicate route...).
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "{}: cannot read config file: {source}", file.display())
            }
            ConfigError::Syntax { file, message } => write!(f, "{}: {message}", file.display()),
            ConfigError::Invalid { file, key, reason } => {
                write!(f, "{}: {key}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

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
        Ok(bytes) => Sha256::digest(&bytes)[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "unreadable".into(),
    }
}

/// Deserializes an optional `ip:port` address.
pub fn de_opt_socket<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    raw.map(|s| {
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not an ip:port address ({e})")))
    })
    .transpose()
}

/// Like [`de_duration`], for optional keys.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Deserializes `"500ms"`, `"2s"`, `"1m"` (humantime syntax) or a bare number of seconds.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {t:?} ({e}); use e.g. 500ms, 2s, 1m"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
