//! Background services that keep long-lived state of the live snapshot fresh: active health
//! checks and DNS discovery, JWKS refresh, and the rate limiter's idle-key sweep. They read the snapshot at each
//! tick, so a reload changes what they work on without restarting them.

use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Background service keeping every service's members fresh: the active health check and
/// the re-resolution of `dns:` backends, each on its own interval, against whatever snapshot is
/// current at each tick.
pub struct HealthChecker {
    pub snapshot: SharedSnapshot,
}

/// The periodic jobs a pool can have.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PoolJob {
    HealthCheck,
    Discovery,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<(String, PoolJob), Instant> = HashMap::new();
        loop {
            let snapshot = self.snapshot.load_full();
            let now = Instant::now();
            let mut checks = Vec::new();
            let mut refreshes = Vec::new();
            let mut next = now + Duration::from_secs(1);
            for pool in snapshot.services() {
                let jobs = [
                    (PoolJob::HealthCheck, pool.health_interval()),
                    (PoolJob::Discovery, pool.discovery_interval()),
                ];
                for (job, interval) in jobs {
                    let Some(interval) = interval else {
                        continue;
                    };
                    // Names were resolved when the pool was built: the first refresh waits.
                    let first = match job {
                        PoolJob::HealthCheck => now,
                        PoolJob::Discovery => now + interval,
                    };
                    let when = due.entry((pool.name.clone(), job)).or_insert(first);
                    if *when <= now {
                        *when = now + interval;
                        match job {
                            PoolJob::HealthCheck => checks.push(pool.run_health_check()),
                            PoolJob::Discovery => refreshes.push(pool.refresh_discovery()),
                        }
                    }
                    next = next.min(*when);
                }
            }
            // Discovery first, so a round's health checks see the members it found.
            futures::future::join_all(refreshes).await;
            futures::future::join_all(checks).await;
            crate::metrics::health_checked();
            let sleep = next.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Background service: fetches URL key sets at startup and every TTL (every
/// `min_refresh_interval` while failing). The gateway serves meanwhile: tokens for a source
/// that is down fail until it answers.
pub struct JwksRefresher {
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<usize, Instant> = HashMap::new();
        loop {
            let snapshot = self.snapshot.load_full();
            let now = Instant::now();
            let mut next = now + Duration::from_secs(60);
            for source in snapshot.jwks_sources() {
                let id = Arc::as_ptr(source) as usize;
                let when = *due.entry(id).or_insert(now);
                if when <= now {
                    let wait = source.refresh_scheduled().await;
                    due.insert(id, Instant::now() + wait);
                }
                next = next.min(due[&id]);
            }
            tokio::select! {
                _ = tokio::time::sleep(next.saturating_duration_since(Instant::now())) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Background service dropping idle keys from the local store.
pub struct LimiterSweeper {
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for LimiterSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = match &self.snapshot.load().rate_limiter {
                Some(limiter) => {
                    limiter.local.sweep();
                    limiter.sweep_interval
                }
                None => Duration::from_secs(10),
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Background service that switches the trace exporter to draining as soon as the process
/// starts to shut down (SIGQUIT upgrade, SIGTERM), so the spans of the requests finished
/// meanwhile go out within milliseconds instead of at the flush interval; at the runtimes'
/// shutdown it waits for the queue to empty on a blocking thread, which Pingora's shutdown
/// waits for (up to `graceful_shutdown_timeout_seconds`), unlike async tasks.
pub struct TraceDrain {
    /// Pingora's execution phases, taken when the service starts (after daemonizing).
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for TraceDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let phases = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let shutting_down = async {
            let Some(mut phases) = phases else {
                return std::future::pending().await;
            };
            loop {
                match phases.recv().await {
                    Ok(
                        ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted,
                    ) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                    _ => {}
                }
            }
        };
        tokio::select! {
            _ = shutting_down => crate::trace::export::start_draining(),
            _ = shutdown.changed() => {}
        }
        if !*shutdown.borrow() {
            let _ = shutdown.changed().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            crate::trace::export::wait_drained(Duration::from_secs(5));
        })
        .await;
    }
}
