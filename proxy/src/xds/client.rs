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

use super::apply::{Applier, ApplyError, removed_names, resource_name};
use super::state::{DeltaState, SotwState};
use crate::telemetry::Metrics;

/// The largest xDS response the proxy reads. A first response (SotW or delta) carries every
/// resource of a type: 10,000 services' endpoints are about 6 MiB, past gRPC's default 4 MiB,
/// which left such a mesh's sidecars without config (benches W7).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

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

/// ADS over tonic: TLS (the control plane verified against `--ca-root` as "weft-control",
/// our current certificate presented when we have one), or plaintext without an identity.
#[derive(Clone)]
pub struct GrpcTransport {
    /// `host:port` of the control plane.
    pub addr: String,
    tls: Option<XdsTls>,
}

/// The current client certificate as a tonic identity; read on every (re)connect, so a
/// reconnect after a rotation presents the new certificate.
pub type ClientIdentityFn = Arc<dyn Fn() -> Option<tonic::transport::Identity> + Send + Sync>;

#[derive(Clone)]
struct XdsTls {
    ca_root_pem: String,
    identity: ClientIdentityFn,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The name the control plane's certificate must carry.
const CONTROL_PLANE_NAME: &str = "weft-control";

impl GrpcTransport {
    pub fn plaintext(addr: String) -> Self {
        Self { addr, tls: None }
    }

    pub fn with_tls(addr: String, ca_root_pem: String, identity: ClientIdentityFn) -> Self {
        Self {
            addr,
            tls: Some(XdsTls {
                ca_root_pem,
                identity,
            }),
        }
    }

    fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, TransportError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.addr))
                .map_err(|e| TransportError(format!("bad xDS address {}: {e}", self.addr)))?
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(30));
        if let Some(tls) = &self.tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_root_pem))
                .domain_name(CONTROL_PLANE_NAME);
            if let Some(id) = (tls.identity)() {
                cfg = cfg.identity(id);
            }
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| TransportError(format!("xDS TLS config: {e}")))?;
        }
        // A lazy channel connects on the first call, so a refused connection surfaces as that
        // call's error (and `connect()`'s future trips a higher-ranked `Send` limitation).
        Ok(
            AggregatedDiscoveryServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
        )
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

impl StreamEnd {
    fn new(received: bool, error: impl Into<String>) -> Self {
        Self {
            received,
            error: error.into(),
        }
    }
}

/// What differs between state of the world and delta. Everything else (open, subscribe,
/// judge, answer, report) is one loop, [`Shared::stream`], so the two variants cannot drift
/// apart in how they ACK, NACK or end.
trait Variant {
    type Request: Send + 'static;
    type Response;

    fn open<T: Transport>(
        transport: &T,
        requests: ReceiverStream<Self::Request>,
    ) -> BoxFuture<'_, Result<ResponseStream<Self::Response>, TransportError>>;

    /// The first requests of a stream: one subscription per type, with what is held.
    fn subscriptions(&self) -> Vec<Self::Request>;

    fn type_url(rsp: &Self::Response) -> &str;

    /// Applies `rsp` and builds its answer: an ACK if it applied, else a NACK.
    fn answer(
        &mut self,
        applier: &mut Applier,
        rsp: &Self::Response,
    ) -> (Result<(), ApplyError>, Self::Request);
}

