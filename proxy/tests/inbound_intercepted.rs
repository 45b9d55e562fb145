//! The inbound listener with interception, over real loopback sockets and without root: the
//! original destination is injected ([`Redirects`], an `OrigDst` that maps the client's
//! address to the pod address and port it "dialed"), and everything after that lookup is the
//! production path: detection, PeerAuthentication, the splice to the app, the mesh hop.
//!
//! Clients here are outside the mesh (no sidecar): opaque TCP, a server-first protocol, the
//! application's own TLS; and a mesh proxy, whose ClientHello must carry the mesh marker.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use weft_proxy::app::{DataPlane, DataPlaneParams, Interception, spawn_data_plane_with};
use weft_proxy::detect::{self, Detection, MESH_ALPN};
use weft_proxy::identity::{
    CertStore, Certified, MeshTls, SpiffeId, Trust, TrustBundle, new_key_and_csr, validate_chain,
};
use weft_proxy::model::*;
use weft_proxy::outbound::Workload;
use weft_proxy::telemetry::Metrics;
use weft_proxy::transport::{ExpectedIdentities, MeshClientTls, MeshServerTls, OrigDst};
use x509_parser::time::ASN1Time;

use common::{cluster as cluster_spec, get_via, port, reviews_inbound, service};

/// The detection bound of the proxies under test: short, so the timeout case is quick, and
/// long enough to tell "at once" from "after the timeout".
const DETECT_TIMEOUT: Duration = Duration::from_millis(800);

/// The pod's address as the redirected client saw it; only its port matters to the inbound.
const POD_IP: [u8; 4] = [10, 0, 0, 5];

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// Test interception: the client's own address -> the destination it "dialed".
#[derive(Default)]
struct Redirects(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl OrigDst for Redirects {
    fn orig_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let peer = stream.peer_addr().ok()?;
        self.0.lock().unwrap().get(&peer).copied()
    }
}

impl Redirects {
    /// A socket from 127.0.0.1 whose connection will look redirected from `dst`.
    fn socket(&self, dst: SocketAddr) -> TcpSocket {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        self.0
            .lock()
            .unwrap()
            .insert(sock.local_addr().unwrap(), dst);
        sock
    }
}

struct Pod {
    dp: DataPlane,
    metrics: Arc<Metrics>,
    redirects: Arc<Redirects>,
    _shutdown: DropGuard,
}

impl Pod {
    /// A client outside the mesh connects to the pod's `app_port`; iptables (here: the map)
    /// sends it to the inbound listener.
    async fn dial(&self, app_port: u16) -> TcpStream {
        self.redirects
            .socket(SocketAddr::from((POD_IP, app_port)))
            .connect(self.dp.inbound_addr)
            .await
            .unwrap()
    }

    fn metric(&self, needle: &str) -> bool {
        self.metrics.encode().lines().any(|l| l.contains(needle))
    }
}

/// A proxy whose workload serves `ports` under `mode`, its app on `app_ip`.
async fn start_pod(
    ports: &[u16],
    mode: MtlsMode,
    app_ip: IpAddr,
    tls: Option<Arc<MeshTls>>,
) -> Pod {
    let snapshot = SharedSnapshot::new(Snapshot::build(&Parts {
        inbound: Some(reviews_inbound(
            SERVER_ID,
            ports.iter().map(|p| port(*p)).collect(),
            mode,
        )),
        ..Default::default()
    }));
    start_pod_with(snapshot, app_ip, tls).await
}

async fn start_pod_with(
    snapshot: SharedSnapshot,
    app_ip: IpAddr,
    tls: Option<Arc<MeshTls>>,
) -> Pod {
    let metrics = Arc::new(Metrics::new());
    let redirects = Arc::new(Redirects::default());
    let shutdown = CancellationToken::new();
    let dp = spawn_data_plane_with(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DataPlaneParams {
            snapshot,
            metrics: metrics.clone(),
            workload: Workload::from_node_id("reviews-v1.default"),
            app_address: app_ip,
            tls,
        },
        Interception {
            orig_dst: redirects.clone(),
            detect_timeout: DETECT_TIMEOUT,
            other_own_addrs: vec![],
        },
        &shutdown,
        &TaskTracker::new(),
    )
    .unwrap();
    Pod {
        dp,
        metrics,
        redirects,
        _shutdown: shutdown.drop_guard(),
    }
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A TCP echo app on `l`; with `greeting`, it speaks first (server-first, like MySQL). The
/// counter is the connections it accepted.
fn serve_echo(l: TcpListener, greeting: Option<&'static [u8]>) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    s.write_all(g).await.unwrap();
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    accepted
}

async fn start_echo(greeting: Option<&'static [u8]>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap().port();
    (p, serve_echo(l, greeting))
}

/// Reads until the peer closes (bounded, so a hang fails the test instead of blocking it).
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection was not closed")
        .ok();
    out
}

