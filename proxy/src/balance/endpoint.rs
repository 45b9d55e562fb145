//! Per-endpoint runtime state: in-flight count, peak-EWMA latency, first-seen instant,
//! outlier counters and ejection.
//!
//! One [`EndpointState`] per endpoint address per cluster, shared through `Arc` and kept by
//! the cluster's [`ClusterState`](super::ClusterState) across config snapshots, so ejections,
//! latency estimates and warmup survive a config push. Nothing here reads the clock: every
//! time-dependent call takes `now`.
//!
//! Concurrency: the fields read on every pick (in-flight count, ejection deadline) are atomics;
//! the latency estimate and the ejection history sit behind two small per-endpoint mutexes,
//! held for a few arithmetic operations. There is no lock shared between endpoints on the
//! request path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Time constant of the latency estimate's decay (Linkerd's default): a sample's weight
/// falls to 1/e after 10 s.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Runtime state of one endpoint of one cluster.
#[derive(Debug)]
pub struct EndpointState {
    addr: SocketAddr,
    /// When this cluster first listed the endpoint: the start of its warmup, and the origin
    /// of the nanosecond offsets stored in atomics below.
    first_seen: Instant,
    /// Requests dispatched and not finished (see [`InFlight`]).
    active: AtomicU32,
    ewma: Mutex<Ewma>,
    pub(super) consecutive_5xx: AtomicU32,
    pub(super) consecutive_gateway: AtomicU32,
    pub(super) consecutive_local_origin: AtomicU32,
    /// End of the current (or last) ejection, as nanoseconds after `first_seen`; 0: never
    /// ejected. Mirrors `ejection.until` so picks read one atomic, not a mutex.
    ejected_until: AtomicU64,
    /// Authoritative ejection history; written only while ejecting (rare).
    ejection: Mutex<Ejection>,
}

/// Peak-sensitive, time-weighted moving average of response latency (Linkerd's peak EWMA).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ewma {
    /// Nanoseconds, as of `at`.
    estimate: f64,
    /// Time of the last sample; `None` until the first one.
    at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ejection {
    /// Ejections counted for the back-off multiplier (decays while healthy).
    pub(super) times: u32,
    /// End of the current or last ejection.
    pub(super) until: Option<Instant>,
}

/// A read-only view of an endpoint's state, for the admin API and logs.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub active_requests: u32,
    /// Current latency estimate in milliseconds; `None` before the first response.
    pub latency_ewma_ms: Option<f64>,
    /// Time left in the current ejection, in milliseconds; `None` when not ejected.
    pub ejected_for_ms: Option<u64>,
    /// The ejection multiplier (without the decay a new ejection would apply first).
    pub times_ejected: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local_origin: u32,
}

impl Ewma {
    /// The estimate at `now`: the stored value decayed towards zero since the last sample,
    /// so an endpoint avoided for being slow looks cheaper and cheaper until it is tried
    /// again (the reason Linkerd decays on read).
    pub(super) fn value(&self, now: Instant) -> Option<f64> {
        let at = self.at?;
        Some(self.estimate * decay_weight(now.saturating_duration_since(at)))
    }

    /// Folds in one latency sample taken at `now`.
    ///
    /// Peak: a sample above the (decayed) estimate replaces it, so one slow response makes
    /// the endpoint expensive at once. Otherwise the sample pulls the estimate down with the
    /// weight `1 - e^(-dt/tau)`, `dt` the time since the previous sample: frequent samples
    /// each move it a little, a sample after a long silence moves it a lot.
    pub(super) fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        self.estimate = match self.at {
            None => sample,
            Some(at) => {
                let w = decay_weight(now.saturating_duration_since(at));
                let decayed = self.estimate * w;
                if sample >= decayed {
                    sample
                } else {
                    decayed * w + sample * (1.0 - w)
                }
            }
        };
        // Concurrent requests may report slightly out of order; the clock of the estimate
        // never goes back (a late sample then counts as taken at the latest time).
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }
}

