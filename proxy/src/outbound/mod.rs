//! The outbound proxy: what the local app sends, routed to a service's endpoint.
//!
//! In local mode the app uses this listener as an explicit HTTP proxy. A request goes:
//! accept (HTTP/1.1 or h2c) -> authority -> `routing::select_http` (pure) -> endpoint ->
//! mesh hop (peer proxy, HTTP/2, `weft-*` headers) or plain upstream -> response.
//! CONNECT goes: authority -> `routing::select_tcp` -> HTTP/2 CONNECT to the peer proxy, or
//! TCP -> bytes spliced both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HOST, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::{Cluster, Endpoint, SharedSnapshot, SimpleTls, Snapshot, UpstreamTlsMode};
use crate::routing::{self, RequestView};
use crate::telemetry::{Metrics, RequestLabels};
use crate::transport::{
    APP_PROTOCOL_HEADER, AppProtocol, ConnInfo, Connector, DST_PORT_HEADER, ExpectedIdentities,
    Handler, MeshSecurity, Tunnel, strip_hop_by_hop,
};

/// Who this proxy is, for metric labels, until the Inbound resource says so.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
}

impl Workload {
    /// Parses a node id "<name>.<namespace>" (namespaces have no dots; names may).
    pub fn from_node_id(id: &str) -> Self {
        match id.rsplit_once('.') {
            Some((name, ns)) => Self {
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            None => Self {
                name: id.to_string(),
                namespace: String::new(),
            },
        }
    }
}

/// The outbound request handler.
#[derive(Debug)]
pub struct Outbound {
    pub snapshot: SharedSnapshot,
    pub connector: Connector,
    pub metrics: Arc<Metrics>,
    pub workload: Workload,
    /// Whether this proxy has an identity (runs with --ca-root); without one, AUTO means
    /// plaintext to every peer.
    pub mtls: bool,
}

/// How to reach an endpoint, decided from config alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Through the peer proxy at this address, secured so.
    Mesh(SocketAddr, MeshSecurity),
    /// Straight to the endpoint (no sidecar there), plaintext.
    Direct,
    /// Straight to the endpoint, over TLS this proxy originates (SIMPLE).
    Originate(Arc<SimpleTls>),
}

/// DestinationRule TLS mode x endpoint x our identity -> the hop. Pure (decide, then act).
///
/// - DISABLE: plaintext (h2c to a peer proxy, or direct);
/// - AUTO: mTLS to endpoints with a sidecar when this proxy has an identity, else plaintext;
/// - ISTIO_MUTUAL: mTLS, and an error when it cannot be done (no sidecar or no identity),
///   rather than silently sending plaintext.
/// - SIMPLE: TLS from this proxy straight to the endpoint's address (as Istio: the
///   DestinationRule overrides auto mTLS, the server must speak TLS itself); when its roots
///   could not be loaded, a 503 `upstream-tls-unsupported` saying why.
/// - MUTUAL: 503 `upstream-tls-unsupported` (no client certificate on the wire yet), never
///   plaintext.
///
/// Secure naming: the server must present one of `cluster.identities`, or, when the control
/// plane sent none, the endpoint's own identity; with neither, mTLS fails closed.
pub fn choose_hop(joined: &Cluster, ep: &Endpoint, have_identity: bool) -> Result<Hop, ProxyError> {
    let cluster = &*joined.spec;
    let mutual = match cluster.tls {
        UpstreamTlsMode::Disable => false,
        UpstreamTlsMode::Auto => have_identity,
        UpstreamTlsMode::IstioMutual => true,
        UpstreamTlsMode::Simple => {
            return match &joined.origination {
                Some(Ok(t)) => Ok(Hop::Originate(t.clone())),
                Some(Err(why)) => Err(ProxyError::new(
                    ErrorKind::UpstreamTlsUnsupported,
                    format!(
                        "cluster {} (tls SIMPLE) cannot originate TLS: {why}",
                        cluster.name
                    ),
                )),
                None => Err(ProxyError::new(
                    ErrorKind::UpstreamTlsUnsupported,
                    format!("cluster {} (tls SIMPLE) has no TLS settings", cluster.name),
                )),
            };
        }
        UpstreamTlsMode::Mutual => {
            return Err(ProxyError::new(
                ErrorKind::UpstreamTlsUnsupported,
                format!(
                    "cluster {} asks for tls MUTUAL (TLS with a client certificate to a server \
                     outside the mesh), which this proxy cannot do yet: the config carries no \
                     client certificate; the request was not sent (no plaintext fallback)",
                    cluster.name
                ),
            ));
        }
    };
    let Some(peer) = ep.mesh_addr() else {
        if cluster.tls == UpstreamTlsMode::IstioMutual {
            return Err(ProxyError::new(
                ErrorKind::UpstreamTlsFailed,
                format!(
                    "cluster {} requires ISTIO_MUTUAL but endpoint {} has no sidecar",
                    cluster.name, ep.addr
                ),
            ));
        }
        return Ok(Hop::Direct);
    };
    if !mutual {
        return Ok(Hop::Mesh(peer, MeshSecurity::Plaintext));
    }
    let expected = if cluster.identities.is_empty() {
        vec![ep.identity.clone()]
    } else {
        cluster.identities.clone()
    };
    let expected: Vec<String> = expected.into_iter().filter(|s| !s.is_empty()).collect();
    if expected.is_empty() {
        return Err(ProxyError::new(
            ErrorKind::UpstreamTlsFailed,
            format!(
                "no identity is known for endpoint {} of cluster {}, so its certificate \
                 cannot be checked (secure naming)",
                ep.addr, cluster.name
            ),
        ));
    }
    Ok(Hop::Mesh(
        peer,
        MeshSecurity::Mutual(ExpectedIdentities::new(expected)),
    ))
}

