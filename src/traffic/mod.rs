//! Traffic management: a route's weighted split between services, optionally sticky, with
//! forced variants for requests that match header, cookie or query conditions.
//!
//! A route may also mirror a sample of its forwarded requests to another service
//! ([`mirror`]).
//!
//! The choice is made once per request, after authentication (a split may stick to the
//! verified user or consumer) and before rate limiting; every later stage reads the chosen
//! service from [`Destination`].

pub mod config;
pub mod mirror;
pub mod variant;

pub use config::{MirrorConfig, SplitEntryConfig, VariantConfig};
pub use mirror::{Mirror, MirrorCopy};
pub use variant::Variant;

use crate::identity::Identity;
use crate::invalid::Invalid;
use crate::metrics::RouteMetrics;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// The traffic stage's per-request state: the service the request goes to, which split
/// entry chose it (for the entry's metrics), and the copy for the mirror when the request is
/// in the route's mirror sample.
#[derive(Debug, Default)]
pub struct Destination {
    pub service: Option<usize>,
    pub entry: Option<usize>,
    pub mirror: Option<MirrorCopy>,
}

/// What keeps a caller on one side of a split while the weights stay the same.
#[derive(Debug, PartialEq, Eq)]
pub enum Sticky {
    /// The verified subject (`sub`).
    User,
    /// The authenticated consumer's id.
    Consumer,
    /// The client address (as `trusted_proxies` resolves it).
    ClientIp,
    Cookie(String),
    Header(http::HeaderName),
}

impl Sticky {
    /// Parses `user`, `consumer`, `client_ip`, `cookie:NAME` or `header:NAME`.
    pub fn parse(text: &str, key: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid::new(
                key,
                format!(
                    "unknown sticky key {text:?}; use user, consumer, client_ip, cookie:NAME or header:NAME"
                ),
            )
        };
        Ok(match text.split_once(':') {
            None if text == "user" => Sticky::User,
            None if text == "consumer" => Sticky::Consumer,
            None if text == "client_ip" => Sticky::ClientIp,
            Some(("cookie", name)) if !name.is_empty() => Sticky::Cookie(name.to_string()),
            Some(("header", name)) => {
                Sticky::Header(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        })
    }
}

/// One side of a split.
#[derive(Debug)]
pub struct SplitEntry {
    pub service: usize,
    pub service_name: String,
    pub weight: u32,
    /// Exclusive end of this entry's share of `0..total`.
    upper: u64,
    variant: Option<Variant>,
    /// The route's metrics with this entry's service as the `service` label.
    pub metrics: RouteMetrics,
}

/// A compiled `split:`.
#[derive(Debug)]
pub struct Split {
    entries: Vec<SplitEntry>,
    total: u64,
    sticky: Option<Sticky>,
}

/// What the split reads of a request to choose.
pub struct SplitInputs<'a> {
    pub req: &'a RequestHeader,
    pub identity: Option<&'a Identity>,
    pub client_ip: Option<IpAddr>,
}

impl Split {
    /// Compiles `entries` (at `key`, e.g. `split`), resolving service names with `find` and
    /// creating each entry's metrics for route `route_name`.
    pub fn compile(
        entries: &[SplitEntryConfig],
        sticky: Option<&str>,
        key: &str,
        find: impl Fn(&str) -> Result<usize, String>,
        route_name: &str,
    ) -> Result<Self, Invalid> {
        if entries.is_empty() {
            return Err(Invalid::new(key, "list at least one service"));
        }
        let mut compiled = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (i, e) in entries.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let service = find(&e.service).map_err(|r| Invalid::new(format!("{k}.service"), r))?;
            total += u64::from(e.weight);
            compiled.push(SplitEntry {
                service,
                service_name: e.service.clone(),
                weight: e.weight,
                upper: total,
                variant: e
                    .variant
                    .as_ref()
                    .map(|v| Variant::compile(v, &format!("{k}.when")))
                    .transpose()?,
                metrics: RouteMetrics::new(route_name, &e.service),
            });
        }
        if total == 0 {
            return Err(Invalid::new(
                key,
                "every weight is 0: at least one service must take traffic",
            ));
        }
        Ok(Split {
            entries: compiled,
            total,
            sticky: sticky.map(|s| Sticky::parse(s, "sticky")).transpose()?,
        })
    }

    pub fn entries(&self) -> &[SplitEntry] {
        &self.entries
    }

    /// Chooses the entry for a request: the first entry whose `when` holds; else by weight,
    /// at a point fixed by the sticky key when the request has one, random otherwise.
    pub fn choose(&self, inputs: &SplitInputs<'_>) -> usize {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.variant.as_ref().is_some_and(|v| v.matches(inputs.req)))
        {
            return i;
        }
        let point = match self.sticky_key(inputs) {
            Some(key) => stable_hash(key.as_bytes()) % self.total,
            None => fastrand::u64(..self.total),
        };
        // `point < total = the last entry's upper`, so one entry always holds it.
        self.entries
            .iter()
            .position(|e| point < e.upper)
            .unwrap_or(self.entries.len() - 1)
    }

    fn sticky_key(&self, inputs: &SplitInputs<'_>) -> Option<String> {
        match self.sticky.as_ref()? {
            Sticky::User => inputs.identity?.subject.clone(),
            Sticky::Consumer => Some(inputs.identity?.consumer.as_ref()?.id.to_string()),
            Sticky::ClientIp => inputs.client_ip.map(|ip| ip.to_string()),
            Sticky::Cookie(name) => {
                crate::edge::request_cookie(inputs.req, name).map(str::to_string)
            }
            Sticky::Header(name) => inputs
                .req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

/// A hash that is the same in every gateway process and version, so a fleet sends a caller to
/// the same side (the standard library's hasher promises neither).
fn stable_hash(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
