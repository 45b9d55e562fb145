//! The effective, validated configuration: what translation reads.
//!
//! A [`Model`] is plain data (sorted maps of accepted objects), immutable once published by
//! the [`crate::Index`] behind an `Arc`, so translation for many proxies can read it in
//! parallel with no locks, and equal models translate to equal resources.

use std::collections::BTreeMap;

use crate::diag::{Kind, ObjectRef};
use crate::host;
use crate::kinds::{
    DestinationRule, PeerAuthentication, ServiceEntry, VirtualService, WorkloadEntry,
};
use crate::parse::{Object, Resource};
use crate::validate::FieldError;

/// Mesh-wide settings that shape names, identities and trust. Set by the control plane
/// (from its flags and its CA), not read from YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// SPIFFE trust domain; `cluster.local` by default.
    pub trust_domain: String,
    /// DNS suffix of Kubernetes-style service names (`<name>.<ns>.svc.<dns_domain>`);
    /// `cluster.local` by default.
    pub dns_domain: String,
    /// PEM root certificates proxies trust for peers (`Mesh.trust_bundle`): the CA's root,
    /// several during a root rotation. Empty by default; the control plane fills it from its
    /// CA. Part of the settings (not of the objects) so that a new root is a model change
    /// that reaches every proxy.
    pub trust_bundle: Vec<String>,
    /// The namespace whose selector-less PeerAuthentication is mesh-wide (Istio's
    /// `rootNamespace`, `istio-system` there); `weft-system` by default.
    pub root_namespace: String,
    /// What proxies do with outbound traffic to addresses no service claims
    /// (`Mesh.outbound_traffic_policy`); Istio's default, ALLOW_ANY, unless configured.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Istio's `MeshConfig.outboundTrafficPolicy.mode`, spelled as Istio spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OutboundTrafficPolicy {
    /// Traffic to unknown addresses passes through unchanged.
    #[default]
    AllowAny,
    /// Traffic to unknown addresses is refused.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    /// Istio's name (`ALLOW_ANY`, `REGISTRY_ONLY`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowAny => "ALLOW_ANY",
            Self::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

impl std::fmt::Display for OutboundTrafficPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OutboundTrafficPolicy {
    type Err = String;

    /// Istio's names; case-insensitive because flags and env vars are typed by hand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ALLOW_ANY" => Ok(Self::AllowAny),
            "REGISTRY_ONLY" => Ok(Self::RegistryOnly),
            _ => Err(format!(
                "unknown outbound traffic policy {s:?}: expected ALLOW_ANY or REGISTRY_ONLY"
            )),
        }
    }
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            dns_domain: "cluster.local".into(),
            trust_bundle: Vec::new(),
            root_namespace: "weft-system".into(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
        }
    }
}

impl MeshSettings {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// Resolves a host written in an object of `namespace` (see [`host::resolve`]).
    pub fn resolve(&self, host: &str, namespace: &str) -> String {
        host::resolve(host, namespace, &self.dns_domain)
    }
}

/// The accepted objects, by kind, sorted by namespace and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub settings: MeshSettings,
    pub service_entries: BTreeMap<ObjectRef, Object<ServiceEntry>>,
    pub workload_entries: BTreeMap<ObjectRef, Object<WorkloadEntry>>,
    pub virtual_services: BTreeMap<ObjectRef, Object<VirtualService>>,
    pub destination_rules: BTreeMap<ObjectRef, Object<DestinationRule>>,
    pub peer_authentications: BTreeMap<ObjectRef, Object<PeerAuthentication>>,
}

impl Model {
    pub fn new(settings: MeshSettings) -> Self {
        Self {
            settings,
            ..Default::default()
        }
    }

    /// Adds or replaces an object.
    pub fn insert(&mut self, resource: Resource) {
        match resource {
            Resource::ServiceEntry(o) => {
                self.service_entries.insert(o.id.clone(), o);
            }
            Resource::WorkloadEntry(o) => {
                self.workload_entries.insert(o.id.clone(), o);
            }
            Resource::VirtualService(o) => {
                self.virtual_services.insert(o.id.clone(), o);
            }
            Resource::DestinationRule(o) => {
                self.destination_rules.insert(o.id.clone(), o);
            }
            Resource::PeerAuthentication(o) => {
                self.peer_authentications.insert(o.id.clone(), o);
            }
        }
    }

    /// Every object, as resources, sorted by kind then namespace/name.
    pub fn resources(&self) -> Vec<Resource> {
        let mut out: Vec<Resource> = Vec::new();
        out.extend(
            self.service_entries
                .values()
                .cloned()
                .map(Resource::ServiceEntry),
        );
        out.extend(
            self.workload_entries
                .values()
                .cloned()
                .map(Resource::WorkloadEntry),
        );
        out.extend(
            self.virtual_services
                .values()
                .cloned()
                .map(Resource::VirtualService),
        );
        out.extend(
            self.destination_rules
                .values()
                .cloned()
                .map(Resource::DestinationRule),
        );
        out.extend(
            self.peer_authentications
                .values()
                .cloned()
                .map(Resource::PeerAuthentication),
        );
        out
    }

