//! The pre-verification throttle: a client IP that keeps presenting invalid credentials (tokens,
//! API keys, Basic passwords) is refused before its next one is checked, so a flood of forged
//! tokens cannot make RSA/ECDSA verification (or argon2) dominate the CPU, and guessing keys
//! from one address is slow.
//!
//! Failures are counted per client IP (the socket peer, or the forwarded address only behind
//! `trusted_proxies`, never a claim) in pingora-limits' `Rate`: a fixed window of count-min
//! sketches, a few atomic adds per failure and constant memory whatever the number of IPs.

use crate::de::de_duration;
use crate::invalid::Invalid;
use pingora_limits::rate::Rate;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// `auth.invalid_token_limit`: how many invalid tokens one client IP may present per period.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidTokenLimitConfig {
    /// Invalid tokens allowed per IP per period; 0 turns the throttle off.
    pub failures: u32,
    #[serde(deserialize_with = "de_duration")]
    pub period: Duration,
}

impl Default for InvalidTokenLimitConfig {
    fn default() -> Self {
        InvalidTokenLimitConfig {
            failures: 100,
            period: Duration::from_secs(10),
        }
    }
}

/// The compiled throttle.
pub struct InvalidTokenThrottle {
    failures: Rate,
    allowed: isize,
    retry_after: u64,
}

impl InvalidTokenThrottle {
    /// `None` when turned off. Errors are (key path, reason).
    /// `key` names the section in errors (`auth.invalid_token_limit`).
    pub fn compile(cfg: &InvalidTokenLimitConfig, key: &str) -> Result<Option<Self>, Invalid> {
        if cfg.failures == 0 {
            return Ok(None);
        }
        if cfg.period < Duration::from_secs(1) {
            return Err(Invalid::new(format!("{key}.period"), "must be at least 1s"));
        }
        Ok(Some(InvalidTokenThrottle {
            failures: Rate::new(cfg.period),
            allowed: cfg.failures as isize,
            retry_after: cfg.period.as_secs(),
        }))
    }

    /// `Some(retry_after seconds)` when `ip` used up its invalid tokens for this period.
    pub fn refused(&self, ip: &IpAddr) -> Option<u64> {
        (self.failures.observe(ip, 0) >= self.allowed).then_some(self.retry_after)
    }

    /// Counts one invalid token from `ip`.
    pub fn record_failure(&self, ip: &IpAddr) {
        self.failures.observe(ip, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_is_refused_after_its_failures_and_others_are_not() {
        let throttle = InvalidTokenThrottle::compile(
            &InvalidTokenLimitConfig {
                failures: 3,
                period: Duration::from_secs(60),
            },
            "k",
        )
        .unwrap()
        .unwrap();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let good: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.refused(&bad), None);
            throttle.record_failure(&bad);
        }
        assert_eq!(throttle.refused(&bad), Some(60));
        assert_eq!(throttle.refused(&good), None);
    }

    #[test]
    fn zero_turns_it_off_and_short_periods_are_refused() {
        let off = InvalidTokenLimitConfig {
            failures: 0,
            ..Default::default()
        };
        assert!(InvalidTokenThrottle::compile(&off, "k").unwrap().is_none());
        let short = InvalidTokenLimitConfig {
            period: Duration::from_millis(10),
            ..Default::default()
        };
        let err = InvalidTokenThrottle::compile(&short, "auth.invalid_token_limit")
            .err()
            .unwrap();
        assert_eq!(err.key, "auth.invalid_token_limit.period");
    }
}
