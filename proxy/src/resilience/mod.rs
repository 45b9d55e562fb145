//! Resilience decisions and state: timeouts, retries, retry budgets, circuit breaking, fault
//! injection, and the readable reasons of the responses the proxy makes up itself.
//!
//! Pure logic and per-cluster counters only; the request path drives them. A request's life,
//! in order:
//!
//! 1. **Fault** ([`decide_fault`]): wait out `delay` (no timeout runs yet); if `abort`,
//!    answer [`abort_response`] and stop (never retried).
//! 2. **Route deadline**: arrival (after the delay) + [`config::route_timeout`], if any.
//!    Everything below runs under it; on expiry answer 504 [`Reason::Timeout`].
//! 3. Per attempt, with a [`RetryState`] (`begin_attempt`):
//!    1. pick an endpoint (the balancer; on a retry with `ignore_previous_hosts`, excluding
//!       the endpoints already tried when another is left);
//!       none: 503 [`Reason::NoHealthyEndpoints`];
//!    2. **limits**: [`ClusterLimits::acquire_request`] (may wait in the pending queue);
//!       `Err(overflow)` is the outcome [`AttemptOutcome::Overflow`];
//!    3. send under [`attempt_deadline`] (route vs per-try); connect under
//!       `PoolLimits::connect_timeout`;
//!    4. **classify** the result into an [`AttemptOutcome`];
//!    5. [`RetryState::next`]: retriable? retries left? body replayable? **budget**
//!       ([`ClusterLimits::try_acquire_retry`])? then **back-off** ([`backoff()`]);
//!    6. `Retry { backoff, .. }`: drop the failed attempt's response, sleep `backoff` (still
//!       under the route deadline), go to 3.1. `Stop(why)`: forward the response, or answer
//!       [`AttemptOutcome::reason`]; log `why` ([`RetryStop`]) when a retry was considered.
//!
//! State that is per cluster and must survive config snapshots: [`ClusterLimits`] (active and
//! pending requests, TCP connections, outstanding retries), kept per cluster name beside the
//! snapshots by `model::ClusterRuntime`. Config ([`RetryPolicy`], [`Fault`], [`ClusterPolicy`]) is per snapshot and
//! passed in on each call. Per request: [`RetryState`] and the permits.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod fault;
pub mod reason;
pub mod retry;

#[cfg(test)]
mod tests;

pub use backoff::backoff;
pub use breaker::{ClusterLimits, ConnectionPermit, Overflow, RequestPermit};
pub use budget::RetryPermit;
pub use config::{
    AbortKind, ClusterPolicy, Fault, FaultAbort, FaultDelay, PoolLimits, RetryBudget,
    RetryCondition, RetryOn, RetryPolicy, route_timeout,
};
pub use fault::{FaultDecision, abort_response, decide_fault};
pub use reason::{CompactDuration, EndpointScope, REASON_HEADER, Reason};
pub use retry::{
    AttemptOutcome, RetryState, RetryStep, RetryStop, TimeoutKind, attempt_deadline,
    grpc_to_http_status, retriable,
};
