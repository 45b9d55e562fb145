//! Weft's pair for C1 (mTLS) and C1p (plaintext): a config directory, `weft-control` in `srv`
//! and one `weft-proxy` per namespace, as `tests/src/netns.rs` runs them, minus interception:
//! the load generator uses the client sidecar as an explicit HTTP proxy on 127.0.0.1:15001
//! (absolute-form or Host-routed requests, as in `tests/tests/routing.rs`).
//!
//! One app workload (`srv`, service account `echo`) is selected by three services that differ
//! only in their DestinationRule: `echo` (auto mTLS, the product), `echo-plain` (`tls.mode:
//! DISABLE`; the server side's default PERMISSIVE mode accepts it) and `echo-nopool`
//! (`maxRequestsPerConnection: 1`, a new mesh connection per request, W5b). Every service gets
//! limits far above the load and a VirtualService with retries off (§7.1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::topo::{Netns, Proc, Topology};

/// The app's port, the services' port.
pub const APP_PORT: u16 = 8080;
/// The sidecar's outbound (explicit proxy) listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// The sidecar's admin port (`/ready`, `/metrics`, `/config_dump`).
pub const ADMIN_PORT: u16 = 15020;
/// The control plane's xDS + CA port and its admin port.
pub const XDS_PORT: u16 = 15012;
pub const CP_ADMIN_PORT: u16 = 15014;

/// The mTLS service (C1).
pub const SERVICE: &str = "echo.default.svc.cluster.local";
/// The same workload, mesh TLS off (C1p).
pub const SERVICE_PLAIN: &str = "echo-plain.default.svc.cluster.local";
/// The same workload, one request per mesh connection (W5b).
pub const SERVICE_NOPOOL: &str = "echo-nopool.default.svc.cluster.local";

/// The Host header the load generator sends to reach `service` through the client sidecar.
pub fn authority(service: &str) -> String {
    format!("{service}:{APP_PORT}")
}

/// Limits raised far above any load of the suite, so no breaker or queue limit shapes a
/// result (the Envoy FAQ's advice, §7.1).
const BIG: u32 = 1_000_000;

/// The mesh config for the bench topology: the three services, their rules and the two
/// workloads (`cli` at `cli_ip`, `srv` at `srv_ip`).
pub fn mesh_yaml(cli_ip: &str, srv_ip: &str) -> String {
    let mut out = String::from(
        "# Written by meshbench (PERFORMANCE.md §7): one app workload behind three services.\n",
    );
    for (name, tls, per_conn) in [
        ("echo", None, None),
        ("echo-plain", Some("DISABLE"), None),
        ("echo-nopool", None, Some(1)),
    ] {
        let host = format!("{name}.default.svc.cluster.local");
        let tls = tls
            .map(|m| format!("\n    tls: {{mode: {m}}}"))
            .unwrap_or_default();
        let per_conn = per_conn
            .map(|n| format!(", maxRequestsPerConnection: {n}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "---
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
spec:
  hosts: [{host}]
  ports:
  - {{number: {APP_PORT}, name: http, protocol: HTTP}}
  resolution: STATIC
  workloadSelector:
    labels: {{app: echo}}
---
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata:
  name: {name}
  namespace: default
spec:
  host: {host}
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: {BIG}}}
      http: {{http1MaxPendingRequests: {BIG}, http2MaxRequests: {BIG}, maxRetries: {BIG}{per_conn}}}{tls}
---
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
    retries: {{attempts: 0}}
"
        ));
    }
    out.push_str(&format!(
        "---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: srv
  namespace: default
spec:
  address: \"{srv_ip}\"
  labels: {{app: echo}}
  serviceAccount: echo
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: cli
  namespace: default
spec:
  address: \"{cli_ip}\"
  labels: {{app: cli}}
  serviceAccount: cli
"
    ));
    out
}

/// The SPIFFE ID of service account `sa` in `default` (the mesh's default trust domain).
pub fn spiffe_id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// The token file `weftctl up` writes for a workload (local mode's proof of identity).
pub fn token_json(node_id: &str, identity: &str, token: &str) -> String {
    serde_json::json!({"token": token, "identity": identity, "node_id": node_id}).to_string()
}

