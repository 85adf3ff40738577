//! Passive health: a circuit breaker per backend, fed by the outcome of real requests.
//!
//! After `failures` consecutive failed attempts (connect errors, resets, timeouts, invalid
//! responses, or a 502/503/504 answer) a backend is *open*: selection skips it for `cooldown`.
//! Then it is *half-open*: one request is let through as a probe; success closes the breaker,
//! failure opens it for another `cooldown`. Active health checks (if configured) still run and
//! are independent. Pingora's load balancer has no passive checks, hence this file.

use crate::de::de_duration;
use pingora::protocols::l4::socket::SocketAddr;
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

/// One backend's breaker.
struct Breaker {
    addr: SocketAddr,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `Breakers::epoch` before which the backend is not selected; 0 when
    /// closed. Once passed, the first request to claim it (compare-exchange) is the probe.
    retry_at_ms: AtomicU64,
}

/// The breakers of one service's backends.
pub struct Breakers {
    breakers: Vec<Breaker>,
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

impl Breakers {
    /// `None` when passive health is off.
    pub fn new(
        cfg: &PassiveHealthConfig,
        backends: impl Iterator<Item = SocketAddr>,
    ) -> Option<Self> {
        (cfg.failures > 0).then(|| Breakers {
            breakers: backends
                .map(|addr| Breaker {
                    addr,
                    consecutive_failures: AtomicU32::new(0),
                    retry_at_ms: AtomicU64::new(0),
                })
                .collect(),
            threshold: cfg.failures,
            cooldown_ms: cfg.cooldown.as_millis().max(1) as u64,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "closed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn find(&self, addr: &SocketAddr) -> Option<&Breaker> {
        self.breakers.iter().find(|b| b.addr == *addr)
    }

    /// Whether a request may go to `addr` now. Claims the half-open probe when the cooldown
    /// has passed, so only one request probes at a time (the next after another cooldown).
    pub fn admits(&self, addr: &SocketAddr) -> bool {
        let Some(b) = self.find(addr) else {
            return true;
        };
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

    /// Records an attempt's outcome; returns true when this opened the breaker.
    pub fn record(&self, addr: &SocketAddr, outcome: Attempt) -> bool {
        let Some(b) = self.find(addr) else {
            return false;
        };
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

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn breakers(failures: u32, cooldown: Duration) -> Breakers {
        let cfg = PassiveHealthConfig { failures, cooldown };
        Breakers::new(&cfg, [addr(1), addr(2)].into_iter()).unwrap()
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breakers(3, Duration::from_secs(60));
        b.record(&addr(1), Attempt::Failed);
        b.record(&addr(1), Attempt::Failed);
        b.record(&addr(1), Attempt::Succeeded);
        b.record(&addr(1), Attempt::Failed);
        b.record(&addr(1), Attempt::Failed);
        assert!(b.admits(&addr(1)), "a success in between resets the count");
        assert!(b.record(&addr(1), Attempt::Failed));
        assert!(!b.admits(&addr(1)));
        assert!(b.admits(&addr(2)), "other backends are unaffected");
    }

    #[test]
    fn half_open_lets_one_probe_through_then_closes_or_reopens() {
        let b = breakers(1, Duration::from_millis(1));
        b.record(&addr(1), Attempt::Failed);
        std::thread::sleep(Duration::from_millis(3));
        assert!(b.admits(&addr(1)), "the probe");
        assert!(!b.admits(&addr(1)), "only one probe per cooldown");
        b.record(&addr(1), Attempt::Failed);
        assert!(!b.admits(&addr(1)), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(3));
        assert!(b.admits(&addr(1)));
        b.record(&addr(1), Attempt::Succeeded);
        assert!(b.admits(&addr(1)) && b.admits(&addr(1)), "closed again");
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let cfg = PassiveHealthConfig {
            failures: 0,
            ..Default::default()
        };
        assert!(Breakers::new(&cfg, std::iter::empty()).is_none());
    }
}
