//! The outbound attempt loop (`Outbound::attempts`) through the whole outbound path (app ->
//! outbound -> upstream without a sidecar), over real loopback sockets: gRPC failures judged
//! by `grpc-status` for outlier detection, policy refusals answered at once (not retried, not
//! held against the endpoint), and the route's deadline cutting a hanging attempt (reported to
//! outlier detection) and a back-off. Servers are bound before use; nothing sleeps to
//! synchronise. Endpoint health is read from the snapshot the proxy runs on.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::model::*;
use weft_proxy::resilience::{RetryCondition, RetryPolicy};

use common::{
    Proxy, cluster as cluster_spec, endpoint, outlier, port, service, start_black_hole,
    start_proxy, start_status_server,
};

/// How long anything may take before the test calls it hung.
const BOUND: Duration = Duration::from_secs(5);

/// A back-off base so long that a request which waited out even a sliver of one back-off
/// cannot pass for answered at once: a uniform draw in [0, 1h) falls under 2s once in 1800.
const HOUR: Duration = Duration::from_secs(3600);

/// `name` on `svc_port`, one route (`timeout`, `retries`) to one cluster of `endpoints`,
/// adjusted by `spec`. Returns the cluster's name.
fn add_service(
    parts: &mut Parts,
    name: &str,
    svc_port: u16,
    timeout: Option<Duration>,
    retries: RetryPolicy,
    spec: impl FnOnce(&mut ClusterSpec),
    endpoints: Vec<Endpoint>,
) -> String {
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
    svc.http[0].timeout = timeout;
    svc.http[0].retries = Arc::new(retries);
    parts.services.insert(fqdn.clone(), Arc::new(svc));
    let mut c = cluster_spec(&cluster, &fqdn, svc_port);
    spec(&mut c);
    parts.clusters.insert(cluster.clone(), Arc::new(c));
    parts
        .endpoints
        .insert(cluster.clone(), Arc::from(endpoints));
    cluster
}

/// A data plane on `parts` (no identity); the snapshot handle reads its endpoint health.
async fn proxy(parts: &Parts) -> (Proxy, SharedSnapshot) {
    let snapshot = SharedSnapshot::new(Snapshot::build(parts));
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = start_proxy(inbound, snapshot.clone(), None, "productpage.default").await;
    (p, snapshot)
}

fn cluster(snapshot: &SharedSnapshot, name: &str) -> Arc<Cluster> {
    snapshot.load().cluster(name).cloned().unwrap()
}

/// Retries (`attempts` of them) on `on`, with back-offs drawn under `base` (max 10x).
fn retry_on(attempts: u32, on: &[RetryCondition], base: Duration) -> RetryPolicy {
    RetryPolicy {
        attempts,
        retry_on: on.iter().copied().collect(),
        backoff_base: base,
        backoff_max: base * 10,
        configured: true,
        ..RetryPolicy::default()
    }
}

/// A gRPC server (raw h2, prior knowledge) that answers every call trailers-only: HTTP 200,
/// `grpc-status: <code>` and `x-server: <name>` in one HEADERS frame that ends the stream.
/// Listening when this returns; the counter is the calls it answered.
async fn start_grpc(name: &'static str, code: u32) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let count = count.clone();
                    // Its own task: the connection must go on being polled for the request
                    // body to arrive.
                    tokio::spawn(async move {
                        // The whole request first, as a gRPC server reads the message.
                        let mut body = req.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let rsp = Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", code.to_string())
                            .header("x-server", name)
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(rsp, true);
                    });
                }
            });
        }
    });
    (addr, seen)
}

async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

