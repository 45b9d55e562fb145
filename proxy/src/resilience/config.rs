//! Resilience config, converted from the wire and validated once per snapshot.
//!
//! The control plane resolves Istio's defaults (mesh.proto says which), so these types hold
//! what the proxy applies; the few defaults resolved here are those mesh.proto assigns to the
//! proxy ("unset: 10s", "0: unlimited"). Each `from_proto` fails with `"<field>: <why>"`, the
//! field path relative to the message converted, so the caller prefixes its own path (e.g.
//! `http[2].retries.`) and NACKs with it.
//!
//! Everything derives `Serialize` for `/config_dump`: durations print as `2s` / `250ms`, an
//! unlimited limit as `null`.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::{Serialize, Serializer};
use weft_api::mesh as pb;

use super::reason::serde_duration;

/// Envoy's default base interval of the retry back-off (used when the control plane predates
/// `backoff_base_interval`).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's default back-off cap, as a multiple of the base interval.
pub const DEFAULT_BACKOFF_MAX_FACTOR: u32 = 10;
/// `connectionPool.tcp.connectTimeout` when unset (Istio's mesh-wide `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `connectionPool.{tcp,http}.idleTimeout` when unset (Envoy's default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `connectionPool.http.maxConcurrentStreams` when 0 (Envoy's default, 2^31-1).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = (1 << 31) - 1;

// === durations ===

/// A wire duration as a `std` one; `None` when unset. Negative or out-of-range durations are
/// refused with the field's name.
fn duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, String> {
    d.map(|d| {
        Duration::try_from(*d).map_err(|_| {
            format!(
                "{field}: {}s{}ns is not a valid duration",
                d.seconds, d.nanos
            )
        })
    })
    .transpose()
}

/// Like [`duration`], where zero means "not set" (mesh.proto's convention for most fields).
fn nonzero_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, String> {
    Ok(duration(field, d)?.filter(|d| !d.is_zero()))
}

/// `HttpRoute.timeout`: the bound on the whole request. Unset or zero: no timeout (Istio's
/// default; Envoy's own 15s does not apply). Errors name the field `timeout`.
pub fn route_timeout(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, String> {
    nonzero_duration("timeout", d)
}

fn percentage(field: &str, p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{field}: {p} is not a percentage (0-100)"))
    }
}

/// 0 on the wire means "no limit" (Istio's "not set").
fn limit(n: u32) -> Option<u32> {
    (n != 0).then_some(n)
}

// === retry conditions ===

/// One retry condition: Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` names, which
/// are also what Istio's `retryOn` accepts (gRPC names mixed in). See
/// [`retriable`](super::retry::retriable) for exactly what each one retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RetryCondition {
    Status5xx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    EnvoyRatelimited,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    RetriableHeaders,
    Http3PostConnectFailure,
    GrpcCancelled,
    GrpcDeadlineExceeded,
    GrpcInternal,
    GrpcResourceExhausted,
    GrpcUnavailable,
}

impl RetryCondition {
    /// Every condition, in bit order.
    pub const ALL: [Self; 16] = [
        Self::Status5xx,
        Self::GatewayError,
        Self::Reset,
        Self::ResetBeforeRequest,
        Self::ConnectFailure,
        Self::EnvoyRatelimited,
        Self::Retriable4xx,
        Self::RefusedStream,
        Self::RetriableStatusCodes,
        Self::RetriableHeaders,
        Self::Http3PostConnectFailure,
        Self::GrpcCancelled,
        Self::GrpcDeadlineExceeded,
        Self::GrpcInternal,
        Self::GrpcResourceExhausted,
        Self::GrpcUnavailable,
    ];

