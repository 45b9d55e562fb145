//! Every failure the proxy answers on its own, and the one place that turns it into a response.
//!
//! DESIGN.md forbids silent failures: each generated response carries a `weft-proxy-error`
//! header with a stable, greppable code, an `x-weft-reason` header with the reason and its
//! parameters (`per_try_timeout(2s,attempt=3)`, see [`Reason`]), and a body that says why in
//! words. Metrics, the access log and the response all read the same [`ProxyError`], so they
//! cannot disagree.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::resilience::{REASON_HEADER, Reason};

/// Header naming the proxy's own error, like Envoy's response flags but readable.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

/// What went wrong. `code()` is the header value and part of the product's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed for a proxy (no authority, bad port...).
    BadRequest,
    /// No service is known for the requested host (or port).
    NoRoute,
    /// A route named a cluster the proxy has no config for.
    NoCluster,
    /// The cluster exists but has no endpoints.
    NoHealthyUpstream,
    /// The TCP (or mesh) connection to the chosen endpoint failed.
    UpstreamConnectFailed,
    /// The upstream accepted the connection but the exchange failed.
    UpstreamReset,
    /// Inbound: the destination port is not one the workload serves.
    PortNotServed,
    /// Inbound: no workload config has arrived yet.
    NotReady,
    /// The TLS handshake to the peer proxy failed (unknown issuer, expired, no certificate...).
    UpstreamTlsFailed,
    /// The cluster asks for upstream TLS this proxy cannot do (MUTUAL: no client certificate
    /// on the wire yet), or its TLS settings could not be loaded.
    UpstreamTlsUnsupported,
    /// The peer proxy presented a SPIFFE ID outside the identities expected (secure naming).
    UpstreamIdentityMismatch,
    /// Inbound: plaintext to a port whose PeerAuthentication mode is STRICT.
    MtlsRequired,
    /// Inbound: mTLS to a port whose PeerAuthentication mode is DISABLE.
    MtlsDisabled,
    /// The route's timeout or an attempt's per-try timeout expired (504).
    Timeout,
    /// A DestinationRule `connectionPool` limit refused the request (503).
    UpstreamOverflow,
    /// The connection to the endpoint/peer was not made (TCP and TLS) within the cluster's
    /// `connectionPool.tcp.connectTimeout` (503).
    UpstreamConnectTimeout,
    /// The HTTP/2 upstream refused the stream (RST_STREAM REFUSED_STREAM): it did not
    /// process the request (503 as an error kind; after the retry loop the response carries
    /// the `upstream_reset` reason and its status).
    UpstreamRefusedStream,
    /// Intercepted traffic to a destination no service has, under `outboundTrafficPolicy:
    /// REGISTRY_ONLY` (502, `registry_only(<ip:port>)`).
    RegistryOnly,
}

/// Who is to blame, for logs and (later) retry and breaker decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Downstream,
    Upstream,
    Policy,
    Internal,
}

/// A failure answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub origin: Origin,
    /// Whether trying another endpoint could succeed (read by the resilience issue).
    pub retryable: bool,
    /// The human explanation, sent as the response body.
    pub detail: String,
    /// The resilience reason, when one applies; otherwise the header carries the kind's
    /// [`ErrorKind::reason_name`].
    pub reason: Option<Reason>,
}

// === impl ErrorKind ===

