//! Serving HTTP/1.1 and HTTP/2 (prior knowledge) on one port, with CONNECT upgrades, until
//! shutdown; connections then get a graceful close: the listener is dropped (new connects are
//! refused), HTTP/2 connections get a GOAWAY, and HTTP/1.1 responses from then on carry
//! `Connection: close` before the connection closes, so clients move to another endpoint
//! instead of sending their next request into a closing socket.
//!
//! Every wait on the client is bounded, because both listeners face other processes and a
//! connection that never sends (or whose peer vanished) would otherwise hold a task and a
//! socket forever: protocol detection and HTTP/1.1 request heads (including the idle time
//! between keep-alive requests) get [`ServerTimeouts::header_read`], and HTTP/2 connections
//! are PINGed so a dead peer is noticed.
//!
//! The outbound listener with interception ([`serve_intercepting`]) hands a connection that
//! has an original destination to its [`Intercepted`] owner before assuming HTTP, since the
//! app may speak anything there; the lookup is the [`OrigDst`] trait so tests need no root.
//!
//! The inbound listener also tells TLS from plaintext by the first byte (a TLS record starts
//! with 0x16, which no HTTP method does), so PERMISSIVE can serve both on one port. What to do
//! with each kind is the caller's decision ([`TlsAccept`]); this module only applies it. With
//! interception, an inbound connection that has an original destination goes to its
//! [`Intercepted`] owner instead (a client outside the mesh may speak anything, including its
//! own TLS, so the first byte is not enough); the owner hands mesh ClientHellos back to
//! [`serve_mesh_tls`], the same path as a direct mesh hop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use rustls::pki_types::CertificateDer;

use super::tls::TlsFailure;
use crate::body::Body;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// SO_ORIGINAL_DST, when iptables redirected the connection here.
    pub orig_dst: Option<SocketAddr>,
    /// Whether the connection is (m)TLS.
    pub tls: bool,
    /// The client's SPIFFE ID, verified by the mTLS handshake.
    pub peer_identity: Option<Arc<str>>,
}

/// What to do with a new connection, decided by the listener's owner.
#[derive(Debug)]
pub enum Admit {
    Plaintext,
    Tls(Arc<rustls::ServerConfig>),
    /// Close it; the failure is reported through [`TlsAccept::handshake_failed`].
    Refuse(TlsFailure),
}

/// The policy of a listener that accepts both TLS and plaintext.
pub trait TlsAccept: Send + Sync + 'static {
    /// `client_hello`: the connection opened with a TLS record.
    fn admit(&self, client_hello: bool) -> Admit;
    /// The SPIFFE ID of a verified client chain.
    fn peer_identity(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<str>>;
    /// A refused connection or failed handshake (log + metric).
    fn handshake_failed(&self, peer: SocketAddr, failure: &TlsFailure);
}

/// Handles one request; implemented by the outbound and inbound proxies.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Where an accepted connection was originally going (SO_ORIGINAL_DST after an iptables
/// REDIRECT). A trait so tests can intercept without root: they map a client's address to a
/// destination of their choice, and everything after this lookup is the production path.
pub trait OrigDst: Send + Sync + 'static {
    /// `None`: the connection was not redirected (local mode).
    fn orig_dst(&self, stream: &TcpStream) -> Option<SocketAddr>;
}

/// The real lookup: the socket option, on Linux.
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDst for SoOriginalDst {
    fn orig_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        original_dst(stream)
    }
}

/// A boxed future, for the object-safe [`Intercepted`].
pub type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Takes over a plaintext connection that iptables redirected (`info.orig_dst` is set), before
/// any HTTP is assumed: the outbound side detects the protocol and may splice raw bytes.
pub trait Intercepted: Send + Sync + 'static {
    fn serve_intercepted(
        self: Arc<Self>,
        stream: TcpStream,
        info: ConnInfo,
        shutdown: CancellationToken,
        timeouts: ServerTimeouts,
    ) -> BoxFuture;
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

/// How long the server waits on a client.
#[derive(Debug, Clone, Copy)]
pub struct ServerTimeouts {
    /// From accept (or the end of the previous HTTP/1.1 exchange) to a complete request head;
    /// also bounds protocol detection.
    pub header_read: Duration,
    /// HTTP/2 PING interval; a PING unanswered for as long again closes the connection.
    pub h2_keep_alive: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            h2_keep_alive: Duration::from_secs(20),
        }
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
    serve_with(
        listener,
        handler,
        stats,
        shutdown,
        tracker,
        ServerTimeouts::default(),
    )
    .await;
}

/// [`serve`] with explicit timeouts (tests shorten them).
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timeouts: ServerTimeouts,
) {
    serve_inner(listener, handler, stats, shutdown, tracker, timeouts).await;
}