    /// The Envoy / Istio name (`5xx`, `connect-failure`, `unavailable`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Status5xx => "5xx",
            Self::GatewayError => "gateway-error",
            Self::Reset => "reset",
            Self::ResetBeforeRequest => "reset-before-request",
            Self::ConnectFailure => "connect-failure",
            Self::EnvoyRatelimited => "envoy-ratelimited",
            Self::Retriable4xx => "retriable-4xx",
            Self::RefusedStream => "refused-stream",
            Self::RetriableStatusCodes => "retriable-status-codes",
            Self::RetriableHeaders => "retriable-headers",
            Self::Http3PostConnectFailure => "http3-post-connect-failure",
            Self::GrpcCancelled => "cancelled",
            Self::GrpcDeadlineExceeded => "deadline-exceeded",
            Self::GrpcInternal => "internal",
            Self::GrpcResourceExhausted => "resource-exhausted",
            Self::GrpcUnavailable => "unavailable",
        }
    }

    /// For the gRPC conditions, the `grpc-status` code they match.
    pub fn grpc_code(self) -> Option<u32> {
        match self {
            Self::GrpcCancelled => Some(1),
            Self::GrpcDeadlineExceeded => Some(4),
            Self::GrpcResourceExhausted => Some(8),
            Self::GrpcInternal => Some(13),
            Self::GrpcUnavailable => Some(14),
            _ => None,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }

    fn from_http(c: pb::retry_policy::Condition) -> Option<Self> {
        use pb::retry_policy::Condition as C;
        Some(match c {
            C::Unspecified => return None,
            C::Status5xx => Self::Status5xx,
            C::GatewayError => Self::GatewayError,
            C::Reset => Self::Reset,
            C::ResetBeforeRequest => Self::ResetBeforeRequest,
            C::ConnectFailure => Self::ConnectFailure,
            C::EnvoyRatelimited => Self::EnvoyRatelimited,
            C::Retriable4xx => Self::Retriable4xx,
            C::RefusedStream => Self::RefusedStream,
            C::RetriableStatusCodes => Self::RetriableStatusCodes,
            C::RetriableHeaders => Self::RetriableHeaders,
            C::Http3PostConnectFailure => Self::Http3PostConnectFailure,
        })
    }

    fn from_grpc(c: pb::retry_policy::GrpcCondition) -> Option<Self> {
        use pb::retry_policy::GrpcCondition as G;
        Some(match c {
            G::Unspecified => return None,
            G::Cancelled => Self::GrpcCancelled,
            G::DeadlineExceeded => Self::GrpcDeadlineExceeded,
            G::Internal => Self::GrpcInternal,
            G::ResourceExhausted => Self::GrpcResourceExhausted,
            G::Unavailable => Self::GrpcUnavailable,
        })
    }
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`RetryCondition`]s in one word: checked on every failed attempt, so a bit test
/// beats walking a list. Serializes as the list of names, like Istio's `retryOn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const EMPTY: Self = Self(0);

    pub fn contains(self, c: RetryCondition) -> bool {
        self.0 & c.bit() != 0
    }

    /// Whether any of `cs` is in the set.
    pub fn any(self, cs: &[RetryCondition]) -> bool {
        cs.iter().any(|c| self.contains(*c))
    }

    #[must_use]
    pub fn with(self, c: RetryCondition) -> Self {
        Self(self.0 | c.bit())
    }

    pub fn insert(&mut self, c: RetryCondition) {
        self.0 |= c.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The conditions present, in bit order.
    pub fn iter(self) -> impl Iterator<Item = RetryCondition> {
        RetryCondition::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// Whether a gRPC condition of the set matches `grpc-status` `code`.
    pub fn matches_grpc(self, code: u32) -> bool {
        // Cheap exit for the common HTTP-only policy.
        const GRPC: u32 = (1 << RetryCondition::GrpcCancelled as u8)
            | (1 << RetryCondition::GrpcDeadlineExceeded as u8)
            | (1 << RetryCondition::GrpcInternal as u8)
            | (1 << RetryCondition::GrpcResourceExhausted as u8)
            | (1 << RetryCondition::GrpcUnavailable as u8);
        self.0 & GRPC != 0 && self.iter().any(|c| c.grpc_code() == Some(code))
    }
}

impl FromIterator<RetryCondition> for RetryOn {
    fn from_iter<I: IntoIterator<Item = RetryCondition>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(RetryCondition::name))
    }
}

// === RetryPolicy ===

/// A route's retry policy (`HttpRoute.retries`), as the proxy applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0: the route does not retry.
    pub attempts: u32,
    /// Bound on each attempt, the first included; `None`: only the route timeout bounds it.
    #[serde(with = "serde_duration::option")]
    pub per_try_timeout: Option<Duration>,
    /// HTTP and gRPC conditions together, as Istio's `retryOn` mixes them.
    pub retry_on: RetryOn,
    /// Statuses retried under `retriable-status-codes` (no effect without that condition).
    pub retriable_status_codes: Vec<u16>,
    /// The back-off before retry n is uniform in [0, min(base * 2^(n-1), max)).
    #[serde(with = "serde_duration")]
    pub backoff_base: Duration,
    #[serde(with = "serde_duration")]
    pub backoff_max: Duration,
    /// Prefer endpoints this request has not tried yet.
    pub ignore_previous_hosts: bool,
    /// Istio `retryRemoteLocalities`; no effect until Weft balances by locality.
    pub remote_localities: bool,
    /// Whether the VirtualService wrote `retries` (false: Istio's default policy).
    pub configured: bool,
}

