//! A DestinationRule's `connectionPool` transport settings through the whole outbound path
//! (app -> outbound -> upstream), over real loopback sockets: the connect timeout and the
//! response that names it, a mesh connection per request, the TCP idle timeout of a CONNECT
//! tunnel, and REFUSED_STREAM as its own retry condition. Every step waits on a socket.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::mesh as pb;
use weft_proxy::model::*;
use weft_proxy::resilience::{PoolLimits, RetryCondition, RetryPolicy};

use common::{Proxy, cluster as cluster_spec, port, reviews_inbound, service, start_proxy};

const BOUND: Duration = Duration::from_secs(5);

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

/// `name` on `svc_port` (one route to one cluster, `retries` on it), one endpoint, the
/// cluster's `connectionPool` as given.
fn add_service(
    parts: &mut Parts,
    name: &str,
    svc_port: u16,
    ep: Endpoint,
    pool: PoolLimits,
    retries: RetryPolicy,
) {
    let fqdn = format!("{name}.default.svc.cluster.local");
    let cluster = format!("outbound|{svc_port}||{fqdn}");
    let mut svc = (*service(
        &fqdn,
        "default",
        vec![name.into()],
        vec![port(svc_port)],
        &cluster,
    ))
    .clone();
    svc.http[0].retries = Arc::new(retries);
    parts.services.insert(fqdn.clone(), Arc::new(svc));
    let mut spec = cluster_spec(&cluster, &fqdn, svc_port);
    spec.policy.pool = pool;
    parts.clusters.insert(cluster.clone(), Arc::new(spec));
    parts.endpoints.insert(cluster, Arc::from(vec![ep]));
}

async fn proxy(parts: &Parts, inbound: TcpListener) -> Proxy {
    let snapshot = SharedSnapshot::new(Snapshot::build(parts));
    start_proxy(inbound, snapshot, None, "productpage.default").await
}

async fn start_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
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
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Accepts TCP and never says a word: a TLS handshake to it never completes.
async fn start_black_hole() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// An HTTP/2 server (raw h2) that refuses its first `refuse` streams with REFUSED_STREAM and
/// answers the others 200 "ok"; counts the streams it saw.
async fn start_refusing(refuse: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = count.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(s).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from_static(b"ok"), true).unwrap();
                }
            });
        }
    });
    (addr, seen)
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

