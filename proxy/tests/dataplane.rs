//! Component tests over real loopback sockets: app -> outbound -> (mesh hop, HTTP/2) ->
//! inbound -> app, with a hand-built snapshot. No control plane, no sleeps: every step waits on
//! a socket.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proxy::app::{DataPlaneParams, spawn_data_plane};
use weft_proxy::model::*;
use weft_proxy::outbound::Workload;
use weft_proxy::telemetry::Metrics;

use common::{Proxy, cluster as cluster_spec, port, reviews_inbound, service, start_proxy};

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The application: echoes what it saw; `/grpc` answers with trailers like a gRPC server.
async fn app(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap_or("").to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let leaked: Vec<&str> = ["weft-dst-port", "weft-app-protocol"]
        .into_iter()
        .filter(|h| req.headers().contains_key(*h))
        .collect();
    let text = format!(
        "app saw {} {} host={} version={:?} leaked={:?}",
        req.method(),
        req.uri().path(),
        host,
        req.version(),
        leaked
    );
    if req.uri().path() == "/grpc" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures::stream::iter(frames));
        let rsp = Response::builder()
            .header("content-type", "application/grpc")
            .body(body.boxed_unsync())
            .unwrap();
        return Ok(rsp);
    }
    Ok(Response::new(Full::new(Bytes::from(text)).boxed_unsync()))
}

async fn start_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(app))
                    .await;
            });
        }
    });
    addr
}

async fn start_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn endpoint(addr: SocketAddr, mesh_port: Option<u16>) -> Endpoint {
    Endpoint {
        addr,
        mesh_port,
        identity: String::new(),
        weight: 1,
        workload: "default/reviews-v1".into(),
        labels: BTreeMap::new(),
    }
}

/// A service `name` (alias = first label) on `svc_port`, one cluster, one endpoint.
fn add_service(parts: &mut Parts, name: &str, svc_port: u16, ep: Endpoint) {
    let fqdn = format!("{name}.default.svc.cluster.local");
    let cluster = format!("outbound|{svc_port}||{fqdn}");
    parts.services.insert(
        fqdn.clone(),
        service(
            &fqdn,
            "default",
            vec![name.into()],
            vec![port(svc_port)],
            &cluster,
        ),
    );
    parts.clusters.insert(
        cluster.clone(),
        Arc::new(ClusterSpec {
            subset: "v1".into(),
            ..cluster_spec(&cluster, &fqdn, svc_port)
        }),
    );
    parts.endpoints.insert(cluster, Arc::from(vec![ep]));
}

/// One proxy whose inbound fronts `app` and `echo`, and whose outbound knows
/// reviews:9080 (via the mesh hop), echo:7000 (mesh hop, TCP) and direct:9090 (no sidecar).
async fn start_mesh() -> Proxy {
    let app_addr = start_app().await;
    let echo_addr = start_echo().await;
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = inbound.local_addr().unwrap().port();

    let mut parts = Parts {
        inbound: Some(reviews_inbound(
            "",
            vec![port(app_addr.port()), port(echo_addr.port())],
            MtlsMode::Permissive,
        )),
        ..Default::default()
    };
    add_service(
        &mut parts,
        "reviews",
        9080,
        endpoint(app_addr, Some(inbound_port)),
    );
    add_service(
        &mut parts,
        "echo",
        7000,
        endpoint(echo_addr, Some(inbound_port)),
    );
    add_service(&mut parts, "direct", 9090, endpoint(app_addr, None));
    let snapshot = SharedSnapshot::new(Snapshot::build(&parts));

    start_proxy(inbound, snapshot, None, "productpage.default").await
}

async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