impl Variant for SotwState {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn open<T: Transport>(
        transport: &T,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DiscoveryResponse>, TransportError>> {
        transport.sotw(requests)
    }

    fn subscriptions(&self) -> Vec<DiscoveryRequest> {
        self.on_connect()
    }

    fn type_url(rsp: &DiscoveryResponse) -> &str {
        &rsp.type_url
    }

    fn answer(
        &mut self,
        applier: &mut Applier,
        rsp: &DiscoveryResponse,
    ) -> (Result<(), ApplyError>, DiscoveryRequest) {
        match applier.apply_sotw(rsp) {
            Ok(()) => {
                debug!(type_url = %rsp.type_url, version = %rsp.version_info, "ACK");
                let ack = self.ack(&rsp.type_url, &rsp.version_info, &rsp.nonce);
                (Ok(()), ack)
            }
            Err(e) => {
                let nack = self.nack(&rsp.type_url, &rsp.nonce, &e.to_string());
                (Err(e), nack)
            }
        }
    }
}

impl Variant for DeltaState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn open<T: Transport>(
        transport: &T,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DeltaDiscoveryResponse>, TransportError>> {
        transport.delta(requests)
    }

    fn subscriptions(&self) -> Vec<DeltaDiscoveryRequest> {
        self.on_connect()
    }

    fn type_url(rsp: &DeltaDiscoveryResponse) -> &str {
        &rsp.type_url
    }

    fn answer(
        &mut self,
        applier: &mut Applier,
        rsp: &DeltaDiscoveryResponse,
    ) -> (Result<(), ApplyError>, DeltaDiscoveryRequest) {
        match applier.apply_delta(rsp) {
            Ok(()) => {
                debug!(type_url = %rsp.type_url, version = %rsp.system_version_info, "ACK");
                let updated = rsp
                    .resources
                    .iter()
                    .map(|r| (resource_name(r), r.version.as_str()));
                let ack = self.ack(&rsp.type_url, &rsp.nonce, updated, removed_names(rsp));
                (Ok(()), ack)
            }
            Err(e) => {
                let nack = self.nack(&rsp.type_url, &rsp.nonce, &e.to_string());
                (Err(e), nack)
            }
        }
    }
}

/// The ADS client: one task, one stream at a time.
#[derive(Debug)]
pub struct XdsClient<T> {
    transport: T,
    shared: Shared,
    sotw: SotwState,
    delta: DeltaState,
    backoff: Backoff,
}

/// What both variants' streams use: where responses go and where outcomes are reported.
#[derive(Debug)]
struct Shared {
    mode: Mode,
    applier: Applier,
    status: watch::Sender<XdsStatus>,
    metrics: Arc<Metrics>,
    /// Bound on opening a stream (gRPC connect plus the server's response headers): a control
    /// plane that accepts the connection but never answers must not stall the client forever.
    open_timeout: Duration,
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
            shared: Shared {
                mode,
                applier,
                status,
                metrics,
                open_timeout: Duration::from_secs(15),
            },
            sotw: SotwState::new(node.clone(), &type_url::ALL),
            delta: DeltaState::new(node, &type_url::ALL),
            backoff: Backoff::default(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_open_timeout(mut self, open_timeout: Duration) -> Self {
        self.shared.open_timeout = open_timeout;
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
            self.shared.metrics.set_xds_connected(false);
            self.shared.status.send_modify(|s| {
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
        match self.shared.mode {
            Mode::Delta => self.shared.stream(&self.transport, &mut self.delta).await,
            Mode::Sotw => self.shared.stream(&self.transport, &mut self.sotw).await,
        }
    }
}

// === impl Shared ===

impl Shared {
    /// One ADS stream: subscribe, then answer each response until the stream fails.
    async fn stream<T: Transport, V: Variant>(
        &mut self,
        transport: &T,
        state: &mut V,
    ) -> StreamEnd {
        let subscriptions = state.subscriptions();
        // Room for every type's first request, so they can be queued before the stream opens.
        let (tx, rx) = mpsc::channel(subscriptions.len().max(16));
        for req in subscriptions {
            let _ = tx.try_send(req);
        }
        let opened = tokio::time::timeout(
            self.open_timeout,
            V::open(transport, ReceiverStream::new(rx)),
        );
        let mut responses = match opened.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return StreamEnd::new(false, e.0),
            Err(_) => {
                let why = format!("xDS stream not opened within {:?}", self.open_timeout);
                return StreamEnd::new(false, why);
            }
        };
        info!(mode = ?self.mode, "xDS stream open");
        self.metrics.set_xds_connected(true);
        self.status.send_modify(|s| s.connected = true);

        let mut received = false;
        while let Some(rsp) = responses.next().await {
            let rsp = match rsp {
                Ok(r) => r,
                Err(e) => return StreamEnd::new(received, e.0),
            };
            received = true;
            let was_complete = self.applier.complete();
            let (result, answer) = state.answer(&mut self.applier, &rsp);
            self.report(V::type_url(&rsp), result, was_complete);
            if tx.send(answer).await.is_err() {
                return StreamEnd::new(received, "request stream closed");
            }
        }
        StreamEnd::new(received, "control plane closed the stream")
    }

    /// Metrics, logs and `/ready` state once a response has been judged.
    fn report(&self, type_url: &str, result: Result<(), ApplyError>, was_complete: bool) {
        let short = type_url::short_name(type_url_static(type_url));
        self.metrics.xds_update(short, result.is_ok());
        if let Err(e) = &result {
            warn!(%type_url, error = %e, "NACK: keeping the previous config");
        }
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
}

/// Metric labels need `'static` strings; unknown types are bucketed as "unknown".
fn type_url_static(t: &str) -> &'static str {
    type_url::ALL
        .iter()
        .copied()
        .find(|k| *k == t)
        .unwrap_or("unknown")
}
