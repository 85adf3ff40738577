//! Quotas: at most N requests per UTC calendar day or month, or per rolling 24 hours or 30
//! days, per consumer. Unlike the GCRA policies (which smooth a rate), a quota is a budget
//! that resets: a fixed window per calendar period, and for rolling periods the usual
//! two-window estimate (the previous window's count weighted by how much of it still lies
//! within the last period, plus the current one's).
//!
//! All of a consumer's quotas are checked and counted together, and only when every one
//! admits, so a refused request counts in none ("a quota counts only admitted requests").

use crate::consumer::{QuotaConfig, QuotaPeriod};
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const DAY: u64 = 86_400;

/// One compiled quota.
#[derive(Debug)]
pub struct Quota {
    pub requests: u64,
    period: QuotaPeriod,
    rolling: bool,
    /// `quota-day`, `quota-month`, with `-rolling` for rolling ones: the name in headers.
    pub name: Arc<str>,
    /// Part of every counter key: a changed quota starts counting afresh.
    store_id: String,
}

/// Where `now` falls in a quota's periods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Identifies the current window among all of this quota's windows.
    pub id: u64,
    /// Seconds the current window has run and has left.
    pub elapsed: u64,
    pub left: u64,
    /// The previous window's weight in the estimate: 0 for calendar periods.
    pub previous_weight: f64,
}

impl Quota {
    pub fn compile(cfg: &QuotaConfig) -> Option<Quota> {
        let period = cfg.period?;
        let base = match period {
            QuotaPeriod::Day => "quota-day",
            QuotaPeriod::Month => "quota-month",
        };
        let name = if cfg.rolling {
            format!("{base}-rolling")
        } else {
            base.to_string()
        };
        Some(Quota {
            requests: cfg.requests,
            period,
            rolling: cfg.rolling,
            store_id: format!("{name}|{}", cfg.requests),
            name: Arc::from(name),
        })
    }

    /// The window `now` (seconds since the epoch, UTC) falls in.
    pub fn window(&self, now: u64) -> Window {
        let fixed = |len: u64| Window {
            id: now / len,
            elapsed: now % len,
            left: len - now % len,
            previous_weight: if self.rolling {
                (len - now % len) as f64 / len as f64
            } else {
                0.0
            },
        };
        match (self.period, self.rolling) {
            (QuotaPeriod::Day, _) => fixed(DAY),
            (QuotaPeriod::Month, true) => fixed(30 * DAY),
            (QuotaPeriod::Month, false) => calendar_month(now),
        }
    }

    /// The length of the window the `w=` of `RateLimit-Policy` announces.
    fn window_secs(&self, w: &Window) -> u64 {
        w.elapsed + w.left
    }

    /// The counter key of a window of this quota for a consumer.
    pub fn key(&self, consumer: &str, window: u64) -> String {
        format!("q|{consumer}|{}|{window}", self.store_id)
    }
}

/// The UTC calendar month containing `now`: its index since year 0 and its bounds.
fn calendar_month(now: u64) -> Window {
    use time::{Date, Month, OffsetDateTime};
    let date = OffsetDateTime::from_unix_timestamp(now as i64)
        .map(|t| t.date())
        .unwrap_or(Date::MIN);
    let first = date.replace_day(1).unwrap_or(date);
    let next = match date.month() {
        Month::December => Date::from_calendar_date(date.year() + 1, Month::January, 1),
        m => Date::from_calendar_date(date.year(), m.next(), 1),
    }
    .unwrap_or(first);
    let secs = |d: Date| d.midnight().assume_utc().unix_timestamp().max(0) as u64;
    let (start, end) = (secs(first), secs(next));
    Window {
        id: date.year().max(0) as u64 * 12 + u64::from(date.month() as u8),
        elapsed: now - start,
        left: end.saturating_sub(now).max(1),
        previous_weight: 0.0,
    }
}

