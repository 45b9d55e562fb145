//! The real ADS server over a loopback socket with a fake generator: what a proxy sees.
//! Every wait is on a message or a published state, never on a sleep.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use weft_api::core::Node;
use weft_api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_api::rpc::Status;
use weft_api::type_url::{CLUSTER, INBOUND, MESH, SERVICE};
use weft_control::metrics::Metrics;
use weft_control::xds::cache::{Cache, Generator};
use weft_control::xds::server::{self, AdsServer};
use weft_control::xds::snapshot::{Generated, Snapshot};
use weft_control::xds::syncz::SyncRegistry;

/// type -> name -> body.
type Bodies = BTreeMap<&'static str, BTreeMap<String, String>>;

/// Per node, the resources to serve; tests edit them, then refresh the cache.
#[derive(Default)]
struct FakeGen(Mutex<BTreeMap<String, Bodies>>);

impl FakeGen {
    fn set(&self, node: &str, type_url: &'static str, name: &str, body: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(node.into())
            .or_default()
            .entry(type_url)
            .or_default()
            .insert(name.into(), body.into());
    }
    fn remove(&self, node: &str, type_url: &'static str, name: &str) {
        if let Some(t) = self
            .0
            .lock()
            .unwrap()
            .get_mut(node)
            .and_then(|n| n.get_mut(type_url))
        {
            t.remove(name);
        }
    }
}

impl Generator for FakeGen {
    fn generate(&self, node_id: &str) -> Result<Snapshot, String> {
        let nodes = self.0.lock().unwrap();
        let node = nodes.get(node_id).ok_or(format!("no workload {node_id}"))?;
        let generated: Generated = node
            .iter()
            .map(|(t, rs)| {
                let rs = rs
                    .iter()
                    .map(|(n, b)| {
                        let any = Any {
                            type_url: (*t).to_string(),
                            value: b.as_bytes().to_vec(),
                        };
                        (n.clone(), any)
                    })
                    .collect();
                (*t, rs)
            })
            .collect();
        Ok(Snapshot::from_generated(generated))
    }
}

