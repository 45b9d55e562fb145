//! The control channel as a proxy sees it: the whole control plane (`app::start`, fake config)
//! on loopback with TLS, a tonic client that trusts only the mesh root, a CSR made here, ADS
//! with the issued certificate. No private key crosses the wire: the test keeps its own.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_service_client::CertificateServiceClient;
use weft_api::core::Node;
use weft_api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_api::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use weft_api::mesh::Inbound;
use weft_api::type_url::{INBOUND, INBOUND_NAME, Resource as _};
use weft_control::app::{self, Args, Running};
use weft_control::spiffe::SpiffeId;
use weft_control::xds::cache::Generator;
use weft_control::xds::snapshot::{Generated, Snapshot};

use common::{NoStore, http_get, mk_dir};

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";

/// Two workloads, `reviews.default` and `ratings.default`, each with its own service account;
/// any other node in any namespace has no workload.
struct Workloads;

impl Generator for Workloads {
    fn generate(&self, node_id: &str) -> Result<Snapshot, String> {
        let mut out = Generated::new();
        let (name, ns) = node_id.split_once('.').ok_or("bad node id")?;
        if ns == "default" && (name == "reviews" || name == "ratings") {
            let inbound = Inbound {
                name: name.into(),
                namespace: ns.into(),
                identity: format!("spiffe://cluster.local/ns/{ns}/sa/{name}"),
                ..Default::default()
            };
            out.insert(
                INBOUND,
                [(INBOUND_NAME.to_string(), inbound.to_any())].into(),
            );
        }
        Ok(Snapshot::from_generated(out))
    }
}

