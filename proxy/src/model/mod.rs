//! The proxy's own view of its configuration: immutable, validated, indexed for the data path.
//!
//! The data path never touches protobuf: it reads an `Arc<Snapshot>` built here, so every
//! `Option` and string-typed field of the wire format is checked once (at apply time, where a
//! failure becomes a NACK) instead of on every request. A snapshot is rebuilt whole on each
//! accepted xDS response; nothing in it changes afterwards. Balancer and breaker state lives
//! beside it ([`ClusterRuntime`]), shared by successive snapshots.

mod convert;
mod net;
mod types;

pub use convert::{InvalidResource, endpoints_from_proto};
pub use net::IpNet;
pub use types::*;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The validated resources the proxy currently holds, one map per type, keyed by resource name.
///
/// This is the input of [`Snapshot::build`]; the xDS layer edits a copy of it per response and
/// only keeps the copy if the snapshot built from it is accepted.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub mesh: Option<Arc<Mesh>>,
    pub inbound: Option<Arc<Inbound>>,
    pub services: BTreeMap<String, Arc<Service>>,
    pub clusters: BTreeMap<String, Arc<ClusterSpec>>,
    pub endpoints: BTreeMap<String, Arc<[Endpoint]>>,
    /// Per type URL: the version last accepted (SotW `version_info` or delta `system_version_info`).
    pub versions: BTreeMap<String, String>,
}

/// Where the current snapshot lives, shared by the xDS applier (the one writer) and every
/// request (the readers).
///
/// `ArcSwap` rather than a lock or `watch::Receiver::borrow` (an `RwLock` read): each request
/// takes the snapshot with a lock-free load, so readers never contend with each other or wait
/// on a publish. Readers keep the `Arc` they loaded for the whole request, so one request sees
/// one config even if a new one is published meanwhile.
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<ArcSwap<Snapshot>>);

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Publishes `snapshot`; requests already running keep the one they loaded.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.store(snapshot);
    }
}

/// Each cluster's [`ClusterRuntime`] by name: kept by the xDS applier across snapshots.
#[derive(Debug, Default)]
pub struct Runtimes(std::sync::Mutex<HashMap<String, ClusterRuntime>>);

impl Runtimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClusterRuntime>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything the data path needs, frozen. Cheap to share (`Arc`), never mutated.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub mesh: Option<Arc<Mesh>>,
    pub inbound: Option<Arc<Inbound>>,
    /// Every service, by canonical name (sorted, for dumps).
    pub services: BTreeMap<String, Arc<Service>>,
    /// Lower-cased canonical names and aliases -> service: one hash lookup per request.
    hosts: HashMap<String, Arc<Service>>,
    /// Services by virtual address (`Service.addresses`), for original-destination routing.
    addresses: net::AddressIndex,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub versions: BTreeMap<String, String>,
}

// === impl Snapshot ===

impl Snapshot {
    /// Joins clusters with their endpoints and indexes services by every name they answer to.
    ///
    /// References are not required to resolve: a route to a cluster the control plane has not
    /// sent (yet) is answered with 503 at request time rather than NACKed, because xDS types
    /// arrive one at a time and a transient gap must not reject a good update.
    pub fn build(parts: &Parts) -> Self {
        Self::build_with(parts, &Runtimes::default(), None)
    }

    /// [`Snapshot::build`] on the clusters' long-lived state in `runtimes` (created for new
    /// clusters, dropped for clusters no longer sent), reusing the balancers of `previous`
    /// where a cluster's balancing inputs did not change.
    pub fn build_with(parts: &Parts, runtimes: &Runtimes, previous: Option<&Snapshot>) -> Self {
        let now = tokio::time::Instant::now();
        let mut states = runtimes.lock();
        states.retain(|name, _| parts.clusters.contains_key(name));
        let clusters = parts
            .clusters
            .iter()
            .map(|(name, spec)| {
                let endpoints = parts
                    .endpoints
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                let runtime = states
                    .entry(name.clone())
                    .or_insert_with(|| ClusterRuntime::new(now));
                let before = previous.and_then(|p| p.clusters.get(name)).map(|c| &**c);
                let cluster = Cluster::with_runtime(spec.clone(), endpoints, runtime, before, now);
                (name.clone(), Arc::new(cluster))
            })
            .collect();
        drop(states);

        let mut hosts = HashMap::new();
        // Canonical names first, so an alias never shadows another service's real name; then
        // aliases in name order, first one wins, so the result does not depend on hash order.
        for svc in parts.services.values() {
            hosts.insert(svc.name.to_ascii_lowercase(), svc.clone());
        }
        for svc in parts.services.values() {
            for alias in &svc.aliases {
                hosts
                    .entry(alias.to_ascii_lowercase())
                    .or_insert_with(|| svc.clone());
            }
        }

        Self {
            mesh: parts.mesh.clone(),
            inbound: parts.inbound.clone(),
            services: parts.services.clone(),
            hosts,
            addresses: net::AddressIndex::build(parts.services.values()),
            clusters,
            versions: parts.versions.clone(),
        }
    }

    /// The service reached by `host` (no port), by canonical name or alias, ignoring case.
    pub fn service_for_host(&self, host: &str) -> Option<&Arc<Service>> {
        if let Some(svc) = self.hosts.get(host) {
            return Some(svc);
        }
        // Only allocate when the request did not already use lower case.
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.hosts.get(&host.to_ascii_lowercase());
        }
        None
    }

    /// The service an intercepted connection to `ip:port` (its original destination) belongs
    /// to: the one whose `addresses` hold `ip`, a single address before a prefix and a longer
    /// prefix before a shorter one, among services that serve `port` (or declare no ports).
    /// Ties go to the first service by name. `None`: a destination the mesh does not know,
    /// for the mesh's [`OutboundTrafficPolicy`] to decide. IPv4-mapped IPv6 addresses match as
    /// IPv4. Allocates nothing: one hash lookup, then a scan of the (few) prefixes.
    pub fn service_for_addr(&self, ip: IpAddr, port: u16) -> Option<&Arc<Service>> {
        self.addresses.lookup(ip, port)
    }

    /// The mesh's policy for destinations [`Snapshot::service_for_addr`] does not know;
    /// ALLOW_ANY (Istio's default) until a `Mesh` arrives.
    pub fn outbound_traffic_policy(&self) -> OutboundTrafficPolicy {
        self.mesh
            .as_ref()
            .map_or(OutboundTrafficPolicy::default(), |m| {
                m.outbound_traffic_policy
            })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

#[cfg(test)]
mod tests;
