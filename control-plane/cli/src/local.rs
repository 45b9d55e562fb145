//! Local mode: `weftctl up DIR`.
//!
//! The mesh without a cluster: one control plane with a file source on DIR, and one sidecar per
//! WorkloadEntry, each on the workload's own loopback address (127.0.0.x plays the pod IP). Every
//! component is a separate process running the same code as the standalone binaries, so local
//! mode exercises the real xDS stream, the real listeners and the real mesh hop.
//!
//! The work splits into a pure plan (which processes, on which addresses and ports, checked for
//! clashes before anything starts) and a thin supervisor that spawns them, waits for each to
//! report ready, and stops them all on Ctrl-C, SIGTERM, or when one of them dies.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::identity;

/// Ports of a sidecar, fixed by DESIGN.md; in local mode each workload has its own address, so
/// every sidecar can use the same numbers.
pub(crate) const OUTBOUND_PORT: u16 = 15001;
pub(crate) const INBOUND_PORT: u16 = 15006;
pub(crate) const PROXY_ADMIN_PORT: u16 = 15020;

/// How long a component may take to report ready before `up` gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a component may take to exit after SIGTERM before it is killed: longer than the
/// sidecars' default drain time (5s), so a drain is never cut short by `up` itself.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UpArgs {
    /// Directory of YAML config: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule.
    pub(crate) dir: PathBuf,
    /// Address the control plane listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) control_address: IpAddr,
    /// Port of the control plane's xDS server.
    #[arg(long, default_value_t = 15012)]
    pub(crate) xds_port: u16,
    /// Port of the control plane's admin server (/ready, /metrics, /debug/syncz).
    #[arg(long, default_value_t = 15014)]
    pub(crate) admin_port: u16,
    /// xDS flavour the sidecars speak: delta (incremental) or sotw (state of the world).
    #[arg(long, default_value = "delta", value_parser = ["delta", "sotw"])]
    pub(crate) xds_mode: String,
    /// Log filter handed to every component (tracing EnvFilter syntax).
    #[arg(long, default_value = "info")]
    pub(crate) log: String,
    /// Print every log line of every component (by default only warnings and errors).
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

/// A workload found in DIR: it gets a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Workload {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) address: IpAddr,
    /// The SPIFFE ID its sidecar may ask the CA for (from the WorkloadEntry's serviceAccount).
    pub(crate) identity: String,
}

impl Workload {
    /// The xDS node id, `<name>.<namespace>`.
    pub(crate) fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// One process to run, decided before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Short name for logs and the summary table.
    pub(crate) label: String,
    /// Arguments after `weftctl exec`.
    pub(crate) args: Vec<OsString>,
    /// Every address this process binds, with what it is for.
    pub(crate) binds: Vec<(SocketAddr, &'static str)>,
    /// Where to ask whether it is ready.
    pub(crate) admin: SocketAddr,
}

/// Everything `up` will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) dir: PathBuf,
    pub(crate) control: Planned,
    pub(crate) xds: SocketAddr,
    pub(crate) proxies: Vec<(Workload, Planned)>,
}

