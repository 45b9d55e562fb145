//! Per-proxy translation: the effective [`Model`] in, the proxy's xDS resources out.
//!
//! Pure and deterministic (DESIGN.md: "each proxy gets only what it needs"; STYLE.md §8 row
//! 3: decide in pure functions): no I/O, no clocks, everything sorted, so equal models give
//! equal resources and the xDS cache can compare outputs to skip pushes. Golden tests in
//! `tests/golden.rs` pin the output.
//!
//! Output, by type (see mesh.proto for the semantics of each field):
//! - `Mesh` "mesh": trust and DNS domains, trust bundle, outbound traffic policy.
//! - `Inbound` "inbound": the proxy's own WorkloadEntry (`<name>.<namespace>` node id), if any,
//!   with its PeerAuthentication resolved ([`mtls::resolve_peer_authentication`]).
//! - `Service` per visible ServiceEntry host: aliases, addresses, ports, HTTP and TCP routes
//!   from the VirtualService for that host, then default routes so that every request has a
//!   route.
//! - `Cluster` per port and per DestinationRule subset: `outbound|<port>|<subset>|<fqdn>`,
//!   with the DestinationRule's client TLS ([`mtls::upstream_tls`]) and the service's
//!   expected identities (secure naming, [`mtls::service_identities`]).
//! - `Endpoints` per cluster: the selected WorkloadEntries and inline endpoints.

pub mod mtls;
mod render;
pub mod resilience;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_types::Any;
use weft_api::mesh;
use weft_api::type_url::{self, Resource as _};

use crate::diag::{Kind, ObjectRef};
use crate::host;
use crate::kinds::{
    self, DestinationRule, HttpMatchRequest, LoadBalancerSettings, PortTrafficPolicy, ServiceEntry,
    TrafficPolicy, VirtualService, WorkloadEntry, labels_match,
};
use crate::model::{Model, OutboundTrafficPolicy};
use crate::parse::Object;

pub use render::to_json;

/// Port of every sidecar's inbound listener (DESIGN.md's port table).
pub const INBOUND_PORT: u32 = 15006;

/// Which proxy to translate for: its WorkloadEntry's name and namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProxyId {
    pub name: String,
    pub namespace: String,
}

/// A node id that is not `<name>.<namespace>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node id {0:?}: expected \"<name>.<namespace>\" (the proxy's WorkloadEntry or pod name, a dot, its namespace)"
)]
pub struct NodeIdError(pub String);

impl ProxyId {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// Parses `<name>.<namespace>`, split at the first dot. Weft forbids dots in
    /// WorkloadEntry names (validation rejects them) so the split is unambiguous; the
    /// namespace, a DNS label, never has one.
    pub fn from_node_id(node_id: &str) -> Result<Self, NodeIdError> {
        match node_id.split_once('.') {
            Some((name, namespace))
                if !name.is_empty() && !namespace.is_empty() && !namespace.contains('.') =>
            {
                Ok(Self::new(name, namespace))
            }
            _ => Err(NodeIdError(node_id.to_string())),
        }
    }

    /// The node id, `<name>.<namespace>`.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

impl std::fmt::Display for ProxyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// One proxy's resources, packed: type URL -> resource name -> `Any`. Every type of
/// [`type_url::ALL`] is present, possibly with an empty map, so that a proxy subscribed to
/// a type can be told "nothing" rather than left waiting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

/// One proxy's resources, typed (what [`ProxyResources`] packs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    pub mesh: mesh::Mesh,
    pub inbound: Option<mesh::Inbound>,
    pub services: Vec<mesh::Service>,
    pub clusters: Vec<mesh::Cluster>,
    pub endpoints: Vec<mesh::Endpoints>,
}

impl Translated {
    /// Packs every resource into `Any`s by type URL and name.
    pub fn pack(&self) -> ProxyResources {
        let mut by_type = self.pack_own();
        by_type.extend(self.pack_outbound());
        ProxyResources { by_type }
    }

