//! `script:` on a route: where the script is, and the limits every call of it runs under.

use crate::de::de_duration;
use crate::invalid::Invalid;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A route's script: a `.rhai` file (relative to the config file) or its `source` inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    pub file: Option<PathBuf>,
    pub source: Option<String>,
    #[serde(default)]
    pub limits: ScriptLimits,
}

/// What one call of a script may use; exceeding any ends the call with `500 Script error`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Rhai operations (roughly one per expression node, operator or loop turn).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Bytes of any one string.
    pub max_string_bytes: usize,
    /// Elements of an array (nested arrays included).
    pub max_array_len: usize,
    /// Members of an object map (nested maps included).
    pub max_map_len: usize,
    /// Wall-clock time of one call.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// The largest JSON request body `on_request_body` gets; larger ones are refused (413).
    pub max_request_body_bytes: usize,
    /// The largest JSON response body `on_response_body` gets; larger ones pass unchanged.
    pub max_response_body_bytes: usize,
}

/// Pingora keeps a request body it may have to send again (to a retried backend) up to this
/// size, and a script reads its body before the upstream is chosen, so a body must fit.
pub const REQUEST_BODY_CEILING: usize = 64 * 1024;

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 100_000,
            max_call_depth: 32,
            max_string_bytes: 1 << 20,
            max_array_len: 10_000,
            max_map_len: 10_000,
            timeout: Duration::from_millis(20),
            max_request_body_bytes: REQUEST_BODY_CEILING,
            max_response_body_bytes: 1 << 20,
        }
    }
}

impl ScriptLimits {
    /// Checks each limit is usable; errors name `key.limits.FIELD`.
    pub fn check(&self, key: &str) -> Result<(), Invalid> {
        let at = |field: &str| format!("{key}.limits.{field}");
        let positive = [
            ("max_operations", self.max_operations as usize),
            ("max_call_depth", self.max_call_depth),
            ("max_string_bytes", self.max_string_bytes),
            ("max_array_len", self.max_array_len),
            ("max_map_len", self.max_map_len),
            ("max_request_body_bytes", self.max_request_body_bytes),
            ("max_response_body_bytes", self.max_response_body_bytes),
        ];
        // Zero means "unlimited" to Rhai: never what a user writing a limit wants.
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Invalid::new(at(field), "must be more than 0"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(1) {
            return Err(Invalid::new(
                at("timeout"),
                "must be more than 0 and at most 1s: a call holds its worker thread",
            ));
        }
        if self.max_request_body_bytes > REQUEST_BODY_CEILING {
            return Err(Invalid::new(
                at("max_request_body_bytes"),
                format!(
                    "at most {REQUEST_BODY_CEILING}: the body is read whole before the upstream \
                     is chosen and kept for retries, which Pingora does up to 64 KiB"
                ),
            ));
        }
        Ok(())
    }
}