impl ErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::NoRoute => "no-route",
            Self::NoCluster => "no-cluster",
            Self::NoHealthyUpstream => "no-healthy-upstream",
            Self::UpstreamConnectFailed => "upstream-connect-failed",
            Self::UpstreamReset => "upstream-reset",
            Self::PortNotServed => "port-not-served",
            Self::NotReady => "not-ready",
            Self::UpstreamTlsFailed => "upstream-tls-failed",
            Self::UpstreamIdentityMismatch => "upstream-identity-mismatch",
            Self::UpstreamTlsUnsupported => "upstream-tls-unsupported",
            Self::MtlsRequired => "mtls-required",
            Self::MtlsDisabled => "mtls-disabled",
            Self::Timeout => "timeout",
            Self::UpstreamOverflow => "upstream-overflow",
            Self::UpstreamConnectTimeout => "upstream-connect-timeout",
            Self::UpstreamRefusedStream => "upstream-refused-stream",
            Self::RegistryOnly => "registry-only",
        }
    }

    /// The `x-weft-reason` value of an error without a more precise [`Reason`]: the code in
    /// the reasons' snake case (`no_route`, `mtls_required`).
    pub fn reason_name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NoRoute => "no_route",
            Self::NoCluster => "no_cluster",
            Self::NoHealthyUpstream => "no_healthy_endpoints",
            Self::UpstreamConnectFailed => "connect_failure",
            Self::UpstreamReset => "upstream_reset",
            Self::PortNotServed => "port_not_served",
            Self::NotReady => "not_ready",
            Self::UpstreamTlsFailed => "upstream_tls_failed",
            Self::UpstreamIdentityMismatch => "upstream_identity_mismatch",
            Self::UpstreamTlsUnsupported => "upstream_tls_unsupported",
            Self::MtlsRequired => "mtls_required",
            Self::MtlsDisabled => "mtls_disabled",
            Self::Timeout => "timeout",
            Self::UpstreamOverflow => "upstream_overflow",
            Self::UpstreamConnectTimeout => "connect_timeout",
            Self::UpstreamRefusedStream => "upstream_reset",
            Self::RegistryOnly => "registry_only",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::NoRoute | Self::PortNotServed => StatusCode::NOT_FOUND,
            Self::NoCluster
            | Self::NoHealthyUpstream
            | Self::UpstreamConnectFailed
            | Self::NotReady
            | Self::UpstreamTlsFailed
            | Self::UpstreamTlsUnsupported
            | Self::UpstreamIdentityMismatch
            | Self::UpstreamOverflow
            | Self::UpstreamConnectTimeout
            | Self::UpstreamRefusedStream => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::MtlsRequired | Self::MtlsDisabled => StatusCode::FORBIDDEN,
            Self::UpstreamReset | Self::RegistryOnly => StatusCode::BAD_GATEWAY,
        }
    }

    fn origin(self) -> Origin {
        match self {
            Self::BadRequest => Origin::Downstream,
            Self::NoRoute
            | Self::NoCluster
            | Self::PortNotServed
            | Self::UpstreamTlsUnsupported
            | Self::RegistryOnly => Origin::Policy,
            Self::NoHealthyUpstream
            | Self::UpstreamConnectFailed
            | Self::UpstreamReset
            | Self::UpstreamTlsFailed
            | Self::UpstreamIdentityMismatch
            | Self::Timeout
            | Self::UpstreamOverflow
            | Self::UpstreamConnectTimeout
            | Self::UpstreamRefusedStream => Origin::Upstream,
            Self::MtlsRequired | Self::MtlsDisabled => Origin::Policy,
            Self::NotReady => Origin::Internal,
        }
    }
}

