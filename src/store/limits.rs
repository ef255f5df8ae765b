//! Rate limit and quota: the algorithm, shared by the embedded backend (in Rust, below) and the
//! Redis backend (the same steps in one Lua script).
//!
//! **Rate limit: a sliding log.** Each admitted request's time is logged; a request is admitted
//! when fewer than `rate` logged requests are younger than `per` seconds. So at most `rate`
//! requests pass in *any* `per`-second window, and the limit renews continuously: the oldest
//! request ageing out frees one slot. Why this and not the alternatives:
//! - a fixed window lets `2 × rate` through around a window boundary, and its counts depend on
//!   where the boundary falls, so "N pass, the N+1st is refused" would not hold in general;
//! - a token bucket / GCRA (Tyk's DRL) is O(1) memory but admits more than `rate` in some
//!   `per`-second windows once requests are spread out;
//! - Tyk's own Redis rate limiter is a sliding log too (`rate-limit-<key>` sorted set), but it
//!   also logs *refused* requests, so a client that keeps retrying stays locked out. pipegate logs
//!   only admitted requests: the limit is exactly what is admitted.
//!
//! The cost is memory: up to `rate` timestamps per active key (8 bytes each in process, a sorted
//! set entry in Redis), trimmed on every request. Fractional rates below 1 (e.g. 0.5 per 1 s)
//! become "1 per `per / rate` seconds".
//!
//! **Quota:** `quota_max` admitted requests per period. The period starts with the first admitted
//! request after a renewal and lasts `quota_renewal_rate` seconds (Tyk's `quota-<key>` counter
//! with a TTL set on its first increment); with a renewal rate <= 0 the quota never renews.
//!
//! Order, as Tyk's `ForwardMessage`: rate limit first, then quota. A refused request consumes
//! neither (Tyk would count a quota-refused request against the rate).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The limits one request is checked against (a session's `rate`, `per`, `quota_max`,
/// `quota_renewal_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSpec {
    /// Requests per window; <= 0 means no rate limit (Tyk: "-1 or 0 means unlimited").
    pub rate: f64,
    /// Window in seconds; <= 0 means no rate limit.
    pub per: f64,
    /// Requests per quota period; <= 0 means no quota.
    pub quota_max: i64,
    /// Quota period in seconds; <= 0 means the quota never renews.
    pub quota_renewal_rate: i64,
}

impl LimitSpec {
    /// Whether any limit applies (otherwise the store is not consulted at all).
    pub fn limits_anything(&self) -> bool {
        self.window().is_some() || self.quota_max > 0
    }

    /// The sliding log's (capacity, window in microseconds), or `None` without a rate limit.
    pub fn window(&self) -> Option<(u64, u64)> {
        let usable = |x: f64| x > 0.0 && x.is_finite();
        if !(usable(self.rate) && usable(self.per)) {
            return None;
        }
        let (cap, secs) = if self.rate >= 1.0 {
            (self.rate.floor(), self.per)
        } else {
            (1.0, self.per / self.rate)
        };
        let window_us = (secs * 1_000_000.0).min(u64::MAX as f64 / 2.0) as u64;
        let cap = cap.min(u32::MAX as f64) as u64;
        Some((cap.max(1), window_us.max(1)))
    }

    /// The quota period in microseconds (`None`: never renews).
    pub fn renewal_us(&self) -> Option<u64> {
        (self.quota_renewal_rate > 0)
            .then(|| (self.quota_renewal_rate as u64).saturating_mul(1_000_000))
    }
}

/// What the store decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted (and counted).
    Allowed,
    /// Over the rate limit: 429.
    RateLimited,
    /// Quota used up: 403.
    QuotaExceeded,
}

/// A decision plus the quota state after it (for the session and the `X-RateLimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    /// Admitted or why not.
    pub verdict: Verdict,
    /// Requests left in the quota period (`None` when there is no quota).
    pub quota_remaining: Option<i64>,
    /// When the quota period ends, unix seconds (`None`: no quota, or a quota that never renews).
    pub quota_renews: Option<i64>,
    /// When the next rate-limit slot frees, unix microseconds (set when rate limited).
    pub rate_reset_us: Option<u64>,
}

