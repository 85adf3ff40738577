//! The GCRA algorithm and the in-process store.
//!
//! GCRA (the generic cell rate algorithm, a token bucket stored as one timestamp) keeps one
//! "theoretical arrival time" (TAT) per key. With emission interval `T = period / requests` and
//! bucket size `burst`, a request at `now` is admitted iff `max(TAT, now) - now <= (burst-1)·T`,
//! and then `TAT = max(TAT, now) + T`. It is exact at every instant (no window edges): at most
//! `burst` requests pass at once, and any interval of length `period` admits at most
//! `burst + requests - 1`. Remaining and reset follow from the TAT, so the headers are exact.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A policy's rate, in the units GCRA needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Requests per period.
    pub requests: u64,
    /// The period.
    pub period: Duration,
    /// Bucket size: requests admitted at once.
    pub burst: u64,
}

/// The outcome of one check, with everything the rate-limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until the next request would be admitted (0 when allowed).
    pub retry_after_secs: u64,
}

impl Gcra {
    fn emission_ns(&self) -> u64 {
        (self.period.as_nanos() / u128::from(self.requests.max(1))).max(1) as u64
    }

    fn tolerance_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(self.burst.max(1) - 1)
    }

    /// Applies one request at `now` to a key whose TAT is `tat` (both in ns on the same clock);
    /// returns the new TAT (unchanged when refused) and the verdict.
    pub fn apply(&self, tat: u64, now: u64) -> (u64, Verdict) {
        let t = self.emission_ns();
        let tau = self.tolerance_ns();
        let tat = tat.max(now);
        if tat - now > tau {
            let wait = tat - tau - now;
            return (
                tat,
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_secs: ceil_secs(tat - now),
                    retry_after_secs: ceil_secs(wait).max(1),
                },
            );
        }
        let new_tat = tat + t;
        let used = new_tat - now;
        let capacity = t.saturating_mul(self.burst.max(1));
        (
            new_tat,
            Verdict {
                allowed: true,
                remaining: capacity.saturating_sub(used) / t,
                reset_secs: ceil_secs(used),
                retry_after_secs: 0,
            },
        )
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

const SHARDS: usize = 64;

/// Map keys are already keyed 128-bit hashes, so hashing them again (SipHash, the std
/// default) would only cost time; this hasher passes the upper 64 bits through. Written by
/// hand because it is six lines and only valid for this one key type.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is expected; fold anything else so the hasher stays correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, key: u128) {
        // The low bits pick the shard; the high bits spread keys inside it.
        self.0 = (key >> 64) as u64;
    }
}

type Shard = HashMap<u128, u64, BuildHasherDefault<PreHashed>>;

