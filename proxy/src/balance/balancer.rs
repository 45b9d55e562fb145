//! The per-cluster balancer: candidate selection (outlier ejections, panic mode, retry
//! exclusions) and the algorithms (weighted round robin, weighted random, P2C on peak EWMA,
//! ring hash, Maglev).
//!
//! Two lifetimes: [`ClusterState`] lives as long as the cluster name does (it owns the
//! endpoints' runtime state and the ejection lock); a [`Balancer`] is built from it for each
//! config/endpoint set and is immutable apart from atomics (round-robin cursor, endpoint
//! counters). A pick allocates nothing; its cost is O(1) for unweighted round robin, random
//! and P2C when no endpoint is ejected and nothing is excluded, O(log points) for ring hash,
//! O(1) for Maglev, and O(endpoints) otherwise (weighted choices walk the endpoint list,
//! filtered picks scan it).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::RngExt as _;
use tokio::time::Instant;

use super::config::{HashAlgorithm, HashPolicy, LbConfig, MAX_RING_SIZE, OutlierConfig, Simple};
use super::endpoint::{EndpointState, EndpointStats};
use super::hash::{HashTable, Maglev, Ring};
use super::outlier::{self, Detection, EjectionGuard, Outcome};
use super::warmup;

/// Fixed-point scale of warmed-up weights in round robin: a weight of 1 at a 10% factor
/// still has 102 units, so the ramp is smooth without floating-point walks.
const WARM_SCALE: f64 = 1024.0;

/// Long-lived state of one cluster (keep one per cluster name, e.g. in a
/// `HashMap<String, Arc<ClusterState>>` next to the snapshot; drop it when the cluster goes).
#[derive(Debug)]
pub struct ClusterState {
    /// Origin of `eject_horizon`.
    base: Instant,
    /// Runtime state per endpoint address. Touched only when a balancer is built.
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    ejections: EjectionGuard,
    /// Nanoseconds after `base` from which no endpoint of the cluster is ejected: the latest
    /// ejection deadline ever set (0: none). Lets every pick skip the ejection scan in the
    /// common case where nothing is ejected.
    eject_horizon: AtomicU64,
}

impl ClusterState {
    pub fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            base: now,
            endpoints: Mutex::new(HashMap::new()),
            ejections: EjectionGuard::new(),
            eject_horizon: AtomicU64::new(0),
        })
    }

    /// Builds the balancer for a config and an endpoint list `(address, weight)` (weight 0
    /// counts as 1, as in the wire contract). Pick results are indices into `endpoints`, so
    /// pass them in the order of the cluster's endpoint list.
    ///
    /// Endpoints already known keep their state (in-flight count, latency, ejection, warmup
    /// start); new addresses start fresh at `now`; addresses no longer listed are forgotten
    /// (an endpoint that comes back later is new again, and warms up again, as in Envoy).
    /// Builds the ring or Maglev table when the config asks for one: call this when the
    /// cluster's config or endpoints change (see [`Balancer::same_inputs`]), not per request.
    pub fn balancer(
        self: &Arc<Self>,
        lb: LbConfig,
        outlier: Option<OutlierConfig>,
        endpoints: &[(SocketAddr, u32)],
        now: Instant,
    ) -> Balancer {
        let states: Box<[Arc<EndpointState>]> = {
            let mut map = self
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let states = endpoints
                .iter()
                .map(|(addr, _)| {
                    Arc::clone(
                        map.entry(*addr)
                            .or_insert_with(|| Arc::new(EndpointState::new(*addr, now))),
                    )
                })
                .collect();
            let listed: HashSet<SocketAddr> = endpoints.iter().map(|(a, _)| *a).collect();
            map.retain(|addr, _| listed.contains(addr));
            states
        };
        let members: Vec<(SocketAddr, u32)> =
            endpoints.iter().map(|(a, w)| (*a, (*w).max(1))).collect();
        let table = lb.consistent_hash.as_ref().map(|p| match p.algorithm {
            HashAlgorithm::RingHash { min_ring_size } => {
                HashTable::Ring(Ring::build(&members, min_ring_size, MAX_RING_SIZE))
            }
            HashAlgorithm::Maglev { table_size } => {
                HashTable::Maglev(Maglev::build(&members, table_size))
            }
        });
        let weights: Box<[u32]> = members.iter().map(|(_, w)| *w).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        Balancer {
            cluster: Arc::clone(self),
            lb,
            outlier,
            states,
            weights,
            uniform,
            table,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The runtime state of a listed endpoint (admin API, tests).
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Arc<EndpointState>> {
        let map = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&addr).cloned()
    }

    fn offset(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Whether some endpoint may be ejected at `now` (false: certainly none is).
    fn may_have_ejections(&self, now: Instant) -> bool {
        self.offset(now) < self.eject_horizon.load(Ordering::Relaxed)
    }
}

/// What one pick needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct PickCtx<'a> {
    /// The time of the pick (for ejection expiry, warmup and latency decay).
    pub now: Instant,
    /// Endpoints this request already tried (indices from earlier picks of the same
    /// balancer), to avoid with `retryIgnorePreviousHosts`; when every candidate is excluded
    /// the exclusion is dropped rather than failing the request.
    pub exclude: &'a [usize],
    /// The affinity hash ([`affinity`](super::affinity)) for consistent hashing; `None`: a
    /// random endpoint. Ignored by the other algorithms.
    pub hash: Option<u64>,
}

