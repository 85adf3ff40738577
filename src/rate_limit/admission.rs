//! The rate-limit stage of one request: the route's policies are checked once in
//! `request_filter`; the report goes on the response, and concurrency slots are held until the
//! request ends.

use super::by_consumer::QuotaDecision;
use super::quota::QuotaReport;
use super::{Decision, KeyInputs, LimitReport, Limiter};
use crate::errors::GatewayError;
use crate::metrics::RouteMetrics;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use std::borrow::Cow;

/// Per-request rate-limit state.
#[derive(Default)]
pub struct Admission {
    /// The policy closest to exhaustion, reported in the response headers.
    report: Option<LimitReport>,
    /// The consumer's quotas, reported beside it in `RateLimit-Policy` and `RateLimit`.
    quotas: Vec<QuotaReport>,
    /// Concurrency slots, released when the request (and with it this value) is dropped.
    _guards: Vec<pingora_limits::inflight::Guard>,
    /// `admitted`, `refused` or `store_down`, for the access log.
    outcome: Option<&'static str>,
}

impl Admission {
    /// Checks every policy of the route (`policies` index into `limiter`) and the caller's
    /// own as a consumer, then the consumer's quotas; a refusal is the answer to send, with
    /// its limit headers.
    pub async fn check(
        &mut self,
        limiter: &Limiter,
        policies: &[usize],
        inputs: &KeyInputs<'_>,
        metrics: &RouteMetrics,
    ) -> Result<(), GatewayError> {
        let consumer = inputs.identity.and_then(|i| i.consumer.as_ref());
        let own = consumer.map_or(&[][..], |c| limiter.consumer_policies(c));
        let policies: Cow<'_, [usize]> = if own.is_empty() {
            Cow::Borrowed(policies)
        } else {
            let mut all = policies.to_vec();
            all.extend(own.iter().filter(|p| !policies.contains(p)));
            Cow::Owned(all)
        };
        if !policies.is_empty() {
            self.check_policies(limiter, &policies, inputs, metrics)
                .await?;
        }
        match consumer {
            Some(c) => self.check_quotas(limiter.check_quotas(c).await, metrics),
            None => Ok(()),
        }
    }

    async fn check_policies(
        &mut self,
        limiter: &Limiter,
        policies: &[usize],
        inputs: &KeyInputs<'_>,
        metrics: &RouteMetrics,
    ) -> Result<(), GatewayError> {
        match limiter.check(policies, inputs).await {
            Decision::Admit { report, guards } => {
                self.report = report;
                self._guards = guards;
                self.outcome = Some("admitted");
                Ok(())
            }
            Decision::Refuse(report) => {
                metrics.rate_limited(&report.policy);
                self.outcome = Some("refused");
                Err(GatewayError::RateLimited(report.to_headers()))
            }
            Decision::StoreDown => {
                self.outcome = Some("store_down");
                Err(GatewayError::LimiterUnavailable)
            }
        }
    }

    fn check_quotas(
        &mut self,
        decision: QuotaDecision,
        metrics: &RouteMetrics,
    ) -> Result<(), GatewayError> {
        match decision {
            QuotaDecision::Unlimited => Ok(()),
            QuotaDecision::Admit(reports) => {
                self.quotas = reports;
                self.outcome = Some("admitted");
                Ok(())
            }
            QuotaDecision::Refuse(reports, first) => {
                let refused = &reports[first];
                metrics.rate_limited(&refused.name);
                self.outcome = Some("quota_exceeded");
                let mut headers: Vec<(&'static str, HeaderValue)> = vec![(
                    "retry-after",
                    HeaderValue::from(refused.retry_after_secs.max(1)),
                )];
                for r in &reports {
                    headers.extend(r.policy_item().map(|v| ("ratelimit-policy", v)));
                    headers.extend(r.limit_item().map(|v| ("ratelimit", v)));
                }
                Err(GatewayError::QuotaExceeded(headers.into_boxed_slice()))
            }
            QuotaDecision::StoreDown => {
                self.outcome = Some("store_down");
                Err(GatewayError::LimiterUnavailable)
            }
        }
    }

    /// Adds the limit headers of an admitted request to its response: the closest policy's,
    /// then one more `RateLimit-Policy` and `RateLimit` item per quota.
    pub fn on_response(&self, h: &mut ResponseHeader) {
        if let Some(report) = &self.report {
            report.write(h);
        }
        for q in &self.quotas {
            if let (Some(policy), Some(limit)) = (q.policy_item(), q.limit_item()) {
                let _ = h.append_header("ratelimit-policy", policy);
                let _ = h.append_header("ratelimit", limit);
            }
        }
    }

    /// What the limiter decided, for the access log.
    pub fn outcome(&self) -> Option<&'static str> {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::RateLimitsConfig;
    use std::net::IpAddr;

    fn limiter(yaml: &str) -> Limiter {
        let cfg: RateLimitsConfig = serde_yaml::from_str(yaml).unwrap();
        Limiter::compile(&cfg, None, None).unwrap()
    }

    fn inputs(headers: &http::HeaderMap, ip: [u8; 4]) -> KeyInputs<'_> {
        KeyInputs {
            client_ip: IpAddr::from(ip),
            identity: None,
            headers,
            route: 0,
        }
    }

    #[tokio::test]
    async fn admits_then_refuses_with_headers_per_client_ip() {
        let l = limiter("policies: {p: {requests: 2, period: 60s, key: ip}}\ndefault: p\n");
        let policies = l.route_policies(None).unwrap();
        let headers = http::HeaderMap::new();
        let metrics = RouteMetrics::new("admission-test", "svc");
        for _ in 0..2 {
            let mut a = Admission::default();
            a.check(&l, &policies, &inputs(&headers, [10, 0, 0, 1]), &metrics)
                .await
                .unwrap();
            assert_eq!(a.outcome(), Some("admitted"));
            let mut h = ResponseHeader::build(200, None).unwrap();
            a.on_response(&mut h);
            assert_eq!(h.headers["x-ratelimit-limit"], "2");
            assert_eq!(h.headers["ratelimit-policy"], "\"p\";q=2;w=60");
        }
        let mut a = Admission::default();
        let refused = a
            .check(&l, &policies, &inputs(&headers, [10, 0, 0, 1]), &metrics)
            .await;
        assert_eq!(a.outcome(), Some("refused"));
        let Err(GatewayError::RateLimited(sent)) = refused else {
            panic!("{refused:?}")
        };
        let names: Vec<&str> = sent.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"retry-after"), "{names:?}");
        assert!(names.contains(&"x-ratelimit-remaining"), "{names:?}");
        // Another client IP has its own budget.
        let mut other = Admission::default();
        other
            .check(&l, &policies, &inputs(&headers, [10, 0, 0, 2]), &metrics)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn routes_without_policies_are_not_checked() {
        let l = limiter("policies: {p: {requests: 1, period: 60s}}\n");
        let headers = http::HeaderMap::new();
        let metrics = RouteMetrics::new("admission-none", "svc");
        let mut a = Admission::default();
        a.check(&l, &[], &inputs(&headers, [10, 0, 0, 1]), &metrics)
            .await
            .unwrap();
        assert_eq!(a.outcome(), None);
    }
}
