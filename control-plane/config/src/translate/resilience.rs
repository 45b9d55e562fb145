//! Resilience and load balancing: VirtualService `retries` and `fault`, DestinationRule
//! `loadBalancer`, `connectionPool`, `outlierDetection` and `retryBudget`, resolved into
//! mesh.proto's messages with every default filled in, so that the proxy applies exactly
//! what it is told and `/config_dump` shows the real numbers.
//!
//! Istio's translation is the reference: `pilot/pkg/networking/core/route/retry`
//! (`ConvertPolicy`, `parseRetryOn`), `route.TranslateFault`, and the cluster builder's
//! `applyConnectionPool`, `applyOutlierDetection` and `applyLoadBalancer`. Where Istio leaves
//! a field to Envoy's default, the default is written here and in mesh.proto.

#[cfg(test)]
mod tests;

use std::time::Duration;

use weft_api::mesh::{self, retry_policy};

use crate::kinds::{
    self, ConnectionPoolSettings, DestinationRule, HttpFaultInjection, HttpRetry,
    LoadBalancerSettings, OutlierDetection, parse_duration,
};

/// Istio's default `retries.attempts` (the mesh default policy).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Envoy's default base interval of the retry back-off.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's back-off cap, as a multiple of the base interval.
pub const BACKOFF_MAX_FACTOR: u32 = 10;

/// A `retryOn` HTTP condition name (Envoy's `x-envoy-retry-on` names Istio accepts).
pub(crate) fn retry_condition(name: &str) -> Option<retry_policy::Condition> {
    use retry_policy::Condition as C;
    Some(match name {
        "5xx" => C::Status5xx,
        "gateway-error" => C::GatewayError,
        "reset" => C::Reset,
        "reset-before-request" => C::ResetBeforeRequest,
        "connect-failure" => C::ConnectFailure,
        "envoy-ratelimited" => C::EnvoyRatelimited,
        "retriable-4xx" => C::Retriable4xx,
        "refused-stream" => C::RefusedStream,
        "retriable-status-codes" => C::RetriableStatusCodes,
        "retriable-headers" => C::RetriableHeaders,
        "http3-post-connect-failure" => C::Http3PostConnectFailure,
        _ => return None,
    })
}

/// A `retryOn` gRPC condition name (Envoy's `x-envoy-retry-grpc-on` names).
pub(crate) fn grpc_retry_condition(name: &str) -> Option<retry_policy::GrpcCondition> {
    use retry_policy::GrpcCondition as G;
    Some(match name {
        "cancelled" => G::Cancelled,
        "deadline-exceeded" => G::DeadlineExceeded,
        "internal" => G::Internal,
        "resource-exhausted" => G::ResourceExhausted,
        "unavailable" => G::Unavailable,
        _ => return None,
    })
}