    /// The proxy's own resources, packed: [`OWN_TYPES`] (Mesh, and Inbound if it has one).
    pub fn pack_own(&self) -> BTreeMap<&'static str, BTreeMap<String, Any>> {
        let mut mesh = BTreeMap::new();
        mesh.insert(type_url::MESH_NAME.to_string(), self.mesh.to_any());
        let mut inbound = BTreeMap::new();
        if let Some(i) = &self.inbound {
            inbound.insert(type_url::INBOUND_NAME.to_string(), i.to_any());
        }
        BTreeMap::from([(type_url::MESH, mesh), (type_url::INBOUND, inbound)])
    }

    /// The outbound resources, packed: [`OUTBOUND_TYPES`] (services, clusters, endpoints),
    /// the same for every proxy with the same [`OutboundKey`].
    pub fn pack_outbound(&self) -> BTreeMap<&'static str, BTreeMap<String, Any>> {
        let services = self.services.iter().map(|s| (s.name.clone(), s.to_any()));
        let clusters = self.clusters.iter().map(|c| (c.name.clone(), c.to_any()));
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| (e.cluster.clone(), e.to_any()));
        BTreeMap::from([
            (type_url::SERVICE, services.collect()),
            (type_url::CLUSTER, clusters.collect()),
            (type_url::ENDPOINTS, endpoints.collect()),
        ])
    }
}

/// The types only the proxy itself determines (its workload and the mesh settings).
pub const OWN_TYPES: [&str; 2] = [type_url::MESH, type_url::INBOUND];
/// The types determined by the model, the proxy's namespace and its [`OutboundKey`].
pub const OUTBOUND_TYPES: [&str; 3] = [type_url::SERVICE, type_url::CLUSTER, type_url::ENDPOINTS];

/// What a proxy's outbound resources (services, clusters, endpoints) depend on besides the
/// model: its namespace, and which of the model's workload-label conditions its workload
/// meets (DestinationRule `workloadSelector`s, VirtualService `sourceLabels`). Proxies with
/// equal keys get identical outbound resources, so the control plane translates them once
/// per model and shares the result; only Mesh and Inbound are per proxy. (A fan-out to N
/// proxies otherwise repeats the whole translation N times.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboundKey {
    namespace: String,
    /// One entry per label condition of the model, in the model's (stable) order.
    selected: Vec<bool>,
}

/// The [`OutboundKey`] of `proxy`. It must read every proxy-dependent input of
/// [`Cx::service`], [`Cx::destination_rule`] and [`Cx::endpoints`]: the namespace, and the
/// labels only through [`Cx::source_matches`] and the workloadSelector test of
/// [`Cx::destination_rule`].
pub fn outbound_key(model: &Model, proxy: &ProxyId) -> OutboundKey {
    let labels = model
        .workload_entries
        .get(&ObjectRef::new(
            Kind::WorkloadEntry,
            proxy.namespace.clone(),
            proxy.name.clone(),
        ))
        .map(|w| &w.spec.labels);
    let meets = |wanted: &BTreeMap<String, String>| labels.is_some_and(|l| labels_match(wanted, l));
    let mut selected = Vec::new();
    for dr in model.destination_rules.values() {
        if let Some(sel) = &dr.spec.workload_selector {
            selected
                .push(dr.namespace() == proxy.namespace && labels.is_some_and(|l| sel.matches(l)));
        }
    }
    for vs in model.virtual_services.values() {
        let http = vs
            .spec
            .http
            .iter()
            .flat_map(|r| &r.matches)
            .map(|m| &m.source_labels);
        let tcp = vs
            .spec
            .tcp
            .iter()
            .flat_map(|r| &r.matches)
            .map(|m| &m.source_labels);
        for wanted in http.chain(tcp).filter(|w| !w.is_empty()) {
            selected.push(meets(wanted));
        }
    }
    OutboundKey {
        namespace: proxy.namespace.clone(),
        selected,
    }
}

/// Only the proxy's own resources (Mesh and Inbound), without translating its services:
/// what a proxy needs when its outbound half is already known by its [`OutboundKey`].
pub fn translate_own(model: &Model, proxy: &ProxyId) -> Translated {
    let cx = Cx::without_services(model, proxy);
    Translated {
        mesh: mesh_resource(model),
        inbound: cx.inbound(),
        ..Default::default()
    }
}

fn mesh_resource(model: &Model) -> mesh::Mesh {
    mesh::Mesh {
        trust_domain: model.settings.trust_domain.clone(),
        dns_domain: model.settings.dns_domain.clone(),
        trust_bundle: model.settings.trust_bundle.clone(),
        outbound_traffic_policy: match model.settings.outbound_traffic_policy {
            OutboundTrafficPolicy::AllowAny => mesh::OutboundTrafficPolicy::AllowAny,
            OutboundTrafficPolicy::RegistryOnly => mesh::OutboundTrafficPolicy::RegistryOnly,
        } as i32,
    }
}

/// Translates the model for one proxy, packed for xDS.
pub fn for_proxy(model: &Model, proxy: &ProxyId) -> ProxyResources {
    translate(model, proxy).pack()
}

