//! Fault injection: whether this request is delayed and/or aborted, and the abort response.
//!
//! The fault applies first on a route (mesh.proto, `FaultInjection`): a delay is waited out
//! before anything else and is not counted by the route or per-try timeouts; an abort is
//! answered at once and never retried. Delay and abort are independent draws, so a request
//! may be delayed and then aborted. Requests the draws leave alone proceed normally, with
//! the route's timeout and retries.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use rand::RngExt as _;

use super::config::{AbortKind, Fault};
use super::reason::{REASON_HEADER, Reason};

/// The body (and `grpc-message`) of an injected abort, as Envoy's fault filter sends it.
pub const ABORT_BODY: &str = "fault filter abort";

/// What the fault does to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Hold the request this long first.
    pub delay: Option<Duration>,
    /// Then answer with this instead of forwarding.
    pub abort: Option<AbortKind>,
}

/// Draws the fault's delay and abort for one request, each with its own percentage.
pub fn decide_fault(fault: &Fault, rng: &mut impl rand::Rng) -> FaultDecision {
    FaultDecision {
        delay: fault
            .delay
            .filter(|d| selected(d.percentage, rng))
            .map(|d| d.fixed),
        abort: fault
            .abort
            .filter(|a| selected(a.percentage, rng))
            .map(|a| a.kind),
    }
}

/// Whether a request falls in `percentage` (0-100, fractions allowed: 0.1 is one in a
/// thousand). 0 never, 100 always, without drawing.
fn selected(percentage: f64, rng: &mut impl rand::Rng) -> bool {
    if percentage <= 0.0 {
        false
    } else if percentage >= 100.0 {
        true
    } else {
        rng.random::<f64>() * 100.0 < percentage
    }
}

/// The response answering an injected abort, with `x-weft-reason: fault_abort(...)`.
/// - HTTP: the status, `content-type: text/plain`, body `fault filter abort`.
/// - gRPC: HTTP 200, `content-type: application/grpc`, `grpc-status: <code>`,
///   `grpc-message: fault filter abort` and an empty body: a trailers-only response, so send
///   it with an empty body that ends the stream on the headers (`crate::body::empty()`).
///
/// Map the body with `crate::body::full` for the HTTP case.
pub fn abort_response(kind: AbortKind) -> Response<Bytes> {
    let reason = Reason::FaultAbort(kind);
    let mut rsp = Response::new(Bytes::new());
    *rsp.status_mut() = kind.http_status();
    let h = rsp.headers_mut();
    h.insert(REASON_HEADER, reason.header_value());
    match kind {
        AbortKind::Http(_) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            *rsp.body_mut() = Bytes::from_static(ABORT_BODY.as_bytes());
        }
        AbortKind::Grpc(code) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            // Plain ASCII without '%': valid as is under gRPC's percent-encoding rule.
            h.insert("grpc-message", HeaderValue::from_static(ABORT_BODY));
        }
    }
    rsp
}
