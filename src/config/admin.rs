//! The `admin:` section: where the admin listener (`services::admin`) listens.

use crate::de::de_opt_socket;
use serde::Deserialize;
use std::net::SocketAddr;

/// The `admin:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; `null` turns it off.
    #[serde(deserialize_with = "de_opt_socket")]
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}
