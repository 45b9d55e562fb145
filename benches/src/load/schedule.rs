//! The open-loop schedule and the measured window, as pure arithmetic: request `k` is due at
//! `k / rate` after the start, the warm-up takes the first indices and the measured window the
//! rest. Deciding membership by index (not by comparing clock readings) keeps the count of
//! measured requests exact: `rate × duration`, whatever the target does.

use std::time::Duration;

use anyhow::{Context, bail};

/// Which indices of a constant-rate schedule exist and which of them are measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Requests per second over the whole run.
    pub(crate) rate: f64,
    /// The first measured index (indices below it are warm-up).
    pub(crate) first: u64,
    /// One past the last scheduled index.
    pub(crate) end: u64,
}

impl Plan {
    pub(crate) fn new(rate: f64, warmup: Duration, duration: Duration) -> Self {
        let first = slots(warmup, rate);
        let end = slots(warmup + duration, rate);
        Self { rate, first, end }
    }

    /// When request `k` is due, relative to the start of the schedule.
    pub(crate) fn offset(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    pub(crate) fn measured(&self, k: u64) -> bool {
        k >= self.first && k < self.end
    }

    /// How many measured indices remain in `k, k + step, k + 2·step, …` (a lane's share).
    pub(crate) fn measured_left(&self, k: u64, step: u64) -> u64 {
        let from = k.max(self.first_in_lane(k, step));
        if from >= self.end {
            return 0;
        }
        (self.end - from).div_ceil(step)
    }

    /// The first index `>= first` in the same residue class as `k` (modulo `step`).
    fn first_in_lane(&self, k: u64, step: u64) -> u64 {
        if k >= self.first {
            return k;
        }
        let behind = (self.first - k).div_ceil(step);
        k + behind * step
    }
}

/// How many indices `k` satisfy `k / rate < span`. The small epsilon absorbs float error, so
/// 0.3 s at 1,000 rps is 300 slots and not 301.
fn slots(span: Duration, rate: f64) -> u64 {
    let exact = span.as_secs_f64() * rate;
    (exact - 1e-6).ceil().max(0.0) as u64
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `250us`, `1.5s`. A bare number is refused: seconds and
/// milliseconds are too easy to mix up in a benchmark script.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("duration {text:?} needs a unit (us, ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: {number:?} is not a number"))?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("duration {text:?}: unknown unit {unit:?} (us, ms, s, m, h)"),
    };
    Duration::try_from_secs_f64(value * scale)
        .with_context(|| format!("duration {text:?} is out of range"))
}

/// The body length `GET <path>` must return from the upstream app: `/<n>` is `n` bytes, `/`
/// is 16; any other path is not checked.
pub(crate) fn expected_body_len(path: &str) -> Option<u64> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    match path.strip_prefix('/')? {
        "" => Some(16),
        digits => digits.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_counts_are_exact() {
        let p = Plan::new(1000.0, Duration::from_millis(300), Duration::from_secs(1));
        assert_eq!((p.first, p.end), (300, 1300));
        let p = Plan::new(333.0, Duration::ZERO, Duration::from_secs(3));
        assert_eq!((p.first, p.end), (0, 999));
        // A fractional slot still gets its request: 2.5 requests due in the first second.
        let p = Plan::new(2.5, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(p.end, 3);
        assert_eq!(p.offset(2), Duration::from_millis(800));
    }

    #[test]
    fn lanes_share_the_measured_indices() {
        let p = Plan::new(100.0, Duration::from_millis(50), Duration::from_millis(100));
        assert_eq!((p.first, p.end), (5, 15));
        let total: u64 = (0..4).map(|lane| p.measured_left(lane, 4)).sum();
        assert_eq!(total, 10);
        assert_eq!(p.measured_left(3, 4), 2); // 7 and 11
        assert_eq!(p.measured_left(13, 4), 1); // 13
        assert_eq!(p.measured_left(15, 4), 0);
        assert!(!p.measured(4) && p.measured(5) && p.measured(14) && !p.measured(15));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn body_lengths() {
        assert_eq!(expected_body_len("/"), Some(16));
        assert_eq!(expected_body_len("/1024"), Some(1024));
        assert_eq!(expected_body_len("/1024?x=1"), Some(1024));
        assert_eq!(expected_body_len("/echo"), None);
        assert_eq!(expected_body_len("relative"), None);
    }
}
