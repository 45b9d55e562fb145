//! The ADS gRPC service: moves messages between a proxy's stream, the pure protocol state
//! ([`super::stream`]) and the proxy's snapshot in the [`Cache`]. It decides nothing itself.
//!
//! With TLS ([`Transport::Tls`]) a stream must present a client certificate whose SPIFFE ID
//! may read the node it names ([`super::auth`]); the CA service shares the listener.
//!
//! One task per stream waits on whichever comes first: a request from the proxy, a new snapshot
//! for the proxy, or shutdown (which ends the stream with `UNAVAILABLE`, so proxies reconnect to
//! another replica or to this one after a restart).

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

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

use crate::ca::server::CaServer;

use super::auth;
use super::cache::{Cache, Subscription};
use super::stream::{DeltaStream, Event, Nonces, Protocol, SotwStream};
use super::syncz::SyncRegistry;
use crate::metrics::Metrics;

/// The largest ADS request the server reads (see [`AdsServer::into_service`]).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

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
    /// When set, a stream must prove by client certificate, with a SPIFFE ID of this trust
    /// domain, that it may read its node.
    client_auth: Option<String>,
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
            client_auth: None,
        }
    }

    /// Requires every stream to present a client certificate whose identity may read the node
    /// it asks for ([`auth::authorize`]), under `trust_domain`. Only meaningful behind TLS.
    pub fn require_client_certs(mut self, trust_domain: impl Into<String>) -> Self {
        self.client_auth = Some(trust_domain.into());
        self
    }

    /// The tonic service, ready to add to a `Server`. A delta reconnect lists every resource
    /// it holds (`initial_resource_versions`): tens of thousands of names in a large mesh, past
    /// gRPC's default 4 MiB, so requests may be as large as [`MAX_REQUEST_BYTES`].
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Reads the first request, which must name the node, and subscribes it.
    async fn open<P: Protocol>(
        &self,
        peer: Option<Arc<Vec<CertificateDer<'static>>>>,
        inbound: &mut Streaming<P::Req>,
    ) -> Result<(P::Req, Subscription), Status> {
        // Before reading anything: a stream without a certificate gets nothing, not even a
        // config generation.
        let peer = if self.client_auth.is_some() {
            Some(
                auth::peer_identity(peer.as_deref().map(Vec::as_slice)).map_err(|e| {
                    tracing::warn!(reason = %e, "xDS stream refused");
                    Status::unauthenticated(e.to_string())
                })?,
            )
        } else {
            None
        };
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
        if let (Some(peer), Some(trust_domain)) = (&peer, &self.client_auth) {
            // Dropping `sub` on refusal forgets the node again if no one else holds it.
            auth::authorize(peer, trust_domain, &node_id, &sub.current()).map_err(|e| {
                tracing::warn!(node = %node_id, reason = %e, "xDS stream refused");
                Status::permission_denied(e.to_string())
            })?;
        }
        tracing::info!(node = %node_id, stream = P::KIND, peer = ?peer.as_ref().map(ToString::to_string), "proxy connected");
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
        let peer = request.peer_certs();
        let mut inbound = request.into_inner();
        let (first, sub) = self.open::<SotwStream>(peer, &mut inbound).await?;
        let proto = SotwStream::new(Nonces::random());
        Ok(Response::new(self.spawn(proto, first, inbound, sub)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.peer_certs();
        let mut inbound = request.into_inner();
        let (first, sub) = self.open::<DeltaStream>(peer, &mut inbound).await?;
        let proto = DeltaStream::new(Nonces::random());
        Ok(Response::new(self.spawn(proto, first, inbound, sub)))
    }
}

/// How the gRPC listener talks to clients.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plaintext h2c: the spine's transport, kept behind `--plaintext-xds` for tests.
    Plaintext,
    /// TLS with the given server config ([`super::tls::server_config`]).
    Tls(Arc<rustls::ServerConfig>),
}

/// The gRPC services of the control channel.
#[derive(Debug, Clone)]
pub struct Services {
    pub ads: AdsServer,
    /// The mesh CA; `None` serves ADS alone.
    pub ca: Option<CaServer>,
}

/// Serves plaintext ADS alone on `listener` until `shutdown` (the spine's API, kept for tests
/// that do not need TLS).
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let services = Services {
        ads: server,
        ca: None,
    };
    serve_grpc(listener, services, Transport::Plaintext, shutdown).await
}

/// Serves ADS and the CA on `listener` until `shutdown`. The one place the control channel's
/// transport is decided: TLS wraps accepted connections here and only here.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    services: Services,
    transport: Transport,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .add_service(services.ads.into_service())
        .add_optional_service(services.ca.map(CaServer::into_service));
    match transport {
        Transport::Plaintext => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            run(router, incoming, shutdown).await
        }
        Transport::Tls(config) => {
            let incoming = super::tls::incoming(listener, config, shutdown.clone());
            run(router, incoming, shutdown).await
        }
    }
}

async fn run<I, IO, IE>(
    router: tonic::transport::server::Router,
    incoming: I,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful =
        router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
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
