//! Plain data types of the snapshot. They mirror the wire resources but hold parsed values
//! (socket addresses, compiled regexes, header names) so the data path never re-validates.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Serialize, Serializer};

/// Mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mesh {
    pub trust_domain: String,
    pub dns_domain: String,
    /// PEM roots peers may chain to (several during a root rotation); empty: keep the
    /// bootstrap roots (`--ca-root`).
    pub trust_bundle: Vec<String>,
    /// What to do with outbound traffic to an address no service claims.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Istio's `outboundTrafficPolicy.mode`, for destinations [`super::Snapshot::service_for_addr`]
/// does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Pass the connection through to its original destination, unchanged (Istio's default).
    #[default]
    AllowAny,
    /// Refuse it, saying the destination is not in the mesh's registry.
    RegistryOnly,
}

/// PeerAuthentication mode of an inbound port, resolved by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// mTLS and plaintext (also what "unspecified" means, as in Istio).
    #[default]
    Permissive,
    Strict,
    Disable,
}

/// DestinationRule `tls.mode` as the client side applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamTlsMode {
    /// mTLS to endpoints with a sidecar, plaintext to the others.
    #[default]
    Auto,
    Disable,
    IstioMutual,
    /// TLS origination to the endpoint (a server outside the mesh), verified per
    /// [`OriginationTls`].
    Simple,
    /// Like SIMPLE plus a client certificate, which the wire format cannot carry yet: requests
    /// are refused (503 `upstream-tls-unsupported`), the config is not.
    Mutual,
}

/// Where SIMPLE's roots come from (`UpstreamTls.ca_certificates`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaCertificates {
    /// Empty: the compiled-in Mozilla roots (webpki-roots).
    System,
    /// PEM text given inline (checked at apply time).
    Inline(String),
    /// A path on the proxy's filesystem, as in Istio; read when a snapshot is built.
    File(String),
}

/// SIMPLE/MUTUAL settings as configured (DestinationRule `trafficPolicy.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OriginationTls {
    /// Empty: the cluster's service host.
    pub sni: String,
    pub subject_alt_names: Vec<String>,
    pub ca_certificates: CaCertificates,
    pub insecure_skip_verify: bool,
}

/// The roots a SIMPLE server must chain to, loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsRoots {
    System,
    Certs(Arc<[rustls_pki_types::CertificateDer<'static>]>),
}

/// SIMPLE TLS origination ready for the data path: SNI resolved, roots loaded. Built with the
/// snapshot, so a handshake reads no file. Equality is by content (it is part of the pool key:
/// two clusters share TLS connections only when they verify the same way); the hash is
/// computed once.
#[derive(Debug)]
pub struct SimpleTls {
    /// The cluster, for logs and error bodies (not part of equality).
    pub cluster: String,
    /// SNI and, without `subject_alt_names`, the name the certificate must be valid for.
    pub server_name: String,
    pub subject_alt_names: Vec<String>,
    pub roots: TlsRoots,
    pub insecure_skip_verify: bool,
    hash: u64,
}

impl SimpleTls {
    pub fn new(
        cluster: String,
        server_name: String,
        subject_alt_names: Vec<String>,
        roots: TlsRoots,
        insecure_skip_verify: bool,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &server_name,
            &subject_alt_names,
            &roots,
            insecure_skip_verify,
        )
            .hash(&mut h);
        Self {
            cluster,
            server_name,
            subject_alt_names,
            roots,
            insecure_skip_verify,
            hash: h.finish(),
        }
    }
}

impl PartialEq for SimpleTls {
    fn eq(&self, o: &Self) -> bool {
        self.hash == o.hash
            && self.server_name == o.server_name
            && self.subject_alt_names == o.subject_alt_names
            && self.insecure_skip_verify == o.insecure_skip_verify
            && self.roots == o.roots
    }
}

impl Eq for SimpleTls {}

