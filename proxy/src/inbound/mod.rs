//! The inbound proxy: requests from peer proxies (and, with interception, from anyone) to the
//! local application.
//!
//! accept: a connection with an original destination (intercepted, from anyone) goes through
//! protocol detection ([`InboundIntercepted`]: opaque TCP and the app's own TLS are spliced to
//! the app port, HTTP and mesh mTLS continue below); any other connection: first byte 0x16 ->
//! mTLS (client certificate required, peer SPIFFE ID kept), else plaintext
//! ([`InboundAccept`]) -> destination port (`weft-dst-port`, CONNECT authority, or
//! SO_ORIGINAL_DST) -> PeerAuthentication mode of that port (STRICT refuses plaintext with
//! 403 `mtls-required`, DISABLE refuses mTLS) -> is it a port the workload serves? -> forward
//! to the app in the protocol the caller's app spoke (`weft-app-protocol`); CONNECT streams
//! are spliced to the app port. The mode is applied per request because the port is only
//! known once the HTTP/2 request arrives; at accept only what no port allows is refused.

mod intercepted;

pub use intercepted::InboundIntercepted;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::{Inbound as InboundConfig, MtlsMode, SharedSnapshot, Snapshot};
use crate::outbound::{relay_response, request_authority, splice_upgrade};
use crate::telemetry::{Metrics, RequestLabels};
use crate::transport::{
    APP_PROTOCOL_HEADER, Admit, AppProtocol, ConnInfo, Connector, DST_PORT_HEADER, Handler,
    MeshServerTls, TlsAccept, TlsFailure, TlsReason,
};

/// The caller's verified SPIFFE ID, attached to each inbound request as an extension (for
/// authorization and telemetry downstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Arc<str>);

/// The inbound request handler.
#[derive(Debug)]
pub struct Inbound {
    pub snapshot: SharedSnapshot,
    pub connector: Connector,
    pub metrics: Arc<Metrics>,
    /// Where the application listens.
    pub app_address: IpAddr,
}

impl Handler for Inbound {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let snapshot = self.snapshot.load();
        let mut req = req;
        if let Some(id) = &conn.peer_identity {
            req.extensions_mut().insert(PeerIdentity(id.clone()));
        }
        let grpc = crate::errors::is_grpc(req.headers());
        let rsp = if req.method() == Method::CONNECT {
            Box::pin(self.connect(&snapshot, req, &conn)).await
        } else {
            Box::pin(self.http(&snapshot, req, &conn)).await
        };
        let mut reason = "";
        let rsp = rsp.unwrap_or_else(|e| {
            tracing::debug!(error = %e, kind = e.kind.code(), "inbound request failed");
            reason = e.reason_name();
            e.to_response_for(grpc)
        });
        self.record(
            &snapshot,
            rsp.status(),
            conn.peer_identity.as_deref(),
            reason,
        );
        rsp
    }
}

impl Inbound {
    fn record(
        &self,
        snapshot: &Snapshot,
        status: StatusCode,
        principal: Option<&str>,
        reason: &'static str,
    ) {
        let name = snapshot
            .inbound
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        // A SPIFFE ID names a service account, not a workload: the namespace is derivable,
        // the workload is not (without a reverse index), so it stays "unknown".
        let namespace = principal
            .and_then(crate::identity::spiffe_namespace)
            .unwrap_or("unknown");
        self.metrics.request(RequestLabels {
            direction: "inbound",
            source_workload: "unknown".to_string(),
            source_namespace: namespace.to_string(),
            destination_service: String::new(),
            destination_workload: name,
            destination_subset: String::new(),
            source_principal: principal.unwrap_or_default().to_string(),
            response_code: status.as_u16(),
            reason,
        });
    }

    /// Applies the PeerAuthentication mode of `port` to this connection.
    fn check_mtls(
        &self,
        inbound: Option<&InboundConfig>,
        port: u16,
        conn: &ConnInfo,
    ) -> Result<(), ProxyError> {
        let mode = inbound.map_or(MtlsMode::Permissive, |i| i.mtls_mode_for(port));
        match mtls_decision(mode, conn.tls) {
            Ok(()) => Ok(()),
            Err(reason) => {
                tracing::warn!(peer = %conn.peer, port, reason = reason.code(), "inbound connection refused by PeerAuthentication");
                self.metrics.tls_handshake_failure("inbound", reason.code());
                Err(if reason == TlsReason::PlaintextToStrict {
                    ProxyError::new(
                        ErrorKind::MtlsRequired,
                        format!(
                            "port {port} of this workload requires mutual TLS (PeerAuthentication \
                             STRICT); this request came in plaintext from {}. Send it through a \
                             mesh proxy.",
                            conn.peer
                        ),
                    )
                } else {
                    ProxyError::new(
                        ErrorKind::MtlsDisabled,
                        format!(
                            "port {port} of this workload accepts plaintext only (PeerAuthentication \
                             DISABLE); this request came over mutual TLS"
                        ),
                    )
                })
            }
        }
    }

