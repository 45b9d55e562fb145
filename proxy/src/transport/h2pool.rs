//! Multiplexed HTTP/2 connections per peer address (and TLS settings, and dial profile),
//! shared by every request to that peer.
//!
//! Why it looks like this:
//! - The steady state (a connection with room exists) takes no lock: the peer map and each
//!   peer's connection list live behind `ArcSwap`, and a request reserves its stream and
//!   counts itself with atomics, so concurrent requests never queue behind each other.
//! - Dialing is single-flight per key (a per-key async lock taken only on the slow path), so
//!   a burst of first requests opens one connection, not one each. When a fresh connection
//!   could serve only one request anyway (`max_requests_per_connection` or
//!   `max_concurrent_streams` of 1) each request dials its own, in parallel.
//! - A dead peer must not hang requests: the whole dial (TCP, TLS and the HTTP/2 handshake) is
//!   bounded by the profile's connect timeout, and HTTP/2 PINGs run even while the connection
//!   is idle, so a peer that vanished without a FIN/RST (a node lost, a blackholed route) is
//!   noticed and the connection is closed; the next request then dials a fresh one.
//! - With TLS the pool key holds what the server was verified against (mesh identities, or
//!   SIMPLE origination settings): two clusters that verify differently never share a
//!   connection, since one's verification says nothing about the other's. The key also holds
//!   the [`DialProfile`], so the lifetime and request caps of one cluster are never broken by
//!   another's traffic.
//! - A connection is *retired* (taken out of the pool: no new request) when it reaches
//!   `max_requests_per_connection`, its `max_connection_duration`, or has had no active
//!   request for the idle timeout. Requests in flight on it finish: each holds the connection
//!   (a [`Lease`]) until its response body ends, and hyper closes the connection once the
//!   last handle is gone. One task per connection drives it and retires it on those deadlines.
//! - `max_concurrent_streams` is enforced here, on our side: a request that finds every
//!   connection of its key at the cap opens another connection rather than queue.
//! - Peers come and go with config: entries without a connection are dropped whenever a new
//!   connection is dialed, so the map is bounded by the live connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::dial::{self, PoolError, TlsConfigFn};
use super::profile::DialProfile;
use super::tls::{ExpectedIdentities, TlsFailure, TlsReason};
use crate::body::{self, Body};
use crate::model::SimpleTls;

/// What a pooled connection's server was verified against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerTls {
    /// The mesh hop: a peer proxy presenting one of these SPIFFE IDs.
    Mesh(ExpectedIdentities),
    /// TLS origination (SIMPLE) under these settings.
    Origin(Arc<SimpleTls>),
}

/// A pool's connections by key. Looked up on every request: foldhash instead of SipHash
/// (callgrind: hashing a key with SipHash was 2 % of a proxied request). The keys come from
/// config, never from a peer, so SipHash's flooding resistance buys nothing here.
pub(super) type PeerMap<S> =
    std::collections::HashMap<PoolKey, Arc<S>, foldhash::fast::RandomState>;

/// What a pooled connection is for: the peer address, what TLS verified (if any), and how
/// the connection is dialed and kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub tls: Option<PeerTls>,
    pub profile: DialProfile,
}

impl PoolKey {
    pub fn plain(addr: SocketAddr, profile: &DialProfile) -> Self {
        Self {
            addr,
            tls: None,
            profile: *profile,
        }
    }
}

/// How the pool watches its connections (the same for every key).
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// How often an HTTP/2 PING checks the connection, idle or not.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is declared dead.
    pub keep_alive_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// One pooled connection and its accounting.
struct Conn {
    sender: SendRequest<Body>,
    /// The slot to leave when retired.
    slot: Weak<Slot>,
    profile: DialProfile,
    born: Instant,
    /// Requests started on it (for `max_requests_per_connection`).
    served: AtomicU32,
    /// Streams in flight (for `max_concurrent_streams` and the idle timeout).
    active: AtomicU32,
    /// When `active` last dropped to 0, in nanoseconds since `born`.
    idle_since: AtomicU64,
    retired: AtomicBool,
}

