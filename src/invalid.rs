//! The one shape of a config error below the file level: the key path and the reason.
//!
//! Every compile step returns it; the config loader adds the file (and the line where the
//! parser knows it), so a user always reads `gateway.yaml: routes[3].rewrite: <reason>`.

use std::fmt;

/// A config value that cannot be used: where it is (`routes[3].rewrite`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key path from the top of the file, with list indexes.
    pub key: String,
    /// What is wrong, in words a user can act on.
    pub reason: String,
    /// Further errors found in the same pass (sibling routes), so a user fixes them at once.
    pub more: Vec<Invalid>,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            reason: reason.into(),
            more: Vec::new(),
        }
    }

    /// The first of `errors` carrying the rest; `None` when there are none.
    pub fn all(mut errors: Vec<Invalid>) -> Option<Invalid> {
        if errors.is_empty() {
            return None;
        }
        let mut first = errors.remove(0);
        first.more.extend(errors);
        Some(first)
    }

    /// The same error seen from an enclosing section: `field` becomes `prefix.field`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.key = if self.key.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.key)
        };
        self.more = self.more.into_iter().map(|m| m.within(prefix)).collect();
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for Invalid {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_prefixes_the_key_path() {
        let e = Invalid::new("rewrite", "bad").within("routes[3]");
        assert_eq!(e.to_string(), "routes[3].rewrite: bad");
        assert_eq!(Invalid::new("", "x").within("tls").key, "tls");
    }
}