    async fn http(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, ProxyError> {
        let port = destination_port(&req, conn)?;
        self.check_mtls(snapshot.inbound.as_deref(), port, conn)?;
        let proto = AppProtocol::from_header(
            req.headers()
                .get(APP_PROTOCOL_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        check_port(snapshot.inbound.as_deref(), port)?;
        let authority = request_authority(&req)?;
        let (mut parts, body) = crate::outbound::upstream_head(req, &authority)?;
        parts.headers.remove(DST_PORT_HEADER);
        parts.headers.remove(APP_PROTOCOL_HEADER);
        let up = Request::from_parts(parts, body::boxed(body));
        let target = SocketAddr::new(self.app_address, port);
        // No DestinationRule governs the local app: the connector's local profile.
        let profile = self.connector.local_profile();
        let rsp = self
            .connector
            .http_request(target, proto, profile, up)
            .await?;
        Ok(relay_response(rsp))
    }

    async fn connect(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, ProxyError> {
        let target: SocketAddr = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("CONNECT target {} is not ip:port", req.uri()),
                )
            })?;
        self.check_mtls(snapshot.inbound.as_deref(), target.port(), conn)?;
        check_port(snapshot.inbound.as_deref(), target.port())?;
        // The tunnel names the workload's address; the app may listen elsewhere (local mode).
        let app = SocketAddr::new(self.app_address, target.port());
        let upstream = self
            .connector
            .tcp(app, self.connector.local_profile())
            .await?;
        tokio::spawn(splice_upgrade(req, upstream, app));
        Ok(Response::new(body::empty()))
    }
}

/// The application port: the mesh hop's header, else the intercepted original destination.
fn destination_port<B>(req: &Request<B>, conn: &ConnInfo) -> Result<u16, ProxyError> {
    if let Some(v) = req.headers().get(DST_PORT_HEADER) {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("{DST_PORT_HEADER} {v:?} is not a port number"),
                )
            });
    }
    conn.orig_dst.map(|d| d.port()).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!(
                "a request to the inbound port {} must carry a {DST_PORT_HEADER} header (it \
                 comes from a peer proxy) or be intercepted (original destination); this one \
                 has neither",
                conn.local.port()
            ),
        )
    })
}

/// PeerAuthentication, pure: may a connection (mTLS or not) reach a port in `mode`?
pub fn mtls_decision(mode: MtlsMode, tls: bool) -> Result<(), TlsReason> {
    match (mode, tls) {
        (MtlsMode::Strict, false) => Err(TlsReason::PlaintextToStrict),
        (MtlsMode::Disable, true) => Err(TlsReason::TlsToDisabled),
        _ => Ok(()),
    }
}

/// What the inbound listener does before any request: TLS if this proxy has a certificate and
/// some port accepts mTLS; plaintext always (so a STRICT port can answer a readable 403; a
/// client that does not speak HTTP just gets the connection closed, unless it was intercepted:
/// then [`InboundIntercepted`] splices it). Intercepted connections ask it only for ClientHellos
/// that carry the mesh marker.
#[derive(Debug)]
pub struct InboundAccept {
    pub snapshot: SharedSnapshot,
    pub tls: Option<Arc<dyn MeshServerTls>>,
    pub metrics: Arc<Metrics>,
}

impl TlsAccept for InboundAccept {
    fn admit(&self, client_hello: bool) -> Admit {
        if !client_hello {
            return Admit::Plaintext;
        }
        let snapshot = self.snapshot.load();
        if let Some(i) = snapshot.inbound.as_deref()
            && !i.any_port_allows(true)
        {
            return Admit::Refuse(TlsFailure::new(
                TlsReason::TlsToDisabled,
                "mTLS refused: every port of this workload is PeerAuthentication DISABLE",
            ));
        }
        match self.tls.as_ref().and_then(|t| t.server_config()) {
            Some(cfg) => Admit::Tls(cfg),
            None => Admit::Refuse(TlsFailure::new(
                TlsReason::NoLocalCertificate,
                "mTLS refused: this proxy has no certificate (yet)",
            )),
        }
    }

    fn peer_identity(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<Arc<str>> {
        self.tls.as_ref().and_then(|t| t.peer_identity(chain))
    }

    fn handshake_failed(&self, peer: SocketAddr, f: &TlsFailure) {
        tracing::warn!(%peer, reason = f.reason.code(), "inbound mTLS refused: {}", f.detail);
        self.metrics
            .tls_handshake_failure("inbound", f.reason.code());
    }
}

fn check_port(inbound: Option<&InboundConfig>, port: u16) -> Result<(), ProxyError> {
    let inbound = inbound.ok_or_else(|| {
        ProxyError::new(
            ErrorKind::NotReady,
            "this proxy has not received its workload config (Inbound) yet",
        )
    })?;
    if inbound.serves_port(port) {
        return Ok(());
    }
    let served: Vec<String> = inbound
        .ports
        .iter()
        .map(|p| p.target().to_string())
        .collect();
    Err(ProxyError::new(
        ErrorKind::PortNotServed,
        format!(
            "workload {}/{} does not serve port {port} (it serves {})",
            inbound.namespace,
            inbound.name,
            if served.is_empty() {
                "none".to_string()
            } else {
                served.join(", ")
            }
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn peer_authentication_table() {
        use MtlsMode::*;
        let cases = [
            (Strict, true, Ok(())),
            (Strict, false, Err(TlsReason::PlaintextToStrict)),
            (Permissive, true, Ok(())),
            (Permissive, false, Ok(())),
            (Disable, true, Err(TlsReason::TlsToDisabled)),
            (Disable, false, Ok(())),
        ];
        for (mode, tls, want) in cases {
            assert_eq!(mtls_decision(mode, tls), want, "{mode:?} tls={tls}");
        }
    }
}