/// A unary gRPC call with an empty message.
fn grpc_call(uri: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
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
async fn a_grpc_endpoint_answering_unavailable_in_a_200_is_ejected() {
    let (bad, bad_seen) = start_grpc("bad", 14).await; // UNAVAILABLE
    let (good, good_seen) = start_grpc("good", 0).await;
    let mut parts = Parts::default();
    let name = add_service(
        &mut parts,
        "greeter",
        50051,
        None,
        RetryPolicy::default(), // no retries: every answer is relayed as the server gave it
        |c| c.outlier = Some(outlier(3)),
        vec![endpoint(bad, None), endpoint(good, None)],
    );
    let (p, snapshot) = proxy(&parts).await;
    // The app speaks h2c, so the endpoints (no sidecar) get HTTP/2 too.
    let mut client = h2_client(p.dp.outbound_addr).await;
    let call = "http://greeter:50051/greeter.Greeter/Hello";

    // Round robin over both until the failing one has failed three times.
    let mut calls = 0;
    while bad_seen.load(Ordering::SeqCst) < 3 {
        assert!(
            calls < 20,
            "20 calls and the failing endpoint got fewer than 3"
        );
        let rsp = tokio::time::timeout(BOUND, client.send_request(grpc_call(call)))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "gRPC failures are HTTP 200");
        let expected = if header(&rsp, "x-server") == "bad" {
            "14"
        } else {
            "0"
        };
        assert_eq!(header(&rsp, "grpc-status"), expected, "relayed as is");
        calls += 1;
    }
    assert_eq!(bad_seen.load(Ordering::SeqCst), 3);

    // grpc-status 14 stands for 503: three in a row eject the endpoint at once.
    let c = cluster(&snapshot, &name);
    let now = tokio::time::Instant::now();
    let stats = c.balancer.stats(now);
    assert_eq!(stats[0].addr, bad);
    assert!(
        stats[0].ejected_for_ms.is_some(),
        "the endpoint answering grpc-status 14 must be ejected: {stats:?}"
    );
    assert_eq!(stats[0].times_ejected, 1);
    assert!(stats[1].ejected_for_ms.is_none(), "{stats:?}");

    // Every call now goes to the healthy endpoint.
    let good_before = good_seen.load(Ordering::SeqCst);
    for _ in 0..10 {
        let rsp = tokio::time::timeout(BOUND, client.send_request(grpc_call(call)))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(header(&rsp, "x-server"), "good");
        assert_eq!(header(&rsp, "grpc-status"), "0");
    }
    assert_eq!(
        bad_seen.load(Ordering::SeqCst),
        3,
        "no call reached the ejected endpoint"
    );
    assert_eq!(good_seen.load(Ordering::SeqCst), good_before + 10);
}

#[tokio::test]
async fn istio_mutual_to_an_endpoint_without_a_sidecar_is_refused_at_once_and_not_held_against_it()
{
    // An endpoint without a sidecar under ISTIO_MUTUAL: the hop cannot be made, whatever the
    // endpoint does. Had the refusal been taken for a connect failure, the route would retry
    // it (after back-offs drawn under an hour) and outlier detection would eject the endpoint
    // on the first one.
    let hole = start_black_hole().await;
    let mut parts = Parts::default();
    let name = add_service(
        &mut parts,
        "legacy",
        8080,
        None,
        retry_on(
            3,
            &[RetryCondition::Status5xx, RetryCondition::ConnectFailure],
            HOUR,
        ),
        |c| {
            c.tls = UpstreamTlsMode::IstioMutual;
            c.outlier = Some(outlier(1));
        },
        vec![endpoint(hole.addr, None)],
    );
    let (p, snapshot) = proxy(&parts).await;
    let mut client = h1_client(p.dp.outbound_addr).await;

    for n in 1..=2 {
        let started = Instant::now();
        let rsp = tokio::time::timeout(BOUND, client.send_request(get("http://legacy:8080/")))
            .await
            .unwrap_or_else(|_| panic!("request {n} was not answered within {BOUND:?}: retried?"))
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "request {n} took {took:?}: a refusal is answered at once, without a back-off"
        );
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE, "request {n}");
        assert_eq!(header(&rsp, "weft-proxy-error"), "upstream-tls-failed");
        assert_eq!(header(&rsp, "x-weft-reason"), "upstream_tls_failed");
        let body = text(rsp).await;
        assert!(body.contains("has no sidecar"), "{body}");

        let c = cluster(&snapshot, &name);
        let stats = c.balancer.stats(tokio::time::Instant::now());
        assert_eq!(
            (stats[0].consecutive_5xx, stats[0].consecutive_gateway),
            (0, 0),
            "a policy refusal is not the endpoint's failure: {stats:?}"
        );
        assert_eq!(stats[0].times_ejected, 0, "{stats:?}");
        assert_eq!(c.limits.active_retries(), 0);
    }
    assert_eq!(
        *hole.accepted.borrow(),
        0,
        "nothing was sent to the endpoint"
    );
}

