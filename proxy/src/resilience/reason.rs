//! Readable failures: why the proxy answered instead of the upstream.
//!
//! Every response the proxy generates in place of the upstream's carries [`REASON_HEADER`]
//! with a [`Reason`]'s `Display` string; the same string goes to the access log, and
//! [`Reason::name`] (a short, bounded set) labels the metric. The strings are part of the
//! product's contract: users grep for them, so they change only by adding variants.
//!
//! Durations print compactly ([`CompactDuration`]): `2s`, `250ms`, `1.5s`.

use std::fmt;
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::breaker::Overflow;
use super::config::AbortKind;

/// The response header naming the reason of a proxy-generated response.
pub const REASON_HEADER: &str = "x-weft-reason";

/// Why the proxy answered a request itself. `Display` gives the header / log string; each
/// variant documents it and the HTTP status the proxy answers with ([`Reason::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `timeout(<dur>)`, 504: the route's `timeout` expired (all attempts and back-offs
    /// included) before the upstream's response headers arrived.
    Timeout(Duration),
    /// `per_try_timeout(<dur>,attempt=<n>)`, 504: attempt `n` (1 = the first, not a retry)
    /// hit the retry policy's `perTryTimeout` and no retry followed (attempts used up, the
    /// condition is not in `retryOn`, or the retry budget was exhausted: see
    /// [`RetryStop`](super::retry::RetryStop) in the access log).
    PerTryTimeout { timeout: Duration, attempt: u32 },
    /// `upstream_overflow(max_pending=<n>)`, `upstream_overflow(max_requests=<n>)`,
    /// `upstream_overflow(max_connections=<n>)`, 503: a DestinationRule `connectionPool`
    /// limit of the cluster is reached (`http1MaxPendingRequests`, `http2MaxRequests`,
    /// `tcp.maxConnections`); the request was refused at once, never sent and never retried.
    UpstreamOverflow(Overflow),
    /// `no_healthy_endpoints(subset=<s>)` when the route targets a subset, else
    /// `no_healthy_endpoints(cluster=<c>)`, 503: the cluster has no endpoint that may be
    /// picked (none known, or all ejected).
    NoHealthyEndpoints(EndpointScope),
    /// `fault_abort(<status>)` (the HTTP status answered) or `fault_abort(grpc=<code>)`
    /// (HTTP 200, the gRPC code in `grpc-status`): a VirtualService `fault.abort` selected
    /// the request. Never retried.
    FaultAbort(AbortKind),
    /// `connect_timeout(<dur>)`, 503: the connection to the endpoint was not established
    /// within `connectionPool.tcp.connectTimeout`, and no retry followed.
    ConnectTimeout(Duration),
    /// `connect_failure`, 503: the connection to the endpoint failed (refused, unreachable,
    /// TLS handshake), and no retry followed.
    ConnectFailure,
    /// `upstream_reset`, 502: the upstream reset the stream or closed the connection before
    /// the response headers (HTTP/2 REFUSED_STREAM included), and no retry followed.
    UpstreamReset,
    /// `registry_only(<ip:port>)`, 502: an intercepted request to an address no service has,
    /// refused because the mesh's `outboundTrafficPolicy` is REGISTRY_ONLY.
    RegistryOnly(std::net::SocketAddr),
}

/// Which endpoints were missing, for [`Reason::NoHealthyEndpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointScope {
    /// The DestinationRule subset the route targets (`v2`).
    Subset(String),
    /// The whole cluster, when the route targets no subset (`outbound|80||reviews...`).
    Cluster(String),
}