impl Default for RetryPolicy {
    /// No retries: what a route without `retries` gets (a control plane that predates it).
    fn default() -> Self {
        Self {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::EMPTY,
            retriable_status_codes: Vec::new(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_BASE.saturating_mul(DEFAULT_BACKOFF_MAX_FACTOR),
            ignore_previous_hosts: false,
            remote_localities: false,
            configured: false,
        }
    }
}

impl RetryPolicy {
    /// `HttpRoute.retries`: `None` (unset on the wire) is [`RetryPolicy::default`], no
    /// retries, as mesh.proto says.
    pub fn from_route(p: Option<&pb::RetryPolicy>) -> Result<Self, String> {
        p.map_or_else(|| Ok(Self::default()), Self::from_proto)
    }

    pub fn from_proto(p: &pb::RetryPolicy) -> Result<Self, String> {
        let mut retry_on = RetryOn::EMPTY;
        for (n, &raw) in p.retry_on.iter().enumerate() {
            // An unknown number comes from a newer control plane: refusing it (NACK, with
            // the field named) beats silently retrying less than the user asked for.
            let c = pb::retry_policy::Condition::try_from(raw)
                .ok()
                .and_then(RetryCondition::from_http)
                .ok_or_else(|| format!("retry_on[{n}]: unknown retry condition {raw}"))?;
            retry_on.insert(c);
        }
        for (n, &raw) in p.grpc_retry_on.iter().enumerate() {
            let c = pb::retry_policy::GrpcCondition::try_from(raw)
                .ok()
                .and_then(RetryCondition::from_grpc)
                .ok_or_else(|| format!("grpc_retry_on[{n}]: unknown gRPC retry condition {raw}"))?;
            retry_on.insert(c);
        }
        let mut retriable_status_codes = Vec::with_capacity(p.retriable_status_codes.len());
        for (n, &code) in p.retriable_status_codes.iter().enumerate() {
            let code = u16::try_from(code)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    format!("retriable_status_codes[{n}]: {code} is not an HTTP status")
                })?;
            if !retriable_status_codes.contains(&code) {
                retriable_status_codes.push(code);
            }
        }
        let backoff_base =
            match duration("backoff_base_interval", p.backoff_base_interval.as_ref())? {
                None => DEFAULT_BACKOFF_BASE,
                Some(d) if d.is_zero() => {
                    return Err("backoff_base_interval: must be greater than zero".into());
                }
                Some(d) => d,
            };
        let backoff_max = duration("backoff_max_interval", p.backoff_max_interval.as_ref())?
            .unwrap_or_else(|| backoff_base.saturating_mul(DEFAULT_BACKOFF_MAX_FACTOR));
        if backoff_max < backoff_base {
            return Err(format!(
                "backoff_max_interval: {} is less than backoff_base_interval {}",
                super::reason::CompactDuration(backoff_max),
                super::reason::CompactDuration(backoff_base)
            ));
        }
        Ok(Self {
            attempts: p.attempts,
            // Zero is "unset", as for Envoy's per_try_timeout.
            per_try_timeout: nonzero_duration("per_try_timeout", p.per_try_timeout.as_ref())?,
            retry_on,
            retriable_status_codes,
            backoff_base,
            backoff_max,
            ignore_previous_hosts: p.retry_ignore_previous_hosts,
            remote_localities: p.retry_remote_localities,
            configured: p.configured,
        })
    }

    /// Whether the route retries at all.
    pub fn enabled(&self) -> bool {
        self.attempts > 0 && !self.retry_on.is_empty()
    }
}

// === Fault ===

/// A route's fault injection (`HttpRoute.fault`). A `Fault` with neither part is valid and
/// does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultDelay {
    #[serde(with = "serde_duration")]
    pub fixed: Duration,
    /// Share of requests delayed, 0-100.
    pub percentage: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultAbort {
    pub kind: AbortKind,
    /// Share of requests aborted, 0-100.
    pub percentage: f64,
}

/// What an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortKind {
    /// This HTTP status (200-599).
    Http(u16),
    /// This gRPC status code (0-16), in a trailers-only HTTP 200 response.
    Grpc(u32),
}

impl AbortKind {
    /// The HTTP status of the abort response: the status itself, or 200 for gRPC.
    pub fn http_status(self) -> StatusCode {
        match self {
            // Validated at conversion; the fallback only keeps this total.
            Self::Http(s) => StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Self::Grpc(_) => StatusCode::OK,
        }
    }
}