/// Istio's cluster name: `outbound|<port>|<subset>|<fqdn>`.
pub fn cluster_name(port: u32, subset: &str, fqdn: &str) -> String {
    format!("outbound|{port}|{subset}|{fqdn}")
}

/// Translates the model for one proxy, typed.
pub fn translate(model: &Model, proxy: &ProxyId) -> Translated {
    let cx = Cx::new(model, proxy);
    let mut out = Translated {
        mesh: mesh_resource(model),
        inbound: cx.inbound(),
        ..Default::default()
    };
    for svc in cx.services.values() {
        out.services.push(cx.service(svc));
        let dr = cx.destination_rule(&svc.fqdn, svc.se.namespace());
        let identities = cx.identities(svc);
        for port in &svc.ports {
            let mut subsets: Vec<(&str, Option<&kinds::Subset>)> = vec![("", None)];
            if let Some(dr) = dr {
                subsets.extend(dr.spec.subsets.iter().map(|s| (s.name.as_str(), Some(s))));
            }
            for (name, subset) in subsets {
                let cluster = cluster_name(port.number, name, &svc.fqdn);
                let pool = pick_policy(
                    dr.map(|d| &d.spec),
                    subset,
                    port.number,
                    |p| p.connection_pool.as_ref(),
                    |p| p.connection_pool.as_ref(),
                );
                out.clusters.push(mesh::Cluster {
                    name: cluster.clone(),
                    service: svc.fqdn.clone(),
                    port: port.number,
                    subset: name.to_string(),
                    protocol: port.protocol,
                    load_balancer: Some(resilience::load_balancer(load_balancer(
                        dr.map(|d| &d.spec),
                        subset,
                        port.number,
                    ))),
                    tls: Some(mtls::upstream_tls(dr.map(|d| &d.spec), subset, port.number)),
                    identities: identities.clone(),
                    connection_pool: resilience::connection_pool(pool),
                    outlier_detection: resilience::outlier_detection(pick_policy(
                        dr.map(|d| &d.spec),
                        subset,
                        port.number,
                        |p| p.outlier_detection.as_ref(),
                        |p| p.outlier_detection.as_ref(),
                    )),
                    retry_budget: resilience::retry_budget(dr.map(|d| &d.spec), subset, pool),
                });
                out.endpoints.push(mesh::Endpoints {
                    endpoints: cx.endpoints(svc, port, subset),
                    cluster,
                });
            }
        }
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.endpoints.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    out
}

// === context ===

/// One visible service (a ServiceEntry host).
#[derive(Debug)]
struct Svc<'m> {
    fqdn: String,
    se: &'m Object<ServiceEntry>,
    ports: Vec<mesh::Port>,
}

struct Cx<'m> {
    model: &'m Model,
    proxy: &'m ProxyId,
    /// The proxy's own WorkloadEntry, if it has one.
    workload: Option<&'m Object<WorkloadEntry>>,
    /// Visible services by FQDN.
    services: BTreeMap<String, Svc<'m>>,
    /// WorkloadEntries by (namespace, label key, label value), each list in the model's
    /// order: a selector is checked only against the entries carrying its first label, not
    /// against every entry of the mesh (else a translation costs services × workloads).
    by_label: HashMap<(&'m str, &'m str, &'m str), Vec<&'m Object<WorkloadEntry>>>,
}