impl<'a> PickCtx<'a> {
    /// A pick at `now` with no exclusions and no hash.
    pub fn at(now: Instant) -> Self {
        Self {
            now,
            exclude: &[],
            hash: None,
        }
    }
}

/// The balancer of one cluster for one config/endpoint set. Share it (`Arc<Balancer>`) with
/// the requests of that snapshot; a request keeps the same balancer for all its attempts so
/// its exclusion indices stay meaningful.
pub struct Balancer {
    cluster: Arc<ClusterState>,
    lb: LbConfig,
    outlier: Option<OutlierConfig>,
    states: Box<[Arc<EndpointState>]>,
    /// Endpoint weights, each >= 1.
    weights: Box<[u32]>,
    /// All weights equal: round robin and random need no walk.
    uniform: bool,
    table: Option<HashTable>,
    /// Round-robin position. Restarting at 0 with each new balancer is harmless.
    cursor: AtomicUsize,
}

impl fmt::Debug for Balancer {
    // Summarised: the hash table alone can hold 65537 entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("lb", &self.lb)
            .field("outlier", &self.outlier)
            .field("endpoints", &self.states.len())
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

/// Which endpoints a pick may return.
#[derive(Clone, Copy)]
struct Filter<'a> {
    states: &'a [Arc<EndpointState>],
    now: Instant,
    /// Skip ejected endpoints (false when outlier detection is off, nothing is ejected, or
    /// the cluster is in panic mode).
    skip_ejected: bool,
    exclude: &'a [usize],
}

impl Filter<'_> {
    fn admits(&self, i: usize) -> bool {
        !(self.exclude.contains(&i) || self.skip_ejected && self.states[i].is_ejected(self.now))
    }

    /// Every endpoint is admitted: the fast paths apply.
    fn admits_all(&self) -> bool {
        !self.skip_ejected && self.exclude.is_empty()
    }
}

impl Balancer {
    /// Chooses an endpoint for one attempt; `None` only when the cluster has no endpoints, or
    /// when every endpoint is ejected and panic mode is off (`min_health_percent` 0, Istio's
    /// default): Envoy's "no healthy upstream", which the caller answers with 503.
    ///
    /// Candidates: the endpoints not ejected (all of them in panic mode: fewer than
    /// `min_health_percent`% healthy), minus `ctx.exclude` unless that leaves none.
    pub fn pick(&self, ctx: &PickCtx<'_>, rng: &mut impl rand::Rng) -> Option<usize> {
        if self.states.is_empty() {
            return None;
        }
        let mut filter = Filter {
            states: &self.states,
            now: ctx.now,
            skip_ejected: self.skip_ejected(ctx.now),
            exclude: ctx.exclude,
        };
        if !filter.exclude.is_empty() {
            if let Some(i) = self.pick_among(&filter, ctx.hash, rng) {
                return Some(i);
            }
            filter.exclude = &[];
        }
        self.pick_among(&filter, ctx.hash, rng)
    }

    /// Reports how an attempt to endpoint `idx` (an index from [`pick`](Self::pick)) ended,
    /// for outlier detection: call once per attempt, after the response head arrived or the
    /// attempt failed. Returns the detection it caused, if any (for logs and metrics).
    pub fn report(&self, idx: usize, outcome: Outcome, now: Instant) -> Option<Detection> {
        let cfg = self.outlier.as_ref()?;
        let ep = self.states.get(idx)?;
        let mut last = None;
        for reason in outlier::count(ep, cfg, outcome).iter() {
            match self
                .cluster
                .ejections
                .try_eject(cfg, &self.states, idx, now)
            {
                Some((length, until)) => {
                    self.cluster
                        .eject_horizon
                        .fetch_max(self.cluster.offset(until), Ordering::Relaxed);
                    return Some(Detection {
                        reason,
                        ejected_for: Some(length),
                    });
                }
                None => {
                    last = Some(Detection {
                        reason,
                        ejected_for: None,
                    });
                }
            }
        }
        last
    }

