//! What the kernel says about the processes under test and the host (PERFORMANCE.md §5.1,
//! §7.4): CPU time and memory of a process tree from `/proc`, CPU pinning, load and steal.
//!
//! A proxy may be several processes (nginx: master + worker), each with several threads, so
//! everything here is summed over the tree of a pid. `/proc/<pid>/stat` already sums the
//! threads of a process (live and exited); the CPU of descendants that exited and were reaped
//! is not counted, which is fine for long-lived proxies. The parsers are pure functions over
//! the text of the files, tested on fixed samples; the readers around them are thin.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Memory of a process tree, summed over its processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mem {
    pub rss_kib: u64,
    /// Proportional set size: shared pages split between their users, so a multi-process peer
    /// is not charged twice for the same binary.
    pub pss_kib: u64,
    pub hwm_kib: u64,
}

/// The calibration block of a report (§5.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub cpu_model: String,
    pub kernel: String,
    pub nproc: usize,
    pub loadavg: [f64; 3],
    /// Fraction of CPU time stolen by the hypervisor over a short window.
    pub steal: f64,
    pub openssl: Option<String>,
    pub nginx: Option<String>,
    pub haproxy: Option<String>,
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// User and system time in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Start time in clock ticks after boot: with the pid, it names a process uniquely.
    pub starttime: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> anyhow::Result<Stat> {
    let close = text
        .rfind(')')
        .context("no ')' closing the command name in a stat line")?;
    // Field 3 (state) is the first after the name; field k is rest[k - 3].
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |k: usize| -> anyhow::Result<u64> {
        let raw = rest
            .get(k - 3)
            .with_context(|| format!("stat line has no field {k}"))?;
        raw.parse()
            .with_context(|| format!("stat field {k} is not a number: {raw:?}"))
    };
    Ok(Stat {
        ppid: u32::try_from(field(4)?).context("ppid out of range")?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The value in KiB of a `Key:   123 kB` line of `/proc/<pid>/status` or `smaps_rollup`.
pub fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> anyhow::Result<[f64; 3]> {
    let mut out = [0.0; 3];
    let mut fields = text.split_whitespace();
    for slot in &mut out {
        let raw = fields.next().context("loadavg has fewer than 3 fields")?;
        *slot = raw
            .parse()
            .with_context(|| format!("loadavg field is not a number: {raw:?}"))?;
    }
    Ok(out)
}

/// `(steal, total)` jiffies from the aggregate `cpu` line of `/proc/stat`. Total is user..steal
/// (guest time is already inside user and nice).
pub fn parse_proc_stat_cpu(text: &str) -> anyhow::Result<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .context("/proc/stat has no aggregate cpu line")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().context("/proc/stat cpu field is not a number"))
        .collect::<anyhow::Result<_>>()?;
    let steal = values.get(7).copied().unwrap_or(0);
    Ok((steal, values.iter().sum()))
}

/// Steal between two `(steal, total)` readings, as a fraction of the elapsed CPU time.
pub fn steal_between(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// The first `model name` (x86) or similar line of `/proc/cpuinfo`.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "cpu model", "uarch"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

/// Every descendant of `root` in a `pid -> ppid` map, `root` first (breadth first).
pub fn descendants(parents: &HashMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get_mut(&out[i]) {
            kids.sort_unstable();
            // A pid is its own ancestor only in a corrupted map; guard anyway.
            let new: Vec<u32> = kids.iter().copied().filter(|k| !out.contains(k)).collect();
            out.extend(new);
        }
        i += 1;
    }
    out
}

/// `/proc/<pid>/stat` of a live process.
pub fn stat(pid: u32) -> anyhow::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat(&text).with_context(|| format!("parse {path}"))
}

/// `pid` and all its live descendants (`pid` first); empty when `pid` is not alive. Built from
/// one scan of `/proc/*/stat`, which (unlike `task/*/children`) needs no kernel option.
pub fn tree(pid: u32) -> Vec<u32> {
    if stat(pid).is_err() {
        return Vec::new();
    }
    let mut parents = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes exit during the scan; they are simply not part of the tree.
            if let Ok(s) = stat(p) {
                parents.insert(p, s.ppid);
            }
        }
    }
    descendants(&parents, pid)
}

