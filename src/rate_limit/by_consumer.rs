//! What the limiter applies to a consumer beside a route's policies: the consumer's own
//! rate-limit policies and its quotas, found by the consumer's index in the snapshot.

use super::quota::{LocalQuotas, Quota, QuotaReport};
use super::{Limiter, OnStoreError};
use crate::consumer::Consumers;
use crate::identity::ConsumerTag;
use crate::invalid::Invalid;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every consumer's policies (indexes into the limiter) and quotas, by consumer index.
#[derive(Default)]
pub struct ConsumerLimits {
    policies: Vec<Vec<usize>>,
    quotas: Vec<Vec<Arc<Quota>>>,
}

impl ConsumerLimits {
    /// Resolves policy names; errors name the consumer's `rate_limits[i]`.
    pub fn compile(
        consumers: Option<&Consumers>,
        by_name: &BTreeMap<String, usize>,
    ) -> Result<Self, Invalid> {
        let mut out = ConsumerLimits::default();
        for c in consumers.map_or(&[][..], Consumers::all) {
            let policies = c
                .rate_limits
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    by_name.get(name).copied().ok_or_else(|| {
                        Invalid::new(
                            format!("{}.rate_limits[{i}]", c.source),
                            format!("no policy named {name:?} in rate_limits.policies"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.policies.push(policies);
            out.quotas.push(
                c.quotas
                    .iter()
                    .filter_map(Quota::compile)
                    .map(Arc::new)
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Whether any consumer has quotas or policies: the limiter is then needed (and checks
    /// the policy names) even without a `rate_limits:` section.
    pub fn needed(consumers: Option<&Consumers>) -> bool {
        consumers.is_some_and(|c| {
            c.all()
                .iter()
                .any(|c| !c.quotas.is_empty() || !c.rate_limits.is_empty())
        })
    }

    pub fn policies(&self, consumer: &ConsumerTag) -> &[usize] {
        self.policies.get(consumer.index).map_or(&[], Vec::as_slice)
    }

    fn quotas(&self, consumer: &ConsumerTag) -> &[Arc<Quota>] {
        self.quotas.get(consumer.index).map_or(&[], Vec::as_slice)
    }
}

/// The outcome of a consumer's quotas.
pub enum QuotaDecision {
    /// No quota, or the shared store is down and `on_store_error: allow`.
    Unlimited,
    Admit(Vec<QuotaReport>),
    /// Refused: the reports, the one that refused first.
    Refuse(Vec<QuotaReport>, usize),
    /// The shared store is down and `on_store_error: deny`.
    StoreDown,
}

impl Limiter {
    /// Checks and counts the consumer's quotas together (in Redis when the limiter uses it).
    pub async fn check_quotas(&self, consumer: &ConsumerTag) -> QuotaDecision {
        let quotas = self.consumer_limits.quotas(consumer);
        if quotas.is_empty() {
            return QuotaDecision::Unlimited;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let local = || decide(self.quotas.check(&consumer.id, quotas, now));
        let Some(redis) = &self.redis else {
            return local();
        };
        let windows: Vec<_> = quotas.iter().map(|q| q.window(now)).collect();
        let args: Vec<(String, String, u64, f64, u64)> = quotas
            .iter()
            .zip(&windows)
            .map(|(q, w)| {
                let span = w.elapsed + w.left;
                (
                    redis_key(&q.key(&consumer.id, w.id)),
                    redis_key(&q.key(&consumer.id, w.id.wrapping_sub(1))),
                    q.requests,
                    w.previous_weight,
                    // The current window is read as the previous one for one more span.
                    w.left + span,
                )
            })
            .collect();
        match redis.quotas(&args).await {
            Ok(answer) if answer.len() == 2 + 2 * quotas.len() => {
                let admitted = answer[0] == 1;
                let count = |i: usize| answer[i].max(0) as u64;
                let reports = quotas
                    .iter()
                    .zip(&windows)
                    .enumerate()
                    .map(|(i, (q, w))| {
                        QuotaReport::new(q, w, count(2 + 2 * i), count(3 + 2 * i), admitted)
                    })
                    .collect();
                decide((admitted, reports))
            }
            _ => match self.on_store_error {
                OnStoreError::Local => local(),
                OnStoreError::Allow => QuotaDecision::Unlimited,
                OnStoreError::Deny => QuotaDecision::StoreDown,
            },
        }
    }
}

fn decide((admitted, reports): (bool, Vec<QuotaReport>)) -> QuotaDecision {
    if admitted {
        return QuotaDecision::Admit(reports);
    }
    let first = reports.iter().position(|r| r.remaining == 0).unwrap_or(0);
    QuotaDecision::Refuse(reports, first)
}

/// The Redis key of a quota window's counter.
fn redis_key(text: &str) -> String {
    format!("quota:{}", super::redis_key(&[text.as_bytes()]))
}

/// The quota counters to keep across a reload.
pub fn kept_quotas(previous: Option<&Limiter>) -> Arc<LocalQuotas> {
    previous.map_or_else(|| Arc::new(LocalQuotas::default()), |p| p.quotas.clone())
}