impl Fault {
    pub fn from_proto(p: &pb::FaultInjection) -> Result<Self, String> {
        let delay = p
            .delay
            .as_ref()
            .map(|d| {
                let fixed = duration("delay.fixed_delay", d.fixed_delay.as_ref())?
                    .ok_or("delay.fixed_delay: required")?;
                Ok::<_, String>(FaultDelay {
                    fixed,
                    percentage: percentage("delay.percentage", d.percentage)?,
                })
            })
            .transpose()?;
        let abort = p
            .abort
            .as_ref()
            .map(|a| {
                use pb::fault_injection::abort::Error;
                let kind = match a.error {
                    Some(Error::HttpStatus(s)) => AbortKind::Http(
                        u16::try_from(s)
                            .ok()
                            .filter(|s| (200..=599).contains(s))
                            .ok_or_else(|| {
                                format!("abort.http_status: {s} is not an HTTP status (200-599)")
                            })?,
                    ),
                    Some(Error::GrpcStatus(c)) if c <= 16 => AbortKind::Grpc(c),
                    Some(Error::GrpcStatus(c)) => {
                        return Err(format!(
                            "abort.grpc_status: {c} is not a gRPC status code (0-16)"
                        ));
                    }
                    None => return Err("abort.error: http_status or grpc_status required".into()),
                };
                Ok(FaultAbort {
                    kind,
                    percentage: percentage("abort.percentage", a.percentage)?,
                })
            })
            .transpose()?;
        Ok(Self { delay, abort })
    }
}

// === PoolLimits ===

/// A cluster's `connectionPool`, every default resolved. `None` limits are unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: connections to all endpoints of the cluster. On the HTTP path
    /// it bounds concurrent exchanges (see [`ClusterLimits`](super::breaker::ClusterLimits)).
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout`; unset: 10s.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// `tcp.tcpKeepalive`; `None`: the transport's default (`transport::DEFAULT_KEEPALIVE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `tcp.maxConnectionDuration`; `None`: connections live until idle or closed.
    #[serde(with = "serde_duration::option")]
    pub max_connection_duration: Option<Duration>,
    /// `tcp.idleTimeout` (opaque TCP: no bytes either way); unset: 1h; `None`: never.
    #[serde(with = "serde_duration::option")]
    pub tcp_idle_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`: requests waiting for a free slot. (`Some(0)`, which
    /// the wire cannot express, would mean no queue at all.)
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: active requests to the cluster, any protocol.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection` (1 disables keep-alive).
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: retries outstanding at once; ignored with a retry budget.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: close an upstream connection idle this long; unset or 0: 1h.
    #[serde(with = "serde_duration")]
    pub http_idle_timeout: Duration,
    /// `http.maxConcurrentStreams` per HTTP/2 connection; 0 on the wire: 2^31-1.
    pub max_concurrent_streams: u32,
    pub h2_upgrade_policy: H2UpgradePolicy,
    pub use_client_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    /// `None`: the OS default (Linux: 9).
    pub probes: Option<u32>,
    /// `None`: the OS default (Linux: 2h).
    #[serde(with = "serde_duration::option")]
    pub time: Option<Duration>,
    /// `None`: the OS default (Linux: 75s).
    #[serde(with = "serde_duration::option")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh-wide setting (Istio's default: do not upgrade).
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

impl Default for PoolLimits {
    /// No `connectionPool`: no limits, Istio's default timeouts.
    fn default() -> Self {
        Self {
            max_connections: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tcp_keepalive: None,
            max_connection_duration: None,
            tcp_idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            http1_max_pending_requests: None,
            http2_max_requests: None,
            max_requests_per_connection: None,
            max_retries: None,
            http_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            h2_upgrade_policy: H2UpgradePolicy::Default,
            use_client_protocol: false,
        }
    }
}

