//! "Pods" as network namespaces, for the interception tests (they need root).
//!
//! A [`Node`] is a network namespace of its own holding a bridge on `10.<a>.<b>.1/24`; every
//! [`Pod`] is another namespace joined to that bridge by a veth pair (`eth0` in the pod, with
//! the pod's address and a default route via the bridge). Nothing is created in the test's own
//! (root) namespace: deleting the namespaces removes the veths and the bridge with them, which
//! the guards do when dropped, also on panic.
//!
//! The apps and clients stay in the test process: a socket belongs to the namespace it was
//! created in, so [`Ns::listen`] and [`Ns::connect`] create theirs on a short-lived thread
//! that entered the namespace (`setns`), then hand them to the test's tokio runtime. The real
//! binaries run under `ip netns exec`, the proxy as uid 1337 (`setpriv`) so that the rules of
//! `weft-proxy init` leave its own traffic alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::procs::{Process, bin};

/// The proxy's uid and gid, as `weft-proxy init` excludes them by default.
pub const PROXY_UID: u32 = 1337;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why these tests cannot run here, or None when they can: root, `ip`, `iptables`, `nft`,
/// `setpriv`, and a namespace can really be created.
pub fn unsupported() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (network namespaces and NAT rules need it)".into());
    }
    for tool in ["ip", "iptables", "nft", "setpriv"] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed (or does not run)"));
        }
    }
    let probe = format!("weftprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            // The kernel must also offer bridges and veth pairs.
            let mut why = None;
            for kind in [&["br0", "type", "bridge"][..], &["v0", "type", "veth"][..]] {
                let mut args = vec!["-n", &probe, "link", "add"];
                args.extend_from_slice(kind);
                match Command::new("ip").args(&args).output() {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => {
                        why = Some(format!(
                            "`ip link add {}` fails: {}",
                            kind.join(" "),
                            String::from_utf8_lossy(&o.stderr).trim()
                        ));
                        break;
                    }
                    Err(e) => {
                        why = Some(format!("`ip link add` cannot run: {e}"));
                        break;
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            why
        }
        Ok(o) => Some(format!(
            "`ip netns add` fails here (a sandbox?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip netns add` cannot run: {e}")),
    }
}

/// Runs `ip <args>`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Ns {
    name: String,
}

impl Ns {
    fn create(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs a command inside the namespace (as root) and returns its stdout; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A TCP listener inside the namespace.
    pub async fn listen(&self, addr: SocketAddr) -> tokio::net::TcpListener {
        let std = on_thread(self.path(), move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr} in {}: {e}", self.name));
        tokio::net::TcpListener::from_std(std).expect("register listener")
    }

    /// A TCP connection made from inside the namespace (so the pod's NAT rules apply to it).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        connect_in(self.path(), addr).await
    }

    /// A cheap handle for closures that must own one (a gRPC connector).
    pub fn handle(&self) -> NsHandle {
        NsHandle { path: self.path() }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A namespace by path, for `'static` closures; the [`Ns`] it came from owns the namespace.
#[derive(Debug, Clone)]
pub struct NsHandle {
    path: PathBuf,
}

impl NsHandle {
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        connect_in(self.path.clone(), addr).await
    }
}

/// Runs `f` on a fresh OS thread that entered the namespace at `path`.
async fn on_thread<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let fd = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })();
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
}

