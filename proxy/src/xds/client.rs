//! The ADS stream: connect, subscribe, apply, ACK/NACK, and reconnect with backoff.
//!
//! The client owns the protocol state across streams, so a reconnect resumes where the last
//! stream stopped (SotW sends the versions held; delta sends `initial_resource_versions`).
//! While the control plane is away the data path keeps serving the last snapshot: nothing here
//! clears it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use rand::RngExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weft_api::core::Node;
use weft_api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_api::type_url;

use super::apply::Applier;
use super::state::{DeltaState, SotwState};
use crate::telemetry::Metrics;

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Delta,
    Sotw,
}

/// A failure of the stream itself (not of a response's content, which is a NACK).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

pub type ResponseStream<T> = BoxStream<'static, Result<T, TransportError>>;

/// The narrow seam between the ADS logic and gRPC: open a stream, given the requests to send.
/// Tests implement it with channels; [`GrpcTransport`] with tonic.
pub trait Transport: Send + Sync + 'static {
    fn delta(
        &self,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DeltaDiscoveryResponse>, TransportError>>;

    fn sotw(
        &self,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DiscoveryResponse>, TransportError>>;
}

/// ADS over a plaintext tonic channel (TLS arrives with the identity issue).
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    /// `host:port` of the control plane.
    pub addr: String,
}

impl GrpcTransport {
    fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, TransportError> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| TransportError(format!("bad xDS address {}: {e}", self.addr)))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        // A lazy channel connects on the first call, so a refused connection surfaces as that
        // call's error (and `connect()`'s future trips a higher-ranked `Send` limitation).
        Ok(AggregatedDiscoveryServiceClient::new(
            endpoint.connect_lazy(),
        ))
    }
}

fn status_err(s: tonic::Status) -> TransportError {
    TransportError(format!("xDS stream failed: {}: {}", s.code(), s.message()))
}

impl Transport for GrpcTransport {
    fn delta(
        &self,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DeltaDiscoveryResponse>, TransportError>> {
        Box::pin(async move {
            let mut client = self.client()?;
            let rsp = client
                .delta_aggregated_resources(requests)
                .await
                .map_err(status_err)?;
            Ok(rsp.into_inner().map(|r| r.map_err(status_err)).boxed())
        })
    }

    fn sotw(
        &self,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DiscoveryResponse>, TransportError>> {
        Box::pin(async move {
            let mut client = self.client()?;
            let rsp = client
                .stream_aggregated_resources(requests)
                .await
                .map_err(status_err)?;
            Ok(rsp.into_inner().map(|r| r.map_err(status_err)).boxed())
        })
    }
}

/// Exponential backoff with full jitter (AWS's "full jitter"): the n-th retry waits a uniform
/// random time in `[0, min(cap, base * 2^n))`, so a restarted control plane is not stampeded.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The ceiling of the `attempt`-th wait (before jitter).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn delay(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ceiling))
    }
}

/// What the admin endpoint shows about the control-plane connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdsStatus {
    pub server: String,
    pub mode: Option<Mode>,
    pub connected: bool,
    /// The last stream failure, if any.
    pub last_error: Option<String>,
    /// The last rejected response, if any.
    pub last_nack: Option<String>,
    /// Whether every type has been answered once (the proxy is ready).
    pub complete: bool,
    /// Types still awaiting their first response.
    pub waiting_for: Vec<&'static str>,
}

/// Outcome of one stream: whether it received anything, and why it ended.
struct StreamEnd {
    received: bool,
    error: String,
}

/// The ADS client: one task, one stream at a time.
#[derive(Debug)]
pub struct XdsClient<T> {
    transport: T,
    mode: Mode,
    applier: Applier,
    sotw: SotwState,
    delta: DeltaState,
    status: watch::Sender<XdsStatus>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
}

