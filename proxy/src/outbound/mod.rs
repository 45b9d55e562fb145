//! The outbound proxy: what the local app sends, routed to a service's endpoint.
//!
//! In local mode the app uses this listener as an explicit HTTP proxy. A request goes:
//! accept (HTTP/1.1 or h2c) -> authority -> `routing::select_http` (pure: route and weighted
//! cluster) -> fault injection -> under the route's timeout, attempts: pick an endpoint
//! (balancer), take a slot in the cluster's connection-pool limits, send over the mesh hop
//! (peer proxy, HTTP/2, `weft-*` headers) or to the plain upstream under the per-try
//! timeout, classify the outcome (outlier detection, latency), and retry as the route's
//! policy and the cluster's retry budget allow -> response.
//! CONNECT goes: authority -> `routing::select_tcp` -> endpoint -> HTTP/2 CONNECT to the
//! peer proxy, or TCP -> bytes spliced both ways.
//!
//! With interception (`transparent`), a redirected connection is detected first: HTTP goes
//! through the same handler and attempt loop with the service chosen by the original
//! destination ([`Select::ByAddr`]), opaque TCP through the same tunnel as CONNECT.
//!
//! Every response the proxy makes up carries `x-weft-reason` (see `resilience::Reason` and
//! `errors`), and every request ends with one access-log event (target `weft::access`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HOST, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::{self, HashInput, InFlight, Outcome, PickCtx};
use crate::body::{self, Body};
use crate::errors::{ErrorKind, ProxyError};
use crate::model::{
    Cluster, Endpoint, OutboundTrafficPolicy, SharedSnapshot, SimpleTls, Snapshot, UpstreamTlsMode,
};
use crate::replay::{DEFAULT_REPLAY_LIMIT, ReplayBody};
use crate::resilience::ConnectionPermit;
use crate::resilience::{
    self, AttemptOutcome, CompactDuration, Reason, RetryPolicy, RetryState, RetryStep, RetryStop,
    TimeoutKind,
};
use crate::routing::{self, RequestView};
use crate::telemetry::{Metrics, RequestLabels};
use crate::transport::{
    APP_PROTOCOL_HEADER, AppProtocol, ConnInfo, Connector, DST_PORT_HEADER, DialProfile,
    ExpectedIdentities, Handler, MeshSecurity, Tunnel, strip_hop_by_hop,
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

/// How the service of an HTTP request is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// By the request's authority (the app uses this listener as an explicit proxy).
    ByHost,
    /// Intercepted: by the connection's original destination, then (no service has that
    /// address) by the Host header's service if it serves that port, else the mesh's
    /// outbound traffic policy decides. The request's own authority is kept for the upstream
    /// and for route matching; the port matched is the original destination's.
    ByAddr(SocketAddr),
}

/// The service name that metrics and the access log give traffic passed through to a
/// destination the mesh does not know (ALLOW_ANY), as Istio names its cluster for it.
pub(crate) const PASSTHROUGH: &str = "PassthroughCluster";

/// What keeps an opaque TCP stream counted against its cluster: the connection-pool slot and
/// the endpoint's load, released when the stream ends.
pub(crate) type TcpHeld = (ConnectionPermit, Option<InFlight>);

/// Metric and access-log facts gathered along the way.
#[derive(Default)]
pub(crate) struct Dest {
    service: String,
    workload: String,
    subset: String,
    /// The endpoint of the last attempt.
    endpoint: Option<SocketAddr>,
    /// Attempts made (0: none reached an endpoint).
    attempts: u32,
    /// Why the proxy answered itself (the `x-weft-reason` value), if it did.
    reason: Option<String>,
    /// Its short name, for the metric label.
    reason_name: &'static str,
    /// Why the last failure was not retried, when a retry was considered.
    retry_stop: Option<RetryStop>,
}