/// Decides what to run. Pure: it checks the addresses but binds nothing.
pub(crate) fn plan(args: &UpArgs, workloads: &[Workload]) -> anyhow::Result<Plan> {
    let xds = SocketAddr::new(args.control_address, args.xds_port);
    let admin = SocketAddr::new(args.control_address, args.admin_port);
    let control = Planned {
        label: "control".to_string(),
        args: os_args([
            "control",
            "--config-dir",
            &args.dir.display().to_string(),
            "--xds-addr",
            &xds.to_string(),
            "--admin-addr",
            &admin.to_string(),
            "--log",
            &args.log,
        ]),
        binds: vec![(xds, "control plane xDS"), (admin, "control plane admin")],
        admin,
    };

    let mut seen = BTreeSet::new();
    let mut proxies = Vec::new();
    for w in workloads {
        if !w.address.is_loopback() {
            bail!(
                "WorkloadEntry {}/{}: address {} is not a loopback address; local mode runs every \
                 workload on its own 127.0.0.x address",
                w.namespace,
                w.name,
                w.address
            );
        }
        if !seen.insert(w.address) {
            bail!(
                "WorkloadEntry {}/{}: address {} is used by another WorkloadEntry; each workload \
                 needs its own address in local mode",
                w.namespace,
                w.name,
                w.address
            );
        }
        let addr = |port| SocketAddr::new(w.address, port);
        let planned = Planned {
            label: w.node_id(),
            args: os_args([
                "proxy",
                "run",
                "--node-id",
                &w.node_id(),
                "--address",
                &w.address.to_string(),
                "--xds-addr",
                &xds.to_string(),
                "--xds-mode",
                &args.xds_mode,
                "--ca-root",
                &identity::ca_root(&args.dir).display().to_string(),
                "--token-file",
                &identity::token_file(&args.dir, w).display().to_string(),
                "--log",
                &args.log,
            ]),
            binds: vec![
                (addr(OUTBOUND_PORT), "sidecar outbound"),
                (addr(INBOUND_PORT), "sidecar inbound"),
                (addr(PROXY_ADMIN_PORT), "sidecar admin"),
            ],
            admin: addr(PROXY_ADMIN_PORT),
        };
        proxies.push((w.clone(), planned));
    }

    // Two components wanting one socket would fail later with a confusing message.
    let mut binds = BTreeSet::new();
    for p in std::iter::once(&control).chain(proxies.iter().map(|(_, p)| p)) {
        for (addr, what) in &p.binds {
            if !binds.insert(*addr) {
                bail!(
                    "{addr} is wanted twice (the second time as {what} of {})",
                    p.label
                );
            }
        }
    }

    Ok(Plan {
        dir: args.dir.clone(),
        control,
        xds,
        proxies,
    })
}

fn os_args<const N: usize>(args: [&str; N]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Checks that every socket of the plan is free, so `up` fails before starting anything.
pub(crate) fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    let all = std::iter::once(&plan.control).chain(plan.proxies.iter().map(|(_, p)| p));
    for p in all {
        for (addr, what) in &p.binds {
            if let Err(e) = TcpListener::bind(addr) {
                bail!(
                    "cannot start: {addr} ({what} of {}) is not available: {e}",
                    p.label
                );
            }
        }
    }
    Ok(())
}

/// Reads DIR with the same validator the control plane uses, and lists its workloads.
///
/// Local mode starts only from a directory that loads cleanly: the control plane would keep
/// running with a bad document (serving the rest), but at start-up there is no "last good"
/// config to fall back to, so the user is better served by the list of errors.
pub(crate) fn load_workloads(dir: &Path) -> anyhow::Result<Vec<Workload>> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read config directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut index = weft_config::Index::new(weft_config::MeshSettings::default());
    for file in yaml_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        index.apply_file(&file, &text);
    }
    // After every file is in: cross-references (a route to a subset defined in another file)
    // are judged against the whole directory.
    let errors: Vec<String> = index
        .diagnostics()
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        bail!(
            "{} has {} error(s):\n  {}",
            dir.display(),
            errors.len(),
            errors.join("\n  ")
        );
    }
    let mut workloads = Vec::new();
    for resource in index.model().resources() {
        let weft_config::Resource::WorkloadEntry(we) = resource else {
            continue;
        };
        let (name, namespace) = (we.name(), we.namespace());
        let address = we.spec.address.as_deref().unwrap_or_default();
        let address = address.parse().map_err(|_| {
            anyhow!("WorkloadEntry {namespace}/{name}: address {address:?} is not an IP address")
        })?;
        let identity = index
            .model()
            .settings
            .spiffe_id(namespace, we.spec.service_account());
        workloads.push(Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            address,
            identity,
        });
    }
    if workloads.is_empty() {
        bail!(
            "{} has no WorkloadEntry: local mode runs one sidecar per WorkloadEntry",
            dir.display()
        );
    }
    Ok(workloads)
}

/// The YAML files under `dir`, recursively, in a stable order; hidden files and directories
/// (editor swap files, `.git`) are skipped, as the control plane's file source skips them.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

// === impl Running ===

/// A started component.
#[derive(Debug)]
struct Component {
    label: String,
    child: Child,
}

