//! The real binaries as child processes: start, wait until ready, read their logs, stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::client;
use crate::{Net, eventually};

/// The path of a workspace binary, from the target directory this test was built into.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>  ->  target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` \
         (`cargo test --workspace` does this on its own)",
        path.display()
    );
    path
}

/// A running child process whose stderr is collected for assertions.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr; done once the process has closed both.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(label: &str, program: &Path, args: &[String]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let logs = Arc::new(Mutex::new(String::new()));
        let streams: [Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        let mut readers = Vec::new();
        for stream in streams.into_iter().flatten() {
            let logs = logs.clone();
            let label = label.to_string();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // Shown by the test runner only when the test fails.
                    println!("[{label}] {line}");
                    if let Ok(mut l) = logs.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            }));
        }
        Self {
            label: label.to_string(),
            child: Some(child),
            logs,
            readers,
        }
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited ({status}); logs:\n{}", self.label, self.logs());
        }
    }

    /// Kills the process at once (SIGKILL), as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Waits for the process to exit and returns its exit code. Its output has been read to the
    /// end by then, so [`Self::logs`] holds everything it printed.
    pub async fn wait(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let code = child.wait().await.ok().and_then(|s| s.code());
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        code
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// Waits until `GET http://<admin>/ready` answers 200.
pub async fn wait_ready(what: &str, admin: SocketAddr, process: &mut Process) {
    eventually(&format!("{what} to be ready"), || {
        process.assert_running();
        async move {
            let r = client::get(admin, &format!("http://{admin}/ready"), &[]).await;
            r.ok().filter(|r| r.status == 200).map(|_| ())
        }
    })
    .await;
}

/// `weft-control` with a file source on a directory.
#[derive(Debug)]
pub struct ControlPlane {
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    dir: PathBuf,
    extra: Vec<String>,
    process: Process,
}

impl ControlPlane {
    /// Starts the control plane on `<net>.1` and waits until it is ready.
    pub async fn start(net: Net, dir: &Path) -> Self {
        Self::start_with(net, dir, &[]).await
    }

    /// Starts it with extra flags (e.g. `--cert-lifetime 3s`).
    pub async fn start_with(net: Net, dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(net, 1, dir, extra).await
    }

    /// Starts it on `<net>.<host>` (a second control plane in the same test).
    pub async fn start_on(net: Net, host: u8, dir: &Path, extra: &[&str]) -> Self {
        let xds = net.addr(host, 15012);
        let admin = net.addr(host, 15014);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let process = Self::spawn(xds, admin, dir, &extra);
        let mut cp = Self {
            xds,
            admin,
            dir: dir.to_path_buf(),
            extra,
            process,
        };
        wait_ready("control plane", admin, &mut cp.process).await;
        cp
    }

    fn spawn(xds: SocketAddr, admin: SocketAddr, dir: &Path, extra: &[String]) -> Process {
        let mut args = vec![
            "--config-dir".to_string(),
            dir.display().to_string(),
            "--xds-addr".to_string(),
            xds.to_string(),
            "--admin-addr".to_string(),
            admin.to_string(),
            "--log".to_string(),
            "info,weft_control=debug".to_string(),
        ];
        args.extend(extra.iter().cloned());
        Process::spawn("control", &bin("weft-control"), &args)
    }

    /// Kills the control plane (SIGKILL).
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Starts it again on the same addresses and directory.
    pub async fn restart(&mut self) {
        self.process.kill().await;
        self.process = Self::spawn(self.xds, self.admin, &self.dir, &self.extra);
        wait_ready("control plane (restarted)", self.admin, &mut self.process).await;
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// The config directory it watches.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `GET /debug/<what>` as JSON.
    pub async fn debug(&self, what: &str) -> serde_json::Value {
        let url = format!("http://{}/debug/{what}", self.admin);
        let resp = client::get(self.admin, &url, &[])
            .await
            .expect("admin answers");
        serde_json::from_slice(&resp.body).expect("debug endpoint returns JSON")
    }
}

/// What a sidecar needs to get its certificate in local mode: the mesh root the control plane
/// wrote, and a token file naming the identity of the workload's service account, as
/// `weftctl up` writes them.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_root: PathBuf,
    pub token_file: PathBuf,
}

impl Credentials {
    /// Writes the token for workload `<name>.default` as its WorkloadEntry in `dir` says
    /// (`identity` overrides it, to make an impostor).
    pub fn write(dir: &Path, name: &str, identity: Option<&str>) -> Self {
        let node_id = format!("{name}.default");
        let identity = identity
            .map(str::to_owned)
            .unwrap_or_else(|| workload_identity(dir, name));
        let tokens = dir.join(".weft/tokens");
        std::fs::create_dir_all(&tokens).expect("create token dir");
        let token_file = tokens.join(format!("{node_id}.json"));
        let token = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let json = serde_json::json!({"token": token, "identity": identity, "node_id": node_id});
        std::fs::write(&token_file, json.to_string()).expect("write token");
        Self {
            ca_root: dir.join(".weft/ca/root-cert.pem"),
            token_file,
        }
    }
}

/// The SPIFFE ID of WorkloadEntry `default/<name>` in `dir`, read with the control plane's
/// own config library.
pub fn workload_identity(dir: &Path, name: &str) -> String {
    let mut index = weft_config::Index::new(weft_config::MeshSettings::default());
    for entry in std::fs::read_dir(dir).expect("list config dir").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read config");
            index.apply_file(&path, &text);
        }
    }
    let model = index.model();
    model
        .resources()
        .into_iter()
        .find_map(|r| match r {
            weft_config::Resource::WorkloadEntry(we) if we.name() == name => Some(
                model
                    .settings
                    .spiffe_id(we.namespace(), we.spec.service_account()),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no WorkloadEntry default/{name} in {}", dir.display()))
}

/// `weft-proxy run` for one workload.
#[derive(Debug)]
pub struct Proxy {
    pub node_id: String,
    /// The workload's address: outbound :15001, inbound :15006, admin :15020.
    pub ip: std::net::IpAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    process: Process,
}

impl Proxy {
    /// Starts a sidecar for workload `<name>.default` at `<net>.<host>` and waits until it has
    /// applied its first config.
    pub async fn start(net: Net, host: u8, name: &str, cp: &ControlPlane) -> Self {
        Self::start_with(net, host, name, cp, "delta").await
    }

    pub async fn start_with(net: Net, host: u8, name: &str, cp: &ControlPlane, mode: &str) -> Self {
        let creds = Credentials::write(&cp.dir, name, None);
        Self::start_full(net, host, name, cp, mode, &creds).await
    }

    /// Starts a sidecar with the given credentials (another root, another identity...).
    pub async fn start_full(
        net: Net,
        host: u8,
        name: &str,
        cp: &ControlPlane,
        mode: &str,
        creds: &Credentials,
    ) -> Self {
        let ip = net.ip(host);
        let node_id = format!("{name}.default");
        let args = vec![
            "run".to_string(),
            "--ca-root".to_string(),
            creds.ca_root.display().to_string(),
            "--token-file".to_string(),
            creds.token_file.display().to_string(),
            "--node-id".to_string(),
            node_id.clone(),
            "--address".to_string(),
            ip.to_string(),
            "--xds-addr".to_string(),
            cp.xds.to_string(),
            "--xds-mode".to_string(),
            mode.to_string(),
            "--log".to_string(),
            "info,weft_proxy=debug".to_string(),
        ];
        let mut process = Process::spawn(&node_id, &bin("weft-proxy"), &args);
        let admin = SocketAddr::new(ip, 15020);
        wait_ready(&node_id, admin, &mut process).await;
        Self {
            node_id,
            ip,
            outbound: SocketAddr::new(ip, 15001),
            admin,
            process,
        }
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// The proxy's `/config_dump`.
    pub async fn config_dump(&self) -> serde_json::Value {
        let url = format!("http://{}/config_dump", self.admin);
        let resp = client::get(self.admin, &url, &[])
            .await
            .expect("admin answers");
        serde_json::from_slice(&resp.body).expect("config_dump is JSON")
    }

    /// The xDS version of each resource type the proxy has applied (`/config_dump`'s
    /// `versions`). To wait for a config edit to reach the proxy when no answer can show it
    /// yet: read this, write the file, then wait until it differs.
    pub async fn config_versions(&self) -> serde_json::Value {
        self.config_dump().await["versions"].clone()
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        let resp = client::get(self.admin, &url, &[])
            .await
            .expect("admin answers");
        String::from_utf8_lossy(&resp.body).into_owned()
    }
}
