//! TLS origination (DestinationRule SIMPLE) over real loopback sockets: the app speaks plain
//! HTTP to its sidecar, the sidecar opens TLS to an HTTPS server outside the mesh whose
//! certificate comes from an rcgen CA made in the test.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use weft_api::discovery::DiscoveryResponse;
use weft_api::mesh as pb;
use weft_api::type_url::{self, Resource as _};
use weft_proxy::model::*;
use weft_proxy::xds::Applier;

use common::{Proxy, get_via, service, start_proxy};

const HOST: &str = "secure.example.com";

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }
}

/// An HTTPS server (HTTP/1.1 and h2 by ALPN) with a certificate for `HOST` from `ca`.
async fn start_https(ca: &Ca) -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![HOST.to_string()])
        .unwrap()
        .signed_by(&key, &ca.0)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_string())
                        .or_else(|| req.uri().authority().map(|a| a.to_string()))
                        .unwrap_or_default();
                    let text = format!("tls app saw {} for {host}", req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn cluster_pb(name: &str, mode: pb::upstream_tls::Mode, ca: &str, sans: &[&str]) -> pb::Cluster {
    pb::Cluster {
        name: name.into(),
        service: HOST.into(),
        port: 443,
        tls: Some(pb::UpstreamTls {
            mode: mode as i32,
            sni: HOST.into(),
            subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
            ca_certificates: ca.into(),
            insecure_skip_verify: false,
        }),
        ..Default::default()
    }
}

/// `HOST` routed to `cluster` (converted from the wire, as xDS would), endpoint `server`
/// without a sidecar.
fn parts(server: SocketAddr, cluster: &pb::Cluster) -> Parts {
    let mut parts = Parts::default();
    parts.services.insert(
        HOST.into(),
        service(HOST, "", vec![], vec![], &cluster.name),
    );
    parts.clusters.insert(
        cluster.name.clone(),
        Arc::new(ClusterSpec::try_from(cluster).unwrap()),
    );
    parts.endpoints.insert(
        cluster.name.clone(),
        Arc::from(vec![Endpoint {
            addr: server,
            mesh_port: None,
            identity: String::new(),
            weight: 1,
            workload: String::new(),
            labels: BTreeMap::new(),
        }]),
    );
    parts
}

async fn proxy_for(server: SocketAddr, c: &pb::Cluster) -> Proxy {
    let snapshot = SharedSnapshot::new(Snapshot::build(&parts(server, c)));
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy(inbound, snapshot, None, "x.default").await
}

const NAME: &str = "outbound|443||secure.example.com";
const URI: &str = "http://secure.example.com/hello";

#[tokio::test]
async fn plain_http_from_the_app_leaves_as_verified_tls() {
    let ca = Ca::new("test root");
    let server = start_https(&ca).await;

    // Inline PEM.
    let c = cluster_pb(NAME, pb::upstream_tls::Mode::Simple, &ca.0.pem(), &[]);
    let p = proxy_for(server, &c).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::OK, "{code} {body}");
    assert_eq!(body, "tls app saw /hello for secure.example.com");
    // A second request rides the pooled TLS connection.
    assert_eq!(get_via(p.dp.outbound_addr, URI).await.0, StatusCode::OK);

    // A file path, read when the snapshot is built; subject_alt_names that match.
    let dir = std::env::temp_dir().join(format!("weft-origination-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.0.pem()).unwrap();
    let c = cluster_pb(
        NAME,
        pb::upstream_tls::Mode::Simple,
        path.to_str().unwrap(),
        &["other.example.com", HOST],
    );
    let p = proxy_for(server, &c).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::OK, "{code} {body}");

    // An unreadable file fails the requests with a reason, not the config.
    let c = cluster_pb(
        NAME,
        pb::upstream_tls::Mode::Simple,
        dir.join("missing.pem").to_str().unwrap(),
        &[],
    );
    let p = proxy_for(server, &c).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "upstream-tls-unsupported");
    assert!(body.contains("missing.pem"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_server_that_fails_verification_is_a_readable_503() {
    let ca = Ca::new("test root");
    let server = start_https(&ca).await;

    // Another CA: unknown issuer.
    let c = cluster_pb(
        NAME,
        pb::upstream_tls::Mode::Simple,
        &Ca::new("other root").0.pem(),
        &[],
    );
    let p = proxy_for(server, &c).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "upstream-tls-failed");
    assert!(
        body.contains("unknown-issuer") && body.contains(HOST),
        "{body}"
    );
    let m = p.metrics.encode();
    assert!(
        m.contains(r#"direction="outbound",reason="unknown-issuer""#),
        "{m}"
    );

    // The right CA, but subject_alt_names the certificate does not carry.
    let c = cluster_pb(
        NAME,
        pb::upstream_tls::Mode::Simple,
        &ca.0.pem(),
        &["payments.example.com"],
    );
    let p = proxy_for(server, &c).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "upstream-tls-failed");
    assert!(
        body.contains("name-mismatch") && body.contains("payments.example.com"),
        "{body}"
    );
}

#[tokio::test]
async fn mutual_is_applied_but_refused_per_request() {
    let ca = Ca::new("test root");
    let server = start_https(&ca).await;

    // The whole response is applied: MUTUAL does not NACK its neighbour.
    let shared = SharedSnapshot::default();
    let mut applier = Applier::new(shared.clone());
    let mutual = cluster_pb(NAME, pb::upstream_tls::Mode::Mutual, &ca.0.pem(), &[]);
    let simple = cluster_pb(
        "outbound|443||other",
        pb::upstream_tls::Mode::Simple,
        "",
        &[],
    );
    applier
        .apply_sotw(&DiscoveryResponse {
            type_url: type_url::CLUSTER.into(),
            version_info: "1".into(),
            resources: vec![mutual.to_any(), simple.to_any()],
            ..Default::default()
        })
        .unwrap();
    let snap = shared.load();
    assert_eq!(snap.clusters.len(), 2);
    assert_eq!(
        snap.cluster(NAME).unwrap().spec.tls,
        UpstreamTlsMode::Mutual
    );

    let p = proxy_for(server, &mutual).await;
    let (status, code, body) = get_via(p.dp.outbound_addr, URI).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "upstream-tls-unsupported");
    assert!(
        body.contains(NAME) && body.contains("client certificate"),
        "{body}"
    );
}