/// Metric facts gathered along the way.
#[derive(Default)]
struct Dest {
    service: String,
    workload: String,
    subset: String,
}

impl Handler for Outbound {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        // One load per request: routing and metrics see the same config.
        let snapshot = self.snapshot.load();
        let mut dest = Dest::default();
        let rsp = if req.method() == Method::CONNECT {
            self.connect(&snapshot, req, &mut dest).await
        } else {
            self.http(&snapshot, req, &mut dest).await
        };
        let rsp = rsp.unwrap_or_else(|e| {
            tracing::debug!(error = %e, kind = e.kind.code(), "outbound request failed");
            e.to_response()
        });
        self.record(&snapshot, &dest, rsp.status());
        rsp
    }
}

impl Outbound {
    fn record(&self, snapshot: &Snapshot, dest: &Dest, status: StatusCode) {
        let (src_name, src_ns) = match &snapshot.inbound {
            Some(i) if !i.name.is_empty() => (i.name.clone(), i.namespace.clone()),
            _ => (self.workload.name.clone(), self.workload.namespace.clone()),
        };
        self.metrics.request(RequestLabels {
            direction: "outbound",
            source_workload: src_name,
            source_namespace: src_ns,
            destination_service: dest.service.clone(),
            destination_workload: dest.workload.clone(),
            destination_subset: dest.subset.clone(),
            source_principal: String::new(),
            response_code: status.as_u16(),
        });
    }

    async fn http(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        dest: &mut Dest,
    ) -> Result<Response<Body>, ProxyError> {
        let proto = if req.version() == Version::HTTP_2 {
            AppProtocol::H2
        } else {
            AppProtocol::Http1
        };
        let authority = request_authority(&req)?;
        let (host, port) = routing::parse_authority(&authority, 80)?;
        let view = RequestView {
            method: req.method(),
            scheme: req.uri().scheme_str().unwrap_or("http"),
            authority: &authority,
            port,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let decision = routing::select_http(snapshot, host, &view, &mut rand::rng())?;
        let ep = decision.endpoint();
        dest.service = decision.service.name.clone();
        dest.subset = decision.cluster.spec.subset.clone();
        dest.workload = ep.workload_name().0.to_string();

        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(format!("http://{authority}{pq}")).map_err(|e| {
            ProxyError::new(ErrorKind::BadRequest, format!("bad request target: {e}"))
        })?;
        let mut up = Request::from_parts(parts, body::boxed(body));

        let rsp = match choose_hop(&decision.cluster, ep, self.mtls)? {
            Hop::Mesh(peer, security) => {
                let h = up.headers_mut();
                // HTTP/2 carries the authority in :authority; a Host header would duplicate it.
                h.remove(HOST);
                h.insert(DST_PORT_HEADER, HeaderValue::from(ep.addr.port()));
                h.insert(
                    APP_PROTOCOL_HEADER,
                    HeaderValue::from_static(proto.as_str()),
                );
                self.connector.mesh_request(peer, &security, up).await?
            }
            Hop::Direct => self.connector.http_request(ep.addr, proto, up).await?,
            Hop::Originate(tls) => {
                self.connector
                    .origin_request(ep.addr, &tls, proto, up)
                    .await?
            }
        };
        Ok(relay_response(rsp))
    }

    async fn connect(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        dest: &mut Dest,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| {
                ProxyError::new(ErrorKind::BadRequest, "CONNECT needs a host:port target")
            })?;
        let (host, port) = routing::parse_authority(&authority, 0)?;
        if port == 0 {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!("CONNECT target {authority} names no port"),
            ));
        }
        let decision = routing::select_tcp(snapshot, host, port, &mut rand::rng())?;
        let ep = decision.endpoint();
        dest.service = decision
            .service
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        dest.subset = decision.cluster.spec.subset.clone();
        dest.workload = ep.workload_name().0.to_string();

        // Connect before answering, so a failure is a readable 503 instead of a dead tunnel.
        let upstream = match choose_hop(&decision.cluster, ep, self.mtls)? {
            Hop::Mesh(peer, security) => {
                self.connector.mesh_tunnel(peer, &security, ep.addr).await?
            }
            Hop::Direct => self.connector.tcp(ep.addr).await?,
            Hop::Originate(tls) => self.connector.origin_tunnel(ep.addr, &tls).await?,
        };
        tokio::spawn(splice_upgrade(req, upstream, ep.addr));
        Ok(Response::new(body::empty()))
    }
}

/// The target authority: absolute-form URI or :authority first, then the Host header.
pub(crate) fn request_authority<B>(req: &Request<B>) -> Result<String, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_string());
    }
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            ProxyError::new(
                ErrorKind::BadRequest,
                "the request names no host (no absolute URI, :authority or Host header)",
            )
        })
}

/// An upstream response on its way back: connection-scoped headers removed, body (and
/// trailers) streamed through untouched.
pub(crate) fn relay_response(rsp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::boxed(body))
}

/// Waits for the client side of a CONNECT to be upgraded, then copies bytes both ways.
pub(crate) async fn splice_upgrade(req: Request<Incoming>, mut upstream: Tunnel, to: SocketAddr) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%to, error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(upgraded);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%to, error = %e, "tunnel ended with an error");
    }
}

#[cfg(test)]
mod tests;
