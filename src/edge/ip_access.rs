//! IP allow and deny lists (`ip_restriction:` at the top level and per route).
//!
//! Checked on the client address as `trusted_proxies` resolves it, before authentication, so a
//! refused network costs no token or key verification.

use crate::invalid::Invalid;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// `ip_restriction:` as written: CIDRs or single addresses, IPv4 or IPv6.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConfig {
    /// When not empty, only these networks are admitted.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These networks are refused, even when `allow` also lists them.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A compiled allow/deny list. Deny wins; an empty allow list admits every address not denied.
#[derive(Debug, Clone)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRestriction {
    /// `None` for a section with both lists empty (nothing to check). Errors name
    /// `key.allow[i]` / `key.deny[i]`.
    pub fn compile(cfg: &IpRestrictionConfig, key: &str) -> Result<Option<Self>, Invalid> {
        let allow = networks(&cfg.allow, &format!("{key}.allow"))?;
        let deny = networks(&cfg.deny, &format!("{key}.deny"))?;
        if allow.is_empty() && deny.is_empty() {
            return Ok(None);
        }
        Ok(Some(IpRestriction { allow, deny }))
    }

    /// Whether a request from `ip` may pass. An unknown address passes only a list without
    /// `allow` entries (it cannot be shown to be inside one).
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(canonical) else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`; IPv4 lists must see it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn networks(entries: &[String], key: &str) -> Result<Vec<IpNet>, Invalid> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.trim()
                .parse::<IpNet>()
                .or_else(|_| e.trim().parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    Invalid::new(
                        format!("{key}[{i}]"),
                        format!(
                            "{e:?} is not an IP address or CIDR (like 10.0.0.0/8 or 2001:db8::/32)"
                        ),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> IpRestriction {
        let cfg = IpRestrictionConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        IpRestriction::compile(&cfg, "ip_restriction")
            .unwrap()
            .unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_over_allow_and_empty_allow_admits_the_rest() {
        let l = list(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(l.admits(ip("10.2.3.4")));
        assert!(!l.admits(ip("10.1.3.4")));
        assert!(!l.admits(ip("192.0.2.1")));
        assert!(!l.admits(None));
        let deny_only = list(&[], &["192.0.2.0/24", "2001:db8::/32"]);
        assert!(deny_only.admits(ip("198.51.100.1")));
        assert!(!deny_only.admits(ip("2001:db8::7")));
        assert!(deny_only.admits(ip("2001:db9::7")));
        assert!(deny_only.admits(None));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_lists() {
        let l = list(&["127.0.0.1"], &[]);
        assert!(l.admits(ip("::ffff:127.0.0.1")));
        assert!(!l.admits(ip("::1")));
    }

    #[test]
    fn bad_entries_name_their_key_and_empty_lists_compile_to_nothing() {
        let cfg = IpRestrictionConfig {
            allow: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
            deny: vec![],
        };
        let err = IpRestriction::compile(&cfg, "routes[2].ip_restriction").unwrap_err();
        assert_eq!(err.key, "routes[2].ip_restriction.allow[1]");
        assert!(
            IpRestriction::compile(&IpRestrictionConfig::default(), "x")
                .unwrap()
                .is_none()
        );
    }
}