/// Requests counted in the last period: the current window's, and the previous window's share
/// still inside the period, rounded up (so the estimate never admits more than the budget).
pub fn estimate(current: u64, previous: u64, w: &Window) -> u64 {
    (previous as f64 * w.previous_weight).ceil() as u64 + current
}

/// A quota's state after a check, for the headers.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaReport {
    pub name: Arc<str>,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends (`t=`).
    pub reset_secs: u64,
    pub window_secs: u64,
    /// On a refusal: seconds until a request would be admitted.
    pub retry_after_secs: u64,
}

impl QuotaReport {
    /// Builds the report from the counts of the current and previous windows.
    pub fn new(quota: &Quota, w: &Window, current: u64, previous: u64, admitted: bool) -> Self {
        let estimate = estimate(current, previous, w);
        let retry_after_secs = if admitted {
            0
        } else if !quota.rolling || current >= quota.requests || previous == 0 {
            w.left
        } else {
            // The previous window's share must fall below what is left of the budget.
            let room = (quota.requests - current) as f64 / previous as f64;
            let len = quota.window_secs(w) as f64;
            ((len * (1.0 - room)).ceil() as u64)
                .saturating_sub(w.elapsed)
                .max(1)
        };
        QuotaReport {
            name: quota.name.clone(),
            limit: quota.requests,
            remaining: quota.requests.saturating_sub(estimate),
            reset_secs: w.left,
            window_secs: quota.window_secs(w),
            retry_after_secs,
        }
    }

    /// The `RateLimit-Policy` item: `"quota-day";q=1000;w=86400`.
    pub fn policy_item(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "\"{}\";q={};w={}",
            self.name, self.limit, self.window_secs
        ))
        .ok()
    }

    /// The `RateLimit` item: `"quota-day";r=990;t=3600`.
    pub fn limit_item(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "\"{}\";r={};t={}",
            self.name, self.remaining, self.reset_secs
        ))
        .ok()
    }
}

/// In-process quota counters, kept across reloads.
#[derive(Default)]
pub struct LocalQuotas {
    /// Count of a window, and until when (seconds since the epoch) it is needed: the window's
    /// end plus one more window, while it serves as the previous one.
    counts: Mutex<HashMap<String, (u64, u64)>>,
}