    /// Whether this balancer was built from exactly these inputs, so the integrator can keep
    /// it (and its table and cursor) across a snapshot that did not change the cluster.
    pub fn same_inputs(
        &self,
        lb: &LbConfig,
        outlier: Option<&OutlierConfig>,
        endpoints: &[(SocketAddr, u32)],
    ) -> bool {
        self.lb == *lb
            && self.outlier.as_ref() == outlier
            && self.states.len() == endpoints.len()
            && self
                .states
                .iter()
                .zip(self.weights.iter())
                .zip(endpoints)
                .all(|((s, w), (a, ew))| s.addr() == *a && *w == (*ew).max(1))
    }

    /// The endpoint state at `idx`: start the in-flight guard on it after a pick.
    pub fn endpoint(&self, idx: usize) -> Option<&Arc<EndpointState>> {
        self.states.get(idx)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn lb(&self) -> &LbConfig {
        &self.lb
    }

    pub fn outlier(&self) -> Option<&OutlierConfig> {
        self.outlier.as_ref()
    }

    /// The affinity policy, when the cluster hashes: compute [`affinity`](super::affinity)
    /// with it before picking.
    pub fn hash_policy(&self) -> Option<&HashPolicy> {
        self.lb.consistent_hash.as_ref()
    }

    /// Endpoints ejected at `now` (a gauge for metrics).
    pub fn ejected(&self, now: Instant) -> usize {
        self.states.iter().filter(|s| s.is_ejected(now)).count()
    }

    /// Per-endpoint stats, in endpoint order (admin API).
    pub fn stats(&self, now: Instant) -> Vec<EndpointStats> {
        self.states.iter().map(|s| s.stats(now)).collect()
    }

    /// Whether picks at `now` must skip ejected endpoints: outlier detection is on, some
    /// endpoint is ejected, and the cluster is not in panic mode.
    fn skip_ejected(&self, now: Instant) -> bool {
        let Some(cfg) = &self.outlier else {
            // Ejections made under an older config do not apply once detection is off.
            return false;
        };
        if !self.cluster.may_have_ejections(now) {
            return false;
        }
        if cfg.min_health_percent == 0 {
            return true;
        }
        let total = self.states.len();
        let healthy = total - self.ejected(now);
        // Panic (Envoy): below the threshold, ejections are ignored and load spreads over
        // every endpoint rather than crushing the few healthy ones.
        healthy * 100 >= cfg.min_health_percent as usize * total
    }

    fn pick_among(
        &self,
        f: &Filter<'_>,
        hash: Option<u64>,
        rng: &mut impl rand::Rng,
    ) -> Option<usize> {
        if let Some(table) = &self.table {
            return match hash {
                Some(h) => table.lookup(h, |i| f.admits(i)),
                // No key on the request: no affinity, but no failure either (Envoy).
                None => self.random(f, rng),
            };
        }
        match self.lb.simple {
            Simple::RoundRobin | Simple::Passthrough => self.round_robin(f),
            Simple::Random => self.random(f, rng),
            Simple::LeastRequest => self.least_request(f, rng),
        }
    }

    /// Weighted round robin: each endpoint's share of turns is its `weight` (times its
    /// warmup factor) over the admitted total; turns are interleaved (see [`spread`]). With
    /// equal weights, no warmup and nothing filtered, plain rotation.
    fn round_robin(&self, f: &Filter<'_>) -> Option<usize> {
        let tick = self.cursor.fetch_add(1, Ordering::Relaxed) as u64;
        let n = self.states.len();
        let warmup = self.lb.warmup.as_ref();
        if f.admits_all() && self.uniform && warmup.is_none() {
            return Some((tick % n as u64) as usize);
        }
        let weight = |i: usize| -> u64 {
            let w = u64::from(self.weights[i]);
            match warmup {
                None => w,
                Some(cfg) => {
                    let factor = warmup::warmup_factor(cfg, self.states[i].first_seen(), f.now);
                    ((w as f64) * factor * WARM_SCALE).round().max(1.0) as u64
                }
            }
        };
        let total: u64 = (0..n).filter(|&i| f.admits(i)).map(weight).sum();
        if total == 0 {
            return None;
        }
        self.walk(f, spread(tick, total), weight)
    }

    /// Weighted random (warmup does not apply, as in Envoy and the proto's contract).
    fn random(&self, f: &Filter<'_>, rng: &mut impl rand::Rng) -> Option<usize> {
        let n = self.states.len();
        if f.admits_all() && self.uniform {
            return Some(rng.random_range(0..n));
        }
        let weight = |i: usize| u64::from(self.weights[i]);
        let total: u64 = (0..n).filter(|&i| f.admits(i)).map(weight).sum();
        if total == 0 {
            return None;
        }
        self.walk(f, rng.random_range(0..total), weight)
    }

    /// The admitted endpoint whose weight range holds `slot` (0 <= slot < admitted total).
    fn walk(&self, f: &Filter<'_>, mut slot: u64, weight: impl Fn(usize) -> u64) -> Option<usize> {
        for i in (0..self.states.len()).filter(|&i| f.admits(i)) {
            let w = weight(i);
            if slot < w {
                return Some(i);
            }
            slot -= w;
        }
        None
    }

    /// Power of two choices: two distinct admitted endpoints drawn uniformly, the cheaper
    /// one wins (see [`Self::cheaper`]).
    fn least_request(&self, f: &Filter<'_>, rng: &mut impl rand::Rng) -> Option<usize> {
        let n = self.states.len();
        let (a, b) = if f.admits_all() {
            if n == 1 {
                return Some(0);
            }
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n - 1);
            (a, if b >= a { b + 1 } else { b })
        } else {
            let m = (0..n).filter(|&i| f.admits(i)).count();
            match m {
                0 => return None,
                1 => return (0..n).find(|&i| f.admits(i)),
                _ => {}
            }
            let ra = rng.random_range(0..m);
            let rb = rng.random_range(0..m - 1);
            let rb = if rb >= ra { rb + 1 } else { rb };
            // One walk maps both ranks among the admitted endpoints to indices.
            let mut a = None;
            let mut b = None;
            for (rank, i) in (0..n).filter(|&i| f.admits(i)).enumerate() {
                if rank == ra {
                    a = Some(i);
                }
                if rank == rb {
                    b = Some(i);
                }
            }
            (a?, b?)
        };
        Some(if self.cheaper(b, a, f.now) { b } else { a })
    }

