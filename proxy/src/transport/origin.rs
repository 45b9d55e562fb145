//! TLS origination (DestinationRule `tls.mode: SIMPLE`): the app speaks plaintext to its
//! sidecar, and the sidecar opens TLS to an endpoint (usually a server outside the mesh).
//!
//! - Verification: webpki's chain check against `ca_certificates` (or the compiled-in Mozilla
//!   roots), then either one of `subject_alt_names` (DNS or URI SAN) or, without them, the
//!   usual hostname check against the SNI. `insecure_skip_verify` checks nothing but the
//!   handshake signatures.
//! - ALPN: `h2` when the app spoke h2, else `http/1.1`; none for CONNECT (opaque bytes).
//! - Pooling: one hyper client per (TLS settings, app protocol, endpoint address), so a
//!   connection verified under one cluster's settings never serves another's.
//!
//! The rustls config is built on a dial only; the snapshot already loaded the roots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::connect::AppProtocol;
use super::tls::{ChainVerifier, TlsFailure, TlsReason, handshake_signatures};
use crate::body::Body;
use crate::model::{SimpleTls, TlsRoots};

/// Why a TLS origination dial failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("TLS to {addr} failed: {failure}")]
    Tls {
        addr: SocketAddr,
        failure: TlsFailure,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mozilla's roots (webpki-roots), parsed once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut r = RootCertStore::empty();
            r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(r)
        })
        .clone()
}

fn roots(t: &SimpleTls) -> Result<Arc<RootCertStore>, TlsFailure> {
    match &t.roots {
        TlsRoots::System => Ok(system_roots()),
        TlsRoots::Certs(certs) => {
            let mut r = RootCertStore::empty();
            for c in certs.iter() {
                r.add(c.clone()).map_err(|e| {
                    TlsFailure::new(
                        TlsReason::HandshakeFailed,
                        format!("ca_certificates holds an unusable root: {e}"),
                    )
                })?;
            }
            Ok(Arc::new(r))
        }
    }
}

/// The SNI (and name to verify): `UpstreamTls.sni`, else the cluster's service host.
pub(super) fn server_name(t: &SimpleTls) -> Result<ServerName<'static>, TlsFailure> {
    ServerName::try_from(t.server_name.clone()).map_err(|e| {
        TlsFailure::new(
            TlsReason::HandshakeFailed,
            format!(
                "{:?} cannot be used as the TLS server name: {e}",
                t.server_name
            ),
        )
    })
}

/// The rustls config for one dial under `t`, offering `alpn`.
pub fn client_config(
    t: &SimpleTls,
    alpn: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, TlsFailure> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(NoVerifier {
            provider: provider.clone(),
        })
    } else if !t.subject_alt_names.is_empty() {
        // Chain to the roots, then one of the wanted SANs instead of the hostname check.
        let sans = t.subject_alt_names.clone();
        Arc::new(ChainVerifier::new(
            roots(t)?,
            provider.clone(),
            "subject_alt_names",
            Box::new(move |leaf| check_sans(leaf, &sans)),
        ))
    } else {
        WebPkiServerVerifier::builder_with_provider(roots(t)?, provider.clone())
            .build()
            .map_err(|e| TlsFailure::new(TlsReason::HandshakeFailed, e.to_string()))?
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFailure::new(TlsReason::HandshakeFailed, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    Ok(Arc::new(cfg))
}

/// TCP then TLS to `addr`, bounded by `timeout`.
pub(super) async fn dial(
    addr: SocketAddr,
    t: &SimpleTls,
    alpn: Option<&[u8]>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, OriginError> {
    let tls_err = |failure| OriginError::Tls { addr, failure };
    let config = client_config(t, alpn).map_err(tls_err)?;
    let name = server_name(t).map_err(tls_err)?;
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| OriginError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        super::connect::set_tcp_keepalive(&tcp);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(TlsFailure::from_io(&e)))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| OriginError::Connect {
            addr,
            reason: format!("timed out after {timeout:?}"),
        })?
}

// === verifiers ===