impl PoolLimits {
    /// `Cluster.connection_pool`; `None` (unset) is [`PoolLimits::default`].
    pub fn from_proto(p: Option<&pb::ConnectionPool>) -> Result<Self, String> {
        let mut out = Self::default();
        let Some(p) = p else {
            return Ok(out);
        };
        if let Some(t) = &p.tcp {
            out.max_connections = limit(t.max_connections);
            out.connect_timeout =
                nonzero_duration("tcp.connect_timeout", t.connect_timeout.as_ref())?
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            out.tcp_keepalive = t
                .tcp_keepalive
                .as_ref()
                .map(|k| {
                    Ok::<_, String>(TcpKeepalive {
                        probes: limit(k.probes),
                        time: nonzero_duration("tcp.tcp_keepalive.time", k.time.as_ref())?,
                        interval: nonzero_duration(
                            "tcp.tcp_keepalive.interval",
                            k.interval.as_ref(),
                        )?,
                    })
                })
                .transpose()?;
            out.max_connection_duration = nonzero_duration(
                "tcp.max_connection_duration",
                t.max_connection_duration.as_ref(),
            )?;
            // Unset: 1h; zero: never (mesh.proto says so for this field explicitly).
            out.tcp_idle_timeout = match duration("tcp.idle_timeout", t.idle_timeout.as_ref())? {
                None => Some(DEFAULT_IDLE_TIMEOUT),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            };
        }
        if let Some(h) = &p.http {
            use pb::connection_pool::http::H2UpgradePolicy as Wire;
            out.http1_max_pending_requests = limit(h.http1_max_pending_requests);
            out.http2_max_requests = limit(h.http2_max_requests);
            out.max_requests_per_connection = limit(h.max_requests_per_connection);
            out.max_retries = limit(h.max_retries);
            // mesh.proto: "every 0 (or unset duration) means the default named".
            out.http_idle_timeout = nonzero_duration("http.idle_timeout", h.idle_timeout.as_ref())?
                .unwrap_or(DEFAULT_IDLE_TIMEOUT);
            out.max_concurrent_streams =
                limit(h.max_concurrent_streams).unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS);
            out.h2_upgrade_policy = match Wire::try_from(h.h2_upgrade_policy) {
                Ok(Wire::Default) => H2UpgradePolicy::Default,
                Ok(Wire::DoNotUpgrade) => H2UpgradePolicy::DoNotUpgrade,
                Ok(Wire::Upgrade) => H2UpgradePolicy::Upgrade,
                Err(_) => {
                    return Err(format!(
                        "http.h2_upgrade_policy: unknown policy {}",
                        h.h2_upgrade_policy
                    ));
                }
            };
            out.use_client_protocol = h.use_client_protocol;
        }
        Ok(out)
    }

    /// How many requests may be active at once before new ones queue: the lower of
    /// `http2MaxRequests` and `maxConnections`. `None`: unlimited.
    pub fn request_slots(&self) -> Option<u32> {
        match (self.http2_max_requests, self.max_connections) {
            (Some(r), Some(c)) => Some(r.min(c)),
            (r, c) => r.or(c),
        }
    }
}

// === RetryBudget ===

/// A cluster's retry budget (`Cluster.retry_budget`): at most
/// max(`min_retry_concurrency`, `percent`% of active and pending requests) retries
/// outstanding at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudget {
    /// 0-100.
    pub percent: f64,
    pub min_retry_concurrency: u32,
    /// Whether the DestinationRule wrote `retryBudget` (false: Weft's default budget).
    pub configured: bool,
}

impl RetryBudget {
    pub fn from_proto(p: &pb::RetryBudget) -> Result<Self, String> {
        Ok(Self {
            percent: percentage("percent", p.percent)?,
            min_retry_concurrency: p.min_retry_concurrency,
            configured: p.configured,
        })
    }

    /// The number of retries allowed while `active` requests are active or pending.
    pub fn limit(&self, active: u64) -> u64 {
        // Multiply before dividing so 29% of 100 is 29, not 28.999... truncated to 28.
        // The float -> int cast saturates, so absurd counts cannot wrap.
        let share = (self.percent * active as f64 / 100.0) as u64;
        share.max(u64::from(self.min_retry_concurrency))
    }
}

// === ClusterPolicy ===

/// Everything a cluster's resilience state is checked against: its pool limits and its
/// retry budget. Lives in the config snapshot (replaced on every update), unlike
/// [`ClusterLimits`](super::breaker::ClusterLimits), the live counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterPolicy {
    pub pool: PoolLimits,
    /// `None`: no budget; retries are capped by `pool.max_retries` (0: unlimited) instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl ClusterPolicy {
    /// From `Cluster.connection_pool` and `Cluster.retry_budget`. Errors name the field from
    /// the cluster's root (`connection_pool.tcp.connect_timeout: ...`).
    pub fn from_proto(c: &pb::Cluster) -> Result<Self, String> {
        Ok(Self {
            pool: PoolLimits::from_proto(c.connection_pool.as_ref())
                .map_err(|e| format!("connection_pool.{e}"))?,
            retry_budget: c
                .retry_budget
                .as_ref()
                .map(RetryBudget::from_proto)
                .transpose()
                .map_err(|e| format!("retry_budget.{e}"))?,
        })
    }
}
