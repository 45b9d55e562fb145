//! The proxy's lifecycle, on the real `weft-proxy` binary in local mode: SIGTERM, SIGINT and
//! `POST /quitquitquit` drain (listeners closed at once, `/ready` 503, in-flight requests on
//! HTTP/1.1 and HTTP/2 finish, exit 0), the drain time bounds a request that hangs, and
//! `weft-proxy wait` blocks until `/ready` answers 200.
//!
//! The control plane is a fake delta-ADS server in the test process that answers every
//! subscription once with a fixed config: service `slow:8080` -> one endpoint, a test backend
//! that answers only when the test releases it. Every wait is bounded, and the test
//! synchronises on events (the backend seeing a request, the proxy's "draining" line), never
//! on sleeps.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_types::Any;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use weft_api::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use weft_api::mesh as pb;
use weft_api::type_url::{self, Resource as _};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");
const CLUSTER: &str = "outbound|8080||slow";
/// Generous bound for anything that should happen promptly (a 2-core CI box, shared).
const PROMPT: Duration = Duration::from_secs(20);

// === the fake control plane ===

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Answers each delta subscription once with the resources held for its type (none: an empty
/// answer, which still counts as "received" for readiness). `silent`: answers nothing.
#[derive(Clone)]
struct FakeAds {
    resources: Arc<HashMap<&'static str, Vec<(String, Any)>>>,
    silent: bool,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("this fake speaks delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let mut nonce = 0;
            // Kept until the proxy hangs up, so the response stream stays open.
            let _tx = tx.clone();
            while let Some(Ok(r)) = requests.next().await {
                // ACKs and NACKs carry the nonce they answer; only subscriptions get a reply.
                if me.silent || !r.response_nonce.is_empty() {
                    continue;
                }
                nonce += 1;
                let resources = me
                    .resources
                    .get(r.type_url.as_str())
                    .into_iter()
                    .flatten()
                    .map(|(name, any)| DeltaResource {
                        name: name.clone(),
                        version: "1".into(),
                        resource: Some(any.clone()),
                        ..Default::default()
                    })
                    .collect();
                let rsp = DeltaDiscoveryResponse {
                    system_version_info: "1".into(),
                    resources,
                    type_url: r.type_url.clone(),
                    nonce: format!("n{nonce}"),
                    ..Default::default()
                };
                if tx.send(Ok(rsp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Service `slow:8080` whose one route goes to `backend` (no sidecar there: plain HTTP).
fn config_for(backend: SocketAddr) -> HashMap<&'static str, Vec<(String, Any)>> {
    let service = pb::Service {
        name: "slow".into(),
        namespace: "default".into(),
        ports: vec![pb::Port {
            number: 8080,
            name: "http".into(),
            protocol: pb::Protocol::Http as i32,
            target_port: 0,
        }],
        http: vec![pb::HttpRoute {
            name: "default".into(),
            clusters: vec![pb::WeightedCluster {
                cluster: CLUSTER.into(),
                weight: 100,
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let cluster = pb::Cluster {
        name: CLUSTER.into(),
        service: "slow".into(),
        port: 8080,
        protocol: pb::Protocol::Http as i32,
        ..Default::default()
    };
    let endpoints = pb::Endpoints {
        cluster: CLUSTER.into(),
        endpoints: vec![pb::Endpoint {
            address: backend.ip().to_string(),
            port: u32::from(backend.port()),
            weight: 1,
            ..Default::default()
        }],
    };
    HashMap::from([
        (
            type_url::SERVICE,
            vec![("slow".to_string(), service.to_any())],
        ),
        (
            type_url::CLUSTER,
            vec![(CLUSTER.to_string(), cluster.to_any())],
        ),
        (
            type_url::ENDPOINTS,
            vec![(CLUSTER.to_string(), endpoints.to_any())],
        ),
    ])
}

async fn start_ads(ads: FakeAds) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(ads))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
    tokio::spawn(server);
    addr
}

// === the app behind the proxy ===

/// An HTTP/1.1 + h2c backend that reports each request's path on `arrived` and answers
/// `200 "done <path>"` only once `release` turns true (never, if it does not).
struct Backend {
    addr: SocketAddr,
    arrived: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
}

async fn start_backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let arrived = arrived_tx.clone();
            let release = release_rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let path = req.uri().path().to_string();
                    let _ = arrived.send(path.clone());
                    let mut release = release.clone();
                    async move {
                        let _ = release.wait_for(|r| *r).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("done {path}"),
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        arrived,
        release,
    }
}

impl Backend {
    /// Waits until `n` requests reached the backend (so they are in flight in the proxy).
    async fn wait_arrivals(&mut self, n: usize) -> Vec<String> {
        let mut paths = Vec::new();
        while paths.len() < n {
            let p = timeout(PROMPT, self.arrived.recv())
                .await
                .expect("the requests must reach the backend")
                .unwrap();
            paths.push(p);
        }
        paths.sort();
        paths
    }
}

// === the proxy process ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct ProxyProc {
    child: Child,
    /// The proxy's stderr, line by line (also echoed to the test's stderr).
    lines: mpsc::UnboundedReceiver<String>,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
}

/// Starts `weft-proxy run` on loopback against `xds`, with `admin_port` (0: any free one).
fn spawn_proxy(xds: SocketAddr, drain: &str, admin_port: u16) -> ProxyProc {
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (outbound, inbound) = (at(free_port()), at(free_port()));
    let admin = at(if admin_port == 0 {
        free_port()
    } else {
        admin_port
    });
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--node-id",
        "sleep.default",
        "--address",
        "127.0.0.1",
    ])
    .args(["--xds-addr", &xds.to_string(), "--drain-time", drain])
    .args(["--outbound-port", &outbound.port().to_string()])
    .args(["--inbound-port", &inbound.port().to_string()])
    .args(["--admin-port", &admin.port().to_string()])
    .args(["--log", "info"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    // The test's own environment must not configure the proxy.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WEFT_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut r = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = r.next_line().await {
            eprintln!("[weft-proxy] {l}");
            let _ = tx.send(l);
        }
    });
    ProxyProc {
        child,
        lines,
        outbound,
        inbound,
        admin,
    }
}

impl ProxyProc {
    /// Waits for a stderr line containing `needle`.
    async fn wait_line(&mut self, needle: &str) {
        let found = timeout(PROMPT, async {
            while let Some(l) = self.lines.recv().await {
                if l.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the proxy never logged {needle:?}");
    }

    /// Blocks until `/ready` is 200, with the product's own `weft-proxy wait`.
    async fn wait_ready(&self) {
        let out = weft_wait(&self.admin.to_string(), "20s").await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Waits for the process to exit (within `limit`) and returns its status.
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the proxy did not exit within {limit:?}"))
            .unwrap()
    }

    /// Asserts that the data-plane ports refuse new connections.
    async fn assert_ports_refuse(&self) {
        for addr in [self.outbound, self.inbound] {
            let e = TcpStream::connect(addr)
                .await
                .expect_err("a listener accepted a connection after the drain started");
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{addr}: {e}"
            );
        }
    }
}

async fn weft_wait(admin: &str, limit: &str) -> std::process::Output {
    let run = Command::new(BIN)
        .args(["wait", "--admin-addr", admin, "--timeout", limit])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    timeout(PROMPT + Duration::from_secs(20), run)
        .await
        .expect("weft-proxy wait must respect its own timeout")
        .unwrap()
}

// === clients ===

async fn admin_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    admin_call(addr, http::Method::GET, path).await
}

async fn admin_call(addr: SocketAddr, method: http::Method, path: &str) -> (StatusCode, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = timeout(PROMPT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type Answer = Result<(StatusCode, Option<String>, String), String>;

/// Sends `GET http://slow:8080<path>` through the outbound listener over HTTP/1.1, in the
/// background: (status, `connection` header, body), or the error.
async fn h1_in_background(outbound: SocketAddr, path: &str) -> tokio::task::JoinHandle<Answer> {
    let s = TcpStream::connect(outbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://slow:8080{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::spawn(async move {
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let connection = rsp
            .headers()
            .get(http::header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_string());
        let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            connection,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    })
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_listeners_at_once_and_lets_in_flight_requests_finish() {
    let mut backend = start_backend().await;
    let xds = start_ads(FakeAds {
        resources: Arc::new(config_for(backend.addr)),
        silent: false,
    })
    .await;
    let drain = Duration::from_secs(30);
    let mut proxy = spawn_proxy(xds, "30s", 0);
    proxy.wait_ready().await;

    // One request on HTTP/1.1 and one stream on an HTTP/2 (h2c) connection, both in flight.
    let h1 = h1_in_background(proxy.outbound, "/h1").await;
    let s = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut h2_send, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let h2_req = Request::get("http://slow:8080/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let h2 = tokio::spawn(async move {
        let rsp = h2_send.send_request(h2_req).await.unwrap();
        let status = rsp.status();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(backend.wait_arrivals(2).await, ["/h1", "/h2"]);

    proxy.signal("-TERM");
    let signalled = Instant::now();
    proxy.wait_line("draining: listeners closed").await;

    // Draining: no new connection on either data-plane port, /ready 503, /live 200.
    proxy.assert_ports_refuse().await;
    let (status, body) = admin_get(proxy.admin, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(admin_get(proxy.admin, "/live").await.0, StatusCode::OK);

    // The in-flight requests complete; HTTP/1.1 is told to close, HTTP/2 got a GOAWAY (the
    // connection ends once its stream is done).
    backend.release.send(true).unwrap();
    let (status, connection, body) = timeout(PROMPT, h1).await.unwrap().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done /h1"));
    assert_eq!(connection.as_deref(), Some("close"));
    let (status, body) = timeout(PROMPT, h2).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done /h2"));
    timeout(PROMPT, h2_conn)
        .await
        .expect("the HTTP/2 connection must end after its last stream")
        .unwrap()
        .unwrap();

    // Nothing left open: the proxy exits 0 without waiting for the rest of the drain time.
    let status = proxy.exit_within(PROMPT).await;
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < drain, "{:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_time_bounds_a_request_that_hangs() {
    let mut backend = start_backend().await; // never released: the request hangs
    let xds = start_ads(FakeAds {
        resources: Arc::new(config_for(backend.addr)),
        silent: false,
    })
    .await;
    let drain = Duration::from_secs(1);
    let mut proxy = spawn_proxy(xds, "1s", 0);
    proxy.wait_ready().await;

    let hung = h1_in_background(proxy.outbound, "/hang").await;
    backend.wait_arrivals(1).await;
    // SIGINT (Ctrl-C) drains exactly as SIGTERM does.
    proxy.signal("-INT");
    let signalled = Instant::now();
    proxy.wait_line("draining: listeners closed").await;

    let status = proxy.exit_within(drain + PROMPT).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= drain,
        "exited after {took:?}, before the drain time"
    );
    // Its connection was closed with the process: the client gets an error, not a hang.
    let answer = timeout(PROMPT, hung).await.unwrap().unwrap();
    assert!(answer.is_err(), "{answer:?}");
    drop(backend.release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_quitquitquit_drains_like_sigterm_and_get_is_405() {
    let mut backend = start_backend().await;
    let xds = start_ads(FakeAds {
        resources: Arc::new(config_for(backend.addr)),
        silent: false,
    })
    .await;
    let mut proxy = spawn_proxy(xds, "30s", 0);
    proxy.wait_ready().await;

    let (status, _) = admin_get(proxy.admin, "/quitquitquit").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(admin_get(proxy.admin, "/ready").await.0, StatusCode::OK);

    let req = h1_in_background(proxy.outbound, "/job").await;
    backend.wait_arrivals(1).await;
    let (status, body) = admin_call(proxy.admin, http::Method::POST, "/quitquitquit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    proxy.wait_line("draining: listeners closed").await;

    proxy.assert_ports_refuse().await;
    assert_eq!(
        admin_get(proxy.admin, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(admin_get(proxy.admin, "/live").await.0, StatusCode::OK);

    backend.release.send(true).unwrap();
    let (status, _, body) = timeout(PROMPT, req).await.unwrap().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done /job"));
    let status = proxy.exit_within(PROMPT).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_blocks_until_ready_and_fails_clearly_on_timeout() {
    // Nothing listens: exit 1 naming the address and the last error.
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = weft_wait(&nobody, "1s").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&nobody) && err.contains("not ready after 1s"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");

    // A proxy whose control plane never answers: exit 1 with what /ready said.
    let silent = start_ads(FakeAds {
        resources: Arc::default(),
        silent: true,
    })
    .await;
    let stuck = spawn_proxy(silent, "1s", 0);
    let out = weft_wait(&stuck.admin.to_string(), "1s").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/ready answered 503") && err.contains("waiting for"),
        "{err}"
    );

    // Started before the proxy exists: it waits, and returns 0 once the proxy is ready.
    let xds = start_ads(FakeAds {
        resources: Arc::new(config_for("127.0.0.1:9".parse().unwrap())),
        silent: false,
    })
    .await;
    let admin_port = free_port();
    let waiting = tokio::spawn(weft_wait_owned(format!("127.0.0.1:{admin_port}"), "30s"));
    let proxy = spawn_proxy(xds, "1s", admin_port);
    let out = waiting.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(admin_get(proxy.admin, "/ready").await.0, StatusCode::OK);
}

async fn weft_wait_owned(admin: String, limit: &'static str) -> std::process::Output {
    weft_wait(&admin, limit).await
}