impl<'m> Cx<'m> {
    fn new(model: &'m Model, proxy: &'m ProxyId) -> Self {
        let workload = model.workload_entries.get(&ObjectRef::new(
            Kind::WorkloadEntry,
            proxy.namespace.clone(),
            proxy.name.clone(),
        ));
        let mut services = BTreeMap::new();
        for se in model.service_entries.values() {
            if !host::visible(&se.spec.export_to, se.namespace(), &proxy.namespace) {
                continue;
            }
            for h in &se.spec.hosts {
                // A wildcard host has no single name to route on; it is accepted but not
                // translated yet (README: deviations).
                if h.starts_with('*') {
                    continue;
                }
                let fqdn = model.settings.resolve(h, se.namespace());
                // The first ServiceEntry (by namespace/name) for a host wins.
                services.entry(fqdn.clone()).or_insert_with(|| Svc {
                    fqdn,
                    se,
                    ports: service_ports(&se.spec),
                });
            }
        }
        let mut by_label: HashMap<_, Vec<_>> = HashMap::new();
        for we in model.workload_entries.values() {
            for (k, v) in &we.spec.labels {
                by_label
                    .entry((we.namespace(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(we);
            }
        }
        Self {
            model,
            proxy,
            workload,
            services,
            by_label,
        }
    }

    /// The WorkloadEntries of `namespace` that `selector` selects, in the model's order.
    fn selected(
        &self,
        namespace: &str,
        selector: &kinds::WorkloadSelector,
    ) -> Vec<&'m Object<WorkloadEntry>> {
        match selector.labels.iter().next() {
            Some((k, v)) => self
                .by_label
                .get(&(namespace, k.as_str(), v.as_str()))
                .map(|candidates| {
                    candidates
                        .iter()
                        .copied()
                        .filter(|we| selector.matches(&we.spec.labels))
                        .collect()
                })
                .unwrap_or_default(),
            // An empty selector selects every entry of the namespace.
            None => self
                .model
                .workload_entries
                .values()
                .filter(|we| we.namespace() == namespace)
                .collect(),
        }
    }

    /// A context for the proxy's own resources only (no visible services computed).
    fn without_services(model: &'m Model, proxy: &'m ProxyId) -> Self {
        Self {
            model,
            proxy,
            workload: model.workload_entries.get(&ObjectRef::new(
                Kind::WorkloadEntry,
                proxy.namespace.clone(),
                proxy.name.clone(),
            )),
            services: BTreeMap::new(),
            by_label: HashMap::new(),
        }
    }

    fn labels(&self) -> Option<&'m BTreeMap<String, String>> {
        self.workload.map(|w| &w.spec.labels)
    }

    // === inbound ===

    fn inbound(&self) -> Option<mesh::Inbound> {
        let we = self.workload?;
        let settings = &self.model.settings;
        let mut ports: BTreeMap<u32, mesh::Port> = BTreeMap::new();
        for se in self.model.service_entries.values() {
            let selects = se.namespace() == we.namespace()
                && se
                    .spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|s| s.matches(&we.spec.labels));
            if !selects {
                continue;
            }
            for sp in &se.spec.ports {
                ports.entry(sp.number()).or_insert_with(|| mesh::Port {
                    number: sp.number(),
                    name: sp.name.clone().unwrap_or_default(),
                    protocol: protocol(sp.protocol.as_deref()) as i32,
                    target_port: sp.target_for(&we.spec.ports),
                });
            }
        }
        let sa = we.spec.service_account();
        let peer = mtls::resolve_peer_authentication(
            &settings.root_namespace,
            we.namespace(),
            &we.spec.labels,
            self.model.peer_authentications.values(),
        );
        // Port-level modes only for ports the workload serves (the inbound proxy refuses
        // the others anyway), so a policy on an unused port changes no resource.
        let served: BTreeSet<u32> = ports
            .values()
            .map(|p| {
                if p.target_port == 0 {
                    p.number
                } else {
                    p.target_port
                }
            })
            .collect();
        Some(mesh::Inbound {
            name: we.name().to_string(),
            namespace: we.namespace().to_string(),
            address: we.spec.address.clone().unwrap_or_default(),
            labels: we.spec.labels.clone().into_iter().collect(),
            service_account: sa.to_string(),
            identity: settings.spiffe_id(we.namespace(), sa),
            ports: ports.into_values().collect(),
            mtls_mode: peer.mode as i32,
            port_mtls: peer
                .ports
                .into_iter()
                .filter(|(port, _)| served.contains(port))
                .map(|(port, mode)| (port, mode as i32))
                .collect(),
        })
    }

    // === services and routes ===