impl Handler for Outbound {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        // One load per request: routing and metrics see the same config.
        let snapshot = self.snapshot.load();
        let mut dest = Dest::default();
        let started = Instant::now();
        let grpc = crate::errors::is_grpc(req.headers());
        let method = req.method().clone();
        let target = req.uri().clone();
        // Interception sets the original destination; CONNECT names its own target.
        let select = match conn.orig_dst {
            Some(dst) => Select::ByAddr(dst),
            None => Select::ByHost,
        };
        // Boxed: the request path's state machine is several KiB, and hyper moves the
        // handler's future by value (into its dispatcher); a box keeps that move a pointer
        // (callgrind: a tenth of a request's instructions were that memcpy).
        let rsp = if method == Method::CONNECT {
            Box::pin(self.connect(&snapshot, req, &conn, &mut dest)).await
        } else {
            Box::pin(self.http(&snapshot, req, &conn, select, &mut dest)).await
        };
        let rsp = rsp.unwrap_or_else(|e| {
            tracing::debug!(error = %e, kind = e.kind.code(), "outbound request failed");
            dest.reason = Some(e.reason_header().to_str().unwrap_or_default().to_string());
            dest.reason_name = e.reason_name();
            e.to_response_for(grpc)
        });
        self.record(&snapshot, &dest, rsp.status());
        access_log(&method, &target, &dest, rsp.status(), started.elapsed());
        rsp
    }
}

/// One event per request on target `weft::access` (enable with `--log weft::access=info`):
/// what was asked, where it went, how it ended and, when the proxy answered, why.
fn access_log(
    method: &Method,
    target: &Uri,
    dest: &Dest,
    status: StatusCode,
    elapsed: std::time::Duration,
) {
    tracing::info!(
        target: "weft::access",
        direction = "outbound",
        %method,
        %target,
        status = status.as_u16(),
        duration_ms = elapsed.as_millis() as u64,
        service = %dest.service,
        subset = %dest.subset,
        endpoint = ?dest.endpoint,
        attempts = dest.attempts,
        reason = dest.reason.as_deref().unwrap_or(""),
        retry_stop = %dest.retry_stop.map(|s| s.to_string()).unwrap_or_default(),
    );
}

/// The request body, as each attempt gets it: once, or replayed from a bounded buffer when
/// the route may retry (`crate::replay`).
enum AttemptBody {
    Once(Option<Incoming>),
    Replay(Option<ReplayBody<Incoming>>),
}