/// Inbound requests counted by a sidecar's `/metrics`: (over mTLS, in plaintext), told apart
/// by `source_principal` (the caller's SPIFFE ID from mTLS; empty for plaintext).
pub fn inbound_counts(metrics: &str) -> (u64, u64) {
    let mut mtls = 0;
    let mut plain = 0;
    for line in metrics.lines() {
        if !line.starts_with("weft_requests_total{") || !line.contains("direction=\"inbound\"") {
            continue;
        }
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if line.contains("source_principal=\"\"") {
            plain += n as u64;
        } else {
            mtls += n as u64;
        }
    }
    (mtls, plain)
}

/// The paths of Weft's two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub proxy: PathBuf,
    pub control: PathBuf,
}

/// The running pair and its control plane. Drop order: sidecars, then the control plane.
#[derive(Debug)]
pub struct Mesh {
    pub client: Proc,
    pub server: Proc,
    pub control: Proc,
    /// The config directory the control plane watches.
    pub dir: PathBuf,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Blocks until `admin` answers /ready from inside `ns` (`weft-proxy wait`).
fn wait_ready(ns: &Netns, bins: &Binaries, admin: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let proxy = s(&bins.proxy);
    let waited = ns.run(&proxy, &["wait", "--admin-addr", admin, "--timeout", "30s"]);
    if let Err(e) = waited {
        anyhow::bail!(
            "{} not ready at {admin}: {e:#}\n{}",
            proc.name,
            proc.log_tail(30)
        );
    }
    if !proc.alive() {
        anyhow::bail!("{} exited:\n{}", proc.name, proc.log_tail(30));
    }
    Ok(())
}

/// Writes the config into `dir`, starts the control plane in `srv` (unpinned: it is idle
/// during the measurements), then the server sidecar pinned to `server_cpu` and the client
/// sidecar pinned to `client_cpu`, each with one worker thread, and waits until both are
/// ready.
pub fn start(
    topo: &Topology,
    bins: &Binaries,
    dir: &Path,
    log_dir: &Path,
    client_cpu: usize,
    server_cpu: usize,
) -> anyhow::Result<Mesh> {
    use crate::topo::{CLI_IP, SRV_IP};
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, mesh_yaml(CLI_IP, SRV_IP))
        .with_context(|| format!("write {}", config.display()))?;
    let xds = format!("{SRV_IP}:{XDS_PORT}");
    let cp_admin = format!("{SRV_IP}:{CP_ADMIN_PORT}");
    let args: Vec<String> = [
        "--config-dir",
        &s(dir),
        "--xds-addr",
        &xds,
        "--admin-addr",
        &cp_admin,
        "--log",
        "warn",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut control = Proc::spawn(
        "weft-control",
        topo.srv.command(None, &bins.control, &args),
        log_dir,
    )?;
    wait_ready(&topo.srv, bins, &cp_admin, &mut control)?;
    let ca_root = dir.join(".weft/ca/root-cert.pem");
    wait_for_file(&ca_root, Duration::from_secs(10), &mut control)?;
    let server = start_sidecar(
        &topo.srv, bins, dir, "srv", "echo", SRV_IP, server_cpu, log_dir,
    )?;
    let client = start_sidecar(
        &topo.cli, bins, dir, "cli", "cli", CLI_IP, client_cpu, log_dir,
    )?;
    Ok(Mesh {
        client,
        server,
        control,
        dir: dir.to_path_buf(),
    })
}

fn wait_for_file(path: &Path, timeout: Duration, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() {
        if std::time::Instant::now() > deadline || !proc.alive() {
            anyhow::bail!(
                "{} did not appear within {timeout:?}; {} log:\n{}",
                path.display(),
                proc.name,
                proc.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // each is a distinct piece of the sidecar's identity
fn start_sidecar(
    ns: &Netns,
    bins: &Binaries,
    dir: &Path,
    workload: &str,
    service_account: &str,
    ip: &str,
    cpu: usize,
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    use crate::topo::SRV_IP;
    let node_id = format!("{workload}.default");
    let tokens = dir.join(".weft/tokens");
    std::fs::create_dir_all(&tokens).with_context(|| format!("create {}", tokens.display()))?;
    let token_file = tokens.join(format!("{node_id}.json"));
    let token = format!(
        "meshbench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    std::fs::write(
        &token_file,
        token_json(&node_id, &spiffe_id(service_account), &token),
    )
    .with_context(|| format!("write {}", token_file.display()))?;
    let args: Vec<String> = [
        "run",
        "--node-id",
        &node_id,
        "--address",
        ip,
        "--app-address",
        "127.0.0.1",
        "--xds-addr",
        &format!("{SRV_IP}:{XDS_PORT}"),
        "--ca-root",
        &s(&dir.join(".weft/ca/root-cert.pem")),
        "--token-file",
        &s(&token_file),
        "--concurrency",
        "1",
        "--log",
        "warn",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let name = format!("weft-{workload}");
    let mut proc = Proc::spawn(&name, ns.command(Some(cpu), &bins.proxy, &args), log_dir)?;
    wait_ready(ns, bins, &format!("{ip}:{ADMIN_PORT}"), &mut proc)?;
    Ok(proc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_config_parses_with_the_real_config_library() {
        let text = mesh_yaml("198.18.0.1", "198.18.0.2");
        let mut index = weft_config::Index::new(weft_config::MeshSettings::default());
        let diags = index.apply_file(Path::new("/bench/mesh.yaml"), &text);
        let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{text}");
        assert!(index.diagnostics().is_empty(), "{:?}", index.diagnostics());
        let model = index.model();
        let resources = model.resources();
        // 3 x (ServiceEntry, DestinationRule, VirtualService) + 2 WorkloadEntries.
        assert_eq!(resources.len(), 11, "{text}");
        let identities: Vec<String> = resources
            .iter()
            .filter_map(|r| match r {
                weft_config::Resource::WorkloadEntry(we) => Some(
                    model
                        .settings
                        .spiffe_id(we.namespace(), we.spec.service_account()),
                ),
                _ => None,
            })
            .collect();
        // The token files name exactly the identities the control plane derives.
        assert!(identities.contains(&spiffe_id("echo")), "{identities:?}");
        assert!(identities.contains(&spiffe_id("cli")), "{identities:?}");
        for needle in [
            "tls: {mode: DISABLE}",
            "maxRequestsPerConnection: 1",
            "retries: {attempts: 0}",
            "address: \"198.18.0.2\"",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
        assert_eq!(text.matches("tls: {mode: DISABLE}").count(), 1, "{text}");
    }

    #[test]
    fn the_token_names_node_and_identity() {
        let t: serde_json::Value =
            serde_json::from_str(&token_json("cli.default", &spiffe_id("cli"), "abc")).unwrap();
        assert_eq!(t["node_id"], "cli.default");
        assert_eq!(t["identity"], "spiffe://cluster.local/ns/default/sa/cli");
        assert_eq!(t["token"], "abc");
    }

    #[test]
    fn inbound_counts_split_mtls_from_plaintext() {
        let m = "\
# HELP weft_requests Requests handled
# TYPE weft_requests counter
weft_requests_total{direction=\"inbound\",source_workload=\"\",source_namespace=\"\",destination_service=\"echo\",destination_workload=\"srv\",destination_subset=\"\",source_principal=\"spiffe://cluster.local/ns/default/sa/cli\",response_code=\"200\",reason=\"\"} 7
weft_requests_total{direction=\"inbound\",source_workload=\"\",source_namespace=\"\",destination_service=\"echo\",destination_workload=\"srv\",destination_subset=\"\",source_principal=\"\",response_code=\"200\",reason=\"\"} 3
weft_requests_total{direction=\"outbound\",source_workload=\"cli\",source_namespace=\"default\",destination_service=\"echo\",destination_workload=\"srv\",destination_subset=\"\",source_principal=\"\",response_code=\"200\",reason=\"\"} 11
";
        assert_eq!(inbound_counts(m), (7, 3));
        assert_eq!(inbound_counts(""), (0, 0));
    }
}
