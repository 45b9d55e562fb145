//! The upstream seam: every connection the proxy opens goes through [`Connector`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::h2pool::{H2Pool, PoolConfig, PoolError, PoolKey};
use super::origin::{OriginClients, OriginError};
use super::tls::{MeshClientTls, MeshSecurity, TlsFailure, TlsReason};
use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::SimpleTls;
use crate::telemetry::Metrics;

/// What the application spoke, and so what the last hop speaks to the destination app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    Http1,
    H2,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
        }
    }

    /// Parses the `weft-app-protocol` value; unknown values mean HTTP/1.1, the safe default.
    pub fn from_header(v: Option<&str>) -> Self {
        match v {
            Some(v) if v.eq_ignore_ascii_case("h2") => Self::H2,
            _ => Self::Http1,
        }
    }
}

/// An opaque byte stream to an upstream: a TCP socket, or an HTTP/2 CONNECT stream.
pub type Tunnel = Box<dyn TunnelIo>;

/// `AsyncRead + AsyncWrite` as one object-safe trait.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> TunnelIo for T {}

/// Pools and dials upstream connections; cheap to clone.
#[derive(Debug, Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Proxy-to-proxy connections (the mesh hop), keyed by the peer's inbound address.
    mesh: H2Pool,
    /// h2c to workloads without a sidecar, and to the local app.
    h2: H2Pool,
    /// HTTP/1.1 to workloads without a sidecar, and to the local app.
    h1: Client<HttpConnector, Body>,
    /// TLS origination (SIMPLE) to servers outside the mesh.
    origin: OriginClients,
    connect_timeout: Duration,
    /// Our side of mesh mTLS; `None` when the proxy runs without an identity (plaintext).
    tls: Option<Arc<dyn MeshClientTls>>,
    /// Where handshake failures are counted.
    metrics: Option<Arc<Metrics>>,
}

impl Default for Connector {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Self {
        Self::with_tls(connect_timeout, None, None)
    }

    /// A connector that can secure the mesh hop with `tls` and counts handshake failures.
    pub fn with_tls(
        connect_timeout: Duration,
        tls: Option<Arc<dyn MeshClientTls>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // An idle pooled HTTP/1.1 connection to a vanished host would otherwise be reused and
        // wait forever for a response; kernel keepalive probes notice and close it.
        http.set_keepalive(Some(TCP_KEEPALIVE));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(http);
        Self {
            inner: Arc::new(Inner {
                mesh: H2Pool::new(PoolConfig::new(connect_timeout)),
                h2: H2Pool::new(PoolConfig::new(connect_timeout)),
                h1,
                origin: OriginClients::default(),
                connect_timeout,
                tls,
                metrics,
            }),
        }
    }

    /// Peers with a live mesh connection (tests use it to check pooling).
    pub fn mesh_connections(&self) -> usize {
        self.inner.mesh.live_connections()
    }

    /// Mesh hop, HTTP: `req` (already carrying the `weft-*` headers) as an HTTP/2 request on
    /// the pooled connection to the peer proxy at `peer`.
    pub async fn mesh_request(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        *req.version_mut() = Version::HTTP_2;
        self.mesh_send(peer, security, req).await
    }

    /// The pooled mesh connection for `peer` under `security`, dialed (and TLS-verified) if
    /// needed.
    async fn mesh_send(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let r = match security {
            MeshSecurity::Plaintext => self.inner.mesh.send(peer, req).await,
            MeshSecurity::Mutual(expected) => {
                let Some(tls) = &self.inner.tls else {
                    let f = TlsFailure::new(
                        TlsReason::NoLocalCertificate,
                        format!(
                            "mTLS to {peer} (expecting {expected}) is required, but this proxy \
                             runs without an identity (no --ca-root)"
                        ),
                    );
                    return Err(self.tls_error(peer, f));
                };
                let key = PoolKey {
                    addr: peer,
                    tls: Some(expected.clone()),
                };
                let config = || tls.client_config(expected);
                self.inner.mesh.send_keyed(&key, req, Some(&config)).await
            }
        };
        r.map_err(|e| match e {
            PoolError::Tls { addr, failure } => self.tls_error(addr, failure),
            // In TLS 1.3 the server checks our certificate after our side of the handshake is
            // done, so its refusal (an alert) surfaces on the first request: report it as the
            // TLS failure it is, not as a reset.
            PoolError::Request { addr, source }
                if matches!(security, MeshSecurity::Mutual(_))
                    && let Some(f) = tls_alert(&source) =>
            {
                self.tls_error(addr, f)
            }
            e => pool_error(e, "peer proxy"),
        })
    }