impl std::hash::Hash for SimpleTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The workload this proxy serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inbound {
    pub name: String,
    pub namespace: String,
    pub address: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub identity: String,
    pub ports: Vec<Port>,
    /// The mode for every port without an override.
    pub mtls_mode: MtlsMode,
    /// Per target port overrides.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
}

impl Inbound {
    /// The PeerAuthentication mode for target `port`.
    pub fn mtls_mode_for(&self, port: u16) -> MtlsMode {
        self.port_mtls.get(&port).copied().unwrap_or(self.mtls_mode)
    }

    /// Whether some port accepts plaintext / TLS at all, for decisions taken before the
    /// port is known (at accept).
    pub fn any_port_allows(&self, tls: bool) -> bool {
        let refuses = if tls {
            MtlsMode::Disable
        } else {
            MtlsMode::Strict
        };
        self.mtls_mode != refuses || self.port_mtls.values().any(|m| *m != refuses)
    }

    /// Whether the application serves `port` (a target port, as carried by the mesh hop).
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.iter().any(|p| p.target() == port)
    }

    /// The declared port whose target is `port`, for its protocol.
    pub fn port(&self, port: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.target() == port)
    }
}

/// Application protocol of a port or cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Unspecified,
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    /// Port on the workload; equal to `number` when the wire said 0.
    pub target_port: u16,
}

impl Port {
    pub fn target(&self) -> u16 {
        self.target_port
    }

    /// The protocol the port declares, as protocol detection reads it: its resolved protocol
    /// when known, else its name (Istio's `<proto>[-suffix]` naming).
    pub fn declared_protocol(&self) -> &str {
        match self.protocol {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Https => "https",
            Protocol::Unspecified => self.name.as_str(),
        }
    }
}

/// Routing for one host.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub aliases: Vec<String>,
    pub ports: Vec<Port>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub origin: String,
    /// Virtual addresses (ServiceEntry `addresses`, later a ClusterIP): a connection whose
    /// original destination falls in one, on one of `ports`, is this service's traffic.
    /// Empty: reached by name only. Indexed by the snapshot (`service_for_addr`).
    pub addresses: Vec<super::net::IpNet>,
}

impl Service {
    /// Whether the service listens on `port`; a service that declares no ports accepts any.
    pub fn has_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p.number == port)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpRoute {
    pub name: String,
    /// Any one selects the route; empty selects every request.
    pub matches: Vec<HttpMatch>,
    pub clusters: Vec<WeightedCluster>,
    /// The whole request's bound (Istio `timeout`); `None`: unbounded.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Always present: Istio's default policy when the route wrote none. Shared, so a
    /// request clones a pointer, not the policy.
    pub retries: Arc<crate::resilience::RetryPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Arc<crate::resilience::Fault>>,
}

/// One Istio `HTTPMatchRequest`: every present condition must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpMatch {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

/// A string condition. Regexes are compiled once, anchored, with Istio's whole-value semantics.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }

    /// Exact and prefix comparisons ignoring ASCII case (Istio's `ignoreUriCase` leaves regexes
    /// alone).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value.eq_ignore_ascii_case(s),
            Self::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpRoute {
    /// `None` matches any port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub clusters: Vec<WeightedCluster>,
}

/// The simple load-balancing algorithms (Istio `loadBalancer.simple`).
pub use crate::balance::Simple as LbPolicy;

/// A cluster as the control plane described it, before it is joined with its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    pub name: String,
    pub service: String,
    pub port: u16,
    pub subset: String,
    pub protocol: Protocol,
    /// How endpoints are picked (DestinationRule `loadBalancer`).
    pub lb: crate::balance::LbConfig,
    /// Passive health checking (DestinationRule `outlierDetection`); `None`: no ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<crate::balance::OutlierConfig>,
    pub tls: UpstreamTlsMode,
    /// SIMPLE/MUTUAL settings; `None` for the other modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origination: Option<OriginationTls>,
    /// Secure naming: the SPIFFE IDs a server of this cluster may present; empty means
    /// each endpoint's own `identity`.
    pub identities: Vec<String>,
    /// Connection-pool limits and retry budget (DestinationRule `connectionPool`,
    /// `retryBudget`).
    pub policy: crate::resilience::ClusterPolicy,
}

