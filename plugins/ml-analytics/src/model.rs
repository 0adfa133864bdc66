//! The anomaly model: what the plugin learns about each (server, method, tool), online and in
//! constant memory per series, and the judgements it makes once warmed up.
//!
//! # Latency: an exponentially weighted log-normal baseline
//!
//! Tool latencies are positive and right-skewed (a search takes 80 ms, sometimes 300), so the
//! model works on `ln(latency)`, where they are roughly symmetric. It keeps an exponentially
//! weighted mean `mu` and variance `var` of `ln(ms)` (the running mean while it has fewer than
//! [`LATENCY_MEMORY`] calls, then a moving window of about that many, so a tool that gets
//! slower for good is relearned in a few dozen calls). After [`Thresholds::warmup_calls`]
//! successful calls, a call is anomalous when its latency exceeds all three of:
//! - `exp(mu + z·sd)`: far outside the learned distribution (`z` = 5 by default, and `sd` at
//!   least 0.25 so that a tool with very steady latencies does not alarm at +30%);
//! - `ratio · median`: many times the usual (20 by default), whatever the spread: real tools
//!   have heavier tails than a log-normal (a cache miss, a retry), and the tuning traces showed
//!   normal calls up to 14 times their median;
//! - `median + floor`: slower by a noticeable amount (250 ms by default), so that a 0.2 ms tool
//!   that once takes 3 ms (a scheduler hiccup) is not an anomaly anyone should look at.
//!
//! An anomalous latency is learned clipped to the threshold, so one outlier cannot drag the
//! baseline after it. Only successful calls are learned: errors are often fast and would make
//! the next normal call look slow.
//!
//! # Errors: a binomial test of the recent window against the lagged baseline
//!
//! The last [`Thresholds::error_window`] outcomes of a series are kept as bits. The baseline
//! failure rate `p` is learned from outcomes as they *leave* the window (so the burst being
//! judged is not part of its own baseline), starting from a prior of 2% worth 10 calls. When a
//! failure arrives and the window holds `k` failures, with `k` at least
//! [`Thresholds::error_min`], the probability of seeing `k` or more in the window at rate
//! `max(p, 1%)` is computed exactly (binomial tail); below [`Thresholds::error_p`] (1e-4) it is
//! a spike. One spike raises one anomaly: the series stays "in spike" until its window is back
//! to at most one failure.
//!
//! # Call rate: per-minute counts against the learned rate
//!
//! Calls of a series are counted per minute; the rate over the last 60 seconds is estimated from
//! this minute's and the previous minute's counts (the sliding-window approximation). The
//! learned rate is an exponentially weighted mean of calls per *active* minute. A burst is at
//! least [`Thresholds::burst_min_calls`] calls in 60 s (60: a call a second, sustained) and, once
//! three active minutes are learned, at least [`Thresholds::burst_factor`] (10) times the learned
//! rate: an agent looping on one tool. One burst raises one anomaly; it ends when the rate falls
//! under half the threshold.
//!
//! # Unanswered requests
//!
//! A request is overdue after `max(unanswered_after, 10 × the latency threshold)`; an overdue
//! request raises one anomaly while the session runs, and requests still unanswered when the
//! session ends raise one per series.
//!
//! # Why this model
//!
//! It needs no training data, judges from the first session after a short warm-up, costs a few
//! floating-point operations per call and about a hundred bytes per series, adapts to drift,
//! and each threshold is a number a user can read and change (`[plugins.ml-analytics]` in
//! config.toml). Heavier models (seasonal decomposition, isolation forests) need history this
//! plugin does not have for a new tool and cannot explain their verdicts as plainly.

use serde::{Deserialize, Serialize};

/// How many calls the latency baseline remembers once warmed up (its weight is 1/this).
pub(crate) const LATENCY_MEMORY: f64 = 50.0;

/// The smallest log-standard-deviation the latency test uses.
const MIN_LOG_SD: f64 = 0.25;

/// The error baseline before anything is learned, and how many calls that prior is worth.
const PRIOR_FAILURE_RATE: f64 = 0.02;
const PRIOR_CALLS: f64 = 10.0;

/// The smallest error baseline the test uses.
const MIN_FAILURE_RATE: f64 = 0.01;

/// The weight of the slowest learning of the error baseline.
const ERROR_MEMORY: f64 = 50.0;

/// How quickly the learned call rate follows the active minutes.
const RATE_MEMORY: f64 = 10.0;