/// Reads exactly `n` bytes (bounded).
async fn read_n<S: tokio::io::AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    buf
}

const OPAQUE: &[u8] = b"\x00\x01\x02 a database protocol, not HTTP";

// === opaque TCP from outside the mesh ===

#[tokio::test]
async fn opaque_plaintext_to_a_permissive_port_reaches_the_app() {
    let (app_port, accepted) = start_echo(None).await;
    let pod = start_pod(&[app_port], MtlsMode::Permissive, localhost(), None).await;
    let mut s = pod.dial(app_port).await;
    s.write_all(OPAQUE).await.unwrap();
    assert_eq!(read_n(&mut s, OPAQUE.len()).await, OPAQUE);
    // Both directions keep flowing after the first bytes.
    s.write_all(b"more").await.unwrap();
    assert_eq!(read_n(&mut s, 4).await, b"more");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(
        pod.metric(r#"weft_protocol_detect_total{outcome="opaque"} 1"#),
        "{}",
        pod.metrics.encode()
    );
}

#[tokio::test]
async fn opaque_plaintext_to_a_strict_port_is_refused_and_counted() {
    let (app_port, accepted) = start_echo(None).await;
    let pod = start_pod(&[app_port], MtlsMode::Strict, localhost(), None).await;
    let mut s = pod.dial(app_port).await;
    s.write_all(OPAQUE).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app was reached");
    assert!(
        pod.metric(r#"weft_tls_handshake_failures_total{direction="inbound",reason="plaintext-to-strict"} 1"#),
        "{}",
        pod.metrics.encode()
    );
}

#[tokio::test]
async fn plaintext_http_from_outside_the_mesh_still_uses_the_original_port() {
    let (app_addr, _) = common::start_status_server(StatusCode::NO_CONTENT).await;
    let pod = start_pod(&[app_addr.port()], MtlsMode::Permissive, localhost(), None).await;
    let mut s = pod.dial(app_addr.port()).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    assert!(pod.metric(r#"weft_protocol_detect_total{outcome="http1"} 1"#));
}

// === server-first ===

#[tokio::test]
async fn a_server_first_protocol_on_3306_greets_at_once() {
    // 3306 may be taken on 127.0.0.1 (a real MySQL); another loopback address is the app's.
    let mut bound = None;
    for ip in ["127.0.0.61", "127.0.0.62", "127.0.0.63", "127.0.0.1"] {
        if let Ok(l) = TcpListener::bind((ip, 3306)).await {
            bound = Some((l, ip.parse::<IpAddr>().unwrap()));
            break;
        }
    }
    let Some((l, app_ip)) = bound else {
        panic!("no loopback address has port 3306 free");
    };
    let accepted = serve_echo(l, Some(b"mysql greeting\n"));
    let pod = start_pod(&[3306], MtlsMode::Permissive, app_ip, None).await;
    let started = Instant::now();
    let mut s = pod.dial(3306).await;
    assert_eq!(read_n(&mut s, 15).await, b"mysql greeting\n");
    let took = started.elapsed();
    assert!(took < DETECT_TIMEOUT, "the greeting took {took:?}");
    s.write_all(b"login").await.unwrap();
    assert_eq!(read_n(&mut s, 5).await, b"login");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(pod.metric(r#"weft_protocol_detect_total{outcome="skipped"} 1"#));
}

#[tokio::test]
async fn a_server_first_protocol_on_an_unlisted_port_greets_after_the_detect_timeout() {
    let (app_port, _) = start_echo(Some(b"hello from the server\n")).await;
    let pod = start_pod(&[app_port], MtlsMode::Permissive, localhost(), None).await;
    let started = Instant::now();
    let mut s = pod.dial(app_port).await;
    assert_eq!(read_n(&mut s, 22).await, b"hello from the server\n");
    let took = started.elapsed();
    assert!(
        took >= DETECT_TIMEOUT && took < DETECT_TIMEOUT * 4,
        "the greeting took {took:?}"
    );
    s.write_all(b"ok").await.unwrap();
    assert_eq!(read_n(&mut s, 2).await, b"ok");
    assert!(pod.metric(r#"weft_protocol_detect_total{outcome="timeout"} 1"#));
}

// === the application's own TLS ===

/// An app terminating its own TLS with a self-signed certificate for `app.example`: it
/// answers each chunk with `tls app got: <chunk>`. Returns its port, the certificate (the
/// client's root) and the accepted-connection count.
async fn start_tls_app() -> (u16, CertificateDer<'static>, Arc<AtomicUsize>) {
    let ck = rcgen::generate_simple_self_signed(vec!["app.example".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = b"tls app got: ".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if tls.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (p, cert, accepted)
}

/// A plain rustls client trusting only the app's certificate; no mesh ALPN (it offers
/// `http/1.1`, as an HTTPS client would).
fn app_tls_client(root: CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn application_tls_to_a_permissive_port_passes_through_end_to_end() {
    application_tls_passes_through(MtlsMode::Permissive).await;
}

#[tokio::test]
async fn application_tls_to_a_disabled_port_passes_through_end_to_end() {
    application_tls_passes_through(MtlsMode::Disable).await;
}

async fn application_tls_passes_through(mode: MtlsMode) {
    let (app_port, root, accepted) = start_tls_app().await;
    let ca = Ca::new("mesh root");
    let snapshot = SharedSnapshot::new(Snapshot::build(&server_parts(app_port, mode)));
    // The pod has a mesh identity: the app's TLS must still not be taken for the mesh's.
    let tls = mesh_tls(&ca.pem(), &snapshot, Some(ca.certified(SERVER_ID)));
    let pod = start_pod_with(snapshot, localhost(), Some(tls)).await;
    let s = pod.dial(app_port).await;
    let name = ServerName::try_from("app.example").unwrap();
    let mut tls = app_tls_client(root).connect(name, s).await.unwrap();
    tls.write_all(b"secret").await.unwrap();
    let got = read_n(&mut tls, 19).await;
    assert_eq!(got, b"tls app got: secret");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(
        pod.metric(r#"weft_protocol_detect_total{outcome="tls_app"} 1"#),
        "{}",
        pod.metrics.encode()
    );
    assert!(
        !pod.metric("weft_tls_handshake_failures_total{"),
        "{}",
        pod.metrics.encode()
    );
}

#[tokio::test]
async fn application_tls_to_a_strict_port_is_refused() {
    let (app_port, root, accepted) = start_tls_app().await;
    let ca = Ca::new("mesh root");
    let snapshot = SharedSnapshot::new(Snapshot::build(&server_parts(app_port, MtlsMode::Strict)));
    let tls = mesh_tls(&ca.pem(), &snapshot, Some(ca.certified(SERVER_ID)));
    let pod = start_pod_with(snapshot, localhost(), Some(tls)).await;
    let s = pod.dial(app_port).await;
    let name = ServerName::try_from("app.example").unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        app_tls_client(root).connect(name, s),
    )
    .await
    .expect("the refusal took too long");
    assert!(r.is_err(), "the handshake succeeded under STRICT");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app was reached");
    assert!(
        pod.metric(r#"weft_tls_handshake_failures_total{direction="inbound",reason="plaintext-to-strict"} 1"#),
        "{}",
        pod.metrics.encode()
    );
}

// === the mesh hop ===

#[tokio::test]
async fn the_mesh_client_offers_the_marker_and_the_server_still_selects_h2() {
    install_provider();
    let ca = Ca::new("root");
    let snapshot = SharedSnapshot::default();
    let client = mesh_tls(&ca.pem(), &snapshot, Some(ca.certified(CLIENT_ID)));
    let server = mesh_tls(&ca.pem(), &snapshot, Some(ca.certified(SERVER_ID)));
    let cfg = client
        .client_config(&ExpectedIdentities::new(vec![SERVER_ID.into()]))
        .unwrap();
    assert_eq!(cfg.alpn_protocols, vec![MESH_ALPN.to_vec(), b"h2".to_vec()]);

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let srv = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let tls = acceptor.accept(s).await.unwrap();
        tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    });
    let s = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("weft-mesh").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, s)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(srv.await.unwrap().as_deref(), Some(&b"h2"[..]));
}

/// Mesh mTLS through an intercepted inbound connection: a client proxy's hop goes through a
/// tap (which checks its ClientHello carries the marker) that arrives at the server proxy as
/// a redirected connection, so the server detects the mesh hello and serves it as before.
#[tokio::test]
async fn an_intercepted_mesh_hello_carries_the_marker_and_is_served_as_mtls() {
    install_provider();
    let ca = Ca::new("root");
    let app = start_http_app().await;
    let server_snap =
        SharedSnapshot::new(Snapshot::build(&server_parts(app.port(), MtlsMode::Strict)));
    let server_tls = mesh_tls(&ca.pem(), &server_snap, Some(ca.certified(SERVER_ID)));
    let server = start_pod_with(server_snap, localhost(), Some(server_tls)).await;

    // The tap: reads the ClientHello, reports it, then relays both ways to the server's
    // inbound from a socket the server sees as redirected from the app port.
    let tap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tap_port = tap.local_addr().unwrap().port();
    let (hello_tx, hello_rx) = oneshot::channel();
    let redirected = server
        .redirects
        .socket(SocketAddr::from((POD_IP, app.port())));
    let inbound = server.dp.inbound_addr;
    tokio::spawn(async move {
        let (mut c, _) = tap.accept().await.unwrap();
        let (detection, prefix, _) =
            detect::detect(&mut c, Duration::from_secs(5), detect::DEFAULT_MAX)
                .await
                .unwrap();
        hello_tx.send(detection).unwrap();
        let mut up = redirected.connect(inbound).await.unwrap();
        up.write_all(&prefix).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
    });

    let client_snap = SharedSnapshot::new(Snapshot::build(&client_parts(app, tap_port)));
    let client_tls = mesh_tls(&ca.pem(), &client_snap, Some(ca.certified(CLIENT_ID)));
    let client = common::start_proxy(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        client_snap,
        Some(client_tls),
        "productpage-v1.default",
    )
    .await;
    let (status, code, body) = get_via(client.dp.outbound_addr, "http://reviews:9080/m").await;
    assert_eq!(
        (status, code.as_str(), body.as_str()),
        (StatusCode::OK, "", "app saw /m")
    );
    match hello_rx.await.unwrap() {
        Detection::Tls(hello) => {
            assert!(hello.mesh, "{hello:?}");
            assert_eq!(hello.alpn, vec![MESH_ALPN.to_vec(), b"h2".to_vec()]);
        }
        other => panic!("the mesh hop did not open with a ClientHello: {other:?}"),
    }
    let m = server.metrics.encode();
    assert!(
        m.contains(r#"weft_protocol_detect_total{outcome="tls_mesh"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            r#"source_principal="{CLIENT_ID}",response_code="200",reason=""}} 1"#
        )),
        "{m}"
    );
    assert!(!m.contains("weft_tls_handshake_failures_total{"), "{m}");
}

// === fixtures: a throwaway CA, configs, an HTTP app ===

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

    /// A certificate for `id`, made and signed as the proxy and the mesh CA make it.
    fn certified(&self, id: &str) -> Certified {
        let id = SpiffeId::parse(id).unwrap();
        let kc = new_key_and_csr(&id).unwrap();
        let mut csr = CertificateSigningRequestParams::from_pem(&kc.csr_pem).unwrap();
        let now = unix_now();
        csr.params.not_before = ASN1Time::from_timestamp(now - 60).unwrap().to_datetime();
        csr.params.not_after = ASN1Time::from_timestamp(now + 3600).unwrap().to_datetime();
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let chain = vec![csr.signed_by(&self.issuer).unwrap().pem(), self.pem()];
        validate_chain(&id, &kc.key, &chain, SystemTime::now()).unwrap()
    }
}

fn mesh_tls(trust_pem: &str, snapshot: &SharedSnapshot, cert: Option<Certified>) -> Arc<MeshTls> {
    install_provider();
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

/// The server workload's config: it serves `app_port` with `mode`.
fn server_parts(app_port: u16, mode: MtlsMode) -> Parts {
    Parts {
        inbound: Some(reviews_inbound(SERVER_ID, vec![port(app_port)], mode)),
        ..Default::default()
    }
}

/// The client's config: reviews:9080 -> the app, through a peer proxy at `mesh_port`.
fn client_parts(app: SocketAddr, mesh_port: u16) -> Parts {
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
            identities: vec![SERVER_ID.into()],
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

/// An HTTP/1.1 + h2c app answering `app saw <path>`.
async fn start_http_app() -> SocketAddr {
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