impl AttemptBody {
    /// The body for the next attempt; `None` when it cannot be sent again.
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Once(b) => b.take().map(body::boxed),
            Self::Replay(slot) => {
                let current = slot.take()?;
                // Take the spare before the current body moves into the request.
                *slot = current.replay();
                Some(body::boxed(current))
            }
        }
    }

    /// Whether another attempt could send the body again (once the previous attempt has
    /// let go of it: see [`AttemptBody::released`]).
    fn replayable(&self) -> bool {
        match self {
            Self::Once(b) => b.is_some(),
            Self::Replay(Some(b)) => b.is_replayable(),
            Self::Replay(None) => false,
        }
    }

    /// Waits, briefly, until no earlier attempt holds the original body: hyper sends a
    /// request body from its own task and drops it shortly after the exchange ends (a
    /// response that came before the whole body was sent, a per-try timeout). False if it
    /// is still held after that, or cannot be replayed at all.
    async fn released(&self) -> bool {
        let Self::Replay(Some(b)) = self else {
            return self.replayable();
        };
        // Bounded: 50 checks a millisecond apart. Not a signal because the hand-back
        // happens inside hyper's connection task, which has none to give.
        for _ in 0..50 {
            if !b.is_in_use() {
                return b.is_replayable();
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        false
    }
}

/// How one attempt ended, before it is classified.
enum Sent {
    Response(Response<Body>),
    Failed(ProxyError),
    TimedOut(TimeoutKind),
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
            reason: dest.reason_name,
        });
    }

    async fn http(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
        select: Select,
        dest: &mut Dest,
    ) -> Result<Response<Body>, ProxyError> {
        let proto = if req.version() == Version::HTTP_2 {
            AppProtocol::H2
        } else {
            AppProtocol::Http1
        };
        let authority = match (request_authority(&req), select) {
            (Ok(a), _) => a,
            // An intercepted HTTP/1.0 request may name no host: the address it went to does.
            (Err(_), Select::ByAddr(dst)) => dst.to_string(),
            (Err(e), Select::ByHost) => return Err(e),
        };
        let (host, port) = match select {
            Select::ByHost => routing::parse_authority(&authority, 80)?,
            // The port the app connected to, whatever the Host header says (it often names
            // none: `Host: reviews` on a connection to 10.0.0.7:9080).
            Select::ByAddr(dst) => (
                routing::parse_authority(&authority, dst.port())?.0,
                dst.port(),
            ),
        };
        let view = RequestView {
            method: req.method(),
            scheme: req.uri().scheme_str().unwrap_or("http"),
            authority: &authority,
            port,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let decision = match select {
            Select::ByHost => routing::select_http(snapshot, host, &view, &mut rand::rng())?,
            Select::ByAddr(dst) => {
                let service = snapshot
                    .service_for_addr(dst.ip(), dst.port())
                    .or_else(|| snapshot.service_for_host(host).filter(|s| s.has_port(port)));
                match service {
                    Some(svc) => routing::select_http_in(snapshot, svc, &view, &mut rand::rng())?,
                    None => {
                        return self
                            .passthrough_http(snapshot, req, &authority, dst, proto, dest)
                            .await;
                    }
                }
            }
        };
        let route = decision.route();
        let cluster = &decision.cluster;
        dest.service = decision.service.name.clone();
        dest.subset = cluster.spec.subset.clone();
        let affinity = cluster.balancer.hash_policy().map(|p| {
            let input = HashInput {
                headers: req.headers(),
                query: req.uri().query(),
                source_ip: Some(conn.peer.ip()),
            };
            balance::affinity(p, &input, &mut rand::rng())
        });

        // Faults first, as Envoy's fault filter runs before the router: a delay is not
        // counted by the route's timeout, an abort is never retried.
        if let Some(fault) = &route.fault {
            let decided = resilience::decide_fault(fault, &mut rand::rng());
            if let Some(delay) = decided.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(kind) = decided.abort {
                let reason = Reason::FaultAbort(kind);
                dest.reason = Some(reason.to_string());
                dest.reason_name = reason.name();
                let mut rsp = resilience::abort_response(kind).map(body::full);
                rsp.headers_mut().insert(
                    crate::errors::PROXY_ERROR_HEADER,
                    HeaderValue::from_static("fault-abort"),
                );
                return Ok(rsp);
            }
        }

        let (parts, body) = upstream_head(req, &authority)?;
        let policy = &*route.retries;
        let body = if policy.enabled() {
            AttemptBody::Replay(Some(ReplayBody::new(body, DEFAULT_REPLAY_LIMIT)))
        } else {
            AttemptBody::Once(Some(body))
        };
        let hash = affinity.as_ref().and_then(|a| a.hash);
        let attempts = Attempts {
            cluster,
            policy,
            proto,
            grpc: crate::errors::is_grpc(&parts.headers),
            hash,
            route_timeout: route.timeout,
            route_deadline: route.timeout.and_then(|t| Instant::now().checked_add(t)),
        };
        let mut rsp = self.attempts(&attempts, &parts, body, dest).await?;
        if let Some(cookie) = affinity.and_then(|a| a.set_cookie) {
            rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        Ok(rsp)
    }

    /// The attempt loop. The route's deadline bounds every wait in it (the pending queue,
    /// each attempt, each back-off) explicitly rather than through one outer timer, so that
    /// an attempt cut by it is always reported to outlier detection and the latency
    /// estimate, whichever timer would have fired first.
    async fn attempts(
        &self,
        a: &Attempts<'_>,
        parts: &http::request::Parts,
        mut body: AttemptBody,
        dest: &mut Dest,
    ) -> Result<Response<Body>, ProxyError> {
        let cluster = a.cluster;
        let mut state = RetryState::new();
        // Endpoints tried so far, for retryIgnorePreviousHosts; attempts are few (Istio
        // caps nothing, but budgets do), so a small fixed array is enough, oldest kept.
        let mut tried = [0usize; 8];
        let mut n_tried = 0;
        loop {
            let attempt = state.begin_attempt();
            dest.attempts = attempt;
            let now = Instant::now();
            let exclude = if a.policy.ignore_previous_hosts {
                &tried[..n_tried]
            } else {
                &[][..]
            };
            let ctx = PickCtx {
                now,
                exclude,
                hash: a.hash,
            };
            let idx = routing::pick_endpoint(cluster, &ctx, &mut rand::rng())?;
            if n_tried < tried.len() {
                tried[n_tried] = idx;
                n_tried += 1;
            }
            let ep = &cluster.endpoints[idx];
            dest.workload = ep.workload_name().0.to_string();
            dest.endpoint = Some(ep.addr);
            // A hop the config cannot make (MUTUAL, ISTIO_MUTUAL to an endpoint without a
            // sidecar, no identity to check) is a policy refusal: answered at once, never
            // retried, never held against the endpoint.
            let hop = choose_hop(cluster, ep, self.mtls)?;

            let acquire = cluster.limits.acquire_request(&cluster.spec.policy.pool);
            let acquired = match a.route_deadline {
                Some(d) => tokio::time::timeout_at(d, acquire)
                    .await
                    .map_err(|_| a.route_timed_out())?,
                None => acquire.await,
            };
            let permit = acquired.map_err(|o| overflow(cluster, o))?;
            let mut in_flight = cluster
                .balancer
                .endpoint(idx)
                .map(|e| e.start(Instant::now()));
            let Some(req_body) = body.take() else {
                // Only reachable if a retry was allowed without a body to send: answer
                // with the last outcome's reason rather than send an empty request.
                return Err(ProxyError::new(
                    ErrorKind::UpstreamReset,
                    "the request body could not be replayed for a retry",
                ));
            };
            let up = Request::from_parts(clone_parts(parts), req_body);
            let deadline = resilience::attempt_deadline(
                Instant::now(),
                a.route_deadline,
                a.policy.per_try_timeout,
            );
            let send = self.send(cluster, ep, hop, a.proto, up);
            let sent = match deadline {
                Some((at, kind)) => match tokio::time::timeout_at(at, send).await {
                    Ok(r) => r,
                    Err(_) => Sent::TimedOut(kind),
                },
                None => send.await,
            };

            let done = Instant::now();
            let outcome = match &sent {
                Sent::Response(rsp) => {
                    observe(&mut in_flight, done);
                    // A gRPC failure is HTTP 200 with `grpc-status`: judge the endpoint by
                    // what the status stands for (Envoy), or a dead gRPC backend is never
                    // ejected.
                    let judged = match resilience::retry::grpc_status(rsp.headers()) {
                        Some(code) if a.grpc => resilience::grpc_to_http_status(code),
                        _ => rsp.status(),
                    };
                    cluster
                        .balancer
                        .report(idx, Outcome::Response(judged), done);
                    AttemptOutcome::from_response(rsp.status(), rsp.headers())
                }
                Sent::TimedOut(TimeoutKind::Route) => {
                    observe(&mut in_flight, done);
                    cluster.balancer.report(idx, Outcome::Timeout, done);
                    return Err(a.route_timed_out());
                }
                Sent::TimedOut(TimeoutKind::PerTry) => {
                    observe(&mut in_flight, done);
                    cluster.balancer.report(idx, Outcome::Timeout, done);
                    AttemptOutcome::PerTryTimeout
                }
                Sent::Failed(e) => {
                    let (outcome, report) = classify(e);
                    if let Some(r) = report {
                        cluster.balancer.report(idx, r, done);
                    }
                    outcome
                }
            };
            // Only an outgrown buffer ends retries here; a body the previous attempt still
            // holds (hyper lets go of it asynchronously) is waited for after the back-off.
            if !body.replayable() {
                state.mark_not_replayable();
            }
            let step = state.next(
                a.policy,
                &outcome,
                &cluster.limits,
                &cluster.spec.policy,
                &mut rand::rng(),
            );
            match step {
                RetryStep::Retry { backoff, retry } => {
                    tracing::debug!(
                        cluster = %cluster.spec.name,
                        endpoint = %ep.addr,
                        attempt,
                        retry,
                        backoff_ms = backoff.as_millis() as u64,
                        "retrying"
                    );
                    // The failed attempt's response, slot and load go before the back-off.
                    drop(sent);
                    drop(permit);
                    drop(in_flight);
                    // `checked_add`: a huge configured back-off must not panic the request.
                    let wake = Instant::now().checked_add(backoff);
                    match (a.route_deadline, wake) {
                        (Some(d), None) => {
                            tokio::time::sleep_until(d).await;
                            return Err(a.route_timed_out());
                        }
                        (Some(d), Some(w)) if d <= w => {
                            tokio::time::sleep_until(d).await;
                            return Err(a.route_timed_out());
                        }
                        (_, Some(w)) => tokio::time::sleep_until(w).await,
                        (None, None) => tokio::time::sleep(backoff).await,
                    }
                    if !body.released().await {
                        dest.retry_stop = Some(RetryStop::BodyNotReplayable);
                        return Err(ProxyError::new(
                            ErrorKind::UpstreamReset,
                            format!(
                                "attempt {attempt} to {} failed and the request body was still \
                                 held by it, so it was not retried",
                                ep.addr
                            ),
                        )
                        .with_reason(Reason::UpstreamReset));
                    }
                    // No attempt starts at or past the deadline: it would be cut at once and
                    // wrongly held against the endpoint it dialed.
                    if a.route_deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(a.route_timed_out());
                    }
                }
                RetryStep::Stop(why) => {
                    if why != RetryStop::NotRetriable {
                        dest.retry_stop = Some(why);
                    }
                    return match sent {
                        Sent::Response(rsp) => {
                            Ok(relay_response(rsp).map(|b| body::guarded(b, (permit, in_flight))))
                        }
                        Sent::Failed(e) => Err(match outcome.reason(a.policy, attempt) {
                            Some(r) => e.with_reason(r),
                            None => e,
                        }),
                        Sent::TimedOut(_) => {
                            let timeout = a.policy.per_try_timeout.unwrap_or_default();
                            let e = ProxyError::new(
                                ErrorKind::Timeout,
                                format!(
                                    "attempt {attempt} to {} (cluster {}) got no response within \
                                     the per-try timeout of {}",
                                    ep.addr,
                                    cluster.spec.name,
                                    CompactDuration(timeout)
                                ),
                            );
                            Err(match outcome.reason(a.policy, attempt) {
                                Some(r) => e.with_reason(r),
                                None => e,
                            })
                        }
                    };
                }
            }
        }
    }

    /// One attempt to `ep` over `hop`, dialed and pooled as the cluster's `connectionPool`
    /// says.
    async fn send(
        &self,
        cluster: &Cluster,
        ep: &Endpoint,
        hop: Hop,
        proto: AppProtocol,
        mut up: Request<Body>,
    ) -> Sent {
        // A few field copies, no allocation: cheap enough per attempt.
        let profile = DialProfile::from_pool(&cluster.spec.policy.pool);
        let r = match hop {
            Hop::Mesh(peer, security) => {
                let h = up.headers_mut();
                // HTTP/2 carries the authority in :authority; a Host header would duplicate it.
                h.remove(HOST);
                h.insert(DST_PORT_HEADER, HeaderValue::from(ep.addr.port()));
                h.insert(
                    APP_PROTOCOL_HEADER,
                    HeaderValue::from_static(proto.as_str()),
                );
                self.connector
                    .mesh_request(peer, &security, &profile, up)
                    .await
            }
            Hop::Direct => {
                self.connector
                    .http_request(ep.addr, proto, &profile, up)
                    .await
            }
            Hop::Originate(tls) => {
                self.connector
                    .origin_request(ep.addr, &tls, proto, &profile, up)
                    .await
            }
        };
        match r {
            Ok(rsp) => Sent::Response(rsp),
            Err(e) => Sent::Failed(e),
        }
    }

    /// An intercepted request to a destination no service has: sent on unchanged to `dst`
    /// as plain HTTP under ALLOW_ANY, refused (502 `registry_only(<dst>)`) under REGISTRY_ONLY.
    /// No retries, faults or limits: no config governs the destination.
    async fn passthrough_http(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        authority: &str,
        dst: SocketAddr,
        proto: AppProtocol,
        dest: &mut Dest,
    ) -> Result<Response<Body>, ProxyError> {
        if snapshot.outbound_traffic_policy() == OutboundTrafficPolicy::RegistryOnly {
            self.metrics.outbound_refused("registry_only");
            tracing::info!(%dst, host = authority, "refused: no service has this address and \
                the outbound traffic policy is REGISTRY_ONLY");
            return Err(registry_only(dst));
        }
        dest.service = PASSTHROUGH.to_string();
        dest.endpoint = Some(dst);
        dest.attempts = 1;
        let (parts, body) = upstream_head(req, authority)?;
        let up = Request::from_parts(parts, body::boxed(body));
        // No DestinationRule governs an unknown destination: the proxy's default dial settings.
        let rsp = self
            .connector
            .http_request(dst, proto, self.connector.local_profile(), up)
            .await?;
        Ok(relay_response(rsp))
    }

    async fn connect(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
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
        let (upstream, held, addr) = self.open_tcp(&decision, conn, dest).await?;
        tokio::spawn(async move {
            // The connection counts against the pool and the endpoint's load until it ends.
            let _held = held;
            splice_upgrade(req, upstream, addr).await;
        });
        Ok(Response::new(body::empty()))
    }

    /// The upstream of an opaque TCP stream (CONNECT, or intercepted TCP) routed by
    /// `decision`: an endpoint picked, a connection-pool slot taken, and the tunnel open (mesh
    /// hop to the peer proxy, plain TCP, or originated TLS). Connecting before answering
    /// CONNECT makes a failure a readable 503 instead of a dead tunnel.
    pub(crate) async fn open_tcp(
        &self,
        decision: &routing::TcpDecision,
        conn: &ConnInfo,
        dest: &mut Dest,
    ) -> Result<(Tunnel, TcpHeld, SocketAddr), ProxyError> {
        let cluster = &decision.cluster;
        dest.service = decision
            .service
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        dest.subset = cluster.spec.subset.clone();
        // Opaque TCP has no header to hash: only `useSourceIp` affinity applies.
        let hash = cluster.balancer.hash_policy().and_then(|p| {
            let headers = http::HeaderMap::new();
            let input = HashInput {
                headers: &headers,
                query: None,
                source_ip: Some(conn.peer.ip()),
            };
            balance::affinity(p, &input, &mut rand::rng()).hash
        });
        let now = Instant::now();
        let ctx = PickCtx {
            now,
            exclude: &[],
            hash,
        };
        let idx = routing::pick_endpoint(cluster, &ctx, &mut rand::rng())?;
        let ep = &cluster.endpoints[idx];
        dest.workload = ep.workload_name().0.to_string();
        dest.endpoint = Some(ep.addr);
        dest.attempts = 1;
        let permit = cluster
            .limits
            .acquire_connection(&cluster.spec.policy.pool)
            .map_err(|o| overflow(cluster, o))?;
        let in_flight = cluster.balancer.endpoint(idx).map(|e| e.start(now));

        // Connect before answering, so a failure is a readable 503 instead of a dead tunnel.
        // The cluster's connect timeout bounds the dial, its TCP idle timeout the tunnel.
        let profile = DialProfile::from_pool(&cluster.spec.policy.pool);
        let connected = match choose_hop(cluster, ep, self.mtls)? {
            Hop::Mesh(peer, security) => {
                self.connector
                    .mesh_tunnel(peer, &security, &profile, ep.addr)
                    .await
            }
            Hop::Direct => self.connector.tcp(ep.addr, &profile).await,
            Hop::Originate(tls) => self.connector.origin_tunnel(ep.addr, &tls, &profile).await,
        };
        let upstream = match connected {
            Ok(u) => {
                cluster
                    .balancer
                    .report(idx, Outcome::Connected, Instant::now());
                u
            }
            Err(e) => {
                if let (_, Some(r)) = classify(&e) {
                    cluster.balancer.report(idx, r, Instant::now());
                }
                return Err(e);
            }
        };
        Ok((upstream, (permit, in_flight), ep.addr))
    }
}

