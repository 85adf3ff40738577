//! The `admin:` section: where the admin listener (`services::admin`) listens.

use crate::de::de_opt_socket;
use crate::invalid::Invalid;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `admin:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; `null` turns it off.
    #[serde(deserialize_with = "de_opt_socket")]
    pub listen: Option<SocketAddr>,
    /// A file holding the admin API's bearer token (at least 32 bytes).
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token, instead of a file.
    pub token_env: Option<String>,
}

/// The shortest admin token accepted.
const MIN_TOKEN: usize = 32;

impl AdminConfig {
    /// The admin API's token, read from its file (relative to `base`) or variable; `None`
    /// when neither is set (the API then answers loopback clients only). Errors name the key.
    pub fn token(&self, base: &Path) -> Result<Option<String>, Invalid> {
        let (key, token) = match (&self.token_file, &self.token_env) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "admin.token_file",
                    "set token_file or token_env, not both",
                ));
            }
            (Some(f), None) => (
                "admin.token_file",
                std::fs::read_to_string(base.join(f)).map_err(|e| {
                    Invalid::new("admin.token_file", format!("{}: {e}", f.display()))
                })?,
            ),
            (None, Some(var)) => (
                "admin.token_env",
                std::env::var(var)
                    .map_err(|_| Invalid::new("admin.token_env", format!("${var} is not set")))?,
            ),
        };
        let token = token.trim().to_string();
        if token.len() < MIN_TOKEN {
            return Err(Invalid::new(
                key,
                format!(
                    "the token is {} bytes; use at least {MIN_TOKEN} (e.g. openssl rand -hex 32)",
                    token.len()
                ),
            ));
        }
        Ok(Some(token))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token_file: None,
            token_env: None,
        }
    }
}
