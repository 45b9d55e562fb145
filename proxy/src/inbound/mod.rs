//! The inbound proxy: requests from peer proxies (and, with interception, from anyone) to the
//! local application.
//!
//! accept (h2c now, mTLS later) -> destination port (`weft-dst-port`, or SO_ORIGINAL_DST) ->
//! is it a port the workload serves? -> forward to the app in the protocol the caller's app
//! spoke (`weft-app-protocol`); CONNECT streams are spliced to the app port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::{Inbound as InboundConfig, SharedSnapshot, Snapshot};
use crate::outbound::{relay_response, request_authority, splice_upgrade};
use crate::telemetry::{Metrics, RequestLabels};
use crate::transport::{
    APP_PROTOCOL_HEADER, AppProtocol, ConnInfo, Connector, DST_PORT_HEADER, Handler,
    strip_hop_by_hop,
};

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
        let rsp = if req.method() == Method::CONNECT {
            self.connect(&snapshot, req).await
        } else {
            self.http(&snapshot, req, conn).await
        };
        let rsp = rsp.unwrap_or_else(|e| {
            tracing::debug!(error = %e, kind = e.kind.code(), "inbound request failed");
            e.to_response()
        });
        self.record(&snapshot, rsp.status());
        rsp
    }
}

impl Inbound {
    fn record(&self, snapshot: &Snapshot, status: StatusCode) {
        let name = snapshot
            .inbound
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        // The caller's identity arrives with mTLS; until then the source is unknown.
        self.metrics.request(RequestLabels {
            direction: "inbound",
            source_workload: "unknown".to_string(),
            source_namespace: "unknown".to_string(),
            destination_service: String::new(),
            destination_workload: name,
            destination_subset: String::new(),
            response_code: status.as_u16(),
        });
    }

    async fn http(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, ProxyError> {
        let port = destination_port(&req, conn)?;
        let proto = AppProtocol::from_header(
            req.headers()
                .get(APP_PROTOCOL_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        check_port(snapshot.inbound.as_deref(), port)?;
        let authority = request_authority(&req)?;
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(DST_PORT_HEADER);
        parts.headers.remove(APP_PROTOCOL_HEADER);
        strip_hop_by_hop(&mut parts.headers);
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(format!("http://{authority}{pq}")).map_err(|e| {
            ProxyError::new(ErrorKind::BadRequest, format!("bad request target: {e}"))
        })?;
        let up = Request::from_parts(parts, body::boxed(body));
        let target = SocketAddr::new(self.app_address, port);
        let rsp = self.connector.http_request(target, proto, up).await?;
        Ok(relay_response(rsp))
    }

    async fn connect(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
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
        check_port(snapshot.inbound.as_deref(), target.port())?;
        // The tunnel names the workload's address; the app may listen elsewhere (local mode).
        let app = SocketAddr::new(self.app_address, target.port());
        let upstream = self.connector.tcp(app).await?;
        tokio::spawn(splice_upgrade(req, upstream, app));
        Ok(Response::new(body::empty()))
    }
}

/// The application port: the mesh hop's header, else the intercepted original destination.
fn destination_port<B>(req: &Request<B>, conn: ConnInfo) -> Result<u16, ProxyError> {
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
