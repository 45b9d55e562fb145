//! Retries: what an attempt's outcome was, whether the route's policy retries it, and the
//! per-request state that runs the retry loop.
//!
//! [`retriable`] follows Envoy's router (`RetryStateImpl::wouldRetryFromHeaders` /
//! `wouldRetryFromReset`) rather than only its prose, where the two differ:
//!
//! | condition | retries |
//! |---|---|
//! | `5xx` | any 5xx response; and every attempt without a response: connect failure or timeout, reset (before or after the request was sent), refused stream, per-try timeout |
//! | `gateway-error` | a 502, 503 or 504 response; and, like `5xx`, every attempt without a response (Envoy counts a reset as the 502/503/504 it turns into) |
//! | `reset` | every attempt without a response (connect failures and per-try timeouts included) |
//! | `reset-before-request` | an attempt without a response where no byte of the request (headers included) reached the upstream: connect failure or timeout, or a reset with `request_sent: false` |
//! | `connect-failure` | connect failure or connect timeout |
//! | `refused-stream` | HTTP/2 REFUSED_STREAM |
//! | `retriable-4xx` | a 409 response |
//! | `retriable-status-codes` | a response whose status is in `retriable_status_codes` |
//! | `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable` | a response whose `grpc-status` *header* is 1, 4, 13, 8, 14: a trailers-only gRPC response (a status in trailers comes after the response is committed to the client) |
//! | `envoy-ratelimited`, `retriable-headers`, `http3-post-connect-failure` | nothing (accepted for compatibility, as mesh.proto says) |
//!
//! A request refused by the cluster's own limits ([`AttemptOutcome::Overflow`]) is never
//! retried, whatever the policy (Envoy: an overflow reset never is).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::backoff::backoff;
use super::breaker::{ClusterLimits, Overflow};
use super::budget::RetryPermit;
use super::config::{ClusterPolicy, RetryCondition as C, RetryPolicy};
use super::reason::Reason;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The upstream answered with response headers (success or not). `grpc_status`: the
    /// `grpc-status` *header*, present on trailers-only gRPC responses.
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// The connection to the endpoint could not be made (refused, unreachable, TLS failure).
    ConnectFailure,
    /// The connection was not made within `connectionPool.tcp.connectTimeout` (the value).
    ConnectTimeout(Duration),
    /// The upstream reset the stream or closed the connection before the response headers.
    /// `request_sent`: whether any byte of the request (headers included) had been written
    /// to the upstream; if not, the upstream cannot have acted on it.
    Reset { request_sent: bool },
    /// HTTP/2 REFUSED_STREAM: the upstream guarantees it did not process the request.
    RefusedStream,
    /// The attempt hit the policy's `per_try_timeout` before the response headers.
    PerTryTimeout,
    /// The cluster's limits refused the attempt before it was sent (a retry can hit them).
    Overflow(Overflow),
}

impl AttemptOutcome {
    /// The outcome of an attempt that got response headers.
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Self {
        Self::Response {
            status: status.as_u16(),
            grpc_status: grpc_status(headers),
        }
    }

    /// The reason the proxy answers with when this is the last attempt's outcome; `None` for
    /// a response, which is forwarded as the upstream sent it. `attempt` is 1-based.
    pub fn reason(&self, policy: &RetryPolicy, attempt: u32) -> Option<Reason> {
        Some(match *self {
            Self::Response { .. } => return None,
            Self::ConnectFailure => Reason::ConnectFailure,
            Self::ConnectTimeout(d) => Reason::ConnectTimeout(d),
            Self::Reset { .. } | Self::RefusedStream => Reason::UpstreamReset,
            Self::PerTryTimeout => Reason::PerTryTimeout {
                timeout: policy.per_try_timeout.unwrap_or_default(),
                attempt,
            },
            Self::Overflow(o) => Reason::UpstreamOverflow(o),
        })
    }
}