    fn service(&self, svc: &Svc<'m>) -> mesh::Service {
        let vs = self.virtual_service(&svc.fqdn);
        let mut http = Vec::new();
        let mut tcp = Vec::new();
        if let Some(vs) = vs {
            for (i, route) in vs.spec.http.iter().enumerate() {
                http.extend(self.http_route(vs, i, route));
            }
            for route in &vs.spec.tcp {
                tcp.extend(self.tcp_route(vs, route));
            }
        }
        let several = svc.ports.len() > 1;
        for port in &svc.ports {
            let clusters = vec![mesh::WeightedCluster {
                cluster: cluster_name(port.number, "", &svc.fqdn),
                weight: 100,
            }];
            let match_port = if several { port.number } else { 0 };
            http.push(mesh::HttpRoute {
                name: "default".into(),
                matches: if several {
                    vec![mesh::HttpMatch {
                        port: match_port,
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                clusters: clusters.clone(),
                timeout: None,
                // Istio's default route carries its default retry policy.
                retries: Some(resilience::retry_policy(
                    None,
                    self.hashes(svc, "", &[port.number]),
                )),
                fault: None,
            });
            tcp.push(mesh::TcpRoute {
                port: match_port,
                clusters,
            });
        }
        let origin = match vs {
            Some(vs) => format!("VirtualService {}/{}", vs.namespace(), vs.name()),
            None => format!("ServiceEntry {}/{}", svc.se.namespace(), svc.se.name()),
        };
        mesh::Service {
            name: svc.fqdn.clone(),
            namespace: svc.se.namespace().to_string(),
            aliases: host::aliases(
                &svc.fqdn,
                &self.proxy.namespace,
                &self.model.settings.dns_domain,
            ),
            ports: svc.ports.clone(),
            http,
            tcp,
            // Every host of the ServiceEntry gets all its addresses, as in Istio; validation
            // has checked each is an IP or CIDR, and they go out as written (the proxy
            // parses them).
            addresses: svc.se.spec.addresses.clone(),
            origin,
        }
    }

    /// The VirtualService that routes `fqdn` for this proxy: visible, bound to the mesh,
    /// listing the host. Several may: exact hosts beat wildcards, then the proxy's own
    /// namespace, then namespace/name order (Istio picks the oldest, which files lack).
    fn virtual_service(&self, fqdn: &str) -> Option<&'m Object<VirtualService>> {
        let settings = &self.model.settings;
        self.model
            .virtual_services
            .values()
            .filter(|vs| host::visible(&vs.spec.export_to, vs.namespace(), &self.proxy.namespace))
            .filter(|vs| {
                vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
            })
            .filter_map(|vs| {
                let hosts: Vec<String> = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| settings.resolve(h, vs.namespace()))
                    .collect();
                if hosts.iter().any(|h| h == fqdn) {
                    Some((0u8, vs))
                } else if hosts.iter().any(|h| host::host_matches(h, fqdn)) {
                    Some((1u8, vs))
                } else {
                    None
                }
            })
            .min_by_key(|(rank, vs)| (*rank, vs.namespace() != self.proxy.namespace, &vs.id))
            .map(|(_, vs)| vs)
    }

    /// Whether a match's source conditions hold for this proxy.
    fn source_matches(
        &self,
        source_labels: &BTreeMap<String, String>,
        source_namespace: Option<&String>,
        gateways: &[String],
    ) -> bool {
        let labels_ok = source_labels.is_empty()
            || self
                .labels()
                .is_some_and(|labels| labels_match(source_labels, labels));
        let ns_ok = source_namespace.is_none_or(|ns| *ns == self.proxy.namespace);
        let gw_ok = gateways.is_empty() || gateways.iter().any(|g| g == "mesh");
        labels_ok && ns_ok && gw_ok
    }

    fn http_route(
        &self,
        vs: &Object<VirtualService>,
        index: usize,
        route: &kinds::HttpRoute,
    ) -> Vec<mesh::HttpRoute> {
        // Redirects, direct responses and delegation arrive with a later capability; such
        // routes are skipped rather than sent half-translated.
        if route.route.is_empty() {
            return Vec::new();
        }
        let matches: Vec<mesh::HttpMatch> = route
            .matches
            .iter()
            .filter(|m| {
                self.source_matches(&m.source_labels, m.source_namespace.as_ref(), &m.gateways)
            })
            .map(http_match)
            .collect();
        if !route.matches.is_empty() && matches.is_empty() {
            return Vec::new();
        }
        let dests: Vec<Dest<'_>> = self.destinations(
            vs,
            route
                .route
                .iter()
                .filter_map(|r| r.destination.as_ref().map(|d| (d, r.weight))),
        );
        if dests.is_empty() {
            return Vec::new();
        }
        let name = route
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.http[{index}]", vs.name()));
        // Timeout and retries are kept on a route with a fault, as Istio's translation keeps
        // them; mesh.proto's FaultInjection says how they combine (the fault comes first).
        let timeout = resilience::duration(route.timeout.as_ref());
        let hashed = dests.iter().any(|d| {
            let ports: Vec<u32> = match d.port {
                Some(p) => vec![p],
                None => d.svc.ports.iter().map(|p| p.number).collect(),
            };
            self.hashes(d.svc, d.subset, &ports)
        });
        let retries = Some(resilience::retry_policy(route.retries.as_ref(), hashed));
        let fault = resilience::fault(route.fault.as_ref());
        let mk = |matches: Vec<mesh::HttpMatch>, clusters| mesh::HttpRoute {
            name: name.clone(),
            matches,
            clusters,
            timeout,
            retries: retries.clone(),
            fault,
        };
        let expand_ports = expansion_ports(&dests);
        if expand_ports.is_empty() {
            return vec![mk(matches, clusters_for(&dests, None))];
        }
        let mut out = Vec::new();
        for port in expand_ports {
            let ported: Vec<mesh::HttpMatch> = if matches.is_empty() {
                vec![mesh::HttpMatch {
                    port,
                    ..Default::default()
                }]
            } else {
                matches
                    .iter()
                    .filter(|m| m.port == 0 || m.port == port)
                    .map(|m| mesh::HttpMatch { port, ..m.clone() })
                    .collect()
            };
            let clusters = clusters_for(&dests, Some(port));
            if !ported.is_empty() && !clusters.is_empty() {
                out.push(mk(ported, clusters));
            }
        }
        out
    }

