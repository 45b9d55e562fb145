//! Transparent outbound: connections that iptables redirected to the outbound listener, from
//! an app that believes it talks to the original destination directly.
//!
//! A connection goes: loop guard (the destination is not one of this proxy's listeners) ->
//! the service at the original destination (`Snapshot::service_for_addr`) -> protocol
//! detection, unless `detect::skip_detection` says the port is server-first or declared opaque
//! (bounded by [`Transparent::detect_timeout`]; on timeout the connection is opaque TCP) ->
//!
//! - HTTP/1 or HTTP/2 prior knowledge: served by hyper over the replayed bytes, each request
//!   through [`Outbound`]'s handler, which sees `ConnInfo.orig_dst` and chooses the service by
//!   address (`Select::ByAddr`); routes, retries, timeouts, faults, limits and balancing are
//!   the explicit proxy's, unchanged.
//! - anything else (opaque TCP, the app's own TLS): the service's tcp routes or default
//!   cluster (`routing::select_tcp_in`), an endpoint, and the same tunnel as CONNECT (the mesh
//!   hop to the peer proxy, mTLS when configured, or plain TCP), bytes spliced both ways.
//! - no service at that address: ALLOW_ANY passes the bytes through to the original
//!   destination unchanged; REGISTRY_ONLY closes the connection (logged at info, counted in
//!   `weft_outbound_refused_total{reason="registry_only"}`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Dest, Outbound, PASSTHROUGH, TcpHeld};
use crate::detect::{self, DetectOutcome, Detection, PrefixedIo};
use crate::model::{OutboundTrafficPolicy, Snapshot};
use crate::routing;
use crate::transport::{BoxFuture, ConnInfo, Intercepted, ServerTimeouts, Tunnel, serve_http};

/// How long detection waits for a client's first bytes by default. Long enough for a client
/// on a loaded node to send its request (Istio's old 100 ms default cut slow clients into
/// opaque TCP, which silently bypasses HTTP routing), short enough that a server-first
/// protocol on a port nobody declared still connects after a noticeable but bounded pause.
/// Linkerd waits 10 s; 5 s halves that pause. `--detect-timeout` / `WEFT_DETECT_TIMEOUT`.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The intercepted side of the outbound listener.
#[derive(Debug)]
pub struct Transparent {
    pub outbound: Arc<Outbound>,
    /// The bound on protocol detection; past it the connection is opaque TCP.
    pub detect_timeout: Duration,
    /// This proxy's own listener addresses (outbound, inbound, admin): a connection whose
    /// original destination is one of them would come straight back here, so it is refused.
    pub own_addrs: Vec<SocketAddr>,
}

impl Intercepted for Transparent {
    fn serve_intercepted(
        self: Arc<Self>,
        stream: TcpStream,
        info: ConnInfo,
        shutdown: CancellationToken,
        timeouts: ServerTimeouts,
    ) -> BoxFuture {
        Box::pin(self.serve(stream, info, shutdown, timeouts))
    }
}

