//! The `split:` and `sticky:` keys of a route, as written in YAML.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One side of a weighted split: `{service: orders-v2, weight: 10, when: {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntryConfig {
    /// A service in `services:`.
    pub service: String,
    /// Share of the unmatched traffic, relative to the other entries; 0 drains the entry.
    pub weight: u32,
    /// Requests matching this always go to this entry (a forced variant, e.g. for testers).
    #[serde(default, rename = "when")]
    pub variant: Option<VariantConfig>,
}

/// Request conditions that must all hold: header, cookie and query-parameter values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatchConfig>,
    #[serde(default)]
    pub cookies: BTreeMap<String, ValueMatchConfig>,
    #[serde(default)]
    pub query: BTreeMap<String, ValueMatchConfig>,
}

/// A value condition: a plain string is an exact match; otherwise exactly one of `exact`,
/// `prefix` or `regex` (unanchored, as in nginx's `~`: write `^…$` to anchor).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ValueMatchConfig {
    Exact(String),
    Rule(ValueRuleConfig),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRuleConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// `mirror:` of a route: a copy of its forwarded requests to another service (shadow
/// traffic), whose answers are discarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// A service in `services:`.
    pub service: String,
    /// Share of the route's forwarded requests copied, 0 to 1.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Largest request body copied; a larger one is mirrored without its body (counted).
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: usize,
    /// Copies in flight at most; more are dropped (counted).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

fn one() -> f64 {
    1.0
}

fn default_mirror_body() -> usize {
    64 * 1024
}

fn default_in_flight() -> usize {
    64
}
