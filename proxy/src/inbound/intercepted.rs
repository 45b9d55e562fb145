//! Inbound connections that iptables redirected to the inbound listener (they carry an
//! original destination): the client may be a mesh proxy, or anything outside the mesh
//! speaking HTTP, its own TLS, or an opaque (possibly server-first) protocol.
//!
//! The first byte cannot tell the mesh's mTLS from the application's TLS, so these connections
//! go through protocol detection ([`crate::detect`]), like the transparent outbound:
//!
//! - `skip_detection(port, the Inbound port's appProtocol or name, [])`: opaque at once, so a
//!   server-first protocol (MySQL 3306) gets its greeting without waiting for the client;
//! - HTTP/1 or h2c: the inbound handler, per request (PeerAuthentication, port, forward);
//! - a ClientHello offering [`crate::detect::MESH_ALPN`]: the mesh hop, exactly as on a direct
//!   connection ([`serve_mesh_tls`]);
//! - a ClientHello without it (the application's own TLS), anything else, or nothing decisive
//!   within the detection timeout: opaque TCP spliced to the app's port, once that port's
//!   PeerAuthentication allows a connection that is not mesh mTLS (STRICT refuses it, with the
//!   same log and `plaintext-to-strict` count as plaintext HTTP) and the workload serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Inbound, InboundAccept, check_port};
use crate::detect::{self, DetectOutcome, Detection, PrefixedIo};
use crate::model::Port;
use crate::transport::{
    Admit, BoxFuture, ConnInfo, Intercepted, ServerTimeouts, TlsAccept, serve_http, serve_mesh_tls,
};

/// The intercepted side of the inbound listener.
#[derive(Debug)]
pub struct InboundIntercepted {
    pub inbound: Arc<Inbound>,
    /// The mesh hop's TLS policy, for ClientHellos that carry the mesh marker.
    pub accept: Arc<InboundAccept>,
    /// The bound on protocol detection (`--detect-timeout`); past it the connection is opaque.
    pub detect_timeout: Duration,
}

impl Intercepted for InboundIntercepted {
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

impl InboundIntercepted {
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
        let port = dst.port();
        let skip = {
            let snapshot = self.inbound.snapshot.load();
            let declared = snapshot
                .inbound
                .as_deref()
                .and_then(|i| i.port(port))
                .map(Port::declared_protocol);
            detect::skip_detection(port, declared, &[])
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
                tracing::debug!(%dst, peer = %info.peer, error = %e, "inbound client failed during detection");
                return;
            }
        };
        self.inbound.metrics.protocol_detected(outcome);
        if outcome == DetectOutcome::Timeout {
            tracing::debug!(
                %dst,
                timeout_ms = self.detect_timeout.as_millis() as u64,
                "inbound client sent nothing decisive in time; treating the connection as opaque TCP"
            );
        }
        let io = PrefixedIo::new(prefix, stream);
        match detection {
            Detection::Http1 { .. } | Detection::Http2 => {
                serve_http(
                    TokioIo::new(io),
                    info,
                    self.inbound.clone(),
                    shutdown,
                    timeouts,
                )
                .await;
            }
            Detection::Tls(hello) if hello.mesh => match self.accept.admit(true) {
                Admit::Tls(config) => {
                    serve_mesh_tls(
                        io,
                        info,
                        config,
                        self.inbound.clone(),
                        &*self.accept,
                        shutdown,
                        timeouts,
                    )
                    .await;
                }
                Admit::Refuse(f) => self.accept.handshake_failed(info.peer, &f),
                // `admit` answers a ClientHello with TLS or a refusal; nothing to serve else.
                Admit::Plaintext => {}
            },
            Detection::Tls(_) | Detection::Opaque | Detection::NeedMore => {
                self.opaque(io, port, &info).await;
            }
        }
    }

    /// Splices a connection that is not mesh mTLS to the app's `port`, if its
    /// PeerAuthentication mode and the workload's ports allow it.
    async fn opaque(&self, mut client: PrefixedIo<TcpStream>, port: u16, info: &ConnInfo) {
        let inbound = &self.inbound;
        // The snapshot is dropped before the splice, which may last hours.
        let allowed = {
            let snapshot = inbound.snapshot.load();
            let config = snapshot.inbound.as_deref();
            // `info.tls` is false: the app's own TLS is not mesh mTLS, so STRICT refuses it
            // like plaintext (check_mtls logs and counts the refusal).
            inbound
                .check_mtls(config, port, info)
                .and_then(|()| check_port(config, port))
        };
        if let Err(e) = allowed {
            tracing::debug!(peer = %info.peer, port, error = %e, kind = e.kind.code(), "intercepted inbound TCP connection refused");
            return;
        }
        let app = SocketAddr::new(inbound.app_address, port);
        let mut upstream = match inbound
            .connector
            .tcp(app, inbound.connector.local_profile())
            .await
        {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(peer = %info.peer, %app, error = %e, "intercepted inbound TCP connection: the app could not be reached; closing it");
                return;
            }
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(peer = %info.peer, %app, error = %e, "intercepted inbound TCP stream ended with an error");
        }
    }
}