impl LocalQuotas {
    /// Checks and counts all `quotas` together; the reports, admitted or not.
    pub fn check(
        &self,
        consumer: &str,
        quotas: &[Arc<Quota>],
        now: u64,
    ) -> (bool, Vec<QuotaReport>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let windows: Vec<Window> = quotas.iter().map(|q| q.window(now)).collect();
        let state: Vec<(String, u64, u64)> = quotas
            .iter()
            .zip(&windows)
            .map(|(q, w)| {
                let key = q.key(consumer, w.id);
                let count = |k: &str| counts.get(k).map_or(0, |(c, _)| *c);
                let cur = count(&key);
                let prev = count(&q.key(consumer, w.id.wrapping_sub(1)));
                (key, cur, prev)
            })
            .collect();
        let admitted = quotas
            .iter()
            .zip(&windows)
            .zip(&state)
            .all(|((q, w), (_, cur, prev))| estimate(*cur, *prev, w) < q.requests);
        let reports = quotas
            .iter()
            .zip(&windows)
            .zip(state)
            .map(|((q, w), (key, cur, prev))| {
                let cur = if admitted {
                    let needed_until = now + w.left + (w.elapsed + w.left);
                    let (c, _) = counts.entry(key).or_insert((0, needed_until));
                    *c += 1;
                    *c
                } else {
                    cur
                };
                QuotaReport::new(q, w, cur, prev, admitted)
            })
            .collect();
        if counts.len() > 4096 {
            counts.retain(|_, (_, needed_until)| *needed_until > now);
        }
        (admitted, reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u64, period: QuotaPeriod, rolling: bool) -> Arc<Quota> {
        Arc::new(
            Quota::compile(&QuotaConfig {
                requests,
                period: Some(period),
                rolling,
            })
            .unwrap(),
        )
    }

    #[test]
    fn calendar_windows_follow_utc_days_and_months() {
        // 2026-12-03T12:00:00Z
        let now = 1_796_299_200;
        let day = quota(5, QuotaPeriod::Day, false).window(now);
        assert_eq!((day.elapsed, day.left), (43_200, 43_200));
        let month = quota(5, QuotaPeriod::Month, false).window(now);
        assert_eq!(month.elapsed, 2 * DAY + 43_200);
        assert_eq!(month.left, 29 * DAY - 43_200, "December has 31 days");
        let next = quota(5, QuotaPeriod::Month, false).window(now + 29 * DAY - 43_200);
        assert_eq!(next.id, month.id + 1, "January is the next window");
        assert_eq!(next.elapsed, 0);
    }

    #[test]
    fn a_refused_request_counts_in_no_quota() {
        let store = LocalQuotas::default();
        let quotas = [
            quota(3, QuotaPeriod::Day, false),
            quota(2, QuotaPeriod::Month, false),
        ];
        let now = 1_796_299_200;
        for expected_remaining in [1, 0] {
            let (ok, reports) = store.check("c", &quotas, now);
            assert!(ok);
            assert_eq!(reports[1].remaining, expected_remaining);
        }
        let (ok, reports) = store.check("c", &quotas, now);
        assert!(!ok);
        assert_eq!(
            reports[0].remaining, 1,
            "the day quota did not count the refusal"
        );
        assert_eq!(reports[1].retry_after_secs, 29 * DAY - 43_200);
        assert!(store.check("other", &quotas, now).0, "per consumer");
        // The next UTC day starts a fresh day window, but the month is still used up.
        assert!(!store.check("c", &quotas, now + DAY).0);
    }

    #[test]
    fn forgetting_old_windows_keeps_every_window_still_counting() {
        let store = LocalQuotas::default();
        let day = [quota(2, QuotaPeriod::Day, false)];
        let month = [quota(5000, QuotaPeriod::Month, false)];
        let now = 1_796_299_200;
        // A consumer whose day quota is used up today...
        assert!(store.check("daily", &day, now).0);
        assert!(store.check("daily", &day, now).0);
        // ...then enough month-quota consumers to make the store forget old windows.
        for i in 0..4100 {
            store.check(&format!("monthly-{i}"), &month, now);
        }
        assert!(!store.check("daily", &day, now).0, "today's count survived");
        // Windows no longer needed do go: three days on, the day windows are forgotten.
        let later = now + 3 * DAY;
        for i in 0..10 {
            store.check(&format!("monthly-{i}"), &month, later);
        }
        let counts = store.counts.lock().unwrap();
        assert!(!counts.keys().any(|k| k.starts_with("q|daily|")));
    }

    #[test]
    fn rolling_quotas_remember_the_previous_window() {
        let store = LocalQuotas::default();
        let quotas = [quota(4, QuotaPeriod::Day, true)];
        let late = 1_796_342_400 - 10; // ten seconds before a UTC midnight
        for _ in 0..4 {
            assert!(store.check("c", &quotas, late).0);
        }
        let (ok, report) = store.check("c", &quotas, late + 20);
        assert!(
            !ok,
            "just after midnight the last 24 hours still hold 4 requests"
        );
        assert!(report[0].retry_after_secs >= 1);
        assert!(
            store.check("c", &quotas, late + 10 + DAY / 2).0,
            "half of them have aged out"
        );
    }

    #[test]
    fn header_items_name_the_quota() {
        let q = quota(1000, QuotaPeriod::Day, false);
        let r = QuotaReport::new(&q, &q.window(DAY * 3 + 100), 10, 0, true);
        assert_eq!(r.policy_item().unwrap(), "\"quota-day\";q=1000;w=86400");
        assert_eq!(r.limit_item().unwrap(), "\"quota-day\";r=990;t=86300");
    }
}
