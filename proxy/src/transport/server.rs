//! Serving HTTP/1.1 and HTTP/2 (prior knowledge) on one port, with CONNECT upgrades, until
//! shutdown; connections then get a graceful close.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// SO_ORIGINAL_DST, when iptables redirected the connection here.
    pub orig_dst: Option<SocketAddr>,
}

/// Handles one request; implemented by the outbound and inbound proxies.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Counters about a listener (tests use `accepted` to check connection reuse).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
}

impl ServerStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Accepts connections until `shutdown`; each connection is tracked by `tracker` so the
/// caller can wait for in-flight requests to drain.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        tracker.spawn(serve_conn(stream, peer, handler.clone(), shutdown.clone()));
    }
}

async fn serve_conn<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let orig_dst = original_dst(&stream).filter(|d| *d != local);
    let info = ConnInfo {
        peer,
        local,
        orig_dst,
    };
    let svc = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h.handle(req, info).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The pre-NAT destination of an intercepted connection (Linux iptables REDIRECT).
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    #[cfg(target_os = "linux")]
    {
        let sock = socket2::SockRef::from(stream);
        sock.original_dst_v4()
            .or_else(|_| sock.original_dst_v6())
            .ok()
            .and_then(|a| a.as_socket())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}