    /// A refused handshake: counted, logged at warn (someone must act on it), and answered
    /// with the most specific code.
    fn tls_error(&self, peer: SocketAddr, f: TlsFailure) -> ProxyError {
        tracing::warn!(%peer, reason = f.reason.code(), "mesh TLS to peer proxy failed: {}", f.detail);
        if let Some(m) = &self.inner.metrics {
            m.tls_handshake_failure("outbound", f.reason.code());
        }
        let kind = match f.reason {
            TlsReason::IdentityMismatch | TlsReason::UnknownTrustDomain => {
                ErrorKind::UpstreamIdentityMismatch
            }
            _ => ErrorKind::UpstreamTlsFailed,
        };
        ProxyError::new(
            kind,
            format!(
                "TLS to peer proxy {peer} failed ({}): {}",
                f.reason.code(),
                f.detail
            ),
        )
    }

    /// Mesh hop, TCP: an HTTP/2 CONNECT stream to the peer proxy at `peer` whose authority is
    /// the destination `target` (HBONE-style).
    pub async fn mesh_tunnel(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        target: SocketAddr,
    ) -> Result<Tunnel, ProxyError> {
        let uri = Uri::try_from(target.to_string()).map_err(|e| {
            ProxyError::new(
                ErrorKind::BadRequest,
                format!("bad tunnel target {target}: {e}"),
            )
        })?;
        let mut req = Request::new(body::empty());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        let mut rsp = self.mesh_send(peer, security, req).await?;
        if rsp.status() != StatusCode::OK {
            let why = rsp
                .headers()
                .get(crate::errors::PROXY_ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(ProxyError::new(
                ErrorKind::UpstreamConnectFailed,
                format!(
                    "peer proxy {peer} refused the tunnel to {target}: {} {why}",
                    rsp.status()
                ),
            ));
        }
        let upgraded = hyper::upgrade::on(&mut rsp).await.map_err(|e| {
            ProxyError::new(
                ErrorKind::UpstreamReset,
                format!("tunnel to {target} via {peer} failed: {e}"),
            )
        })?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }

    /// Plain HTTP to `addr` (a workload without a sidecar, or the local app), in the
    /// protocol the client spoke. `req`'s URI must be absolute (`http://authority/path`).
    pub async fn http_request(
        &self,
        addr: SocketAddr,
        proto: AppProtocol,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match proto {
            AppProtocol::H2 => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
                self.inner
                    .h2
                    .send(addr, req)
                    .await
                    .map_err(|e| pool_error(e, "upstream"))
            }
            AppProtocol::Http1 => {
                // The legacy client dials the URI's authority, so point the URI at `addr` and
                // keep the original authority in Host for the application.
                let authority = req.uri().authority().map(|a| a.as_str().to_string());
                if let Some(a) = authority
                    && let Ok(v) = http::HeaderValue::from_str(&a)
                {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                *req.uri_mut() = retarget(req.uri(), "http", &addr.to_string())?;
                *req.version_mut() = Version::HTTP_11;
                self.inner.h1.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        ProxyError::new(
                            ErrorKind::UpstreamConnectFailed,
                            format!("cannot connect to upstream {addr}: {}", error_chain(&e)),
                        )
                    } else {
                        ProxyError::new(
                            ErrorKind::UpstreamReset,
                            format!("request to upstream {addr} failed: {}", error_chain(&e)),
                        )
                    }
                })
            }
        }
    }

    /// HTTP over TLS that this proxy originates (DestinationRule SIMPLE) to `addr`, in the
    /// protocol the app spoke (ALPN h2 or http/1.1), pooled per endpoint and TLS settings.
    /// `req`'s URI must be absolute; its authority (what the app named) is kept for `Host` /
    /// `:authority`.
    pub async fn origin_request(
        &self,
        addr: SocketAddr,
        tls: &Arc<SimpleTls>,
        proto: AppProtocol,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let authority = req
            .uri()
            .authority()
            .map_or_else(|| tls.server_name.clone(), |a| a.as_str().to_string());
        *req.uri_mut() = retarget(req.uri(), "https", &authority)?;
        match proto {
            AppProtocol::H2 => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
            }
            AppProtocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                if let Ok(v) = http::HeaderValue::from_str(&authority) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
        }
        let client = self
            .inner
            .origin
            .client(addr, tls, proto, self.inner.connect_timeout);
        client.request(req).await.map_err(|e| {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = cur {
                if let Some(o) = err.downcast_ref::<OriginError>() {
                    return self.origin_error(tls, o);
                }
                cur = err.source();
            }
            let kind = if e.is_connect() {
                ErrorKind::UpstreamConnectFailed
            } else {
                ErrorKind::UpstreamReset
            };
            ProxyError::new(
                kind,
                format!(
                    "request to upstream {addr} over TLS ({}) failed: {}",
                    tls.server_name,
                    error_chain(&e)
                ),
            )
        })
    }

    /// Opaque TCP over TLS this proxy originates (SIMPLE), for CONNECT: the app's bytes are
    /// encrypted to `addr`. No ALPN is offered (the protocol inside is unknown).
    pub async fn origin_tunnel(
        &self,
        addr: SocketAddr,
        tls: &Arc<SimpleTls>,
    ) -> Result<Tunnel, ProxyError> {
        super::origin::dial(addr, tls, None, self.inner.connect_timeout)
            .await
            .map(|s| Box::new(s) as Tunnel)
            .map_err(|e| self.origin_error(tls, &e))
    }

    /// A failed origination dial: TLS failures are logged at warn and counted (direction
    /// outbound); the body names the host, the address and the reason.
    fn origin_error(&self, tls: &SimpleTls, e: &OriginError) -> ProxyError {
        match e {
            OriginError::Connect { addr, reason } => ProxyError::new(
                ErrorKind::UpstreamConnectFailed,
                format!("cannot connect to upstream {addr}: {reason}"),
            ),
            OriginError::Tls { addr, failure } => {
                let host = &tls.server_name;
                tracing::warn!(
                    %addr, host = %host, cluster = %tls.cluster, reason = failure.reason.code(),
                    "TLS origination failed: {}", failure.detail
                );
                if let Some(m) = &self.inner.metrics {
                    m.tls_handshake_failure("outbound", failure.reason.code());
                }
                ProxyError::new(
                    ErrorKind::UpstreamTlsFailed,
                    format!(
                        "TLS to {host} ({addr}) failed ({}): {}",
                        failure.reason.code(),
                        failure.detail
                    ),
                )
            }
        }
    }

    /// Plain TCP to `addr`.
    pub async fn tcp(&self, addr: SocketAddr) -> Result<Tunnel, ProxyError> {
        let s = tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ProxyError::new(
                    ErrorKind::UpstreamConnectFailed,
                    format!("cannot connect to upstream {addr}: timed out"),
                )
            })?
            .map_err(|e| {
                ProxyError::new(
                    ErrorKind::UpstreamConnectFailed,
                    format!("cannot connect to upstream {addr}: {e}"),
                )
            })?;
        let _ = s.set_nodelay(true);
        set_tcp_keepalive(&s);
        Ok(Box::new(s))
    }
}