/// Whether `code` is an HTTP status Istio takes as a bare `retryOn` code: one Go's
/// `http.StatusText` knows (Istio's validation and `parseRetryOn` both ask it).
pub(crate) fn is_known_http_status(code: u32) -> bool {
    matches!(code,
        100..=103
        | 200..=208 | 226
        | 300..=305 | 307 | 308
        | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

/// One element of a `retryOn` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryOn {
    Http(retry_policy::Condition),
    Grpc(retry_policy::GrpcCondition),
    Status(u32),
}

/// Parses one trimmed, non-empty `retryOn` element; `None` for an unknown one.
pub(crate) fn retry_on(part: &str) -> Option<RetryOn> {
    if let Ok(code) = part.parse::<u32>() {
        return is_known_http_status(code).then_some(RetryOn::Status(code));
    }
    retry_condition(part)
        .map(RetryOn::Http)
        .or_else(|| grpc_retry_condition(part).map(RetryOn::Grpc))
}

/// gRPC status names Istio accepts in `fault.abort.grpcStatus`, with their codes.
pub(crate) fn grpc_status_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// A validated duration string as a proto duration (`None` when absent).
pub(crate) fn duration(text: Option<&String>) -> Option<prost_types::Duration> {
    text.and_then(|t| parse_duration(t).ok())
        .and_then(proto_duration)
}

/// A validated non-negative count (Istio's int32 limits, where 0 means "not set").
fn count(v: Option<i64>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

/// The retry policy of a route (Istio's `ConvertPolicy`): `retries` absent is Istio's default
/// policy; `attempts` 0 (or not written) disables retries; otherwise the default overridden
/// by what is written. `hashed`: a destination of the route balances by consistent hash, so
/// the default does not avoid previous hosts.
pub fn retry_policy(retries: Option<&HttpRetry>, hashed: bool) -> mesh::RetryPolicy {
    use retry_policy::{Condition as C, GrpcCondition as G};
    let mut out = mesh::RetryPolicy {
        attempts: DEFAULT_ATTEMPTS,
        per_try_timeout: None,
        retry_on: vec![
            C::ConnectFailure as i32,
            C::RefusedStream as i32,
            C::RetriableStatusCodes as i32,
        ],
        retriable_status_codes: vec![503],
        grpc_retry_on: vec![G::Unavailable as i32, G::Cancelled as i32],
        backoff_base_interval: None,
        backoff_max_interval: None,
        retry_ignore_previous_hosts: !hashed,
        retry_remote_localities: false,
        configured: retries.is_some(),
    };
    let mut base = DEFAULT_BACKOFF_BASE;
    if let Some(r) = retries {
        let attempts = count(r.attempts);
        if attempts == 0 {
            // Istio: "configuration is explicitly disabling the retry policy".
            return mesh::RetryPolicy {
                configured: true,
                ..Default::default()
            };
        }
        out.attempts = attempts;
        if let Some(on) = r.retry_on.as_deref().filter(|on| !on.trim().is_empty()) {
            out.retry_on.clear();
            out.retriable_status_codes.clear();
            out.grpc_retry_on.clear();
            for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match retry_on(part) {
                    Some(RetryOn::Http(c)) if !out.retry_on.contains(&(c as i32)) => {
                        out.retry_on.push(c as i32);
                    }
                    Some(RetryOn::Grpc(g)) if !out.grpc_retry_on.contains(&(g as i32)) => {
                        out.grpc_retry_on.push(g as i32);
                    }
                    Some(RetryOn::Status(code)) if !out.retriable_status_codes.contains(&code) => {
                        out.retriable_status_codes.push(code);
                    }
                    // Duplicates; unknown names never pass validation.
                    _ => {}
                }
            }
            let rsc = C::RetriableStatusCodes as i32;
            if !out.retriable_status_codes.is_empty() && !out.retry_on.contains(&rsc) {
                out.retry_on.push(rsc);
            }
        }
        out.per_try_timeout = duration(r.per_try_timeout.as_ref());
        if let Some(ignore) = r.retry_ignore_previous_hosts {
            out.retry_ignore_previous_hosts = ignore;
        }
        out.retry_remote_localities = r.retry_remote_localities.unwrap_or(false);
        if let Some(b) = r.backoff.as_deref().and_then(|b| parse_duration(b).ok()) {
            base = b;
        }
    }
    out.backoff_base_interval = proto_duration(base);
    out.backoff_max_interval = proto_duration(base.saturating_mul(BACKOFF_MAX_FACTOR));
    out
}

/// A route's fault injection (Istio's `TranslateFault`). The legacy integer `percent` of a
/// delay is used when `percentage` is absent; neither gives 0 (never), as in Istio/Envoy.
/// `exponentialDelay` and `http2Error`, which Istio's translation drops with a warning, are
/// dropped too; a fault left with neither delay nor abort is `None`.
pub fn fault(f: Option<&HttpFaultInjection>) -> Option<mesh::FaultInjection> {
    let f = f?;
    let percentage = |p: Option<&kinds::Percent>| p.and_then(|p| p.value).unwrap_or(0.0);
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed_delay = duration(d.fixed_delay.as_ref())?;
        let percentage = match (&d.percentage, d.percent) {
            (Some(p), _) => percentage(Some(p)),
            (None, Some(legacy)) => legacy as f64,
            (None, None) => 0.0,
        };
        Some(mesh::fault_injection::Delay {
            fixed_delay: Some(fixed_delay),
            percentage,
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        use mesh::fault_injection::abort::Error;
        let error = if let Some(status) = a.http_status {
            Error::HttpStatus(u32::try_from(status).ok()?)
        } else {
            Error::GrpcStatus(grpc_status_code(a.grpc_status.as_deref()?)?)
        };
        Some(mesh::fault_injection::Abort {
            error: Some(error),
            percentage: percentage(a.percentage.as_ref()),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(mesh::FaultInjection { delay, abort })
}

/// The load balancer of one cluster, from the chosen `loadBalancer` block.
pub fn load_balancer(lb: Option<&LoadBalancerSettings>) -> mesh::LoadBalancer {
    use mesh::load_balancer::Simple;
    let Some(lb) = lb else {
        return mesh::LoadBalancer::default();
    };
    let simple = match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => Simple::RoundRobin,
        Some("RANDOM") => Simple::Random,
        Some("LEAST_REQUEST" | "LEAST_CONN") => Simple::LeastRequest,
        Some("PASSTHROUGH") => Simple::Passthrough,
        _ => Simple::Unspecified,
    };
    let warmup = match (&lb.warmup, &lb.warmup_duration_secs) {
        (Some(w), _) => duration(w.duration.as_ref()).map(|d| mesh::Warmup {
            duration: Some(d),
            minimum_percent: w.minimum_percent.unwrap_or(10.0),
            aggression: w.aggression.unwrap_or(1.0),
        }),
        (None, Some(secs)) => duration(Some(secs)).map(|d| mesh::Warmup {
            duration: Some(d),
            minimum_percent: 10.0,
            aggression: 1.0,
        }),
        (None, None) => None,
    };
    mesh::LoadBalancer {
        simple: simple as i32,
        consistent_hash: lb.consistent_hash.as_ref().map(consistent_hash),
        warmup,
    }
}

fn consistent_hash(ch: &kinds::ConsistentHashLb) -> mesh::ConsistentHash {
    use mesh::consistent_hash::{Algorithm, HashKey, HttpCookie, Maglev, RingHash};
    let hash_key = if let Some(h) = &ch.http_header_name {
        Some(HashKey::HttpHeaderName(h.to_ascii_lowercase()))
    } else if let Some(c) = &ch.http_cookie {
        Some(HashKey::HttpCookie(HttpCookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: duration(c.ttl.as_ref()),
            attributes: c
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.value.clone().unwrap_or_default()))
                .collect(),
        }))
    } else if ch.use_source_ip == Some(true) {
        Some(HashKey::UseSourceIp(true))
    } else {
        ch.http_query_parameter_name
            .as_ref()
            .map(|q| HashKey::HttpQueryParameterName(q.clone()))
    };
    let algorithm = match (&ch.maglev, &ch.ring_hash) {
        (Some(m), _) => Algorithm::Maglev(Maglev {
            table_size: m
                .table_size
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
        }),
        (None, ring) => Algorithm::RingHash(RingHash {
            minimum_ring_size: ring
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
        }),
    };
    mesh::ConsistentHash {
        hash_key,
        algorithm: Some(algorithm),
    }
}

/// `connectionPool` as written (0 and unset durations keep Istio's "not set" meaning; the
/// defaults are documented on the message).
pub fn connection_pool(pool: Option<&ConnectionPoolSettings>) -> Option<mesh::ConnectionPool> {
    use mesh::connection_pool::{Http, Tcp, TcpKeepalive, http::H2UpgradePolicy};
    let pool = pool?;
    let tcp = pool.tcp.as_ref().map(|t| Tcp {
        max_connections: count(t.max_connections),
        connect_timeout: duration(t.connect_timeout.as_ref()),
        tcp_keepalive: t.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
            probes: count(k.probes),
            time: duration(k.time.as_ref()),
            interval: duration(k.interval.as_ref()),
        }),
        max_connection_duration: duration(t.max_connection_duration.as_ref()),
        idle_timeout: duration(t.idle_timeout.as_ref()),
    });
    let http = pool.http.as_ref().map(|h| Http {
        http1_max_pending_requests: count(h.http1_max_pending_requests),
        http2_max_requests: count(h.http2_max_requests),
        max_requests_per_connection: count(h.max_requests_per_connection),
        max_retries: count(h.max_retries),
        idle_timeout: duration(h.idle_timeout.as_ref()),
        max_concurrent_streams: count(h.max_concurrent_streams),
        h2_upgrade_policy: match h.h2_upgrade_policy.as_deref() {
            Some("UPGRADE") => H2UpgradePolicy::Upgrade,
            Some("DO_NOT_UPGRADE") => H2UpgradePolicy::DoNotUpgrade,
            _ => H2UpgradePolicy::Default,
        } as i32,
        use_client_protocol: h.use_client_protocol.unwrap_or(false),
    });
    Some(mesh::ConnectionPool { tcp, http })
}