/// The knobs of the model (see the module documentation); from `[plugins.ml-analytics]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thresholds {
    /// Successful calls before latency is judged; learned outcomes before errors are.
    pub(crate) warmup_calls: u64,
    pub(crate) latency_z: f64,
    pub(crate) latency_ratio: f64,
    pub(crate) latency_floor_ms: f64,
    /// Outcomes in the error window (at most 64).
    pub(crate) error_window: u32,
    pub(crate) error_min: u32,
    pub(crate) error_p: f64,
    pub(crate) burst_min_calls: f64,
    pub(crate) burst_factor: f64,
    pub(crate) unanswered_after_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warmup_calls: 20,
            latency_z: 5.0,
            latency_ratio: 20.0,
            latency_floor_ms: 250.0,
            error_window: 20,
            error_min: 5,
            error_p: 1e-4,
            burst_min_calls: 60.0,
            burst_factor: 10.0,
            unanswered_after_ms: 60_000.0,
        }
    }
}

/// A judgement: what was seen and the range that would have been normal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Judgement {
    pub(crate) observed: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// What the model has learned about one series; kept across sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct SeriesModel {
    /// Successful latencies learned.
    pub(crate) n: u64,
    /// Weighted mean of ln(latency in ms).
    pub(crate) mu: f64,
    /// Weighted variance of ln(latency in ms).
    pub(crate) var: f64,
    /// Outcomes learned into the error baseline.
    pub(crate) outcomes: u64,
    /// The baseline failure rate.
    pub(crate) failure_rate: f64,
    /// Active minutes learned.
    pub(crate) minutes: u64,
    /// Calls per active minute.
    pub(crate) rate: f64,
    /// When the series was first and last seen (ms since the epoch).
    pub(crate) first_seen_ms: i64,
    pub(crate) last_seen_ms: i64,
}

impl Default for SeriesModel {
    fn default() -> Self {
        SeriesModel {
            n: 0,
            mu: 0.0,
            var: 0.0,
            outcomes: 0,
            failure_rate: PRIOR_FAILURE_RATE,
            minutes: 0,
            rate: 0.0,
            first_seen_ms: 0,
            last_seen_ms: 0,
        }
    }
}

/// What one session keeps about a series beyond the model: the error window and the minute
/// counters. Not persisted: a new session starts with an empty window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live {
    window: u64,
    window_len: u32,
    in_spike: bool,
    minute: i64,
    this_minute: u32,
    last_minute: u32,
    in_burst: bool,
}

impl Live {
    /// Whether the session saw this series (its window or minute counters hold something).
    pub(crate) fn is_active(&self) -> bool {
        self.window_len > 0 || self.this_minute > 0
    }
}

impl SeriesModel {
    fn log_sd(&self) -> f64 {
        self.var.max(0.0).sqrt().max(MIN_LOG_SD)
    }

    /// The latency above which a successful call is anomalous, in ms; `None` while warming up.
    pub(crate) fn latency_threshold_ms(&self, th: &Thresholds) -> Option<f64> {
        if self.n < th.warmup_calls.max(1) {
            return None;
        }
        let median = self.mu.exp();
        let far = (self.mu + th.latency_z * self.log_sd()).exp();
        Some(
            far.max(th.latency_ratio * median)
                .max(median + th.latency_floor_ms),
        )
    }

    /// The usual range of latencies (ms) for reports: `exp(mu ± z·sd)`.
    fn latency_range_ms(&self, th: &Thresholds) -> (f64, f64) {
        let sd = self.log_sd();
        (
            (self.mu - th.latency_z * sd).exp(),
            self.latency_threshold_ms(th)
                .unwrap_or_else(|| (self.mu + th.latency_z * sd).exp()),
        )
    }

    /// Judges, then learns, the latency of one successful call.
    pub(crate) fn observe_latency(&mut self, ms: f64, th: &Thresholds) -> Option<Judgement> {
        let ms = if ms.is_finite() { ms.max(0.001) } else { 0.001 };
        let verdict = self.latency_threshold_ms(th).and_then(|high| {
            (ms > high).then(|| {
                let (low, high) = self.latency_range_ms(th);
                Judgement {
                    observed: ms,
                    low,
                    high,
                }
            })
        });
        let learned = match verdict {
            Some(j) => j.high.ln(),
            None => ms.ln(),
        };
        self.n += 1;
        let alpha = (1.0 / self.n as f64).max(1.0 / LATENCY_MEMORY);
        let d = learned - self.mu;
        self.mu += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        verdict
    }

    fn learn_outcome(&mut self, failure: bool) {
        self.outcomes += 1;
        let alpha = (1.0 / (self.outcomes as f64 + PRIOR_CALLS)).max(1.0 / ERROR_MEMORY);
        let x = if failure { 1.0 } else { 0.0 };
        self.failure_rate += alpha * (x - self.failure_rate);
    }

