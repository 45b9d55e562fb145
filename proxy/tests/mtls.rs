//! Mesh mTLS over real loopback sockets: a client proxy (outbound) and a server proxy
//! (inbound) with certificates from a throwaway rcgen CA made in the test. Covers secure
//! naming, a client from another root, PeerAuthentication STRICT and PERMISSIVE on one port,
//! and continuous traffic across several rotations of 2-second certificates issued by a fake
//! CA over TLS gRPC.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_api::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use weft_api::ca::{CreateCertificateRequest, CreateCertificateResponse};
use weft_proxy::identity::{
    CertStore, Certified, GrpcCaClient, MeshTls, RetryPolicy, Rotator, SpiffeId, Trust,
    TrustBundle, new_key_and_csr, validate_chain,
};
use weft_proxy::model::*;
use weft_proxy::telemetry::Metrics;

use common::{
    Proxy, cluster as cluster_spec, get_via, port, reviews_inbound, service, start_proxy,
};
use x509_parser::time::ASN1Time;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const NODE: &str = "x.default";

// === a throwaway CA ===

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Signs a CSR as the mesh CA does: its SAN, `valid_for` from now, both EKUs.
    fn sign(&self, csr_pem: &str, valid_for: Duration) -> Vec<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = unix_now();
        let secs = i64::try_from(valid_for.as_secs()).unwrap();
        csr.params.not_before = ASN1Time::from_timestamp(now - 60).unwrap().to_datetime();
        csr.params.not_after = ASN1Time::from_timestamp(now + secs).unwrap().to_datetime();
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        vec![csr.signed_by(&self.issuer).unwrap().pem(), self.pem()]
    }

    /// A certificate for `id`, made as the proxy makes it.
    fn certified(&self, id: &str) -> Certified {
        let id = SpiffeId::parse(id).unwrap();
        let kc = new_key_and_csr(&id).unwrap();
        let chain = self.sign(&kc.csr_pem, Duration::from_secs(3600));
        validate_chain(&id, &kc.key, &chain, SystemTime::now()).unwrap()
    }

    /// A server certificate for the control plane's name (the fake CA's gRPC server).
    fn server_cert(&self, dns: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(vec![dns.to_string()]).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn mesh_tls(trust_pem: &str, snapshot: &SharedSnapshot, cert: Option<Certified>) -> Arc<MeshTls> {
    let store = CertStore::default();
    if let Some(c) = cert {
        store.publish(Arc::new(c));
    }
    let trust = Trust::new(
        TrustBundle::from_pems(&[trust_pem]).unwrap(),
        snapshot.clone(),
    );
    Arc::new(MeshTls::new(store, Arc::new(trust)).unwrap())
}

// === the application and the proxies ===

async fn start_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let text = format!("app saw {}", req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The server workload's config: it serves `app_port` with `mode`.
fn server_parts(app_port: u16, mode: MtlsMode) -> Parts {
    Parts {
        inbound: Some(reviews_inbound(SERVER_ID, vec![port(app_port)], mode)),
        ..Default::default()
    }
}

/// The client's config: reviews:9080 -> the app, through the server proxy at `mesh_port`,
/// whose servers may present `identities`.
fn client_parts(app: SocketAddr, mesh_port: u16, identities: Vec<String>) -> Parts {
    let fqdn = "reviews.default.svc.cluster.local".to_string();
    let cluster = format!("outbound|9080||{fqdn}");
    let mut parts = Parts::default();
    parts.services.insert(
        fqdn.clone(),
        service(
            &fqdn,
            "default",
            vec!["reviews".into()],
            vec![port(9080)],
            &cluster,
        ),
    );
    parts.clusters.insert(
        cluster.clone(),
        Arc::new(ClusterSpec {
            identities,
            ..cluster_spec(&cluster, &fqdn, 9080)
        }),
    );
    parts.endpoints.insert(
        cluster,
        Arc::from(vec![Endpoint {
            addr: app,
            mesh_port: Some(mesh_port),
            identity: SERVER_ID.into(),
            weight: 1,
            workload: "default/reviews-v1".into(),
            labels: BTreeMap::new(),
        }]),
    );
    parts
}

/// A client proxy -> server proxy -> app, all on loopback.
struct Pair {
    client: Proxy,
    server: Proxy,
    app: SocketAddr,
}

/// `client_cert_ca` signs the client's certificate (another root = refused by the server).
async fn start_pair(ca: &Ca, client_cert_ca: &Ca, identities: Vec<String>, mode: MtlsMode) -> Pair {
    let app = start_app().await;
    let server_in = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh_port = server_in.local_addr().unwrap().port();

    let server_snap = SharedSnapshot::new(Snapshot::build(&server_parts(app.port(), mode)));
    let server_tls = mesh_tls(&ca.pem(), &server_snap, Some(ca.certified(SERVER_ID)));
    let server = start_proxy(server_in, server_snap, Some(server_tls), NODE).await;

    let client_snap =
        SharedSnapshot::new(Snapshot::build(&client_parts(app, mesh_port, identities)));
    let client_tls = mesh_tls(
        &ca.pem(),
        &client_snap,
        Some(client_cert_ca.certified(CLIENT_ID)),
    );
    let client = start_proxy(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        client_snap,
        Some(client_tls),
        NODE,
    )
    .await;
    Pair {
        client,
        server,
        app,
    }
}

/// Sends raw bytes to `addr` and reads whatever comes back until the peer closes.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn plaintext_request(app_port: u16) -> Vec<u8> {
    format!(
        "GET /plain HTTP/1.1\r\nhost: reviews:9080\r\nweft-dst-port: {app_port}\r\n\
         connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// === tests ===

#[tokio::test]
async fn mtls_hop_works_and_the_inbound_sees_the_callers_spiffe_id() {
    install_provider();
    let ca = Ca::new("root");
    let p = start_pair(&ca, &ca, vec![SERVER_ID.into()], MtlsMode::Strict).await;
    for _ in 0..3 {
        let (status, code, body) =
            get_via(p.client.dp.outbound_addr, "http://reviews:9080/a").await;
        assert_eq!(
            (status, code.as_str(), body.as_str()),
            (StatusCode::OK, "", "app saw /a")
        );
    }
    // One pooled mTLS connection carried all three.
    assert_eq!(p.client.dp.connector.mesh_connections(), 1);
    assert_eq!(p.server.dp.inbound_stats.accepted(), 1);
    let m = p.server.metrics.encode();
    assert!(
        m.contains(&format!(
            r#"direction="inbound",source_workload="unknown",source_namespace="default",destination_service="",destination_workload="reviews-v1",destination_subset="",source_principal="{CLIENT_ID}",response_code="200",reason=""}} 3"#
        )),
        "{m}"
    );
}

#[tokio::test]
async fn a_server_with_an_unexpected_identity_is_refused() {
    install_provider();
    let ca = Ca::new("root");
    let expected = "spiffe://cluster.local/ns/default/sa/ratings";
    let p = start_pair(&ca, &ca, vec![expected.into()], MtlsMode::Strict).await;
    let (status, code, body) = get_via(p.client.dp.outbound_addr, "http://reviews:9080/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code, "upstream-identity-mismatch");
    assert!(
        body.contains(&format!("expected {expected}, got {SERVER_ID}")),
        "{body}"
    );
    let m = p.client.metrics.encode();
    assert!(
        m.contains(r#"weft_tls_handshake_failures_total{direction="outbound",reason="identity-mismatch"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_root_is_refused_by_the_inbound() {
    install_provider();
    let ca = Ca::new("root");
    let other = Ca::new("another root");
    let p = start_pair(&ca, &other, vec![SERVER_ID.into()], MtlsMode::Permissive).await;
    let (status, code, body) = get_via(p.client.dp.outbound_addr, "http://reviews:9080/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code, "upstream-tls-failed", "{body}");
    assert!(body.contains("peer-rejected"), "{body}");
    // The server says why, in its metrics.
    let m = p.server.metrics.encode();
    assert!(
        m.contains(
            r#"weft_tls_handshake_failures_total{direction="inbound",reason="unknown-issuer"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_while_mtls_flows() {
    install_provider();
    let ca = Ca::new("root");
    let p = start_pair(&ca, &ca, vec![SERVER_ID.into()], MtlsMode::Strict).await;
    let inbound = p.server.dp.inbound_addr;

    // A plaintext HTTP client gets a readable refusal...
    let out = raw(inbound, &plaintext_request(p.app.port())).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("weft-proxy-error: mtls-required"), "{out}");
    assert!(out.contains("requires mutual TLS"), "{out}");
    assert!(!out.contains("app saw"), "{out}");
    // ...a client that does not speak HTTP gets nothing from the app.
    let out = raw(inbound, b"\x00\x01 hello app\r\n\r\n").await;
    assert!(!out.contains("app saw"), "{out}");

    // Meanwhile mesh traffic flows.
    let (status, _, body) = get_via(p.client.dp.outbound_addr, "http://reviews:9080/m").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app saw /m"));
    let m = p.server.metrics.encode();
    assert!(
        m.contains(r#"weft_tls_handshake_failures_total{direction="inbound",reason="plaintext-to-strict"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn permissive_serves_mtls_and_plaintext_on_one_port() {
    install_provider();
    let ca = Ca::new("root");
    let p = start_pair(&ca, &ca, vec![SERVER_ID.into()], MtlsMode::Permissive).await;
    let out = raw(p.server.dp.inbound_addr, &plaintext_request(p.app.port())).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("app saw /plain"), "{out}");
    let (status, _, body) = get_via(p.client.dp.outbound_addr, "http://reviews:9080/m").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app saw /m"));
    let m = p.server.metrics.encode();
    assert!(
        m.contains(&format!(
            r#"source_principal="{CLIENT_ID}",response_code="200",reason=""}} 1"#
        )),
        "{m}"
    );
    assert!(
        m.contains(r#"source_principal="",response_code="200",reason=""} 1"#),
        "{m}"
    );
}

// === rotation through a fake CA over TLS gRPC ===

struct FakeCa {
    ca: Arc<Ca>,
    issued: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl CertificateService for FakeCa {
    async fn create_certificate(
        &self,
        req: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some("Bearer good-token") {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let r = req.into_inner();
        let valid = Duration::from_secs(u64::try_from(r.validity_seconds).unwrap());
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(CreateCertificateResponse {
            cert_chain: self.ca.sign(&r.csr, valid),
        }))
    }
}

async fn start_fake_ca(ca: Arc<Ca>, issued: Arc<AtomicUsize>) -> SocketAddr {
    let (cert, key) = ca.server_cert("weft-control");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )
        .unwrap()
        .add_service(CertificateServiceServer::new(FakeCa { ca, issued }));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
    addr
}

/// A proxy identity renewed by a real rotation loop against the fake CA.
async fn rotating(
    id: &str,
    ca_addr: SocketAddr,
    ca_pem: &str,
    snapshot: &SharedSnapshot,
) -> Arc<MeshTls> {
    let tls = mesh_tls(ca_pem, snapshot, None);
    let ca = GrpcCaClient::new(&ca_addr.to_string(), ca_pem, "good-token".into()).unwrap();
    tokio::spawn(
        Rotator {
            ca,
            id: SpiffeId::parse(id).unwrap(),
            store: tls.store().clone(),
            metrics: Arc::new(Metrics::new()),
            retry: RetryPolicy::default(),
            validity: Duration::from_secs(2),
        }
        .run(CancellationToken::new()),
    );
    let mut rx = tls.store().subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
        .await
        .expect("no certificate from the fake CA")
        .unwrap();
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_certificates_rotate_under_traffic_without_a_failed_request() {
    install_provider();
    let ca = Arc::new(Ca::new("root"));
    let issued = Arc::new(AtomicUsize::new(0));
    let ca_addr = start_fake_ca(ca.clone(), issued.clone()).await;

    let app = start_app().await;
    let server_in = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh_port = server_in.local_addr().unwrap().port();
    let server_snap =
        SharedSnapshot::new(Snapshot::build(&server_parts(app.port(), MtlsMode::Strict)));
    let server_tls = rotating(SERVER_ID, ca_addr, &ca.pem(), &server_snap).await;
    let server = start_proxy(server_in, server_snap, Some(server_tls.clone()), NODE).await;
    let client_snap = SharedSnapshot::new(Snapshot::build(&client_parts(
        app,
        mesh_port,
        vec![SERVER_ID.into()],
    )));
    let client_tls = rotating(CLIENT_ID, ca_addr, &ca.pem(), &client_snap).await;

    // Traffic for 7 s (several 2 s lifetimes): a long-lived client proxy (one pooled
    // connection made with the first certificates) and, every 250 ms, a fresh client proxy
    // (a new handshake, with whatever certificates are current on both sides).
    let long_lived = start_proxy(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        client_snap.clone(),
        Some(client_tls.clone()),
        NODE,
    )
    .await;
    let first_serials = (
        client_tls.store().current().unwrap().serial.clone(),
        server_tls.store().current().unwrap().serial.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    let (mut ok, mut failed, mut fresh) = (0, Vec::new(), 0);
    let mut serials = std::collections::BTreeSet::new();
    while tokio::time::Instant::now() < deadline {
        let (s, code, body) = get_via(long_lived.dp.outbound_addr, "http://reviews:9080/l").await;
        if s == StatusCode::OK {
            ok += 1
        } else {
            failed.push(format!("long-lived: {s} {code} {body}"))
        }
        let p = start_proxy(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            client_snap.clone(),
            Some(client_tls.clone()),
            NODE,
        )
        .await;
        let (s, code, body) = get_via(p.dp.outbound_addr, "http://reviews:9080/f").await;
        if s == StatusCode::OK {
            fresh += 1
        } else {
            failed.push(format!("fresh: {s} {code} {body}"))
        }
        serials.insert(client_tls.store().current().unwrap().serial.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:#?}",
        failed.len()
    );
    assert!(ok > 10 && fresh > 10, "ok={ok} fresh={fresh}");
    assert!(
        serials.len() >= 4,
        "the client certificate rotated only {} times",
        serials.len() - 1
    );
    assert_ne!(
        client_tls.store().current().unwrap().serial,
        first_serials.0
    );
    assert_ne!(
        server_tls.store().current().unwrap().serial,
        first_serials.1
    );
    assert!(
        issued.load(Ordering::SeqCst) >= 8,
        "{}",
        issued.load(Ordering::SeqCst)
    );
    // The server saw only mTLS from the expected principal.
    let m = server.metrics.encode();
    assert!(!m.contains("weft_tls_handshake_failures_total{"), "{m}");
}
