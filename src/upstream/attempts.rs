//! The upstream stage of one request: which backends it tried, how long the chosen one took,
//! and whether a failed attempt may be retried on another backend.

use super::ServicePool;
use super::breaker::Attempt;
use super::member::Chosen;
use crate::errors::GatewayError;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Per-request upstream state, kept across Pingora's retries.
#[derive(Default)]
pub struct Attempts {
    /// Backends tried before the current one (skipped on retry; empty unless retried).
    tried: Vec<SocketAddr>,
    /// When the first backend was picked.
    started: Option<Instant>,
    /// From picking the first backend to the response header.
    upstream_time: Option<Duration>,
    /// The current attempt's place in its backend's in-flight count (`least_request`).
    hold: super::least_request::Hold,
    /// When the current attempt's backend was picked.
    attempt_started: Option<Instant>,
    /// The current attempt's backend (its breaker and load take the outcome; skipped on retry).
    current: Option<Chosen>,
}

/// What the proxy knows about a failure after the request reached a backend.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// The gateway itself refused the request mid-way (body limit, bad JSON): never retried.
    pub refused_by_gateway: bool,
    /// The method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub idempotent: bool,
    /// The request body was too large to keep for a replay.
    pub body_truncated: bool,
    /// The backend failed (not the client): connection broken, reset, garbage, timeout.
    pub backend_failed: bool,
    /// The failure was a timeout.
    pub timeout: bool,
}

/// Whether a failed attempt goes to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    No,
    Yes,
    /// Only if the connection was a reused one (it may have been closed while idle); Pingora's
    /// own rule for errors the gateway has no opinion on.
    IfReused,
}