/// One key: its usable connections (oldest first), and the lock that makes dialing
/// single-flight.
#[derive(Default)]
struct Slot {
    conns: ArcSwap<Vec<Arc<Conn>>>,
    dialing: tokio::sync::Mutex<()>,
}

/// A request's stream on a pooled connection: counted against the connection's stream cap
/// and keeping it open until dropped (at the end of the response body, or of the tunnel).
pub(super) struct Lease {
    conn: Arc<Conn>,
}

pub struct H2Pool {
    /// Copy-on-write: written only when a key is added or pruned (on a dial), read lock-free.
    peers: ArcSwap<PeerMap<Slot>>,
    config: PoolConfig,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("keys", &self.peers.load().len())
            .field("config", &self.config)
            .finish()
    }
}

// === impl H2Pool ===

impl H2Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            peers: ArcSwap::from_pointee(PeerMap::default()),
            config,
        }
    }

    /// Sends `req` (h2c) on a pooled connection to `addr`, dialing one if needed.
    pub async fn send(
        &self,
        addr: SocketAddr,
        profile: &DialProfile,
        req: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        self.send_keyed(&PoolKey::plain(addr, profile), req, None)
            .await
    }

    /// Sends `req` on a pooled connection for `key`; a dial wraps TCP in TLS with the
    /// settings from `tls` (required when `key.tls` is set). The response body holds the
    /// request's stream on the connection until it ends.
    pub async fn send_keyed(
        &self,
        key: &PoolKey,
        req: Request<Body>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<Response<Body>, PoolError> {
        let (rsp, lease) = self.send_leased(key, req, tls).await?;
        Ok(with_lease(rsp, lease))
    }

    /// Like [`send_keyed`](Self::send_keyed), the stream's lease handed to the caller (a
    /// CONNECT tunnel holds it for as long as the tunnel lives).
    pub(super) async fn send_leased(
        &self,
        key: &PoolKey,
        req: Request<Body>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        let addr = key.addr;
        let mut lease = self.lease(key, tls).await?;
        let mut sender = lease.conn.sender.clone();
        if sender.ready().await.is_err() {
            // The connection died between checkout and use (GOAWAY, reset): nothing of this
            // request was sent yet, so dialing again is safe.
            lease.conn.retire();
            drop(lease);
            lease = self.lease(key, tls).await?;
            sender = lease.conn.sender.clone();
            sender
                .ready()
                .await
                .map_err(|source| PoolError::Request { addr, source })?;
        }
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|source| PoolError::Request { addr, source })?;
        Ok((rsp, lease))
    }

    /// Number of usable connections across all keys, for tests and debugging.
    pub fn live_connections(&self) -> usize {
        self.peers
            .load()
            .values()
            .map(|s| {
                s.conns
                    .load()
                    .iter()
                    .filter(|c| !c.sender.is_closed() && !c.retired.load(Ordering::Acquire))
                    .count()
            })
            .sum()
    }

    /// Number of keys the pool keeps an entry for (with a connection or not), for tests.
    pub fn tracked_peers(&self) -> usize {
        self.peers.load().len()
    }

    /// A stream on a usable connection for `key`, dialing one if every connection is gone,
    /// retired, or at its stream cap.
    async fn lease(&self, key: &PoolKey, tls: Option<TlsConfigFn<'_>>) -> Result<Lease, PoolError> {
        let slot = self.slot(key);
        if let Some(l) = slot.try_lease() {
            return Ok(l);
        }
        let _dialing = if key.profile.shares_connections() {
            let guard = slot.dialing.lock().await;
            // Another request may have dialed while this one waited for the lock.
            if let Some(l) = slot.try_lease() {
                return Ok(l);
            }
            Some(guard)
        } else {
            None
        };
        // A connection is pooled under what was verified: a key that promises verified TLS
        // is dialed with TLS, a plain key without. A caller that mixes them fails closed
        // rather than pool a plaintext connection where a verified one is expected.
        if key.tls.is_some() != tls.is_some() {
            return Err(PoolError::Tls {
                addr: key.addr,
                failure: TlsFailure::new(
                    TlsReason::HandshakeFailed,
                    format!(
                        "pool key for {} (TLS {:?}) and TLS config disagree",
                        key.addr, key.tls
                    ),
                ),
            });
        }
        let conn = self.dial(key, &slot, tls).await?;
        // This request's stream first, before others can see (and fill) the connection.
        let lease = conn.try_lease().ok_or_else(|| PoolError::Connect {
            addr: key.addr,
            reason: "the connection closed right after the HTTP/2 handshake".into(),
        })?;
        // Retired already (its one request): never offered to anyone else.
        if !conn.retired.load(Ordering::Acquire) {
            slot.insert(&conn);
        }
        self.prune();
        Ok(lease)
    }

    fn slot(&self, key: &PoolKey) -> Arc<Slot> {
        slot_for(&self.peers, key)
    }

    /// Drops the entries of keys without a connection that no request holds (so nobody is
    /// dialing for them). A request that looked an entry up just before may dial into a
    /// dropped entry: its connection then serves only the requests that hold that entry,
    /// which costs extra dials and is never wrong.
    fn prune(&self) {
        let dead = |s: &Arc<Slot>| {
            Arc::strong_count(s) == 1 && s.dialing.try_lock().is_ok() && s.conns.load().is_empty()
        };
        if !self.peers.load().values().any(dead) {
            return;
        }
        self.peers.rcu(|peers| {
            peers
                .iter()
                .filter(|(_, s)| !dead(s))
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect::<PeerMap<_>>()
        });
    }

    /// A new connection for `key` (bounded by its connect timeout), with its driver task.
    async fn dial(
        &self,
        key: &PoolKey,
        slot: &Arc<Slot>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<Arc<Conn>, PoolError> {
        let addr = key.addr;
        let profile = key.profile;
        let (sender, connection) = dial::bounded(addr, profile.connect_timeout, async {
            let io = dial::connect(addr, tls, &profile).await?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(self.config.keep_alive_interval)
                .keep_alive_timeout(self.config.keep_alive_timeout)
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| PoolError::Connect {
                    addr,
                    reason: format!("HTTP/2 handshake failed: {e}"),
                })
        })
        .await?;
        let conn = Arc::new(Conn {
            sender,
            slot: Arc::downgrade(slot),
            profile,
            born: Instant::now(),
            served: AtomicU32::new(0),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                r = &mut connection => {
                    if let Err(e) = r {
                        tracing::debug!(%addr, error = %e, "pooled HTTP/2 connection ended");
                    }
                }
                // Retired on a deadline: keep driving it while its last streams finish
                // (hyper ends it once every handle is gone).
                () = watch(weak.clone()) => {
                    let _ = connection.await;
                }
            }
            // Ended on its own (GOAWAY, reset, dead peer): stop offering it.
            if let Some(c) = weak.upgrade() {
                c.retire();
            }
        });
        Ok(conn)
    }
}

