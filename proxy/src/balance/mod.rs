//! Load balancing and passive health checking for one cluster's endpoints: pure logic, no
//! I/O, no clock reads (every call takes `now`, a `tokio::time::Instant`, so tests run on
//! explicit instants or paused time).
//!
//! - [`config`]: [`LbConfig`] / [`OutlierConfig`] validated from the wire messages.
//! - [`endpoint`]: [`EndpointState`], the per-endpoint runtime state (in-flight count,
//!   peak-EWMA latency, first-seen instant, outlier counters and ejection) and the
//!   [`InFlight`] guard.
//! - [`balancer`]: [`ClusterState`] (long-lived, per cluster) and [`Balancer`] (per
//!   config/endpoint set): the pick and the outcome report.
//! - [`hash`]: the fixed hash, ring hash and Maglev; [`key`]: the request's affinity key and
//!   the affinity cookie; [`warmup`]: the slow-start factor; [`outlier`]: outcome counting and
//!   ejection rules.
//!
//! # Integration
//!
//! ```text
//! config push (per cluster):
//!     lb      = LbConfig::from_proto(cluster.load_balancer or default)      // NACK on Err
//!     outlier = cluster.outlier_detection.map(OutlierConfig::from_proto)    // NACK on Err
//!     state   = states.entry(cluster.name).or_insert_with(|| ClusterState::new(now))
//!     if !old_balancer.same_inputs(&lb, outlier.as_ref(), &endpoints) {
//!         balancer = Arc::new(state.balancer(lb, outlier, &endpoints, now))  // builds tables
//!     }
//!     (drop the ClusterState of clusters that disappeared)
//!
//! per request:
//!     affinity = balancer.hash_policy().map(|p| affinity(p, &HashInput{..}, rng))
//!     tried: a small fixed-size array of indices already picked (retryIgnorePreviousHosts)
//!     per attempt (all attempts on the same Arc<Balancer>):
//!         idx    = balancer.pick(&PickCtx{ now, exclude: &tried, hash }, rng)?  // None -> 503
//!         guard  = balancer.endpoint(idx).start(now)     // counts the request in flight
//!         ... send ...
//!         response head:   guard.observe(now); balancer.report(idx, Outcome::Response(s), now)
//!         timeout:         guard.observe(now); balancer.report(idx, Outcome::Timeout, now)
//!         connect failure / reset:             balancer.report(idx, Outcome::ConnectFailure
//!                                                                  | Outcome::Reset, now)
//!         opaque TCP connected:                balancer.report(idx, Outcome::Connected, now)
//!         drop(guard) when the exchange is over (response body done / stream closed)
//!     add affinity.set_cookie (if any) to the response
//! ```
//!
//! # Semantics chosen (where Istio/Envoy leave room)
//!
//! - `simple: UNSPECIFIED` is LEAST_REQUEST (Istio's default since 1.14). LEAST_REQUEST is
//!   power-of-two-choices on a peak-EWMA cost (Linkerd's balancer), not Envoy's pure
//!   in-flight count: cost = latency * (in-flight + 1) / (weight * warmup factor).
//! - PASSTHROUGH balances as round robin when asked (the caller should forward to the
//!   original destination instead when it has one).
//! - Ejections end exactly at their deadline (checked at pick time) rather than at the next
//!   `interval` sweep; the ejection multiplier decays by one per healthy `interval`, applied
//!   lazily at the next ejection. See [`outlier`].
//! - One endpoint may always be ejected, whatever `max_ejection_percent` (the contract).
//! - Everything ejected and `min_health_percent` 0: no endpoint (503), as Envoy with a 0%
//!   panic threshold.
//! - Consistent hashing skips an ejected or excluded endpoint by walking on along the ring /
//!   table (as if it were absent, for that request), so other keys keep their endpoints.
//! - The affinity cookie, when generated, holds a random 64-bit hex value (Envoy derives it
//!   from the chosen host's address).

pub mod balancer;
pub mod config;
pub mod endpoint;
pub mod hash;
pub mod key;
pub mod outlier;
pub mod warmup;

pub use balancer::{Balancer, ClusterState, PickCtx};
pub use config::{
    CookieSpec, HashAlgorithm, HashKey, HashPolicy, LbConfig, OutlierConfig, Simple, WarmupConfig,
};
pub use endpoint::{EndpointState, EndpointStats, InFlight};
pub use key::{Affinity, HashInput, affinity, hash_key, set_cookie};
pub use outlier::{Detection, EjectReason, Outcome};
pub use warmup::warmup_factor;

#[cfg(test)]
mod tests;