/// The `grpc-status` header as a number; `None` if absent or not a number.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The HTTP status a gRPC status stands for, as Envoy maps it for outlier detection and
/// statistics (a gRPC failure arrives as HTTP 200 with `grpc-status`; counted as a 200, a
/// dead gRPC backend would never be ejected).
pub fn grpc_to_http_status(code: u32) -> StatusCode {
    let status = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // UNKNOWN, INTERNAL, DATA_LOSS and codes gRPC does not define
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Whether `policy` retries an attempt that ended in `outcome` (attempts and budgets aside:
/// see [`RetryState::next`]). The table in the module docs is the specification.
pub fn retriable(policy: &RetryPolicy, outcome: &AttemptOutcome) -> bool {
    let on = policy.retry_on;
    // Every outcome without a response is a reset to these three (Envoy).
    let any_reset = on.any(&[C::Status5xx, C::GatewayError, C::Reset]);
    match *outcome {
        AttemptOutcome::Response {
            status,
            grpc_status,
        } => {
            (on.contains(C::Status5xx) && (500..=599).contains(&status))
                || (on.contains(C::GatewayError) && matches!(status, 502..=504))
                || (on.contains(C::Retriable4xx) && status == 409)
                || (on.contains(C::RetriableStatusCodes)
                    && policy.retriable_status_codes.contains(&status))
                || grpc_status.is_some_and(|code| on.matches_grpc(code))
        }
        AttemptOutcome::ConnectFailure | AttemptOutcome::ConnectTimeout(_) => {
            any_reset || on.any(&[C::ConnectFailure, C::ResetBeforeRequest])
        }
        AttemptOutcome::Reset { request_sent } => {
            any_reset || (!request_sent && on.contains(C::ResetBeforeRequest))
        }
        // The HEADERS frame was sent, so not "before request" (Envoy: the stream started).
        AttemptOutcome::RefusedStream => any_reset || on.contains(C::RefusedStream),
        // A per-try timeout resets the stream after the request went out.
        AttemptOutcome::PerTryTimeout => any_reset,
        AttemptOutcome::Overflow(_) => false,
    }
}

/// Why a request was not retried (again). Not a response reason by itself (the last
/// attempt's outcome is what the client gets); it goes to the access log (`Display`, e.g.
/// `retry_budget_exhausted(limit=3)`) and to a retry metric (`name`, bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStop {
    /// `not_retriable`: the outcome (a success included) is not retriable under the policy.
    NotRetriable,
    /// `attempts_exhausted(attempts=<n>)`: the policy's `attempts` retries were all made
    /// (0: the route does not retry).
    AttemptsExhausted { attempts: u32 },
    /// `body_not_replayable`: the request body outgrew its replay buffer (`crate::replay`,
    /// 64 KiB by default), so it cannot be sent again.
    BodyNotReplayable,
    /// `retry_budget_exhausted(limit=<n>)`: the cluster's retry budget allowed `n` retries
    /// outstanding and all were in use.
    BudgetExhausted { limit: u64 },
    /// `retry_overflow(max_retries=<n>)`: the cluster's `maxRetries` retries were all
    /// outstanding (the cap when there is no retry budget).
    MaxRetries(u32),
}

impl RetryStop {
    /// The short name for metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NotRetriable => "not_retriable",
            Self::AttemptsExhausted { .. } => "attempts_exhausted",
            Self::BodyNotReplayable => "body_not_replayable",
            Self::BudgetExhausted { .. } => "retry_budget_exhausted",
            Self::MaxRetries(_) => "retry_overflow",
        }
    }
}

impl fmt::Display for RetryStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRetriable => f.write_str("not_retriable"),
            Self::AttemptsExhausted { attempts } => {
                write!(f, "attempts_exhausted(attempts={attempts})")
            }
            Self::BodyNotReplayable => f.write_str("body_not_replayable"),
            Self::BudgetExhausted { limit } => write!(f, "retry_budget_exhausted(limit={limit})"),
            Self::MaxRetries(n) => write!(f, "retry_overflow(max_retries={n})"),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    /// Wait `backoff` (under the route timeout), then make retry number `retry` (1-based).
    Retry { backoff: Duration, retry: u32 },
    /// Answer with the attempt's outcome: its response, or its [`AttemptOutcome::reason`].
    Stop(RetryStop),
}

