//! The admin listener (15020): health for the orchestrator, metrics for Prometheus, the
//! config dump that `weftctl proxy-config` reads, and `POST /quitquitquit` (drain and exit,
//! as SIGTERM; for Jobs). Off the data path, so it may take its time.
//!
//! It binds the workload's address like the other listeners, so it is reachable by anything
//! that can reach the pod: it must not be exposed beyond the pod (no Service port for it).
//! `/quitquitquit` is refused (403) unless the caller is inside the pod, as Istio's
//! pilot-agent does; the read-only endpoints stay open for the kubelet and Prometheus.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::identity::{CertInfo, Certified};
use crate::model::{Cluster, Inbound, Mesh, Service, SharedSnapshot};
use crate::telemetry::Metrics;
use crate::xds::XdsStatus;

mod lifecycle;
pub mod wait;

pub use lifecycle::{AdminPeer, Lifecycle};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub node_id: String,
    pub snapshot: SharedSnapshot,
    pub xds: watch::Receiver<XdsStatus>,
    pub metrics: Arc<Metrics>,
    /// The proxy's certificate; `None` when it runs without identity (then `/ready` does not
    /// wait for one).
    pub cert: Option<watch::Receiver<Option<Arc<Certified>>>>,
    /// Draining or not (for `/ready`), and the quit request of `/quitquitquit`.
    pub lifecycle: Lifecycle,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config_dump", get(config_dump))
        .route("/metrics", get(metrics))
        // POST only: a quit must never be one stray GET (a browser, a crawler) away.
        .route("/quitquitquit", post(quit))
        .with_state(state)
}

/// Serves the admin router until `shutdown`. `app::run` keeps it up through the drain, so
/// `/live` stays 200 and `/ready` reports the drain until the process exits.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state).into_make_service_with_connect_info::<AdminPeer>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "admin server failed");
    }
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.lifecycle.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining (shutting down; new connections are refused)\n",
        )
            .into_response();
    }
    let status = s.xds.borrow().clone();
    let no_cert = s.cert.as_ref().is_some_and(|c| c.borrow().is_none());
    if status.complete && !no_cert {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut waiting = Vec::new();
        if !status.complete {
            waiting.push(format!(
                "the first config from the control plane (types not yet received: {})",
                status.waiting_for.join(", ")
            ));
        }
        if no_cert {
            waiting.push("a certificate from the CA".to_string());
        }
        let body = format!(
            "not ready: waiting for {}{}\n",
            waiting.join(" and "),
            status
                .last_error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `POST /quitquitquit`: drain and exit, exactly as SIGTERM. For Jobs, whose main container
/// calls it when done so the pod can complete. Answers before the drain starts; the caller
/// can watch `/ready` turn 503 (the listeners are then closed).
async fn quit(State(s): State<AdminState>, extensions: axum::http::Extensions) -> Response {
    // No connection info (a router driven without a listener) is treated as remote: refusing
    // is the safe side of a check that guards a kill switch.
    let peer = extensions.get::<ConnectInfo<AdminPeer>>().map(|c| c.0);
    let Some(peer) = peer.filter(AdminPeer::is_local) else {
        return (
            StatusCode::FORBIDDEN,
            "quitquitquit is only accepted from inside the pod (loopback or the pod's own \
             address)\n",
        )
            .into_response();
    };
    if !s.lifecycle.quit_requested() {
        tracing::info!(from = %peer.remote, "quit requested on the admin port: draining");
    }
    s.lifecycle.quit();
    (StatusCode::OK, "OK: draining\n").into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The JSON shape of `/config_dump`.
#[derive(Debug, Serialize)]
pub struct ConfigDump<'a> {
    pub node_id: &'a str,
    /// The certificate in use (identity, serial, validity; never the key). Absent without
    /// identity; `null` while waiting for the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Option<CertInfo>>,
    pub xds: &'a XdsStatus,
    pub versions: &'a std::collections::BTreeMap<String, String>,
    pub mesh: Option<&'a Mesh>,
    pub inbound: Option<&'a Inbound>,
    pub services: Vec<&'a Service>,
    pub clusters: Vec<&'a Cluster>,
}

async fn config_dump(State(s): State<AdminState>) -> Response {
    let snapshot = s.snapshot.load();
    let xds = s.xds.borrow().clone();
    let identity = s
        .cert
        .as_ref()
        .map(|c| c.borrow().as_ref().map(|c| c.info()));
    let dump = ConfigDump {
        node_id: &s.node_id,
        identity,
        xds: &xds,
        versions: &snapshot.versions,
        mesh: snapshot.mesh.as_deref(),
        inbound: snapshot.inbound.as_deref(),
        services: snapshot.services.values().map(|s| s.as_ref()).collect(),
        clusters: snapshot.clusters.values().map(|c| c.as_ref()).collect(),
    };
    match serde_json::to_string_pretty(&dump) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests;
