//! How one upstream connection is dialed and kept: the transport half of a cluster's
//! DestinationRule `connectionPool` ([`PoolLimits`]), resolved into a small `Copy` value that
//! every [`Connector`](super::Connector) call takes.
//!
//! Why a separate value rather than `PoolLimits` itself: the request path converts it per
//! request without allocating (a few field copies), and it is part of every pool key, so two
//! clusters whose transport settings differ never share a connection (one's lifetime or
//! request cap would otherwise be broken by the other's traffic). Clusters without a
//! `connectionPool` all get [`DialProfile::default`] and so still share connections.
//!
//! Semantics (the README documents them for users):
//! - `connect_timeout` bounds the whole dial: TCP connect, TLS handshake (mesh mTLS or SIMPLE
//!   origination) and, for HTTP/2, the HTTP/2 handshake. On expiry the request fails with
//!   `upstream-connect-timeout` / `x-weft-reason: connect_timeout(<d>)`.
//! - `keepalive`: TCP keep-alive on every upstream socket. Without `tcpKeepalive` in the
//!   DestinationRule Weft keeps its own default ([`DEFAULT_KEEPALIVE`]: probe after 30 s idle,
//!   every 10 s, drop after 3 unanswered), so a peer that vanished without a FIN is noticed in
//!   about a minute; a field left unset inside `tcpKeepalive` is the OS default. Linux counts
//!   in whole seconds: sub-second values are rounded up to 1 s.
//! - `max_connection_duration`: a pooled HTTP connection older than this takes no new
//!   request; requests in flight finish, then it closes. Opaque tunnels are not cut.
//! - `idle_timeout` (HTTP): a pooled connection without an active request for this long is
//!   closed.
//! - `tcp_idle_timeout`: an opaque tunnel (CONNECT) with no byte either way for this long is
//!   closed; `None` (the DestinationRule's zero): never.
//! - `max_requests_per_connection`: a pooled connection serves at most this many requests
//!   (1: a new connection per request), then closes once they are done.
//! - `max_concurrent_streams`: at most this many requests at once on one HTTP/2 connection;
//!   a request that finds every connection at the cap opens another connection (as Envoy),
//!   it does not queue. Above the server's own SETTINGS_MAX_CONCURRENT_STREAMS, h2 queues.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::resilience::PoolLimits;
use crate::resilience::config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS,
};

/// TCP keep-alive on an upstream socket. `None` fields are left at the OS default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// Idle time before the first probe (Linux default: 2 h).
    pub time: Option<Duration>,
    /// Time between probes (Linux default: 75 s).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (Linux default: 9).
    pub probes: Option<u32>,
}

/// Weft's keep-alive when the DestinationRule sets no `tcpKeepalive`. Istio leaves it to the
/// OS (2 h before the first probe on Linux); Weft has always probed: an opaque tunnel or an
/// idle pooled HTTP/1.1 connection to a host that vanished without a FIN would otherwise hold
/// its task and socket for hours.
pub const DEFAULT_KEEPALIVE: Keepalive = Keepalive {
    time: Some(Duration::from_secs(30)),
    interval: Some(Duration::from_secs(10)),
    probes: Some(3),
};

impl Keepalive {
    /// Enables keep-alive on `s` with these settings.
    pub(super) fn apply(&self, s: &TcpStream) -> std::io::Result<()> {
        // The kernel counts seconds, and 0 is refused: round sub-second values up.
        let secs = |d: Duration| d.max(Duration::from_secs(1));
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = self.time {
            ka = ka.with_time(secs(t));
        }
        if let Some(i) = self.interval {
            ka = ka.with_interval(secs(i));
        }
        if let Some(p) = self.probes {
            ka = ka.with_retries(p);
        }
        socket2::SockRef::from(s).set_tcp_keepalive(&ka)
    }
}

/// The transport settings of one upstream connection (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialProfile {
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
    /// `None`: connections live until idle, closed, or out of requests.
    pub max_connection_duration: Option<Duration>,
    /// HTTP: close a pooled connection without an active request for this long.
    pub idle_timeout: Duration,
    /// Opaque tunnels: close after this long without a byte either way; `None`: never.
    pub tcp_idle_timeout: Option<Duration>,
    /// `None`: unlimited. Never `Some(0)`.
    pub max_requests_per_connection: Option<u32>,
    /// Per HTTP/2 connection; at least 1.
    pub max_concurrent_streams: u32,
}

impl Default for DialProfile {
    /// A cluster without `connectionPool` (and the inbound side's connections to the local
    /// app): the defaults of [`PoolLimits::default`] plus [`DEFAULT_KEEPALIVE`].
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive: DEFAULT_KEEPALIVE,
            max_connection_duration: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tcp_idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_requests_per_connection: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl DialProfile {
    /// The transport settings of a cluster's resolved `connectionPool`. No allocation: called
    /// once per request.
    pub fn from_pool(p: &PoolLimits) -> Self {
        Self {
            connect_timeout: p.connect_timeout,
            keepalive: p.tcp_keepalive.map_or(DEFAULT_KEEPALIVE, |k| Keepalive {
                time: k.time,
                interval: k.interval,
                probes: k.probes,
            }),
            max_connection_duration: p.max_connection_duration.filter(|d| !d.is_zero()),
            idle_timeout: if p.http_idle_timeout.is_zero() {
                DEFAULT_IDLE_TIMEOUT
            } else {
                p.http_idle_timeout
            },
            tcp_idle_timeout: p.tcp_idle_timeout.filter(|d| !d.is_zero()),
            max_requests_per_connection: p.max_requests_per_connection.filter(|n| *n > 0),
            max_concurrent_streams: p.max_concurrent_streams.max(1),
        }
    }

    /// This profile with another connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Whether one fresh connection can serve more than one request at once, so that
    /// requests waiting for a dial should wait for that one dial (single flight) rather than
    /// each open their own.
    pub(super) fn shares_connections(&self) -> bool {
        self.max_requests_per_connection != Some(1) && self.max_concurrent_streams > 1
    }
}

impl From<&PoolLimits> for DialProfile {
    fn from(p: &PoolLimits) -> Self {
        Self::from_pool(p)
    }
}