async fn connect_in(path: PathBuf, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let std = on_thread(path, move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await?;
    tokio::net::TcpStream::from_std(std)
}

/// The node: a namespace with the bridge all pods hang off, `10.<a>.<b>.1/24`.
#[derive(Debug)]
pub struct Node {
    pub ns: Ns,
    tag: String,
    a: u8,
    b: u8,
    /// The two middle groups of the node's IPv6 prefix `fd77:<pid>:<n>::/64`.
    v6: [u16; 2],
    next_port: AtomicU32,
}

impl Node {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("wft{pid}x{n}");
        let ns = Ns::create(format!("{tag}node"));
        let node = Self {
            ns,
            tag,
            a: 100 + (pid % 100) as u8,
            b: (n % 250) as u8 + 1,
            v6: [(pid % 65536) as u16, n as u16],
            next_port: AtomicU32::new(0),
        };
        enable_ipv6(&node.ns);
        let cidr = format!("{}/24", node.ip(1));
        node.ns.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ns.ip(&["addr", "add", &cidr, "dev", "br0"]);
        let cidr6 = format!("{}/64", node.ip6(1));
        node.ns
            .ip(&["-6", "addr", "add", &cidr6, "dev", "br0", "nodad"]);
        node.ns.ip(&["link", "set", "br0", "up"]);
        node
    }

    /// `10.a.b.host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, host)
    }

    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip(host), port))
    }

    /// `fd77:<pid>:<n>::<host>` (host in hex), the IPv6 twin of [`Node::ip`].
    pub fn ip6(&self, host: u16) -> Ipv6Addr {
        let [p, n] = self.v6;
        Ipv6Addr::new(0xfd77, p, n, 0, 0, 0, 0, host)
    }

    pub fn addr6(&self, host: u16, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6(host)), port)
    }

    /// `fd77:<pid>:<n>:`, for config templates: `{prefix6}:c8` is `fd77:<pid>:<n>::c8`.
    pub fn prefix6(&self) -> String {
        let [p, n] = self.v6;
        format!("fd77:{p:x}:{n:x}:")
    }

    /// `10.a.b`, for config templates.
    pub fn prefix(&self) -> String {
        format!("10.{}.{}", self.a, self.b)
    }

    /// A pod at `10.a.b.host` and `fd77:<pid>:<n>::<host>`, joined to the bridge; no proxy,
    /// no rules yet.
    pub fn pod(&self, host: u8, name: &str) -> Pod {
        let ns = Ns::create(format!("{}{name}", self.tag));
        let port = format!("vp{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        let ip = self.ip(host);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        enable_ipv6(&ns);
        let ip6 = self.ip6(host.into());
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &self.ip(1).to_string()]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &self.ip6(1).to_string(),
        ]);
        Pod {
            proxy: None,
            ns,
            ip,
            ip6,
            proxy_address: IpAddr::V4(ip),
            name: name.to_string(),
        }
    }

    /// `weft-control` inside the node namespace on the bridge address (xDS :15012, admin
    /// :15014), waited until ready.
    pub async fn control_plane(&self, dir: &Path) -> Process {
        let xds = self.addr(1, 15012).to_string();
        let admin = self.addr(1, 15014).to_string();
        let control = bin("weft-control").display().to_string();
        let args: Vec<String> = [
            "netns",
            "exec",
            self.ns.name(),
            &control,
            "--config-dir",
            &dir.display().to_string(),
            "--xds-addr",
            &xds,
            "--admin-addr",
            &admin,
            "--log",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut process = Process::spawn("control", Path::new("ip"), &args);
        wait_in(&self.ns, &admin, &mut process).await;
        process
    }
}