    /// Judges one answered call's outcome against the error baseline (see the module doc).
    pub(crate) fn observe_outcome(
        &mut self,
        live: &mut Live,
        failure: bool,
        th: &Thresholds,
    ) -> Option<Judgement> {
        let size = th.error_window.clamp(1, 64);
        let mask = if size == 64 {
            u64::MAX
        } else {
            (1u64 << size) - 1
        };
        if live.window_len == size {
            let leaving = (live.window >> (size - 1)) & 1 == 1;
            self.learn_outcome(leaving);
        } else {
            live.window_len += 1;
        }
        live.window = ((live.window << 1) | u64::from(failure)) & mask;
        let k = live.window.count_ones();
        if live.in_spike {
            if k <= 1 {
                live.in_spike = false;
            }
            return None;
        }
        if !failure || k < th.error_min || self.outcomes < th.warmup_calls {
            return None;
        }
        let n = live.window_len;
        let p = self.failure_rate.max(MIN_FAILURE_RATE);
        if binomial_tail(n, k, p) >= th.error_p {
            return None;
        }
        live.in_spike = true;
        // The most failures in this window that would not have been a spike.
        let normal = (0..=n)
            .find(|&j| binomial_tail(n, j, p) < th.error_p)
            .map_or(n, |j| j.saturating_sub(1).max(th.error_min - 1));
        Some(Judgement {
            observed: f64::from(k) / f64::from(n),
            low: 0.0,
            high: f64::from(normal) / f64::from(n),
        })
    }

    /// Folds a session's window into the baseline (at the end of a session: the next one
    /// starts with an empty window).
    pub(crate) fn fold_window(&mut self, live: &mut Live) {
        for i in (0..live.window_len).rev() {
            self.learn_outcome((live.window >> i) & 1 == 1);
        }
        live.window = 0;
        live.window_len = 0;
    }

    /// Counts one call starting at `t_ms` and judges the rate of the last minute.
    pub(crate) fn observe_call(
        &mut self,
        live: &mut Live,
        t_ms: i64,
        th: &Thresholds,
    ) -> Option<Judgement> {
        let minute = t_ms.div_euclid(60_000);
        if live.minute == 0 && live.this_minute == 0 {
            live.minute = minute;
        }
        if minute > live.minute {
            self.learn_minute(live.this_minute, th);
            live.last_minute = if minute == live.minute + 1 {
                live.this_minute
            } else {
                0
            };
            live.this_minute = 0;
            live.minute = minute;
        }
        live.this_minute = live.this_minute.saturating_add(1);
        let elapsed = t_ms.rem_euclid(60_000) as f64 / 60_000.0;
        let window = f64::from(live.this_minute) + f64::from(live.last_minute) * (1.0 - elapsed);
        let threshold = self.burst_threshold(th);
        if live.in_burst {
            if window < threshold / 2.0 {
                live.in_burst = false;
            }
            return None;
        }
        if window < threshold {
            return None;
        }
        live.in_burst = true;
        Some(Judgement {
            observed: window,
            low: 0.0,
            high: threshold,
        })
    }

    fn burst_threshold(&self, th: &Thresholds) -> f64 {
        if self.minutes >= 3 {
            th.burst_min_calls.max(th.burst_factor * self.rate)
        } else {
            th.burst_min_calls
        }
    }

    fn learn_minute(&mut self, calls: u32, th: &Thresholds) {
        if calls == 0 {
            return;
        }
        self.minutes += 1;
        // A burst minute is learned clipped to the threshold, like a slow call.
        let calls = f64::from(calls).min(self.burst_threshold(th));
        let alpha = (1.0 / self.minutes as f64).max(1.0 / RATE_MEMORY);
        self.rate += alpha * (calls - self.rate);
    }

    /// Learns the minute in progress (at the end of a session).
    pub(crate) fn fold_minute(&mut self, live: &mut Live, th: &Thresholds) {
        self.learn_minute(live.this_minute, th);
        live.this_minute = 0;
    }

