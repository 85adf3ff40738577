//! apigateway: an API gateway on Cloudflare's Pingora.
//!
//! The request path is the list of phases in [`proxy`]; each capability is a module that owns
//! its config struct, its compiled runtime form and its tests. [`snapshot`] compiles the YAML
//! file into the immutable form the proxy reads through one swappable pointer.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod config;
pub mod connection;
pub mod edge;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reloader;
pub mod router;
pub mod snapshot;
pub mod template;
pub mod tls;
pub mod transform;
pub mod upstream;
