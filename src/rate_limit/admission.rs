//! The rate-limit stage of one request: the route's policies are checked once in
//! `request_filter`; the report goes on the response, and concurrency slots are held until the
//! request ends.

use super::{Decision, KeyInputs, LimitReport, Limiter};
use crate::errors::GatewayError;
use crate::metrics::RouteMetrics;
use pingora::http::ResponseHeader;

/// Per-request rate-limit state.
#[derive(Default)]
pub struct Admission {
    /// The policy closest to exhaustion, reported in the response headers.
    report: Option<LimitReport>,
    /// Concurrency slots, released when the request (and with it this value) is dropped.
    _guards: Vec<pingora_limits::inflight::Guard>,
    /// `admitted`, `refused` or `store_down`, for the access log.
    outcome: Option<&'static str>,
}

impl Admission {
    /// Checks every policy of the route (`policies` index into `limiter`); a refusal is the
    /// answer to send, with its limit headers.
    pub async fn check(
        &mut self,
        limiter: &Limiter,
        policies: &[usize],
        inputs: &KeyInputs<'_>,
        metrics: &RouteMetrics,
    ) -> Result<(), GatewayError> {
        if policies.is_empty() {
            return Ok(());
        }
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

    /// Adds the limit headers of an admitted request to its response.
    pub fn on_response(&self, h: &mut ResponseHeader) {
        if let Some(report) = &self.report {
            report.write(h);
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
        Limiter::compile(&cfg, None).unwrap()
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
