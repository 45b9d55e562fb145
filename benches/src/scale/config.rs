//! The synthetic mesh of W7/W8: S services (ServiceEntry + workloadSelector), E workloads
//! (WorkloadEntry, spread round-robin over the services, distinct 10.x.y.z addresses, one
//! service account per service) and, for one service in [`ROUTED_EVERY`], a DestinationRule
//! with subsets v1/v2 and a VirtualService splitting traffic between them.
//!
//! A service's objects always share a file, so a change rewrites one file and the control
//! plane's rescan applies one file. Services are grouped [`Mesh::per_file`] to a file, at most
//! [`MAX_FILES`] files: `weft-config`'s `Index::apply_file` recomputes the whole model for
//! every file, so the initial load of one file per service is quadratic (10,000 services x 3
//! endpoints in 10,000 files did not load within 5 minutes). Rendering is pure;
//! [`write_atomic`] is the only I/O.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The namespace of every generated object.
pub const NAMESPACE: &str = "bench";
/// The one port of every service.
pub const PORT: u32 = 8080;
/// One service in this many gets a DestinationRule and a VirtualService.
pub const ROUTED_EVERY: usize = 10;
/// Files in the config directory, at most.
pub const MAX_FILES: usize = 100;

/// One workload (WorkloadEntry): an endpoint of its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub address: Ipv4Addr,
    /// `v1` or `v2`, alternating within a service, for the subsets.
    pub version: &'static str,
}

/// One service and everything in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub workloads: Vec<Workload>,
    /// The VirtualService's (v1, v2) weights, for routed services.
    pub weights: Option<(u32, u32)>,
}

/// The whole synthetic mesh, mutable so that changes can be rendered from it.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub services: Vec<Service>,
    /// Workload names in global order (workload j belongs to service j % S): node ids of the
    /// simulated proxies are taken from here round-robin.
    workload_names: Vec<String>,
    /// Changes made so far, to give every changed endpoint a never-used address.
    changes: u32,
}

/// What an endpoint change did, for the clients to recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointChange {
    pub service: usize,
    /// The default-subset cluster of the service, `outbound|8080||<fqdn>`.
    pub cluster: String,
    pub workload: String,
    pub address: String,
}

/// What a route change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub service: usize,
    pub fqdn: String,
    pub v1: (String, u32),
    pub v2: (String, u32),
}

/// The n-th address of a /8 (or any base), skipping nothing: n < 2^24 by construction.
fn nth(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    let n = u32::try_from(n).unwrap_or(u32::MAX) & 0x00ff_ffff;
    Ipv4Addr::from(u32::from(base) | n)
}

/// Endpoints live in 10.0.0.0/9; changed endpoints move into 10.128.0.0/9, so that a changed
/// address never appears in the config before the change does.
const ENDPOINT_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
const CHANGED_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
/// Service VIPs (ClusterIPs) in 172.16.0.0/12.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);