/// Clock ticks per second (`getconf CLK_TCK`, read once; 100, the Linux ABI value, if unknown).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of `pid` and its live descendants, all threads. Fails only when
/// `pid` itself cannot be read.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let own = stat(pid)?;
    let mut ticks = own.utime + own.stime;
    for p in tree(pid).into_iter().skip(1) {
        if let Ok(s) = stat(p) {
            ticks += s.utime + s.stime;
        }
    }
    Ok(ticks as f64 / ticks_per_second())
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_kib(&text, key).with_context(|| format!("{path} has no {key} (a kernel thread?)"))
}

/// VmRSS of `pid` alone, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// VmHWM (peak resident set) of `pid` alone, KiB.
pub fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Pss of `pid` alone from `/proc/<pid>/smaps_rollup`, KiB.
pub fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_kib(&text, "Pss").with_context(|| format!("{path} has no Pss line"))
}

fn mem_of(pid: u32) -> anyhow::Result<Mem> {
    Ok(Mem {
        rss_kib: rss_kib(pid)?,
        pss_kib: pss_kib(pid)?,
        hwm_kib: hwm_kib(pid)?,
    })
}

/// RSS, PSS and HWM summed over `pid` and its live descendants. Fails only when `pid` itself
/// cannot be read; a descendant that exits meanwhile is left out.
pub fn mem_tree_kib(pid: u32) -> anyhow::Result<Mem> {
    let mut sum = mem_of(pid)?;
    for p in tree(pid).into_iter().skip(1) {
        if let Ok(m) = mem_of(p) {
            sum.rss_kib += m.rss_kib;
            sum.pss_kib += m.pss_kib;
            sum.hwm_kib += m.hwm_kib;
        }
    }
    Ok(sum)
}

