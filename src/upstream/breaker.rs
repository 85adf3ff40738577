//! Passive health: a circuit breaker per backend, fed by the outcome of real requests.
//!
//! After `failures` consecutive failed attempts (connect errors, resets, timeouts, invalid
//! responses, or a 502/503/504 answer) a backend is *open*: selection skips it for `cooldown`.
//! Then it is *half-open*: one request is let through as a probe; success closes the breaker,
//! failure opens it for another `cooldown`. Active health checks (if configured) still run and
//! are independent. Pingora's load balancer has no passive checks, hence this file.

use crate::de::de_duration;
use serde::Deserialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `services.X.passive_health`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failed attempts that open a backend's breaker; 0 turns it off.
    pub failures: u32,
    /// How long an open breaker keeps the backend out before one probe request is let through.
    #[serde(deserialize_with = "de_duration")]
    pub cooldown: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            failures: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// One backend's breaker state; it travels with the backend (see `member.rs`), so a backend
/// that DNS discovery keeps across refreshes keeps its state.
#[derive(Default)]
pub struct Breaker {
    consecutive_failures: AtomicU32,
    /// Milliseconds since `BreakerPolicy::epoch` before which the backend is not selected; 0
    /// when closed. Once passed, the first request to claim it (compare-exchange) is the probe.
    retry_at_ms: AtomicU64,
}

/// A service's breaker settings, applied to each backend's [`Breaker`].
pub struct BreakerPolicy {
    threshold: u32,
    cooldown_ms: u64,
    epoch: Instant,
}

/// The outcome of one attempt on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    Failed,
}

impl BreakerPolicy {
    /// `None` when passive health is off.
    pub fn compile(cfg: &PassiveHealthConfig) -> Option<Self> {
        (cfg.failures > 0).then(|| BreakerPolicy {
            threshold: cfg.failures,
            cooldown_ms: cfg.cooldown.as_millis().max(1) as u64,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "closed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a request may go to the backend of `b` now. Claims the half-open probe when the
    /// cooldown has passed, so only one request probes at a time (the next after another
    /// cooldown).
    pub fn admits(&self, b: &Breaker) -> bool {
        let retry_at = b.retry_at_ms.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= retry_at
            && b.retry_at_ms
                .compare_exchange(
                    retry_at,
                    now + self.cooldown_ms,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// `closed`, `open` (out until its cooldown ends) or `half-open` (a probe may go).
    pub fn state(&self, b: &Breaker) -> &'static str {
        match b.retry_at_ms.load(Ordering::Acquire) {
            0 => "closed",
            at if self.now_ms() < at => "open",
            _ => "half-open",
        }
    }

    /// Records an attempt's outcome; returns true when this opened the breaker.
    pub fn record(&self, b: &Breaker, outcome: Attempt) -> bool {
        match outcome {
            // The common case writes nothing, so healthy traffic shares no dirty cache line.
            Attempt::Succeeded if b.consecutive_failures.load(Ordering::Acquire) == 0 => false,
            Attempt::Succeeded => {
                b.consecutive_failures.store(0, Ordering::Release);
                b.retry_at_ms.store(0, Ordering::Release);
                false
            }
            Attempt::Failed => {
                let failures = b.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures < self.threshold {
                    return false;
                }
                let until = self.now_ms() + self.cooldown_ms;
                let was = b.retry_at_ms.swap(until, Ordering::AcqRel);
                // Newly opened, or a failed half-open probe: either way out for a cooldown.
                was == 0 || failures > self.threshold
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures: u32, cooldown: Duration) -> BreakerPolicy {
        BreakerPolicy::compile(&PassiveHealthConfig { failures, cooldown }).unwrap()
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let p = policy(3, Duration::from_secs(60));
        let (one, two) = (Breaker::default(), Breaker::default());
        p.record(&one, Attempt::Failed);
        p.record(&one, Attempt::Failed);
        p.record(&one, Attempt::Succeeded);
        p.record(&one, Attempt::Failed);
        p.record(&one, Attempt::Failed);
        assert!(p.admits(&one), "a success in between resets the count");
        assert!(p.record(&one, Attempt::Failed));
        assert!(!p.admits(&one));
        assert!(p.admits(&two), "other backends are unaffected");
    }

    #[test]
    fn half_open_lets_one_probe_through_then_closes_or_reopens() {
        let p = policy(1, Duration::from_millis(1));
        let b = Breaker::default();
        p.record(&b, Attempt::Failed);
        std::thread::sleep(Duration::from_millis(3));
        assert!(p.admits(&b), "the probe");
        assert!(!p.admits(&b), "only one probe per cooldown");
        p.record(&b, Attempt::Failed);
        assert!(!p.admits(&b), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(3));
        assert!(p.admits(&b));
        p.record(&b, Attempt::Succeeded);
        assert!(p.admits(&b) && p.admits(&b), "closed again");
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let cfg = PassiveHealthConfig {
            failures: 0,
            ..Default::default()
        };
        assert!(BreakerPolicy::compile(&cfg).is_none());
    }
}