    /// Whether two models configure the same thing (positions ignored).
    pub fn same_content(&self, other: &Model) -> bool {
        let (a, b) = (self.resources(), other.resources());
        self.settings == other.settings
            && a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| x.same_content(y))
    }

    /// Whether some ServiceEntry defines `fqdn` (exactly, or through a wildcard host).
    pub fn knows_host(&self, fqdn: &str) -> bool {
        self.service_entries.values().any(|se| {
            se.spec.hosts.iter().any(|h| {
                let resolved = self.settings.resolve(h, se.namespace());
                host::host_matches(&resolved, fqdn)
            })
        })
    }

    /// The ServiceEntry ports of `fqdn` (from the first ServiceEntry that defines it).
    fn ports_of(&self, fqdn: &str) -> Option<Vec<u32>> {
        self.service_entries.values().find_map(|se| {
            se.spec
                .hosts
                .iter()
                .any(|h| self.settings.resolve(h, se.namespace()) == fqdn)
                .then(|| se.spec.ports.iter().map(|p| p.number()).collect())
        })
    }

    /// Whether some DestinationRule for `fqdn` defines `subset`.
    pub fn knows_subset(&self, fqdn: &str, subset: &str) -> bool {
        self.destination_rules.values().any(|dr| {
            self.settings.resolve(&dr.spec.host, dr.namespace()) == fqdn
                && dr.spec.subsets.iter().any(|s| s.name == subset)
        })
    }

    /// Cross-reference checks of one object against this model: destination hosts and
    /// subsets of a VirtualService, the host of a DestinationRule. ServiceEntries,
    /// WorkloadEntries and PeerAuthentications refer to nothing that must exist (a
    /// selector that matches no workload is not an error, as in Istio).
    pub fn check_references(&self, resource: &Resource) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match resource {
            Resource::DestinationRule(dr) => {
                let fqdn = self.settings.resolve(&dr.spec.host, dr.namespace());
                if !self.knows_host(&fqdn) {
                    errors.push(FieldError {
                        field: "spec.host".into(),
                        message: unknown_host(&dr.spec.host, &fqdn),
                    });
                }
            }
            Resource::VirtualService(vs) => {
                for (path, dest) in destinations(&vs.spec) {
                    self.check_destination(&mut errors, &path, dest, vs.namespace());
                }
            }
            Resource::ServiceEntry(_)
            | Resource::WorkloadEntry(_)
            | Resource::PeerAuthentication(_) => {}
        }
        errors
    }

    fn check_destination(
        &self,
        errors: &mut Vec<FieldError>,
        path: &str,
        dest: &crate::kinds::Destination,
        namespace: &str,
    ) {
        let fqdn = self.settings.resolve(&dest.host, namespace);
        if !self.knows_host(&fqdn) {
            errors.push(FieldError {
                field: format!("{path}.host"),
                message: unknown_host(&dest.host, &fqdn),
            });
            return;
        }
        if let Some(subset) = &dest.subset
            && !self.knows_subset(&fqdn, subset)
        {
            errors.push(FieldError {
                field: format!("{path}.subset"),
                message: format!(
                    "subset {subset:?} is not defined by any DestinationRule for host {fqdn}"
                ),
            });
        }
        if let Some(port) = dest.port.as_ref().and_then(|p| p.number)
            && let Some(ports) = self.ports_of(&fqdn)
            && !ports.iter().any(|p| i64::from(*p) == port)
        {
            errors.push(FieldError {
                field: format!("{path}.port.number"),
                message: format!("port {port} is not a port of service {fqdn}"),
            });
        }
    }
}

fn unknown_host(written: &str, fqdn: &str) -> String {
    if written == fqdn {
        format!("host {fqdn} is not defined by any ServiceEntry")
    } else {
        format!("host {written:?} ({fqdn}) is not defined by any ServiceEntry")
    }
}

/// Every destination of a VirtualService with its field path: http, tcp and tls routes,
/// and mirrors (a mirror to a missing host is as broken as a route to one).
pub(crate) fn destinations(vs: &VirtualService) -> Vec<(String, &crate::kinds::Destination)> {
    let mut out = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        for (j, rd) in route.route.iter().enumerate() {
            if let Some(d) = &rd.destination {
                out.push((format!("spec.http[{i}].route[{j}].destination"), d));
            }
        }
        if let Some(d) = &route.mirror {
            out.push((format!("spec.http[{i}].mirror"), d));
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            if let Some(d) = &m.destination {
                out.push((format!("spec.http[{i}].mirrors[{j}].destination"), d));
            }
        }
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        for (j, rd) in route.route.iter().enumerate() {
            if let Some(d) = &rd.destination {
                out.push((format!("spec.tcp[{i}].route[{j}].destination"), d));
            }
        }
    }
    for (i, route) in vs.tls.iter().enumerate() {
        for (j, rd) in route.route.iter().enumerate() {
            if let Some(d) = &rd.destination {
                out.push((format!("spec.tls[{i}].route[{j}].destination"), d));
            }
        }
    }
    out
}

/// Kinds in the order the index validates them: the registry first, then rules that refer
/// to it, then routes that refer to both.
pub(crate) const VALIDATION_ORDER: [Kind; 5] = [
    Kind::ServiceEntry,
    Kind::WorkloadEntry,
    Kind::DestinationRule,
    Kind::VirtualService,
    Kind::PeerAuthentication,
];
