//! A service's retry budget: retries within a share of its recent requests plus a small floor
//! per second, so a failing backend cannot multiply the load on the others (Linkerd's and
//! Envoy's answer to retry storms).
//!
//! "Recent" is the current and the previous one-second window, counted in atomics: the
//! request path pays one atomic add, and a retry one more.

use crate::invalid::Invalid;
use once_cell::sync::Lazy;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// `retry_budget:` of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of the service's requests over the last one to two seconds.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries allowed each second whatever the traffic, so a quiet service still retries.
    #[serde(default = "default_min")]
    pub min_per_second: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_ratio(),
            min_per_second: default_min(),
        }
    }
}

fn default_ratio() -> f64 {
    0.2
}

fn default_min() -> u64 {
    10
}

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// The compiled budget with its counters.
#[derive(Debug)]
pub struct RetryBudget {
    /// The ratio in thousandths.
    ratio_milli: u64,
    min_per_second: u64,
    window: AtomicU64,
    requests: AtomicU64,
    previous_requests: AtomicU64,
    retries: AtomicU64,
    exhausted: prometheus::IntCounter,
}

impl RetryBudget {
    /// Compiles `cfg` (errors at `key`) for service `service`.
    pub fn compile(cfg: &RetryBudgetConfig, key: &str, service: &str) -> Result<Self, Invalid> {
        let ratio = crate::share::check_ratio(cfg.ratio, &format!("{key}.ratio"))?;
        Ok(RetryBudget {
            ratio_milli: (ratio * 1000.0).round() as u64,
            min_per_second: cfg.min_per_second,
            window: AtomicU64::new(current_window()),
            requests: AtomicU64::new(0),
            previous_requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            exhausted: crate::metrics::retry_budget_exhausted(service),
        })
    }

    /// Counts a request's first attempt.
    pub fn note_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, or says there is none left (counted).
    pub fn try_retry(&self) -> bool {
        self.roll();
        let recent =
            self.requests.load(Ordering::Relaxed) + self.previous_requests.load(Ordering::Relaxed);
        let allowed = self.min_per_second + recent * self.ratio_milli / 1000;
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            return true;
        }
        self.retries.fetch_sub(1, Ordering::Relaxed);
        self.exhausted.inc();
        false
    }

    /// Starts a new window when a second has passed; the thread that wins the swap moves the
    /// counts (others racing it only lose a count or two, which a budget can afford).
    fn roll(&self) {
        let now = current_window();
        let seen = self.window.load(Ordering::Relaxed);
        if seen == now
            || self
                .window
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let last = self.requests.swap(0, Ordering::Relaxed);
        let previous = if now == seen + 1 { last } else { 0 };
        self.previous_requests.store(previous, Ordering::Relaxed);
        self.retries.store(0, Ordering::Relaxed);
    }
}

fn current_window() -> u64 {
    EPOCH.elapsed().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min: u64) -> RetryBudget {
        let cfg = RetryBudgetConfig {
            ratio,
            min_per_second: min,
        };
        RetryBudget::compile(&cfg, "services.a.retry_budget", "a").unwrap()
    }

    #[test]
    fn retries_stay_within_the_floor_plus_the_share_of_requests() {
        let b = budget(0.2, 3);
        for _ in 0..100 {
            b.note_request();
        }
        // 3 + 20 % of 100: 23 retries, not one more (unless a second passes in between,
        // which only adds a fresh window's floor).
        let granted = (0..200).filter(|_| b.try_retry()).count();
        assert!((23..=26).contains(&granted), "{granted}");
    }

    #[test]
    fn the_ratio_must_be_a_share() {
        let cfg = RetryBudgetConfig {
            ratio: 1.5,
            min_per_second: 1,
        };
        let e = RetryBudget::compile(&cfg, "services.a.retry_budget", "a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "services.a.retry_budget.ratio: 1.5 is not between 0 and 1"
        );
    }
}
