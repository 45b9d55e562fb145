//! Transparent outbound over real loopback sockets, without root: the original destination
//! is injected ([`Redirects`], an `OrigDst` that maps the client's address to where the app
//! "connected"), and everything after that lookup is the production path: detection, routing
//! by address, the attempt loop, the mesh hop, passthrough and refusal.
//!
//! Services get made-up virtual IPs (10.96.0.0/16) that nothing listens on: only the proxy's
//! routing by address can reach their endpoints.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use weft_proxy::app::{DataPlane, DataPlaneParams, Interception, spawn_data_plane_with};
use weft_proxy::model::*;
use weft_proxy::outbound::Workload;
use weft_proxy::telemetry::Metrics;
use weft_proxy::transport::OrigDst;

use common::{cluster as cluster_spec, port, reviews_inbound};

/// The detection bound of the proxies under test: short, so the timeout case is quick, and
/// long enough to tell "at once" from "after the timeout".
const DETECT_TIMEOUT: Duration = Duration::from_millis(800);

/// Test interception: the client's own address -> the destination it "dialed".
#[derive(Default)]
struct Redirects(Mutex<HashMap<SocketAddr, SocketAddr>>);

impl OrigDst for Redirects {
    fn orig_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let peer = stream.peer_addr().ok()?;
        self.0.lock().unwrap().get(&peer).copied()
    }
}

struct Mesh {
    dp: DataPlane,
    metrics: Arc<Metrics>,
    redirects: Arc<Redirects>,
    _shutdown: DropGuard,
}

impl Mesh {
    /// What the app does: connect to `dst`; iptables (here: the map) sends it to the
    /// proxy's outbound listener.
    async fn dial(&self, dst: SocketAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let me = sock.local_addr().unwrap();
        self.redirects.0.lock().unwrap().insert(me, dst);
        sock.connect(self.dp.outbound_addr).await.unwrap()
    }