/// e^(-dt/tau).
fn decay_weight(dt: Duration) -> f64 {
    (-dt.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp()
}

impl EndpointState {
    /// State for an endpoint first seen at `now` (its warmup starts now).
    pub fn new(addr: SocketAddr, now: Instant) -> Self {
        Self {
            addr,
            first_seen: now,
            active: AtomicU32::new(0),
            ewma: Mutex::new(Ewma::default()),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local_origin: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection: Mutex::new(Ejection::default()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When the cluster first listed this endpoint.
    pub fn first_seen(&self) -> Instant {
        self.first_seen
    }

    /// Requests in flight to this endpoint.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks a request as dispatched to this endpoint; the returned guard keeps it counted
    /// until dropped. Call right after the pick, before connecting, so concurrent picks see
    /// the load at once.
    pub fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
            started: now,
            observed: false,
        }
    }

    /// The latency estimate (nanoseconds) at `now`; `None` before the first sample.
    pub fn latency(&self, now: Instant) -> Option<f64> {
        self.ewma_lock().value(now)
    }

    /// Records a latency sample directly (the [`InFlight`] guard does this for requests).
    pub fn observe_latency(&self, latency: Duration, now: Instant) {
        self.ewma_lock().observe(latency, now);
    }

    /// Whether an outlier ejection is in force at `now`. Ejections end exactly at their
    /// deadline; nothing needs to run for the endpoint to return.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.offset(now) < until
    }

    /// The current ejection's deadline, if one is in force at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let e = self.ejection_lock();
        e.until.filter(|u| *u > now)
    }

    /// A snapshot for the admin API.
    pub fn stats(&self, now: Instant) -> EndpointStats {
        let ejection = *self.ejection_lock();
        EndpointStats {
            addr: self.addr,
            active_requests: self.active(),
            latency_ewma_ms: self.latency(now).map(|ns| ns / 1e6),
            ejected_for_ms: ejection
                .until
                .filter(|u| *u > now)
                .map(|u| u.saturating_duration_since(now).as_millis() as u64),
            times_ejected: ejection.times,
            consecutive_5xx: self.consecutive_5xx.load(Ordering::Relaxed),
            consecutive_gateway: self.consecutive_gateway.load(Ordering::Relaxed),
            consecutive_local_origin: self.consecutive_local_origin.load(Ordering::Relaxed),
        }
    }

    /// Nanoseconds from `first_seen` to `t` (0 for earlier instants); u64 nanoseconds last
    /// 584 years.
    fn offset(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.first_seen).as_nanos() as u64
    }

    pub(super) fn ejection_lock(&self) -> MutexGuard<'_, Ejection> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers;
        // the numbers are still usable.
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ewma_lock(&self) -> MutexGuard<'_, Ewma> {
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a new ejection deadline to pickers (with `ejection` locked by the caller).
    pub(super) fn publish_ejection(&self, until: Instant) {
        // `max(1)`: 0 means "never ejected"; an ejection ending at `first_seen` is over anyway.
        self.ejected_until
            .store(self.offset(until).max(1), Ordering::Relaxed);
    }
}

/// A request in flight to one endpoint: counted in the endpoint's load until dropped.
///
/// Call [`observe`](Self::observe) when the response head arrives (any status) to feed the
/// latency estimate, and also when the attempt times out: the elapsed time is a lower bound
/// of that request's latency, and without it an endpoint that swallows requests would look
/// ever cheaper to P2C as its estimate decays. Do not observe connect failures or resets:
/// their quickness says nothing about the server (outlier detection handles them). Drop the
/// guard when the exchange is over (body done, stream closed, or request abandoned).
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    started: Instant,
    observed: bool,
}

impl InFlight {
    /// Records the time from `start` to `now` as a latency sample (once; later calls do
    /// nothing). The request stays counted as in flight.
    pub fn observe(&mut self, now: Instant) {
        if !self.observed {
            self.observed = true;
            self.endpoint
                .observe_latency(now.saturating_duration_since(self.started), now);
        }
    }

    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}
