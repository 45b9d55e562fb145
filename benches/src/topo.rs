//! The benchmark's two "nodes" (PERFORMANCE.md §7.1): network namespaces `<tag>-cli` and
//! `<tag>-srv` joined by one veth pair, and the processes run inside them.
//!
//! Nothing is created in the root namespace: the veth pair is made inside `<tag>-cli` with its
//! peer placed straight into `<tag>-srv`, so deleting the two namespaces removes everything,
//! and both ends may share a name (`veth0`) however long the tag is.
//!
//! Processes are spawned under `ip netns exec` (which `exec`s, so the pid is the program's
//! own, or `taskset`'s which `exec`s too), log to a file, and signal readiness by printing a
//! line there. [`Proc`] guards them: dropping one stops its whole process tree.

use std::fs::OpenOptions;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sys;

/// The client side of the veth pair, in `<tag>-cli`.
pub const CLI_IP: &str = "198.18.0.1";
/// The server side of the veth pair, in `<tag>-srv`.
pub const SRV_IP: &str = "198.18.0.2";

/// Name of the veth end in each namespace.
const VETH: &str = "veth0";
/// How often readiness conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// How long [`Proc::stop`] lets a process exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why the namespaced benchmarks cannot run here, or None when they can: root, `ip` and
/// `taskset`, and a namespace with a veth pair can really be created (sandboxes refuse).
/// Probed once per process, so concurrent callers do not race on the probe namespace.
pub fn unsupported() -> Option<String> {
    static ANSWER: OnceLock<Option<String>> = OnceLock::new();
    ANSWER.get_or_init(probe_support).clone()
}

fn probe_support() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (network namespaces need it)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("taskset", "-V")] {
        let runs = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            return Some(format!("`{tool}` is not installed (or does not run)"));
        }
    }
    let probe = format!("meshprobe{}", std::process::id());
    let why = match ip(&["netns", "add", &probe]) {
        Err(e) => Some(format!(
            "network namespaces cannot be created here (a sandbox?): {e:#}"
        )),
        Ok(_) => ip(&[
            "-n", &probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])
        .err()
        .map(|e| format!("veth pairs cannot be created here: {e:#}")),
    };
    let _ = ip(&["netns", "del", &probe]);
    why
}

/// The two namespaces; dropping it deletes them (and with them the veth pair). Processes in
/// them are stopped by their own [`Proc`] guards, which must be dropped first.
#[derive(Debug)]
pub struct Topology {
    pub cli: Netns,
    pub srv: Netns,
}

impl Topology {
    /// Creates `<tag>-cli` and `<tag>-srv`, deleting namespaces of those names left by a
    /// crashed run first; `lo` up in both; `veth0` with [`CLI_IP`]/30 and [`SRV_IP`]/30.
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let topo = Self {
            cli: Netns {
                name: format!("{tag}-cli"),
            },
            srv: Netns {
                name: format!("{tag}-srv"),
            },
        };
        for ns in [&topo.cli, &topo.srv] {
            // A stale namespace from a crashed run; absent is the normal case.
            let _ = ip(&["netns", "del", &ns.name]);
        }
        // From here on an error drops `topo`, which deletes whatever was created.
        for ns in [&topo.cli, &topo.srv] {
            ip(&["netns", "add", &ns.name])?;
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        topo.cli.ip(&[
            "link",
            "add",
            VETH,
            "type",
            "veth",
            "peer",
            "name",
            VETH,
            "netns",
            &topo.srv.name,
        ])?;
        for (ns, addr) in [(&topo.cli, CLI_IP), (&topo.srv, SRV_IP)] {
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", VETH])?;
            ns.ip(&["link", "set", VETH, "up"])?;
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.srv] {
            let _ = ip(&["netns", "del", &ns.name]);
        }
    }
}

/// A named network namespace (`ip netns`).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns exec NAME [taskset -c CPU] PROGRAM ARGS`, not started.
    pub fn command(&self, cpu: Option<usize>, program: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        cmd.arg(program).args(args);
        cmd
    }

    /// Runs `program args` inside the namespace to completion; its stdout, or an error naming
    /// the command and its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running process whose stdout and stderr go to `log`; stopped (with its descendants) when
/// dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout + stderr appended to `log_dir/<name>.log`
    /// (truncated first).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        // Append mode, so the two streams interleave instead of overwriting each other.
        let out = OpenOptions::new()
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone().context("dup the log file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            log,
            child,
            exit: None,
        })
    }

    /// Waits until the log holds a complete line containing `needle` and returns that line
    /// (the first one in the whole log, so readiness lines may be awaited in any order). Fails with the log tail when the process exits first or `timeout`
    /// passes.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check liveness before reading, so a line written just before exiting is seen.
            let exited = !self.alive();
            let text = read_lossy(&self.log)?;
            if let Some(line) = find_line(&text, needle, exited) {
                return Ok(line);
            }
            if let Some(status) = self.exit {
                bail!(
                    "{} exited with {status} before printing {needle:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the process is still running (reaps it if not).
    pub fn alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            // Not our child any more (cannot happen while we own it): call it dead.
            Err(_) => false,
        }
    }

    /// How the process exited, once it has (and [`Proc::alive`] or [`Proc::stop`] saw it).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        match read_lossy(&self.log) {
            Ok(text) => tail(&text, lines),
            Err(e) => format!("(log unreadable: {e:#})"),
        }
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; also kills descendants left
    /// behind. Idempotent.
    pub fn stop(&mut self) {
        self.stop_with(STOP_GRACE);
    }

    /// [`Proc::stop`] with another grace period.
    pub fn stop_with(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        // Remember the tree now: once the root dies its children are re-parented away.
        let tree: Vec<(u32, u64)> = sys::tree(self.pid)
            .into_iter()
            .filter_map(|p| Some((p, sys::stat(p).ok()?.starttime)))
            .collect();
        let _ = signal(self.pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if self.alive() {
            let _ = self.child.kill();
        }
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
        // Descendants still alive (an nginx worker whose master was killed): kill them, but
        // only if the pid still names the same process (same start time).
        for (p, start) in tree.into_iter().skip(1) {
            if sys::stat(p).is_ok_and(|s| s.starttime == start) {
                let _ = signal(p, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("invalid pid")?;
    rustix::process::kill_process(pid, sig).context("kill")
}

fn read_lossy(path: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("read {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The first line of `text` containing `needle`. Only newline-terminated lines count unless
/// the writer has exited (`complete`): a line still being written could be cut short.
pub fn find_line(text: &str, needle: &str, complete: bool) -> Option<String> {
    text.split_inclusive('\n')
        .take_while(|line| complete || line.ends_with('\n'))
        .find(|line| line.contains(needle))
        .map(|line| line.trim_end_matches(['\n', '\r']).to_string())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `GET url` answers 200 from inside `ns`, with `meshbench probe` (this very
/// executable).
pub fn wait_http_ok(ns: &Netns, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the meshbench executable")?;
    wait_http_ok_with(&exe, ns, url, timeout)
}

/// [`wait_http_ok`] with the `meshbench` binary given (tests run from another executable).
pub fn wait_http_ok_with(
    meshbench: &Path,
    ns: &Netns,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let args = [
        "probe".to_string(),
        url.to_string(),
        "--timeout".to_string(),
        format!("{}ms", timeout.as_millis().max(1)),
    ];
    let out = ns
        .command(None, meshbench, &args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} probe in {}", meshbench.display(), ns.name))?;
    if !out.status.success() {
        bail!(
            "{url} not ready in {} within {timeout:?}: {}{}",
            ns.name,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_line_complete_lines_only() {
        let text = "starting\nready 127.0.0.1:80\nready again\nrea";
        assert_eq!(
            find_line(text, "ready", false).as_deref(),
            Some("ready 127.0.0.1:80")
        );
        // A partial last line is not taken while the writer runs; it is once it exited.
        assert_eq!(find_line("a\nready 1.2", "ready", false), None);
        assert_eq!(
            find_line("a\nready 1.2", "ready", true).as_deref(),
            Some("ready 1.2")
        );
        assert_eq!(find_line("", "x", true), None);
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn command_shape() {
        let ns = Netns {
            name: "t-cli".into(),
        };
        let cmd = ns.command(Some(1), Path::new("/bin/app"), &["--x".into(), "1".into()]);
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "ip");
        assert_eq!(
            args,
            [
                "netns", "exec", "t-cli", "taskset", "-c", "1", "/bin/app", "--x", "1"
            ]
        );
        let cmd = ns.command(None, Path::new("app"), &[]);
        assert_eq!(cmd.get_args().count(), 4);
    }
}
