//! The `client:` section: deadlines for slow clients and the connection limit. The listeners
//! (`services::connections`) enforce it; it is checked here, when the config is compiled.

use crate::de::de_duration;
use crate::invalid::Invalid;
use serde::Deserialize;
use std::time::Duration;

/// The `client:` section: how long a client may take and how many may be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The whole request head (request line and headers) must arrive within this time, counted
    /// from the connection's accept or from the first byte of a keep-alive request (nginx's
    /// `client_header_timeout`). Past it: 408 and the connection is closed.
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// The longest pause between two reads of a request body (nginx's `client_body_timeout`).
    #[serde(deserialize_with = "de_duration")]
    pub body_timeout: Duration,
    /// The whole request body must arrive within this time after the head; a client trickling
    /// a body gets 408. Raise it for routes that take slow large uploads.
    #[serde(deserialize_with = "de_duration")]
    pub body_deadline: Duration,
    /// The longest pause while writing a response to the client (nginx's `send_timeout`).
    #[serde(deserialize_with = "de_duration")]
    pub send_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_timeout: Duration,
    /// Open client connections per process; beyond it a new connection gets 503 and is closed.
    pub max_connections: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_deadline: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl ClientConfig {
    /// Checks the values no Duration type rules out; `key` is the section's path.
    pub fn check(&self) -> Result<(), Invalid> {
        let positive = [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("body_deadline", self.body_deadline),
            ("send_timeout", self.send_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(Invalid::new(
                    format!("client.{key}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(Invalid::new("client.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_config_errors() {
        let mut c = ClientConfig::default();
        assert!(c.check().is_ok());
        c.header_timeout = Duration::ZERO;
        assert_eq!(c.check().unwrap_err().key, "client.header_timeout");
        let c = ClientConfig {
            max_connections: 0,
            ..ClientConfig::default()
        };
        assert_eq!(c.check().unwrap_err().key, "client.max_connections");
    }
}