/// The retry loop's state for one request. Not shared: it lives in the request's task.
#[derive(Debug)]
pub struct RetryState {
    /// Attempts started, the first included.
    attempts: u32,
    replayable: bool,
    /// Held from a decision to retry until the next decision (or the end of the request):
    /// the back-off and the retry attempt count against the cluster's retries.
    permit: Option<RetryPermit>,
}

impl Default for RetryState {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryState {
    pub fn new() -> Self {
        Self {
            attempts: 0,
            replayable: true,
            permit: None,
        }
    }

    /// Call as each attempt starts; returns its number (1 = the first attempt).
    pub fn begin_attempt(&mut self) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        self.attempts
    }

    /// The number of the current attempt (0 before the first).
    pub fn attempt(&self) -> u32 {
        self.attempts
    }

    /// Retries made so far.
    pub fn retries(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    /// The request body cannot be sent again (its replay buffer overflowed, i.e.
    /// `ReplayBody::is_replayable()` is false): the request will not be retried. Check it
    /// before each [`RetryState::next`].
    pub fn mark_not_replayable(&mut self) {
        self.replayable = false;
    }

    /// Decides what follows the current attempt's `outcome`, in Envoy's order: retriable
    /// under the policy, then retries left, then the body can be replayed, then the
    /// cluster's budget (or `maxRetries`), then the back-off. A retry permit taken here is
    /// held until the next call or until this state is dropped.
    pub fn next(
        &mut self,
        policy: &RetryPolicy,
        outcome: &AttemptOutcome,
        cluster: &Arc<ClusterLimits>,
        cluster_policy: &ClusterPolicy,
        rng: &mut impl rand::Rng,
    ) -> RetryStep {
        // The previous retry (if any) has ended with this outcome.
        self.permit = None;
        if !retriable(policy, outcome) {
            return RetryStep::Stop(RetryStop::NotRetriable);
        }
        if self.retries() >= policy.attempts {
            return RetryStep::Stop(RetryStop::AttemptsExhausted {
                attempts: policy.attempts,
            });
        }
        if !self.replayable {
            return RetryStep::Stop(RetryStop::BodyNotReplayable);
        }
        match cluster.try_acquire_retry(cluster_policy) {
            Ok(permit) => self.permit = Some(permit),
            Err(stop) => return RetryStep::Stop(stop),
        }
        let retry = self.retries() + 1;
        RetryStep::Retry {
            backoff: backoff(policy, retry, rng),
            retry,
        }
    }
}

/// Which timeout bounds an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The route's `timeout`: on expiry answer 504 [`Reason::Timeout`], no retry.
    Route,
    /// The policy's `per_try_timeout`: on expiry the outcome is
    /// [`AttemptOutcome::PerTryTimeout`], which may be retried.
    PerTry,
}

/// The deadline of an attempt starting `now`: the earlier of the route's deadline (fixed at
/// the request's arrival, after any fault delay) and `now + per_try`. On a tie the route
/// wins, since no time would be left for a retry anyway. `None`: unbounded.
pub fn attempt_deadline(
    now: Instant,
    route_deadline: Option<Instant>,
    per_try: Option<Duration>,
) -> Option<(Instant, TimeoutKind)> {
    let per_try = per_try.and_then(|d| now.checked_add(d));
    match (route_deadline, per_try) {
        (Some(r), Some(p)) if p < r => Some((p, TimeoutKind::PerTry)),
        (Some(r), _) => Some((r, TimeoutKind::Route)),
        (None, Some(p)) => Some((p, TimeoutKind::PerTry)),
        (None, None) => None,
    }
}