impl LimitDecision {
    /// The decision when nothing is limited.
    pub fn unlimited() -> LimitDecision {
        LimitDecision {
            verdict: Verdict::Allowed,
            quota_remaining: None,
            quota_renews: None,
            rate_reset_us: None,
        }
    }
}

/// One key's counters in process memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyCounters {
    /// Admission times (unix µs) of requests inside the current rate window, oldest first.
    log: VecDeque<u64>,
    /// Quota used in the current period (0 = no period running).
    quota: QuotaCounter,
}

/// Quota usage, persisted by the embedded store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QuotaCounter {
    /// Requests admitted in the current period.
    pub used: i64,
    /// When the period ends (unix µs); `None` = never (or no period running when `used` is 0).
    pub renews_at_us: Option<u64>,
}

impl QuotaCounter {
    /// The usage still in force at `now` (an ended period counts as none).
    pub fn current(&self, now_us: u64) -> QuotaCounter {
        match self.renews_at_us {
            Some(r) if now_us >= r => QuotaCounter::default(),
            _ => *self,
        }
    }
}

impl KeyCounters {
    /// Counters restored with a persisted quota (rate windows are not persisted).
    pub fn with_quota(quota: QuotaCounter) -> KeyCounters {
        KeyCounters {
            log: VecDeque::new(),
            quota,
        }
    }

    /// The persisted part.
    pub fn quota(&self) -> QuotaCounter {
        self.quota
    }

    /// Applies the algorithm described in the module docs at time `now_us`.
    pub fn check(&mut self, spec: &LimitSpec, now_us: u64) -> LimitDecision {
        let window = spec.window();
        if let Some((cap, window_us)) = window {
            let horizon = now_us.saturating_sub(window_us);
            while self.log.front().is_some_and(|&t| t <= horizon) {
                self.log.pop_front();
            }
            if self.log.len() as u64 >= cap {
                let oldest = self.log.front().copied().unwrap_or(now_us);
                return LimitDecision {
                    verdict: Verdict::RateLimited,
                    quota_remaining: None,
                    quota_renews: None,
                    rate_reset_us: Some(oldest.saturating_add(window_us)),
                };
            }
        }
        let quota_on = spec.quota_max > 0;
        if quota_on {
            self.quota = self.quota.current(now_us);
            if self.quota.used >= spec.quota_max {
                return LimitDecision {
                    verdict: Verdict::QuotaExceeded,
                    quota_remaining: Some(0),
                    quota_renews: self.quota.renews_at_us.map(micros_to_secs),
                    rate_reset_us: None,
                };
            }
        }
        if window.is_some() {
            self.log.push_back(now_us);
        }
        if !quota_on {
            return LimitDecision::unlimited();
        }
        self.quota.used += 1;
        if self.quota.used == 1 {
            self.quota.renews_at_us = spec.renewal_us().map(|r| now_us.saturating_add(r));
        }
        LimitDecision {
            verdict: Verdict::Allowed,
            quota_remaining: Some((spec.quota_max - self.quota.used).max(0)),
            quota_renews: self.quota.renews_at_us.map(micros_to_secs),
            rate_reset_us: None,
        }
    }

    /// Whether these counters hold nothing worth keeping at `now_us` (for the idle sweep).
    pub fn is_idle(&mut self, now_us: u64, max_window_us: u64) -> bool {
        let horizon = now_us.saturating_sub(max_window_us);
        while self.log.front().is_some_and(|&t| t <= horizon) {
            self.log.pop_front();
        }
        self.log.is_empty() && self.quota.current(now_us).used == 0
    }
}

