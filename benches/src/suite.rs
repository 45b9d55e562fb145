//! `meshbench suite`: the whole run of PERFORMANCE.md §7 on one machine.
//!
//! 1. Two namespaces joined by a veth ([`topo`]), a test CA ([`certs`]), the app in `srv`, and
//!    every configuration's processes started once: Weft's pair and control plane ([`weft`]),
//!    the nginx and HAProxy pairs ([`peers`]). Every path is checked to return the right body,
//!    the peers' mTLS servers to refuse a client without a certificate, and Weft's C1 to be
//!    mTLS and C1p plaintext (by the server sidecar's metrics).
//! 2. Calibration (§5.1): host facts, TCP round trips, hello-world rps.
//! 3. Rounds: before each, a bounded wait for a quiet machine; then every case of every
//!    workload for every configuration in an order rotated per round. Each measured run is
//!    preceded by a separate warm-up run of the same shape whose result is discarded, so the
//!    SUT's CPU is read right before and right after exactly the measured run.
//! 4. W7 (config size) and W8 with [`scale`], after the namespaces are gone.
//! 5. The report ([`report`]) to `<out>/<UTC>-<mode>.md` and `latest-<mode>.md`, one summary
//!    line per workload on stdout. A request error fails its configuration and the run (exit
//!    non-zero) after the report is written; figures never fail anything.
//!
//! SIGINT/SIGTERM cancel the run between steps (and kill a running load generator), so the
//! process and namespace guards drop. A run killed harder leaves namespaces that the next
//! run's [`Topology::create`] removes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::peers::{self, Peer, Side};
use crate::report::{self, Calibration, Config, Measured, Memory, Run, Sample, Workload};
use crate::topo::{self, CLI_IP, Netns, Proc, SRV_IP, Topology};
use crate::{certs, scale, sys, weft};

/// CPU of the load generator (and, in Layout L, of the client-side proxy).
const CPU_LOAD: usize = 1;
/// CPU of the app and the server-side proxy (and, in Layout S, of the client-side proxy).
const CPU_SUT: usize = 0;

/// Command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The CI smoke run: short runs, 3 rounds, small W8; under 5 minutes.
    #[arg(long)]
    pub smoke: bool,
    /// Rounds (default 5, smoke 3).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Measured time per W1 run, e.g. 15s (default 15s, smoke 2s); W2 and W5 runs take a
    /// third of it (at least 1.5s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up run before each measured run (default 3s, smoke 500ms; W2 and W5 half).
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Where the report goes (default: benches/results of the repository).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Workloads to run, e.g. W1,W5 (default: W1,W2,W5,W7,W8).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Configurations to run, e.g. C0,C1,C3 (default: all of C0,C1,C1p,C2,C3).
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Where weft-proxy, weft-control and meshbench are (default: this executable's dir).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// `<n>ms`, `<n>s`, `<n>m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// One load point of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub workload: Workload,
    pub name: String,
    /// Open-loop rate; None = closed loop.
    pub rate: Option<u32>,
    pub conns: u32,
    pub new_conn: bool,
    /// W5b: the pair's pooling is off.
    pub nopool: bool,
    pub duration: Duration,
    pub warmup: Duration,
}

/// What a run does, decided from the arguments alone.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub configs: Vec<Config>,
    pub cases: Vec<Case>,
    pub w7: bool,
    pub w8: bool,
    /// Bound of the quiet-machine wait before each round.
    pub quiet_wait: Duration,
    pub calibration_duration: Duration,
}

impl Plan {
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let smoke = args.smoke;
        let rounds = args.rounds.unwrap_or(if smoke { 3 } else { 5 }).max(1);
        // Smoke runs only prove the harness (figures are never judged), so they are short
        // enough for the whole smoke to stay under 5 minutes on 2 cores.
        let duration = args.duration.unwrap_or(if smoke {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(15)
        });
        let warmup = args.warmup.unwrap_or(if smoke {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        });
        let configs = if args.configs.is_empty() {
            Config::ALL.to_vec()
        } else {
            let mut v = Vec::new();
            for c in &args.configs {
                let c = Config::parse(c).with_context(|| {
                    format!("unknown configuration {c:?} (C0, C1, C1p, C2, C3)")
                })?;
                if !v.contains(&c) {
                    v.push(c);
                }
            }
            v.sort();
            v
        };
        let known = ["W1", "W2", "W5", "W7", "W8"];
        let only: BTreeSet<String> = args.only.iter().map(|w| w.trim().to_uppercase()).collect();
        if let Some(bad) = only.iter().find(|w| !known.contains(&w.as_str())) {
            bail!("unknown workload {bad:?} (W1, W2, W5, W7, W8)");
        }
        let wants = |w: &str| only.is_empty() || only.contains(w);
        // W2 and W5 runs are shorter than W1's: they measure rates, not tails.
        let short = (duration / 3)
            .max(Duration::from_millis(1500))
            .min(duration);
        let short_warmup = (warmup / 2).max(Duration::from_millis(500)).min(warmup);
        let mut cases = Vec::new();
        if wants("W1") {
            for (rate, conns) in [(1000, 16), (5000, 64)] {
                cases.push(Case {
                    workload: Workload::W1,
                    name: format!("{rate} rps x {conns} conns"),
                    rate: Some(rate),
                    conns,
                    new_conn: false,
                    nopool: false,
                    duration,
                    warmup,
                });
            }
        }
        if wants("W2") {
            cases.push(Case {
                workload: Workload::W2,
                name: "closed loop x 64 conns".into(),
                rate: None,
                conns: 64,
                new_conn: false,
                nopool: false,
                duration: short,
                warmup: short_warmup,
            });
        }
        if wants("W5") {
            let rates: &[u32] = if smoke { &[200] } else { &[200, 1000] };
            for &rate in rates {
                for nopool in [false, true] {
                    cases.push(Case {
                        workload: Workload::W5,
                        name: format!(
                            "{rate} new conns/s, {}",
                            if nopool { "pooling off" } else { "pooled hop" }
                        ),
                        rate: Some(rate),
                        conns: 32,
                        new_conn: true,
                        nopool,
                        duration: short,
                        warmup: short_warmup,
                    });
                }
            }
        }
        Ok(Self {
            smoke,
            rounds,
            duration,
            warmup,
            configs,
            cases,
            w7: wants("W7"),
            w8: wants("W8"),
            quiet_wait: Duration::from_secs(if smoke { 3 } else { 30 }),
            calibration_duration: Duration::from_secs(if smoke { 2 } else { 5 }),
        })
    }

    pub fn mode(&self) -> &'static str {
        if self.smoke { "smoke" } else { "full" }
    }

    /// Whether `config` runs `case` (C1p has no pooling-off variant; W5b's C0 is W5a's).
    pub fn runs(case: &Case, config: Config) -> bool {
        !(case.nopool && matches!(config, Config::C0 | Config::C1p))
    }

    /// The scale spec of this mode (W7 config sizes, W8 clients).
    pub fn scale_spec(&self, bins: &Bins, work_dir: &Path) -> scale::Spec {
        let (clients, services, endpoints, changes, sizes) = if self.smoke {
            (vec![100], 100, 1_000, 2, vec![100, 1_000])
        } else {
            (
                vec![100, 1_000],
                1_000,
                10_000,
                // §8.2 states G9 over 20 changes; 5 per kind keeps the full run near its
                // budget (each change at this size takes seconds on 2 cores).
                5,
                vec![100, 1_000, 10_000],
            )
        };
        scale::Spec {
            control: bins.control.clone(),
            proxy: bins.proxy.clone(),
            clients: if self.w8 { clients } else { Vec::new() },
            services,
            endpoints,
            changes,
            // State of the world is the comparison point; the smoke only proves the path.
            modes: if self.smoke {
                vec!["delta".into()]
            } else {
                vec!["delta".into(), "sotw".into()]
            },
            config_sizes: if self.w7 { sizes } else { Vec::new() },
            work_dir: work_dir.to_path_buf(),
        }
    }
}

