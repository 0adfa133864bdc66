//! The per-customer rate limit (`--rate-limit N/WINDOW`) and its decision log.
//!
//! A sliding log per customer: a request is admitted when fewer than N of that customer's
//! admitted requests fall within the last WINDOW; otherwise it is refused with the number of
//! whole seconds after which one will be (`Retry-After`, at least 1): the time until the oldest
//! admitted request in the window leaves it. Refused requests do not count against the
//! customer, so a client that waits as told is admitted when it comes back (unless it made
//! other requests meanwhile). What is limited is every request that identifies a customer:
//! plugin authentication (by API key) and event batches (by token); downloads identify no one.
//!
//! Every decision is logged in memory (the newest [`LOG_CAP`]), with the time in milliseconds
//! since the server started (a monotonic clock), for `GET /control/rate-limit`: the tests check
//! there that a client never came back before the `Retry-After` it was sent.
//!
//! Hand-written rather than a crate (governor and the like): those implement GCRA or token
//! buckets without a per-key decision log, and a sliding log of at most N instants per customer
//! is a few lines that give an exact `Retry-After`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The most decisions the log keeps (the oldest are dropped first).
pub(crate) const LOG_CAP: usize = 10_000;

/// `N/WINDOW`: at most `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) requests: u32,
    pub(crate) window: Duration,
}

impl Rate {
    /// Parses `N/WINDOW`, the window in humantime form (`60s`, `10m`, `1h`), at least 1 s.
    pub(crate) fn parse(text: &str, flag: &str) -> anyhow::Result<Rate> {
        let Some((n, window)) = text.split_once('/') else {
            bail!("{flag} {text:?}: expected N/WINDOW, e.g. 5/60s");
        };
        let requests: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("{flag} {text:?}: {n:?} is not a positive number"))?;
        let window = humantime::parse_duration(window.trim())
            .with_context(|| format!("{flag} {text:?}: {window:?} is not a duration"))?;
        if window < Duration::from_secs(1) {
            bail!("{flag} {text:?}: the window must be at least 1s");
        }
        Ok(Rate { requests, window })
    }
}

/// One decision, as `GET /control/rate-limit` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Decision {
    pub(crate) customer: String,
    pub(crate) path: String,
    /// Milliseconds since the server started.
    pub(crate) at_ms: u64,
    /// 200 when admitted (whatever the handler answered next), 429 when refused.
    pub(crate) status: u16,
    /// The `Retry-After` sent with a 429, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after: Option<u64>,
}

/// The limiter shared by every request.
pub(crate) struct RateLimiter {
    rate: Option<Rate>,
    started: Instant,
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    log: Mutex<VecDeque<Decision>>,
}

impl RateLimiter {
    /// A limiter for `rate` (`None`: everything is admitted, and nothing is logged).
    pub(crate) fn new(rate: Option<Rate>) -> Self {
        RateLimiter {
            rate,
            started: Instant::now(),
            windows: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// The rate in force.
    pub(crate) fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Admits a request of `customer` to `path` now, or says after how many seconds to come back.
    pub(crate) fn admit(&self, customer: &str, path: &str) -> Result<(), u64> {
        self.admit_at(customer, path, Instant::now())
    }

    fn admit_at(&self, customer: &str, path: &str, now: Instant) -> Result<(), u64> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let outcome = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let window = windows.entry(customer.to_owned()).or_default();
            while window
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= rate.window)
            {
                window.pop_front();
            }
            if window.len() < rate.requests as usize {
                window.push_back(now);
                Ok(())
            } else {
                let oldest = window.front().copied().unwrap_or(now);
                let free_at = oldest + rate.window;
                let wait = free_at.saturating_duration_since(now);
                // Whole seconds, rounded up: coming back after them always finds room.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(secs.max(1))
            }
        };
        let decision = Decision {
            customer: customer.to_owned(),
            path: path.to_owned(),
            at_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis())
                .unwrap_or(u64::MAX),
            status: if outcome.is_ok() { 200 } else { 429 },
            retry_after: outcome.err(),
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() >= LOG_CAP {
            log.pop_front();
        }
        log.push_back(decision);
        outcome
    }

    /// The decisions logged, oldest first.
    pub(crate) fn log(&self) -> Vec<Decision> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_a_humantime_window() {
        assert_eq!(
            Rate::parse("5/60s", "--rate-limit").expect("parses"),
            Rate {
                requests: 5,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(
            Rate::parse("1/2m", "--rate-limit").expect("parses").window,
            Duration::from_secs(120)
        );
        for bad in ["5", "0/60s", "x/60s", "5/soon", "5/10ms"] {
            let error = Rate::parse(bad, "--rate-limit").expect_err(bad);
            assert!(format!("{error:#}").contains("--rate-limit"), "{error:#}");
        }
    }

    #[test]
    fn a_customer_past_the_rate_is_told_when_to_come_back_and_admitted_then() {
        let limiter = RateLimiter::new(Some(Rate {
            requests: 2,
            window: Duration::from_secs(10),
        }));
        let t0 = limiter.started;
        assert_eq!(limiter.admit_at("alice", "/a", t0), Ok(()));
        assert_eq!(
            limiter.admit_at("alice", "/a", t0 + Duration::from_millis(3500)),
            Ok(())
        );
        // Full: the oldest leaves the window at t0 + 10 s, 4.5 s from now, so 5 s.
        let at = t0 + Duration::from_millis(5500);
        assert_eq!(limiter.admit_at("alice", "/a", at), Err(5));
        // Another customer is not affected.
        assert_eq!(limiter.admit_at("bob", "/a", at), Ok(()));
        // Refused requests do not count: coming back after the Retry-After finds room.
        assert_eq!(
            limiter.admit_at("alice", "/a", at + Duration::from_millis(100)),
            Err(5)
        );
        assert_eq!(
            limiter.admit_at("alice", "/a", at + Duration::from_secs(5)),
            Ok(())
        );
        let log = limiter.log();
        assert_eq!(log.len(), 6);
        assert_eq!(log[2].status, 429);
        assert_eq!(log[2].retry_after, Some(5));
        assert_eq!(log[2].at_ms, 5500);
        assert_eq!(log[5].status, 200);
    }

    #[test]
    fn without_a_rate_everything_is_admitted_and_nothing_logged() {
        let limiter = RateLimiter::new(None);
        for _ in 0..100 {
            assert_eq!(limiter.admit("alice", "/a"), Ok(()));
        }
        assert!(limiter.log().is_empty());
    }
}