pub fn fqdn(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

/// Istio's cluster name, as the control plane's translation names clusters.
pub fn cluster_name(subset: &str, fqdn: &str) -> String {
    format!("outbound|{PORT}|{subset}|{fqdn}")
}

impl Mesh {
    /// `services` services and `endpoints` workloads (at least one service; endpoints may be
    /// fewer than services, leaving some services without endpoints).
    pub fn new(services: usize, endpoints: usize) -> Self {
        let services = services.max(1);
        let mut out: Vec<Service> = (0..services)
            .map(|i| Service {
                name: format!("svc-{i:05}"),
                vip: nth(VIP_BASE, i + 1),
                workloads: Vec::new(),
                weights: i.is_multiple_of(ROUTED_EVERY).then_some((90, 10)),
            })
            .collect();
        let mut workload_names = Vec::with_capacity(endpoints);
        for j in 0..endpoints {
            let svc = &mut out[j % services];
            let version = if svc.workloads.len().is_multiple_of(2) {
                "v1"
            } else {
                "v2"
            };
            let name = format!("{}-w{j}", svc.name);
            workload_names.push(name.clone());
            svc.workloads.push(Workload {
                name,
                address: nth(ENDPOINT_BASE, j + 1),
                version,
            });
        }
        Self {
            services: out,
            workload_names,
            changes: 0,
        }
    }

    pub fn endpoints(&self) -> usize {
        self.workload_names.len()
    }

    /// The node id of the k-th simulated proxy: workloads round-robin, `<name>.<namespace>`.
    pub fn node_id(&self, k: usize) -> Option<String> {
        if self.workload_names.is_empty() {
            return None;
        }
        let name = &self.workload_names[k % self.workload_names.len()];
        Some(format!("{name}.{NAMESPACE}"))
    }

    /// Services per file.
    pub fn per_file(&self) -> usize {
        self.services.len().div_ceil(MAX_FILES).max(1)
    }

    pub fn files(&self) -> usize {
        self.services.len().div_ceil(self.per_file())
    }

    /// The file holding `service`'s objects.
    pub fn file_of(&self, service: usize) -> usize {
        service / self.per_file()
    }

    pub fn file_name(&self, file: usize) -> String {
        format!("services-{file:03}.yaml")
    }

    /// The YAML of one file: its services' documents.
    pub fn render_file(&self, file: usize) -> String {
        let per = self.per_file();
        let end = ((file + 1) * per).min(self.services.len());
        (file * per..end)
            .map(|i| self.render_service(i))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The YAML documents of one service.
    pub fn render_service(&self, service: usize) -> String {
        let svc = &self.services[service];
        let host = fqdn(&svc.name);
        let mut y = String::with_capacity(400 + svc.workloads.len() * 220);
        // Writing to a String cannot fail.
        let _ = write!(
            y,
            "apiVersion: networking.weft.dev/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  addresses: [\"{vip}\"]\n  ports:\n  - {{number: {PORT}, name: http, protocol: HTTP}}\n  resolution: STATIC\n  workloadSelector:\n    labels: {{app: {name}}}\n",
            name = svc.name,
            vip = svc.vip,
        );
        for w in &svc.workloads {
            let _ = write!(
                y,
                "---\napiVersion: networking.weft.dev/v1\nkind: WorkloadEntry\nmetadata: {{name: {wname}, namespace: {NAMESPACE}}}\nspec:\n  address: \"{addr}\"\n  labels: {{app: {name}, version: {version}}}\n  serviceAccount: {name}\n",
                wname = w.name,
                addr = w.address,
                name = svc.name,
                version = w.version,
            );
        }
        if let Some((w1, w2)) = svc.weights {
            let _ = write!(
                y,
                "---\napiVersion: networking.weft.dev/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  host: {host}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels: {{version: v2}}\n---\napiVersion: networking.weft.dev/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {host}, subset: v1}}\n      weight: {w1}\n    - destination: {{host: {host}, subset: v2}}\n      weight: {w2}\n",
                name = svc.name,
            );
        }
        y
    }

    /// Writes every service's file into `dir`.
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for f in 0..self.files() {
            let path = dir.join(self.file_name(f));
            std::fs::write(&path, self.render_file(f))
                .with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// Moves the last workload of a service (chosen from the end, away from the node ids
    /// taken from the front) to a never-used address. `None` if no service has workloads.
    pub fn change_endpoint(&mut self, n: usize) -> Option<EndpointChange> {
        let count = self.services.len();
        let service = (0..count)
            .map(|k| (count - 1 + count * 4 - (n + k) % count) % count)
            .find(|&i| !self.services[i].workloads.is_empty())?;
        self.changes += 1;
        let address = nth(CHANGED_BASE, self.changes as usize);
        let svc = &mut self.services[service];
        let w = svc.workloads.last_mut()?;
        w.address = address;
        Some(EndpointChange {
            service,
            cluster: cluster_name("", &fqdn(&svc.name)),
            workload: w.name.clone(),
            address: address.to_string(),
        })
    }

    /// Shifts the weights of a routed service's VirtualService by 10 points (wrapping within
    /// 10..=90, so every change yields a split never used by the previous one).
    pub fn change_route(&mut self, n: usize) -> Option<RouteChange> {
        let routed: Vec<usize> = (0..self.services.len())
            .filter(|&i| self.services[i].weights.is_some())
            .collect();
        let service = *routed.get(n % routed.len().max(1))?;
        let svc = &mut self.services[service];
        let (w1, _) = svc.weights?;
        let next = if w1 <= 10 { 90 } else { w1 - 10 };
        svc.weights = Some((next, 100 - next));
        let host = fqdn(&svc.name);
        Some(RouteChange {
            service,
            v1: (cluster_name("v1", &host), next),
            v2: (cluster_name("v2", &host), 100 - next),
            fqdn: host,
        })
    }
}

/// Writes `text` to `dir/name` atomically: a hidden temp file in the same directory (the
/// control plane skips hidden files), then a rename, so the watcher never reads half a file.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use weft_config::{Index, MeshSettings, Resource, Severity};

    use super::*;

    /// Loads every file of `mesh` into the control plane's own index.
    fn load(mesh: &Mesh) -> (Index, Vec<String>) {
        let mut index = Index::new(MeshSettings::default());
        let mut errors = Vec::new();
        for f in 0..mesh.files() {
            let name = mesh.file_name(f);
            for d in index.apply_file(Path::new(&name), &mesh.render_file(f)) {
                if d.severity == Severity::Error {
                    errors.push(d.to_string());
                }
            }
        }
        (index, errors)
    }

    fn counts(index: &Index) -> [usize; 4] {
        let mut c = [0; 4];
        for r in index.model().resources() {
            match r {
                Resource::ServiceEntry(_) => c[0] += 1,
                Resource::WorkloadEntry(_) => c[1] += 1,
                Resource::DestinationRule(_) => c[2] += 1,
                Resource::VirtualService(_) => c[3] += 1,
                Resource::PeerAuthentication(_) => {}
            }
        }
        c
    }

    #[test]
    fn the_generated_mesh_loads_without_errors_with_the_right_counts() {
        let mesh = Mesh::new(25, 100);
        let (index, errors) = load(&mesh);
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(
            index.all_diagnostics().is_empty(),
            "{:#?}",
            index.all_diagnostics()
        );
        // 25 services, 100 workloads, one routed service in 10 (0, 10, 20).
        assert_eq!(counts(&index), [25, 100, 3, 3]);
        let addrs: BTreeSet<Ipv4Addr> = mesh
            .services
            .iter()
            .flat_map(|s| s.workloads.iter().map(|w| w.address))
            .collect();
        assert_eq!(addrs.len(), 100, "addresses are distinct");
        assert!(addrs.iter().all(|a| a.octets()[0] == 10));
    }

    #[test]
    fn node_ids_go_round_robin_over_workloads_and_translate() {
        let mesh = Mesh::new(3, 6);
        assert_eq!(mesh.node_id(0).as_deref(), Some("svc-00000-w0.bench"));
        assert_eq!(mesh.node_id(7).as_deref(), Some("svc-00001-w1.bench"));
        assert_eq!(Mesh::new(3, 0).node_id(0), None);
        // The node's own workload is known to the translation: it gets an inbound view.
        let (index, _) = load(&mesh);
        let id = weft_config::ProxyId::from_node_id("svc-00001-w1.bench").unwrap();
        let t = weft_config::translate::translate(&index.model(), &id);
        assert!(t.inbound.is_some());
        assert_eq!(t.services.len(), 3);
    }

    #[test]
    fn an_endpoint_change_moves_one_workload_to_a_new_address() {
        let mut mesh = Mesh::new(4, 8);
        let before = mesh.clone();
        let c = mesh.change_endpoint(0).unwrap();
        assert_eq!(c.service, 3);
        assert_eq!(c.workload, "svc-00003-w7");
        assert_eq!(c.address, "10.128.0.1");
        assert_eq!(
            c.cluster,
            "outbound|8080||svc-00003.bench.svc.cluster.local"
        );
        let text = mesh.render_service(3);
        assert!(text.contains("address: \"10.128.0.1\""), "{text}");
        assert_ne!(text, before.render_service(3));
        for i in 0..3 {
            assert_eq!(
                mesh.render_service(i),
                before.render_service(i),
                "only one file changes"
            );
        }
        let next = mesh.change_endpoint(1).unwrap();
        assert_eq!(next.service, 2);
        assert_eq!(next.address, "10.128.0.2");
        let (_, errors) = load(&mesh);
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn a_route_change_shifts_weights_and_stays_valid() {
        let mut mesh = Mesh::new(21, 42);
        let c = mesh.change_route(0).unwrap();
        assert_eq!(c.service, 0);
        assert_eq!(c.v1.1 + c.v2.1, 100);
        assert_eq!(
            c.v1,
            (
                "outbound|8080|v1|svc-00000.bench.svc.cluster.local".into(),
                80
            )
        );
        assert_eq!(mesh.change_route(1).unwrap().service, 10);
        assert_eq!(mesh.change_route(3).unwrap().v1.1, 70);
        assert!(mesh.render_service(0).contains("weight: 70"));
        let (_, errors) = load(&mesh);
        assert!(errors.is_empty(), "{errors:#?}");
        for _ in 0..20 {
            let c = mesh.change_route(0).unwrap();
            assert!((10..=90).contains(&c.v1.1));
        }
    }

    #[test]
    fn services_are_grouped_into_at_most_max_files() {
        let small = Mesh::new(25, 25);
        assert_eq!((small.per_file(), small.files()), (1, 25));
        assert_eq!(small.file_of(7), 7);
        let big = Mesh::new(1005, 1005);
        assert_eq!((big.per_file(), big.files()), (11, 92));
        assert_eq!(big.file_of(1004), 91);
        assert_eq!(big.file_name(90), "services-090.yaml");
        let text = big.render_file(90);
        assert!(text.contains("name: svc-00990,") && text.contains("name: svc-01000,"));
        assert!(!text.contains("name: svc-00989,") && !text.contains("name: svc-01001,"));
        assert_eq!(text.matches("kind: ServiceEntry").count(), 11);
        let last = big.render_file(91);
        assert_eq!(last.matches("kind: ServiceEntry").count(), 1005 - 91 * 11);
        let (index, errors) = load(&big);
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(counts(&index)[0], 1005);
    }

    #[test]
    fn atomic_writes_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_atomic(dir.path(), "a.yaml", "x: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "x: 1\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.yaml")]);
    }
}