/// The processes of a running local mesh.
#[derive(Debug)]
pub(crate) struct Running {
    components: Vec<Component>,
}

/// Why the mesh stopped.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// A component exited on its own.
    Died { label: String, status: String },
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal => f.write_str("stopped by signal"),
            Self::Died { label, status } => write!(f, "{label} exited unexpectedly ({status})"),
        }
    }
}

/// Where component logs go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Logs {
    /// Every line, prefixed with the component's label.
    All,
    /// Warnings and errors only.
    Problems,
}

impl Running {
    /// Starts the control plane, waits for it, then starts every sidecar and waits for them.
    pub(crate) async fn start(plan: &Plan, logs: Logs) -> anyhow::Result<Self> {
        let mut running = Self {
            components: Vec::new(),
        };
        let result = running.start_all(plan, logs).await;
        if let Err(e) = result {
            running.stop().await;
            return Err(e);
        }
        Ok(running)
    }

    async fn start_all(&mut self, plan: &Plan, logs: Logs) -> anyhow::Result<()> {
        self.spawn(&plan.control, logs)?;
        self.wait_ready(0, plan.control.admin).await?;
        let first = self.components.len();
        for (_, p) in &plan.proxies {
            self.spawn(p, logs)?;
        }
        for (i, (_, p)) in plan.proxies.iter().enumerate() {
            self.wait_ready(first + i, p.admin).await?;
        }
        Ok(())
    }

    /// Starts more components (the demo's apps) and waits until each answers on `/ready`.
    pub(crate) async fn add(&mut self, planned: &[Planned], logs: Logs) -> anyhow::Result<()> {
        let first = self.components.len();
        for p in planned {
            self.spawn(p, logs)?;
        }
        for (i, p) in planned.iter().enumerate() {
            self.wait_ready(first + i, p.admin).await?;
        }
        Ok(())
    }

    fn spawn(&mut self, planned: &Planned, logs: Logs) -> anyhow::Result<()> {
        let exe = crate::self_exe().context("cannot find the weftctl executable")?;
        let mut child = Command::new(exe)
            .arg("exec")
            .args(&planned.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", planned.label))?;
        for out in [
            child.stdout.take().map(|s| Box::pin(s) as Pin<Reader>),
            child.stderr.take().map(|s| Box::pin(s) as Pin<Reader>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(forward_logs(planned.label.clone(), out, logs));
        }
        self.components.push(Component {
            label: planned.label.clone(),
            child,
        });
        Ok(())
    }

    /// Polls the component's `/ready` until it answers 200. The admin endpoint is the readiness
    /// signal the components publish; polling it is how Kubernetes probes them too.
    async fn wait_ready(&mut self, index: usize, admin: SocketAddr) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let url = format!("http://{admin}/ready");
        loop {
            let component = &mut self.components[index];
            if let Some(status) = component.child.try_wait()? {
                bail!("{} exited before it was ready ({status})", component.label);
            }
            if crate::proxy_client::get_status(admin, &url).await == Some(200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not become ready within {}s ({url})",
                    component.label,
                    READY_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for Ctrl-C, SIGTERM, or the first component to exit.
    pub(crate) async fn wait(&mut self) -> Stopped {
        let died = futures::future::select_all(self.components.iter_mut().map(|c| {
            Box::pin(async move {
                let status = c.child.wait().await;
                (c.label.clone(), status)
            })
        }));
        tokio::select! {
            () = shutdown_signal() => Stopped::Signal,
            ((label, status), _, _) = died => Stopped::Died {
                label,
                status: match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                },
            },
        }
    }

    /// Stops every component: SIGTERM, a grace period, then SIGKILL. Sidecars stop first so
    /// they never lose the control plane while still serving.
    pub(crate) async fn stop(&mut self) {
        for c in self.components.iter_mut().rev() {
            terminate(&mut c.child).await;
        }
        self.components.clear();
    }
}

type Reader = dyn tokio::io::AsyncRead + Send;
type Pin<T> = std::pin::Pin<Box<T>>;

async fn forward_logs(label: String, out: Pin<Reader>, logs: Logs) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let show = match logs {
            Logs::All => true,
            Logs::Problems => line.contains("WARN") || line.contains("ERROR"),
        };
        if show {
            eprintln!("[{label}] {line}");
        }
    }
}

async fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Makes this process receive SIGTERM when its parent dies (Linux), so components started by
/// `up` never outlive it.
pub(crate) fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    }
}

