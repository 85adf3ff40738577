//! Everything that runs beside the request path and reads the live snapshot: the listeners'
//! connection layer and TLS resolver, background refreshers, the config reloader and the admin
//! endpoints. This layer sits above the snapshot and below the proxy.

pub mod admin;
pub mod background;
pub mod connections;
pub mod fleet;
pub mod reload;
pub mod tls_listener;
