//! Pooled HTTP/1.1 connections per upstream address (and TLS settings, and dial profile):
//! plain HTTP/1.1 to workloads without a sidecar and to the local app, and HTTP/1.1 over TLS
//! this proxy originates (SIMPLE).
//!
//! Why its own pool rather than hyper-util's legacy client: the cluster's `connectionPool`
//! asks for a per-connection request cap and lifetime, which that client has no notion of,
//! and for settings that differ per cluster; here they are part of the key and checked on
//! every checkout.
//!
//! - HTTP/1.1 carries one request at a time, so a connection is either in use or in its
//!   key's idle list. Checkout takes the most recently used idle connection (its socket is
//!   the most likely to be warm and alive), skipping and closing those that are closed,
//!   past their lifetime or idle for too long; else it dials (bounded by the connect
//!   timeout).
//! - After the response head, a small task waits until the connection is ready again (the
//!   response body has been read to the end) and puts it back, unless it has served
//!   `max_requests_per_connection` or outlived `max_connection_duration`: then dropping our
//!   handle lets hyper close it. A body dropped unread closes the connection (hyper cannot
//!   reuse it), so it never comes back half-read.
//! - A reused connection the server closed just before our request (the keep-alive race)
//!   gives the request back unsent: it is retried once on a fresh connection.
//! - One task per connection drives it and closes it when it sits idle past the idle timeout
//!   or its lifetime, so idle connections do not linger until the next checkout.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::dial::{self, PoolError, TlsConfigFn};
use super::h2pool::{PeerMap, PoolKey};
use super::tls::{TlsFailure, TlsReason};
use crate::body::Body;

/// `idle_since` while the connection is in use.
const IN_USE: u64 = u64::MAX;

/// One connection's accounting (the sender itself moves between the idle list and the
/// request using it).
#[derive(Debug)]
struct Conn {
    /// Strong: a key's entry lives as long as one of its connections does (the cycle through
    /// the idle list ends when the connection leaves it, on close or timeout).
    slot: Arc<Slot>,
    born: Instant,
    max_duration: Option<Duration>,
    idle_timeout: Duration,
    max_requests: Option<u32>,
    served: AtomicU32,
    /// Nanoseconds since `born` when it last went idle; [`IN_USE`] while in use.
    idle_since: AtomicU64,
    /// No new request: it closes once its current one is done.
    retired: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    conn: Arc<Conn>,
}

/// One key's idle connections, most recently used last.
#[derive(Debug, Default)]
struct Slot {
    idle: Mutex<Vec<Idle>>,
}

pub struct H1Pool {
    /// Copy-on-write: written only when a key is added or pruned (on a dial), read lock-free.
    peers: ArcSwap<PeerMap<Slot>>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("keys", &self.peers.load().len())
            .finish()
    }
}

impl Default for H1Pool {
    fn default() -> Self {
        Self {
            peers: ArcSwap::from_pointee(PeerMap::default()),
        }
    }
}

