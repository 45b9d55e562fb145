//! The ADS gRPC service: moves messages between a proxy's stream, the pure protocol state
//! ([`super::stream`]) and the proxy's snapshot in the [`Cache`]. It decides nothing itself.
//!
//! One task per stream waits on whichever comes first: a request from the proxy, a new snapshot
//! for the proxy, or shutdown (which ends the stream with `UNAVAILABLE`, so proxies reconnect to
//! another replica or to this one after a restart).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use weft_api::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_api::type_url::short_name;

use super::cache::{Cache, Subscription};
use super::stream::{DeltaStream, Event, Nonces, Protocol, SotwStream};
use super::syncz::SyncRegistry;
use crate::metrics::Metrics;

/// Responses buffered per stream before the stream task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// How long shutdown waits for open streams to drain before closing their connections.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The ADS service.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<Cache>,
    syncz: Arc<SyncRegistry>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl AdsServer {
    /// A service over `cache`; streams end when `shutdown` is cancelled.
    pub fn new(
        cache: Arc<Cache>,
        syncz: Arc<SyncRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            cache,
            syncz,
            metrics,
            shutdown,
        }
    }

    /// The tonic service, ready to add to a `Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Reads the first request, which must name the node, and subscribes it.
    async fn open<P: Protocol>(
        &self,
        inbound: &mut Streaming<P::Req>,
    ) -> Result<(P::Req, Subscription), Status> {
        // A proxy that opens a stream and says nothing must not hold up shutdown: the server
        // waits for open streams to end.
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => {
                return Err(Status::unavailable("control plane shutting down"));
            }
            first = inbound.message() => first?,
        }
        .ok_or_else(|| Status::cancelled("stream closed before its first request"))?;
        let node_id = P::node_id(&first)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument("the first request of an ADS stream must carry node.id")
            })?
            .to_string();
        let cache = Arc::clone(&self.cache);
        let id = node_id.clone();
        // Generation may take a while for a large mesh; keep it off the async workers.
        let sub = tokio::task::spawn_blocking(move || cache.subscribe(&id))
            .await
            .map_err(|_| Status::internal("config generation failed"))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        tracing::info!(node = %node_id, stream = P::KIND, "proxy connected");
        Ok((first, sub))
    }

    fn spawn<P: Protocol>(
        &self,
        proto: P,
        first: P::Req,
        inbound: Streaming<P::Req>,
        sub: Subscription,
    ) -> ReceiverStream<Result<P::Resp, Status>> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let ctx = self.clone();
        tokio::spawn(async move { ctx.run(proto, first, inbound, sub, tx).await });
        ReceiverStream::new(rx)
    }

    async fn run<P: Protocol>(
        self,
        mut proto: P,
        first: P::Req,
        mut inbound: Streaming<P::Req>,
        mut sub: Subscription,
        tx: mpsc::Sender<Result<P::Resp, Status>>,
    ) {
        let node_id = sub.node_id().to_string();
        let entry = self.syncz.open(&node_id, P::KIND);
        self.metrics.connected_proxies.inc();

        let mut next = Some(first);
        let end = loop {
            let step = if let Some(req) = next.take() {
                // Requests are answered from the latest snapshot without marking it seen:
                // `changed()` below still fires for it, and pushes what this answer did not.
                match proto.on_request(&req, &sub.current()) {
                    Ok(step) => step,
                    Err(e) => break Some(Status::invalid_argument(e.to_string())),
                }
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => {
                        break Some(Status::unavailable("control plane shutting down"));
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => { next = Some(req); continue; }
                        Ok(None) => break None,
                        Err(status) => {
                            tracing::debug!(node = %node_id, %status, "stream error");
                            break None;
                        }
                    },
                    snap = sub.changed() => match snap {
                        Some(snap) => proto.on_snapshot(&snap),
                        None => break Some(Status::unavailable("proxy config withdrawn")),
                    },
                }
            };
            self.record(&node_id, &step.events);
            entry.update(proto.syncs());
            if let Err(end) = self.send_all::<P>(&node_id, step.responses, &tx).await {
                break end;
            }
        };
        if let Some(status) = end {
            // Best effort: a proxy that does not read has a full buffer, and waiting for it
            // would keep the stream (and so the server's shutdown) alive.
            let _ = tx.try_send(Err(status));
        }
        self.metrics.connected_proxies.dec();
        tracing::info!(node = %node_id, stream = P::KIND, "proxy disconnected");
    }

    /// Sends `responses` in order. A proxy that does not read fills its buffer and waits here,
    /// on its own task only; shutdown still ends it. `Err` says how the stream ends.
    async fn send_all<P: Protocol>(
        &self,
        node_id: &str,
        responses: Vec<P::Resp>,
        tx: &mpsc::Sender<Result<P::Resp, Status>>,
    ) -> Result<(), Option<Status>> {
        for resp in responses {
            let type_url = P::type_url(&resp);
            self.metrics
                .pushes
                .get_or_create(&Metrics::type_labels(type_url))
                .inc();
            tracing::debug!(node = %node_id, r#type = short_name(type_url), "push");
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(Some(Status::unavailable("control plane shutting down")));
                }
                sent = tx.send(Ok(resp)) => if sent.is_err() { return Err(None) },
            }
        }
        Ok(())
    }

    fn record(&self, node_id: &str, events: &[Event]) {
        for event in events {
            match event {
                Event::Nack {
                    type_url,
                    version,
                    nonce,
                    reason,
                } => {
                    self.metrics
                        .nacks
                        .get_or_create(&Metrics::type_labels(type_url))
                        .inc();
                    tracing::warn!(node = %node_id, r#type = short_name(type_url), %version, %nonce, %reason, "proxy rejected config (NACK)");
                }
                Event::Ack {
                    type_url, version, ..
                } => {
                    tracing::debug!(node = %node_id, r#type = short_name(type_url), %version, "ACK");
                }
                Event::Stale { type_url, nonce } => {
                    tracing::debug!(node = %node_id, r#type = short_name(type_url), %nonce, "ignoring request with a stale nonce");
                }
                Event::Subscribed { type_url } => {
                    tracing::debug!(node = %node_id, r#type = short_name(type_url), "subscribed");
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (first, sub) = self.open::<SotwStream>(&mut inbound).await?;
        let proto = SotwStream::new(Nonces::random());
        Ok(Response::new(self.spawn(proto, first, inbound, sub)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (first, sub) = self.open::<DeltaStream>(&mut inbound).await?;
        let proto = DeltaStream::new(Nonces::random());
        Ok(Response::new(self.spawn(proto, first, inbound, sub)))
    }
}

/// Serves ADS on `listener` until `shutdown`. TLS (with the identity work) will wrap the
/// accepted connections here, and only here.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let graceful = tonic::transport::Server::builder()
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    // Graceful shutdown waits for every response to be written; a proxy that stopped reading
    // would make it wait forever, so after a grace period the connections are dropped.
    tokio::select! {
        result = graceful => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "xDS streams still open after shutdown began; closing their connections"
            );
            Ok(())
        }
    }
}
