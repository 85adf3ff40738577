//! `apigateway_grpc_calls_total`: a route's calls by gRPC service, method and status.
//!
//! The method comes from the request path, which any client chooses: a route counts at most
//! [`MAX_METHODS`] methods by name and the rest as `other`, so a scan of made-up names cannot
//! grow the metrics without bound. Counter handles are kept per method, so a call costs one
//! map lookup under a read lock, not a label-set hash in the registry.

use once_cell::sync::OnceCell;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// Methods a route counts by name.
const MAX_METHODS: usize = 100;

/// The names of gRPC status codes 0-16, as labels; index 17 is a call without a status.
const CODES: [&str; 18] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "none",
];

/// One method's counters, made on first use of each status.
struct MethodCounts {
    service: Box<str>,
    method: Box<str>,
    by_code: [OnceCell<IntCounter>; 18],
}

/// A route's gRPC call counters.
#[derive(Debug)]
pub struct CallMetrics {
    route: Box<str>,
    /// Looked up on every call (SipHash cost 215 instructions a call). Its keys come from
    /// requests, so the hasher is seeded per map; their number is capped (`MAX_METHODS`).
    methods: RwLock<HashMap<Box<str>, Arc<MethodCounts>, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for MethodCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

impl CallMetrics {
    pub fn new(route: &str) -> Self {
        CallMetrics {
            route: route.into(),
            methods: RwLock::new(HashMap::default()),
        }
    }

    /// Counts a call of `path` (`/package.Service/Method`) that ended with `code`.
    pub fn record(&self, path: &str, code: Option<u32>) {
        let counts = self.counts(path);
        let index = match code {
            Some(c) if c < 17 => c as usize,
            Some(_) => 2,
            None => 17,
        };
        counts.by_code[index]
            .get_or_init(|| {
                crate::metrics::grpc_calls(
                    &self.route,
                    &counts.service,
                    &counts.method,
                    CODES[index],
                )
            })
            .inc();
    }

    fn counts(&self, path: &str) -> Arc<MethodCounts> {
        {
            let methods = self.methods.read().unwrap_or_else(PoisonError::into_inner);
            let found = match methods.get(path) {
                None if methods.len() >= MAX_METHODS => methods.get(""),
                found => found,
            };
            if let Some(c) = found {
                return c.clone();
            }
        }
        let mut methods = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        let key: &str = if methods.len() < MAX_METHODS {
            path
        } else {
            ""
        };
        methods
            .entry(key.into())
            .or_insert_with(|| {
                let (service, method) = match key {
                    "" => ("other", "other"),
                    _ => split_path(path),
                };
                Arc::new(MethodCounts {
                    service: service.into(),
                    method: method.into(),
                    by_code: Default::default(),
                })
            })
            .clone()
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`); anything else is `unknown`.
pub(super) fn split_path(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
        .unwrap_or(("unknown", "unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/demo.Greeter/SayHello"),
            ("demo.Greeter", "SayHello")
        );
        assert_eq!(split_path("/x"), ("unknown", "unknown"));
        assert_eq!(split_path("/a/b/c"), ("unknown", "unknown"));
    }

    #[test]
    fn made_up_methods_past_the_cap_count_as_other() {
        let m = CallMetrics::new("grpc-metrics-cap-test");
        for i in 0..MAX_METHODS + 20 {
            m.record(&format!("/s.S/M{i}"), Some(0));
        }
        m.record("/s.S/M0", Some(5));
        let methods = m.methods.read().unwrap();
        assert_eq!(methods.len(), MAX_METHODS + 1);
        let other = &methods[""];
        assert_eq!(other.by_code[0].get().unwrap().get(), 20);
        assert_eq!(methods["/s.S/M0"].by_code[5].get().unwrap().get(), 1);
    }
}
