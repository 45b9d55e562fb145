#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! The cluster's `connectionPool` transport settings, over real loopback sockets: connect
//! timeout (covering the TLS handshake), requests per connection, connection lifetime, idle
//! timeouts, streams per connection, REFUSED_STREAM, keep-alive socket options, and pool keys
//! that keep different settings apart. Servers report each accepted and each closed
//! connection, and the tests wait on those signals; short real durations stand in for
//! config values only where the subject is a timer on real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::dial;
use super::idle::IdleTimeout;
use super::*;
use crate::body::{self, Body};
use crate::errors::ErrorKind;
use crate::model::{SimpleTls, TlsRoots};
use crate::resilience::config::{DEFAULT_IDLE_TIMEOUT, TcpKeepalive};
use crate::resilience::{PoolLimits, Reason};

const BOUND: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// === servers ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// A server that counts its connections: `accepted` as they come, `closed` (a watch, to wait
/// on) as they end.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: watch::Receiver<usize>,
}

impl Counted {
    /// Answers 200 "ok" to everything.
    async fn start(proto: Proto) -> Self {
        Self::start_with(proto, Arc::new(Semaphore::new(0)), None).await
    }

    /// Requests for `/held` report on `arrived`, then their response waits for a permit of
    /// `gate` (taken for good); other paths are answered at once.
    async fn start_with(
        proto: Proto,
        gate: Arc<Semaphore>,
        arrived: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    ) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = watch::channel(0usize);
        let closed_tx = Arc::new(closed_tx);
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closed_tx = closed_tx.clone();
                let gate = gate.clone();
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let gate = gate.clone();
                        let arrived = arrived.clone();
                        async move {
                            if req.uri().path() == "/held" {
                                if let Some(a) = &arrived {
                                    let _ = a.send(());
                                }
                                gate.acquire().await.unwrap().forget();
                            }
                            Ok::<_, Infallible>(Response::new(body::full("ok")))
                        }
                    });
                    let io = TokioIo::new(s);
                    let _ = match proto {
                        Proto::H1 => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                        }
                        Proto::H2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await
                        }
                    };
                    closed_tx.send_modify(|c| *c += 1);
                });
            }
        });
        Self {
            addr,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have ended (bounded, so a bug fails instead of hanging).
    async fn closed(&self, n: usize) {
        let mut rx = self.closed.clone();
        tokio::time::timeout(BOUND, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} connection(s) should have closed"))
            .unwrap();
    }
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

/// An HTTP/2 server (raw h2) that refuses the first `refuse` streams with REFUSED_STREAM and
/// answers the others 200 "ok".
async fn start_refusing(refuse: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
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

// === clients ===

fn get(addr: SocketAddr, version: http::Version) -> Request<Body> {
    get_path(addr, version, "/")
}

fn get_path(addr: SocketAddr, version: http::Version, path: &str) -> Request<Body> {
    let mut req = Request::new(body::empty());
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    *req.version_mut() = version;
    if version == http::Version::HTTP_11 {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
    }
    req
}

async fn text(rsp: Response<Body>) -> String {
    let b = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

fn h2_pool() -> H2Pool {
    H2Pool::new(PoolConfig::default())
}

/// A request through `pool` to `server`, read to the end.
async fn h2_ok(pool: &H2Pool, server: &Counted, profile: &DialProfile) {
    let rsp = pool
        .send(
            server.addr,
            profile,
            get(server.addr, http::Version::HTTP_2),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(text(rsp).await, "ok");
}

async fn h1_ok(pool: &H1Pool, server: &Counted, profile: &DialProfile) {
    let rsp = pool
        .send(
            &PoolKey::plain(server.addr, profile),
            get(server.addr, http::Version::HTTP_11),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let b = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&b[..], b"ok");
}

/// Waits until the HTTP/1.1 pool has `n` idle connections: a connection goes back to the
/// pool in a task once its response body is read, and the pool has no signal for it (one
/// would cost every request), so the condition is polled, bounded.
async fn idle_h1(pool: &H1Pool, n: usize) {
    let start = Instant::now();
    while pool.idle_connections() != n {
        assert!(start.elapsed() < BOUND, "never {n} idle connection(s)");
        tokio::time::sleep(ms(2)).await;
    }
}

/// A `/held` request through `pool` in a task, returned once the server has it.
async fn held_h2(
    pool: &Arc<H2Pool>,
    addr: SocketAddr,
    p: DialProfile,
    arrived: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> tokio::task::JoinHandle<String> {
    let pool = pool.clone();
    let t = tokio::spawn(async move {
        let req = get_path(addr, http::Version::HTTP_2, "/held");
        text(pool.send(addr, &p, req).await.unwrap()).await
    });
    arrived.recv().await.unwrap();
    t
}

/// A mesh-hop TLS client side whose config can never complete a handshake with the black
/// hole (nor needs to: the server never answers).
#[derive(Debug)]
struct AnyTls;

impl MeshClientTls for AnyTls {
    fn client_config(
        &self,
        _expected: &ExpectedIdentities,
    ) -> Result<Arc<rustls::ClientConfig>, TlsFailure> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

fn profile(f: impl FnOnce(&mut DialProfile)) -> DialProfile {
    let mut p = DialProfile::default();
    f(&mut p);
    p
}

// === connect timeout ===

/// The error of a dial that timed out: its own kind, and the reason with the timeout.
fn assert_connect_timeout(e: &crate::errors::ProxyError, timeout: Duration) {
    assert_eq!(e.kind, ErrorKind::UpstreamConnectTimeout, "{e}");
    assert_eq!(e.reason, Some(Reason::ConnectTimeout(timeout)), "{e}");
    let rsp = e.to_response();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        rsp.headers()[crate::errors::PROXY_ERROR_HEADER],
        "upstream-connect-timeout"
    );
    assert_eq!(
        rsp.headers()[crate::resilience::REASON_HEADER],
        format!(
            "connect_timeout({})",
            crate::resilience::CompactDuration(timeout)
        )
        .as_str()
    );
}

#[tokio::test]
async fn the_connect_timeout_bounds_the_mesh_tls_handshake() {
    let hole = start_black_hole().await;
    let c = Connector::with_tls(BOUND, Some(Arc::new(AnyTls)), None);
    let security = MeshSecurity::Mutual(ExpectedIdentities::new(vec![
        "spiffe://cluster.local/ns/default/sa/a".into(),
    ]));
    let p = profile(|p| p.connect_timeout = ms(200));
    let started = Instant::now();
    let e = tokio::time::timeout(
        BOUND,
        c.mesh_request(hole, &security, &p, get(hole, http::Version::HTTP_2)),
    )
    .await
    .expect("the dial must give up within its connect timeout")
    .unwrap_err();
    let took = started.elapsed();
    assert_connect_timeout(&e, ms(200));
    assert!(took >= ms(200), "gave up early: {took:?}");
    assert!(e.detail.contains(&hole.to_string()), "{e}");

    // The same bound holds for a CONNECT tunnel over the mesh hop.
    let e = c
        .mesh_tunnel(hole, &security, &p, hole)
        .await
        .err()
        .unwrap();
    assert_connect_timeout(&e, ms(200));
}

#[tokio::test]
async fn the_connect_timeout_bounds_tls_origination() {
    let hole = start_black_hole().await;
    let c = Connector::default();
    let tls = Arc::new(SimpleTls::new(
        "outbound|443||secure.example.com".into(),
        "secure.example.com".into(),
        vec![],
        TlsRoots::System,
        false,
    ));
    let p = profile(|p| p.connect_timeout = ms(150));
    for proto in [AppProtocol::Http1, AppProtocol::H2] {
        let req = get(hole, http::Version::HTTP_11);
        let e = tokio::time::timeout(BOUND, c.origin_request(hole, &tls, proto, &p, req))
            .await
            .unwrap()
            .unwrap_err();
        assert_connect_timeout(&e, ms(150));
    }
    let e = tokio::time::timeout(BOUND, c.origin_tunnel(hole, &tls, &p))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_connect_timeout(&e, ms(150));
}

#[tokio::test]
async fn a_refused_connection_is_still_a_connect_failure() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let c = Connector::default();
    let e = c.tcp(dead, &DialProfile::default()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::UpstreamConnectFailed, "{e}");
    let e = c
        .http_request(
            dead,
            AppProtocol::Http1,
            &DialProfile::default(),
            get(dead, http::Version::HTTP_11),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamConnectFailed, "{e}");
}

// === requests per connection ===

#[tokio::test]
async fn max_requests_per_connection_one_dials_per_request_h2() {
    let server = Counted::start(Proto::H2).await;
    let pool = h2_pool();
    // Control: the default profile reuses one connection.
    for _ in 0..3 {
        h2_ok(&pool, &server, &DialProfile::default()).await;
    }
    assert_eq!(server.accepted(), 1);

    let once = profile(|p| p.max_requests_per_connection = Some(1));
    for _ in 0..3 {
        h2_ok(&pool, &server, &once).await;
    }
    assert_eq!(server.accepted(), 4, "one new connection per request");
    // Each is closed once its request is done (the default one stays).
    server.closed(3).await;
    assert_eq!(pool.live_connections(), 1);

    let twice = profile(|p| p.max_requests_per_connection = Some(2));
    for _ in 0..4 {
        h2_ok(&pool, &server, &twice).await;
    }
    assert_eq!(server.accepted(), 6, "two requests per connection");
}

#[tokio::test]
async fn max_requests_per_connection_one_dials_per_request_h1() {
    let server = Counted::start(Proto::H1).await;
    let pool = H1Pool::default();
    // Control: the default profile reuses one connection.
    for _ in 0..3 {
        h1_ok(&pool, &server, &DialProfile::default()).await;
        idle_h1(&pool, 1).await;
    }
    assert_eq!(server.accepted(), 1);

    let once = profile(|p| p.max_requests_per_connection = Some(1));
    for n in 1..=3 {
        h1_ok(&pool, &server, &once).await;
        // Closed after its one response, never pooled.
        server.closed(n).await;
        assert_eq!(pool.idle_connections(), 1, "only the default one is idle");
    }
    assert_eq!(server.accepted(), 4, "one new connection per request");
}

// === connection lifetime ===

#[tokio::test]
async fn max_connection_duration_retires_an_h2_connection_and_lets_requests_finish() {
    let gate = Arc::new(Semaphore::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let server = Counted::start_with(Proto::H2, gate.clone(), Some(arrived_tx)).await;
    let pool = Arc::new(h2_pool());
    let life = ms(300);
    let p = profile(|p| p.max_connection_duration = Some(life));

    // A request in flight on the first connection when its lifetime ends...
    let slow = held_h2(&pool, server.addr, p, &mut arrived).await;
    // The connection was made before the request arrived. The subject is the lifetime
    // itself: wait it out.
    tokio::time::sleep(life).await;

    // ...does not stop a new request from getting a new connection...
    let fresh = pool
        .send(server.addr, &p, get(server.addr, http::Version::HTTP_2))
        .await
        .unwrap();
    assert_eq!(text(fresh).await, "ok");
    assert_eq!(
        server.accepted(),
        2,
        "a request after the lifetime dials anew"
    );
    // ...and finishes on the old one, which then closes.
    gate.add_permits(1);
    assert_eq!(slow.await.unwrap(), "ok");
    server.closed(1).await;
    assert_eq!(pool.live_connections(), 1);
}

#[tokio::test]
async fn max_connection_duration_closes_an_idle_h1_connection() {
    let server = Counted::start(Proto::H1).await;
    let pool = H1Pool::default();
    let life = ms(200);
    let p = profile(|p| p.max_connection_duration = Some(life));
    let started = Instant::now();
    h1_ok(&pool, &server, &p).await;
    // Idle in the pool, it is closed at the end of its lifetime, not at the next checkout.
    server.closed(1).await;
    assert!(started.elapsed() >= life, "closed early");
    assert_eq!(pool.idle_connections(), 0);
    h1_ok(&pool, &server, &p).await;
    assert_eq!(server.accepted(), 2);
}

// === idle timeouts ===

#[tokio::test]
async fn an_idle_pooled_connection_is_closed_after_the_idle_timeout() {
    for proto in [Proto::H1, Proto::H2] {
        let server = Counted::start(proto).await;
        let idle = ms(200);
        let p = profile(|p| p.idle_timeout = idle);
        let h1 = H1Pool::default();
        let h2 = h2_pool();
        let done = match proto {
            Proto::H1 => {
                h1_ok(&h1, &server, &p).await;
                Instant::now()
            }
            Proto::H2 => {
                h2_ok(&h2, &server, &p).await;
                Instant::now()
            }
        };
        server.closed(1).await;
        assert!(done.elapsed() >= idle, "closed before the idle timeout");
        assert_eq!(h2.live_connections() + h1.idle_connections(), 0);
    }
}

#[tokio::test]
async fn an_h2_connection_with_a_request_in_flight_is_not_idle() {
    let gate = Arc::new(Semaphore::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let server = Counted::start_with(Proto::H2, gate.clone(), Some(arrived_tx)).await;
    let pool = Arc::new(h2_pool());
    let idle = ms(100);
    let p = profile(|p| p.idle_timeout = idle);
    let slow = held_h2(&pool, server.addr, p, &mut arrived).await;
    // The subject is the idle timer: three idle periods pass with the request in flight.
    tokio::time::sleep(idle * 3).await;
    assert_eq!(pool.live_connections(), 1, "busy, so not idle");
    gate.add_permits(1);
    assert_eq!(slow.await.unwrap(), "ok");
    // Idle from now on.
    server.closed(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_without_traffic_for_the_idle_timeout_fails() {
    // In-memory pipe and paused time: the subject is the timer alone.
    let (a, mut peer) = tokio::io::duplex(64);
    let mut t = IdleTimeout::new(a, Some(Duration::from_secs(10)), ());
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        peer.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        peer.read_exact(&mut buf).await.unwrap();
        // Keep the pipe open: the tunnel must end by its timer, not by EOF.
        std::future::pending::<()>().await;
    });
    let mut buf = [0u8; 1];
    t.read_exact(&mut buf).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    // Traffic the other way postpones the deadline as well.
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.write_all(b"y").await.unwrap();
    // Bounded by a longer timer, so a tunnel that never times out fails instead of hanging.
    let e = tokio::time::timeout(Duration::from_secs(60), t.read(&mut buf))
        .await
        .expect("the tunnel must time out")
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(19),
        "10 s after the last byte"
    );
    writer.abort();

    // No timeout (the DestinationRule's 0): a silent tunnel stays.
    let (a, _peer) = tokio::io::duplex(64);
    let mut t = IdleTimeout::new(a, None, ());
    let r = tokio::time::timeout(DEFAULT_IDLE_TIMEOUT * 2, t.read(&mut buf)).await;
    assert!(r.is_err(), "only the test's own timeout ends it");
}

#[tokio::test]
async fn a_tcp_tunnel_is_closed_after_the_tcp_idle_timeout() {
    let echo = start_echo().await;
    let c = Connector::default();
    let idle = ms(200);
    let p = profile(|p| p.tcp_idle_timeout = Some(idle));
    let mut t = c.tcp(echo, &p).await.unwrap();
    t.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    t.read_exact(&mut buf).await.unwrap();
    let last = Instant::now();
    let e = tokio::time::timeout(BOUND, t.read(&mut buf))
        .await
        .expect("the idle tunnel must fail")
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(last.elapsed() >= idle);
}

// === streams per connection ===

#[tokio::test]
async fn at_max_concurrent_streams_a_request_opens_another_connection() {
    for (cap, want) in [(1, 2), (2, 1)] {
        let gate = Arc::new(Semaphore::new(0));
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let server = Counted::start_with(Proto::H2, gate.clone(), Some(arrived_tx)).await;
        let pool = Arc::new(h2_pool());
        let p = profile(|p| p.max_concurrent_streams = cap);
        let first = held_h2(&pool, server.addr, p, &mut arrived).await;
        // The first request is in flight: the second does not wait for it.
        let second = held_h2(&pool, server.addr, p, &mut arrived).await;
        assert_eq!(server.accepted(), want, "cap {cap}");
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), "ok");
        assert_eq!(second.await.unwrap(), "ok");
        // The connections stay pooled and take the next requests.
        h2_ok(&pool, &server, &p).await;
        assert_eq!(server.accepted(), want);
    }
}

// === REFUSED_STREAM ===

#[tokio::test]
async fn a_refused_stream_is_its_own_error() {
    let server = start_refusing(1).await;
    let c = Connector::default();
    let p = DialProfile::default();
    let e = c
        .http_request(
            server,
            AppProtocol::H2,
            &p,
            get(server, http::Version::HTTP_2),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamRefusedStream, "{e}");
    assert_eq!(
        e.to_response().headers()["weft-proxy-error"],
        "upstream-refused-stream"
    );
    assert_eq!(e.reason_name(), "upstream_reset");
    // The connection itself is fine: the next stream is served on it.
    let rsp = c
        .http_request(
            server,
            AppProtocol::H2,
            &p,
            get(server, http::Version::HTTP_2),
        )
        .await
        .unwrap();
    assert_eq!(text(rsp).await, "ok");
}

/// hyper's own server with `max_concurrent_streams(0)`: the first request goes out before
/// the server's SETTINGS arrive and is refused with REFUSED_STREAM; after them, h2 holds new
/// streams back (it does not send them), so only the first shows the refusal.
#[tokio::test]
async fn a_hyper_server_with_zero_streams_refuses_the_first_stream() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(body::full("ok")))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(0)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let c = Connector::default();
    let e = c
        .http_request(
            addr,
            AppProtocol::H2,
            &DialProfile::default(),
            get(addr, http::Version::HTTP_2),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamRefusedStream, "{e}");
}

// === keep-alive ===

#[tokio::test]
async fn keepalive_settings_reach_the_socket() {
    let echo = start_echo().await;
    let read = |s: &tokio::net::TcpStream| {
        let r = socket2::SockRef::from(s);
        (
            r.keepalive().unwrap(),
            r.tcp_keepalive_time().unwrap(),
            r.tcp_keepalive_interval().unwrap(),
            r.tcp_keepalive_retries().unwrap(),
        )
    };
    let s = dial::tcp(echo, &DEFAULT_KEEPALIVE).await.unwrap();
    assert_eq!(
        read(&s),
        (true, Duration::from_secs(30), Duration::from_secs(10), 3)
    );
    let custom = Keepalive {
        time: Some(Duration::from_secs(7)),
        interval: Some(ms(1500)),
        probes: Some(5),
    };
    let s = dial::tcp(echo, &custom).await.unwrap();
    // Whole seconds: 1.5 s is 1 s to the kernel.
    assert_eq!(
        read(&s),
        (true, Duration::from_secs(7), Duration::from_secs(1), 5)
    );
    // Unset fields keep whatever the OS has.
    let os = tokio::net::TcpStream::connect(echo).await.unwrap();
    let os_interval = socket2::SockRef::from(&os)
        .tcp_keepalive_interval()
        .unwrap();
    let only_time = Keepalive {
        time: Some(Duration::from_secs(9)),
        interval: None,
        probes: None,
    };
    let s = dial::tcp(echo, &only_time).await.unwrap();
    let (on, time, interval, _) = read(&s);
    assert!(on);
    assert_eq!(time, Duration::from_secs(9));
    assert_eq!(interval, os_interval);
}

#[test]
fn a_profile_from_pool_limits() {
    // No connectionPool: Istio's timeouts, Weft's keep-alive, no caps.
    let d = DialProfile::from_pool(&PoolLimits::default());
    assert_eq!(d, DialProfile::default());
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.keepalive, DEFAULT_KEEPALIVE);
    assert_eq!(d.idle_timeout, Duration::from_secs(3600));
    assert_eq!(d.tcp_idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(d.max_connection_duration, None);
    assert_eq!(d.max_requests_per_connection, None);
    assert_eq!(d.max_concurrent_streams, (1 << 31) - 1);

    let limits = PoolLimits {
        connect_timeout: ms(250),
        tcp_keepalive: Some(TcpKeepalive {
            probes: Some(4),
            time: Some(Duration::from_secs(60)),
            interval: None,
        }),
        max_connection_duration: Some(Duration::from_secs(30)),
        tcp_idle_timeout: None,
        max_requests_per_connection: Some(1),
        http_idle_timeout: Duration::from_secs(5),
        max_concurrent_streams: 7,
        ..PoolLimits::default()
    };
    let d = DialProfile::from(&limits);
    assert_eq!(d.connect_timeout, ms(250));
    assert_eq!(
        d.keepalive,
        Keepalive {
            time: Some(Duration::from_secs(60)),
            interval: None,
            probes: Some(4),
        }
    );
    assert_eq!(d.max_connection_duration, Some(Duration::from_secs(30)));
    assert_eq!(d.tcp_idle_timeout, None, "0 on the wire: never");
    assert_eq!(d.max_requests_per_connection, Some(1));
    assert_eq!(d.idle_timeout, Duration::from_secs(5));
    assert_eq!(d.max_concurrent_streams, 7);
    assert!(!d.shares_connections());
}

// === pool keys ===

#[tokio::test]
async fn clusters_with_different_settings_never_share_a_connection() {
    let server = Counted::start(Proto::H2).await;
    let pool = h2_pool();
    let a = DialProfile::default();
    let b = profile(|p| p.max_connection_duration = Some(Duration::from_secs(60)));
    h2_ok(&pool, &server, &a).await;
    h2_ok(&pool, &server, &b).await;
    assert_eq!(server.accepted(), 2, "one connection per profile");
    h2_ok(&pool, &server, &a).await;
    h2_ok(&pool, &server, &b).await;
    assert_eq!(server.accepted(), 2, "and each is reused by its own");
    assert_eq!(pool.tracked_peers(), 2);
}