impl<T: Transport> XdsClient<T> {
    pub fn new(
        transport: T,
        mode: Mode,
        node: Node,
        applier: Applier,
        status: watch::Sender<XdsStatus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        status.send_modify(|s| {
            s.mode = Some(mode);
            s.waiting_for = applier.missing();
        });
        Self {
            transport,
            mode,
            applier,
            sotw: SotwState::new(node.clone(), &type_url::ALL),
            delta: DeltaState::new(node, &type_url::ALL),
            status,
            metrics,
            backoff: Backoff::default(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Runs streams until `shutdown`, reconnecting with backoff after each failure.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let end = tokio::select! {
                end = self.run_stream() => end,
                () = shutdown.cancelled() => return,
            };
            self.metrics.set_xds_connected(false);
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(end.error.clone());
            });
            if end.received {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt, &mut rand::rng());
            attempt = attempt.saturating_add(1);
            warn!(error = %end.error, retry_in = ?delay, "xDS stream ended; serving the last config");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn run_stream(&mut self) -> StreamEnd {
        match self.mode {
            Mode::Delta => self.run_delta().await,
            Mode::Sotw => self.run_sotw().await,
        }
    }

    fn on_connected(&self) {
        info!(mode = ?self.mode, "xDS stream open");
        self.metrics.set_xds_connected(true);
        self.status.send_modify(|s| s.connected = true);
    }

    /// Bookkeeping shared by both variants once a response has been judged.
    fn on_judged(&self, type_url: &str, result: Result<(), String>, was_complete: bool) {
        let short = type_url::short_name(type_url_static(type_url));
        self.metrics.xds_update(short, result.is_ok());
        let complete = self.applier.complete();
        if complete && !was_complete {
            info!("first complete config applied; proxy is ready");
        }
        let missing = self.applier.missing();
        self.status.send_modify(|s| {
            s.complete = complete;
            s.waiting_for = missing;
            if let Err(e) = &result {
                s.last_nack = Some(format!("{short}: {e}"));
            }
        });
    }

    async fn run_delta(&mut self) -> StreamEnd {
        let (tx, rx) = mpsc::channel(16);
        for req in self.delta.on_connect() {
            // The channel has room for every type's first request.
            let _ = tx.try_send(req);
        }
        let mut responses = match self.transport.delta(ReceiverStream::new(rx)).await {
            Ok(s) => s,
            Err(e) => {
                return StreamEnd {
                    received: false,
                    error: e.0,
                };
            }
        };
        self.on_connected();
        let mut received = false;
        while let Some(rsp) = responses.next().await {
            let rsp = match rsp {
                Ok(r) => r,
                Err(e) => {
                    return StreamEnd {
                        received,
                        error: e.0,
                    };
                }
            };
            received = true;
            let was_complete = self.applier.complete();
            let req = match self.applier.apply_delta(&rsp) {
                Ok(()) => {
                    debug!(type_url = %rsp.type_url, version = %rsp.system_version_info, "ACK");
                    let updated = rsp.resources.iter().map(|r| {
                        let name = r
                            .resource_name
                            .as_ref()
                            .map(|n| n.name.as_str())
                            .filter(|n| !n.is_empty())
                            .unwrap_or(&r.name);
                        (name, r.version.as_str())
                    });
                    let removed = rsp
                        .removed_resources
                        .iter()
                        .map(String::as_str)
                        .chain(rsp.removed_resource_names.iter().map(|r| r.name.as_str()));
                    let req = self.delta.ack(&rsp.type_url, &rsp.nonce, updated, removed);
                    self.on_judged(&rsp.type_url, Ok(()), was_complete);
                    req
                }
                Err(e) => {
                    warn!(type_url = %rsp.type_url, error = %e, "NACK: keeping the previous config");
                    self.on_judged(&rsp.type_url, Err(e.to_string()), was_complete);
                    self.delta.nack(&rsp.type_url, &rsp.nonce, &e.to_string())
                }
            };
            if tx.send(req).await.is_err() {
                return StreamEnd {
                    received,
                    error: "request stream closed".into(),
                };
            }
        }
        StreamEnd {
            received,
            error: "control plane closed the stream".into(),
        }
    }

    async fn run_sotw(&mut self) -> StreamEnd {
        let (tx, rx) = mpsc::channel(16);
        for req in self.sotw.on_connect() {
            let _ = tx.try_send(req);
        }
        let mut responses = match self.transport.sotw(ReceiverStream::new(rx)).await {
            Ok(s) => s,
            Err(e) => {
                return StreamEnd {
                    received: false,
                    error: e.0,
                };
            }
        };
        self.on_connected();
        let mut received = false;
        while let Some(rsp) = responses.next().await {
            let rsp = match rsp {
                Ok(r) => r,
                Err(e) => {
                    return StreamEnd {
                        received,
                        error: e.0,
                    };
                }
            };
            received = true;
            let was_complete = self.applier.complete();
            let req = match self.applier.apply_sotw(&rsp) {
                Ok(()) => {
                    debug!(type_url = %rsp.type_url, version = %rsp.version_info, "ACK");
                    self.on_judged(&rsp.type_url, Ok(()), was_complete);
                    self.sotw.ack(&rsp.type_url, &rsp.version_info, &rsp.nonce)
                }
                Err(e) => {
                    warn!(type_url = %rsp.type_url, error = %e, "NACK: keeping the previous config");
                    self.on_judged(&rsp.type_url, Err(e.to_string()), was_complete);
                    self.sotw.nack(&rsp.type_url, &rsp.nonce, &e.to_string())
                }
            };
            if tx.send(req).await.is_err() {
                return StreamEnd {
                    received,
                    error: "request stream closed".into(),
                };
            }
        }
        StreamEnd {
            received,
            error: "control plane closed the stream".into(),
        }
    }
}

/// Metric labels need `'static` strings; unknown types are bucketed as "unknown".
fn type_url_static(t: &str) -> &'static str {
    type_url::ALL
        .iter()
        .copied()
        .find(|k| *k == t)
        .unwrap_or("unknown")
}