    fn tcp_route(
        &self,
        vs: &Object<VirtualService>,
        route: &kinds::TcpRoute,
    ) -> Vec<mesh::TcpRoute> {
        let mut ports: BTreeSet<u32> = BTreeSet::new();
        for m in &route.matches {
            if self.source_matches(&m.source_labels, m.source_namespace.as_ref(), &m.gateways) {
                ports.insert(m.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0));
            }
        }
        if route.matches.is_empty() {
            ports.insert(0);
        }
        let dests = self.destinations(
            vs,
            route
                .route
                .iter()
                .filter_map(|r| r.destination.as_ref().map(|d| (d, r.weight))),
        );
        if dests.is_empty() {
            return Vec::new();
        }
        let expand_ports = expansion_ports(&dests);
        let mut out = Vec::new();
        if expand_ports.is_empty() {
            for port in ports {
                out.push(mesh::TcpRoute {
                    port,
                    clusters: clusters_for(&dests, None),
                });
            }
        } else {
            for port in expand_ports {
                if ports.contains(&0) || ports.contains(&port) {
                    let clusters = clusters_for(&dests, Some(port));
                    if !clusters.is_empty() {
                        out.push(mesh::TcpRoute { port, clusters });
                    }
                }
            }
        }
        out
    }

    /// Resolves route destinations against the visible services. Destinations to hosts
    /// this proxy cannot see are dropped; so are zero weights next to positive ones
    /// (they get no traffic, and the proxy should not have to know that rule).
    fn destinations<'a>(
        &'a self,
        vs: &Object<VirtualService>,
        routes: impl Iterator<Item = (&'a kinds::Destination, Option<i64>)>,
    ) -> Vec<Dest<'a>> {
        let routes: Vec<_> = routes.collect();
        let single = routes.len() == 1;
        routes
            .into_iter()
            .filter_map(|(d, weight)| {
                let fqdn = self.model.settings.resolve(&d.host, vs.namespace());
                let svc = self.services.get(&fqdn)?;
                // A target that no longer resolves (its subset or port went away after the
                // route was accepted) is dropped rather than sent dangling to the proxy.
                let subset = d.subset.as_deref().unwrap_or("");
                if !subset.is_empty()
                    && !self
                        .destination_rule(&fqdn, svc.se.namespace())
                        .is_some_and(|dr| dr.spec.subsets.iter().any(|s| s.name == subset))
                {
                    return None;
                }
                let port = d
                    .port
                    .as_ref()
                    .and_then(|p| p.number)
                    .and_then(|n| u32::try_from(n).ok());
                if port.is_some_and(|p| !svc.ports.iter().any(|x| x.number == p)) {
                    return None;
                }
                let weight = if single {
                    100
                } else {
                    u32::try_from(weight.unwrap_or(0)).unwrap_or(0)
                };
                (weight > 0).then_some(Dest {
                    svc,
                    subset,
                    port,
                    weight,
                })
            })
            .collect()
    }

    /// Whether some port of `ports` of `svc`'s `subset` balances by consistent hash (Istio
    /// then leaves the previous-hosts predicate out of its default retry policy).
    fn hashes(&self, svc: &Svc<'m>, subset: &str, ports: &[u32]) -> bool {
        let dr = self.destination_rule(&svc.fqdn, svc.se.namespace());
        let subset = dr.and_then(|d| d.spec.subsets.iter().find(|s| s.name == subset));
        ports.iter().any(|port| {
            load_balancer(dr.map(|d| &d.spec), subset, *port)
                .is_some_and(|lb| lb.consistent_hash.is_some())
        })
    }

    // === destination rules and endpoints ===

    /// The DestinationRule that applies to `fqdn` for this proxy. Istio looks in the
    /// proxy's namespace, then the service's, then anywhere (the root namespace); exact
    /// hosts beat wildcards; a rule with a workloadSelector applies only to the workloads
    /// it selects.
    fn destination_rule(
        &self,
        fqdn: &str,
        service_ns: &str,
    ) -> Option<&'m Object<DestinationRule>> {
        let settings = &self.model.settings;
        self.model
            .destination_rules
            .values()
            .filter(|dr| host::visible(&dr.spec.export_to, dr.namespace(), &self.proxy.namespace))
            .filter(|dr| match &dr.spec.workload_selector {
                None => true,
                Some(sel) => {
                    dr.namespace() == self.proxy.namespace
                        && self.labels().is_some_and(|l| sel.matches(l))
                }
            })
            .filter_map(|dr| {
                let h = settings.resolve(&dr.spec.host, dr.namespace());
                if h == fqdn {
                    Some((0u8, dr))
                } else if host::host_matches(&h, fqdn) {
                    Some((1u8, dr))
                } else {
                    None
                }
            })
            .min_by_key(|(rank, dr)| {
                let place = if dr.namespace() == self.proxy.namespace {
                    0u8
                } else if dr.namespace() == service_ns {
                    1
                } else {
                    2
                };
                (place, *rank, &dr.id)
            })
            .map(|(_, dr)| dr)
    }

    /// Secure naming for `svc`: the identities of the WorkloadEntries its ServiceEntry
    /// selects (whatever their subset or port), plus the ServiceEntry's `subjectAltNames`.
    fn identities(&self, svc: &Svc<'m>) -> Vec<String> {
        let settings = &self.model.settings;
        let spiffe: Vec<String> = match &svc.se.spec.workload_selector {
            Some(selector) => self
                .selected(svc.se.namespace(), selector)
                .into_iter()
                .map(|we| settings.spiffe_id(we.namespace(), we.spec.service_account()))
                .collect(),
            None => Vec::new(),
        };
        mtls::service_identities(
            spiffe.iter().map(String::as_str),
            &svc.se.spec.subject_alt_names,
        )
    }

    fn endpoints(
        &self,
        svc: &Svc<'m>,
        port: &mesh::Port,
        subset: Option<&kinds::Subset>,
    ) -> Vec<mesh::Endpoint> {
        let settings = &self.model.settings;
        let Some(sp) = svc.se.spec.ports.iter().find(|p| p.number() == port.number) else {
            return Vec::new();
        };
        let wanted = |labels: &BTreeMap<String, String>| {
            subset.is_none_or(|s| labels_match(&s.labels, labels))
        };
        let mut out = Vec::new();
        if let Some(selector) = &svc.se.spec.workload_selector {
            for we in self.selected(svc.se.namespace(), selector) {
                if !wanted(&we.spec.labels) {
                    continue;
                }
                out.push(mesh::Endpoint {
                    address: we.spec.address.clone().unwrap_or_default(),
                    port: sp.target_for(&we.spec.ports),
                    labels: we.spec.labels.clone().into_iter().collect(),
                    identity: settings.spiffe_id(we.namespace(), we.spec.service_account()),
                    weight: weight(we.spec.weight),
                    // Every WorkloadEntry runs a sidecar (local mode starts one per entry).
                    mesh_port: INBOUND_PORT,
                    workload: format!("{}/{}", we.namespace(), we.name()),
                });
            }
        }
        for ep in &svc.se.spec.endpoints {
            if !wanted(&ep.labels) {
                continue;
            }
            let address = ep.address.clone().unwrap_or_default();
            out.push(mesh::Endpoint {
                port: sp.target_for(&ep.ports),
                labels: ep.labels.clone().into_iter().collect(),
                // Inline endpoints have no sidecar: plain traffic, no identity to check.
                identity: String::new(),
                weight: weight(ep.weight),
                mesh_port: 0,
                workload: address.clone(),
                address,
            });
        }
        out.sort_by(|a, b| {
            (&a.address, a.port, &a.workload).cmp(&(&b.address, b.port, &b.workload))
        });
        out
    }
}

