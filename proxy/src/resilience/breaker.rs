//! Circuit breaking: the live per-cluster counters behind DestinationRule `connectionPool`.
//!
//! [`ClusterLimits`] is per cluster and outlives config snapshots (`model::ClusterRuntime`
//! keeps it); the limits themselves ([`PoolLimits`]) come from the snapshot current when a
//! request arrives and are passed in on every call, so a config update applies to the next
//! request with nothing to resize (queued requests learn of it through
//! [`ClusterLimits::update_limits`]).
//!
//! HTTP requests (Envoy's semantics, per cluster):
//! - `http2MaxRequests` bounds active requests; a request arriving at the bound fails at once
//!   with [`Overflow::MaxRequests`] (Envoy does not queue on it either);
//! - `maxConnections` also bounds active requests: one HTTP/1.1 connection carries one request
//!   at a time, so that is the concurrency a backend sees in Envoy HTTP/1 terms. On Weft's
//!   multiplexed HTTP/2 mesh hop there is no connection per request, so this is how the limit
//!   keeps its meaning: at most `maxConnections` concurrent exchanges with the cluster;
//! - a request finding no free slot waits in the pending queue, at most
//!   `http1MaxPendingRequests` long (0: unlimited); over that it fails at once with
//!   [`Overflow::MaxPending`]. Waiters are served in arrival order (a newcomer queues behind
//!   them rather than taking a freed slot; `Notify` wakes the oldest waiter first), and a
//!   waiter that is dropped (client gone, route timeout) gives its queue place back at once,
//!   passing on a wake-up it had received.
//!
//! Opaque TCP (CONNECT) streams are connections: [`ClusterLimits::acquire_connection`] fails
//! at once with [`Overflow::MaxConnections`] past `maxConnections`, as Envoy's TCP proxy does.
//! They are counted apart from HTTP requests (a cluster carries one protocol).
//!
//! Every counter is an atomic; the only lock is inside `tokio::sync::Notify`, never held
//! across an await. Permits are RAII guards: dropping one releases it, on every path.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::Notify;

use super::config::PoolLimits;

/// Which limit refused a request. `Display` is the detail of
/// [`Reason::UpstreamOverflow`](super::reason::Reason::UpstreamOverflow): `max_pending=50`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// `http1MaxPendingRequests`: the pending queue is full.
    MaxPending(u32),
    /// `http2MaxRequests`: active requests are at the bound.
    MaxRequests(u32),
    /// `tcp.maxConnections`: opaque TCP connections are at the bound.
    MaxConnections(u32),
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxPending(n) => write!(f, "max_pending={n}"),
            Self::MaxRequests(n) => write!(f, "max_requests={n}"),
            Self::MaxConnections(n) => write!(f, "max_connections={n}"),
        }
    }
}

/// The live resilience state of one cluster: active and pending requests, opaque TCP
/// connections, outstanding retries (see `budget.rs`). Shared as `Arc<ClusterLimits>`; the
/// permits hold a clone, so removing a cluster from the registry never strands a count.
#[derive(Debug, Default)]
pub struct ClusterLimits {
    /// Requests holding a slot (an exchange in progress with the cluster).
    pub(super) active: AtomicU64,
    /// Requests waiting in the pending queue.
    pub(super) pending: AtomicU64,
    /// Opaque TCP streams (CONNECT) to the cluster.
    connections: AtomicU64,
    /// Retries outstanding (from the decision to retry to the end of that attempt).
    pub(super) retries: AtomicU64,
    /// Woken (one waiter at a time, oldest first) when a slot is freed.
    slot_freed: Notify,
    /// The limits of the newest config, once a config update changed them: waiters that
    /// arrived under older limits look here when woken, so a raised limit lets them in.
    current: ArcSwapOption<PoolLimits>,
}

/// A slot for one HTTP request attempt; the slot is freed when this is dropped.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct RequestPermit {
    cluster: Arc<ClusterLimits>,
}

/// One opaque TCP connection to the cluster; released when dropped.
#[derive(Debug)]
#[must_use = "the connection slot is released as soon as the permit is dropped"]
pub struct ConnectionPermit {
    cluster: Arc<ClusterLimits>,
}

/// A place in the pending queue; given back when dropped (served, or the waiter went away).
struct QueuePlace<'a>(&'a ClusterLimits);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, SeqCst);
    }
}