async fn text(rsp: Response<Incoming>) -> String {
    String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn http1_absolute_form_rides_the_mesh_hop() {
    let m = start_mesh().await;
    let mut c = h1_client(m.dp.outbound_addr).await;
    let rsp = c
        .send_request(get("http://reviews:9080/hello"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = text(rsp).await;
    assert_eq!(
        body,
        "app saw GET /hello host=reviews:9080 version=HTTP/1.1 leaked=[]"
    );
    // One proxy plays both ends here, so the source is its own Inbound workload.
    let metrics = m.metrics.encode();
    assert!(
        metrics.contains(r#"direction="outbound",source_workload="reviews-v1",source_namespace="default",destination_service="reviews.default.svc.cluster.local",destination_workload="reviews-v1",destination_subset="v1",source_principal="",response_code="200""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn origin_form_with_host_header_and_direct_endpoint() {
    let m = start_mesh().await;
    let mut c = h1_client(m.dp.outbound_addr).await;
    let req = Request::get("/x")
        .header("host", "direct:9090")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        m.dp.inbound_stats.accepted(),
        0,
        "no sidecar: straight to the app"
    );
    assert!(text(rsp).await.contains("host=direct:9090"));
}

#[tokio::test]
async fn h2c_reaches_the_app_as_h2() {
    let m = start_mesh().await;
    let mut c = h2_client(m.dp.outbound_addr).await;
    let rsp = c.send_request(get("http://reviews:9080/h2")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        text(rsp).await,
        "app saw GET /h2 host=reviews:9080 version=HTTP/2.0 leaked=[]"
    );
}

#[tokio::test]
async fn grpc_trailers_arrive_intact() {
    let m = start_mesh().await;
    let mut c = h2_client(m.dp.outbound_addr).await;
    let req = Request::post("http://reviews:9080/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02yo")))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
}

#[tokio::test]
async fn connect_tunnels_tcp_through_the_mesh() {
    let m = start_mesh().await;
    let mut s = TcpStream::connect(m.dp.outbound_addr).await.unwrap();
    s.write_all(b"CONNECT echo:7000 HTTP/1.1\r\nHost: echo:7000\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping through the mesh").await.unwrap();
    let mut buf = [0u8; 21];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the mesh");
}

#[tokio::test]
async fn unknown_host_is_a_readable_404() {
    let m = start_mesh().await;
    let mut c = h1_client(m.dp.outbound_addr).await;
    let rsp = c.send_request(get("http://ratings:9080/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
    assert_eq!(rsp.headers()["weft-proxy-error"], "no-route");
    assert_eq!(
        text(rsp).await,
        "weft: no service named ratings:9080 is known to this proxy\n"
    );
}

#[tokio::test]
async fn inbound_without_destination_port_is_a_400() {
    let m = start_mesh().await;
    let mut c = h1_client(m.dp.inbound_addr).await;
    let req = Request::get("/")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(rsp.headers()["weft-proxy-error"], "bad-request");
    assert!(text(rsp).await.contains("weft-dst-port"));
}

#[tokio::test]
async fn inbound_refuses_ports_the_workload_does_not_serve() {
    let m = start_mesh().await;
    let mut c = h2_client(m.dp.inbound_addr).await;
    let req = Request::get("http://reviews:9080/")
        .header("weft-dst-port", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
    assert_eq!(rsp.headers()["weft-proxy-error"], "port-not-served");
}

#[tokio::test]
async fn many_requests_share_one_pooled_mesh_connection() {
    let m = start_mesh().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = m.dp.outbound_addr;
        tasks.push(tokio::spawn(async move {
            let mut c = h1_client(addr).await;
            for j in 0..5 {
                let uri = format!("http://reviews:9080/{i}/{j}");
                let rsp = c.send_request(get(&uri)).await.unwrap();
                assert_eq!(rsp.status(), StatusCode::OK);
                text(rsp).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(m.dp.outbound_stats.accepted(), 8);
    assert_eq!(
        m.dp.inbound_stats.accepted(),
        1,
        "40 requests from 8 app connections rode one proxy-to-proxy connection"
    );
}

#[tokio::test]
async fn connect_failure_is_a_readable_503() {
    // An endpoint nobody listens on, without a sidecar.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut parts = Parts::default();
    add_service(&mut parts, "gone", 80, endpoint(dead_addr, None));
    let shutdown = CancellationToken::new();
    let dp = spawn_data_plane(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DataPlaneParams {
            snapshot: SharedSnapshot::new(Snapshot::build(&parts)),
            metrics: Arc::new(Metrics::new()),
            workload: Workload::from_node_id("a.default"),
            app_address: "127.0.0.1".parse().unwrap(),
            tls: None,
        },
        &shutdown,
        &TaskTracker::new(),
    )
    .unwrap();
    let mut c = h1_client(dp.outbound_addr).await;
    let rsp = c.send_request(get("http://gone/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers()["weft-proxy-error"], "upstream-connect-failed");
    assert!(text(rsp).await.contains(&dead_addr.to_string()));
}