/// Does the certificate carry one of `wanted` as a DNS SAN (wildcards honoured) or URI SAN?
pub fn check_sans(der: &CertificateDer<'_>, wanted: &[String]) -> Result<(), TlsFailure> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        TlsFailure::new(
            TlsReason::HandshakeFailed,
            format!("cannot parse the certificate: {e}"),
        )
    })?;
    let mut presented = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => presented.push(("dns", d.to_string())),
                GeneralName::URI(u) => presented.push(("uri", u.to_string())),
                _ => {}
            }
        }
    }
    let ok = wanted.iter().any(|w| {
        presented.iter().any(|(kind, p)| match *kind {
            "dns" => dns_matches(p, w),
            _ => p == w,
        })
    });
    if ok {
        return Ok(());
    }
    let shown: Vec<&str> = presented.iter().map(|(_, p)| p.as_str()).collect();
    Err(TlsFailure::new(
        TlsReason::NameMismatch,
        format!(
            "the server's certificate carries none of the subject_alt_names [{}] (it has [{}])",
            wanted.join(", "),
            shown.join(", ")
        ),
    ))
}

/// A DNS SAN `pattern` (possibly `*.domain`) against a wanted `name`, ignoring case.
fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(domain), Some((label, rest))) => {
            !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(domain)
        }
        _ => false,
    }
}

/// `insecure_skip_verify`: accepts any certificate. The handshake signatures are still
/// checked (the server must hold the key of the certificate it sent), though that proves
/// nothing about who it is.
#[derive(Debug)]
struct NoVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

// === pooled HTTP over originated TLS ===

/// Dials one endpoint under one set of TLS settings (the URI is not used: the client that
/// owns this connector serves exactly one endpoint).
#[derive(Clone)]
pub(super) struct OriginConnector {
    addr: SocketAddr,
    tls: Arc<SimpleTls>,
    proto: AppProtocol,
    timeout: Duration,
}

impl tower::Service<Uri> for OriginConnector {
    type Response = OriginStream;
    type Error = OriginError;
    type Future = BoxFuture<'static, Result<OriginStream, OriginError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let c = self.clone();
        Box::pin(async move {
            let alpn: &[u8] = match c.proto {
                AppProtocol::H2 => b"h2",
                AppProtocol::Http1 => b"http/1.1",
            };
            let s = dial(c.addr, &c.tls, Some(alpn), c.timeout).await?;
            Ok(OriginStream(TokioIo::new(s)))
        })
    }
}

/// A TLS stream as hyper's client wants it.
pub(super) struct OriginStream(TokioIo<TlsStream<TcpStream>>);

impl Connection for OriginStream {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

type OriginKey = (SocketAddr, Arc<SimpleTls>, AppProtocol);

/// One pooling client per (endpoint, TLS settings, app protocol). Read lock-free; written on
/// the first request of a new key. Keys from old config are forgotten wholesale past
/// [`MAX_CLIENTS`] (connections in use live on in their requests).
#[derive(Default)]
pub(super) struct OriginClients {
    clients: ArcSwap<HashMap<OriginKey, Client<OriginConnector, Body>>>,
}

const MAX_CLIENTS: usize = 1024;

impl std::fmt::Debug for OriginClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginClients")
            .field("clients", &self.clients.load().len())
            .finish()
    }
}

impl OriginClients {
    pub(super) fn client(
        &self,
        addr: SocketAddr,
        tls: &Arc<SimpleTls>,
        proto: AppProtocol,
        timeout: Duration,
    ) -> Client<OriginConnector, Body> {
        let key = (addr, tls.clone(), proto);
        if let Some(c) = self.clients.load().get(&key) {
            return c.clone();
        }
        let connector = OriginConnector {
            addr,
            tls: tls.clone(),
            proto,
            timeout,
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        if proto == AppProtocol::H2 {
            b.http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .http2_keep_alive_timeout(Duration::from_secs(10))
                .http2_keep_alive_while_idle(true);
        }
        let client = b.build(connector);
        let mut out = client.clone();
        self.clients.rcu(|m| {
            let mut m = if m.len() >= MAX_CLIENTS {
                HashMap::new()
            } else {
                HashMap::clone(m)
            };
            out = m
                .entry(key.clone())
                .or_insert_with(|| client.clone())
                .clone();
            m
        });
        out
    }
}