/// [`serve_with`] for the outbound listener with interception: a connection whose original
/// destination (`orig`) is set and differs from the listener goes to `intercepted`; the others
/// (local mode: the app uses the listener as an explicit proxy) are served as HTTP as before.
#[allow(clippy::too_many_arguments)] // each is a distinct piece of wiring
pub async fn serve_intercepting<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    intercepted: Arc<dyn Intercepted>,
    orig: Arc<dyn OrigDst>,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timeouts: ServerTimeouts,
) {
    while let Some((stream, peer)) = accept_next(&listener, &shutdown).await {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let local = local_addr(&stream, peer);
        // A REDIRECT to ourselves reports the listener itself as the original destination when
        // nothing was redirected; that is local mode, not interception.
        match orig.orig_dst(&stream).filter(|d| *d != local) {
            Some(dst) => spawn_intercepted(
                &tracker,
                &intercepted,
                stream,
                (peer, local, dst),
                &shutdown,
                timeouts,
            ),
            None if !may_use_explicit_proxy(peer, local) => {
                // Not redirected and not from this pod: another pod dialing <pod IP>:15001
                // directly must not get a relay that speaks with this workload's identity
                // (a confused deputy that would also walk past STRICT peers in plaintext).
                tracing::warn!(%peer, %local, "refused a direct connection to the outbound listener from outside the workload");
                drop(stream);
            }
            None => {
                // Not redirected: local mode, the explicit proxy.
                tracker.spawn(serve_plain(
                    stream,
                    peer,
                    None,
                    handler.clone(),
                    shutdown.clone(),
                    timeouts,
                ));
            }
        }
    }
}

/// [`serve_with`] for a listener that also speaks TLS, as `accept` decides per connection.
/// A connection whose original destination (`orig`) is set and differs from the listener goes
/// to `intercepted` (it came from anyone, redirected by iptables); the others (the mesh hop,
/// local mode) are told TLS from plaintext by their first byte.
#[allow(clippy::too_many_arguments)] // each is a distinct piece of wiring
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    accept: Arc<dyn TlsAccept>,
    intercepted: Arc<dyn Intercepted>,
    orig: Arc<dyn OrigDst>,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timeouts: ServerTimeouts,
) {
    while let Some((stream, peer)) = accept_next(&listener, &shutdown).await {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let local = local_addr(&stream, peer);
        // As on the outbound: the listener itself as original destination means "not
        // redirected".
        if let Some(dst) = orig.orig_dst(&stream).filter(|d| *d != local) {
            spawn_intercepted(
                &tracker,
                &intercepted,
                stream,
                (peer, local, dst),
                &shutdown,
                timeouts,
            );
            continue;
        }
        tracker.spawn(serve_conn(
            stream,
            peer,
            local,
            handler.clone(),
            accept.clone(),
            shutdown.clone(),
            timeouts,
        ));
    }
}

/// Whether a connection that was not redirected may use the outbound listener as an explicit
/// proxy: only the workload itself may (a loopback peer, as in local mode, or the pod's own
/// address).
pub(crate) fn may_use_explicit_proxy(peer: SocketAddr, local: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip() == local.ip()
}

/// Hands a redirected connection (`peer`, `local`, original destination) to `intercepted`,
/// before anything is read from it.
fn spawn_intercepted(
    tracker: &TaskTracker,
    intercepted: &Arc<dyn Intercepted>,
    stream: TcpStream,
    (peer, local, dst): (SocketAddr, SocketAddr, SocketAddr),
    shutdown: &CancellationToken,
    timeouts: ServerTimeouts,
) {
    let _ = stream.set_nodelay(true);
    let info = ConnInfo {
        peer,
        local,
        orig_dst: Some(dst),
        tls: false,
        peer_identity: None,
    };
    tracker.spawn(
        intercepted
            .clone()
            .serve_intercepted(stream, info, shutdown.clone(), timeouts),
    );
}

/// The next accepted connection, or `None` once `shutdown` fires.
async fn accept_next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => return Some((s, canonical(peer))),
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = shutdown.cancelled() => return None,
        }
    }
}

async fn serve_inner<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timeouts: ServerTimeouts,
) {
    while let Some((stream, peer)) = accept_next(&listener, &shutdown).await {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let local = local_addr(&stream, peer);
        let orig_dst = original_dst(&stream).filter(|d| *d != local);
        tracker.spawn(serve_plain(
            stream,
            peer,
            orig_dst,
            handler.clone(),
            shutdown.clone(),
            timeouts,
        ));
    }
}

/// A connection to the TLS-capable listener that was not redirected: TLS or plaintext by the
/// first byte.
async fn serve_conn<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    handler: Arc<H>,
    accept: Arc<dyn TlsAccept>,
    shutdown: CancellationToken,
    timeouts: ServerTimeouts,
) {
    let mut first = [0u8; 1];
    let client_hello =
        match tokio::time::timeout(timeouts.header_read, stream.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_RECORD,
            Ok(_) => return,
            Err(_) => {
                tracing::debug!(%peer, "client sent nothing in time; closing");
                return;
            }
        };
    match accept.admit(client_hello) {
        Admit::Plaintext => serve_plain(stream, peer, None, handler, shutdown, timeouts).await,
        Admit::Refuse(f) => accept.handshake_failed(peer, &f),
        Admit::Tls(config) => {
            let _ = stream.set_nodelay(true);
            let info = ConnInfo {
                peer,
                local,
                orig_dst: None,
                tls: true,
                peer_identity: None,
            };
            serve_mesh_tls(stream, info, config, handler, &*accept, shutdown, timeouts).await;
        }
    }
}

