//! Passive health checking (outlier detection) with Envoy's semantics.
//!
//! **Counting.** Each attempt's result is reported once ([`Outcome`]). Per endpoint:
//! - a 5xx response increments `consecutive_5xx`; a 502/503/504 also increments
//!   `consecutive_gateway`, while any other 5xx resets it; a non-5xx response resets both;
//! - a local-origin failure (connect failure, reset, timeout) counts as a gateway error (both
//!   counters) unless `split_external_local_origin_errors`; then it increments
//!   `consecutive_local_origin` only, and any upstream response (or an established opaque
//!   TCP connection) resets that counter.
//!
//! A counter reaching its threshold (0 = check off) is a *detection*: the counter resets
//! (whether or not the ejection is allowed, as in Envoy, so a further run of failures is
//! needed to detect again) and the endpoint is ejected unless that would exceed
//! `max_ejection_percent` of the cluster; one endpoint may always be ejected. Ejection
//! decisions of a cluster are serialised by one cluster mutex, taken only on detection.
//!
//! **Ejection time.** `base_ejection_time * n`, capped at `max(base_ejection_time, 300s)`,
//! where n is the endpoint's ejection multiplier after the increment.
//!
//! **Return and decay (where Weft differs from Envoy's timer, on purpose).** Envoy un-ejects
//! on its `interval` timer, so an endpoint returns at the first sweep after its time is up;
//! Weft needs no timer: an endpoint is ejected while `now < until`, checked at pick time, so
//! it returns exactly when its time is up. Envoy decrements the multiplier on each interval
//! in which the endpoint was not ejected; Weft applies the same decay lazily at the next
//! ejection: n = n - floor(time since the last ejection ended / interval), then n + 1.
//! Reports about an ejected endpoint (requests already in flight, panic mode) still update
//! its counters, but cannot eject it again while it is out.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

use super::config::OutlierConfig;
use super::endpoint::EndpointState;

/// How one attempt to an endpoint ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status (for gRPC: the HTTP status; a grpc-status in a
    /// 200 response is a success here, as in Envoy).
    Response(StatusCode),
    /// An opaque TCP connection (or tunnel) to the endpoint was established: a success for a
    /// protocol without statuses.
    Connected,
    /// The connection (or the mesh tunnel) could not be established.
    ConnectFailure,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// No response within the (per-try) timeout.
    Timeout,
}

impl Outcome {
    /// A failure of the path to the endpoint rather than an answer from it.
    pub fn is_local_origin(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::Reset | Self::Timeout)
    }
}

/// Which check detected an outlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocalOrigin,
}

/// A detection, reported back so the integrator can log and count it (Envoy's
/// `ejections_detected_*` / `ejections_enforced_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub reason: EjectReason,
    /// `Some(how long)` when the endpoint was ejected; `None` when the ejection was refused
    /// by `max_ejection_percent` or the endpoint was already ejected.
    pub ejected_for: Option<Duration>,
}

/// Updates `ep`'s counters for `outcome`; the reasons (at most two: one report can complete
/// both a 5xx and a gateway run) whose threshold was just reached.
pub(super) fn count(ep: &EndpointState, cfg: &OutlierConfig, outcome: Outcome) -> Detected {
    let mut detected = Detected::default();
    let split = cfg.split_external_local_origin_errors;
    match outcome {
        Outcome::Response(status) => {
            if split {
                reset(&ep.consecutive_local_origin);
            }
            if status.is_server_error() {
                let gateway = matches!(status.as_u16(), 502..=504);
                count_5xx(ep, cfg, gateway, &mut detected);
            } else {
                reset(&ep.consecutive_5xx);
                reset(&ep.consecutive_gateway);
            }
        }
        Outcome::Connected => {
            reset(&ep.consecutive_local_origin);
            if !split {
                reset(&ep.consecutive_5xx);
                reset(&ep.consecutive_gateway);
            }
        }
        Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => {
            if split {
                if hit(&ep.consecutive_local_origin, cfg.consecutive_local_origin) {
                    detected.push(EjectReason::ConsecutiveLocalOrigin);
                }
            } else {
                // Envoy maps these to 503/504 when not split: a gateway error.
                count_5xx(ep, cfg, true, &mut detected);
            }
        }
    }
    detected
}

fn count_5xx(ep: &EndpointState, cfg: &OutlierConfig, gateway: bool, detected: &mut Detected) {
    if gateway {
        if hit(&ep.consecutive_gateway, cfg.consecutive_gateway) {
            detected.push(EjectReason::ConsecutiveGateway);
        }
    } else {
        reset(&ep.consecutive_gateway);
    }
    if hit(&ep.consecutive_5xx, cfg.consecutive_5xx) {
        detected.push(EjectReason::Consecutive5xx);
    }
}

/// Increments `counter`; true (and the counter restarts) when it reaches a non-zero
/// `threshold`.
///
/// Envoy resets the counter on detection, ejected or not: the next detection needs a new run
/// of `threshold` failures. Of several concurrent failures past the threshold, only the one
/// whose increment is still the counter's value when it swaps in 0 detects; `>=` rather than
/// `==` so a counter already past a threshold that a config push lowered still detects.
fn hit(counter: &AtomicU32, threshold: u32) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    threshold != 0
        && n >= threshold
        && counter
            .compare_exchange(n, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

fn reset(counter: &AtomicU32) {
    // Load first: on the success path (almost every report) this avoids writing the cache
    // line the other cores read.
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// Up to two detections from one report, without allocating.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Detected([Option<EjectReason>; 2]);

impl Detected {
    fn push(&mut self, reason: EjectReason) {
        if let Some(slot) = self.0.iter_mut().find(|s| s.is_none()) {
            *slot = Some(reason);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = EjectReason> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// Cluster-wide ejection bookkeeping, shared by every [`Balancer`](super::Balancer) of the
/// cluster across config snapshots.
#[derive(Debug)]
pub(super) struct EjectionGuard {
    /// Serialises ejection decisions so two endpoints detected at once cannot both pass the
    /// `max_ejection_percent` check.
    lock: Mutex<()>,
}

impl EjectionGuard {
    pub(super) fn new() -> Self {
        Self {
            lock: Mutex::new(()),
        }
    }

    /// Ejects `members[idx]` at `now` if it is not ejected and the cluster's limit allows;
    /// returns the ejection's length.
    pub(super) fn try_eject(
        &self,
        cfg: &OutlierConfig,
        members: &[Arc<EndpointState>],
        idx: usize,
        now: Instant,
    ) -> Option<(Duration, Instant)> {
        let _serial = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let ep = members.get(idx)?;
        if ep.is_ejected(now) {
            return None;
        }
        let ejected = members.iter().filter(|m| m.is_ejected(now)).count();
        if !ejection_allowed(ejected, members.len(), cfg.max_ejection_percent) {
            return None;
        }
        let mut e = ep.ejection_lock();
        let healthy_intervals = e.until.map_or(0, |ended| {
            let healthy = now.saturating_duration_since(ended);
            u32::try_from(healthy.as_nanos() / cfg.interval.as_nanos().max(1)).unwrap_or(u32::MAX)
        });
        e.times = e.times.saturating_sub(healthy_intervals).saturating_add(1);
        let length = cfg.ejection_time(e.times);
        let until = now + length;
        e.until = Some(until);
        ep.publish_ejection(until);
        Some((length, until))
    }
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are: the share
/// after ejecting stays within `max_percent`, or none is ejected yet (one always may be, so
/// small clusters, where 10% is less than one endpoint, still get protection).
pub fn ejection_allowed(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) as u64 * 100 <= u64::from(max_percent) * total as u64
}