/// Idle time before the kernel probes a connection whose peer may have vanished.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Opaque tunnels carry no protocol of their own to detect a dead peer, so a splice to a host
/// that disappeared without a FIN would hold its task and socket forever; kernel keepalive
/// probes bound that to about a minute.
pub(crate) fn set_tcp_keepalive(s: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}

/// `uri`'s path and query under `scheme://authority` (what a pooling client dials).
fn retarget(uri: &Uri, scheme: &str, authority: &str) -> Result<Uri, ProxyError> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::try_from(format!("{scheme}://{authority}{pq}"))
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("bad request target: {e}")))
}

fn pool_error(e: PoolError, who: &str) -> ProxyError {
    match e {
        PoolError::Connect { addr, reason } => ProxyError::new(
            ErrorKind::UpstreamConnectFailed,
            format!("cannot connect to {who} {addr}: {reason}"),
        ),
        PoolError::Request { addr, source } => ProxyError::new(
            ErrorKind::UpstreamReset,
            format!("request to {who} {addr} failed: {}", error_chain(&source)),
        ),
        PoolError::Tls { addr, failure } => ProxyError::new(
            ErrorKind::UpstreamTlsFailed,
            format!("TLS to {who} {addr} failed: {failure}"),
        ),
    }
}

/// A TLS alert from the peer somewhere in `e`'s causes. h2 does not expose its I/O error as a
/// `source()`, so after the typed search the rendered chain is checked for rustls' wording.
fn tls_alert(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(TlsFailure::from_rustls(r));
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(TlsFailure::from_rustls(r));
        }
        cur = err.source();
    }
    let text = error_chain(e);
    let at = text.find("received fatal alert: ")?;
    Some(TlsFailure::new(
        TlsReason::PeerRejected,
        format!(
            "the peer proxy refused the handshake ({}); it may not trust this proxy's \
             certificate (another root?)",
            &text[at..]
        ),
    ))
}

/// An error and its causes on one line ("client error (Connect): connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