/// The mesh hop's server side on a connection whose next bytes are a ClientHello (`io` may
/// replay bytes detection already read): the handshake under `config`, bounded like a request
/// head, then HTTP with the client's verified SPIFFE ID in `info`.
pub async fn serve_mesh_tls<H, IO>(
    io: IO,
    mut info: ConnInfo,
    config: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    accept: &dyn TlsAccept,
    shutdown: CancellationToken,
    timeouts: ServerTimeouts,
) where
    H: Handler,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = info.peer;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(timeouts.header_read, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return accept.handshake_failed(peer, &TlsFailure::from_io(&e)),
        Err(_) => {
            let f = TlsFailure::new(
                super::tls::TlsReason::HandshakeFailed,
                "the TLS handshake did not finish in time",
            );
            return accept.handshake_failed(peer, &f);
        }
    };
    info.tls = true;
    info.peer_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| accept.peer_identity(c));
    serve_http(TokioIo::new(tls), info, handler, shutdown, timeouts).await;
}

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn serve_plain<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    handler: Arc<H>,
    shutdown: CancellationToken,
    timeouts: ServerTimeouts,
) {
    // hyper-util's protocol sniffing waits for bytes without limit; bound it here.
    match tokio::time::timeout(timeouts.header_read, preface_decidable(&stream)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "client sent no request in time; closing");
            return;
        }
    }
    let _ = stream.set_nodelay(true);
    let local = local_addr(&stream, peer);
    let info = ConnInfo {
        peer,
        local,
        orig_dst,
        tls: false,
        peer_identity: None,
    };
    serve_http(TokioIo::new(stream), info, handler, shutdown, timeouts).await;
}

/// HTTP/1.1 or HTTP/2 on an established (plain or TLS) connection, until it ends or shutdown.
pub(crate) async fn serve_http<H, IO>(
    io: TokioIo<IO>,
    info: ConnInfo,
    handler: Arc<H>,
    shutdown: CancellationToken,
    timeouts: ServerTimeouts,
) where
    H: Handler,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = info.peer;
    let draining = shutdown.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let h = handler.clone();
        let info = info.clone();
        let draining = draining.clone();
        // Upgrades (CONNECT tunnels, 101) keep their connection: `close` would end the tunnel.
        let may_close =
            req.version() < http::Version::HTTP_2 && req.method() != http::Method::CONNECT;
        async move {
            let mut rsp = h.handle(req, info).await;
            if may_close
                && draining.is_cancelled()
                && rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                // hyper closes after this response anyway (graceful shutdown); the header
                // tells the client beforehand, so its pool does not reuse the connection.
                rsp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(rsp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.h2_keep_alive)
        .keep_alive_timeout(timeouts.h2_keep_alive);
    let conn = builder.serve_connection_with_upgrades(io, svc);
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

/// Waits until the first bytes tell HTTP/1 from HTTP/2 prior knowledge (a full preface, or a
/// byte that differs from it), so hyper's own detection then returns at once. `false`: the
/// client closed first.
async fn preface_decidable(stream: &TcpStream) -> std::io::Result<bool> {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(true);
        }
        // A partial preface: peeking again would return at once with the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `a.b.c.d` for `::ffff:a.b.c.d`: a dual-stack listener (`[::]`) sees v4 peers v4-mapped;
/// everything past accept (original destinations, authorization by IP, logs) sees v4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The connection's local address, v4 for a v4 connection on a dual-stack listener.
fn local_addr(stream: &TcpStream, peer: SocketAddr) -> SocketAddr {
    canonical(stream.local_addr().unwrap_or(peer))
}

/// The pre-NAT destination of an intercepted connection (Linux iptables REDIRECT),
/// SO_ORIGINAL_DST. A v4 connection accepted on a dual-stack (`[::]`) socket is a v4-mapped
/// IPv6 socket: the IPv4 option still applies to it (the kernel passes SOL_IP options of
/// such a socket to IPv4, whose conntrack lookup uses the v4 addresses) and answers
/// `sockaddr_in`; a v6 connection's v4 lookup fails and IP6T_SO_ORIGINAL_DST answers.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    #[cfg(target_os = "linux")]
    {
        let sock = socket2::SockRef::from(stream);
        sock.original_dst_v4()
            .or_else(|_| sock.original_dst_v6())
            .ok()
            .and_then(|a| a.as_socket())
            .map(canonical)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}