impl Transparent {
    async fn serve(
        self: Arc<Self>,
        mut stream: TcpStream,
        info: ConnInfo,
        shutdown: CancellationToken,
        timeouts: ServerTimeouts,
    ) {
        let Some(dst) = info.orig_dst else {
            return;
        };
        let metrics = &self.outbound.metrics;
        if is_own(&self.own_addrs, dst, info.local) {
            metrics.outbound_refused("loop");
            tracing::warn!(
                %dst,
                peer = %info.peer,
                "refused an intercepted connection: its original destination is this proxy's \
                 own listener, so proxying it would loop"
            );
            return;
        }
        let skip = {
            let snapshot = self.outbound.snapshot.load();
            let declared = snapshot
                .service_for_addr(dst.ip(), dst.port())
                .and_then(|s| s.ports.iter().find(|p| p.number == dst.port()))
                .map(|p| p.declared_protocol());
            // No per-mesh opaque port list exists in the config yet; declared names and the
            // well-known server-first ports cover what it would.
            detect::skip_detection(dst.port(), declared, &[])
        };
        let (detection, prefix, outcome) = match detect::detect_or_skip(
            &mut stream,
            skip,
            self.detect_timeout,
        )
        .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%dst, peer = %info.peer, error = %e, "client failed during detection");
                return;
            }
        };
        metrics.protocol_detected(outcome);
        if outcome == DetectOutcome::Timeout {
            tracing::debug!(
                %dst,
                timeout_ms = self.detect_timeout.as_millis() as u64,
                "client sent nothing decisive in time; treating the connection as opaque TCP"
            );
        }
        let io = PrefixedIo::new(prefix, stream);
        match detection {
            // An intercepted CONNECT is the app talking to a forward proxy of its own at
            // `dst` (HTTPS_PROXY): the tunnel is that proxy's business, so the bytes go to
            // `dst` like any opaque stream (routed by address, passed through or refused),
            // never re-routed by the CONNECT authority, which would let an app reach any
            // mesh host whatever address it dialed.
            Detection::Http1 { method: "CONNECT" } => {
                self.tcp(io, dst, &info).await;
            }
            Detection::Http1 { .. } | Detection::Http2 => {
                serve_http(
                    TokioIo::new(io),
                    info,
                    self.outbound.clone(),
                    shutdown,
                    timeouts,
                )
                .await;
            }
            Detection::Tls(_) | Detection::Opaque | Detection::NeedMore => {
                self.tcp(io, dst, &info).await;
            }
        }
    }

    /// Opaque TCP to `dst`: routed by address, passed through, or refused.
    async fn tcp(&self, mut client: PrefixedIo<TcpStream>, dst: SocketAddr, info: &ConnInfo) {
        let mut dest = Dest::default();
        // The snapshot is dropped before the splice: a stream may live for hours, and must not
        // keep an old config alive that long (what it holds is its own cluster's state).
        let opened = {
            let snapshot = self.outbound.snapshot.load();
            self.open(&snapshot, dst, info, &mut dest).await
        };
        let (mut upstream, _held, to) = match opened {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::info!(
                    %dst,
                    service = %dest.service,
                    error = %e,
                    kind = e.kind.code(),
                    "intercepted TCP connection could not be proxied; closing it"
                );
                return;
            }
        };
        // `_held` keeps the connection counted against the pool and the endpoint's load.
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%dst, to = %to, error = %e, "intercepted TCP stream ended with an error");
        }
    }

    /// The upstream of an opaque stream to `dst`; `None` when it is refused (already logged
    /// and counted).
    async fn open(
        &self,
        snapshot: &Snapshot,
        dst: SocketAddr,
        info: &ConnInfo,
        dest: &mut Dest,
    ) -> Result<Option<(Tunnel, Option<TcpHeld>, SocketAddr)>, crate::errors::ProxyError> {
        if let Some(service) = snapshot.service_for_addr(dst.ip(), dst.port()) {
            let decision = routing::select_tcp_in(snapshot, service, dst.port(), &mut rand::rng())?;
            let (tunnel, held, to) = self.outbound.open_tcp(&decision, info, dest).await?;
            return Ok(Some((tunnel, Some(held), to)));
        }
        if snapshot.outbound_traffic_policy() == OutboundTrafficPolicy::RegistryOnly {
            self.outbound.metrics.outbound_refused("registry_only");
            tracing::info!(
                %dst,
                peer = %info.peer,
                "refused an intercepted TCP connection: no service has this address and the \
                 outbound traffic policy is REGISTRY_ONLY"
            );
            return Ok(None);
        }
        dest.service = PASSTHROUGH.to_string();
        // No DestinationRule governs an unknown destination: the proxy's default dial settings.
        let connector = &self.outbound.connector;
        let tunnel = connector.tcp(dst, connector.local_profile()).await?;
        Ok(Some((tunnel, None, dst)))
    }
}

/// Whether `dst` is one of this proxy's listeners (`own`): an exact match, the port of one on
/// the address the connection arrived at (`local`: this pod's own address), or, for a
/// listener bound to 0.0.0.0 / `::`, its port on loopback. The same port on another host is
/// not us.
fn is_own(own: &[SocketAddr], dst: SocketAddr, local: SocketAddr) -> bool {
    own.iter().any(|a| {
        *a == dst
            || (a.port() == dst.port()
                && (dst.ip() == local.ip() || (a.ip().is_unspecified() && dst.ip().is_loopback())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn loop_guard_matches_only_this_proxys_listeners() {
        let own = [
            sa("10.0.0.5:15001"),
            sa("10.0.0.5:15006"),
            sa("0.0.0.0:15020"),
        ];
        let local = sa("10.0.0.5:15001");
        assert!(is_own(&own, sa("10.0.0.5:15006"), local), "exact");
        assert!(
            is_own(&own, sa("10.0.0.5:15020"), local),
            "our port on our address"
        );
        assert!(
            is_own(&own, sa("127.0.0.1:15020"), local),
            "wildcard listener on loopback"
        );
        assert!(
            !is_own(&own, sa("10.0.0.9:15006"), local),
            "another pod's 15006"
        );
        assert!(
            !is_own(&own, sa("127.0.0.1:15006"), local),
            "bound to the pod IP only"
        );
        assert!(
            !is_own(&own, sa("10.0.0.5:8080"), local),
            "the app's own port"
        );
    }
}
