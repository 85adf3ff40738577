//! The Redis store: the same GCRA, run atomically inside Redis by a Lua script, so every
//! gateway instance shares one limit. Time comes from the Redis server (`TIME`), so nodes with
//! skewed clocks still agree.

use super::local::{Gcra, Verdict};
use crate::de::de_duration;
use crate::invalid::Invalid;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `rate_limits.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Multiplexed connections used round robin.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Longest a limit decision may wait on Redis before `on_store_error` applies.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Prefix of every key the gateway writes.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

fn default_pool() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_prefix() -> String {
    "apigw:rl:".into()
}

/// GCRA in Lua. KEYS[1] = key; ARGV = emission interval µs, tolerance µs.
/// Returns {allowed, tat - now (µs), retry wait (µs)}.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now, tat - tolerance - now}
end
local new = tat + emission
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1)
return {1, new - now, 0}
"#;

/// A failure to reach a decision from Redis in time.
/// Quotas, all or nothing: KEYS are (current window, previous window) per quota; ARGV per quota
/// the limit, the weight of the previous window (0 for calendar periods) and the current
/// window's expiry in seconds. Refused when any estimate is at its limit (nothing counted),
/// else every current window counts one. Returns `{admitted, refused quota or 0, cur1, prev1,
/// cur2, prev2, ...}` with the counts after counting.
const QUOTA_SCRIPT: &str = r#"
local n = #KEYS / 2
local counts = {}
local refused = 0
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  counts[2 * i - 1] = cur
  counts[2 * i] = prev
  if refused == 0 and math.ceil(prev * tonumber(ARGV[3 * i - 1])) + cur >= tonumber(ARGV[3 * i - 2]) then
    refused = i
  end
end
if refused == 0 then
  for i = 1, n do
    counts[2 * i - 1] = redis.call('INCR', KEYS[2 * i - 1])
    if counts[2 * i - 1] == 1 then redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[3 * i]) end
  end
end
local out = {refused == 0 and 1 or 0, refused}
for i = 1, 2 * n do out[i + 2] = counts[i] end
return out
"#;

#[derive(Debug)]
pub struct StoreUnavailable(pub String);

/// Redis connections, created lazily inside the running server and re-created after failures.
pub struct RedisStore {
    client: redis::Client,
    conns: Vec<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
    next: AtomicUsize,
    timeout: Duration,
    prefix: String,
    script: redis::Script,
    quota_script: redis::Script,
    /// No connection attempt before this instant after a failed one (fail fast in an outage).
    retry_gate: std::sync::Mutex<Option<Instant>>,
    degraded: AtomicBool,
    /// Decisions that could not be made by Redis.
    pub failures: AtomicU64,
}

impl RedisStore {
    pub fn compile(cfg: &RedisConfig) -> Result<Self, Invalid> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| Invalid::new("rate_limits.redis.url".to_string(), e.to_string()))?;
        if cfg.pool_size == 0 {
            return Err(Invalid::new(
                "rate_limits.redis.pool_size",
                "must be at least 1",
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(Invalid::new(
                "rate_limits.redis.timeout",
                "must be positive",
            ));
        }
        Ok(RedisStore {
            client,
            conns: (0..cfg.pool_size)
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            next: AtomicUsize::new(0),
            timeout: cfg.timeout,
            prefix: cfg.key_prefix.clone(),
            script: redis::Script::new(GCRA_SCRIPT),
            quota_script: redis::Script::new(QUOTA_SCRIPT),
            retry_gate: std::sync::Mutex::new(None),
            degraded: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        })
    }

    /// Runs GCRA for `key` in Redis, within the configured timeout.
    pub async fn check(&self, key: &str, gcra: &Gcra) -> Result<Verdict, StoreUnavailable> {
        self.within_timeout(self.run(key, gcra)).await
    }

    /// Runs [`QUOTA_SCRIPT`]: `windows` are (current key, previous key, limit, previous
    /// window's weight, expiry seconds) per quota. The answer is the script's list.
    pub async fn quotas(
        &self,
        windows: &[(String, String, u64, f64, u64)],
    ) -> Result<Vec<i64>, StoreUnavailable> {
        let mut invocation = self.quota_script.prepare_invoke();
        for (cur, prev, limit, weight, expiry) in windows {
            invocation
                .key(format!("{}{cur}", self.prefix))
                .key(format!("{}{prev}", self.prefix))
                .arg(*limit)
                .arg(*weight)
                .arg(*expiry);
        }
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            invocation
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Bounds a Redis call by the configured timeout and notes the outcome.
    async fn within_timeout<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, StoreUnavailable> {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreUnavailable(e)),
            Err(_) => Err(StoreUnavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        self.note(outcome.as_ref().err());
        outcome
    }

    /// The next pooled connection, connecting it on first use.
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let conn = self.conns[slot].get_or_try_init(|| self.connect()).await?;
        Ok(conn.clone())
    }

    async fn run(&self, key: &str, gcra: &Gcra) -> Result<Verdict, String> {
        let mut conn = self.connection().await?;
        let emission_us =
            (gcra.period.as_micros() / u128::from(gcra.requests.max(1))).max(1) as u64;
        let tolerance_us = emission_us * (gcra.burst.max(1) - 1);
        let (allowed, used_us, wait_us): (i64, i64, i64) = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(emission_us)
            .arg(tolerance_us)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let us_to_secs = |us: i64| (us.max(0) as u64).div_ceil(1_000_000);
        let capacity = emission_us * gcra.burst.max(1);
        Ok(Verdict {
            allowed: allowed == 1,
            remaining: if allowed == 1 {
                capacity.saturating_sub(used_us.max(0) as u64) / emission_us
            } else {
                0
            },
            reset_secs: us_to_secs(used_us),
            retry_after_secs: if allowed == 1 {
                0
            } else {
                us_to_secs(wait_us).max(1)
            },
        })
    }

    async fn connect(&self) -> Result<redis::aio::ConnectionManager, String> {
        {
            let gate = self.retry_gate.lock().unwrap_or_else(|p| p.into_inner());
            if gate.is_some_and(|t| Instant::now() < t) {
                return Err("redis unreachable; next attempt shortly".into());
            }
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match redis::aio::ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(c) => Ok(c),
            Err(e) => {
                *self.retry_gate.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + Duration::from_secs(1));
                Err(e.to_string())
            }
        }
    }

    /// Logs once per transition between healthy and degraded, and counts failures.
    fn note(&self, failure: Option<&StoreUnavailable>) {
        match failure {
            None => {
                if self.degraded.swap(false, Ordering::AcqRel) {
                    log::info!("rate limit store redis recovered");
                }
            }
            Some(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    log::warn!(
                        "rate limit store redis unavailable ({}); applying on_store_error",
                        e.0
                    );
                }
            }
        }
    }
}