#[tokio::test]
async fn the_route_timeout_cuts_a_hanging_attempt_and_outlier_detection_hears_of_it() {
    let mut hole = start_black_hole().await;
    let mut parts = Parts::default();
    let timeout = Duration::from_millis(200);
    let name = add_service(
        &mut parts,
        "hang",
        8080,
        Some(timeout),
        RetryPolicy::default(),
        |c| c.outlier = Some(outlier(1)),
        vec![endpoint(hole.addr, None)],
    );
    let (p, snapshot) = proxy(&parts).await;
    let mut client = h1_client(p.dp.outbound_addr).await;

    let started = Instant::now();
    let rsp = tokio::time::timeout(BOUND, client.send_request(get("http://hang:8080/")))
        .await
        .expect("the route timeout must answer")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "answered after {took:?}");
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(header(&rsp, "weft-proxy-error"), "timeout");
    assert_eq!(header(&rsp, "x-weft-reason"), "timeout(200ms)");
    text(rsp).await;
    // The attempt did reach the endpoint (it was cut, not refused).
    tokio::time::timeout(BOUND, hole.accepted.wait_for(|n| *n >= 1))
        .await
        .expect("the endpoint was dialed")
        .unwrap();

    // A timeout is a local-origin failure, a 5xx when not split: one ejects.
    let c = cluster(&snapshot, &name);
    let stats = c.balancer.stats(tokio::time::Instant::now());
    assert!(
        stats[0].ejected_for_ms.is_some(),
        "the cut attempt must be reported to outlier detection: {stats:?}"
    );
    assert_eq!(stats[0].times_ejected, 1);

    let rsp = tokio::time::timeout(BOUND, client.send_request(get("http://hang:8080/")))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&rsp, "weft-proxy-error"), "no-healthy-upstream");
    assert_eq!(
        header(&rsp, "x-weft-reason"),
        format!("no_healthy_endpoints(cluster={name})")
    );
}

#[tokio::test]
async fn the_route_timeout_cuts_a_back_off_short() {
    // Every attempt fails at once with a retriable 503; the back-off before the first retry
    // is drawn under an hour, the route's timeout is 300ms: the timeout answers, on time.
    let (failing, seen) = start_status_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let mut parts = Parts::default();
    let timeout = Duration::from_millis(300);
    let name = add_service(
        &mut parts,
        "flaky",
        8080,
        Some(timeout),
        retry_on(5, &[RetryCondition::Status5xx], HOUR),
        |_| {},
        vec![endpoint(failing, None)],
    );
    let (p, snapshot) = proxy(&parts).await;
    let mut client = h1_client(p.dp.outbound_addr).await;

    let started = Instant::now();
    let rsp = tokio::time::timeout(BOUND, client.send_request(get("http://flaky:8080/")))
        .await
        .expect("the route timeout must cut the back-off")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "answered after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "answered after {took:?}: the back-off outlived the route's deadline"
    );
    assert_eq!(
        rsp.status(),
        StatusCode::GATEWAY_TIMEOUT,
        "not the upstream's 503"
    );
    assert_eq!(header(&rsp, "weft-proxy-error"), "timeout");
    assert_eq!(header(&rsp, "x-weft-reason"), "timeout(300ms)");
    text(rsp).await;
    assert!(seen.load(Ordering::SeqCst) >= 1, "the endpoint was tried");
    // The retry's slot in the budget went with the request.
    assert_eq!(cluster(&snapshot, &name).limits.active_retries(), 0);
}
