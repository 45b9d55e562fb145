//! Opening one upstream connection: TCP (no delay, keep-alive from the [`DialProfile`]), then
//! TLS when the pool key asks for it, all of it bounded by the profile's connect timeout.
//!
//! Both pools (`h1pool`, `h2pool`) and the tunnels dial through here, so every upstream
//! socket gets the same options and a timeout is reported the same way:
//! [`PoolError::ConnectTimeout`], which the connector turns into `upstream-connect-timeout`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::profile::{DialProfile, Keepalive};
use super::tls::TlsFailure;

/// Why a pool (or a tunnel dial) could not get a request through.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The dial (TCP, TLS and, for HTTP/2, its handshake) did not finish within the
    /// profile's connect timeout.
    #[error("cannot connect to {addr}: timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("TLS to {addr} failed: {failure}")]
    Tls {
        addr: SocketAddr,
        failure: TlsFailure,
    },
}

/// What a TLS dial needs: the client config and the server name (SNI, or an IP for the mesh
/// hop, whose certificates name no DNS host).
pub type TlsDial = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// Builds the TLS settings when (and only when) a dial is needed, so the steady state does
/// not pay for them.
pub type TlsConfigFn<'a> = &'a (dyn Fn() -> Result<TlsDial, TlsFailure> + Sync);

/// A dialed upstream connection: plain TCP or TLS over it.
#[derive(Debug)]
pub(super) enum Stream {
    Plain(TcpStream),
    // Boxed: a rustls connection is large, and most connections are plain or mesh.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Runs `dial` under `timeout`; its expiry is [`PoolError::ConnectTimeout`].
pub(super) async fn bounded<T>(
    addr: SocketAddr,
    timeout: Duration,
    dial: impl Future<Output = Result<T, PoolError>>,
) -> Result<T, PoolError> {
    tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| PoolError::ConnectTimeout { addr, timeout })?
}

/// TCP to `addr` with the profile's socket options. Not bounded: callers bound the whole dial.
pub(super) async fn tcp(addr: SocketAddr, keepalive: &Keepalive) -> Result<TcpStream, PoolError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| PoolError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let _ = s.set_nodelay(true);
    // A failure here loses only dead-peer detection; the connection itself is fine.
    if let Err(e) = keepalive.apply(&s) {
        tracing::debug!(%addr, error = %e, "cannot set TCP keepalive");
    }
    Ok(s)
}

/// TCP, then TLS when `tls` is given. Not bounded: callers bound the whole dial (with the
/// HTTP/2 handshake, for the h2 pool).
pub(super) async fn connect(
    addr: SocketAddr,
    tls: Option<TlsConfigFn<'_>>,
    profile: &DialProfile,
) -> Result<Stream, PoolError> {
    // The TLS settings first: a proxy that cannot do TLS (no certificate yet) fails without
    // opening a socket for nothing.
    let tls = tls
        .map(|f| f())
        .transpose()
        .map_err(|failure| PoolError::Tls { addr, failure })?;
    let tcp = tcp(addr, &profile.keepalive).await?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some((config, name)) => tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| PoolError::Tls {
                addr,
                failure: TlsFailure::from_io(&e),
            }),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