/// The request head as it goes upstream: connection-scoped headers removed, the target made
/// absolute (`http://<authority><path?query>`) whatever form the app used.
pub(crate) fn upstream_head(
    req: Request<Incoming>,
    authority: &str,
) -> Result<(http::request::Parts, Incoming), ProxyError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::try_from(format!("http://{authority}{pq}"))
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("bad request target: {e}")))?;
    Ok((parts, body))
}

/// What the attempt loop needs to know about the request's route and cluster.
struct Attempts<'a> {
    cluster: &'a Arc<Cluster>,
    policy: &'a RetryPolicy,
    proto: AppProtocol,
    /// Whether the request is gRPC (its outcomes are judged by `grpc-status`).
    grpc: bool,
    /// The affinity hash, the same for every attempt.
    hash: Option<u64>,
    /// The route's timeout and the deadline it sets (from the request's arrival, after any
    /// fault delay).
    route_timeout: Option<std::time::Duration>,
    route_deadline: Option<Instant>,
}

impl Attempts<'_> {
    /// The answer when the route's deadline passed.
    fn route_timed_out(&self) -> ProxyError {
        route_timeout(self.route_timeout.unwrap_or_default())
    }
}

/// Feeds the latency estimate once the response head (or the timeout) arrived.
fn observe(in_flight: &mut Option<InFlight>, now: Instant) {
    if let Some(f) = in_flight {
        f.observe(now);
    }
}