// === impl ProxyError ===

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            origin: kind.origin(),
            // Nothing reached the upstream's application: another endpoint (or stream) may do.
            retryable: matches!(
                kind,
                ErrorKind::UpstreamConnectFailed
                    | ErrorKind::UpstreamConnectTimeout
                    | ErrorKind::UpstreamRefusedStream
            ),
            detail: detail.into(),
            reason: None,
        }
    }

    /// This error, answered with `reason`'s status and `x-weft-reason`.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The status of the response made for this error.
    pub fn status(&self) -> StatusCode {
        self.reason
            .as_ref()
            .map_or_else(|| self.kind.status(), Reason::status)
    }

    /// The short, bounded reason name for metric labels.
    pub fn reason_name(&self) -> &'static str {
        self.reason
            .as_ref()
            .map_or_else(|| self.kind.reason_name(), Reason::name)
    }

    /// The `x-weft-reason` value.
    pub fn reason_header(&self) -> HeaderValue {
        match &self.reason {
            Some(r) => r.header_value(),
            None => HeaderValue::from_static(self.kind.reason_name()),
        }
    }

    /// The synthetic response for a gRPC request: a trailers-only response (HTTP 200, the
    /// code in `grpc-status`, the detail in `grpc-message`) as gRPC clients expect, mapped
    /// from the HTTP status as gRPC's HTTP-to-gRPC table says, except that a timeout is
    /// DEADLINE_EXCEEDED. `weft-proxy-error` and `x-weft-reason` are there too.
    pub fn to_grpc_response(&self) -> Response<Body> {
        let mut rsp = Response::new(body::empty());
        let code = grpc_code(self.kind, self.status());
        let h = rsp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::try_from(percent_encode(&format!("weft: {}", self.detail))) {
            h.insert("grpc-message", v);
        }
        h.insert(
            PROXY_ERROR_HEADER,
            HeaderValue::from_static(self.kind.code()),
        );
        h.insert(REASON_HEADER, self.reason_header());
        rsp
    }

    /// [`ProxyError::to_grpc_response`] for gRPC requests, [`ProxyError::to_response`]
    /// otherwise.
    pub fn to_response_for(&self, grpc: bool) -> Response<Body> {
        if grpc {
            self.to_grpc_response()
        } else {
            self.to_response()
        }
    }

    /// The synthetic response for this error: status, `weft-proxy-error`, and a text body.
    pub fn to_response(&self) -> Response<Body> {
        let text = format!("weft: {}\n", self.detail);
        let mut rsp = Response::new(body::full(Bytes::from(text)));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(
            PROXY_ERROR_HEADER,
            HeaderValue::from_static(self.kind.code()),
        );
        h.insert(REASON_HEADER, self.reason_header());
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|;...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// gRPC's status for a proxy error (grpc/doc/http-grpc-status-mapping.md, plus timeouts).
fn grpc_code(kind: ErrorKind, status: StatusCode) -> u16 {
    if kind == ErrorKind::Timeout {
        return 4; // DEADLINE_EXCEEDED
    }
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%` itself.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn responses_say_why() {
        let e = ProxyError::new(
            ErrorKind::NoRoute,
            "no service named reviews:9080 is known to this proxy",
        );
        let rsp = e.to_response();
        assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "no-route");
        assert_eq!(rsp.headers()[REASON_HEADER], "no_route");
        assert_eq!(e.origin, Origin::Policy);
        assert!(!e.retryable);
        assert!(ProxyError::new(ErrorKind::UpstreamConnectFailed, "x").retryable);
    }

    #[test]
    fn grpc_requests_get_trailers_only_answers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        assert!(!is_grpc(&http::HeaderMap::new()));

        let e = ProxyError::new(ErrorKind::NoRoute, "no service named a:1 — 100% unknown");
        let rsp = e.to_response_for(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "12");
        assert_eq!(
            rsp.headers()["grpc-message"],
            "weft: no service named a:1 %E2%80%94 100%25 unknown"
        );
        assert_eq!(rsp.headers()[REASON_HEADER], "no_route");
        let timeout = ProxyError::new(ErrorKind::Timeout, "late");
        assert_eq!(timeout.to_grpc_response().headers()["grpc-status"], "4");
        let overflow = ProxyError::new(ErrorKind::UpstreamOverflow, "full");
        assert_eq!(overflow.to_grpc_response().headers()["grpc-status"], "14");
    }

    #[test]
    fn a_reason_sets_status_and_header() {
        use std::time::Duration;
        let e = ProxyError::new(ErrorKind::Timeout, "the route's timeout (2s) expired")
            .with_reason(Reason::PerTryTimeout {
                timeout: Duration::from_secs(2),
                attempt: 3,
            });
        let rsp = e.to_response();
        assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "timeout");
        assert_eq!(
            rsp.headers()[REASON_HEADER],
            "per_try_timeout(2s,attempt=3)"
        );
        assert_eq!(e.reason_name(), "per_try_timeout");
    }
}
