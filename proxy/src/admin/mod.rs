//! The admin listener (15020): health for the orchestrator, metrics for Prometheus, and the
//! config dump that `weftctl proxy-config` reads. Off the data path, so it may take its time.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::identity::{CertInfo, Certified};
use crate::model::{Cluster, Inbound, Mesh, Service, SharedSnapshot};
use crate::telemetry::Metrics;
use crate::xds::XdsStatus;

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
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/config_dump", get(config_dump))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin router until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "admin server failed");
    }
}

async fn ready(State(s): State<AdminState>) -> Response {
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