/// Retires the connection on its deadlines: `max_connection_duration` after it was made,
/// and the idle timeout after its last stream ended. Ends when the connection is retired or
/// gone.
async fn watch(conn: Weak<Conn>) {
    loop {
        let deadline = {
            let Some(c) = conn.upgrade() else {
                return;
            };
            if c.retired.load(Ordering::Acquire) {
                return;
            }
            match c.next_deadline(Instant::now()) {
                Some(d) => d,
                None => {
                    c.retire();
                    return;
                }
            }
        };
        tokio::time::sleep_until(deadline).await;
    }
}

// === impl Slot ===

impl Slot {
    /// A stream on the first connection with room, lock-free.
    fn try_lease(&self) -> Option<Lease> {
        self.conns.load().iter().find_map(Conn::try_lease)
    }

    /// Adds a fresh connection. If it was retired meanwhile (a very short lifetime), its
    /// retirement may have looked for it before it was here: take it out again.
    fn insert(&self, conn: &Arc<Conn>) {
        self.conns.rcu(|v| {
            let mut v = Vec::clone(v);
            v.push(conn.clone());
            v
        });
        if conn.retired.load(Ordering::Acquire) {
            self.remove(conn);
        }
    }

    fn remove(&self, conn: &Arc<Conn>) {
        if !self.conns.load().iter().any(|c| Arc::ptr_eq(c, conn)) {
            return;
        }
        self.conns.rcu(|v| {
            v.iter()
                .filter(|c| !Arc::ptr_eq(c, conn))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

// === impl Conn ===

impl Conn {
    /// A stream on this connection, if it is usable and has room. Taking the
    /// `max_requests_per_connection`-th request retires it.
    fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        if self.retired.load(Ordering::Acquire) {
            return None;
        }
        if self.sender.is_closed() || self.lifetime_over(Instant::now()) {
            self.retire();
            return None;
        }
        let cap = self.profile.max_concurrent_streams.max(1);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < cap).then_some(a + 1)
            })
            .ok()?;
        // From here on, dropping the lease gives the stream back.
        let lease = Lease { conn: self.clone() };
        let n = self.served.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if let Some(max) = self.profile.max_requests_per_connection {
            if n > max {
                // Concurrent requests raced past the cap: this one goes elsewhere.
                self.retire();
                return None;
            }
            if n == max {
                // This request is the last one: no new request after it.
                self.retire();
            }
        }
        Some(lease)
    }