    /// Whether endpoint `x` costs strictly less than `y` at `now`.
    ///
    /// cost = latency * (in-flight + 1) / (weight * warmup factor): Linkerd's peak-EWMA cost
    /// (latency times load), with the endpoint weight and Envoy's slow start dividing it so a
    /// heavier or fully warmed endpoint takes proportionally more load. An endpoint without
    /// latency data yet is given its rival's latency (neutral: the in-flight counts decide,
    /// so a new endpoint is tried as soon as it is no busier); with no data on either side the
    /// comparison is pure least-request. Latency is floored at 1 ns so a fully decayed
    /// estimate still lets the in-flight count matter.
    fn cheaper(&self, x: usize, y: usize, now: Instant) -> bool {
        let (lx, ly) = match (self.states[x].latency(now), self.states[y].latency(now)) {
            (Some(lx), Some(ly)) => (lx, ly),
            (Some(l), None) | (None, Some(l)) => (l, l),
            (None, None) => (1.0, 1.0),
        };
        self.cost(x, lx, now) < self.cost(y, ly, now)
    }

    fn cost(&self, i: usize, latency_ns: f64, now: Instant) -> f64 {
        let state = &self.states[i];
        let factor = warmup::factor(self.lb.warmup.as_ref(), state.first_seen(), now);
        let load = f64::from(state.active()) + 1.0;
        latency_ns.max(1.0) * load / (f64::from(self.weights[i]) * factor)
    }
}

/// Maps a round-robin tick to a slot in `0..total` along a Weyl sequence (Fibonacci
/// hashing): slot = floor(frac(tick / golden ratio) * total). Consecutive ticks land far
/// apart (each step moves 0.618 of the way round), and over any run of ticks every slot
/// range gets its proportional share within a small additive error (the three-distance
/// theorem), so endpoints get `weight`-proportional, interleaved turns with no shared state
/// beyond the cursor. Plain `tick mod total` would give an endpoint of weight 100 (or a warm
/// endpoint, at 1024 units per weight) a hundred requests in a row; a coprime stride
/// degenerates for small totals (6 has only strides 1 and 5).
pub(super) fn spread(tick: u64, total: u64) -> u64 {
    /// 2^64 / golden ratio.
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    ((u128::from(tick.wrapping_mul(GOLDEN)) * u128::from(total)) >> 64) as u64
}
