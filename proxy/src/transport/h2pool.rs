//! One multiplexed HTTP/2 connection per peer address, shared by every request to that peer.
//!
//! Connecting is single-flight per peer (a per-peer async lock held while dialing), so a burst
//! of first requests opens one connection, not one each. A closed connection is replaced on the
//! next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::Body;

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

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
}

#[derive(Debug, Default)]
pub struct H2Pool {
    peers: Mutex<HashMap<SocketAddr, Slot>>,
    connect_timeout: Duration,
}

impl H2Pool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            peers: Mutex::default(),
            connect_timeout,
        }
    }

    /// Sends `req` on the pooled connection to `addr`, dialing one if needed.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PoolError> {
        let mut sender = self.sender(addr, false).await?;
        if sender.ready().await.is_err() {
            // The connection died between checkout and use (GOAWAY, reset): nothing of this
            // request was sent yet, so dialing again is safe.
            sender = self.sender(addr, true).await?;
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
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .values()
            .filter(|s| {
                s.try_lock()
                    .map(|g| g.as_ref().is_some_and(|s| !s.is_closed()))
                    .unwrap_or(true)
            })
            .count()
    }

    async fn sender(&self, addr: SocketAddr, fresh: bool) -> Result<SendRequest<Body>, PoolError> {
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            peers.entry(addr).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref()
            && !fresh
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = self.dial(addr).await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<SendRequest<Body>, PoolError> {
        let err = |reason: String| PoolError::Connect { addr, reason };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| err(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tcp))
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