fn weight(w: Option<i64>) -> u32 {
    w.and_then(|w| u32::try_from(w).ok()).unwrap_or(0)
}

/// A resolved route destination.
#[derive(Debug)]
struct Dest<'a> {
    svc: &'a Svc<'a>,
    subset: &'a str,
    port: Option<u32>,
    weight: u32,
}

/// Ports to emit a route once for: when some destination has no port and its service has
/// several, a request on port P must go to port P of that service.
fn expansion_ports(dests: &[Dest<'_>]) -> BTreeSet<u32> {
    dests
        .iter()
        .filter(|d| d.port.is_none() && d.svc.ports.len() > 1)
        .flat_map(|d| d.svc.ports.iter().map(|p| p.number))
        .collect()
}

/// Weighted clusters of a route; `request_port` is set when the route is being emitted
/// once per port. Destinations whose service lacks that port are left out.
fn clusters_for(dests: &[Dest<'_>], request_port: Option<u32>) -> Vec<mesh::WeightedCluster> {
    dests
        .iter()
        .filter_map(|d| {
            let port = match (d.port, d.svc.ports.as_slice()) {
                (Some(p), _) => p,
                (None, [only]) => only.number,
                (None, ports) => {
                    let p = request_port?;
                    ports.iter().any(|x| x.number == p).then_some(p)?
                }
            };
            Some(mesh::WeightedCluster {
                cluster: cluster_name(port, d.subset, &d.svc.fqdn),
                weight: d.weight,
            })
        })
        .collect()
}

fn http_match(m: &HttpMatchRequest) -> mesh::HttpMatch {
    let map = |m: &BTreeMap<String, kinds::StringMatch>| {
        m.iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect()
    };
    mesh::HttpMatch {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: map(&m.headers),
        without_headers: map(&m.without_headers),
        query_params: map(&m.query_params),
        port: m.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        ignore_uri_case: m.ignore_uri_case,
    }
}

/// An empty match (no kind) means "present", as in Istio's header matches.
fn string_match(m: &kinds::StringMatch) -> mesh::StringMatch {
    use mesh::string_match::Kind as K;
    let kind = if let Some(v) = &m.exact {
        Some(K::Exact(v.clone()))
    } else if let Some(v) = &m.prefix {
        Some(K::Prefix(v.clone()))
    } else {
        m.regex.as_ref().map(|v| K::Regex(v.clone()))
    };
    mesh::StringMatch { kind }
}

fn service_ports(se: &ServiceEntry) -> Vec<mesh::Port> {
    let mut ports: Vec<mesh::Port> = se
        .ports
        .iter()
        .map(|p| mesh::Port {
            number: p.number(),
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(p.protocol.as_deref()) as i32,
            target_port: p
                .target_port
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0),
        })
        .collect();
    ports.sort_by_key(|p| p.number);
    ports
}

/// Istio protocol names (case-insensitive) to Weft's. Database protocols are opaque TCP
/// to Weft; gRPC-Web is HTTP/1 on the wire.
fn protocol(name: Option<&str>) -> mesh::Protocol {
    let Some(name) = name else {
        return mesh::Protocol::Unspecified;
    };
    match name.to_ascii_uppercase().as_str() {
        "HTTP" | "GRPC-WEB" => mesh::Protocol::Http,
        "HTTP2" => mesh::Protocol::Http2,
        "GRPC" => mesh::Protocol::Grpc,
        "TLS" => mesh::Protocol::Tls,
        "HTTPS" => mesh::Protocol::Https,
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => mesh::Protocol::Tcp,
        _ => mesh::Protocol::Unspecified,
    }
}

/// One setting of a DestinationRule for one port of one subset: the rule's policy, then
/// its port-level settings, then the subset's policy, then the subset's port-level
/// settings, each overriding the one before when set (Istio's `MergeTrafficPolicy` order).
/// `top` and `at_port` read the setting from a policy and from a port-level policy.
fn pick_policy<'a, T>(
    dr: Option<&'a DestinationRule>,
    subset: Option<&'a kinds::Subset>,
    port: u32,
    top: impl Fn(&'a TrafficPolicy) -> Option<&'a T>,
    at_port: impl Fn(&'a PortTrafficPolicy) -> Option<&'a T>,
) -> Option<&'a T> {
    let policies = [
        dr.and_then(|d| d.traffic_policy.as_ref()),
        subset.and_then(|s| s.traffic_policy.as_ref()),
    ];
    let mut chosen = None;
    for policy in policies.into_iter().flatten() {
        if let Some(value) = top(policy) {
            chosen = Some(value);
        }
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(i64::from(port)));
        if let Some(value) = port_level.and_then(&at_port) {
            chosen = Some(value);
        }
    }
    chosen
}

/// The `loadBalancer` block for one port of one subset (precedence: [`pick_policy`]).
fn load_balancer<'a>(
    dr: Option<&'a DestinationRule>,
    subset: Option<&'a kinds::Subset>,
    port: u32,
) -> Option<&'a LoadBalancerSettings> {
    pick_policy(
        dr,
        subset,
        port,
        |p| p.load_balancer.as_ref(),
        |p| p.load_balancer.as_ref(),
    )
}