/// `outlierDetection` with Istio's defaults and quirks resolved (`applyOutlierDetection`):
/// - `consecutive5xxErrors` unset is 5, 0 turns the check off;
/// - `consecutiveGatewayErrors` unset is off;
/// - the deprecated `consecutiveErrors` (> 0) counts gateway errors and turns the 5xx check
///   off, unless `consecutive5xxErrors` / `consecutiveGatewayErrors` say otherwise;
/// - `consecutiveLocalOriginFailures` applies only with `splitExternalLocalOriginErrors`,
///   and 0 or unset is then Envoy's 5;
/// - `maxEjectionPercent` 0 or unset is 10; `interval` 10s; `baseEjectionTime` 30s;
///   `minHealthPercent` unset is 0.
pub fn outlier_detection(od: Option<&OutlierDetection>) -> Option<mesh::OutlierDetection> {
    let od = od?;
    let mut consecutive_5xx = 5;
    let mut consecutive_gateway = 0;
    if let Some(legacy) = od.consecutive_errors.filter(|v| *v > 0) {
        consecutive_gateway = count(Some(legacy));
        consecutive_5xx = 0;
    }
    if let Some(v) = od.consecutive_5xx_errors {
        consecutive_5xx = count(Some(v));
    }
    if let Some(v) = od.consecutive_gateway_errors {
        consecutive_gateway = count(Some(v));
    }
    let split = od.split_external_local_origin_errors.unwrap_or(false);
    let local_origin = match count(od.consecutive_local_origin_failures) {
        _ if !split => 0,
        0 => 5,
        v => v,
    };
    Some(mesh::OutlierDetection {
        consecutive_5xx_errors: consecutive_5xx,
        consecutive_gateway_errors: consecutive_gateway,
        consecutive_local_origin_failures: local_origin,
        split_external_local_origin_errors: split,
        interval: duration(od.interval.as_ref()).or(proto_duration(Duration::from_secs(10))),
        base_ejection_time: duration(od.base_ejection_time.as_ref())
            .or(proto_duration(Duration::from_secs(30))),
        max_ejection_percent: match count(od.max_ejection_percent) {
            0 => 10,
            v => v,
        },
        min_health_percent: count(od.min_health_percent),
    })
}

/// The retry budget of one subset: the rule's `retryBudget` (a subset's replaces the
/// rule's; there is no port-level one), else Weft's default budget (20 %, 3) unless the
/// chosen connection pool sets `http.maxRetries`, which then caps retries as in Istio.
pub fn retry_budget(
    dr: Option<&DestinationRule>,
    subset: Option<&kinds::Subset>,
    pool: Option<&ConnectionPoolSettings>,
) -> Option<mesh::RetryBudget> {
    let written = subset
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(|p| p.retry_budget.as_ref())
        .or_else(|| {
            dr.and_then(|d| d.traffic_policy.as_ref())
                .and_then(|p| p.retry_budget.as_ref())
        });
    match written {
        Some(b) => Some(mesh::RetryBudget {
            percent: b.percent.unwrap_or(20.0),
            min_retry_concurrency: b.min_retry_concurrency.map_or(3, |v| count(Some(v))),
            configured: true,
        }),
        None if pool
            .and_then(|p| p.http.as_ref())
            .is_some_and(|h| count(h.max_retries) > 0) =>
        {
            None
        }
        None => Some(mesh::RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
            configured: false,
        }),
    }
}