/// IPv6 on in a namespace (a host may default new namespaces to disabled).
fn enable_ipv6(ns: &Ns) {
    for key in ["all", "default"] {
        let setting = format!("net.ipv6.conf.{key}.disable_ipv6=0");
        ns.exec("sysctl", &["-q", "-w", &setting]);
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// Blocks until `GET http://<admin>/ready` answers 200 from inside `ns` (`weft-proxy wait`).
async fn wait_in(ns: &Ns, admin: &str, process: &mut Process) {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bin("weft-proxy"))
        .args(["wait", "--admin-addr", admin, "--timeout", "30s"])
        .output()
        .await
        .expect("run weft-proxy wait");
    process.assert_running();
    assert!(
        out.status.success(),
        "{admin} not ready: {}\nlogs:\n{}",
        String::from_utf8_lossy(&out.stderr),
        process.logs()
    );
}

/// A pod: its namespace, and its sidecar once started. The sidecar is killed before the
/// namespace is deleted.
#[derive(Debug)]
pub struct Pod {
    pub proxy: Option<Process>,
    pub ns: Ns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The sidecar's `--address` (where its admin port is): the v4 pod IP unless
    /// [`Pod::start_proxy_at`] chose another.
    pub proxy_address: IpAddr,
    pub name: String,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    /// Installs the interception rules with the real `weft-proxy init` (as root).
    pub fn init(&self, extra: &[&str]) {
        let proxy = bin("weft-proxy").display().to_string();
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        self.ns.exec(&proxy, &args);
    }

    /// Starts `weft-proxy run` as uid 1337 for WorkloadEntry `<name>.default`, with copies of
    /// the mesh root and of a fresh token that uid 1337 can read, and waits with
    /// `weft-proxy wait` until it is ready. The app is reached on 127.0.0.1.
    pub async fn start_proxy(&mut self, node: &Node, config_dir: &Path, extra: &[&str]) {
        self.start_proxy_at(node, config_dir, IpAddr::V4(self.ip), extra)
            .await;
    }

    /// [`Pod::start_proxy`] with `--address <address>` (the v6 pod IP for an IPv6 pod, whose
    /// app is then reached on ::1). xDS still goes to the node's v4 bridge address.
    pub async fn start_proxy_at(
        &mut self,
        node: &Node,
        config_dir: &Path,
        address: IpAddr,
        extra: &[&str],
    ) {
        let app_address = if address.is_ipv6() {
            "::1"
        } else {
            "127.0.0.1"
        };
        self.proxy_address = address;
        let creds = crate::procs::Credentials::write(config_dir, &self.name, None);
        let files = config_dir.join(format!("pod-{}", self.name));
        std::fs::create_dir_all(&files).expect("create pod dir");
        let ca_root = files.join("root-cert.pem");
        let token = files.join("token.json");
        std::fs::copy(&creds.ca_root, &ca_root).expect("copy the mesh root");
        std::fs::copy(&creds.token_file, &token).expect("copy the token");
        for f in [&ca_root, &token] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .expect("chmod credentials");
        }
        let proxy = bin("weft-proxy").display().to_string();
        let uid = format!("--reuid={PROXY_UID}");
        let gid = format!("--regid={PROXY_UID}");
        let mut args: Vec<String> = [
            "netns",
            "exec",
            self.ns.name(),
            "setpriv",
            &uid,
            &gid,
            "--clear-groups",
            &proxy,
            "run",
            "--ca-root",
            &ca_root.display().to_string(),
            "--token-file",
            &token.display().to_string(),
            "--node-id",
            &format!("{}.default", self.name),
            // The pod IP, as a Kubernetes sidecar gets it: the proxy binds its data-plane
            // listeners on every address of the pod (the OUTPUT chain's REDIRECT sends the
            // app's connections to 127.0.0.1:15001).
            "--address",
            &address.to_string(),
            "--app-address",
            app_address,
            "--xds-addr",
            &node.addr(1, 15012).to_string(),
            "--log",
            "info,weft_proxy=debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = Process::spawn(&self.name, Path::new("ip"), &args);
        let admin = SocketAddr::new(self.proxy_address, 15020).to_string();
        wait_in(&self.ns, &admin, &mut process).await;
        self.proxy = Some(process);
    }

    /// The sidecar's `/metrics`, read from inside the pod.
    pub async fn metrics(&self) -> String {
        let stream = self
            .ns
            .connect(SocketAddr::new(self.proxy_address, 15020))
            .await
            .expect("connect to the admin port");
        let mut c = crate::client::H1::over(stream).await.expect("handshake");
        let r = c
            .get("/metrics", &[("host", "admin")])
            .await
            .expect("metrics");
        r.text()
    }
}