/// Where a configuration's load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: String,
    pub host: Option<String>,
}

/// The entry point of `config` for a case (pooled or not).
pub fn entry(config: Config, nopool: bool) -> Entry {
    let local = |port: u16| format!("127.0.0.1:{port}");
    match config {
        Config::C0 => Entry {
            target: format!("{SRV_IP}:{}", weft::APP_PORT),
            host: None,
        },
        Config::C1 | Config::C1p => Entry {
            target: local(weft::OUTBOUND_PORT),
            host: Some(weft::authority(match (config, nopool) {
                (Config::C1p, _) => weft::SERVICE_PLAIN,
                (_, true) => weft::SERVICE_NOPOOL,
                _ => weft::SERVICE,
            })),
        },
        Config::C2 => Entry {
            target: local(if nopool {
                peers::NGINX_CLIENT_NOPOOL_PORT
            } else {
                peers::NGINX_CLIENT_PORT
            }),
            host: None,
        },
        Config::C3 => Entry {
            target: local(if nopool {
                peers::HAPROXY_CLIENT_NOPOOL_PORT
            } else {
                peers::HAPROXY_CLIENT_PORT
            }),
            host: None,
        },
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `meshbench load` arguments for one run.
pub fn load_args(entry: &Entry, case: &Case, path: &str, duration: Duration) -> Vec<String> {
    let mut a = vec![
        "load".to_string(),
        "--target".into(),
        entry.target.clone(),
        "--path".into(),
        path.into(),
        "--conns".into(),
        case.conns.to_string(),
        "--duration".into(),
        fmt_duration(duration),
        "--warmup".into(),
        "0s".into(),
        "--timeout".into(),
        "5s".into(),
    ];
    if let Some(h) = &entry.host {
        a.extend(["--host".into(), h.clone()]);
    }
    if let Some(r) = case.rate {
        a.extend(["--rate".into(), r.to_string()]);
    }
    if case.new_conn {
        a.push("--new-conn".into());
    }
    a
}

/// The load generator's JSON line (the `load` contract), read leniently.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct LoadJson {
    offered_rps: Option<f64>,
    achieved_rps: f64,
    measured_s: f64,
    requests: u64,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    connections: u64,
    latency_us: LatencyJson,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct LatencyJson {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// The last JSON line of the load generator's stdout.
pub fn parse_load(stdout: &str) -> anyhow::Result<Measured> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the load generator printed no JSON line")?;
    let j: LoadJson =
        serde_json::from_str(line).with_context(|| format!("bad load report: {line}"))?;
    Ok(Measured {
        offered_rps: j.offered_rps,
        achieved_rps: j.achieved_rps,
        measured_s: j.measured_s,
        requests: j.requests,
        ok: j.ok,
        errors: j.errors,
        error_samples: j.error_samples,
        connections: j.connections,
        p50_us: j.latency_us.p50,
        p90_us: j.latency_us.p90,
        p99_us: j.latency_us.p99,
        p999_us: j.latency_us.p999,
        max_us: j.latency_us.max,
    })
}

#[derive(Debug, Deserialize)]
struct RttJson {
    p50_us: f64,
    p99_us: f64,
}

/// A raw HTTP/1.1 response: (status, body), the body de-chunked if it was chunked.
pub fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.get(..n)
            .with_context(|| format!("body shorter than content-length {n}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).context("truncated chunk")?);
        rest = rest.get(size + 2..).context("truncated chunk end")?;
    }
}

/// The binaries the suite starts.
#[derive(Debug, Clone)]
pub struct Bins {
    pub proxy: PathBuf,
    pub control: PathBuf,
    pub meshbench: PathBuf,
}

impl Bins {
    fn find(dir: Option<&Path>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locate this executable")?;
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => exe
                .parent()
                .context("this executable has no directory")?
                .to_path_buf(),
        };
        let bins = Self {
            proxy: dir.join("weft-proxy"),
            control: dir.join("weft-control"),
            meshbench: if dir.join("meshbench").exists() {
                dir.join("meshbench")
            } else {
                exe
            },
        };
        for b in [&bins.proxy, &bins.control, &bins.meshbench] {
            if !b.exists() {
                bail!(
                    "{} is missing: build with `cargo build --release -p weft-proxy -p \
                     weft-control -p weft-bench` (benches/run does) or pass --bin-dir",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// The repository root: the first ancestor of the executable, then of the working
/// directory, holding `benches/Cargo.toml`.
fn repo_root() -> Option<PathBuf> {
    let from = |start: PathBuf| {
        start
            .ancestors()
            .find(|d| d.join("benches/Cargo.toml").exists())
            .map(Path::to_path_buf)
    };
    std::env::current_exe()
        .ok()
        .and_then(from)
        .or_else(|| std::env::current_dir().ok().and_then(from))
}

/// `2026-11-30T02:10:00Z` and `20261130T021000Z` (for file names).
fn utc_now() -> (String, String) {
    let t = time::OffsetDateTime::now_utc();
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

fn git_commit(root: Option<&Path>) -> Option<String> {
    let mut cmd = Command::new("git");
    if let Some(r) = root {
        cmd.arg("-C").arg(r);
    }
    let out = cmd
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The TLS settings stated in the report.
fn tls_lines() -> Vec<String> {
    vec![
        format!(
            "All mTLS hops: TLS 1.3 only, cipher suite {} (what Weft negotiates: it uses \
             rustls 0.23's ring provider unchanged, whose client lists AES-256-GCM first and \
             whose server follows the client's order; nginx and HAProxy are configured with \
             exactly this suite), key exchange {} (the nginx and HAProxy servers accept only \
             it; rustls offers it first), ECDSA P-256 leaves (Weft's workload keys are P-256 \
             too).",
            peers::CIPHER_SUITE,
            peers::GROUP
        ),
        "nginx and HAProxy: one test CA generated for the run (root + intermediate, leaves \
         signed by the intermediate); the server requires and verifies the client certificate \
         (`ssl_verify_client on` / `verify required`), the client verifies the server's chain \
         and name (`proxy_ssl_verify on` + `proxy_ssl_name` / `verify required verifyhost`)."
            .into(),
        "Weft: the mesh's own CA (weft-control, SPIFFE identities), mutual TLS with secure \
         naming between the sidecars (C1); C1p disables it with a DestinationRule (DISABLE) \
         and the server side's default PERMISSIVE mode accepts plaintext."
            .into(),
        "Session resumption: left at each implementation's default on the pooled paths; on the \
         pooling-off path (W5b) nginx (`proxy_ssl_session_reuse off`) and HAProxy \
         (`no-ssl-reuse`) do full handshakes, and so does Weft: its sidecar builds a client \
         TLS config (and so an empty session cache) for every mesh connection, so it never \
         resumes."
            .into(),
        "Between the sidecars each implementation uses its natural protocol (HTTP/1.1 for \
         nginx and HAProxy, Weft's own choice for Weft); app <-> sidecar is HTTP/1.1 \
         everywhere. One worker per proxy: nginx `worker_processes 1`, HAProxy `nbthread 1`, \
         Weft `--concurrency 1`."
            .into(),
    ]
}

/// Set by SIGINT/SIGTERM: the run stops at the next step and unwinds its guards.
#[derive(Debug, Clone, Default)]
struct Cancel(Arc<AtomicBool>);

impl Cancel {
    fn check(&self) -> anyhow::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            bail!("interrupted (SIGINT/SIGTERM): stopping and cleaning up");
        }
        Ok(())
    }
}

/// Runs the command.
pub fn main(args: Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let cancel = Cancel::default();
    rt.block_on(async move {
        let c = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || run(&args, &plan, &c));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        let mut signals = 0;
        loop {
            tokio::select! {
                r = &mut task => return r.context("the suite panicked")?,
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals += 1;
            cancel.0.store(true, Ordering::SeqCst);
            if signals == 1 {
                eprintln!("meshbench: interrupted, cleaning up (again to quit at once)");
            } else {
                eprintln!("meshbench: quitting; the next run removes the namespaces");
                std::process::exit(130);
            }
        }
    })
}

/// The running processes of every configuration. Fields drop in order: proxies first, then
/// the app, then the namespaces.
#[derive(Debug)]
struct Stage {
    weft: Option<weft::Mesh>,
    nginx: Option<(Proc, Proc)>,
    haproxy: Option<(Proc, Proc)>,
    app: Proc,
    topo: Topology,
}

impl Stage {
    /// (client side pids, server side pids) of a configuration's proxies.
    fn sut(&self, config: Config) -> (Vec<u32>, Vec<u32>) {
        let pair = |p: &Option<(Proc, Proc)>| {
            p.as_ref()
                .map(|(c, s)| (vec![c.pid], vec![s.pid]))
                .unwrap_or_default()
        };
        match config {
            Config::C0 => (vec![], vec![]),
            Config::C1 | Config::C1p => self
                .weft
                .as_ref()
                .map(|m| (vec![m.client.pid], vec![m.server.pid]))
                .unwrap_or_default(),
            Config::C2 => pair(&self.nginx),
            Config::C3 => pair(&self.haproxy),
        }
    }

    fn sut_pids(&self, config: Config) -> Vec<u32> {
        let (mut c, s) = self.sut(config);
        c.extend(s);
        c
    }

    /// Layout L (saturation = false): client-side proxies on the load generator's CPU;
    /// Layout S: on the SUT CPU with the server sides and the app.
    fn layout(&self, saturation: bool) -> anyhow::Result<()> {
        let cpu = if saturation { CPU_SUT } else { CPU_LOAD };
        for c in [Config::C1, Config::C2, Config::C3] {
            for pid in self.sut(c).0 {
                sys::pin(pid, cpu).with_context(|| format!("pin {pid} to CPU {cpu}"))?;
            }
        }
        Ok(())
    }

    fn memory(&self, config: Config) -> anyhow::Result<(sys::Mem, sys::Mem)> {
        let (c, s) = self.sut(config);
        let sum = |pids: Vec<u32>| -> anyhow::Result<sys::Mem> {
            let mut m = sys::Mem::default();
            for p in pids {
                let x = sys::mem_tree_kib(p)?;
                m.rss_kib += x.rss_kib;
                m.pss_kib += x.pss_kib;
                m.hwm_kib += x.hwm_kib;
            }
            Ok(m)
        };
        Ok((sum(c)?, sum(s)?))
    }
}

/// What the run accumulates besides samples.
#[derive(Debug, Default)]
struct Book {
    notes: Vec<String>,
    failures: Vec<String>,
    /// Configurations taken out of the run (broken), with why.
    broken: Vec<(Config, String)>,
}

impl Book {
    fn fail(&mut self, config: Config, why: String) {
        eprintln!("meshbench: {} FAILED: {why}", config.id());
        self.failures.push(format!("{}: {why}", config.id()));
        if !self.broken.iter().any(|(c, _)| *c == config) {
            self.broken.push((config, why));
        }
    }

    fn active(&self, configs: &[Config]) -> Vec<Config> {
        configs
            .iter()
            .copied()
            .filter(|c| !self.broken.iter().any(|(b, _)| b == c))
            .collect()
    }
}

fn run(args: &Args, plan: &Plan, cancel: &Cancel) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = repo_root();
    let out_dir = match (&args.out, &root) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.join("benches/results"),
        (None, None) => PathBuf::from("benches/results"),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    if let Some(why) = topo::unsupported() {
        bail!("the suite cannot run here: {why}");
    }
    let bins = Bins::find(args.bin_dir.as_deref())?;
    let (date, stamp) = utc_now();
    let work = std::env::temp_dir().join(format!("meshbench-{stamp}"));
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    eprintln!(
        "meshbench: {} run, {} round(s), work dir {}",
        plan.mode(),
        plan.rounds,
        work.display()
    );
    let mut book = Book::default();
    let host = sys::host();
    let mut rep = Run {
        mode: plan.mode().into(),
        date,
        commit: git_commit(root.as_deref()),
        rounds: plan.rounds,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        configs: plan.configs.clone(),
        samples: Vec::new(),
        memory: Vec::new(),
        calibration: Calibration {
            host,
            rtt_loopback: None,
            rtt_veth: None,
            hello_rps: Vec::new(),
            per_round: Vec::new(),
        },
        tls: tls_lines(),
        notes: Vec::new(),
        noisy_rounds: Vec::new(),
        failures: Vec::new(),
        scale_markdown: None,
        scale_summary: Vec::new(),
    };
    let runs: Vec<String> = plan
        .cases
        .iter()
        .map(|c| {
            format!(
                "{} {}: {} s after a {} s warm-up run",
                c.workload.id(),
                c.name,
                c.duration.as_secs_f64(),
                c.warmup.as_secs_f64()
            )
        })
        .collect();
    if !plan.smoke && plan.cases.iter().any(|c| c.workload == Workload::W2) {
        rep.notes.push(
            "W2's open-loop knee search (§7.3: the highest rate whose p99 stays within 5x its \
             1k-rps p99) is not implemented; W2 reports the closed-loop maximum only."
                .into(),
        );
    }
    if !runs.is_empty() {
        rep.notes.push(format!(
            "Measured runs (each warm-up is a separate run whose result is discarded): {}. \
             W5b's baseline C0 is W5a's direct new-connection run of the same round; C1p has no \
             pooling-off variant. Quiet-machine wait before each round: up to {} s.",
            runs.join("; "),
            plan.quiet_wait.as_secs()
        ));
    }
    let measured = if plan.cases.is_empty() && !plan.w7 {
        Ok(())
    } else {
        measure(plan, &bins, &work, &logs, cancel, &mut rep, &mut book)
    };
    if let Err(e) = &measured {
        book.failures.push(format!("harness: {e:#}"));
    }
    if measured.is_ok() && (plan.w7 || plan.w8) && !cancel.0.load(Ordering::SeqCst) {
        let spec = plan.scale_spec(&bins, &work.join("scale"));
        eprintln!("meshbench: W7 config size / W8 control plane (scale)");
        // Dropping the scale future on SIGINT/SIGTERM drops its process guards.
        let flag = cancel.0.clone();
        let scaled = tokio::runtime::Handle::current().block_on(async {
            tokio::select! {
                r = scale::run(&spec) => r,
                _ = async {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } => Err(anyhow::anyhow!("interrupted (SIGINT/SIGTERM)")),
            }
        });
        match scaled {
            Ok(r) => {
                rep.scale_markdown = Some(scale::markdown(&r));
                rep.scale_summary = scale::summary_lines(&r);
            }
            Err(e) => book
                .failures
                .push(format!("scale (W7 config size, W8): {e:#}")),
        }
    }
    for (c, why) in &book.broken {
        rep.notes.push(format!(
            "{} ({}) was taken out of the run: {why}",
            c.id(),
            c.describe()
        ));
    }
    rep.notes.append(&mut book.notes);
    rep.failures = book.failures;
    rep.notes.push(format!(
        "Wall time of the suite: {:.0} s; logs in {}.",
        started.elapsed().as_secs_f64(),
        logs.display()
    ));
    let md = report::markdown(&rep);
    let file = out_dir.join(format!("{stamp}-{}.md", plan.mode()));
    std::fs::write(&file, &md).with_context(|| format!("write {}", file.display()))?;
    let latest = out_dir.join(format!("latest-{}.md", plan.mode()));
    std::fs::write(&latest, &md).with_context(|| format!("write {}", latest.display()))?;
    let raw = out_dir.join(format!("latest-{}.json", plan.mode()));
    if let Ok(json) = serde_json::to_string_pretty(&rep) {
        let _ = std::fs::write(&raw, json);
    }
    for l in report::summary_lines(&rep) {
        println!("{l}");
    }
    println!("report: {}", file.display());
    if !rep.failures.is_empty() {
        bail!(
            "{} failure(s), see {}: {}",
            rep.failures.len(),
            file.display(),
            rep.failures.join("; ")
        );
    }
    // Logs are only worth keeping when something went wrong.
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Everything that needs the namespaces: start, verify, calibrate, rounds.
fn measure(
    plan: &Plan,
    bins: &Bins,
    work: &Path,
    logs: &Path,
    cancel: &Cancel,
    rep: &mut Run,
    book: &mut Book,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let topo = Topology::create("meshbench")?;
    let pki = certs::generate(
        &work.join("pki"),
        &[peers::SERVER_NAME, SRV_IP],
        &["meshbench-client", CLI_IP],
    )?;
    let app_args: Vec<String> = ["app", "--http", "0.0.0.0:8080", "--tcp", "0.0.0.0:9000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut app = Proc::spawn(
        "app",
        topo.srv.command(Some(CPU_SUT), &bins.meshbench, &app_args),
        logs,
    )?;
    app.wait_for_line("ready", Duration::from_secs(10))?;
    let mut stage = Stage {
        weft: None,
        nginx: None,
        haproxy: None,
        app,
        topo,
    };
    cancel.check()?;
    start_all(plan, bins, work, logs, &pki, &mut stage, rep, book);
    let active = book.active(&plan.configs);
    for &c in &active {
        // C1p runs on C1's processes: one memory row for both.
        if c == Config::C0 || (c == Config::C1p && active.contains(&Config::C1)) {
            continue;
        }
        match stage.memory(c) {
            Ok((client, server)) => rep.memory.push(Memory {
                config: Some(c),
                idle_client: client,
                idle_server: server,
                loaded_client: None,
                loaded_server: None,
            }),
            Err(e) => book
                .notes
                .push(format!("{}: idle memory unreadable: {e:#}", c.id())),
        }
    }
    cancel.check()?;
    verify(plan, work, &pki, &stage, book);
    cancel.check()?;
    calibrate(plan, bins, &stage, rep, cancel)?;
    // `--only W7` measures the idle pairs and skips the rounds.
    let rounds = if plan.cases.is_empty() {
        0
    } else {
        plan.rounds
    };
    for round in 1..=rounds {
        cancel.check()?;
        if !stage.app.alive() {
            bail!("the app exited:\n{}", stage.app.log_tail(20));
        }
        let (load1, busy, steal, quiet) = wait_quiet(plan.quiet_wait, cancel)?;
        rep.calibration.per_round.push((round, load1, busy, steal));
        if !quiet {
            rep.noisy_rounds.push(round);
        }
        eprintln!(
            "meshbench: round {round}/{} at {:.0} s (load {load1:.2}, busy {busy:.2} cores, \
             steal {:.1} %)",
            plan.rounds,
            started.elapsed().as_secs_f64(),
            steal * 100.0
        );
        for case in &plan.cases {
            stage.layout(case.workload == Workload::W2)?;
            let order = report::rotation(&book.active(&plan.configs), round);
            for config in order {
                if !Plan::runs(case, config) {
                    continue;
                }
                cancel.check()?;
                match run_one(bins, &stage, case, config, round, cancel) {
                    Ok(sample) => {
                        if sample.load.errors > 0 || sample.load.ok == 0 {
                            book.fail(
                                config,
                                format!(
                                    "{} {} round {round}: {} error(s) of {} requests (first: {})",
                                    case.workload.id(),
                                    case.name,
                                    sample.load.errors,
                                    sample.load.requests,
                                    sample.load.error_samples.join(" / ")
                                ),
                            );
                        }
                        // W5b compares with the direct new-connection run of W5a.
                        if config == Config::C0
                            && case.workload == Workload::W5
                            && let Some(b) = plan.cases.iter().find(|b| {
                                b.workload == Workload::W5 && b.nopool && b.rate == case.rate
                            })
                        {
                            let mut copy = sample.clone();
                            copy.case = b.name.clone();
                            rep.samples.push(copy);
                        }
                        rep.samples.push(sample);
                    }
                    Err(e) => {
                        cancel.check()?;
                        book.fail(
                            config,
                            format!("{} {} round {round}: {e:#}", case.workload.id(), case.name),
                        );
                    }
                }
            }
            if case.workload == Workload::W1 && case.rate == Some(5000) {
                record_loaded_memory(&stage, rep);
            }
        }
    }
    stage.layout(false)?;
    if plan.cases.iter().all(|c| c.rate != Some(5000)) {
        record_loaded_memory(&stage, rep);
    }
    Ok(())
}

/// The pairs' memory after the first W1 5k run: VmHWM is a peak over the process's life, so
/// a later reading would include W2's and W5's peaks too.
fn record_loaded_memory(stage: &Stage, rep: &mut Run) {
    for m in rep.memory.iter_mut() {
        let Some(c) = m.config else { continue };
        if m.loaded_client.is_some() {
            continue;
        }
        if let Ok((client, server)) = stage.memory(c) {
            m.loaded_client = Some(client);
            m.loaded_server = Some(server);
        }
    }
}

/// Starts Weft's pair and the peers for the configurations asked for; a configuration that
/// cannot start is taken out of the run (a failure), a peer that is not installed is skipped
/// (a note).
#[allow(clippy::too_many_arguments)] // the run's shared state, passed down once
fn start_all(
    plan: &Plan,
    bins: &Bins,
    work: &Path,
    logs: &Path,
    pki: &certs::Pki,
    stage: &mut Stage,
    rep: &mut Run,
    book: &mut Book,
) {
    let wants = |c: Config| plan.configs.contains(&c);
    if wants(Config::C1) || wants(Config::C1p) {
        let wb = weft::Binaries {
            proxy: bins.proxy.clone(),
            control: bins.control.clone(),
        };
        match weft::start(
            &stage.topo,
            &wb,
            &work.join("weft"),
            logs,
            CPU_LOAD,
            CPU_SUT,
        ) {
            Ok(m) => stage.weft = Some(m),
            Err(e) => {
                for c in [Config::C1, Config::C1p].into_iter().filter(|c| wants(*c)) {
                    book.fail(c, format!("Weft did not start: {e:#}"));
                }
            }
        }
    }
    for (peer, config) in [(Peer::Nginx, Config::C2), (Peer::Haproxy, Config::C3)] {
        if !wants(config) {
            continue;
        }
        if let Some(why) = peers::unavailable(peer) {
            rep.configs.retain(|c| *c != config);
            book.broken.push((config, format!("skipped: {why}")));
            continue;
        }
        let (client_port, nopool_port, server_port) = match peer {
            Peer::Nginx => (
                peers::NGINX_CLIENT_PORT,
                peers::NGINX_CLIENT_NOPOOL_PORT,
                peers::NGINX_SERVER_PORT,
            ),
            Peer::Haproxy => (
                peers::HAPROXY_CLIENT_PORT,
                peers::HAPROXY_CLIENT_NOPOOL_PORT,
                peers::HAPROXY_SERVER_PORT,
            ),
        };
        let server_layout = peers::Layout {
            listen: format!("{SRV_IP}:{server_port}")
                .parse()
                .unwrap_or_else(|_| unreachable_addr()),
            listen_nopool: None,
            upstream: ([127, 0, 0, 1], weft::APP_PORT).into(),
            dir: work.join(peers::label(peer, Side::Server)),
        };
        let client_layout = peers::Layout {
            listen: ([127, 0, 0, 1], client_port).into(),
            listen_nopool: Some(([127, 0, 0, 1], nopool_port).into()),
            upstream: server_layout.listen,
            dir: work.join(peers::label(peer, Side::Client)),
        };
        let started = peers::start(
            peer,
            Side::Server,
            &stage.topo.srv,
            CPU_SUT,
            &server_layout,
            &peers::TlsFiles::for_side(pki, Side::Server),
            logs,
        )
        .and_then(|server| {
            let client = peers::start(
                peer,
                Side::Client,
                &stage.topo.cli,
                CPU_LOAD,
                &client_layout,
                &peers::TlsFiles::for_side(pki, Side::Client),
                logs,
            )?;
            Ok((client, server))
        });
        match started {
            Ok(pair) => match peer {
                Peer::Nginx => stage.nginx = Some(pair),
                Peer::Haproxy => stage.haproxy = Some(pair),
            },
            Err(e) => book.fail(config, format!("did not start: {e:#}")),
        }
    }
}

fn unreachable_addr() -> std::net::SocketAddr {
    ([0, 0, 0, 0], 0).into()
}

/// `GET path` with `Host: host` to `addr` from inside `ns` (bash's /dev/tcp, so nothing but
/// bash is needed in the namespace), the raw response saved to `file` and parsed.
fn http_get(
    ns: &Netns,
    addr: &str,
    host: &str,
    path: &str,
    file: &Path,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (ip, port) = addr.rsplit_once(':').context("address without a port")?;
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\n\
         Connection: close\\r\\n\\r\\n' >&3 && cat <&3 > '{}'",
        file.display()
    );
    ns.run("timeout", &["10", "bash", "-c", &script])?;
    let raw = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    parse_http_response(&raw).with_context(|| format!("GET http://{host}{path} via {addr}"))
}

/// §7.5 step 1: every path answers `/1024` with 1,024 bytes; the peers' mTLS servers refuse
/// a client without a certificate (and accept one with it, so the check can fail); Weft's C1
/// is mTLS and C1p plaintext by the server sidecar's own counters.
fn verify(plan: &Plan, work: &Path, pki: &certs::Pki, stage: &Stage, book: &mut Book) {
    let scratch = work.join("verify");
    let _ = std::fs::create_dir_all(&scratch);
    let file = scratch.join("response");
    let nopool_needed = plan.cases.iter().any(|c| c.nopool);
    for config in book.active(&plan.configs) {
        let mut variants = vec![false];
        if nopool_needed && config != Config::C0 && config != Config::C1p {
            variants.push(true);
        }
        for nopool in variants {
            let e = entry(config, nopool);
            let host = e.host.clone().unwrap_or_else(|| e.target.clone());
            match http_get(&stage.topo.cli, &e.target, &host, "/1024", &file) {
                Ok((200, body)) if body.len() == 1024 => {}
                Ok((status, body)) => book.fail(
                    config,
                    format!(
                        "verification: GET /1024 via {} answered {status} with {} bytes",
                        e.target,
                        body.len()
                    ),
                ),
                Err(err) => book.fail(config, format!("verification via {}: {err:#}", e.target)),
            }
        }
    }
    // The peers' servers: no certificate -> refused; the client certificate -> 200.
    for (config, port) in [
        (Config::C2, peers::NGINX_SERVER_PORT),
        (Config::C3, peers::HAPROXY_SERVER_PORT),
    ] {
        if !book.active(&plan.configs).contains(&config) {
            continue;
        }
        let addr = format!("{SRV_IP}:{port}");
        let without = tls_get(&stage.topo.cli, &addr, pki, false);
        let with = tls_get(&stage.topo.cli, &addr, pki, true);
        match (without, with) {
            (Ok(w), Ok(c)) if !is_200(&w) && is_200(&c) => book.notes.push(format!(
                "{}: the server side refuses a client without a certificate and answers one \
                 with the test CA's client certificate (checked with openssl s_client).",
                config.id()
            )),
            (w, c) => book.fail(
                config,
                format!(
                    "mTLS check at {addr}: without a client certificate: {}; with it: {}",
                    summarize(&w),
                    summarize(&c)
                ),
            ),
        }
    }
    let active = book.active(&plan.configs);
    if stage.weft.is_some() {
        let inbound = format!("{SRV_IP}:15006");
        match tls_get(&stage.topo.cli, &inbound, pki, false) {
            Ok(w) if !is_200(&w) => book.notes.push(
                "C1: Weft's inbound refuses a TLS client without a mesh certificate (PERMISSIVE \
                 mode still accepts plaintext, which C1p uses)."
                    .into(),
            ),
            other => book.fail(
                Config::C1,
                format!(
                    "Weft's inbound answered a TLS client without a certificate: {}",
                    summarize(&other)
                ),
            ),
        }
        let metrics = |book: &mut Book| -> Option<(u64, u64)> {
            let admin = format!("{SRV_IP}:{}", weft::ADMIN_PORT);
            match http_get(&stage.topo.srv, &admin, "admin", "/metrics", &file) {
                Ok((200, body)) => Some(weft::inbound_counts(&String::from_utf8_lossy(&body))),
                Ok((status, _)) => {
                    book.notes
                        .push(format!("Weft server sidecar /metrics answered {status}"));
                    None
                }
                Err(e) => {
                    book.notes
                        .push(format!("Weft server sidecar /metrics: {e:#}"));
                    None
                }
            }
        };
        for (config, want_mtls) in [(Config::C1, true), (Config::C1p, false)] {
            if !active.contains(&config) {
                continue;
            }
            let Some(before) = metrics(book) else {
                continue;
            };
            let e = entry(config, false);
            let host = e.host.clone().unwrap_or_default();
            let n = 20;
            let mut ok = 0;
            for _ in 0..n {
                if matches!(
                    http_get(&stage.topo.cli, &e.target, &host, "/16", &file),
                    Ok((200, _))
                ) {
                    ok += 1;
                }
            }
            let Some(after) = metrics(book) else { continue };
            let (mtls, plain) = (
                after.0 - before.0.min(after.0),
                after.1 - before.1.min(after.1),
            );
            let right = if want_mtls {
                mtls >= ok && plain == 0
            } else {
                plain >= ok && mtls == 0
            };
            if ok == n && right {
                book.notes.push(format!(
                    "{}: {n} requests reached the server sidecar {} (its weft_requests_total: \
                     {mtls} with a peer identity, {plain} without).",
                    config.id(),
                    if want_mtls {
                        "over mTLS"
                    } else {
                        "in plaintext"
                    }
                ));
            } else {
                book.fail(
                    config,
                    format!(
                        "verification: {ok}/{n} requests OK; the server sidecar counted {mtls} \
                         over mTLS and {plain} in plaintext, expected all {}",
                        if want_mtls {
                            "over mTLS"
                        } else {
                            "in plaintext"
                        }
                    ),
                );
            }
        }
    }
}

fn is_200(response: &str) -> bool {
    response
        .lines()
        .any(|l| l.starts_with("HTTP/1.1 200") || l.starts_with("HTTP/1.0 200"))
}

fn summarize(r: &anyhow::Result<String>) -> String {
    match r {
        Ok(s) => {
            let first = s
                .lines()
                .find(|l| l.starts_with("HTTP/"))
                .or_else(|| s.lines().last())
                .unwrap_or("(nothing)");
            format!("{:?}", first.chars().take(120).collect::<String>())
        }
        Err(e) => format!("error {e:#}"),
    }
}

/// One HTTP/1.1 GET over TLS 1.3 with `openssl s_client` from `ns`, with or without the
/// client certificate; everything it printed (a refused handshake is an `Ok` without 200).
fn tls_get(ns: &Netns, addr: &str, pki: &certs::Pki, with_cert: bool) -> anyhow::Result<String> {
    let cert = if with_cert {
        // s_client sends only the first certificate of -cert; the chain goes separately.
        format!(
            "-cert '{}' -key '{}' -cert_chain '{}'",
            pki.client_cert.display(),
            pki.client_key.display(),
            pki.intermediate_cert().display()
        )
    } else {
        String::new()
    };
    let script = format!(
        "printf 'GET /16 HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n' | \
         timeout 10 openssl s_client -connect {addr} -servername {name} -CAfile '{ca}' \
         -tls1_3 -quiet {cert} 2>&1; true",
        name = peers::SERVER_NAME,
        ca = pki.ca_cert.display(),
    );
    ns.run("bash", &["-c", &script])
}

/// Waits (bounded) for load average < 0.5 and steal < 5 %: (load1, steal, quiet).
/// Waits (bounded) for a quiet machine: (load1, cores busy, steal, quiet).
///
/// Quiet = steal < 5 % and either the 1-minute load average or the CPUs' busy time over the
/// last second below 0.5 cores. The load average alone would never settle between rounds: it
/// decays over minutes from the suite's own previous round, while the busy time shows what
/// else runs right now.
fn wait_quiet(bound: Duration, cancel: &Cancel) -> anyhow::Result<(f64, f64, f64, bool)> {
    let deadline = Instant::now() + bound;
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    loop {
        cancel.check()?;
        let load1 = sys::loadavg().map(|l| l[0]).unwrap_or(f64::NAN);
        let before = read_cpu_times()?;
        std::thread::sleep(Duration::from_secs(1));
        let after = read_cpu_times()?;
        let (busy, steal) = busy_and_steal(before, after, nproc);
        let quiet = steal < 0.05 && (load1 < 0.5 || busy < 0.5);
        if quiet || Instant::now() >= deadline {
            return Ok((load1, busy, steal, quiet));
        }
    }
}

/// The aggregate `cpu` line of `/proc/stat` as (busy, steal, total) jiffies: busy is
/// everything but idle and iowait.
pub fn parse_cpu_times(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let steal = v.get(7).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), steal, total))
}

fn read_cpu_times() -> anyhow::Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_cpu_times(&text).context("no aggregate cpu line in /proc/stat")
}

/// Cores busy and the steal fraction between two readings of [`parse_cpu_times`].
pub fn busy_and_steal(before: (u64, u64, u64), after: (u64, u64, u64), nproc: usize) -> (f64, f64) {
    let total = after.2.saturating_sub(before.2);
    if total == 0 {
        return (0.0, 0.0);
    }
    let busy = after.0.saturating_sub(before.0) as f64 / total as f64 * nproc as f64;
    let steal = after.1.saturating_sub(before.1) as f64 / total as f64;
    (busy, steal)
}

/// Runs the load generator in `cli` pinned to its CPU and returns its stdout; the child is
/// killed if the run is cancelled.
fn run_load(
    bins: &Bins,
    stage: &Stage,
    args: &[String],
    cancel: &Cancel,
) -> anyhow::Result<String> {
    let mut cmd = stage
        .topo
        .cli
        .command(Some(CPU_LOAD), &bins.meshbench, args);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the load generator")?;
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().context("load generator stdout")?;
    let mut stderr = child.stderr.take().context("load generator stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for the load generator")? {
            break status;
        }
        if cancel.0.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`meshbench {}` failed ({status}): {}",
            args.join(" "),
            err.trim()
        );
    }
    Ok(out)
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for &p in pids {
        total += sys::cpu_seconds(p).with_context(|| format!("CPU time of pid {p}"))?;
    }
    Ok(total)
}