impl H1Pool {
    /// Sends `req` on a pooled connection for `key`, dialing one if none is idle; a dial
    /// wraps TCP in TLS with the settings from `tls` (required when `key.tls` is set).
    /// `req`'s URI may be absolute: it goes out in origin form, the authority in `Host`
    /// (which the caller sets).
    pub async fn send(
        &self,
        key: &PoolKey,
        mut req: Request<Body>,
        tls: Option<TlsConfigFn<'_>>,
    ) -> Result<Response<Incoming>, PoolError> {
        let addr = key.addr;
        if key.tls.is_some() != tls.is_some() {
            return Err(PoolError::Tls {
                addr,
                failure: TlsFailure::new(
                    TlsReason::HandshakeFailed,
                    format!(
                        "pool key for {addr} (TLS {:?}) and TLS config disagree",
                        key.tls
                    ),
                ),
            });
        }
        to_origin_form(&mut req);
        let slot = self.slot(key);
        let (mut sender, mut conn, mut reused) = match slot.take(Instant::now()) {
            Some(i) => (i.sender, i.conn, true),
            None => {
                let (s, c) = self.dial(key, &slot, tls).await?;
                (s, c, false)
            }
        };
        loop {
            conn.count_request();
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    recycle(sender, conn);
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection was closed under us (the server's
                    // keep-alive timeout raced our request). Once more, on a fresh one.
                    Some(unsent) if reused => {
                        conn.retire();
                        req = unsent;
                        (sender, conn) = self.dial(key, &slot, tls).await?;
                        reused = false;
                    }
                    _ => {
                        conn.retire();
                        return Err(PoolError::Request {
                            addr,
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
    }

    /// Number of idle pooled connections across all keys, for tests.
    pub fn idle_connections(&self) -> usize {
        self.peers.load().values().map(|s| s.lock().len()).sum()
    }

    fn slot(&self, key: &PoolKey) -> Arc<Slot> {
        super::h2pool::slot_for(&self.peers, key)
    }

    /// Drops the entries of keys without a connection (nobody else holds the slot: every
    /// connection holds its key's). A request that looked the entry up just before may
    /// dial into a dropped entry: its connection then serves the requests that hold it,
    /// which costs extra dials and is never wrong.
    fn prune(&self) {
        let dead = |s: &Arc<Slot>| Arc::strong_count(s) == 1 && s.lock().is_empty();
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
    ) -> Result<(SendRequest<Body>, Arc<Conn>), PoolError> {
        let addr = key.addr;
        let profile = key.profile;
        let (sender, connection) = dial::bounded(addr, profile.connect_timeout, async {
            let io = dial::connect(addr, tls, &profile).await?;
            http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| PoolError::Connect {
                    addr,
                    reason: format!("HTTP/1.1 handshake failed: {e}"),
                })
        })
        .await?;
        self.prune();
        let conn = Arc::new(Conn {
            slot: slot.clone(),
            born: Instant::now(),
            max_duration: profile.max_connection_duration,
            idle_timeout: profile.idle_timeout,
            max_requests: profile.max_requests_per_connection,
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(IN_USE),
            retired: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            // Upgrades (101) keep working as with hyper's own client.
            let mut connection = std::pin::pin!(connection.with_upgrades());
            tokio::select! {
                r = &mut connection => {
                    if let Err(e) = r {
                        tracing::debug!(%addr, error = %e, "pooled HTTP/1.1 connection ended");
                    }
                }
                // Closed or retired on a deadline: let hyper finish the request in flight.
                () = watch(weak.clone()) => {
                    let _ = connection.await;
                }
            }
            if let Some(c) = weak.upgrade() {
                c.retire();
            }
        });
        Ok((sender, conn))
    }
}

/// Puts the connection back once the response body has been read, unless it is done.
fn recycle(mut sender: SendRequest<Body>, conn: Arc<Conn>) {
    if conn.retired.load(Ordering::Acquire) {
        // Dropping the handle now would be fine for hyper, but a handle held until the body
        // is read makes the close a clean one after the response.
        tokio::spawn(async move {
            let _ = sender.ready().await;
        });
        return;
    }
    tokio::spawn(async move {
        // Ready again once the response body has been read to the end; an error means the
        // connection is gone (body dropped early, server closed).
        if sender.ready().await.is_err() {
            conn.retire();
            return;
        }
        let now = Instant::now();
        if conn.retired.load(Ordering::Acquire) || conn.lifetime_over(now) {
            conn.retire();
            return;
        }
        conn.idle_since
            .store(nanos_since(conn.born, now), Ordering::Release);
        let slot = conn.slot.clone();
        slot.lock().push(Idle {
            sender,
            conn: conn.clone(),
        });
        // Retired meanwhile (its lifetime ran out): its retirement may have looked for it
        // before it was back in the list.
        if conn.retired.load(Ordering::Acquire) {
            slot.remove(&conn);
        }
    });
}

/// Closes the connection when it sits idle past the idle timeout or outlives its lifetime
/// (in use: it is retired and closes after its request). Ends when that is done or the
/// connection is gone.
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

fn nanos_since(born: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(born).as_nanos()).unwrap_or(IN_USE - 1)
}

/// The request target as an origin server expects it (`/path?query`); an HTTP/1.1 server
/// must accept the absolute form, but not every application does.
fn to_origin_form(req: &mut Request<Body>) {
    if req.uri().authority().is_none() {
        return;
    }
    // Moves the path out of the URI (no copy of the string).
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

// === impl Slot ===

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // The list stays consistent whatever panicked while holding it: keep using it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that can take a request; the ones that cannot
    /// are dropped (closed) on the way, outside the lock.
    fn take(&self, now: Instant) -> Option<Idle> {
        loop {
            let candidate = self.lock().pop()?;
            if candidate.usable(now) {
                candidate.conn.idle_since.store(IN_USE, Ordering::Release);
                return Some(candidate);
            }
            candidate.conn.retired.store(true, Ordering::Release);
        }
    }

    /// Takes `conn` out of the idle list if it is there (dropping its handle closes it).
    fn remove(&self, conn: &Arc<Conn>) {
        let removed = {
            let mut idle = self.lock();
            idle.iter()
                .position(|i| Arc::ptr_eq(&i.conn, conn))
                .map(|at| idle.remove(at))
        };
        drop(removed);
    }
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        let c = &self.conn;
        !c.retired.load(Ordering::Acquire)
            && !self.sender.is_closed()
            && self.sender.is_ready()
            && !c.lifetime_over(now)
            && c.idle_deadline().is_none_or(|d| now < d)
    }
}

// === impl Conn ===

impl Conn {
    /// Counts a request; the `max_requests_per_connection`-th retires the connection (it
    /// closes after this request).
    fn count_request(&self) {
        let n = self.served.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if self.max_requests.is_some_and(|max| n >= max) {
            self.retired.store(true, Ordering::Release);
        }
    }

    fn lifetime_over(&self, now: Instant) -> bool {
        self.max_duration.is_some_and(|d| now >= self.born + d)
    }

    /// When the idle connection's idle timeout expires; `None` while in use.
    fn idle_deadline(&self) -> Option<Instant> {
        let since = self.idle_since.load(Ordering::Acquire);
        (since != IN_USE).then(|| self.born + Duration::from_nanos(since) + self.idle_timeout)
    }

    /// When to check again; `None`: retire now.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let life = self.max_duration.map(|d| self.born + d);
        if life.is_some_and(|l| now >= l) {
            return None;
        }
        // In use: look again one idle timeout from now (a response may take long).
        let idle = self.idle_deadline().unwrap_or(now + self.idle_timeout);
        if now >= idle {
            return None;
        }
        Some(life.map_or(idle, |l| l.min(idle)))
    }

    /// No new request on this connection; if it sits idle, close it now.
    fn retire(self: &Arc<Self>) {
        self.retired.store(true, Ordering::Release);
        self.slot.remove(self);
    }
}
