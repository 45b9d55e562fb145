//! The statistics the report states (PERFORMANCE.md §7.4–§7.5): medians over rounds with a 95 %
//! percentile-bootstrap confidence interval, and the round-discarding rule.
//!
//! Rounds are few (5–20) and noisy (a VM's scheduler), so the median is the estimator and the
//! bootstrap makes no assumption about the shape of the noise. The resampling RNG is a seeded
//! splitmix64: the same inputs and seed always give the same interval, so a report can be
//! regenerated from its raw numbers.

use serde::{Deserialize, Serialize};

/// Resamples drawn by [`bootstrap_median`].
pub const RESAMPLES: usize = 10_000;

/// A median with its 95 % confidence interval, over `n` samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// The median (mean of the two middle values for an even count); None when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// The arithmetic mean; None when empty.
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    Some(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The 95 % percentile-bootstrap confidence interval of the median: [`RESAMPLES`] resamples with
/// replacement, the 2.5th and 97.5th percentiles of their medians. Deterministic for a `seed`.
/// None when `xs` is empty; one sample gives `lo == hi == median`.
pub fn bootstrap_median(xs: &[f64], seed: u64) -> Option<Estimate> {
    let median = median(xs)?;
    let n = xs.len();
    let mut rng = SplitMix64(seed);
    let mut resample = vec![0.0; n];
    let mut medians = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for slot in resample.iter_mut() {
            *slot = xs[rng.below(n)];
        }
        resample.sort_by(f64::total_cmp);
        // Never None: the resample has n >= 1 elements.
        medians.extend(median_of_sorted(&resample));
    }
    medians.sort_by(f64::total_cmp);
    Some(Estimate {
        median,
        lo: quantile(&medians, 0.025),
        hi: quantile(&medians, 0.975),
        n,
    })
}

/// Indices of the samples deviating from the median by more than `tolerance` (0.2 = 20 %) of
/// the median's magnitude; the rule that discards a round whose baseline moved (§7.5).
pub fn outliers_by_median(xs: &[f64], tolerance: f64) -> Vec<usize> {
    let Some(m) = median(xs) else {
        return Vec::new();
    };
    let limit = tolerance * m.abs();
    xs.iter()
        .enumerate()
        .filter(|(_, x)| (*x - m).abs() > limit)
        .map(|(i, _)| i)
        .collect()
}

/// Linear interpolation between the closest ranks (the "type 7" quantile); `sorted` non-empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let below = pos.floor() as usize;
    let above = pos.ceil() as usize;
    let frac = pos - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * frac
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to index a resample.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift: no modulo bias worth the name for small n).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn mean_known() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn bootstrap_empty_single_constant() {
        assert_eq!(bootstrap_median(&[], 1), None);
        let one = bootstrap_median(&[5.0], 1).unwrap();
        assert_eq!((one.median, one.lo, one.hi, one.n), (5.0, 5.0, 5.0, 1));
        let flat = bootstrap_median(&[2.5; 9], 7).unwrap();
        assert_eq!((flat.median, flat.lo, flat.hi, flat.n), (2.5, 2.5, 2.5, 9));
    }

    #[test]
    fn bootstrap_contains_median_and_is_deterministic() {
        let xs = [
            10.2, 9.8, 10.0, 10.5, 9.1, 11.7, 10.1, 9.9, 10.3, 30.0, 10.0,
        ];
        let a = bootstrap_median(&xs, 42).unwrap();
        assert_eq!(a.median, 10.1);
        assert_eq!(a.n, xs.len());
        assert!(a.lo <= a.median && a.median <= a.hi, "{a:?}");
        assert!(a.lo < a.hi, "spread data gives a real interval: {a:?}");
        // The interval of a median stays within the middle of the data: the 30.0 outlier
        // cannot drag it out.
        assert!(a.lo >= 9.8 && a.hi <= 10.5, "{a:?}");
        assert_eq!(bootstrap_median(&xs, 42), Some(a));
        // Another seed gives another (but close) interval: the seed is really used.
        let b = bootstrap_median(&xs, 43).unwrap();
        assert!(b.lo <= b.median && b.median <= b.hi);
    }

    #[test]
    fn bootstrap_two_values_spans_them() {
        // Resample medians of {1, 3} are 1, 2 or 3 with probabilities 1/4, 1/2, 1/4.
        let e = bootstrap_median(&[1.0, 3.0], 9).unwrap();
        assert_eq!((e.median, e.lo, e.hi), (2.0, 1.0, 3.0));
    }

    #[test]
    fn splitmix_known_vector() {
        // First output for seed 0 from the reference implementation.
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
        let mut r = SplitMix64(5);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }

    #[test]
    fn quantile_interpolates() {
        let s = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile(&s, 0.0), 0.0);
        assert_eq!(quantile(&s, 1.0), 40.0);
        assert_eq!(quantile(&s, 0.5), 20.0);
        assert_eq!(quantile(&s, 0.125), 5.0);
    }

    #[test]
    fn outliers() {
        let xs = [100.0, 105.0, 95.0, 130.0, 70.0, 120.0];
        // median 102.5, 20 % = 20.5: 130 (27.5 off) and 70 (32.5 off) are out, 120 (17.5) in.
        assert_eq!(outliers_by_median(&xs, 0.2), vec![3, 4]);
        assert!(outliers_by_median(&[], 0.2).is_empty());
        assert!(outliers_by_median(&[1.0, 1.0, 1.0], 0.0).is_empty());
    }
}
