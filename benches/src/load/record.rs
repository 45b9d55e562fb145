//! What a run measured: two latency histograms (from the corrected start and from the actual
//! send), the counters of the report, a few distinct error messages, and how late the
//! generator's own timer fired.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

use super::Latency;

/// Microseconds: 1 µs .. 60 s at 3 significant digits (wrk2's histogram).
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
const SIGFIGS: u8 = 3;
/// The first few distinct error messages are kept; the count covers all of them.
const MAX_SAMPLES: usize = 5;
/// tokio's timer granularity: a request sent later than this after its due time was delayed by
/// the generator itself (short of CPU), and only this much of the delay is forgiven.
pub(crate) const LAG_NOTICE: Duration = Duration::from_millis(1);

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIGS)
        .context("creating the latency histogram (1 us..60 s, 3 digits)")
}

/// The numbers of one run (only requests of the measured window reach it).
#[derive(Debug)]
pub(crate) struct Recorder {
    /// From the corrected start: the intended time when the target held the generator back.
    pub(crate) latency: Histogram<u64>,
    /// From the actual send ("service time"): what an uncorrected generator would report.
    pub(crate) service: Histogram<u64>,
    /// Every ok answer of a measured request, and those of them that came after the window.
    pub(crate) ok: u64,
    pub(crate) ok_after_window: u64,
    pub(crate) errors: u64,
    /// Requests the generator itself could not make (out of file descriptors): not the
    /// target's fault, so not in `errors`.
    pub(crate) generator_errors: u64,
    pub(crate) samples: Vec<String>,
    pub(crate) connections: u64,
    /// Requests whose timer fired more than [`LAG_NOTICE`] late, and the worst lateness.
    pub(crate) lagged: u64,
    pub(crate) max_lag: Duration,
}

impl Recorder {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: histogram()?,
            service: histogram()?,
            ok: 0,
            ok_after_window: 0,
            errors: 0,
            generator_errors: 0,
            samples: Vec::new(),
            connections: 0,
            lagged: 0,
            max_lag: Duration::ZERO,
        })
    }

    /// An ok answer; `in_window`: it arrived before the measured window ended.
    pub(crate) fn ok(&mut self, latency: Duration, service: Duration, in_window: bool) {
        self.ok += 1;
        if !in_window {
            self.ok_after_window += 1;
        }
        self.latency.saturating_record(micros(latency));
        self.service.saturating_record(micros(service));
    }

    pub(crate) fn error(&mut self, message: &str) {
        self.errors += 1;
        self.sample(message);
    }

    pub(crate) fn generator_error(&mut self, message: &str) {
        self.generator_errors += 1;
        self.sample(&format!("generator: {message}"));
    }

    fn sample(&mut self, message: &str) {
        if self.samples.len() < MAX_SAMPLES && !self.samples.iter().any(|s| s == message) {
            self.samples.push(message.to_owned());
        }
    }

    /// `n` requests failed for one reason (the scheduled ones never sent before the deadline).
    pub(crate) fn errors(&mut self, n: u64, message: &str) {
        if n > 0 {
            self.error(message);
            self.errors += n - 1;
        }
    }

    pub(crate) fn lag(&mut self, lag: Duration) {
        if lag > LAG_NOTICE {
            self.lagged += 1;
        }
        self.max_lag = self.max_lag.max(lag);
    }
}

/// The recorder shared by every lane and request future of a run. They all run on one thread
/// (or at least never for long at once), so the lock is never contended in practice; a mutex
/// rather than a `RefCell` keeps `run`'s future `Send` for callers that spawn it.
#[derive(Debug)]
pub(crate) struct Shared(Mutex<Recorder>);

impl Shared {
    pub(crate) fn new(r: Recorder) -> Self {
        Self(Mutex::new(r))
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Recorder) -> T) -> T {
        // A panic elsewhere cannot leave the counters half-updated in a way that matters.
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    pub(crate) fn into_inner(self) -> Recorder {
        self.0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .max(LOWEST_US)
}

/// The report's percentiles; all zero for an empty histogram.
pub(crate) fn summarize(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let at = |q: f64| h.value_at_quantile(q) as f64;
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: h.max() as f64,
        mean: h.mean(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut r = Recorder::new().unwrap();
        for us in 1..=1000u64 {
            r.ok(
                Duration::from_micros(us),
                Duration::from_micros(1),
                us <= 990,
            );
        }
        let l = summarize(&r.latency);
        assert!((l.p50 - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
        assert!((l.mean - 500.5).abs() <= 1.0, "{l:?}");
        assert_eq!(summarize(&r.service).p99, 1.0);
        assert_eq!((r.ok, r.ok_after_window), (1000, 10));
        assert_eq!(summarize(&histogram().unwrap()).p50, 0.0);
    }

    #[test]
    fn huge_and_tiny_values_are_clamped_not_lost() {
        let mut r = Recorder::new().unwrap();
        r.ok(Duration::from_secs(3600), Duration::ZERO, true);
        assert_eq!(r.latency.len(), 1);
        assert!(r.latency.max() >= HIGHEST_US);
        assert_eq!(r.service.min(), 1);
    }

    #[test]
    fn error_samples_are_distinct_and_few() {
        let mut r = Recorder::new().unwrap();
        for i in 0..20 {
            r.error(&format!("e{}", i % 7));
        }
        r.errors(3, "never sent");
        r.errors(0, "nothing");
        r.generator_error("too many open files");
        assert_eq!((r.errors, r.generator_errors), (23, 1));
        assert_eq!(r.samples, ["e0", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn lag_counts_only_beyond_the_timer_granularity() {
        let mut r = Recorder::new().unwrap();
        r.lag(Duration::from_micros(900));
        r.lag(Duration::from_millis(1));
        r.lag(Duration::from_micros(1500));
        r.lag(Duration::from_millis(5));
        assert_eq!((r.lagged, r.max_lag), (2, Duration::from_millis(5)));
    }
}