struct Plane {
    fake: Arc<FakeGen>,
    cache: Arc<Cache>,
    syncz: Arc<SyncRegistry>,
    metrics: Arc<Metrics>,
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn mk_plane() -> Plane {
    let fake = Arc::new(FakeGen::default());
    fake.set("a.ns", SERVICE, "reviews", "v1");
    fake.set("a.ns", CLUSTER, "reviews|v1", "c1");
    let cache = Cache::new(fake.clone());
    let syncz = Arc::new(SyncRegistry::default());
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ads = AdsServer::new(
        cache.clone(),
        syncz.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let server = tokio::spawn(server::serve(listener, ads, shutdown.clone()));
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Plane {
        fake,
        cache,
        syncz,
        metrics,
        client,
        shutdown,
        server,
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn sotw_req(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(plane: &mut Plane, first: DiscoveryRequest) -> Result<Self, tonic::Status> {
        let (tx, reqs) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = plane
            .client
            .stream_aggregated_resources(ReceiverStream::new(reqs))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }
    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }
    async fn recv(&mut self) -> DiscoveryResponse {
        self.rx.message().await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn sotw_ack_push_and_nack_over_a_real_stream() {
    let mut plane = mk_plane().await;
    let mut first = sotw_req(SERVICE, "", "");
    first.node = node("a.ns");
    let mut s = Sotw::open(&mut plane, first).await.unwrap();
    let svc = s.recv().await;
    assert_eq!(svc.type_url, SERVICE);
    assert_eq!(svc.resources[0].value, b"v1");
    s.send(sotw_req(CLUSTER, "", "")).await;
    let cl = s.recv().await;
    assert_eq!(cl.type_url, CLUSTER);
    s.send(sotw_req(SERVICE, &svc.version_info, &svc.nonce))
        .await;
    s.send(sotw_req(CLUSTER, &cl.version_info, &cl.nonce)).await;
    // Requests are handled in order: once the Mesh answer arrives, both ACKs were recorded.
    s.send(sotw_req(MESH, "", "")).await;
    let mesh = s.recv().await;
    assert_eq!(mesh.type_url, MESH);
    s.send(sotw_req(MESH, &mesh.version_info, &mesh.nonce))
        .await;

    // A model change for services only: one push, of services only.
    plane.fake.set("a.ns", SERVICE, "reviews", "v2");
    assert_eq!(plane.cache.refresh().changed, 1);
    let push = s.recv().await;
    assert_eq!(push.type_url, SERVICE);
    assert_eq!(push.resources[0].value, b"v2");

    // The proxy rejects it.
    let mut nack = sotw_req(SERVICE, &svc.version_info, &push.nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "cannot apply".into(),
        details: vec![],
    });
    s.send(nack).await;
    // Requests are handled in order: once the Inbound answer arrives, the NACK was recorded.
    s.send(sotw_req(INBOUND, "", "")).await;
    assert_eq!(s.recv().await.type_url, INBOUND);
    // A change to clusters is the next thing the proxy hears: the rejected services version
    // was not resent.
    plane.fake.set("a.ns", CLUSTER, "reviews|v1", "c2");
    plane.cache.refresh();
    let next = s.recv().await;
    assert_eq!(next.type_url, CLUSTER);

    let sync = plane.syncz.list();
    assert_eq!(sync.len(), 1);
    assert_eq!(sync[0].node_id, "a.ns");
    assert_eq!(sync[0].stream, "sotw");
    let svc_sync = &sync[0].types[SERVICE];
    assert_eq!(
        svc_sync.acked_version.as_deref(),
        Some(svc.version_info.as_str())
    );
    let last_nack = svc_sync.last_nack.as_ref().unwrap();
    assert_eq!(last_nack.nonce, push.nonce);
    assert_eq!(last_nack.reason, "cannot apply");
    let text = plane.metrics.encode().unwrap();
    assert!(
        text.contains("weft_control_xds_nacks_total{type=\"Service\"} 1"),
        "{text}"
    );
    assert!(text.contains("weft_control_connected_proxies 1"), "{text}");
    plane.shutdown.cancel();
}

#[tokio::test]
async fn a_stream_without_node_id_is_rejected() {
    let mut plane = mk_plane().await;
    let err = match Sotw::open(&mut plane, sotw_req(SERVICE, "", "")).await {
        Ok(mut s) => s.rx.message().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node.id"), "{}", err.message());
}

#[tokio::test]
async fn an_unknown_node_is_refused_with_the_reason() {
    let mut plane = mk_plane().await;
    let mut first = sotw_req(SERVICE, "", "");
    first.node = node("ghost.ns");
    let err = match Sotw::open(&mut plane, first).await {
        Ok(mut s) => s.rx.message().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("no workload ghost.ns"),
        "{}",
        err.message()
    );
}

async fn open_delta(
    plane: &mut Plane,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    let (tx, reqs) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let rx = plane
        .client
        .delta_aggregated_resources(ReceiverStream::new(reqs))
        .await
        .unwrap()
        .into_inner();
    (tx, rx)
}

#[tokio::test]
async fn delta_pushes_changes_and_a_reconnect_gets_only_the_difference() {
    let mut plane = mk_plane().await;
    plane.fake.set("a.ns", SERVICE, "ratings", "r1");
    let first = DeltaDiscoveryRequest {
        node: node("a.ns"),
        type_url: SERVICE.into(),
        ..Default::default()
    };
    let (tx, mut rx) = open_delta(&mut plane, first.clone()).await;
    let resp = rx.message().await.unwrap().unwrap();
    let mut held: BTreeMap<String, String> = resp
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(held.keys().collect::<Vec<_>>(), ["ratings", "reviews"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: SERVICE.into(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    plane.fake.set("a.ns", SERVICE, "reviews", "v2");
    plane.cache.refresh();
    let push = rx.message().await.unwrap().unwrap();
    assert_eq!(push.resources.len(), 1);
    assert_eq!(push.resources[0].name, "reviews");
    held.insert("reviews".into(), push.resources[0].version.clone());

    // The proxy goes away; meanwhile ratings is deleted and a new service appears.
    drop(tx);
    drop(rx);
    plane.fake.remove("a.ns", SERVICE, "ratings");
    plane.fake.set("a.ns", SERVICE, "details", "d1");
    let reconnect = DeltaDiscoveryRequest {
        initial_resource_versions: held.into_iter().collect(),
        ..first
    };
    let (_tx, mut rx) = open_delta(&mut plane, reconnect).await;
    let resp = rx.message().await.unwrap().unwrap();
    let names: Vec<_> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["details"]);
    assert_eq!(resp.removed_resources, ["ratings"]);
    plane.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let mut plane = mk_plane().await;
    let mut first = sotw_req(SERVICE, "", "");
    first.node = node("a.ns");
    let mut s = Sotw::open(&mut plane, first).await.unwrap();
    s.recv().await;
    plane.shutdown.cancel();
    let err = s.rx.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_stream_that_never_sends_its_first_request_does_not_hold_up_shutdown() {
    let mut plane = mk_plane().await;
    let (_tx, reqs) = mpsc::channel::<DiscoveryRequest>(1);
    let mut client = plane.client.clone();
    let call = tokio::spawn(async move {
        client
            .stream_aggregated_resources(ReceiverStream::new(reqs))
            .await
    });
    // Let the stream reach the server before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    plane.shutdown.cancel();
    // Well inside the grace period: the stream ended because of shutdown, not the timer.
    let done = tokio::time::timeout(Duration::from_secs(2), &mut plane.server).await;
    assert!(done.is_ok(), "the server still waits for the silent stream");
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_proxy_that_stops_reading_neither_blocks_others_nor_shutdown() {
    let mut plane = mk_plane().await;
    plane.fake.set("b.ns", SERVICE, "reviews", "v1");
    let mut first = sotw_req(SERVICE, "", "");
    first.node = node("a.ns");
    let mut slow = Sotw::open(&mut plane, first.clone()).await.unwrap();
    slow.recv().await;
    first.node = node("b.ns");
    let mut other = Sotw::open(&mut plane, first).await.unwrap();
    let mut last = other.recv().await;

    // Big pushes to the proxy that no longer reads, until its stream task is stuck on a full
    // buffer; the other proxy keeps getting its pushes meanwhile.
    for i in 0..40 {
        plane.fake.set(
            "a.ns",
            SERVICE,
            "reviews",
            &format!("{i}{}", "x".repeat(1 << 20)),
        );
        plane.fake.set("b.ns", SERVICE, "reviews", &format!("v{i}"));
        plane.cache.refresh();
        let push = other.recv().await;
        assert_eq!(push.resources[0].value, format!("v{i}").into_bytes());
        other
            .send(sotw_req(SERVICE, &push.version_info, &push.nonce))
            .await;
        last = push;
    }
    assert_eq!(plane.syncz.len(), 2);
    drop(last);

    plane.shutdown.cancel();
    // The stuck stream task notices shutdown at once...
    tokio::time::timeout(Duration::from_secs(2), async {
        while !plane.syncz.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a stream task stuck on a proxy that does not read outlived shutdown");
    // ...and the server gives up on the unread responses after the grace period.
    let done = tokio::time::timeout(server::SHUTDOWN_GRACE * 2, &mut plane.server).await;
    assert!(done.is_ok(), "the server never finished shutting down");
    drop(slow);
}
