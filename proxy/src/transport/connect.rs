//! The upstream seam: every connection the proxy opens goes through [`Connector`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::dial::{self, PoolError};
use super::h1pool::H1Pool;
use super::h2pool::{H2Pool, Lease, PeerTls, PoolConfig, PoolKey, with_lease};
use super::idle::IdleTimeout;
use super::origin;
use super::profile::DialProfile;
use super::tls::{MeshClientTls, MeshSecurity, TlsFailure, TlsReason};
use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::SimpleTls;
use crate::resilience::{CompactDuration, Reason};
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
///
/// Every method takes the [`DialProfile`] of the request's cluster: how long a dial may take,
/// the socket's keep-alive, and how long and for how many requests a pooled connection
/// serves. Connections are pooled per profile, so clusters whose settings differ never
/// share one.
#[derive(Debug, Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Proxy-to-proxy connections (the mesh hop), keyed by the peer's inbound address.
    mesh: H2Pool,
    /// HTTP/2 to workloads without a sidecar and to the local app (h2c), and over TLS this
    /// proxy originates (SIMPLE).
    h2: H2Pool,
    /// HTTP/1.1, to the same upstreams.
    h1: H1Pool,
    /// Connections to the local app (the inbound side, which no DestinationRule governs).
    local: DialProfile,
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
    /// `local_connect_timeout` bounds dials to the local app (see [`Connector::with_tls`]).
    pub fn new(local_connect_timeout: Duration) -> Self {
        Self::with_tls(local_connect_timeout, None, None)
    }

    /// A connector that can secure the mesh hop with `tls` and counts handshake failures.
    /// `local_connect_timeout` is the connect timeout of [`Connector::local_profile`] (the
    /// inbound side's connections to the app); upstream connections use their cluster's.
    pub fn with_tls(
        local_connect_timeout: Duration,
        tls: Option<Arc<dyn MeshClientTls>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh: H2Pool::new(PoolConfig::default()),
                h2: H2Pool::new(PoolConfig::default()),
                h1: H1Pool::default(),
                local: DialProfile::default().with_connect_timeout(local_connect_timeout),
                tls,
                metrics,
            }),
        }
    }

    /// The profile of connections to the local app: the defaults, with the connect timeout
    /// given at startup.
    pub fn local_profile(&self) -> &DialProfile {
        &self.inner.local
    }

    /// Usable mesh connections (tests use it to check pooling).
    pub fn mesh_connections(&self) -> usize {
        self.inner.mesh.live_connections()
    }

    /// Mesh hop, HTTP: `req` (already carrying the `weft-*` headers) as an HTTP/2 request on
    /// a pooled connection to the peer proxy at `peer`.
    pub async fn mesh_request(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        profile: &DialProfile,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        *req.version_mut() = Version::HTTP_2;
        let (rsp, lease) = self.mesh_send(peer, security, profile, req).await?;
        Ok(with_lease(rsp, lease))
    }

    /// `req` on a pooled mesh connection for `peer` under `security`, dialed (and
    /// TLS-verified) if needed; the stream's lease goes with the response.
    async fn mesh_send(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        profile: &DialProfile,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let r = match security {
            MeshSecurity::Plaintext => {
                let key = PoolKey::plain(peer, profile);
                self.inner.mesh.send_leased(&key, req, None).await
            }
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
                    tls: Some(PeerTls::Mesh(expected.clone())),
                    profile: *profile,
                };
                // Mesh certificates name no DNS host: an IP server name sends no SNI, and the
                // verifier checks SPIFFE IDs instead.
                let config = || {
                    Ok((
                        tls.client_config(expected)?,
                        ServerName::IpAddress(peer.ip().into()),
                    ))
                };
                self.inner.mesh.send_leased(&key, req, Some(&config)).await
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
    /// the destination `target` (HBONE-style). The stream counts against its connection's
    /// stream cap for as long as the tunnel lives, and the tunnel closes after the profile's
    /// TCP idle timeout without traffic.
    pub async fn mesh_tunnel(
        &self,
        peer: SocketAddr,
        security: &MeshSecurity,
        profile: &DialProfile,
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
        let (mut rsp, lease) = self.mesh_send(peer, security, profile, req).await?;
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
        Ok(Box::new(IdleTimeout::new(
            TokioIo::new(upgraded),
            profile.tcp_idle_timeout,
            lease,
        )))
    }

    /// Plain HTTP to `addr` (a workload without a sidecar, or the local app), in the
    /// protocol the client spoke. `req`'s URI must be absolute (`http://authority/path`).
    pub async fn http_request(
        &self,
        addr: SocketAddr,
        proto: AppProtocol,
        profile: &DialProfile,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        match proto {
            AppProtocol::H2 => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
                self.inner
                    .h2
                    .send(addr, profile, req)
                    .await
                    .map_err(|e| pool_error(e, "upstream"))
            }
            AppProtocol::Http1 => {
                // The request goes out in origin form: the authority the app named travels
                // in Host for the application.
                if let Some(a) = req.uri().authority()
                    && let Ok(v) = http::HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                *req.version_mut() = Version::HTTP_11;
                self.inner
                    .h1
                    .send(&PoolKey::plain(addr, profile), req, None)
                    .await
                    .map(|rsp| rsp.map(body::boxed))
                    .map_err(|e| pool_error(e, "upstream"))
            }
        }
    }

    /// HTTP over TLS that this proxy originates (DestinationRule SIMPLE) to `addr`, in the
    /// protocol the app spoke (ALPN h2 or http/1.1), pooled per endpoint, TLS settings and
    /// profile. `req`'s URI must be absolute; its authority (what the app named) is kept for
    /// `Host` / `:authority`.
    pub async fn origin_request(
        &self,
        addr: SocketAddr,
        tls: &Arc<SimpleTls>,
        proto: AppProtocol,
        profile: &DialProfile,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = req
            .uri()
            .authority()
            .map_or_else(|| tls.server_name.clone(), |a| a.as_str().to_string());
        *req.uri_mut() = retarget(req.uri(), "https", &authority)?;
        let key = PoolKey {
            addr,
            tls: Some(PeerTls::Origin(tls.clone())),
            profile: *profile,
        };
        let config = || origin::dial_settings(tls, Some(proto));
        let r = match proto {
            AppProtocol::H2 => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
                self.inner.h2.send_keyed(&key, req, Some(&config)).await
            }
            AppProtocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                if let Ok(v) = http::HeaderValue::from_str(&authority) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                self.inner
                    .h1
                    .send(&key, req, Some(&config))
                    .await
                    .map(|rsp| rsp.map(body::boxed))
            }
        };
        r.map_err(|e| self.origin_error(tls, e))
    }

    /// Opaque TCP over TLS this proxy originates (SIMPLE), for CONNECT: the app's bytes are
    /// encrypted to `addr`. No ALPN is offered (the protocol inside is unknown). The dial is
    /// bounded by the profile's connect timeout, the tunnel by its TCP idle timeout.
    pub async fn origin_tunnel(
        &self,
        addr: SocketAddr,
        tls: &Arc<SimpleTls>,
        profile: &DialProfile,
    ) -> Result<Tunnel, ProxyError> {
        let config = || origin::dial_settings(tls, None);
        dial::bounded(
            addr,
            profile.connect_timeout,
            dial::connect(addr, Some(&config), profile),
        )
        .await
        .map(|s| Box::new(IdleTimeout::new(s, profile.tcp_idle_timeout, ())) as Tunnel)
        .map_err(|e| self.origin_error(tls, e))
    }

    /// A failed origination: TLS failures are logged at warn and counted (direction
    /// outbound); the body names the host, the address and the reason.
    fn origin_error(&self, tls: &SimpleTls, e: PoolError) -> ProxyError {
        let host = &tls.server_name;
        match e {
            PoolError::Tls { addr, failure } => {
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
            e => pool_error(e, &format!("upstream {host} at")),
        }
    }

    /// Plain TCP to `addr`, bounded by the profile's connect timeout; the tunnel closes after
    /// its TCP idle timeout without traffic.
    pub async fn tcp(&self, addr: SocketAddr, profile: &DialProfile) -> Result<Tunnel, ProxyError> {
        dial::bounded(
            addr,
            profile.connect_timeout,
            dial::tcp(addr, &profile.keepalive),
        )
        .await
        .map(|s| Box::new(IdleTimeout::new(s, profile.tcp_idle_timeout, ())) as Tunnel)
        .map_err(|e| pool_error(e, "upstream"))
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
        PoolError::ConnectTimeout { addr, timeout } => connect_timeout(who, addr, timeout),
        PoolError::Request { addr, source } => {
            let kind = if refused_stream(&source) {
                ErrorKind::UpstreamRefusedStream
            } else {
                ErrorKind::UpstreamReset
            };
            ProxyError::new(
                kind,
                format!("request to {who} {addr} failed: {}", error_chain(&source)),
            )
        }
        PoolError::Tls { addr, failure } => ProxyError::new(
            ErrorKind::UpstreamTlsFailed,
            format!("TLS to {who} {addr} failed: {failure}"),
        ),
    }
}

/// A dial that outlived the connect timeout: its own code, and the reason carries the
/// timeout so the response says `x-weft-reason: connect_timeout(<d>)`.
fn connect_timeout(who: &str, addr: SocketAddr, timeout: Duration) -> ProxyError {
    ProxyError::new(
        ErrorKind::UpstreamConnectTimeout,
        format!(
            "cannot connect to {who} {addr}: no connection within the connect timeout of {} \
             (connectionPool.tcp.connectTimeout)",
            CompactDuration(timeout)
        ),
    )
    .with_reason(Reason::ConnectTimeout(timeout))
}

/// Whether the HTTP/2 upstream refused the stream (RST_STREAM REFUSED_STREAM): it promises
/// it did not process the request, so another attempt is safe.
pub(super) fn refused_stream(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = err.source();
    }
    false
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
