//! The whole proxy (`app::run`) with an identity, against a fake control plane on one TLS
//! port (CA + ADS, as 15012 is): the token file is read, a certificate is issued and shown by
//! the admin endpoints, and the xDS stream presents the proxy's client certificate.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_api::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use weft_api::ca::{CreateCertificateRequest, CreateCertificateResponse};
use weft_api::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_proxy::app::{self, Config, IdentityConfig};
use weft_proxy::identity::spiffe_id_of;
use weft_proxy::xds::Mode;
use x509_parser::time::ASN1Time;

const ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";

struct Ca(CertifiedIssuer<'static, KeyPair>);

/// The fake control plane: a CA, and an ADS server that records who connected and sends
/// nothing (the proxy then waits for config, which is all this test needs).
#[derive(Clone)]
struct FakeCp {
    ca: Arc<Ca>,
    /// The SPIFFE ID of each ADS stream's client certificate (`None`: no certificate).
    ads_clients: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl CertificateService for FakeCp {
    async fn create_certificate(
        &self,
        req: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        if req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer s3cret")
        {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(&req.into_inner().csr)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        csr.params.not_before = ASN1Time::from_timestamp(now - 60).unwrap().to_datetime();
        csr.params.not_after = ASN1Time::from_timestamp(now + 3600).unwrap().to_datetime();
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = csr.signed_by(&self.ca.0).unwrap();
        Ok(tonic::Response::new(CreateCertificateResponse {
            cert_chain: vec![leaf.pem(), self.ca.0.pem()],
        }))
    }
}

type Pending<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

impl FakeCp {
    fn record<T>(&self, req: &tonic::Request<T>) {
        let id = req
            .peer_certs()
            .and_then(|c| c.first().and_then(spiffe_id_of));
        self.ads_clients.lock().unwrap().push(id);
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeCp {
    type StreamAggregatedResourcesStream = Pending<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Pending<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        self.record(&req);
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        self.record(&req);
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }
}

fn new_ca() -> Ca {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, "root");
    Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
}

/// Serves CA + ADS on one TLS port as "weft-control"; client certificates are optional and
/// checked against the mesh root, as the control plane does.
async fn start_cp(cp: FakeCp) -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["weft-control".to_string()])
        .unwrap()
        .signed_by(&key, &cp.ca.0)
        .unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            cert.pem(),
            key.serialize_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(cp.ca.0.pem()))
        .client_auth_optional(true);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(CertificateServiceServer::new(cp.clone()))
        .add_service(AggregatedDiscoveryServiceServer::new(cp));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_gets_a_certificate_and_presents_it_to_xds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = FakeCp {
        ca: Arc::new(new_ca()),
        ads_clients: Arc::default(),
    };
    let cp_addr = start_cp(cp.clone()).await;

    let dir = std::env::temp_dir().join(format!("weft-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_root = dir.join("ca.pem");
    std::fs::write(&ca_root, cp.ca.0.pem()).unwrap();
    let token_file = dir.join("token.json");
    std::fs::write(
        &token_file,
        format!(r#"{{"token":"s3cret","identity":"{ID}","node_id":"productpage.default"}}"#),
    )
    .unwrap();

    let admin_port = free_port();
    let cfg = Config {
        node_id: "productpage.default".into(),
        address: "127.0.0.1".parse().unwrap(),
        app_address: "127.0.0.1".parse().unwrap(),
        xds_addr: cp_addr.to_string(),
        xds_mode: Mode::Delta,
        outbound_port: free_port(),
        inbound_port: free_port(),
        admin_port,
        drain: Duration::from_millis(100),
        detect_timeout: weft_proxy::outbound::DEFAULT_DETECT_TIMEOUT,
        identity: Some(IdentityConfig {
            ca_root,
            token_file,
            ca_addr: cp_addr.to_string(),
            cert_validity: Duration::ZERO,
        }),
    };
    let shutdown = CancellationToken::new();
    let proxy = tokio::spawn(app::run(cfg, shutdown.clone()));
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    // The certificate arrives and xDS connects with it.
    let mut dump = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            continue;
        }
        dump = admin_get(admin, "/config_dump").await.1;
        if dump.contains(ID) && !cp.ads_clients.lock().unwrap().is_empty() {
            break;
        }
    }
    assert!(dump.contains(&format!(r#""identity": "{ID}""#)), "{dump}");
    assert!(
        dump.contains("serial") && !dump.contains("PRIVATE"),
        "{dump}"
    );
    assert_eq!(
        cp.ads_clients.lock().unwrap().first().cloned(),
        Some(Some(ID.to_string())),
        "the ADS stream must present the proxy's certificate"
    );
    // Ready waits for config now, no longer for the certificate.
    let (status, body) = admin_get(admin, "/ready").await;
    assert_eq!(status, 503);
    assert!(!body.contains("certificate"), "{body}");
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains(r#"weft_identity_cert_rotations_total{result="success"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("weft_identity_cert_expiry_timestamp_seconds 0"),
        "{metrics}"
    );

    shutdown.cancel();
    proxy.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
