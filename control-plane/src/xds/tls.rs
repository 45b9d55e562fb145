//! TLS for the control channel (port 15012): the rustls server config and the accept loop that
//! turns TCP connections into TLS streams for tonic.
//!
//! Why tokio-rustls rather than tonic's `ServerTlsConfig`: the serving certificate is renewed
//! while the server runs, which needs a certificate resolver that can be swapped
//! (`ca::serving::SwappableCert`); tonic's config is fixed at build time. tonic still sees the peer's
//! certificates (`Request::peer_certs`) because it implements `Connected` for
//! `tokio_rustls::server::TlsStream`.
//!
//! Client certificates are optional at the TLS layer, since a proxy has none when it first calls
//! the CA; when one is presented it must chain to the trust bundle, and ADS then requires it
//! (`xds::auth`).

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// A handshake that has not finished by then is dropped, so idle sockets cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS config cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid trust bundle: {0}")]
    Roots(String),
    #[error("cannot build the TLS config: {0}")]
    Config(String),
}

/// The server config: TLS 1.2+ on ring, ALPN h2 (gRPC), the swappable serving certificate,
/// client certificates optional but verified against `roots` (PEM) when presented.
pub fn server_config(
    cert: Arc<dyn ResolvesServerCert>,
    roots: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    for pem in roots {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| TlsError::Roots(e.to_string()))?;
            store.add(der).map_err(|e| TlsError::Roots(e.to_string()))?;
        }
    }
    // The provider is passed explicitly so the config does not depend on a process-wide
    // default being installed (weftctl runs this code in its own process).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds. Each
/// handshake runs on its own task, so a slow client cannot hold up others. Stops at
/// `shutdown`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<tokio::net::TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "xDS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        // Info, not debug: a proxy refused for a certificate from another
                        // root must be able to find out why (DESIGN.md: no silent failure).
                        tracing::info!(%peer, error = %e, "xDS TLS handshake failed");
                    }
                    Err(_) => tracing::info!(%peer, "xDS TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
