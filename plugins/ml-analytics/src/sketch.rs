//! Latency distributions: a DDSketch (sketches-ddsketch) of microseconds, with its stated
//! error, and its stored form.
//!
//! Why DDSketch: its quantiles have a *relative* error bound (here 1%: a reported p99 of 200 ms
//! is the latency of a call within 198..202 ms of the true p99's), whatever the distribution;
//! sketches merge exactly (the merge of two minute sketches is the sketch of both minutes), so
//! time buckets roll up into hours and days and two sessions' sketches add up; and memory is
//! bounded (at most 2048 bins, 8 bytes each; one tool's calls from 1 µs to an hour need about
//! 1,100 and in practice a few hundred). HdrHistogram has an absolute-precision layout whose
//! counts array for 1 µs..1 h at 2 significant digits is about 25 KiB per histogram, too much
//! for one per tool per minute.
//!
//! Stored form: the sketch's standard binary encoding (DataDog's, shared by the Java, Go and
//! Python implementations: `to_java_bytes`), in base64 inside the JSON bucket files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sketches_ddsketch::{Config, DDSketch};

/// The relative accuracy of every quantile the plugin reports (1%).
pub(crate) const RELATIVE_ERROR: f64 = 0.01;

/// The largest stored sketch accepted (bytes of its encoding), so a damaged file cannot make a
/// reader allocate without bound.
const MAX_ENCODED: usize = 64 * 1024;

/// The configuration every sketch uses. It must equal the one a decoded sketch gets (the
/// crate's defaults: alpha 0.01, 2048 bins, minimum 1e-9), or merges would refuse.
fn config() -> Config {
    Config::defaults()
}

/// A distribution of latencies in microseconds.
#[derive(Clone)]
pub(crate) struct Latency(DDSketch);

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.count())
            .field("p50_ms", &self.quantile_ms(0.5))
            .finish()
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency(DDSketch::new(config()))
    }
}

impl Latency {
    /// Adds one call's latency.
    pub(crate) fn add_us(&mut self, micros: u64) {
        self.0.add(micros as f64);
    }

    /// Adds everything `other` holds.
    pub(crate) fn merge(&mut self, other: &Latency) {
        // Both sides use `config()`, so the crate's only refusal (different configurations)
        // cannot happen; a refusal would leave `self` unchanged.
        let _ = self.0.merge(&other.0);
    }

    /// How many latencies it holds.
    pub(crate) fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let value = self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()?;
        // A bin's representative value can lie past the exact extremes the sketch keeps; a
        // p99 above the maximum would only confuse.
        let (min, max) = (self.0.min()?, self.0.max()?);
        Some(value.clamp(min, max) / 1000.0)
    }

    /// The mean in milliseconds, `None` when empty.
    pub(crate) fn mean_ms(&self) -> Option<f64> {
        let n = self.count();
        self.0
            .sum()
            .filter(|_| n > 0)
            .map(|s| s / n as f64 / 1000.0)
    }

    /// The largest latency in milliseconds (exact), `None` when empty.
    pub(crate) fn max_ms(&self) -> Option<f64> {
        self.0.max().map(|us| us / 1000.0)
    }

    /// The stored form: base64 of the standard encoding (empty for an empty sketch).
    pub(crate) fn encode(&self) -> String {
        if self.count() == 0 {
            return String::new();
        }
        STANDARD.encode(self.0.to_java_bytes())
    }

    /// Reads the stored form.
    pub(crate) fn decode(text: &str) -> Result<Latency, String> {
        if text.is_empty() {
            return Ok(Latency::default());
        }
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| format!("a latency sketch is not base64: {e}"))?;
        if bytes.len() > MAX_ENCODED {
            return Err(format!(
                "a latency sketch is oversized ({} bytes)",
                bytes.len()
            ));
        }
        // The decoder indexes bins with the numbers it reads; contain whatever a damaged file
        // makes it do.
        let decoded = std::panic::catch_unwind(|| DDSketch::from_java_bytes(&bytes))
            .map_err(|_| "a latency sketch is damaged".to_owned())?
            .map_err(|e| format!("a latency sketch is damaged: {e}"))?;
        let mut sketch = Latency::default();
        sketch
            .0
            .merge(&decoded)
            .map_err(|_| "a latency sketch has another accuracy".to_owned())?;
        Ok(sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_stated_relative_error() {
        let mut sketch = Latency::default();
        // 1..=10_000 ms, in microseconds.
        for ms in 1..=10_000u64 {
            sketch.add_us(ms * 1000);
        }
        for (q, exact) in [(0.5, 5000.0), (0.95, 9500.0), (0.99, 9900.0)] {
            let got = sketch.quantile_ms(q).expect("not empty");
            let error = (got - exact).abs() / exact;
            assert!(
                error <= RELATIVE_ERROR + 1e-3,
                "q{q}: {got} vs {exact} ({error})"
            );
        }
        assert_eq!(sketch.max_ms(), Some(10_000.0));
        assert!((sketch.mean_ms().expect("mean") - 5000.5).abs() < 1e-6);
    }

    #[test]
    fn the_stored_form_round_trips_and_merges() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for us in [120u64, 450, 900, 20_000] {
            a.add_us(us);
        }
        for us in [1u64, 0, 3_600_000_000] {
            b.add_us(us);
        }
        let back = Latency::decode(&a.encode()).expect("decodes");
        assert_eq!(back.count(), 4);
        assert_eq!(back.max_ms(), a.max_ms());
        assert_eq!(back.quantile_ms(0.5), a.quantile_ms(0.5));
        let mut merged = back;
        merged.merge(&Latency::decode(&b.encode()).expect("decodes"));
        assert_eq!(merged.count(), 7);
        assert_eq!(merged.max_ms(), Some(3_600_000.0));
        assert_eq!(Latency::decode("").expect("empty").count(), 0);
        assert_eq!(Latency::default().encode(), "");
    }

    #[test]
    fn damaged_sketches_are_refused_with_a_reason() {
        assert!(Latency::decode("not base64!").is_err());
        assert!(Latency::decode(&STANDARD.encode([0xffu8; 7])).is_err());
        let huge = STANDARD.encode(vec![0u8; MAX_ENCODED + 1]);
        assert!(Latency::decode(&huge)
            .expect_err("oversized")
            .contains("oversized"));
    }
}