/// Per-key TATs in lock-sharded maps, bounded by a key cap.
///
/// Keys are 128-bit keyed hashes of the key text (random per process), so a million keys cost
/// ~24 bytes each plus map overhead, and an attacker cannot aim collisions without the seed.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard_cap: usize,
    hashers: (RandomState, RandomState),
    epoch: Instant,
    /// Keys forgotten because a shard was full of active keys.
    pub evictions: AtomicU64,
    keys: AtomicUsize,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard_cap: max_keys.div_ceil(SHARDS).max(1),
            hashers: (RandomState::new(), RandomState::new()),
            epoch: Instant::now(),
            evictions: AtomicU64::new(0),
            keys: AtomicUsize::new(0),
        }
    }

    /// Hashes key text into the store's key space.
    pub fn key(&self, parts: &[&[u8]]) -> u128 {
        let mut a = self.hashers.0.build_hasher();
        let mut b = self.hashers.1.build_hasher();
        for p in parts {
            a.write(p);
            a.write_u8(0xff);
            b.write(p);
            b.write_u8(0xff);
        }
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Checks and records one request for `key` under `gcra`.
    pub fn check(&self, key: u128, gcra: &Gcra) -> Verdict {
        let now = self.now();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(&key) {
            let (new_tat, verdict) = gcra.apply(*tat, now);
            *tat = new_tat;
            return verdict;
        }
        let (new_tat, verdict) = gcra.apply(0, now);
        if verdict.allowed {
            if map.len() >= self.per_shard_cap {
                self.make_room(&mut map, now);
            }
            map.insert(key, new_tat);
            self.keys.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// A full shard first drops idle keys (full buckets, nothing to remember); if every key is
    /// active it forgets one arbitrary key, whose next request starts with a fresh bucket.
    fn make_room(&self, map: &mut Shard, now: u64) {
        let before = map.len();
        map.retain(|_, tat| *tat > now);
        self.keys.fetch_sub(before - map.len(), Ordering::Relaxed);
        if map.len() >= self.per_shard_cap
            && let Some(victim) = map.keys().next().copied()
        {
            map.remove(&victim);
            self.keys.fetch_sub(1, Ordering::Relaxed);
            if self.evictions.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!(
                    "rate limiter reached max_keys; forgetting active keys to admit new ones"
                );
            }
        }
    }

    /// Removes keys whose bucket is full again (nothing to remember). Run periodically.
    pub fn sweep(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, tat| *tat > now);
            self.keys.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn run(g: &Gcra, times: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&now| {
                let (t, v) = g.apply(tat, now);
                tat = t;
                v.allowed
            })
            .collect()
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra {
            requests: 10,
            period: Duration::from_secs(10),
            burst: 10,
        };
        let ok = run(&g, &[SEC * 100; 11]);
        assert_eq!(ok.iter().filter(|a| **a).count(), 10);
        // One token per second afterwards.
        let mut tat = 0;
        for _ in 0..10 {
            tat = g.apply(tat, 100 * SEC).0;
        }
        assert!(!g.apply(tat, 100 * SEC + SEC / 2).1.allowed);
        assert!(g.apply(tat, 101 * SEC).1.allowed);
    }

    #[test]
    fn never_more_than_burst_plus_rate_in_any_period() {
        let g = Gcra {
            requests: 100,
            period: Duration::from_secs(60),
            burst: 100,
        };
        // Hammer every 10 ms for 3 periods and slide a 60 s window over the admissions.
        let mut tat = 0;
        let mut admitted = Vec::new();
        for i in 0..18_000u64 {
            let now = i * 10_000_000;
            let (t, v) = g.apply(tat, now);
            tat = t;
            if v.allowed {
                admitted.push(now);
            }
        }
        for (i, start) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|t| **t < start + 60 * SEC)
                .count();
            assert!(in_window < 200, "{in_window} admitted in one period");
        }
        // The straddled edge: 2x limit within one second is never admitted, only the burst
        // plus what the rate refills in that second (100/60 s -> 1).
        for (i, start) in admitted.iter().enumerate() {
            let in_second = admitted[i..]
                .iter()
                .take_while(|t| **t < start + SEC)
                .count();
            assert!(in_second <= 101, "{in_second} admitted within one second");
        }
    }

    #[test]
    fn headers_values_are_exact() {
        let g = Gcra {
            requests: 100,
            period: Duration::from_secs(60),
            burst: 100,
        };
        let (tat, v) = g.apply(0, 1000 * SEC);
        assert_eq!((v.remaining, v.reset_secs), (99, 1));
        let (_, v) = g.apply(tat, 1000 * SEC);
        assert_eq!(v.remaining, 98);
        let mut tat = 0;
        for _ in 0..100 {
            tat = g.apply(tat, 1000 * SEC).0;
        }
        let (_, v) = g.apply(tat, 1000 * SEC);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_secs, 1);
        assert_eq!(v.reset_secs, 60);
    }

    #[test]
    fn store_is_bounded_and_sweeps_idle_keys() {
        let store = LocalStore::new(64);
        let g = Gcra {
            requests: 1,
            period: Duration::from_secs(3600),
            burst: 1,
        };
        for i in 0..1000u32 {
            store.check(store.key(&[&i.to_le_bytes()]), &g);
        }
        assert!(store.len() <= 64, "{} keys", store.len());
        assert!(store.evictions.load(Ordering::Relaxed) > 0);
        let fast = Gcra {
            requests: 1_000_000,
            period: Duration::from_secs(1),
            burst: 1,
        };
        let s2 = LocalStore::new(100);
        s2.check(s2.key(&[b"a"]), &fast);
        std::thread::sleep(Duration::from_millis(2));
        s2.sweep();
        assert!(s2.is_empty());
    }
}