/// A failed attempt as the retry policy and outlier detection see it. Failures on the way to
/// the endpoint (connect, TLS, identity) are connect failures, a dial past the cluster's
/// connect timeout a connect timeout (retried as a connect failure, answered
/// `connect_timeout(<d>)`); a failure after the request went out is a reset, an HTTP/2
/// REFUSED_STREAM a refused stream (the `refused-stream` retry condition). Policy refusals
/// (MUTUAL unsupported, ...) are neither: not retried, not held against the endpoint.
fn classify(e: &ProxyError) -> (AttemptOutcome, Option<Outcome>) {
    match e.kind {
        ErrorKind::UpstreamConnectFailed
        | ErrorKind::UpstreamTlsFailed
        | ErrorKind::UpstreamIdentityMismatch => (
            AttemptOutcome::ConnectFailure,
            Some(Outcome::ConnectFailure),
        ),
        ErrorKind::UpstreamConnectTimeout => {
            // The connector always attaches the timeout; the default is only a fallback.
            let d = match e.reason {
                Some(Reason::ConnectTimeout(d)) => d,
                _ => resilience::config::DEFAULT_CONNECT_TIMEOUT,
            };
            (
                AttemptOutcome::ConnectTimeout(d),
                Some(Outcome::ConnectFailure),
            )
        }
        ErrorKind::UpstreamReset => (
            AttemptOutcome::Reset { request_sent: true },
            Some(Outcome::Reset),
        ),
        ErrorKind::UpstreamRefusedStream => (AttemptOutcome::RefusedStream, Some(Outcome::Reset)),
        // Not an upstream outcome at all: a response the caller must see as is.
        _ => (
            AttemptOutcome::Response {
                status: e.status().as_u16(),
                grpc_status: None,
            },
            None,
        ),
    }
}