fn header(rsp: &Response<Incoming>, name: &str) -> String {
    rsp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn text(rsp: Response<Incoming>) -> String {
    String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_dial_past_the_connect_timeout_is_a_503_naming_it() {
    // SIMPLE origination to a server that never answers the TLS handshake, with the
    // DestinationRule's connectTimeout on the wire: the timeout must cover the handshake.
    let hole = start_black_hole().await;
    let host = "slow.example.com";
    let name = format!("outbound|443||{host}");
    let c = pb::Cluster {
        name: name.clone(),
        service: host.into(),
        port: 443,
        tls: Some(pb::UpstreamTls {
            mode: pb::upstream_tls::Mode::Simple as i32,
            sni: host.into(),
            ..Default::default()
        }),
        connection_pool: Some(pb::ConnectionPool {
            tcp: Some(pb::connection_pool::Tcp {
                connect_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 250_000_000,
                }),
                ..Default::default()
            }),
            http: None,
        }),
        ..Default::default()
    };
    let mut parts = Parts::default();
    parts
        .services
        .insert(host.into(), service(host, "", vec![], vec![], &name));
    parts
        .clusters
        .insert(name.clone(), Arc::new(ClusterSpec::try_from(&c).unwrap()));
    parts
        .endpoints
        .insert(name, Arc::from(vec![endpoint(hole, None)]));
    let p = proxy(&parts, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;

    let mut client = h1_client(p.dp.outbound_addr).await;
    let started = Instant::now();
    let rsp = tokio::time::timeout(BOUND, client.send_request(get(&format!("http://{host}/x"))))
        .await
        .expect("answered within the connect timeout, not hung")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&rsp, "weft-proxy-error"), "upstream-connect-timeout");
    assert_eq!(header(&rsp, "x-weft-reason"), "connect_timeout(250ms)");
    let body = text(rsp).await;
    assert!(body.contains(&hole.to_string()), "{body}");
    let metrics = p.metrics.encode();
    assert!(metrics.contains(r#"reason="connect_timeout""#), "{metrics}");
}

#[tokio::test]
async fn max_requests_per_connection_one_opens_a_mesh_connection_per_request() {
    let app = start_app().await;
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh_port = inbound.local_addr().unwrap().port();
    let mut parts = Parts {
        inbound: Some(reviews_inbound(
            "",
            vec![port(app.port())],
            MtlsMode::Permissive,
        )),
        ..Default::default()
    };
    let once = PoolLimits {
        max_requests_per_connection: Some(1),
        ..PoolLimits::default()
    };
    add_service(
        &mut parts,
        "app",
        9080,
        endpoint(app, Some(mesh_port)),
        once,
        RetryPolicy::default(),
    );
    let p = proxy(&parts, inbound).await;
    let mut client = h1_client(p.dp.outbound_addr).await;
    for _ in 0..3 {
        let rsp = client.send_request(get("http://app:9080/")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(text(rsp).await, "ok");
    }
    assert_eq!(
        p.dp.inbound_stats.accepted(),
        3,
        "each request rode its own proxy-to-proxy connection"
    );
}

#[tokio::test]
async fn a_connect_tunnel_without_traffic_is_closed_after_the_tcp_idle_timeout() {
    let echo = start_echo().await;
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh_port = inbound.local_addr().unwrap().port();
    let mut parts = Parts {
        inbound: Some(reviews_inbound(
            "",
            vec![port(echo.port())],
            MtlsMode::Permissive,
        )),
        ..Default::default()
    };
    let idle = Duration::from_millis(300);
    let pool = PoolLimits {
        tcp_idle_timeout: Some(idle),
        ..PoolLimits::default()
    };
    add_service(
        &mut parts,
        "echo",
        7000,
        endpoint(echo, Some(mesh_port)),
        pool,
        RetryPolicy::default(),
    );
    let p = proxy(&parts, inbound).await;

    let mut s = TcpStream::connect(p.dp.outbound_addr).await.unwrap();
    s.write_all(b"CONNECT echo:7000 HTTP/1.1\r\nHost: echo:7000\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let last = Instant::now();

    // Then silence both ways: the proxy closes the tunnel.
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel must be closed")
        .ok();
    assert!(rest.is_empty());
    assert!(last.elapsed() >= idle, "closed early: {:?}", last.elapsed());
}

#[tokio::test]
async fn a_refused_stream_is_retried_under_refused_stream_and_answered_as_a_reset() {
    let (retried, retried_seen) = start_refusing(1).await;
    let (plain, plain_seen) = start_refusing(1).await;
    let mut parts = Parts::default();
    let refused_only = RetryPolicy {
        attempts: 1,
        retry_on: [RetryCondition::RefusedStream].into_iter().collect(),
        ..RetryPolicy::default()
    };
    add_service(
        &mut parts,
        "retried",
        8080,
        endpoint(retried, None),
        PoolLimits::default(),
        refused_only,
    );
    add_service(
        &mut parts,
        "plain",
        8080,
        endpoint(plain, None),
        PoolLimits::default(),
        RetryPolicy::default(),
    );
    let p = proxy(&parts, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    // The app speaks h2c, so the endpoint without a sidecar gets HTTP/2.
    let mut client = h2_client(p.dp.outbound_addr).await;

    let rsp = client
        .send_request(get("http://retried:8080/"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(text(rsp).await, "ok");
    assert_eq!(
        retried_seen.load(Ordering::SeqCst),
        2,
        "refused, then retried"
    );

    let rsp = client
        .send_request(get("http://plain:8080/"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&rsp, "weft-proxy-error"), "upstream-refused-stream");
    assert_eq!(header(&rsp, "x-weft-reason"), "upstream_reset");
    assert_eq!(plain_seen.load(Ordering::SeqCst), 1, "no retry policy");
}