    async fn h1(&self, dst: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let s = self.dial(dst).await;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn metric(&self, needle: &str) -> bool {
        self.metrics.encode().lines().any(|l| l.contains(needle))
    }
}

/// An HTTP/1.1 + h2c server answering `<name> saw <method> <path> host=<host> <version>`.
async fn start_named_app(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let host = req
                        .headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_string())
                        .or_else(|| req.uri().authority().map(|a| a.to_string()))
                        .unwrap_or_default();
                    let text = format!(
                        "{name} saw {} {} host={host} {:?}",
                        req.method(),
                        req.uri().path(),
                        req.version()
                    );
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP echo server; with `greeting`, it speaks first (server-first, like MySQL).
async fn start_echo(
    greeting: Option<&'static [u8]>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    s.write_all(g).await.unwrap();
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

fn vip(last: u8, p: u16) -> SocketAddr {
    SocketAddr::from(([10, 96, 0, last], p))
}

fn endpoint(addr: SocketAddr, mesh_port: Option<u16>) -> Endpoint {
    Endpoint {
        addr,
        mesh_port,
        identity: String::new(),
        weight: 1,
        workload: "default/app-v1".into(),
        labels: BTreeMap::new(),
    }
}

/// Service `name` at virtual IP `vip` with `routes` (weighted clusters of its HTTP route),
/// each cluster's one endpoint given.
fn add_service(parts: &mut Parts, name: &str, vip: SocketAddr, routes: Vec<(&str, u32, Endpoint)>) {
    let fqdn = format!("{name}.default.svc.cluster.local");
    let mut clusters = Vec::new();
    for (subset, weight, ep) in routes {
        let cname = format!("outbound|{}|{subset}|{fqdn}", vip.port());
        parts.clusters.insert(
            cname.clone(),
            Arc::new(ClusterSpec {
                subset: subset.into(),
                ..cluster_spec(&cname, &fqdn, vip.port())
            }),
        );
        parts.endpoints.insert(cname.clone(), Arc::from(vec![ep]));
        clusters.push(WeightedCluster {
            cluster: cname,
            weight,
        });
    }
    // The default cluster of opaque TCP (no tcp route): the first destination's.
    let default = format!("outbound|{}||{fqdn}", vip.port());
    let first = parts.clusters.get(&clusters[0].cluster).unwrap().clone();
    let first_eps = parts.endpoints.get(&clusters[0].cluster).unwrap().clone();
    parts.clusters.insert(
        default.clone(),
        Arc::new(ClusterSpec {
            name: default.clone(),
            ..(*first).clone()
        }),
    );
    parts.endpoints.insert(default, first_eps);
    parts.services.insert(
        fqdn.clone(),
        Arc::new(Service {
            name: fqdn,
            namespace: "default".into(),
            aliases: vec![name.into()],
            ports: vec![port(vip.port())],
            http: vec![HttpRoute {
                name: "default".into(),
                matches: vec![],
                clusters,
                timeout: None,
                retries: Default::default(),
                fault: None,
            }],
            tcp: vec![],
            origin: String::new(),
            addresses: vec![IpNet::new(vip.ip(), 32)],
        }),
    );
}

struct Fixture {
    mesh: Mesh,
    /// Servers outside the mesh (no service has their address).
    outside_app: SocketAddr,
    outside_echo: SocketAddr,
    outside_echo_accepted: Arc<std::sync::atomic::AtomicUsize>,
}

/// One proxy (its inbound is the peer side of the mesh hop for its own outbound, as in the
/// other data-plane tests) that knows:
/// - reviews 10.96.0.10:9080 -> app "reviews" via the mesh hop;
/// - split 10.96.0.11:8080 -> "v1" 75% / "v2" 25%, direct;
/// - echo 10.96.0.20:7000 -> TCP echo via the mesh hop;
/// - mysql 10.96.0.30:3306 and greeter 10.96.0.31:7777 -> a server-first echo, direct.
async fn fixture(policy: OutboundTrafficPolicy) -> Fixture {
    let reviews = start_named_app("reviews").await;
    let v1 = start_named_app("v1").await;
    let v2 = start_named_app("v2").await;
    let (echo, _) = start_echo(None).await;
    let (greeter, _) = start_echo(Some(b"HELLO\n")).await;
    let outside_app = start_named_app("outside").await;
    let (outside_echo, outside_echo_accepted) = start_echo(None).await;

    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = inbound.local_addr().unwrap().port();
    let mut parts = Parts {
        mesh: Some(Arc::new(weft_proxy::model::Mesh {
            trust_domain: "cluster.local".into(),
            dns_domain: "cluster.local".into(),
            trust_bundle: vec![],
            outbound_traffic_policy: policy,
        })),
        inbound: Some(reviews_inbound(
            "",
            vec![port(reviews.port()), port(echo.port())],
            MtlsMode::Permissive,
        )),
        ..Default::default()
    };
    add_service(
        &mut parts,
        "reviews",
        vip(10, 9080),
        vec![("", 100, endpoint(reviews, Some(inbound_port)))],
    );
    add_service(
        &mut parts,
        "split",
        vip(11, 8080),
        vec![
            ("v1", 75, endpoint(v1, None)),
            ("v2", 25, endpoint(v2, None)),
        ],
    );
    add_service(
        &mut parts,
        "echo",
        vip(20, 7000),
        vec![("", 100, endpoint(echo, Some(inbound_port)))],
    );
    add_service(
        &mut parts,
        "mysql",
        vip(30, 3306),
        vec![("", 100, endpoint(greeter, None))],
    );
    add_service(
        &mut parts,
        "greeter",
        vip(31, 7777),
        vec![("", 100, endpoint(greeter, None))],
    );
    let snapshot = SharedSnapshot::new(Snapshot::build(&parts));

    let metrics = Arc::new(Metrics::new());
    let redirects = Arc::new(Redirects::default());
    let shutdown = CancellationToken::new();
    let dp = spawn_data_plane_with(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        inbound,
        DataPlaneParams {
            snapshot,
            metrics: metrics.clone(),
            workload: Workload::from_node_id("productpage.default"),
            app_address: "127.0.0.1".parse().unwrap(),
            tls: None,
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
    Fixture {
        mesh: Mesh {
            dp,
            metrics,
            redirects,
            _shutdown: shutdown.drop_guard(),
        },
        outside_app,
        outside_echo,
        outside_echo_accepted,
    }
}

fn origin_get(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(rsp: Response<Incoming>) -> String {
    String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Writes `msg` and reads back as many bytes, within 5 s.
async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// Whether the proxy closed `s` (EOF or reset) within 5 s without sending anything.
async fn closed_by_proxy(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn http1_origin_form_to_a_service_address_reaches_its_endpoint() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut c = f.mesh.h1(vip(10, 9080)).await;
    let rsp = c
        .send_request(origin_get("/books/1", "reviews"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = text(rsp).await;
    assert!(
        body.starts_with("reviews saw GET /books/1 host=reviews"),
        "{body}"
    );
    // A second request on the same (kept-alive) connection is routed too.
    let rsp = c
        .send_request(origin_get("/books/2", "reviews"))
        .await
        .unwrap();
    assert!(text(rsp).await.starts_with("reviews saw GET /books/2"));
    assert!(
        f.mesh
            .metric("weft_protocol_detect_total{outcome=\"http1\"} 1")
    );
}

#[tokio::test]
async fn weighted_split_applies_to_intercepted_requests() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut c = f.mesh.h1(vip(11, 8080)).await;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..200 {
        let rsp = c.send_request(origin_get("/", "split")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let body = text(rsp).await;
        if body.starts_with("v1 ") {
            v1 += 1;
        } else if body.starts_with("v2 ") {
            v2 += 1;
        } else {
            panic!("unexpected answer {body}");
        }
    }
    // 75/25 over 200: v1 ~150 (sd ~6); wide bounds keep this from flaking.
    assert!((120..=180).contains(&v1), "v1={v1} v2={v2}");
    assert_eq!(v1 + v2, 200);
}

#[tokio::test]
async fn the_service_at_the_address_wins_over_the_host_header() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut c = f.mesh.h1(vip(10, 9080)).await;
    // The Host names another service; the connection went to reviews' address.
    let rsp = c.send_request(origin_get("/x", "split")).await.unwrap();
    let body = text(rsp).await;
    assert!(body.starts_with("reviews saw GET /x host=split"), "{body}");
}

#[tokio::test]
async fn unknown_address_falls_back_to_the_host_headers_service() {
    let f = fixture(OutboundTrafficPolicy::RegistryOnly).await;
    // No service has 10.96.9.9, but the Host names reviews, which serves 9080.
    let mut c = f.mesh.h1(SocketAddr::from(([10, 96, 9, 9], 9080))).await;
    let rsp = c.send_request(origin_get("/y", "reviews")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(text(rsp).await.starts_with("reviews saw GET /y"));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_detected_and_routed() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let s = f.mesh.dial(vip(10, 9080)).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://reviews/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = text(rsp).await;
    assert!(body.starts_with("reviews saw GET /h2"), "{body}");
    assert!(body.ends_with("HTTP/2.0"), "the app got h2: {body}");
    assert!(
        f.mesh
            .metric("weft_protocol_detect_total{outcome=\"h2\"} 1")
    );
}

#[tokio::test]
async fn opaque_tcp_rides_the_mesh_hop_to_the_endpoint() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut s = f.mesh.dial(vip(20, 7000)).await;
    assert_eq!(echo_roundtrip(&mut s, b"ping\n").await, b"ping\n");
    assert_eq!(echo_roundtrip(&mut s, b"again").await, b"again");
    assert!(
        f.mesh
            .metric("weft_protocol_detect_total{outcome=\"opaque\"} 1")
    );
    // The tunnel went through the peer proxy (here: our own inbound), over one h2 connection.
    assert_eq!(f.mesh.dp.connector.mesh_connections(), 1);
}

#[tokio::test]
async fn unknown_address_passes_through_under_allow_any() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut c = f.mesh.h1(f.outside_app).await;
    let rsp = c
        .send_request(origin_get("/ext", "example.com"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = text(rsp).await;
    assert!(
        body.starts_with("outside saw GET /ext host=example.com"),
        "{body}"
    );

    let mut s = f.mesh.dial(f.outside_echo).await;
    assert_eq!(echo_roundtrip(&mut s, b"raw bytes").await, b"raw bytes");
}

#[tokio::test]
async fn unknown_address_is_refused_under_registry_only() {
    let f = fixture(OutboundTrafficPolicy::RegistryOnly).await;
    let mut c = f.mesh.h1(f.outside_app).await;
    let rsp = c
        .send_request(origin_get("/ext", "example.com"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(rsp.headers()["weft-proxy-error"], "registry-only");
    assert_eq!(
        rsp.headers()["x-weft-reason"].to_str().unwrap(),
        format!("registry_only({})", f.outside_app)
    );

    let mut s = f.mesh.dial(f.outside_echo).await;
    s.write_all(b"hello?").await.unwrap();
    assert!(closed_by_proxy(&mut s).await);
    assert_eq!(
        f.outside_echo_accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the destination"
    );
    assert!(
        f.mesh
            .metric("weft_outbound_refused_total{reason=\"registry_only\"} 2")
    );
}

#[tokio::test]
async fn server_first_on_a_skip_port_is_opaque_at_once() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let started = Instant::now();
    let mut s = f.mesh.dial(vip(30, 3306)).await;
    let mut greeting = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"HELLO\n");
    assert!(
        started.elapsed() < DETECT_TIMEOUT / 2,
        "the greeting waited for detection: {:?}",
        started.elapsed()
    );
    assert_eq!(echo_roundtrip(&mut s, b"QUERY").await, b"QUERY");
    assert!(
        f.mesh
            .metric("weft_protocol_detect_total{outcome=\"skipped\"} 1")
    );
}

#[tokio::test]
async fn server_first_on_an_unlisted_port_is_opaque_after_the_detect_timeout() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let started = Instant::now();
    let mut s = f.mesh.dial(vip(31, 7777)).await;
    let mut greeting = [0u8; 6];
    tokio::time::timeout(DETECT_TIMEOUT * 5, s.read_exact(&mut greeting))
        .await
        .expect("the connection must not wait forever")
        .unwrap();
    assert_eq!(&greeting, b"HELLO\n");
    assert!(
        started.elapsed() >= DETECT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(echo_roundtrip(&mut s, b"QUERY").await, b"QUERY");
    assert!(
        f.mesh
            .metric("weft_protocol_detect_total{outcome=\"timeout\"} 1")
    );
}

#[tokio::test]
async fn a_destination_that_is_the_proxy_itself_is_refused() {
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let inbound = f.mesh.dp.inbound_addr;
    let mut s = f.mesh.dial(inbound).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_proxy(&mut s).await);
    assert!(
        f.mesh
            .metric("weft_outbound_refused_total{reason=\"loop\"} 1")
    );
    // Local mode is untouched: a connection with no original destination is the explicit
    // proxy as before.
    let (status, _, body) = common::get_via(
        f.mesh.dp.outbound_addr,
        "http://reviews.default.svc.cluster.local:9080/local",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("reviews saw GET /local"), "{body}");
}

#[tokio::test]
async fn an_intercepted_connect_goes_to_the_address_dialed_not_to_its_authority() {
    // The app dialed its own forward proxy (outside the mesh) and sent CONNECT to a mesh
    // service: the bytes must reach the forward proxy untouched, not be re-routed by the
    // CONNECT authority to reviews.
    let f = fixture(OutboundTrafficPolicy::AllowAny).await;
    let mut s = f.mesh.dial(f.outside_echo).await;
    let connect = b"CONNECT reviews.default.svc.cluster.local:9080 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        echo_roundtrip(&mut s, connect).await,
        connect,
        "the forward proxy at the dialed address got the CONNECT request as sent"
    );
    assert_eq!(
        f.outside_echo_accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