/// One configuration, one case: the warm-up run, then the measured run between two CPU
/// readings of the SUT.
fn run_one(
    bins: &Bins,
    stage: &Stage,
    case: &Case,
    config: Config,
    round: usize,
    cancel: &Cancel,
) -> anyhow::Result<Sample> {
    let e = entry(config, case.nopool);
    let pids = stage.sut_pids(config);
    if !case.warmup.is_zero() {
        run_load(
            bins,
            stage,
            &load_args(&e, case, "/1024", case.warmup),
            cancel,
        )?;
    }
    let before = cpu_of(&pids)?;
    let out = run_load(
        bins,
        stage,
        &load_args(&e, case, "/1024", case.duration),
        cancel,
    )?;
    let after = cpu_of(&pids)?;
    let load = parse_load(&out)?;
    Ok(Sample {
        workload: case.workload,
        case: case.name.clone(),
        config,
        round,
        load,
        sut_cpu_s: (after - before).max(0.0),
    })
}

/// §5.1: round trips in `srv` and across the veth, hello-world rps against the app.
fn calibrate(
    plan: &Plan,
    bins: &Bins,
    stage: &Stage,
    rep: &mut Run,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    let rtt = |ns: &Netns, target: &str| -> Option<report::Rtt> {
        let args: Vec<String> = ["rtt", "--target", target, "--count", "5000", "--size", "64"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = ns
            .command(Some(CPU_LOAD), &bins.meshbench, &args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().rev().find(|l| l.starts_with('{'))?;
        let j: RttJson = serde_json::from_str(line).ok()?;
        Some(report::Rtt {
            p50_us: j.p50_us,
            p99_us: j.p99_us,
        })
    };
    rep.calibration.rtt_loopback = rtt(&stage.topo.srv, "127.0.0.1:9000");
    rep.calibration.rtt_veth = rtt(&stage.topo.cli, &format!("{SRV_IP}:9000"));
    for conns in [1u32, 32] {
        cancel.check()?;
        let case = Case {
            workload: Workload::W2,
            name: String::new(),
            rate: None,
            conns,
            new_conn: false,
            nopool: false,
            duration: plan.calibration_duration,
            warmup: Duration::ZERO,
        };
        let e = entry(Config::C0, false);
        match run_load(
            bins,
            stage,
            &load_args(&e, &case, "/", case.duration),
            cancel,
        )
        .and_then(|o| parse_load(&o))
        {
            Ok(m) => rep.calibration.hello_rps.push((conns, m.achieved_rps)),
            Err(e) => rep.notes.push(format!(
                "calibration: hello-world rps at {conns} conn(s): {e:#}"
            )),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(argv: &[&str]) -> Plan {
        let mut all = vec!["suite"];
        all.extend_from_slice(argv);
        Plan::from_args(&Cli::parse_from(all).args).unwrap()
    }

    #[test]
    fn defaults_for_full_and_smoke() {
        let full = plan(&[]);
        assert_eq!((full.rounds, full.mode()), (5, "full"));
        assert_eq!(full.duration, Duration::from_secs(15));
        assert_eq!(full.configs, Config::ALL.to_vec());
        // W1 x2, W2, W5 200/1000 x pooled/off.
        assert_eq!(full.cases.len(), 7, "{:?}", full.cases);
        let smoke = plan(&["--smoke"]);
        assert_eq!((smoke.rounds, smoke.mode()), (3, "smoke"));
        assert_eq!(smoke.cases.len(), 5);
        assert!(
            smoke
                .cases
                .iter()
                .all(|c| c.duration <= Duration::from_secs(2))
        );
        let w5 = smoke
            .cases
            .iter()
            .find(|c| c.workload == Workload::W5)
            .unwrap();
        assert_eq!(
            (w5.duration, w5.warmup),
            (Duration::from_millis(1500), Duration::from_millis(500))
        );
        let w2 = full
            .cases
            .iter()
            .find(|c| c.workload == Workload::W2)
            .unwrap();
        assert_eq!(
            (w2.duration, w2.warmup),
            (Duration::from_secs(5), Duration::from_millis(1500))
        );
        let w1: Vec<_> = smoke
            .cases
            .iter()
            .filter(|c| c.workload == Workload::W1)
            .map(|c| (c.rate, c.conns))
            .collect();
        assert_eq!(w1, vec![(Some(1000), 16), (Some(5000), 64)]);
        let w2 = smoke
            .cases
            .iter()
            .find(|c| c.workload == Workload::W2)
            .unwrap();
        assert_eq!((w2.rate, w2.conns), (None, 64));
    }

    #[test]
    fn only_and_configs_select_subsets() {
        let p = plan(&["--only", "W1,w5", "--configs", "c3,C0,C1", "--rounds", "2"]);
        assert_eq!(p.configs, vec![Config::C0, Config::C1, Config::C3]);
        assert!(p.cases.iter().all(|c| c.workload != Workload::W2));
        assert!(!p.w7 && !p.w8);
        assert_eq!(p.rounds, 2);
        let mut all = vec!["suite", "--only", "W9"];
        assert!(Plan::from_args(&Cli::parse_from(all.clone()).args).is_err());
        all[2] = "W1";
        all.extend(["--configs", "C7"]);
        assert!(Plan::from_args(&Cli::parse_from(all).args).is_err());
        let p = plan(&["--duration", "500ms", "--warmup", "0s"]);
        assert_eq!(p.duration, Duration::from_millis(500));
        assert_eq!(p.warmup, Duration::ZERO);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn entries_and_load_arguments() {
        assert_eq!(entry(Config::C0, false).target, "198.18.0.2:8080");
        let c1 = entry(Config::C1, false);
        assert_eq!(c1.target, "127.0.0.1:15001");
        assert_eq!(
            c1.host.as_deref(),
            Some("echo.default.svc.cluster.local:8080")
        );
        assert_eq!(
            entry(Config::C1, true).host.as_deref(),
            Some("echo-nopool.default.svc.cluster.local:8080")
        );
        assert_eq!(
            entry(Config::C1p, false).host.as_deref(),
            Some("echo-plain.default.svc.cluster.local:8080")
        );
        assert_eq!(entry(Config::C2, true).target, "127.0.0.1:10081");
        assert_eq!(entry(Config::C3, false).target, "127.0.0.1:11080");
        let p = plan(&["--smoke"]);
        let w5b = p.cases.iter().find(|c| c.nopool).unwrap();
        let a = load_args(
            &entry(Config::C1, true),
            w5b,
            "/1024",
            Duration::from_secs(2),
        );
        let joined = a.join(" ");
        assert!(
            joined.starts_with("load --target 127.0.0.1:15001 --path /1024"),
            "{joined}"
        );
        for part in [
            "--rate 200",
            "--new-conn",
            "--duration 2000ms",
            "--warmup 0s",
            "--host echo-nopool",
        ] {
            assert!(joined.contains(part), "{part} missing: {joined}");
        }
        let w2 = p.cases.iter().find(|c| c.workload == Workload::W2).unwrap();
        let a = load_args(
            &entry(Config::C0, false),
            w2,
            "/1024",
            Duration::from_secs(1),
        )
        .join(" ");
        assert!(!a.contains("--rate") && !a.contains("--host"), "{a}");
        assert!(!Plan::runs(w5b, Config::C0) && !Plan::runs(w5b, Config::C1p));
        assert!(Plan::runs(w5b, Config::C3));
    }

    #[test]
    fn load_reports_parse() {
        let out = "warming up\n{\"proto\":\"h1\",\"open_loop\":true,\"offered_rps\":1000.0,\
                   \"achieved_rps\":999.5,\"measured_s\":3.0,\"requests\":2999,\"ok\":2998,\
                   \"errors\":1,\"error_samples\":[\"timeout\"],\"connections\":16,\
                   \"latency_us\":{\"p50\":120.0,\"p90\":150.0,\"p99\":400.0,\"p999\":900.0,\
                   \"max\":1200.0,\"mean\":130.0}}\n";
        let m = parse_load(out).unwrap();
        assert_eq!((m.ok, m.errors, m.connections), (2998, 1, 16));
        assert_eq!((m.p50_us, m.p999_us), (120.0, 900.0));
        assert_eq!(m.error_samples, vec!["timeout".to_string()]);
        assert!(parse_load("no json here").is_err());
    }

    #[test]
    fn http_responses_parse_with_length_or_chunks() {
        let (s, b) =
            parse_http_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abc"[..]));
        let (s, b) = parse_http_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"abcde"[..]));
        let (_, b) = parse_http_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(b, b"all of it");
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc").is_err());
    }

    #[test]
    fn busy_cores_and_steal_come_from_proc_stat() {
        let before = parse_cpu_times("cpu  100 0 50 1000 10 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(before, (150, 0, 1160));
        let after = parse_cpu_times("cpu  150 0 100 1090 10 0 0 10 0 0\n").unwrap();
        // 200 jiffies elapsed on 2 CPUs: 100 busy (= 1 core), 10 stolen (5 %).
        let (busy, steal) = busy_and_steal(before, after, 2);
        assert!((busy - 1.1).abs() < 1e-9, "{busy}");
        assert!((steal - 0.05).abs() < 1e-9, "{steal}");
        assert_eq!(parse_cpu_times("intr 1 2"), None);
    }

    #[test]
    fn openssl_output_is_read_for_a_200() {
        assert!(is_200(
            "depth=2 CN = root\nHTTP/1.1 200 OK\ncontent-length: 16\n"
        ));
        assert!(!is_200(
            "40F7:error:0A00045C:SSL routines::tlsv13 alert certificate required\n"
        ));
        assert!(!is_200("HTTP/1.1 400 Bad Request\n"));
    }
}