impl Attempts {
    /// Picks a healthy backend of `pool` not tried yet and builds its peer. Called again on
    /// every retry; `key` feeds consistent hashing.
    pub fn pick(
        &mut self,
        pool: &ServicePool,
        key: &[u8],
        upgrades: bool,
    ) -> Result<HttpPeer, GatewayError> {
        let started = *self.started.get_or_insert_with(|| {
            pool.retry_budget.note_request();
            Instant::now()
        });
        let left = pool
            .total_timeout
            .map(|t| t.saturating_sub(started.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(GatewayError::UpstreamTimeout);
        }
        // Most requests make one attempt: the list of earlier ones is only built on a retry.
        let previous = self.current.take();
        if let Some(p) = &previous {
            self.tried.push(p.addr);
        }
        let picked = pool.select(key, &self.tried);
        if picked.is_none()
            && let Some(p) = previous
        {
            // Nothing else to try: the last attempt stays the current one.
            self.tried.pop();
            self.current = Some(p);
        }
        match picked {
            Some(backend) => {
                let mut peer = pool.peer(&backend, upgrades);
                if let Some(left) = left {
                    cut_timeouts(&mut peer, left);
                }
                self.hold.take(pool.outstanding_counter(&backend));
                if pool.tracks_latency() {
                    self.attempt_started = Some(Instant::now());
                }
                self.current = Some(backend);
                Ok(peer)
            }
            None if self.made() == 0 => Err(GatewayError::NoHealthyBackend {
                service: pool.name.clone(),
            }),
            None => Err(GatewayError::UpstreamUnavailable),
        }
    }

    /// Reports the outcome of the attempt on the backend tried last to its circuit breaker.
    pub fn record(&self, pool: &ServicePool, outcome: Attempt) {
        if let Some(b) = &self.current {
            pool.record_attempt(b, outcome);
        }
    }

    /// The upstream's response ended: its backend's in-flight count is given back now rather
    /// than when the request's context is dropped, after the client already has the answer
    /// and may have sent its next request.
    pub fn on_response_end(&mut self) {
        self.hold.take(None);
    }

    /// The upstream's response header arrived: records the time and tells the breaker
    /// whether the answer counts as a failure (502, 503, 504).
    pub fn on_response_header(&mut self, pool: &ServicePool, status: u16) {
        self.upstream_time = self.started.map(|t| t.elapsed());
        if let (Some(b), Some(t)) = (&self.current, self.attempt_started) {
            pool.observe_latency(b, t.elapsed());
        }
        let overloaded = matches!(status, 502..=504);
        self.record(
            pool,
            if overloaded {
                Attempt::Failed
            } else {
                Attempt::Succeeded
            },
        );
    }

    /// A connect failure is always safe to retry (nothing was sent), within `retries` and
    /// the service's retry budget.
    pub fn retry_after_connect_failure(&self, pool: &ServicePool) -> bool {
        self.made() <= pool.retries && pool.retry_budget.try_retry()
    }

    /// After connecting, only idempotent requests whose body can be replayed are retried,
    /// within `retries` (the caller then asks the service's retry budget); a request the gateway refused is never retried. A backend that broke
    /// the connection before answering sends an idempotent request to another backend (as
    /// nginx's `proxy_next_upstream error`), but a timeout does not: a slow service would get
    /// the load twice.
    pub fn retry_after_failure(&self, retries: usize, f: Failure) -> Retry {
        if f.refused_by_gateway || !f.idempotent || f.body_truncated || self.made() > retries {
            Retry::No
        } else if f.backend_failed && !f.timeout {
            Retry::Yes
        } else {
            Retry::IfReused
        }
    }

    /// The backend tried last, for the access log.
    pub fn last(&self) -> Option<&SocketAddr> {
        self.current.as_ref().map(|c| &c.addr).or(self.tried.last())
    }

    /// How many attempts were made.
    fn made(&self) -> usize {
        self.tried.len() + usize::from(self.current.is_some())
    }

    /// From picking the first backend to the response header, once it arrived.
    pub fn upstream_time(&self) -> Option<Duration> {
        self.upstream_time
    }
}

/// Cuts an attempt's connect and read timeouts to what is left of the request's deadline.
fn cut_timeouts(peer: &mut HttpPeer, left: Duration) {
    let o = &mut peer.options;
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
    ] {
        *t = Some(t.map_or(left, |t| t.min(left)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ServiceConfig;

    fn pool(backends: &[&str], retries: usize) -> ServicePool {
        let list: Vec<String> = backends.iter().map(|b| format!("'{b}'")).collect();
        let yaml = format!("backends: [{}]\nretries: {retries}\n", list.join(", "));
        let cfg: ServiceConfig = serde_yaml::from_str(&yaml).unwrap();
        ServicePool::compile(
            "svc",
            &cfg,
            "services.svc",
            std::path::Path::new("."),
            &Default::default(),
        )
        .unwrap()
    }

    fn failure() -> Failure {
        Failure {
            refused_by_gateway: false,
            idempotent: true,
            body_truncated: false,
            backend_failed: true,
            timeout: false,
        }
    }

    #[test]
    fn picks_each_backend_once_then_reports_unavailable() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"], 1);
        let mut a = Attempts::default();
        let first = a.pick(&p, b"", false).unwrap();
        let second = a.pick(&p, b"", false).unwrap();
        assert_ne!(first._address, second._address);
        assert_eq!(
            a.pick(&p, b"", false).map(|_| ()),
            Err(GatewayError::UpstreamUnavailable)
        );
        assert!(a.last().is_some());
    }

    #[test]
    fn a_single_backend_is_tried_once_per_request() {
        let p = pool(&["127.0.0.1:1"], 3);
        let mut a = Attempts::default();
        assert!(a.pick(&p, b"", false).is_ok());
        assert_eq!(
            a.pick(&p, b"", false).map(|_| ()),
            Err(GatewayError::UpstreamUnavailable)
        );
        assert!(Attempts::default().pick(&p, b"", false).is_ok());
    }

    #[test]
    fn retry_rules() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"], 1);
        let mut a = Attempts::default();
        a.pick(&p, b"", false).unwrap();
        assert!(a.retry_after_connect_failure(&p));
        assert_eq!(a.retry_after_failure(1, failure()), Retry::Yes);
        let timeout = Failure {
            timeout: true,
            ..failure()
        };
        assert_eq!(a.retry_after_failure(1, timeout), Retry::IfReused);
        for no in [
            Failure {
                idempotent: false,
                ..failure()
            },
            Failure {
                refused_by_gateway: true,
                ..failure()
            },
            Failure {
                body_truncated: true,
                ..failure()
            },
        ] {
            assert_eq!(a.retry_after_failure(1, no), Retry::No, "{no:?}");
        }
        a.pick(&p, b"", false).unwrap();
        assert!(!a.retry_after_connect_failure(&p));
        assert_eq!(a.retry_after_failure(1, failure()), Retry::No);
    }

    #[test]
    fn open_breakers_leave_no_backend_and_name_the_service() {
        let yaml = "backends: ['127.0.0.1:1']\npassive_health: {failures: 1, cooldown: 60s}\n";
        let cfg: ServiceConfig = serde_yaml::from_str(yaml).unwrap();
        let p = ServicePool::compile(
            "svc",
            &cfg,
            "services.svc",
            std::path::Path::new("."),
            &Default::default(),
        )
        .unwrap();
        let mut a = Attempts::default();
        a.pick(&p, b"", false).unwrap();
        a.on_response_header(&p, 503);
        assert!(a.upstream_time().is_some());
        let err = Attempts::default().pick(&p, b"", false).map(|_| ());
        assert_eq!(
            err,
            Err(GatewayError::NoHealthyBackend {
                service: "svc".into()
            })
        );
    }
}
