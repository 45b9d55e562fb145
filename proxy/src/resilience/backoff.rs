//! Retry back-off: exponential with full jitter, as Envoy does it.
//!
//! The wait before retry `n` (1 = the first retry) is uniform in
//! [0, min(base * 2^(n-1), max)). Full jitter (rather than a jittered fixed step) spreads
//! the retries of many clients that failed together, so they do not hammer a recovering
//! backend in waves. With Envoy's defaults (base 25 ms, max 250 ms) the ceilings are 25, 50,
//! 100, 200, then 250 ms.

use std::time::Duration;

use rand::RngExt as _;

use super::config::RetryPolicy;

/// The back-off before retry `retry` (1-based; 0 is taken as 1). Randomness is passed in so
/// tests can seed it. Any `retry` is fine: the ceiling saturates at `policy.backoff_max`.
pub fn backoff(policy: &RetryPolicy, retry: u32, rng: &mut impl rand::Rng) -> Duration {
    let ceiling = ceiling(policy.backoff_base, policy.backoff_max, retry);
    // Nanosecond resolution; a ceiling beyond u64 nanoseconds (584 years) is clamped.
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..nanos))
}

/// min(base * 2^(retry-1), max), without overflow for any `retry`.
pub fn ceiling(base: Duration, max: Duration, retry: u32) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let doublings = retry.saturating_sub(1);
    // In u128 nanoseconds a product that overflows (or a shift past 127) is past any
    // representable max, hence the max.
    let Some(n) = 1u128
        .checked_shl(doublings)
        .and_then(|factor| base.as_nanos().checked_mul(factor))
    else {
        return max;
    };
    if n >= max.as_nanos() {
        return max;
    }
    // n < max, so it is a representable Duration.
    Duration::new(
        u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX),
        u32::try_from(n % NANOS_PER_SEC).unwrap_or(0),
    )
}