/// A cluster joined with its endpoints and its live state.
#[derive(Debug, Serialize)]
pub struct Cluster {
    #[serde(flatten)]
    pub spec: Arc<ClusterSpec>,
    pub endpoints: Arc<[Endpoint]>,
    /// SIMPLE only: the loaded TLS settings, or why they could not be loaded (an unreadable
    /// `ca_certificates` file), which then fails this cluster's requests (not the config).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_origination"
    )]
    pub origination: Option<Result<Arc<SimpleTls>, String>>,
    /// Picks endpoints (indices into `endpoints`) and takes their outcomes. Built for this
    /// config and endpoint set (ring and Maglev tables included), on endpoint state that
    /// outlives snapshots: see [`ClusterRuntime`].
    #[serde(rename = "endpoint_health", serialize_with = "ser_balancer")]
    pub balancer: Arc<crate::balance::Balancer>,
    /// Live connection-pool and retry counters (shared across snapshots).
    #[serde(skip)]
    pub limits: Arc<crate::resilience::ClusterLimits>,
}

/// The state of a cluster that must survive config updates: endpoint health (outlier
/// ejections, latency estimates, in-flight counts, warmup start) and the circuit breaker's
/// counters. A snapshot is rebuilt on every update; without this, each push would forgive
/// every ejected endpoint and reset every limit.
#[derive(Debug, Clone)]
pub struct ClusterRuntime {
    pub balance: Arc<crate::balance::ClusterState>,
    pub limits: Arc<crate::resilience::ClusterLimits>,
}

impl ClusterRuntime {
    pub fn new(now: tokio::time::Instant) -> Self {
        Self {
            balance: crate::balance::ClusterState::new(now),
            limits: crate::resilience::ClusterLimits::new(),
        }
    }
}

impl Cluster {
    /// Joins `spec` with `endpoints` on fresh runtime state (tests, and a cluster seen for
    /// the first time); see [`Cluster::with_runtime`].
    pub fn new(spec: Arc<ClusterSpec>, endpoints: Arc<[Endpoint]>) -> Self {
        let now = tokio::time::Instant::now();
        Self::with_runtime(spec, endpoints, &ClusterRuntime::new(now), None, now)
    }

    /// Joins `spec` with `endpoints` on `runtime`. For SIMPLE this loads the roots (reads
    /// the `ca_certificates` file when it is a path). The balancer of `previous` (the same
    /// cluster in the snapshot being replaced) is kept when neither the balancing config nor
    /// the endpoints changed, so an update elsewhere in the mesh does not rebuild hash tables.
    pub fn with_runtime(
        spec: Arc<ClusterSpec>,
        endpoints: Arc<[Endpoint]>,
        runtime: &ClusterRuntime,
        previous: Option<&Cluster>,
        now: tokio::time::Instant,
    ) -> Self {
        let origination = match (&spec.tls, &spec.origination) {
            (UpstreamTlsMode::Simple, Some(o)) => Some(resolve_simple(&spec, o).map(Arc::new)),
            (UpstreamTlsMode::Simple, None) => Some(Ok(Arc::new(SimpleTls::new(
                spec.name.clone(),
                spec.service.clone(),
                Vec::new(),
                TlsRoots::System,
                false,
            )))),
            _ => None,
        };
        let members: Vec<(SocketAddr, u32)> =
            endpoints.iter().map(|e| (e.addr, e.weight)).collect();
        let balancer = match previous {
            Some(p)
                // Same runtime (the limits stand for it) and same inputs.
                if Arc::ptr_eq(&p.limits, &runtime.limits)
                    && p.balancer
                        .same_inputs(&spec.lb, spec.outlier.as_ref(), &members) =>
            {
                p.balancer.clone()
            }
            _ => Arc::new(runtime.balance.balancer(
                spec.lb.clone(),
                spec.outlier.clone(),
                &members,
                now,
            )),
        };
        if previous.is_some_and(|p| p.spec.policy.pool != spec.policy.pool) {
            runtime.limits.update_limits(&spec.policy.pool);
        }
        Self {
            spec,
            endpoints,
            origination,
            balancer,
            limits: runtime.limits.clone(),
        }
    }
}

