#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Protocol tests: first the pure state machines (each case reads like a line of Envoy's xDS
//! protocol document), then the client against a fake transport.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use weft_api::mesh as pb;
use weft_api::type_url::{self, Resource as _};

use super::*;
use crate::model::SharedSnapshot;
use crate::telemetry::Metrics;

fn svc(name: &str) -> pb::Service {
    pb::Service {
        name: name.into(),
        ..Default::default()
    }
}

fn bad_svc(name: &str) -> pb::Service {
    pb::Service {
        name: name.into(),
        http: vec![pb::HttpRoute {
            matches: vec![pb::HttpMatch {
                uri: Some(pb::StringMatch {
                    kind: Some(pb::string_match::Kind::Regex("(".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn sotw_rsp(
    type_url: &str,
    version: &str,
    nonce: &str,
    res: Vec<prost_types::Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources: res,
        type_url: type_url.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn delta_res(name: &str, version: &str, any: prost_types::Any) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any),
        ..Default::default()
    }
}

// === pure state ===

#[test]
fn sotw_protocol_rules() {
    let mut st = SotwState::new(node("a.default"), &[type_url::SERVICE, type_url::CLUSTER]);
    // First requests: one per type, no version, no nonce, wildcard, with the node.
    let first = st.on_connect();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|r| r.version_info.is_empty()
        && r.response_nonce.is_empty()
        && r.resource_names.is_empty()
        && r.node.as_ref().unwrap().id == "a.default"));

    // ACK: version and nonce of the response.
    let ack = st.ack(type_url::SERVICE, "v1", "n1");
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v1", "n1")
    );
    assert!(ack.error_detail.is_none());

    // NACK: the response's nonce, the previous version, and why.
    let nack = st.nack(type_url::SERVICE, "n2", "bad regex");
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    assert_eq!(nack.error_detail.unwrap().message, "bad regex");

    // Versions are per type.
    assert_eq!(st.version(type_url::CLUSTER), "");
    // Reconnect: the versions held are re-announced, nonces are not.
    let again = st.on_connect();
    let svc = again
        .iter()
        .find(|r| r.type_url == type_url::SERVICE)
        .unwrap();
    assert_eq!(
        (svc.version_info.as_str(), svc.response_nonce.as_str()),
        ("v1", "")
    );
}

#[test]
fn delta_protocol_rules() {
    let mut st = DeltaState::new(node("a.default"), &[type_url::SERVICE]);
    let first = st.on_connect();
    assert_eq!(first.len(), 1);
    assert!(first[0].initial_resource_versions.is_empty());
    assert!(first[0].resource_names_subscribe.is_empty(), "wildcard");

    let ack = st.ack(type_url::SERVICE, "n1", [("a", "1"), ("b", "1")], []);
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    st.ack(type_url::SERVICE, "n2", [("b", "2")], ["a"]);

    let nack = st.nack(type_url::SERVICE, "n3", "nope");
    assert_eq!(nack.response_nonce, "n3");
    assert_eq!(nack.error_detail.unwrap().code, 3);

    let held = st.held(type_url::SERVICE).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held["b"], "2", "a NACK changes nothing held");

    let again = st.on_connect();
    assert_eq!(again[0].initial_resource_versions.len(), 1);
    assert_eq!(again[0].initial_resource_versions["b"], "2");
}

#[test]
fn backoff_is_exponential_capped_and_jittered() {
    let b = Backoff::default();
    assert_eq!(b.ceiling(0), Duration::from_millis(100));
    assert_eq!(b.ceiling(3), Duration::from_millis(800));
    assert_eq!(b.ceiling(40), Duration::from_secs(15));
    let mut rng = rand::rng();
    for attempt in 0..20 {
        assert!(b.delay(attempt, &mut rng) <= b.ceiling(attempt));
    }
}

// === apply ===

#[test]
fn apply_is_all_or_nothing() {
    let snapshot = SharedSnapshot::default();
    let mut ap = Applier::new(snapshot.clone());
    ap.apply_sotw(&sotw_rsp(
        type_url::SERVICE,
        "1",
        "n1",
        vec![svc("a").to_any()],
    ))
    .unwrap();
    assert!(snapshot.load().service_for_host("a").is_some());

    let err = ap
        .apply_sotw(&sotw_rsp(
            type_url::SERVICE,
            "2",
            "n2",
            vec![svc("b").to_any(), bad_svc("c").to_any()],
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Service c: http[0].matches[0].uri.regex"),
        "{err}"
    );
    let snap = snapshot.load();
    assert!(
        snap.service_for_host("a").is_some(),
        "the previous snapshot stays"
    );
    assert!(
        snap.service_for_host("b").is_none(),
        "nothing of the bad response applies"
    );
    assert_eq!(snap.versions[type_url::SERVICE], "1");
}

#[test]
fn delta_adds_and_removes() {
    let snapshot = SharedSnapshot::default();
    let mut ap = Applier::new(snapshot.clone());
    ap.apply_delta(&DeltaDiscoveryResponse {
        type_url: type_url::SERVICE.into(),
        nonce: "n1".into(),
        resources: vec![
            delta_res("a", "1", svc("a").to_any()),
            delta_res("b", "1", svc("b").to_any()),
        ],
        ..Default::default()
    })
    .unwrap();
    ap.apply_delta(&DeltaDiscoveryResponse {
        type_url: type_url::SERVICE.into(),
        nonce: "n2".into(),
        removed_resources: vec!["a".into()],
        ..Default::default()
    })
    .unwrap();
    let snap = snapshot.load();
    assert!(snap.service_for_host("a").is_none());
    assert!(snap.service_for_host("b").is_some());
    // A resource whose envelope disagrees with its body is refused.
    let err = ap
        .apply_delta(&DeltaDiscoveryResponse {
            type_url: type_url::SERVICE.into(),
            resources: vec![delta_res("x", "1", svc("y").to_any())],
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::NameMismatch { .. }));
}

#[test]
fn unnamed_endpoints_are_refused() {
    let mut ap = Applier::new(SharedSnapshot::default());
    let unnamed = pb::Endpoints::default().to_any();
    let err = ap
        .apply_sotw(&sotw_rsp(type_url::ENDPOINTS, "1", "n1", vec![unnamed]))
        .unwrap_err();
    assert!(matches!(err, ApplyError::Unnamed("Endpoints")), "{err}");
}

// === client against a fake transport ===

/// One stream's server side: the client's requests, and a sender for responses.
struct FakeStream<Req, Rsp> {
    requests: ReceiverStream<Req>,
    responses: mpsc::UnboundedSender<Result<Rsp, TransportError>>,
}

#[derive(Clone)]
struct FakeTransport {
    delta: mpsc::UnboundedSender<FakeStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>>,
    sotw: mpsc::UnboundedSender<FakeStream<DiscoveryRequest, DiscoveryResponse>>,
}

impl Transport for FakeTransport {
    fn delta(
        &self,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DeltaDiscoveryResponse>, TransportError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.delta.send(FakeStream {
            requests,
            responses: tx,
        });
        Box::pin(async move { Ok(UnboundedReceiverStream::new(rx).boxed()) })
    }

    fn sotw(
        &self,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DiscoveryResponse>, TransportError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.sotw.send(FakeStream {
            requests,
            responses: tx,
        });
        Box::pin(async move { Ok(UnboundedReceiverStream::new(rx).boxed()) })
    }
}

struct Harness {
    delta: mpsc::UnboundedReceiver<FakeStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>>,
    sotw: mpsc::UnboundedReceiver<FakeStream<DiscoveryRequest, DiscoveryResponse>>,
    snapshot: SharedSnapshot,
    status: watch::Receiver<XdsStatus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

fn start(mode: Mode) -> Harness {
    let (dtx, drx) = mpsc::unbounded_channel();
    let (stx, srx) = mpsc::unbounded_channel();
    let snapshot = SharedSnapshot::default();
    let (status_tx, status_rx) = watch::channel(XdsStatus::default());
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let client = XdsClient::new(
        FakeTransport {
            delta: dtx,
            sotw: stx,
        },
        mode,
        node("productpage.default"),
        Applier::new(snapshot.clone()),
        status_tx,
        metrics.clone(),
    );
    tokio::spawn(client.run(shutdown.clone()));
    Harness {
        delta: drx,
        sotw: srx,
        snapshot,
        status: status_rx,
        metrics,
        shutdown,
    }
}

async fn next<T>(s: &mut ReceiverStream<T>) -> T {
    s.next().await.expect("request stream ended")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn sotw_client_acks_nacks_and_keeps_versions_per_type() {
    let mut h = start(Mode::Sotw);
    let mut s = h.sotw.recv().await.unwrap();
    let mut subscribed = Vec::new();
    for _ in 0..type_url::ALL.len() {
        subscribed.push(next(&mut s.requests).await.type_url);
    }
    subscribed.sort();
    let mut all = type_url::ALL.map(String::from).to_vec();
    all.sort();
    assert_eq!(subscribed, all);

    s.responses
        .send(Ok(sotw_rsp(
            type_url::SERVICE,
            "s1",
            "n1",
            vec![svc("a").to_any()],
        )))
        .unwrap();
    let ack = next(&mut s.requests).await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (type_url::SERVICE, "s1", "n1")
    );
    assert!(ack.error_detail.is_none());

    s.responses
        .send(Ok(sotw_rsp(type_url::CLUSTER, "c1", "n2", vec![])))
        .unwrap();
    assert_eq!(next(&mut s.requests).await.version_info, "c1");

    s.responses
        .send(Ok(sotw_rsp(
            type_url::SERVICE,
            "s2",
            "n3",
            vec![bad_svc("a").to_any()],
        )))
        .unwrap();
    let nack = next(&mut s.requests).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("s1", "n3")
    );
    assert!(nack.error_detail.unwrap().message.contains("invalid regex"));
    assert!(
        h.snapshot.load().service_for_host("a").is_some(),
        "still serving s1"
    );
    assert!(
        h.status
            .borrow()
            .last_nack
            .as_deref()
            .unwrap()
            .starts_with("Service:")
    );
    let text = h.metrics.encode();
    assert!(
        text.contains(r#"weft_xds_updates_total{type="Service",result="nack"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"weft_xds_updates_total{type="Service",result="ack"} 1"#));
    assert!(text.contains("weft_xds_connected 1"));
    h.shutdown.cancel();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn delta_client_reconnects_with_initial_resource_versions() {
    let mut h = start(Mode::Delta);
    let mut s = h.delta.recv().await.unwrap();
    for _ in 0..type_url::ALL.len() {
        let first = next(&mut s.requests).await;
        assert!(first.initial_resource_versions.is_empty());
        assert_eq!(first.node.unwrap().id, "productpage.default");
    }
    s.responses
        .send(Ok(DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            type_url: type_url::SERVICE.into(),
            nonce: "n1".into(),
            resources: vec![
                delta_res("a", "va", svc("a").to_any()),
                delta_res("b", "vb", svc("b").to_any()),
            ],
            ..Default::default()
        }))
        .unwrap();
    let ack = next(&mut s.requests).await;
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    s.responses
        .send(Ok(DeltaDiscoveryResponse {
            type_url: type_url::SERVICE.into(),
            nonce: "n2".into(),
            removed_resources: vec!["a".into()],
            ..Default::default()
        }))
        .unwrap();
    next(&mut s.requests).await;
    assert!(h.snapshot.load().service_for_host("a").is_none());

    // The control plane goes away: the proxy keeps its snapshot and reconnects (paused time
    // fast-forwards the backoff).
    s.responses
        .send(Err(TransportError("connection reset".into())))
        .unwrap();
    let mut s2 = h.delta.recv().await.unwrap();
    assert!(!h.status.borrow().connected || h.status.borrow().last_error.is_some());
    assert!(
        h.snapshot.load().service_for_host("b").is_some(),
        "served while away"
    );
    let mut initial = None;
    for _ in 0..type_url::ALL.len() {
        let r = next(&mut s2.requests).await;
        if r.type_url == type_url::SERVICE {
            initial = Some(r.initial_resource_versions);
        }
    }
    let initial = initial.unwrap();
    assert_eq!(initial.len(), 1);
    assert_eq!(initial["b"], "vb");
    h.shutdown.cancel();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ready_after_every_type_is_answered() {
    let mut h = start(Mode::Sotw);
    let mut s = h.sotw.recv().await.unwrap();
    for _ in 0..type_url::ALL.len() {
        next(&mut s.requests).await;
    }
    let mesh = pb::Mesh::default().to_any();
    let inbound = pb::Inbound {
        name: "productpage".into(),
        namespace: "default".into(),
        ..Default::default()
    }
    .to_any();
    for (i, t) in type_url::ALL.iter().enumerate() {
        assert!(!h.status.borrow().complete);
        let res = match *t {
            type_url::MESH => vec![mesh.clone()],
            type_url::INBOUND => vec![inbound.clone()],
            _ => vec![],
        };
        s.responses
            .send(Ok(sotw_rsp(t, "1", &format!("n{i}"), res)))
            .unwrap();
        next(&mut s.requests).await;
    }
    assert!(h.status.borrow().complete);
    assert!(h.status.borrow().waiting_for.is_empty());
    assert_eq!(
        h.snapshot.load().inbound.as_ref().unwrap().name,
        "productpage"
    );
    h.shutdown.cancel();
}

/// A control plane that accepts the connection but never answers the stream's opening.
struct SilentTransport {
    opens: Arc<std::sync::atomic::AtomicUsize>,
}

impl Transport for SilentTransport {
    fn delta(
        &self,
        _requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DeltaDiscoveryResponse>, TransportError>> {
        self.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn sotw(
        &self,
        _requests: ReceiverStream<DiscoveryRequest>,
    ) -> BoxFuture<'_, Result<ResponseStream<DiscoveryResponse>, TransportError>> {
        self.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_that_never_opens_is_abandoned_and_retried() {
    let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (status_tx, status) = watch::channel(XdsStatus::default());
    let shutdown = CancellationToken::new();
    let client = XdsClient::new(
        SilentTransport {
            opens: opens.clone(),
        },
        Mode::Delta,
        node("a.default"),
        Applier::new(SharedSnapshot::default()),
        status_tx,
        Arc::new(Metrics::new()),
    )
    .with_open_timeout(Duration::from_secs(5));
    tokio::spawn(client.run(shutdown.clone()));
    // Paused time: the sleep lets the client's timers (open timeout, backoff) fire.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(opens.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let err = status.borrow().last_error.clone().unwrap();
    assert!(err.contains("not opened within 5s"), "{err}");
    shutdown.cancel();
}
