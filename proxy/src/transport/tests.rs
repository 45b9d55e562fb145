#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Transport failure modes that only real sockets show: a pooled HTTP/2 connection whose peer
//! goes silent, and clients that connect and never send. Timeouts are shortened so the tests
//! take well under a second of real time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::body::{self, Body};

/// An h2c server answering 200 "ok" to everything.
async fn start_h2_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(body::full("ok")))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP relay in front of `upstream` whose connections can be frozen one by one: a frozen
/// connection stays open but passes no byte either way, like a peer whose node vanished.
struct Relay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<CancellationToken>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let freeze = CancellationToken::new();
                list.lock().unwrap().push(freeze.clone());
                tokio::spawn(async move {
                    let mut up = TcpStream::connect(upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        () = freeze.cancelled() => {
                            let _keep_open = (down, up);
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self { addr, conns }
    }

    fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn freeze(&self, n: usize) {
        self.conns.lock().unwrap()[n].cancel();
    }
}

fn fast_pool() -> H2Pool {
    H2Pool::new(PoolConfig {
        keep_alive_interval: Duration::from_millis(100),
        keep_alive_timeout: Duration::from_millis(100),
    })
}

/// The default profile with a short connect timeout.
fn fast() -> DialProfile {
    DialProfile::default().with_connect_timeout(Duration::from_millis(500))
}

fn get(addr: SocketAddr) -> Request<Body> {
    let mut req = Request::new(body::empty());
    *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
    *req.version_mut() = http::Version::HTTP_2;
    req
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_silent_pooled_connection_fails_in_bounded_time_and_is_redialled() {
    let relay = Relay::start(start_h2_server().await).await;
    let pool = fast_pool();

    let rsp = pool
        .send(relay.addr, &fast(), get(relay.addr))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(relay.accepted(), 1);

    // The peer goes silent with a request about to be sent: it must fail, not hang.
    relay.freeze(0);
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        pool.send(relay.addr, &fast(), get(relay.addr)),
    )
    .await
    .expect("a request on a silent connection must not hang");
    assert!(matches!(r, Err(PoolError::Request { .. })), "{r:?}");

    // The next request dials a fresh connection.
    let rsp = pool
        .send(relay.addr, &fast(), get(relay.addr))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(relay.accepted(), 2);
}

#[tokio::test]
async fn an_idle_dead_connection_is_noticed_and_its_peer_forgotten() {
    let upstream = start_h2_server().await;
    let (a, b) = (Relay::start(upstream).await, Relay::start(upstream).await);
    let pool = fast_pool();
    pool.send(a.addr, &fast(), get(a.addr)).await.unwrap();
    assert_eq!(pool.live_connections(), 1);

    // No request in flight: PINGs alone must find out that the peer is gone.
    a.freeze(0);
    eventually("the idle connection is closed", || {
        pool.live_connections() == 0
    })
    .await;

    // Peers do not accumulate: dialing another drops the dead entry.
    pool.send(b.addr, &fast(), get(b.addr)).await.unwrap();
    assert_eq!(pool.tracked_peers(), 1);
    assert_eq!(pool.live_connections(), 1);
}

#[tokio::test]
async fn a_burst_of_first_requests_opens_one_connection() {
    let relay = Relay::start(start_h2_server().await).await;
    let pool = Arc::new(fast_pool());
    let sends = (0..20).map(|_| {
        let pool = pool.clone();
        let addr = relay.addr;
        tokio::spawn(async move {
            pool.send(addr, &fast(), get(addr))
                .await
                .map(|r| r.status())
        })
    });
    for s in futures::future::join_all(sends).await {
        assert_eq!(s.unwrap().unwrap(), 200);
    }
    assert_eq!(relay.accepted(), 1);
}

#[tokio::test]
async fn a_key_for_verified_identities_never_gets_a_plaintext_connection() {
    let server = start_h2_server().await;
    let pool = fast_pool();
    let ids = ExpectedIdentities::new(vec!["spiffe://cluster.local/ns/default/sa/a".into()]);
    let key = PoolKey {
        addr: server,
        tls: Some(PeerTls::Mesh(ids)),
        profile: fast(),
    };
    // Plaintext to the same peer works, and is pooled under its own key...
    assert_eq!(
        pool.send(server, &fast(), get(server))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(pool.live_connections(), 1);
    // ...but neither it nor a fresh plaintext dial serves a key that expects identities.
    let e = pool.send_keyed(&key, get(server), None).await.unwrap_err();
    assert!(matches!(e, PoolError::Tls { .. }), "{e}");
    assert_eq!(pool.live_connections(), 1);
}

/// A handler that must never run.
struct Unreachable;

impl Handler for Unreachable {
    async fn handle(self: Arc<Self>, _req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        panic!("no request was sent")
    }
}

async fn start_server(timeouts: ServerTimeouts) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve_with(
        l,
        Arc::new(Unreachable),
        Arc::default(),
        CancellationToken::new(),
        TaskTracker::new(),
        timeouts,
    ));
    addr
}

/// Reads until the server closes; panics if it does not within `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) {
    let mut buf = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut buf))
        .await
        .expect("the server must close the connection")
        .ok();
}

#[tokio::test]
async fn clients_that_send_nothing_or_half_a_request_are_closed() {
    let addr = start_server(ServerTimeouts {
        header_read: Duration::from_millis(200),
        h2_keep_alive: Duration::from_millis(200),
    })
    .await;
    let limit = Duration::from_secs(3);

    // Nothing at all: protocol detection itself must give up.
    closed_within(TcpStream::connect(addr).await.unwrap(), limit).await;

    // Half an HTTP/2 preface.
    let mut s = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"PRI * HTTP/2.0\r\n")
        .await
        .unwrap();
    closed_within(s, limit).await;

    // Half an HTTP/1.1 request head (slowloris).
    let mut s = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_within(s, limit).await;
}

#[test]
fn only_the_workload_itself_may_use_the_outbound_listener_as_a_proxy() {
    use super::server::may_use_explicit_proxy;
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    // Local mode: the app on loopback.
    assert!(may_use_explicit_proxy(
        a("127.0.10.2:40000"),
        a("127.0.10.2:15001")
    ));
    // A pod's own app dialing its pod IP.
    assert!(may_use_explicit_proxy(
        a("10.1.0.5:40000"),
        a("10.1.0.5:15001")
    ));
    // Another pod dialing <pod IP>:15001 directly: refused.
    assert!(!may_use_explicit_proxy(
        a("10.1.0.9:40000"),
        a("10.1.0.5:15001")
    ));
}
