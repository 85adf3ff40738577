//! `load_balancing: least_request` (and `ewma`): the power of two choices on outstanding
//! requests (weighted by recent latency for `ewma`). Two
//! healthy backends are drawn at random (in proportion to their weights) and the one with
//! fewer requests in flight per unit of weight gets the request, as Envoy's default balancer.
//!
//! Pingora's balancers choose by hash or by turn; none reads a live load, so the counts are
//! kept here: one counter per backend, taken by a request's attempt and given back by it.

use pingora::lb::{Backend, Backends};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// What `least_request` and `ewma` compare between the two drawn backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Requests in flight per unit of weight.
    InFlight,
    /// (Requests in flight + 1) times recent latency, per unit of weight.
    InFlightTimesLatency,
}

/// One backend's load: requests in flight and recent latency. It travels with the backend
/// (see `member.rs`), so counts survive DNS refreshes that keep the address.
#[derive(Default)]
pub struct Load {
    in_flight: Arc<AtomicUsize>,
    latency: Ewma,
}

impl Load {
    /// Attempts in flight on the backend now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The in-flight counter, for an attempt to hold while it runs.
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.in_flight.clone()
    }

    /// Feeds an attempt's time to its response header to the backend's average (`ewma`).
    pub fn observe(&self, took: std::time::Duration) {
        self.latency.observe(took.as_micros() as u64);
    }
}

/// A backend's moving average of response-header latency (peak-sensitive), decaying towards
/// zero while it gets no requests, so a backend that was slow is tried again after a while.
#[derive(Default)]
struct Ewma {
    /// Microseconds.
    average: AtomicU64,
    /// Microseconds since [`EPOCH`] of the last sample.
    updated: AtomicU64,
}

/// How fast an idle backend's average fades: after this long it is a third of what it was.
const DECAY_SECONDS: f64 = 10.0;
/// Weight of a new sample in the average.
const ALPHA: f64 = 0.3;

static EPOCH: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

impl Ewma {
    fn observe(&self, sample_us: u64) {
        let old = self.current();
        let sample = sample_us as f64;
        // Peak EWMA: a slower answer counts at once, faster ones are averaged in, so a backend
        // that turns slow is avoided after one slow answer.
        let new = if sample >= old {
            sample
        } else {
            old + ALPHA * (sample - old)
        };
        self.average.store(new as u64, Ordering::Relaxed);
        self.updated.store(now_us(), Ordering::Relaxed);
    }

    /// The average, decayed for the time since its last sample.
    fn current(&self) -> f64 {
        let average = self.average.load(Ordering::Relaxed) as f64;
        let idle = now_us().saturating_sub(self.updated.load(Ordering::Relaxed)) as f64 / 1e6;
        average * (-idle / DECAY_SECONDS).exp()
    }
}

impl Measure {
    /// Picks between two weighted random healthy backends that `admitted` accepts, comparing
    /// their loads (`load_of` finds a backend's).
    pub fn pick(
        self,
        backends: &Backends,
        admitted: impl Fn(&Backend) -> bool,
        load_of: impl Fn(&Backend) -> &Load,
    ) -> Option<Backend> {
        let all = backends.get_backend();
        let candidates: Vec<&Backend> = all
            .iter()
            .filter(|b| backends.ready(b) && admitted(b))
            .collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            _ => {
                // Two distinct backends: drawing the same one twice would hand it the request
                // with no comparison (a quarter of the requests between two backends).
                let first = draw(&candidates, None);
                let second = draw(&candidates, Some(first));
                let lighter =
                    if self.cost(second, load_of(second)) < self.cost(first, load_of(first)) {
                        second
                    } else {
                        first
                    };
                Some(lighter.clone())
            }
        }
    }

    /// The cost of sending one more request to `b`, whose load is `load`.
    fn cost(self, b: &Backend, load: &Load) -> f64 {
        let n = load.in_flight.load(Ordering::Relaxed) as f64;
        let weight = b.weight.max(1) as f64;
        match self {
            Measure::InFlight => n / weight,
            Measure::InFlightTimesLatency => (n + 1.0) * (load.latency.current() + 1.0) / weight,
        }
    }
}

/// A backend drawn in proportion to its weight, other than `except`.
fn draw<'a>(candidates: &[&'a Backend], except: Option<&Backend>) -> &'a Backend {
    let eligible = || {
        candidates
            .iter()
            .copied()
            .filter(move |b| except.is_none_or(|e| e.addr != b.addr))
    };
    let total: u64 = eligible().map(|b| b.weight as u64).sum();
    let mut point = fastrand::u64(..total.max(1));
    for b in eligible() {
        if point < b.weight as u64 {
            return b;
        }
        point -= b.weight as u64;
    }
    eligible().next_back().unwrap_or(candidates[0])
}

/// An attempt's hold on its backend's counter: taken when the backend is picked, given back
/// when the attempt ends (the next attempt, or the request's end, whatever happened).
#[derive(Default)]
pub struct Hold(Option<Arc<AtomicUsize>>);

impl Hold {
    pub fn take(&mut self, counter: Option<Arc<AtomicUsize>>) {
        self.release();
        if let Some(c) = &counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.0 = counter;
    }

    fn release(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_weights_and_never_repeat_the_excluded_backend() {
        let light = Backend::new_with_weight("127.0.0.1:1", 1).unwrap();
        let heavy = Backend::new_with_weight("127.0.0.1:2", 3).unwrap();
        let candidates = [&light, &heavy];
        let heavy_draws = (0..4000)
            .filter(|_| draw(&candidates, None).addr == heavy.addr)
            .count();
        // 3/4 of 4,000 is 3,000; five standard deviations (~137) either side.
        assert!((2863..=3137).contains(&heavy_draws), "{heavy_draws}");
        assert!((0..100).all(|_| draw(&candidates, Some(&heavy)).addr == light.addr));
    }

    #[test]
    fn a_hold_gives_its_count_back_when_replaced_or_dropped() {
        let counter = Arc::new(AtomicUsize::new(0));
        let other = Arc::new(AtomicUsize::new(0));
        let mut hold = Hold::default();
        hold.take(Some(counter.clone()));
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        hold.take(Some(other.clone()));
        assert_eq!(
            (
                counter.load(Ordering::Relaxed),
                other.load(Ordering::Relaxed)
            ),
            (0, 1)
        );
        drop(hold);
        assert_eq!(other.load(Ordering::Relaxed), 0);
    }
}
