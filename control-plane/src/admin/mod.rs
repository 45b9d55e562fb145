//! The admin HTTP server: readiness for orchestrators, metrics for Prometheus, and debug views
//! for operators and `weftctl` (what each proxy was sent and acknowledged; what config is wrong).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sources::{ConfigDiagnostic, ConfigState};
use crate::xds::syncz::{ProxySync, SyncRegistry};

/// Whether the control plane is ready to serve: set once the first config load is published
/// and the xDS listener is bound.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the control plane ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Readiness, for `/ready`.
    pub readiness: Readiness,
    /// Metrics, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Open streams, for `/debug/syncz`.
    pub syncz: Arc<SyncRegistry>,
    /// The published config, for `/debug/diagnostics` and the config gauges.
    pub config: watch::Receiver<ConfigState>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live" }))
        .route("/metrics", get(metrics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/diagnostics", get(diagnostics))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Config gauges are read from the published state at scrape time rather than pushed by
    // the source, so the source knows nothing about metrics.
    let (generation, errors) = {
        let config = state.config.borrow();
        (config.generation, config.errors())
    };
    state
        .metrics
        .model_generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));
    state
        .metrics
        .config_errors
        .set(i64::try_from(errors).unwrap_or(i64::MAX));
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response(),
    }
}

async fn syncz(State(state): State<AdminState>) -> Json<Vec<ProxySync>> {
    Json(state.syncz.list())
}

async fn diagnostics(State(state): State<AdminState>) -> Json<Vec<ConfigDiagnostic>> {
    Json(state.config.borrow().diagnostics.to_vec())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::sources::Severity;

    fn mk_state() -> (AdminState, watch::Sender<ConfigState>) {
        let (tx, config) = watch::channel(ConfigState::default());
        let state = AdminState {
            readiness: Readiness::default(),
            metrics: Arc::new(Metrics::new()),
            syncz: Arc::new(SyncRegistry::default()),
            config,
        };
        (state, tx)
    }

    async fn get(state: &AdminState, path: &str) -> (StatusCode, String) {
        let resp = router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_follows_readiness() {
        let (state, _tx) = mk_state();
        assert_eq!(
            get(&state, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set_ready();
        assert_eq!(
            get(&state, "/ready").await,
            (StatusCode::OK, "ready".into())
        );
        assert_eq!(get(&state, "/live").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn diagnostics_and_config_gauges() {
        let (state, tx) = mk_state();
        tx.send_replace(ConfigState {
            generation: 3,
            diagnostics: Arc::from(vec![ConfigDiagnostic {
                file: Some("vs.yaml".into()),
                line: 4,
                column: 7,
                object: Some("VirtualService default/reviews".into()),
                field: "spec.http[0]".into(),
                message: "no route".into(),
                severity: Severity::Error,
                text: "vs.yaml:4:7: VirtualService default/reviews: spec.http[0]: no route".into(),
            }]),
        });
        let (status, body) = get(&state, "/debug/diagnostics").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json[0]["line"], 4);
        assert_eq!(json[0]["severity"], "error");
        assert_eq!(json[0]["field"], "spec.http[0]");

        let (_, text) = get(&state, "/metrics").await;
        assert!(text.contains("weft_control_config_errors 1"), "{text}");
        assert!(text.contains("weft_control_model_generation 3"), "{text}");
    }

    #[tokio::test]
    async fn syncz_lists_open_streams() {
        let (state, _tx) = mk_state();
        let _entry = state.syncz.open("a.ns", "delta");
        let (_, body) = get(&state, "/debug/syncz").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json[0]["node_id"], "a.ns");
        assert_eq!(json[0]["stream"], "delta");
        assert!(json[0]["connected_at"].as_str().unwrap().ends_with('Z'));
    }
}