/// Prints where everything listens.
pub(crate) fn print_summary(plan: &Plan) {
    println!("weft: mesh is up (config: {})", plan.dir.display());
    println!(
        "  control plane    xds {}   admin http://{}",
        plan.xds, plan.control.admin
    );
    for (w, p) in &plan.proxies {
        println!(
            "  sidecar {:<24} {:<12} outbound :{OUTBOUND_PORT}  inbound :{INBOUND_PORT}  admin http://{}",
            p.label, w.address, p.admin
        );
    }
    if let Some((w, _)) = plan.proxies.first() {
        println!(
            "try:  curl -x http://{}:{OUTBOUND_PORT} http://<service>:<port>/   (a request from {})",
            w.address, w.name
        );
    }
    println!(
        "Edit the files in {} to change policy live; Ctrl-C stops everything.",
        plan.dir.display()
    );
}

/// `weftctl up DIR`.
pub(crate) fn up_main(args: UpArgs) -> ExitCode {
    match run_up(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weftctl up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let workloads = load_workloads(&args.dir)?;
    let plan = plan(&args, &workloads)?;
    check_ports(&plan)?;
    identity::write_tokens(&args.dir, &workloads)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let logs = if args.verbose {
            Logs::All
        } else {
            Logs::Problems
        };
        let mut running = Running::start(&plan, logs).await?;
        print_summary(&plan);
        let stopped = running.wait().await;
        eprintln!("weft: {stopped}; stopping everything");
        running.stop().await;
        Ok(match stopped {
            Stopped::Signal => ExitCode::SUCCESS,
            Stopped::Died { .. } => ExitCode::FAILURE,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> UpArgs {
        UpArgs {
            dir: PathBuf::from("/cfg"),
            control_address: "127.0.0.1".parse().unwrap(),
            xds_port: 15012,
            admin_port: 15014,
            xds_mode: "delta".into(),
            log: "info".into(),
            verbose: false,
        }
    }

    fn wl(name: &str, addr: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            address: addr.parse().unwrap(),
            identity: format!("spiffe://cluster.local/ns/default/sa/{name}"),
        }
    }

    #[test]
    fn plans_one_sidecar_per_workload_on_its_address() {
        let plan = plan(&args(), &[wl("a", "127.0.0.2"), wl("b", "127.0.0.3")]).unwrap();
        assert_eq!(plan.proxies.len(), 2);
        let (_, b) = &plan.proxies[1];
        assert_eq!(b.label, "b.default");
        assert_eq!(b.admin, "127.0.0.3:15020".parse().unwrap());
        let args: Vec<_> = b
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--xds-addr", "127.0.0.1:15012"]),
            "{args:?}"
        );
        assert!(
            args.windows(2).any(|w| w == ["--node-id", "b.default"]),
            "{args:?}"
        );
    }

    #[test]
    fn rejects_a_shared_address() {
        let err = plan(&args(), &[wl("a", "127.0.0.2"), wl("b", "127.0.0.2")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("WorkloadEntry default/b: address 127.0.0.2 is used")
        );
    }

    #[test]
    fn rejects_a_non_loopback_address() {
        let err = plan(&args(), &[wl("a", "10.0.0.2")]).unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    }

    #[test]
    fn rejects_a_workload_on_the_control_plane_ports() {
        let mut a = args();
        a.xds_port = 15001;
        let err = plan(&a, &[wl("a", "127.0.0.1")]).unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.1:15001 is wanted twice"),
            "{err}"
        );
    }

    #[test]
    fn a_taken_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = args();
        a.xds_port = taken.local_addr().unwrap().port();
        let plan = plan(&a, &[]).unwrap();
        let err = check_ports(&plan).unwrap_err().to_string();
        assert!(
            err.contains("(control plane xDS of control) is not available"),
            "{err}"
        );
    }
}