    fn lifetime_over(&self, now: Instant) -> bool {
        self.profile
            .max_connection_duration
            .is_some_and(|d| now >= self.born + d)
    }

    /// When to check again; `None`: retire now (lifetime over, or idle for the idle timeout).
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let life = self.profile.max_connection_duration.map(|d| self.born + d);
        if life.is_some_and(|l| now >= l) {
            return None;
        }
        let idle = if self.active.load(Ordering::Acquire) == 0 {
            let since = self.born + Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
            let at = since + self.profile.idle_timeout;
            if now >= at {
                return None;
            }
            at
        } else {
            // Busy: look again one idle timeout from now (streams may be long).
            now + self.profile.idle_timeout
        };
        Some(life.map_or(idle, |l| l.min(idle)))
    }

    /// Takes the connection out of the pool (no new request). Its pool entry was the last
    /// handle besides the leases in flight, so it closes when they end.
    fn retire(self: &Arc<Self>) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(slot) = self.slot.upgrade() {
            slot.remove(self);
        }
    }
}

// === impl Lease ===

impl Drop for Lease {
    fn drop(&mut self) {
        let c = &self.conn;
        if c.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = Instant::now().saturating_duration_since(c.born);
            c.idle_since.store(
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
        }
    }
}

/// `rsp` with a body that holds `lease` until it ends.
pub(super) fn with_lease(rsp: Response<Incoming>, lease: Lease) -> Response<Body> {
    rsp.map(|b| {
        body::boxed(LeasedBody {
            inner: b,
            lease: Some(lease),
        })
    })
}

/// A response body that gives its stream back to the pool when it ends (last frame read,
/// error) or is dropped.
struct LeasedBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.lease = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The entry of `key` in a pool's map, added (copy-on-write) when missing: lookups stay
/// lock-free, and a key is added once per peer and settings, not per request.
pub(super) fn slot_for<S: Default>(peers: &ArcSwap<PeerMap<S>>, key: &PoolKey) -> Arc<S> {
    if let Some(s) = peers.load().get(key) {
        return s.clone();
    }
    let mut out = None;
    peers.rcu(|map| {
        let mut map = PeerMap::clone(map);
        out = Some(map.entry(key.clone()).or_default().clone());
        map
    });
    out.unwrap_or_default()
}
