//! The verified caller and how its claims are read: shared by auth (which makes identities),
//! templates, rate-limit keys and aggregate calls (which read them).
//!
//! A base type so that capabilities reading an identity do not import the one that verifies it.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::fmt;

/// A verified caller, shared by every request carrying the same token.
#[derive(Debug)]
pub struct Identity {
    /// The `sub` claim, if a string.
    pub subject: Option<String>,
    /// Roles read from the configured roles claim.
    pub roles: Vec<String>,
    /// Scopes from the space-delimited `scope` claim.
    pub scopes: Vec<String>,
    /// Identity headers to send upstream, computed once at verification.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// All claims, for templates in later phases.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// The registered consumer this caller is (by API key, Basic credentials, or a token
    /// claim naming one), for consumer-keyed limits, quotas and `consumer: required` routes.
    pub consumer: Option<ConsumerTag>,
}

/// Which consumer a caller is: its id, and its position in the snapshot's consumer list
/// (where its own rate limits and quotas are found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerTag {
    pub id: std::sync::Arc<str>,
    pub index: usize,
}

impl Identity {
    /// An identity holding only `claims` (JSON) and `subject`, as tests of the code that
    /// reads identities build one.
    #[cfg(test)]
    pub(crate) fn for_test(subject: Option<&str>, claims: &str) -> Self {
        Identity {
            subject: subject.map(String::from),
            roles: Vec::new(),
            scopes: Vec::new(),
            headers: Vec::new(),
            claims: serde_json::from_str(claims).expect("test claims are JSON"),
            expires_at: 0,
            consumer: None,
        }
    }
}

/// A dotted claim path such as `realm_access.roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<String>);

impl ClaimPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<String> = s.split('.').map(String::from).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("invalid claim path {s:?}"));
        }
        Ok(ClaimPath(parts))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// The claim at a path of member names (`["address", "city"]`), if the token has it.
pub fn value_at<'a, 'p>(
    claims: &'a Map<String, Value>,
    mut path: impl Iterator<Item = &'p str>,
) -> Option<&'a Value> {
    let mut value = claims.get(path.next()?)?;
    for part in path {
        value = value.get(part)?;
    }
    Some(value)
}

/// Strings at a claim path: a string, an array of strings, or a number/bool rendered as text.
pub fn strings_at(claims: &Map<String, Value>, path: &ClaimPath) -> Vec<String> {
    match value_at(claims, path.0.iter().map(String::as_str)) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Bool(b)) => vec![b.to_string()],
        _ => Vec::new(),
    }
}
