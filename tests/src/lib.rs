//! End-to-end harness: the real `weft-control` and `weft-proxy` binaries on loopback.
//!
//! Each test gets its own /24 of loopback addresses ([`Net`]), a config directory of its own
//! ([`ConfigDir`]), a control plane ([`ControlPlane`]) and one sidecar per workload ([`Proxy`]),
//! all real processes talking real xDS over real sockets. The applications behind the sidecars
//! ([`apps`]) run inside the test process: they are ordinary HTTP, gRPC and TCP servers that
//! know nothing about the mesh. Tests wait on readiness signals (`/ready`, the proxies' config
//! versions), never on sleeps.
//!
//! The binaries are taken from the cargo target directory this test was built into. `cargo test
//! --workspace` builds them (the packages that own them have integration tests of their own).

pub mod apps;
pub mod client;
pub mod mesh;
pub mod netns;
pub mod procs;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use procs::{ControlPlane, Proxy};

/// How long anything in a test may take to become true before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A /24 of loopback addresses owned by one test: `127.<a>.<b>.0/24`.
///
/// `a` comes from the process id and `b` from a counter, so tests running in parallel threads
/// (and test binaries running at the same time) never share an address.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    a: u8,
    b: u8,
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl Net {
    pub fn new() -> Self {
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        Self {
            a: 20 + (std::process::id() % 200) as u8,
            b: (n % 250) as u8 + 1,
        }
    }

    /// `127.a.b.host`.
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, host))
    }

    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(host), port)
    }

    /// `127.a.b`, what `{{net}}` in a config template stands for.
    pub fn prefix(&self) -> String {
        format!("127.{}.{}", self.a, self.b)
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// A config directory for one test, removed when dropped.
#[derive(Debug)]
pub struct ConfigDir {
    path: PathBuf,
    net: Net,
}

impl ConfigDir {
    pub fn new(net: Net) -> Self {
        // Several directories may share a net (two control planes in one test).
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "weft-e2e-{}-{}-{}",
            std::process::id(),
            net.prefix(),
            n
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create config dir");
        Self { path, net }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` with `{{net}}` replaced by this test's address prefix. The file is written
    /// to a temporary name and renamed, as editors and `kubectl apply` would, so the watcher
    /// never reads half a file.
    pub fn write(&self, name: &str, template: &str) -> PathBuf {
        let text = template.replace("{{net}}", &self.net.prefix());
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }

    /// Copies a file verbatim (for the Istio conformance samples).
    pub fn copy(&self, from: &Path) -> PathBuf {
        let name = from.file_name().expect("file name");
        let text = std::fs::read_to_string(from).expect("read sample");
        self.write(&name.to_string_lossy(), &text)
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("remove config");
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The repository root (for ../shared/conformance and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Istio's sample configs, beside the repository (../shared/conformance/istio-samples).
pub fn conformance_samples() -> PathBuf {
    repo_root().join("../shared/conformance/istio-samples")
}

/// Polls `check` until it returns Some, or panics with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
