//! One multiplexed HTTP/2 connection per peer address, shared by every request to that peer.
//!
//! Why it looks like this:
//! - The steady state (a live connection exists) takes no lock: the peer map and each peer's
//!   current sender live behind `ArcSwap`, so concurrent requests to one peer never queue
//!   behind each other just to clone a `SendRequest`.
//! - Dialing is single-flight per peer (a per-peer async lock taken only on the slow path), so
//!   a burst of first requests opens one connection, not one each.
//! - A dead peer must not hang requests: the whole dial (TCP and HTTP/2 handshake) is bounded,
//!   and HTTP/2 PINGs run even while the connection is idle, so a peer that vanished without a
//!   FIN/RST (a node lost, a blackholed route) is noticed and the connection is closed; the
//!   next request then dials a fresh one.
//! - With mTLS the pool key is the peer address *and* the identities its certificate was
//!   checked against: two clusters that expect different identities of the same peer address
//!   never share a connection, since one's verification says nothing about the other's.
//! - Peers come and go with config: entries whose connection has closed are dropped whenever a
//!   new connection is dialed, so the map is bounded by the live connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::tls::{ExpectedIdentities, TlsFailure};
use crate::body::Body;

/// Why the pool could not get a request through.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
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

/// What a pooled connection is for: the peer address, and for TLS, what was verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: Option<ExpectedIdentities>,
}

impl PoolKey {
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }
}

/// Builds the TLS client config when (and only when) a dial is needed, so the steady state
/// does not pay for it.
pub type TlsConfigFn<'a> = &'a (dyn Fn() -> Result<Arc<rustls::ClientConfig>, TlsFailure> + Sync);

/// How the pool dials and watches its connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Bound on TCP connect plus the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// How often an HTTP/2 PING checks the connection, idle or not.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is declared dead.
    pub keep_alive_timeout: Duration,
}

impl PoolConfig {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// A pooled connection; `Arc` identity tells one dial's connection from the next.
type Conn = Arc<SendRequest<Body>>;

/// One peer: the connection in use, and the lock that makes dialing single-flight.
#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<SendRequest<Body>>,
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub struct H2Pool {
    /// Copy-on-write: written only when a peer is added or pruned (on a dial), read lock-free.
    peers: ArcSwap<HashMap<PoolKey, Arc<Slot>>>,
    config: PoolConfig,
}

// === impl H2Pool ===

impl H2Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            peers: ArcSwap::from_pointee(HashMap::new()),
            config,
        }
    }

    /// Sends `req` on the pooled connection to `addr`, dialing one if needed.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PoolError> {
        self.send_keyed(&PoolKey::plain(addr), req, None).await
    }

    /// Sends `req` on the pooled connection for `key`; a dial wraps TCP in TLS with the
    /// config from `tls` (required when `key.tls` is set).
    pub async fn send_keyed(
        &self,
        key: &PoolKey,
        req: Request<Body>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<Response<Incoming>, PoolError> {
        let addr = key.addr;
        let conn = self.checkout(key, None, tls).await?;
        let mut sender = SendRequest::clone(&conn);
        if sender.ready().await.is_err() {
            // The connection died between checkout and use (GOAWAY, reset): nothing of this
            // request was sent yet, so dialing again is safe.
            let conn = self.checkout(key, Some(&conn), tls).await?;
            sender = SendRequest::clone(&conn);
            sender
                .ready()
                .await
                .map_err(|source| PoolError::Request { addr, source })?;
        }
        sender
            .send_request(req)
            .await
            .map_err(|source| PoolError::Request { addr, source })
    }

    /// Number of peers with a live connection, for tests and debugging.
    pub fn live_connections(&self) -> usize {
        self.peers
            .load()
            .values()
            .filter(|s| s.current.load().as_ref().is_some_and(|s| !s.is_closed()))
            .count()
    }

    /// Number of peers the pool keeps an entry for (live or not), for tests.
    pub fn tracked_peers(&self) -> usize {
        self.peers.load().len()
    }

    /// A usable connection to `addr`. `broken` is one the caller found dead: it is replaced
    /// even if it does not report itself closed yet.
    async fn checkout(
        &self,
        key: &PoolKey,
        broken: Option<&Conn>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<Conn, PoolError> {
        let slot = self.slot(key);
        let usable = || {
            slot.current
                .load_full()
                .filter(|c| !c.is_closed() && broken.is_none_or(|b| !Arc::ptr_eq(b, c)))
        };
        if let Some(c) = usable() {
            return Ok(c);
        }
        let _dialing = slot.dialing.lock().await;
        // Another request may have dialed while this one waited for the lock.
        if let Some(c) = usable() {
            return Ok(c);
        }
        // A connection is pooled under what was verified: a key that promises an identity
        // set is dialed with TLS, a plain key without. A caller that mixes them fails closed
        // rather than pool a plaintext connection where a verified one is expected.
        if key.tls.is_some() != tls.is_some() {
            return Err(PoolError::Tls {
                addr: key.addr,
                failure: TlsFailure::new(
                    super::tls::TlsReason::HandshakeFailed,
                    format!(
                        "pool key for {} (identities {:?}) and TLS config disagree",
                        key.addr, key.tls
                    ),
                ),
            });
        }
        let c = Arc::new(self.dial(key.addr, tls).await?);
        slot.current.store(Some(c.clone()));
        self.prune();
        Ok(c)
    }

    fn slot(&self, key: &PoolKey) -> Arc<Slot> {
        if let Some(s) = self.peers.load().get(key) {
            return s.clone();
        }
        let mut out = None;
        self.peers.rcu(|peers| {
            let mut peers = HashMap::clone(peers);
            out = Some(peers.entry(key.clone()).or_default().clone());
            peers
        });
        out.unwrap_or_default()
    }

    /// Drops the entries of peers whose connection has closed and that nobody is dialing. A
    /// request racing with this may dial into a dropped entry: its connection then serves that
    /// request only, which costs one extra dial and is never wrong.
    fn prune(&self) {
        let dead = |s: &Arc<Slot>| {
            s.dialing.try_lock().is_ok() && s.current.load().as_ref().is_none_or(|c| c.is_closed())
        };
        if !self.peers.load().values().any(dead) {
            return;
        }
        self.peers.rcu(|peers| {
            peers
                .iter()
                .filter(|(_, s)| !dead(s))
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect::<HashMap<_, _>>()
        });
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<SendRequest<Body>, PoolError> {
        let timeout = self.config.connect_timeout;
        tokio::time::timeout(timeout, self.dial_unbounded(addr, tls))
            .await
            .map_err(|_| PoolError::Connect {
                addr,
                reason: format!("timed out after {timeout:?}"),
            })?
    }

    async fn dial_unbounded(
        &self,
        addr: SocketAddr,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<SendRequest<Body>, PoolError> {
        let err = |reason: String| PoolError::Connect { addr, reason };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => self.handshake(addr, tcp).await,
            Some(config) => {
                let config = config().map_err(|failure| PoolError::Tls { addr, failure })?;
                // Mesh certificates name no DNS host: an IP server name sends no SNI, and the
                // verifier checks SPIFFE IDs instead.
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| PoolError::Tls {
                        addr,
                        failure: TlsFailure::from_io(&e),
                    })?;
                self.handshake(addr, stream).await
            }
        }
    }

    async fn handshake<IO>(&self, addr: SocketAddr, io: IO) -> Result<SendRequest<Body>, PoolError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let err = |reason: String| PoolError::Connect { addr, reason };
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.config.keep_alive_interval)
            .keep_alive_timeout(self.config.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| err(format!("HTTP/2 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "pooled HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }
}
