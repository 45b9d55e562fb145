//! Slow start: a new endpoint's weight ramps up over the warmup window (Envoy's
//! `slow_start_config`, Istio's `warmup`).
//!
//! factor(t) = max(minimum_percent / 100, (max(t, 1s) / duration) ^ (1 / aggression)) while
//! t < duration, else 1; t is the time since the cluster first listed the endpoint. The 1 s
//! floor on t is Envoy's: with `minimum_percent` 0 it keeps a brand-new endpoint's weight
//! above zero (it is picked, rarely, instead of never).
//!
//! Every endpoint is "new" when the proxy starts, so all ramp together and their relative
//! weights do not change; the ramp matters for endpoints added later (scale-up), as in Envoy.
//! An endpoint returning from an outlier ejection does not ramp again.

use std::time::Duration;

use tokio::time::Instant;

use super::config::WarmupConfig;

/// Envoy's floor on the time since the endpoint joined.
const MIN_ELAPSED: Duration = Duration::from_secs(1);

/// The weight multiplier, in (0, 1], of an endpoint first seen at `first_seen`.
pub fn warmup_factor(cfg: &WarmupConfig, first_seen: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(first_seen);
    if elapsed >= cfg.duration {
        return 1.0;
    }
    let t = elapsed.max(MIN_ELAPSED).as_secs_f64() / cfg.duration.as_secs_f64();
    let ramp = t.powf(1.0 / cfg.aggression);
    ramp.max(cfg.minimum_percent / 100.0).min(1.0)
}

/// The factor for an optional config: 1 when there is no warmup. Cheap once an endpoint is
/// past its window (a comparison, no `powf`).
pub(super) fn factor(cfg: Option<&WarmupConfig>, first_seen: Instant, now: Instant) -> f64 {
    match cfg {
        Some(cfg) => warmup_factor(cfg, first_seen, now),
        None => 1.0,
    }
}