impl Reason {
    /// The short name for metric labels: a fixed set, so label cardinality stays bounded.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::PerTryTimeout { .. } => "per_try_timeout",
            Self::UpstreamOverflow(_) => "upstream_overflow",
            Self::NoHealthyEndpoints(_) => "no_healthy_endpoints",
            Self::FaultAbort(_) => "fault_abort",
            Self::ConnectTimeout(_) => "connect_timeout",
            Self::ConnectFailure => "connect_failure",
            Self::UpstreamReset => "upstream_reset",
            Self::RegistryOnly(_) => "registry_only",
        }
    }

    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout(_) | Self::PerTryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamOverflow(_)
            | Self::NoHealthyEndpoints(_)
            | Self::ConnectTimeout(_)
            | Self::ConnectFailure => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamReset | Self::RegistryOnly(_) => StatusCode::BAD_GATEWAY,
            Self::FaultAbort(kind) => kind.http_status(),
        }
    }

    /// The [`REASON_HEADER`] value. Falls back to [`Reason::name`] if the detail cannot be a
    /// header value (a cluster or subset name with control characters: config would have
    /// to be broken, but a response must still go out).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::try_from(self.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(self.name()))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "timeout({})", CompactDuration(*d)),
            Self::PerTryTimeout { timeout, attempt } => write!(
                f,
                "per_try_timeout({},attempt={attempt})",
                CompactDuration(*timeout)
            ),
            Self::UpstreamOverflow(o) => write!(f, "upstream_overflow({o})"),
            Self::NoHealthyEndpoints(EndpointScope::Subset(s)) => {
                write!(f, "no_healthy_endpoints(subset={s})")
            }
            Self::NoHealthyEndpoints(EndpointScope::Cluster(c)) => {
                write!(f, "no_healthy_endpoints(cluster={c})")
            }
            Self::FaultAbort(AbortKind::Http(status)) => write!(f, "fault_abort({status})"),
            Self::FaultAbort(AbortKind::Grpc(code)) => write!(f, "fault_abort(grpc={code})"),
            Self::ConnectTimeout(d) => write!(f, "connect_timeout({})", CompactDuration(*d)),
            Self::ConnectFailure => f.write_str("connect_failure"),
            Self::UpstreamReset => f.write_str("upstream_reset"),
            Self::RegistryOnly(dst) => write!(f, "registry_only({dst})"),
        }
    }
}

/// A duration printed the way people write them: `2s`, `1.5s`, `250ms`, `1.25ms`, `500us`,
/// `0s`. At most three decimals, trailing zeros dropped; precision below a millisecond is
/// dropped for durations of a second or more (nobody reads `1.000250s`). Every output is
/// also a valid Istio/Go duration string. Writes straight to the formatter: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactDuration(pub Duration);

impl fmt::Display for CompactDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.as_nanos();
        if nanos == 0 {
            f.write_str("0s")
        } else if d >= Duration::from_secs(1) {
            decimal(f, d.as_secs().into(), d.subsec_millis(), "s")
        } else if nanos >= 1_000_000 {
            // Below a second these fit in u32.
            decimal(f, nanos / 1_000_000, d.subsec_micros() % 1_000, "ms")
        } else if nanos >= 1_000 {
            decimal(f, nanos / 1_000, d.subsec_nanos() % 1_000, "us")
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

/// Writes `int.frac<unit>` where `frac` is thousandths, trailing zeros trimmed.
fn decimal(f: &mut fmt::Formatter<'_>, int: u128, frac: u32, unit: &str) -> fmt::Result {
    if frac == 0 {
        return write!(f, "{int}{unit}");
    }
    let (mut frac, mut width) = (frac, 3);
    while frac % 10 == 0 {
        frac /= 10;
        width -= 1;
    }
    write!(f, "{int}.{frac:0width$}{unit}")
}

/// Serde helpers so `/config_dump` shows durations the way [`CompactDuration`] prints them.
pub(super) mod serde_duration {
    use std::time::Duration;

    use serde::Serializer;

    use super::CompactDuration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&CompactDuration(*d))
    }

    pub(crate) mod option {
        use std::time::Duration;

        use serde::Serializer;

        use super::CompactDuration;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&CompactDuration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}