/// Pins every thread of every process of the tree of `pid` to `cpu` (`taskset -a -p -c`).
/// Threads or processes started later inherit the affinity of their parent.
pub fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let procs = tree(pid);
    if procs.is_empty() {
        bail!("cannot pin pid {pid} to cpu {cpu}: no such process");
    }
    for p in procs {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), &p.to_string()])
            .output()
            .context("run taskset")?;
        // A descendant that exited in between is not an error; the root is.
        if !out.status.success() && (p == pid || stat(p).is_ok()) {
            bail!(
                "`taskset -a -p -c {cpu} {p}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Raises the open-files soft limit to the hard limit (a new connection per request at tens
/// of thousands of rps, or thousands of simulated sidecars, need far more than the usual
/// 1024) and returns the limit in force (`None`: unlimited).
pub fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return before.current;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => before.maximum,
        Err(e) => {
            eprintln!(
                "meshbench: warning: cannot raise the open-files limit to its hard limit \
                 {:?}: {e}",
                before.maximum
            );
            before.current
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> anyhow::Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("read /proc/loadavg")?;
    parse_loadavg(&text)
}

fn read_proc_stat_cpu() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_proc_stat_cpu(&text)
}

/// The fraction of all CPUs' time stolen by the hypervisor during `over` (blocks that long).
pub fn steal_fraction(over: Duration) -> anyhow::Result<f64> {
    let before = read_proc_stat_cpu()?;
    std::thread::sleep(over);
    let after = read_proc_stat_cpu()?;
    Ok(steal_between(before, after))
}

/// The first non-empty line a tool prints about its version (stdout or stderr: `nginx -v`
/// writes to stderr); None when the tool is not installed.
fn tool_version(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The host's calibration facts, best effort: what cannot be read is "unknown", 0 or None.
pub fn host() -> Host {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| parse_cpu_model(&t))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Host {
        cpu_model,
        kernel,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg: loadavg().unwrap_or_default(),
        steal: steal_fraction(Duration::from_millis(250)).unwrap_or(0.0),
        openssl: tool_version("openssl", "version"),
        nginx: tool_version("nginx", "-v"),
        haproxy: tool_version("haproxy", "-v"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 ((a) b)) S 17 4242 4242 0 -1 4194560 1000 0 0 0 \
                        250 75 3 4 20 0 5 0 987654 123456789 2000 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_with_parentheses_and_spaces_in_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            Stat {
                ppid: 17,
                utime: 250,
                stime: 75,
                starttime: 987654
            }
        );
    }

    #[test]
    fn stat_truncated_is_an_error() {
        assert!(parse_stat("1 (x) S 0 1 1").is_err());
        assert!(parse_stat("no parenthesis here").is_err());
    }

    const STATUS: &str = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t77\n\
                          PPid:\t1\nVmPeak:\t   20000 kB\nVmHWM:\t    9100 kB\nVmRSS:\t    8804 kB\n\
                          RssAnon:\t     900 kB\nThreads:\t1\n";

    const SMAPS_ROLLUP: &str = "55d0c0000000-7ffc00000000 ---p 00000000 00:00 0    [rollup]\n\
                                Rss:                8804 kB\nPss:                3211 kB\n\
                                Pss_Dirty:           800 kB\nPss_Anon:            700 kB\n\
                                Pss_File:           2511 kB\nShared_Clean:       6000 kB\n";

    #[test]
    fn status_and_rollup_values() {
        assert_eq!(parse_kib(STATUS, "VmRSS"), Some(8804));
        assert_eq!(parse_kib(STATUS, "VmHWM"), Some(9100));
        assert_eq!(parse_kib(STATUS, "VmSwap"), None);
        // "Pss" must not match Pss_Anon or Pss_Dirty, whichever comes first.
        assert_eq!(parse_kib(SMAPS_ROLLUP, "Pss"), Some(3211));
        assert_eq!(parse_kib(SMAPS_ROLLUP, "Pss_Anon"), Some(700));
    }

    #[test]
    fn loadavg_and_steal() {
        assert_eq!(
            parse_loadavg("0.52 0.31 0.20 2/345 6789\n").unwrap(),
            [0.52, 0.31, 0.20]
        );
        assert!(parse_loadavg("0.5 0.3").is_err());
        let stat = "cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 50 0 25 400 5 0 2 18 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat_cpu(stat).unwrap(), (35, 1000));
        assert_eq!(steal_between((35, 1000), (45, 1100)), 0.1);
        assert_eq!(steal_between((35, 1000), (35, 1000)), 0.0);
    }

    #[test]
    fn cpu_model_line() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                    model name\t: Intel(R) Xeon(R) CPU @ 2.50GHz\nflags\t: fpu\n";
        assert_eq!(
            parse_cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.50GHz")
        );
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn descendants_breadth_first() {
        let parents: HashMap<u32, u32> =
            [(10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (14, 13)].into();
        assert_eq!(descendants(&parents, 10), vec![10, 11, 12, 13, 14]);
        assert_eq!(descendants(&parents, 20), vec![20]);
    }

    /// Kills a child's whole tree when dropped, also when an assertion fails.
    struct Reap(std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            for p in tree(self.0.id()).into_iter().rev() {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn this_process_cpu_and_memory() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        // Spin until the kernel has charged 0.1 s more (a deadline, not a fixed time: a busy
        // machine may give this thread a small share).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.1 && std::time::Instant::now() < deadline {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_seconds(me).unwrap();
        }
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(rss_kib(me).unwrap() > 0);
        assert!(hwm_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        let mem = mem_tree_kib(me).unwrap();
        assert!(
            mem.rss_kib > 0 && mem.pss_kib > 0 && mem.hwm_kib > 0,
            "{mem:?}"
        );
        assert!(cpu_seconds(u32::MAX).is_err());
        assert!(tree(u32::MAX).is_empty());
    }

    #[test]
    fn child_tree_is_found_and_pinned() {
        let child = Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60 & wait"])
            .spawn()
            .unwrap();
        let guard = Reap(child);
        let root = guard.0.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let procs = loop {
            let t = tree(root);
            if t.len() >= 3 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(procs.len(), 3, "sh and its two sleeps: {procs:?}");
        assert_eq!(procs[0], root);
        assert!(tree(std::process::id()).contains(&root));
        let mem = mem_tree_kib(root).unwrap();
        assert!(mem.rss_kib >= rss_kib(root).unwrap());
        pin(root, 0).unwrap();
        for p in &procs {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            assert_eq!(cpus, "0", "pid {p}");
        }
    }

    #[test]
    fn host_facts() {
        let h = host();
        assert!(h.nproc >= 1);
        assert_ne!(h.kernel, "unknown");
        assert!((0.0..=1.0).contains(&h.steal));
        if let Some(v) = &h.openssl {
            assert!(v.contains("SSL"), "{v}");
        }
    }
}
