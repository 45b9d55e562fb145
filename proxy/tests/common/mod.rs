//! Fixtures shared by the integration tests: config pieces, a data plane on loopback
//! listeners, and the app's side of a plain HTTP/1.1 request to its sidecar.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code, clippy::unwrap_used)] // shared fixtures; tests fail loudly by design

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use weft_proxy::app::{DataPlane, DataPlaneParams, spawn_data_plane};
use weft_proxy::balance::OutlierConfig;
use weft_proxy::identity::MeshTls;
use weft_proxy::model::*;
use weft_proxy::outbound::Workload;
use weft_proxy::telemetry::Metrics;

/// A port whose number is its target port.
pub(crate) fn port(n: u16) -> Port {
    Port {
        number: n,
        name: format!("p{n}"),
        protocol: Protocol::Unspecified,
        target_port: n,
    }
}

/// The workload `default/reviews-v1` (service account `reviews`, SPIFFE ID `identity`) serving
/// `ports` under PeerAuthentication `mode`.
pub(crate) fn reviews_inbound(identity: &str, ports: Vec<Port>, mode: MtlsMode) -> Arc<Inbound> {
    Arc::new(Inbound {
        name: "reviews-v1".into(),
        namespace: "default".into(),
        address: None,
        labels: std::collections::BTreeMap::new(),
        service_account: "reviews".into(),
        identity: identity.into(),
        ports,
        mtls_mode: mode,
        port_mtls: std::collections::BTreeMap::new(),
    })
}

/// A service whose one HTTP route sends everything to `cluster`.
pub(crate) fn service(
    fqdn: &str,
    namespace: &str,
    aliases: Vec<String>,
    ports: Vec<Port>,
    cluster: &str,
) -> Arc<Service> {
    Arc::new(Service {
        name: fqdn.into(),
        namespace: namespace.into(),
        aliases,
        ports,
        http: vec![HttpRoute {
            name: "default".into(),
            matches: vec![],
            clusters: vec![WeightedCluster {
                cluster: cluster.into(),
                weight: 100,
            }],
            timeout: None,
            retries: Default::default(),
            fault: None,
        }],
        tcp: vec![],
        origin: String::new(),
        addresses: vec![],
    })
}

/// An HTTP cluster of `service:port` (round robin, auto mTLS); callers change what differs.
pub(crate) fn cluster(name: &str, service: &str, port: u16) -> ClusterSpec {
    ClusterSpec {
        name: name.into(),
        service: service.into(),
        port,
        subset: String::new(),
        protocol: Protocol::Http,
        lb: weft_proxy::balance::LbConfig {
            simple: LbPolicy::RoundRobin,
            ..Default::default()
        },
        outlier: None,
        tls: UpstreamTlsMode::Auto,
        origination: None,
        identities: vec![],
        policy: Default::default(),
    }
}

/// An endpoint at `addr` of workload `default/app-v1`, behind a sidecar on `mesh_port` or
/// (`None`) without one.
pub(crate) fn endpoint(addr: SocketAddr, mesh_port: Option<u16>) -> Endpoint {
    Endpoint {
        addr,
        mesh_port,
        identity: String::new(),
        weight: 1,
        workload: "default/app-v1".into(),
        labels: std::collections::BTreeMap::new(),
    }
}

/// Outlier detection that ejects after `consecutive_5xx` 5xx (local-origin failures count as
/// 5xx: not split), sweeping every 1s, ejecting for 30s, any share of the cluster at once and
/// no panic mode (so a cluster with every endpoint ejected answers `no_healthy_endpoints`).
pub(crate) fn outlier(consecutive_5xx: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx,
        consecutive_gateway: 0,
        consecutive_local_origin: 0,
        split_external_local_origin_errors: false,
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
        min_health_percent: 0,
    }
}

/// A server that accepts TCP connections, holds them and never says a word; `accepted`
/// counts them (and can be waited on: `wait_for(|n| *n >= 1)`).
pub(crate) struct BlackHole {
    pub(crate) addr: SocketAddr,
    pub(crate) accepted: watch::Receiver<usize>,
}

/// Starts a [`BlackHole`]; it is listening (bound) when this returns.
pub(crate) async fn start_black_hole() -> BlackHole {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (count, accepted) = watch::channel(0usize);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            count.send_modify(|n| *n += 1);
        }
    });
    BlackHole { addr, accepted }
}

/// Starts an HTTP/1.1 and h2c server that answers every request `status` at once, with an
/// empty body; it is listening when this returns. The counter is the requests it answered.
pub(crate) async fn start_status_server(status: StatusCode) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut rsp = http::Response::new(Full::new(Bytes::new()));
                        *rsp.status_mut() = status;
                        async move { Ok::<_, std::convert::Infallible>(rsp) }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, seen)
}

/// A running data plane (outbound and inbound on loopback); stopped when dropped.
pub(crate) struct Proxy {
    pub(crate) dp: DataPlane,
    pub(crate) metrics: Arc<Metrics>,
    _shutdown: DropGuard,
}

/// Starts a data plane for node `node_id` on `inbound` (and a fresh outbound listener), its
/// app on 127.0.0.1; `tls`: the mesh hop's identity, or plaintext.
pub(crate) async fn start_proxy(
    inbound: TcpListener,
    snapshot: SharedSnapshot,
    tls: Option<Arc<MeshTls>>,
    node_id: &str,
) -> Proxy {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let dp = spawn_data_plane(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        inbound,
        DataPlaneParams {
            snapshot,
            metrics: metrics.clone(),
            workload: Workload::from_node_id(node_id),
            app_address: "127.0.0.1".parse().unwrap(),
            tls,
        },
        &shutdown,
        &TaskTracker::new(),
    )
    .unwrap();
    Proxy {
        dp,
        metrics,
        _shutdown: shutdown.drop_guard(),
    }
}

/// The app's plain HTTP/1.1 GET of `uri` through its sidecar's outbound listener: status,
/// `weft-proxy-error` code ("" when none) and body.
pub(crate) async fn get_via(outbound: SocketAddr, uri: &str) -> (StatusCode, String, String) {
    let s = TcpStream::connect(outbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = send
        .send_request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let code = rsp
        .headers()
        .get("weft-proxy-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, code, String::from_utf8_lossy(&body).into_owned())
}