fn mk_args(dir: &Path, extra: &[&str]) -> Args {
    let mut argv = vec![
        "weft-control",
        "--config-dir",
        dir.to_str().unwrap(),
        "--xds-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

/// A token file as `weftctl up` writes it.
fn write_token(dir: &Path, name: &str, token: &str, identity: &str) {
    let tokens = dir.join(".weft").join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::write(
        tokens.join(format!("{name}.json")),
        format!(r#"{{"token": "{token}", "identity": "{identity}", "node_id": "{name}.default"}}"#),
    )
    .unwrap();
}

async fn start(dir: &Path) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    app::start(&mk_args(dir, &[]), NoStore, Arc::new(Workloads))
        .await
        .unwrap()
}

/// A TLS channel that trusts only the mesh root, optionally with a client identity.
async fn channel(running: &Running, identity: Option<Identity>) -> Channel {
    let root = std::fs::read_to_string(&running.ca_root).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("weft-control");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://{}", running.xds_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn csr_for(key: &KeyPair, uri: &str) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(key).unwrap().pem().unwrap()
}

async fn create(
    running: &Running,
    token: Option<&str>,
    csr: String,
) -> Result<Vec<String>, tonic::Status> {
    create_on(channel(running, None).await, token, csr).await
}

/// CreateCertificate on `channel` (which may carry a client certificate).
async fn create_on(
    channel: Channel,
    token: Option<&str>,
    csr: String,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = CertificateServiceClient::new(channel);
    let mut req = tonic::Request::new(CreateCertificateRequest {
        csr,
        validity_seconds: 0,
    });
    if let Some(token) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// Gets a certificate for `uri` with `token`: the client identity for ADS.
async fn identity(running: &Running, token: &str, uri: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let chain = create(running, Some(token), csr_for(&key, uri))
        .await
        .unwrap();
    Identity::from_pem(chain.concat(), key.serialize_pem())
}

/// Opens a SotW stream as `node` and returns the first response's type, or the refusal.
async fn ads(channel: Channel, node: &str) -> Result<String, tonic::Status> {
    open_stream(channel, node, false).await
}

/// The same over a delta stream.
async fn delta(channel: Channel, node: &str) -> Result<String, tonic::Status> {
    open_stream(channel, node, true).await
}

async fn open_stream(channel: Channel, node: &str, delta: bool) -> Result<String, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let node = Some(Node {
        id: node.into(),
        ..Default::default()
    });
    if delta {
        let first = DeltaDiscoveryRequest {
            node,
            type_url: INBOUND.into(),
            ..Default::default()
        };
        let requests = tokio_stream::iter([first]).chain(tokio_stream::pending());
        let mut stream = client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(stream.message().await?.unwrap().type_url)
    } else {
        let first = DiscoveryRequest {
            node,
            type_url: INBOUND.into(),
            ..Default::default()
        };
        let requests = tokio_stream::iter([first]).chain(tokio_stream::pending());
        let mut stream = client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(stream.message().await?.unwrap().type_url)
    }
}

#[tokio::test]
async fn a_workload_gets_a_certificate_and_uses_it_for_its_own_node_only() {
    let dir = mk_dir("ca-tls-flow");
    write_token(&dir, "reviews", "t-reviews", REVIEWS);
    let running = start(&dir).await;

    // The chain: leaf with exactly the SPIFFE ID, root last and equal to the file proxies read.
    let key = KeyPair::generate().unwrap();
    let chain = create(&running, Some("t-reviews"), csr_for(&key, REVIEWS))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], std::fs::read_to_string(&running.ca_root).unwrap());
    let leaf = weft_control::ca::authority::pem_to_der(&chain[0]).unwrap();
    assert_eq!(SpiffeId::from_cert_der(&leaf).unwrap().to_string(), REVIEWS);

    // The chain verifies: the server checks it against the trust bundle during the handshake.
    let me = Identity::from_pem(chain.concat(), key.serialize_pem());
    let ch = channel(&running, Some(me.clone())).await;
    assert_eq!(ads(ch, "reviews.default").await.unwrap(), INBOUND);

    // Another workload's node is refused, naming both identities.
    let ch = channel(&running, Some(me)).await;
    let err = ads(ch, "ratings.default").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(RATINGS), "{}", err.message());
    assert!(err.message().contains(REVIEWS), "{}", err.message());

    // No workload for the node: the namespace decides.
    let ch = channel(
        &running,
        Some(identity(&running, "t-reviews", REVIEWS).await),
    )
    .await;
    assert_eq!(ads(ch, "newcomer.default").await.unwrap(), INBOUND);
    let ch = channel(
        &running,
        Some(identity(&running, "t-reviews", REVIEWS).await),
    )
    .await;
    let err = ads(ch, "newcomer.prod").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Without a client certificate, ADS says why.
    let err = ads(channel(&running, None).await, "reviews.default")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Delta streams are held to the same rules.
    let me = identity(&running, "t-reviews", REVIEWS).await;
    let ch = channel(&running, Some(me.clone())).await;
    assert_eq!(delta(ch, "reviews.default").await.unwrap(), INBOUND);
    let ch = channel(&running, Some(me)).await;
    let err = delta(ch, "ratings.default").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = delta(channel(&running, None).await, "reviews.default")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A proxy holding a valid certificate for reviews cannot get one for ratings, whatever
    // channel it calls on: the token decides, and the CSR must match it.
    let me = identity(&running, "t-reviews", REVIEWS).await;
    let other = KeyPair::generate().unwrap();
    for token in [Some("t-reviews"), None] {
        let ch = channel(&running, Some(me.clone())).await;
        let err = create_on(ch, token, csr_for(&other, RATINGS))
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{err:?}"
        );
    }

    // The CA's results and root expiry are on /metrics.
    let metrics = http_get(running.admin_addr, "/metrics").await;
    for line in [
        "weft_control_ca_certificates_total{result=\"issued\"}",
        "weft_control_ca_certificates_total{result=\"not_caller\"} 1",
        "weft_control_ca_certificates_total{result=\"unauthenticated\"} 1",
        "weft_control_ca_root_expiry_timestamp_seconds ",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_tokens_and_other_identities_are_refused() {
    let dir = mk_dir("ca-tls-refuse");
    write_token(&dir, "reviews", "t-reviews", REVIEWS);
    let running = start(&dir).await;
    let key = KeyPair::generate().unwrap();

    let err = create(&running, Some("wrong"), csr_for(&key, REVIEWS))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = create(&running, None, csr_for(&key, REVIEWS))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let err = create(&running, Some("t-reviews"), csr_for(&key, RATINGS))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        format!("CSR asks for {RATINGS} but the caller is {REVIEWS}")
    );

    let err = create(&running, Some("t-reviews"), "garbage".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A workload added while running is found without a restart.
    write_token(&dir, "ratings", "t-ratings", RATINGS);
    create(&running, Some("t-ratings"), csr_for(&key, RATINGS))
        .await
        .unwrap();

    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_restart_reuses_the_root_and_earlier_certificates_still_work() {
    let dir = mk_dir("ca-tls-restart");
    write_token(&dir, "reviews", "t-reviews", REVIEWS);
    let running = start(&dir).await;
    let root = std::fs::read(&running.ca_root).unwrap();
    assert_eq!(running.ca_root, dir.join(".weft/ca/root-cert.pem"));
    let me = identity(&running, "t-reviews", REVIEWS).await;
    running.shutdown.cancel();
    running.wait().await.unwrap();

    let running = start(&dir).await;
    assert_eq!(std::fs::read(&running.ca_root).unwrap(), root);
    let ch = channel(&running, Some(me)).await;
    assert_eq!(ads(ch, "reviews.default").await.unwrap(), INBOUND);
    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_certificate_from_another_root_is_refused_at_the_handshake() {
    let dir = mk_dir("ca-tls-foreign");
    let running = start(&dir).await;
    // A root of its own, and a leaf for the right identity signed by it.
    let foreign =
        weft_control::ca::authority::new_root("cluster.local", std::time::SystemTime::now())
            .unwrap();
    let authority = weft_control::ca::authority::Authority::new(
        &foreign,
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let chain = authority
        .sign_csr(
            &csr_for(&key, REVIEWS),
            &SpiffeId::parse(REVIEWS).unwrap(),
            0,
            std::time::SystemTime::now(),
        )
        .unwrap();
    let root = std::fs::read_to_string(&running.ca_root).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("weft-control")
        .identity(Identity::from_pem(chain.concat(), key.serialize_pem()));
    let result = async {
        let ch = Channel::from_shared(format!("https://{}", running.xds_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        ads(ch, "reviews.default").await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn plaintext_xds_keeps_the_spine_transport() {
    let dir = mk_dir("ca-tls-plain");
    let running = app::start(
        &mk_args(&dir, &["--plaintext-xds"]),
        NoStore,
        Arc::new(Workloads),
    )
    .await
    .unwrap();
    let ch = Channel::from_shared(format!("http://{}", running.xds_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(ads(ch, "reviews.default").await.unwrap(), INBOUND);
    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