    /// How long a request of this series may go unanswered before it is overdue (ms).
    pub(crate) fn overdue_after_ms(&self, th: &Thresholds) -> f64 {
        let learned = self.latency_threshold_ms(th).map_or(0.0, |t| 10.0 * t);
        th.unanswered_after_ms.max(learned)
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p), exactly (n ≤ 64, so summing the terms is cheap).
pub(crate) fn binomial_tail(n: u32, k: u32, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let q = 1.0 - p;
    // The probability of exactly i, from i = 0 upwards.
    let mut term = q.powi(n as i32);
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= f64::from(n - i) / f64::from(i + 1) * (p / q);
    }
    (1.0 - below).max(0.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic generator (xorshift64*) for the simulations.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// A standard normal value (Box–Muller).
        pub(crate) fn normal(&mut self) -> f64 {
            let u = self.next_f64().max(1e-12);
            let v = self.next_f64();
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    #[test]
    fn binomial_tails_are_exact() {
        assert!((binomial_tail(20, 1, 0.5) - (1.0 - 0.5f64.powi(20))).abs() < 1e-12);
        assert!((binomial_tail(4, 2, 0.5) - 11.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_tail(5, 6, 0.3), 0.0);
        assert_eq!(binomial_tail(5, 0, 0.3), 1.0);
        // 5 failures in 20 at 2%: about 3e-5.
        let t = binomial_tail(20, 5, 0.02);
        assert!(t > 1e-5 && t < 1e-4, "{t}");
    }

    #[test]
    fn a_call_fifty_times_slower_after_warm_up_is_one_anomaly() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        let mut rng = Rng(7);
        for _ in 0..th.warmup_calls {
            let ms = 20.0 * (0.1 * rng.normal()).exp();
            assert_eq!(model.observe_latency(ms, &th), None);
        }
        let judged = model.observe_latency(1000.0, &th).expect("an anomaly");
        assert_eq!(judged.observed, 1000.0);
        assert!(judged.high < 1000.0 && judged.high >= 200.0, "{judged:?}");
        // The outlier was learned clipped: the next normal call is normal.
        assert_eq!(model.observe_latency(21.0, &th), None);
        assert!(model.mu.exp() < 30.0, "{}", model.mu.exp());
    }

    #[test]
    fn nothing_is_judged_during_warm_up() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        for _ in 0..th.warmup_calls - 1 {
            model.observe_latency(10.0, &th);
        }
        assert_eq!(model.latency_threshold_ms(&th), None);
        assert_eq!(model.observe_latency(100_000.0, &th), None);
    }

    #[test]
    fn fast_tools_need_a_noticeable_slowdown() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        for _ in 0..50 {
            model.observe_latency(0.2, &th);
        }
        // 15x slower, but 3 ms: not worth anyone's attention.
        assert_eq!(model.observe_latency(3.0, &th), None);
        assert!(model.observe_latency(400.0, &th).is_some());
    }

    #[test]
    fn a_burst_of_errors_is_one_anomaly_and_a_steady_rate_is_none() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        let mut live = Live::default();
        for _ in 0..40 {
            assert_eq!(model.observe_outcome(&mut live, false, &th), None);
        }
        let verdicts: Vec<Judgement> = (0..10)
            .filter_map(|_| model.observe_outcome(&mut live, true, &th))
            .collect();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert!(verdicts[0].observed > verdicts[0].high, "{verdicts:?}");
        // Recovery, then a second burst is a second anomaly.
        for _ in 0..30 {
            model.observe_outcome(&mut live, false, &th);
        }
        let again = (0..10)
            .filter(|_| model.observe_outcome(&mut live, true, &th).is_some())
            .count();
        assert_eq!(again, 1);
    }

    #[test]
    fn a_tool_that_fails_often_learns_its_rate() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        let mut live = Live::default();
        let mut rng = Rng(99);
        let mut alarms = 0;
        for _ in 0..2000 {
            let failure = rng.next_f64() < 0.15;
            alarms += usize::from(model.observe_outcome(&mut live, failure, &th).is_some());
        }
        assert!(alarms <= 1, "{alarms} alarms for a steady 15% failure rate");
        assert!(
            (model.failure_rate - 0.15).abs() < 0.08,
            "{}",
            model.failure_rate
        );
    }

    #[test]
    fn a_loop_on_one_tool_is_a_burst_and_a_busy_steady_tool_is_not() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        let mut live = Live::default();
        let start = 1_800_000_000_000i64;
        // Ten minutes at a call every 5 seconds.
        let mut t = start;
        for _ in 0..120 {
            assert_eq!(model.observe_call(&mut live, t, &th), None);
            t += 5_000;
        }
        // Then a loop: 5 calls a second for 30 seconds.
        let bursts = (0..150)
            .filter(|i| model.observe_call(&mut live, t + i * 200, &th).is_some())
            .count();
        assert_eq!(bursts, 1);
    }

    #[test]
    fn overdue_requests_wait_at_least_a_minute() {
        let th = Thresholds::default();
        let mut model = SeriesModel::default();
        assert_eq!(model.overdue_after_ms(&th), 60_000.0);
        for _ in 0..30 {
            model.observe_latency(20_000.0, &th);
        }
        assert!(model.overdue_after_ms(&th) > 60_000.0);
    }
}
