//! apigateway: an API gateway on Cloudflare's Pingora.
//!
//! The crate is a house of layers; imports only point down (`tests/layers.rs` checks it):
//!
//! - base: [`de`], [`invalid`], [`identity`], [`template`], [`errors`], [`header_edit`], [`header_set`],
//!   [`metrics`], [`password`], [`share`], [`throttle`] — small shared types that import nothing above them;
//! - capabilities: [`router`], [`upstream`], [`auth`], [`consumer`], [`rate_limit`], [`transform`], [`edge`],
//!   [`aggregate`], [`grpc`], [`access_log`], [`tls`], [`trace`], [`traffic`], [`compression`] — each owns its config struct, its compiled form
//!   and its per-request stage state;
//! - [`config`]: the YAML file, assembled from the capabilities' config structs;
//! - [`snapshot`]: the config compiled into one immutable value behind a swappable pointer;
//! - [`services`]: what runs beside requests and reads the live snapshot (listeners, health
//!   checks, JWKS refresh, reload, admin);
//! - [`proxy`]: the Pingora `ProxyHttp` phases, each a short list of stage calls;
//! - `main.rs`: the command line and the wiring.

pub mod de;
pub mod errors;
pub mod header_edit;
pub mod header_set;
pub mod identity;
pub mod invalid;
pub mod metrics;
pub mod password;
pub mod share;
pub mod template;
#[cfg(test)]
pub mod testing;
pub mod throttle;

pub mod access_log;
pub mod aggregate;
pub mod auth;
pub mod cache;
pub mod compression;
pub mod consumer;
pub mod edge;
pub mod grpc;
pub mod rate_limit;
pub mod router;
pub mod script;
pub mod tls;
pub mod trace;
pub mod traffic;
pub mod transform;
pub mod upstream;

pub mod config;
pub mod snapshot;

pub mod services;

pub mod proxy;