/// Unix microseconds to whole seconds, rounded up (a renewal at 10.2 s has not happened at 10 s).
pub(crate) fn micros_to_secs(us: u64) -> i64 {
    i64::try_from(us.div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn spec(rate: f64, per: f64, qmax: i64, renew: i64) -> LimitSpec {
        LimitSpec {
            rate,
            per,
            quota_max: qmax,
            quota_renewal_rate: renew,
        }
    }

    #[test]
    fn sliding_log_admits_exactly_rate_per_window() {
        let mut c = KeyCounters::default();
        let s = spec(3.0, 1.0, 0, 0);
        let t0 = 1_000 * S;
        for i in 0..3 {
            assert_eq!(c.check(&s, t0 + i).verdict, Verdict::Allowed, "request {i}");
        }
        let refused = c.check(&s, t0 + 10);
        assert_eq!(refused.verdict, Verdict::RateLimited);
        assert_eq!(refused.rate_reset_us, Some(t0 + S));
        // Still inside the window of the first request: refused.
        assert_eq!(c.check(&s, t0 + S - 1).verdict, Verdict::RateLimited);
        // The first request ages out: exactly one slot frees.
        assert_eq!(c.check(&s, t0 + S).verdict, Verdict::Allowed);
        assert_eq!(c.check(&s, t0 + S).verdict, Verdict::RateLimited);
    }

    #[test]
    fn refused_requests_do_not_extend_the_lockout() {
        let mut c = KeyCounters::default();
        let s = spec(1.0, 1.0, 0, 0);
        assert_eq!(c.check(&s, 10 * S).verdict, Verdict::Allowed);
        for i in 1..100 {
            assert_eq!(c.check(&s, 10 * S + i * 1000).verdict, Verdict::RateLimited);
        }
        assert_eq!(c.check(&s, 11 * S).verdict, Verdict::Allowed);
    }

    #[test]
    fn fractional_rate_spreads_one_request() {
        let s = spec(0.5, 1.0, 0, 0);
        assert_eq!(s.window(), Some((1, 2 * S)));
        let mut c = KeyCounters::default();
        assert_eq!(c.check(&s, 5 * S).verdict, Verdict::Allowed);
        assert_eq!(c.check(&s, 6 * S).verdict, Verdict::RateLimited);
        assert_eq!(c.check(&s, 7 * S).verdict, Verdict::Allowed);
    }

    #[test]
    fn zero_or_negative_rate_is_unlimited() {
        assert!(spec(0.0, 1.0, 0, 0).window().is_none());
        assert!(spec(-1.0, 1.0, -1, 0).window().is_none());
        assert!(spec(10.0, 0.0, 0, 0).window().is_none());
        assert!(!spec(-1.0, 60.0, -1, 60).limits_anything());
    }

    #[test]
    fn quota_counts_renews_and_never_renews() {
        let mut c = KeyCounters::default();
        let s = spec(0.0, 0.0, 2, 60);
        let d = c.check(&s, 100 * S);
        assert_eq!(
            (d.verdict, d.quota_remaining, d.quota_renews),
            (Verdict::Allowed, Some(1), Some(160))
        );
        assert_eq!(c.check(&s, 101 * S).quota_remaining, Some(0));
        let refused = c.check(&s, 159 * S);
        assert_eq!(refused.verdict, Verdict::QuotaExceeded);
        assert_eq!(refused.quota_renews, Some(160));
        // Period over: full quota again, new period from this request.
        let d = c.check(&s, 170 * S);
        assert_eq!(
            (d.verdict, d.quota_remaining, d.quota_renews),
            (Verdict::Allowed, Some(1), Some(230))
        );

        let mut never = KeyCounters::default();
        let s = spec(0.0, 0.0, 1, 0);
        assert_eq!(never.check(&s, S).verdict, Verdict::Allowed);
        assert_eq!(
            never.check(&s, 1_000_000 * S).verdict,
            Verdict::QuotaExceeded
        );
    }

    #[test]
    fn rate_limited_request_does_not_use_quota() {
        let mut c = KeyCounters::default();
        let s = spec(1.0, 10.0, 5, 60);
        assert_eq!(c.check(&s, S).quota_remaining, Some(4));
        assert_eq!(c.check(&s, 2 * S).verdict, Verdict::RateLimited);
        assert_eq!(c.check(&s, 12 * S).quota_remaining, Some(3));
    }
}
