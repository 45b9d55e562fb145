//! Fixtures shared by the integration tests: config pieces, a data plane on loopback
//! listeners, and the app's side of a plain HTTP/1.1 request to its sidecar.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code, clippy::unwrap_used)] // shared fixtures; tests fail loudly by design

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use weft_proxy::app::{DataPlane, DataPlaneParams, spawn_data_plane};
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