fn ser_balancer<S: Serializer>(b: &Arc<crate::balance::Balancer>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(b.stats(tokio::time::Instant::now()))
}

/// SIMPLE settings -> what a dial needs. Errors are sentences for the 503 body.
fn resolve_simple(spec: &ClusterSpec, o: &OriginationTls) -> Result<SimpleTls, String> {
    let server_name = if o.sni.is_empty() {
        spec.service.clone()
    } else {
        o.sni.clone()
    };
    let roots = match &o.ca_certificates {
        CaCertificates::System => TlsRoots::System,
        CaCertificates::Inline(pem) => TlsRoots::Certs(parse_pem_certs(pem)?.into()),
        CaCertificates::File(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read ca_certificates file {path}: {e}"))?;
            TlsRoots::Certs(
                parse_pem_certs(&pem)
                    .map_err(|e| format!("ca_certificates file {path}: {e}"))?
                    .into(),
            )
        }
    };
    if o.insecure_skip_verify {
        warn_insecure_once(&spec.name);
    }
    Ok(SimpleTls::new(
        spec.name.clone(),
        server_name,
        o.subject_alt_names.clone(),
        roots,
        o.insecure_skip_verify,
    ))
}

/// Every certificate of a PEM text; at least one.
pub(crate) fn parse_pem_certs(
    pem: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// `insecure_skip_verify` deserves a warning, but snapshots are rebuilt on every update: once
/// per cluster name is enough.
fn warn_insecure_once(cluster: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.insert(cluster.to_string()) {
        tracing::warn!(
            cluster,
            "tls.insecureSkipVerify: the server's certificate is NOT verified for this cluster"
        );
    }
}

fn ser_origination<S: Serializer>(
    o: &Option<Result<Arc<SimpleTls>, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match o {
        Some(Ok(t)) => s.serialize_str(&format!("SIMPLE to {}", t.server_name)),
        Some(Err(e)) => s.serialize_str(&format!("unusable: {e}")),
        None => s.serialize_none(),
    }
}

/// One workload behind a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Where the application listens (`address:port`).
    pub addr: SocketAddr,
    /// The peer proxy's inbound port; `None` when the workload has no sidecar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_port: Option<u16>,
    pub identity: String,
    /// At least 1.
    pub weight: u32,
    /// "<namespace>/<name>" of the workload, empty when unknown.
    pub workload: String,
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// The peer proxy's address, when the workload has one.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh_port.map(|p| SocketAddr::new(self.addr.ip(), p))
    }

    /// The workload's name and namespace from "<namespace>/<name>".
    pub fn workload_name(&self) -> (&str, &str) {
        match self.workload.split_once('/') {
            Some((ns, name)) => (name, ns),
            None => (self.workload.as_str(), ""),
        }
    }
}

// === impl Serialize (types holding parsed values) ===

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Exact(v) => m.serialize_entry("exact", v)?,
            Self::Prefix(v) => m.serialize_entry("prefix", v)?,
            // Show the pattern as configured, without the anchors added at compile time.
            Self::Regex(r) => m.serialize_entry("regex", unanchor(r.as_str()))?,
        }
        m.end()
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HeaderMatch", 2)?;
        st.serialize_field("name", self.name.as_str())?;
        st.serialize_field("value", &self.value)?;
        st.end()
    }
}

pub(crate) const ANCHOR_START: &str = "^(?:";
pub(crate) const ANCHOR_END: &str = ")$";

fn unanchor(p: &str) -> &str {
    p.strip_prefix(ANCHOR_START)
        .and_then(|p| p.strip_suffix(ANCHOR_END))
        .unwrap_or(p)
}

mod opt_duration {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}