impl ClusterLimits {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes a slot for one HTTP request attempt, waiting in the pending queue if none is
    /// free; see the module docs for the rules. Fails without waiting when a limit refuses
    /// the request. Cancellation-safe: dropping the future gives its queue place back (and
    /// passes on a wake-up it had received). The wait itself is unbounded: run it under the
    /// route timeout, which counts from the request's arrival.
    ///
    /// Call it once per attempt (retries included: Envoy counts upstream streams, and a
    /// request backing off between attempts holds no slot). Hold the permit until the
    /// attempt fails or, when it succeeds, until the response body ends (move it into the
    /// body): an HTTP/1.1 connection is busy until then, and that is what the limits model.
    pub async fn acquire_request(
        self: &Arc<Self>,
        limits: &PoolLimits,
    ) -> Result<RequestPermit, Overflow> {
        if let Some(max) = limits.http2_max_requests
            && self.active.load(SeqCst) >= u64::from(max)
        {
            return Err(Overflow::MaxRequests(max));
        }
        let mut slots = limits.request_slots().map(u64::from);
        // Fast path, and the whole path without limits: no queue ahead of us and a free slot.
        if self.pending.load(SeqCst) == 0 && self.try_take_slot(slots) {
            return Ok(self.request_permit());
        }
        let (_place, ahead) = self.enter_queue(limits.http1_max_pending_requests)?;
        // Only the head of the queue may take a slot before being woken: a slot freed while
        // a woken waiter has not run yet is that waiter's, not a newcomer's.
        let mut may_take = ahead == 0;
        loop {
            // Register for a wake-up *before* looking at the counters, so a slot freed
            // between the look and the wait is not missed.
            let mut freed = pin!(self.slot_freed.notified());
            freed.as_mut().enable();
            if may_take && self.try_take_slot(slots) {
                // Limits may have grown since the slot was freed: let the next waiter look.
                if self.pending.load(SeqCst) > 1 && self.has_free_slot(slots) {
                    self.slot_freed.notify_one();
                }
                return Ok(self.request_permit());
            }
            freed.await;
            may_take = true;
            if let Some(newer) = self.current.load().as_deref() {
                slots = newer.request_slots().map(u64::from);
            }
        }
    }

    /// A config update changed this cluster's limits: record them and wake every waiter to
    /// look again (a raised limit may have room for several; a lowered one lets none in).
    pub fn update_limits(&self, limits: &PoolLimits) {
        self.current.store(Some(Arc::new(limits.clone())));
        self.slot_freed.notify_waiters();
    }

    /// Takes a connection slot for one opaque TCP stream, or fails at once past
    /// `maxConnections` (opaque TCP has no pending queue, as in Envoy's TCP proxy).
    pub fn acquire_connection(
        self: &Arc<Self>,
        limits: &PoolLimits,
    ) -> Result<ConnectionPermit, Overflow> {
        match limits.max_connections {
            None => {
                self.connections.fetch_add(1, SeqCst);
            }
            Some(max) => {
                self.connections
                    .fetch_update(SeqCst, SeqCst, |n| (n < u64::from(max)).then_some(n + 1))
                    .map_err(|_| Overflow::MaxConnections(max))?;
            }
        }
        Ok(ConnectionPermit {
            cluster: Arc::clone(self),
        })
    }

    /// Requests holding a slot now (for gauges and `/config_dump`).
    pub fn active_requests(&self) -> u64 {
        self.active.load(SeqCst)
    }

    /// Requests in the pending queue now.
    pub fn pending_requests(&self) -> u64 {
        self.pending.load(SeqCst)
    }

    /// Opaque TCP connections now.
    pub fn active_connections(&self) -> u64 {
        self.connections.load(SeqCst)
    }

    /// Retries outstanding now.
    pub fn active_retries(&self) -> u64 {
        self.retries.load(SeqCst)
    }

    fn request_permit(self: &Arc<Self>) -> RequestPermit {
        RequestPermit {
            cluster: Arc::clone(self),
        }
    }

    fn has_free_slot(&self, slots: Option<u64>) -> bool {
        slots.is_none_or(|max| self.active.load(SeqCst) < max)
    }

    fn try_take_slot(&self, slots: Option<u64>) -> bool {
        match slots {
            None => {
                self.active.fetch_add(1, SeqCst);
                true
            }
            Some(max) => self
                .active
                .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
                .is_ok(),
        }
    }

    /// Takes a place in the pending queue; also returns how many were waiting already.
    fn enter_queue(&self, max_pending: Option<u32>) -> Result<(QueuePlace<'_>, u64), Overflow> {
        let ahead = match max_pending {
            None => self.pending.fetch_add(1, SeqCst),
            Some(max) => self
                .pending
                .fetch_update(SeqCst, SeqCst, |n| (n < u64::from(max)).then_some(n + 1))
                .map_err(|_| Overflow::MaxPending(max))?,
        };
        Ok((QueuePlace(self), ahead))
    }

    fn release_request(&self) {
        self.active.fetch_sub(1, SeqCst);
        // SeqCst pairs with the waiter's `pending` increment then slot check: either the
        // waiter sees the freed slot, or we see the waiter and wake it.
        if self.pending.load(SeqCst) > 0 {
            self.slot_freed.notify_one();
        }
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.cluster.release_request();
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.cluster.connections.fetch_sub(1, SeqCst);
    }
}