/// 503 for a request refused by the cluster's connection-pool limits.
fn overflow(cluster: &Cluster, o: resilience::Overflow) -> ProxyError {
    ProxyError::new(
        ErrorKind::UpstreamOverflow,
        format!(
            "cluster {} is at its connection-pool limit ({o}): the request was not sent",
            cluster.spec.name
        ),
    )
    .with_reason(Reason::UpstreamOverflow(o))
}

/// 502 for an intercepted request to an unknown destination under REGISTRY_ONLY.
fn registry_only(dst: SocketAddr) -> ProxyError {
    ProxyError::new(
        ErrorKind::RegistryOnly,
        format!(
            "no service of the mesh has the address {dst}, and the mesh's outbound traffic \
             policy is REGISTRY_ONLY: the request was not sent"
        ),
    )
    .with_reason(Reason::RegistryOnly(dst))
}

/// 504 for a request whose route timeout expired.
fn route_timeout(timeout: std::time::Duration) -> ProxyError {
    ProxyError::new(
        ErrorKind::Timeout,
        format!(
            "no response within the route's timeout of {}",
            CompactDuration(timeout)
        ),
    )
    .with_reason(Reason::Timeout(timeout))
}

/// A copy of the request head for one attempt. `Parts` is not `Clone` (extensions are not),
/// and the proxy puts nothing in extensions that an upstream needs.
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
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
pub(crate) fn relay_response(mut rsp: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(rsp.headers_mut());
    rsp
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

mod transparent;

pub use transparent::{DEFAULT_DETECT_TIMEOUT, Transparent};

#[cfg(test)]
mod tests;
