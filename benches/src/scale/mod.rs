//! `meshbench scale`: the control plane and the sidecar's config at scale (PERFORMANCE.md
//! §7.3 W7 and W8, goals G4 and G9–G13 of §8).
//!
//! - W7 ([`w7`]): one real `weft-proxy` per config size K (K services x 3 endpoints, plus one
//!   point at 1 endpoint per service to separate the two slopes); RSS once its config is
//!   complete.
//! - W8 ([`w8`]): the real `weft-control` and N simulated sidecars in this process ([`ads`]),
//!   each a tonic ADS client on its own connection, delta and SotW side by side.
//!
//! The mesh is generated ([`config`]); pure helpers are in [`agg`]; child processes in
//! [`procs`]. Nothing here judges a number: the report states measured against target.

pub mod ads;
pub mod agg;
pub mod config;
pub mod procs;
pub mod w7;
pub mod w8;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use agg::Spread;

/// Command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The `weft-control` binary (default: next to this executable).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// The `weft-proxy` binary (default: next to this executable).
    #[arg(long)]
    pub proxy: Option<PathBuf>,
    /// Numbers of simulated proxies for W8, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000")]
    pub clients: Vec<usize>,
    /// Services in the W8 mesh.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Endpoints (WorkloadEntries) in the W8 mesh, spread over the services.
    #[arg(long, default_value_t = 10000)]
    pub endpoints: usize,
    /// Changes of each kind (endpoint, route) per W8 run.
    #[arg(long, default_value_t = 5)]
    pub changes: usize,
    /// xDS variants for W8: delta, sotw.
    #[arg(long, value_delimiter = ',', default_value = "delta,sotw")]
    pub modes: Vec<String>,
    /// Numbers of services for W7 (each with 3 endpoints), comma-separated; the flag without
    /// a value skips W7 (as `--clients` without a value skips W8).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000,10000")]
    pub config_sizes: Vec<usize>,
    /// Where config directories go (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report's Markdown sections here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub control: PathBuf,
    pub proxy: PathBuf,
    pub clients: Vec<usize>,
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    /// "delta", "sotw".
    pub modes: Vec<String>,
    pub config_sizes: Vec<usize>,
    pub work_dir: PathBuf,
}

/// Something not run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skip {
    pub what: String,
    pub reason: String,
}

/// Both workloads' results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub w7: W7Report,
    pub w8: W8Report,
}

/// W7: sidecar memory by config size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct W7Report {
    /// Of the main series.
    pub endpoints_per_service: usize,
    pub rows: Vec<W7Row>,
    pub skipped: Vec<Skip>,
    /// Least-squares slopes of RSS over services and endpoints (needs the 1-endpoint point).
    pub kib_per_service: Option<f64>,
    pub kib_per_endpoint: Option<f64>,
    /// Slope of the main series alone: one service with its 3 endpoints.
    pub kib_per_service_with_endpoints: Option<f64>,
}

/// One proxy run of W7.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct W7Row {
    pub services: usize,
    pub endpoints: usize,
    /// From spawn until `/ready` and every type ACKed (CP's `/debug/syncz`).
    pub ready_ms: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// What `/config_dump` shows, read after the memory figures.
    pub services_in_dump: usize,
    pub clusters_in_dump: usize,
    pub cp_rss_kib: u64,
}

/// W8: control-plane propagation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct W8Report {
    pub services: usize,
    pub endpoints: usize,
    /// Changes of each kind per run.
    pub changes: usize,
    /// The CP's `--debounce-ms` (default, applied by the file source and again by the cache).
    pub debounce_ms: u64,
    pub nofile_limit: u64,
    pub runs: Vec<W8Run>,
    pub skipped: Vec<Skip>,
}

/// One (mode, N) run of W8.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct W8Run {
    pub mode: String,
    pub clients: usize,
    /// Node ids in use (clients beyond the number of workloads share them).
    pub distinct_nodes: usize,
    /// From launching every client until each has ACKed a first answer on every type.
    pub connect: Storm,
    /// Every client drops its connection and resumes at once (SotW sends the versions held,
    /// delta `initial_resource_versions`): until each is in sync again.
    pub reconnect: Option<Storm>,
    /// CP VmRSS with its config loaded and no client.
    pub cp_rss_before_kib: u64,
    /// CP VmRSS with N connected and idle.
    pub cp_rss_idle_kib: u64,
    /// CP VmHWM at the end of the run.
    pub cp_hwm_kib: u64,
    /// Bytes of the initial config, all clients.
    pub initial_bytes: u64,
    pub endpoint: Changes,
    pub route: Changes,
    /// Largest single response (tonic's default decode limit, kept by `weft-proxy`, is 4 MiB).
    pub max_response_bytes: u64,
    pub stream_errors: u64,
    pub errors: Vec<String>,
    /// What was cut short, and why.
    pub notes: Vec<String>,
    pub duration_s: f64,
}

/// A storm of connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storm {
    pub clients: usize,
    /// Milliseconds per client that made it (`spread.n` of `clients`).
    pub spread: Spread,
    pub cp_cpu_s: f64,
    /// CP VmRSS sampled every 50 ms during the storm.
    pub cp_peak_rss_kib: u64,
}

/// All changes of one kind in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changes {
    pub kind: String,
    /// Medians over changes of each change's client p50 / p99 (ms from the write, debounce
    /// included, to the client's ACK).
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub p50_ms: f64,
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub p99_ms: f64,
    /// The 100 % point (slowest client) of each change: median and worst over changes.
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub full_ms_median: f64,
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub full_ms_max: f64,
    /// Bytes of all responses of a change, all clients (protobuf + 5 bytes gRPC framing each;
    /// HTTP/2 framing not counted); median over changes.
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub bytes_median: f64,
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub responses_median: f64,
    /// CP utime+stime from the write until the push settled; median over changes.
    #[serde(deserialize_with = "agg::nan_if_null")]
    pub cp_cpu_s_median: f64,
    /// Every client ACKed every change.
    pub all_received: bool,
    pub runs: Vec<ChangeRun>,
}

/// One change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRun {
    pub spread: Spread,
    /// Clients that had not ACKed it by the deadline.
    pub missing: usize,
    pub bytes: u64,
    pub responses: u64,
    pub cp_cpu_s: f64,
}

/// Runs `meshbench scale`: prints the summary lines, writes the JSON/Markdown if asked.
pub fn main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let temp;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let spec = Spec {
        control: args
            .control
            .clone()
            .unwrap_or_else(|| procs::sibling_bin("weft-control")),
        proxy: args
            .proxy
            .clone()
            .unwrap_or_else(|| procs::sibling_bin("weft-proxy")),
        clients: args.clients.clone(),
        services: args.services,
        endpoints: args.endpoints,
        changes: args.changes,
        modes: args.modes.clone(),
        config_sizes: args.config_sizes.clone(),
        work_dir,
    };
    // On Ctrl-C or SIGTERM the run is dropped, which kills the children (kill_on_drop) and
    // lets the temporary directory go.
    let report = runtime.block_on(async {
        tokio::select! {
            r = run(&spec) => r,
            () = interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    for line in summary_lines(&report) {
        println!("{line}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown(&report))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// A temporary directory removed on drop (tempfile is only a dev-dependency).
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("meshbench-scale-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs W7 then W8 as `spec` says.
pub async fn run(spec: &Spec) -> anyhow::Result<Report> {
    for (what, path) in [("weft-control", &spec.control), ("weft-proxy", &spec.proxy)] {
        anyhow::ensure!(
            path.exists(),
            "{what} not found at {} (build it, or pass --{})",
            path.display(),
            &what[5..]
        );
    }
    std::fs::create_dir_all(&spec.work_dir)
        .with_context(|| format!("create {}", spec.work_dir.display()))?;
    let nofile = crate::sys::raise_nofile().unwrap_or(u64::MAX);
    let w7 = w7::run(spec).await;
    let w8 = w8::run(spec, nofile).await;
    Ok(Report { w7, w8 })
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn bytes_h(b: f64) -> String {
    if b.is_nan() {
        "-".into()
    } else if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn opt_kb(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The report's two sections, Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let w7 = &r.w7;
    let _ = writeln!(s, "## W7: sidecar memory by config size\n");
    let _ = writeln!(
        s,
        "One `weft-proxy` (`--concurrency 1`, plaintext xDS, delta) per size; RSS read once `/ready` \
         and the CP's `/debug/syncz` show every type ACKed.\n"
    );
    let _ = writeln!(
        s,
        "| services | endpoints | services in dump | clusters | ready (ms) | RSS (MiB) | HWM (MiB) | CP RSS (MiB) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &w7.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.services,
            row.endpoints,
            row.services_in_dump,
            row.clusters_in_dump,
            ms(row.ready_ms),
            mib(row.rss_kib),
            mib(row.hwm_kib),
            mib(row.cp_rss_kib)
        );
    }
    if w7.rows.is_empty() && w7.skipped.is_empty() {
        let _ = writeln!(s, "\nW7 was not run (no config sizes given).");
    }
    for k in &w7.skipped {
        let _ = writeln!(s, "\nNot run: {}: {}", k.what, k.reason);
    }
    let _ = writeln!(
        s,
        "\nG4 (config slope <= 5 KB/service, <= 2 KB/endpoint; Envoy ~15 KB per cluster): measured {} KiB per \
         service and {} KiB per endpoint (least squares over all rows), {} KiB per service with its {} endpoints \
         (main series).\n",
        opt_kb(w7.kib_per_service),
        opt_kb(w7.kib_per_endpoint),
        opt_kb(w7.kib_per_service_with_endpoints),
        w7.endpoints_per_service
    );

    let w8 = &r.w8;
    let _ = writeln!(s, "## W8: control-plane propagation\n");
    let _ = writeln!(
        s,
        "Real `weft-control` (plaintext xDS, `--debounce-ms {}` as shipped: applied by the file \
         source and again by the cache, so about {} ms of every propagation time is debounce), \
         {} services, {} endpoints; N simulated sidecars in one process, each its own connection, \
         ACKing every response. Change latency is from the atomic file write to each client's ACK \
         of the first response carrying the change; bytes are protobuf + 5 bytes gRPC framing per \
         response, HTTP/2 framing not counted; CP CPU is utime+stime from the write until the push \
         settled; {} changes of each kind.\n",
        w8.debounce_ms,
        2 * w8.debounce_ms,
        w8.services,
        w8.endpoints,
        w8.changes
    );
    let _ = writeln!(
        s,
        "| mode | N | connect p50/p99/100% (ms) | change | p50 (ms) | p99 (ms) | 100% median/max (ms) | bytes/change | responses | CP CPU-s/push | all ACKed |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---:|---:|---|---:|---:|---:|---|");
    for run in &w8.runs {
        for c in [&run.endpoint, &run.route] {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {:.0} | {:.3} | {} |",
                run.mode,
                run.clients,
                storm_cell(&run.connect),
                c.kind,
                ms(c.p50_ms),
                ms(c.p99_ms),
                ms(c.full_ms_median),
                ms(c.full_ms_max),
                bytes_h(c.bytes_median),
                c.responses_median,
                c.cp_cpu_s_median,
                if c.all_received { "yes" } else { "NO" }
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| mode | N | CP RSS empty (MiB) | CP RSS idle, N connected (MiB) | KiB per proxy | CP HWM (MiB) | connect storm CP CPU-s | reconnect p50/p99/100% (ms) | reconnect peak RSS (MiB) | largest response | stream errors | run (s) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|"
    );
    for run in &w8.runs {
        let (rc, rpeak) = run
            .reconnect
            .as_ref()
            .map_or(("-".into(), "-".into()), |r| {
                (storm_cell(r), mib(r.cp_peak_rss_kib))
            });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
            run.mode,
            run.clients,
            mib(run.cp_rss_before_kib),
            mib(run.cp_rss_idle_kib),
            per_proxy_kib(run),
            mib(run.cp_hwm_kib),
            run.connect.cp_cpu_s,
            rc,
            rpeak,
            bytes_h(run.max_response_bytes as f64),
            run.stream_errors,
            run.duration_s
        );
    }
    if w8
        .runs
        .iter()
        .any(|r| r.connect.spread.max_ms.is_nan() || r.connect.spread.max_ms > 15_000.0)
    {
        let _ = writeln!(
            s,
            "\nThe simulated clients wait for their stream however long it takes; a real `weft-proxy` \
             abandons a stream not opened within 15 s and retries, which makes the control plane \
             translate its config again: the runs above whose connect storm took longer would not \
             converge with real sidecars."
        );
    }
    for run in &w8.runs {
        for note in run.notes.iter().chain(&run.errors) {
            let _ = writeln!(s, "\n{} N={}: {note}", run.mode, run.clients);
        }
    }
    for k in &w8.skipped {
        let _ = writeln!(s, "\nNot run: {}: {}", k.what, k.reason);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", goals(w8));
    s
}

fn storm_cell(st: &Storm) -> String {
    let mut c = format!(
        "{} / {} / {}",
        ms(st.spread.p50_ms),
        ms(st.spread.p99_ms),
        ms(st.spread.max_ms)
    );
    if st.spread.n < st.clients {
        let _ = write!(c, " ({} of {} only)", st.spread.n, st.clients);
    }
    c
}

fn per_proxy_kib(run: &W8Run) -> f64 {
    run.cp_rss_idle_kib.saturating_sub(run.cp_rss_before_kib) as f64 / run.clients.max(1) as f64
}

/// The largest delta run, else the largest run.
fn headline(w8: &W8Report) -> Option<&W8Run> {
    w8.runs
        .iter()
        .filter(|r| r.mode == "delta")
        .max_by_key(|r| r.clients)
        .or_else(|| w8.runs.iter().max_by_key(|r| r.clients))
}

/// One sentence per goal of §8.2 that W8 speaks to, measured against target.
fn goals(w8: &W8Report) -> String {
    let Some(h) = headline(w8) else {
        return "No W8 run completed; G9–G13 not measured.".into();
    };
    let n = h.clients;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- G9 (endpoint change ACKed by 100 % of 1,000 proxies in <= 100 ms p99 over changes, debounce included; 10,000 in <= 1 s): \
         at N = {n} ({}) the slowest client ACKed after {} ms (median over {} changes; worst {} ms), of which ~{} ms is the two debounces.",
        h.mode,
        ms(h.endpoint.full_ms_median),
        h.endpoint.runs.len(),
        ms(h.endpoint.full_ms_max),
        2 * w8.debounce_ms
    );
    let per = per_proxy_kib(h);
    let _ = writeln!(
        s,
        "- G10 (CP RSS <= 1 GB at 10,000 proxies, <= 50 KB per connected proxy + shared config): at N = {n} the CP held {} MiB \
         ({:.0} KiB per connected proxy over {} MiB with none); linear extrapolation to 10,000: {:.1} GiB.",
        mib(h.cp_rss_idle_kib),
        per,
        mib(h.cp_rss_before_kib),
        (h.cp_rss_before_kib as f64 + per * 10_000.0) / 1048576.0
    );
    let _ = writeln!(
        s,
        "- G11 (<= 1 core-second per full fan-out of one endpoint change to 10,000 proxies): {:.3} CPU-s per endpoint push at N = {n} \
         ({:.2} CPU-s per 10,000 if linear).",
        h.endpoint.cp_cpu_s_median,
        h.endpoint.cp_cpu_s_median * 10_000.0 / n.max(1) as f64
    );
    if let Some(r) = &h.reconnect {
        let steady = h.cp_rss_idle_kib.max(1) as f64;
        let _ = writeln!(
            s,
            "- G13 (all 10,000 reconnect at once: full config in <= 5 s, CP peak RSS <= 1.5x steady): at N = {n}, all resumed in {} ms \
             ({} of {} in sync), CP peak {} MiB = {:.2}x steady; a cold connect storm of all {n} took {} ms to full config.",
            ms(r.spread.max_ms),
            r.spread.n,
            r.clients,
            mib(r.cp_peak_rss_kib),
            r.cp_peak_rss_kib as f64 / steady,
            ms(h.connect.spread.max_ms)
        );
    }
    let _ = write!(
        s,
        "- G12 (churn at 100 events/s) is not measured by this workload."
    );
    s
}

/// One line per workload (per W7 size and per W8 run) for stdout.
pub fn summary_lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for row in &r.w7.rows {
        out.push(format!(
            "W7 services={} endpoints={} rss={} MiB hwm={} MiB ready={} ms (dump: {} services)",
            row.services,
            row.endpoints,
            mib(row.rss_kib),
            mib(row.hwm_kib),
            ms(row.ready_ms),
            row.services_in_dump
        ));
    }
    if r.w7.kib_per_service.is_some() || r.w7.kib_per_service_with_endpoints.is_some() {
        out.push(format!(
            "W7 slope: {} KiB/service, {} KiB/endpoint, {} KiB/service incl. {} endpoints",
            opt_kb(r.w7.kib_per_service),
            opt_kb(r.w7.kib_per_endpoint),
            opt_kb(r.w7.kib_per_service_with_endpoints),
            r.w7.endpoints_per_service
        ));
    }
    for run in &r.w8.runs {
        out.push(format!(
            "W8 {} N={} connect 100%={} ms | endpoint p50={} p99={} 100%={} ms {}/change cpu={:.3}s | route p50={} 100%={} ms {}/change | cp rss idle={} MiB | reconnect 100%={} ms{}",
            run.mode,
            run.clients,
            ms(run.connect.spread.max_ms),
            ms(run.endpoint.p50_ms),
            ms(run.endpoint.p99_ms),
            ms(run.endpoint.full_ms_median),
            bytes_h(run.endpoint.bytes_median),
            run.endpoint.cp_cpu_s_median,
            ms(run.route.p50_ms),
            ms(run.route.full_ms_median),
            bytes_h(run.route.bytes_median),
            mib(run.cp_rss_idle_kib),
            run.reconnect.as_ref().map_or("-".into(), |x| ms(x.spread.max_ms)),
            if run.endpoint.all_received && run.route.all_received {
                ""
            } else {
                " (SOME CLIENTS MISSED A CHANGE)"
            }
        ));
    }
    for k in r.w7.skipped.iter().chain(&r.w8.skipped) {
        out.push(format!("skipped {}: {}", k.what, k.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let spread = Spread {
            n: 10,
            p50_ms: 210.0,
            p99_ms: 230.0,
            max_ms: 240.0,
        };
        let change = ChangeRun {
            spread,
            missing: 0,
            bytes: 5000,
            responses: 10,
            cp_cpu_s: 0.05,
        };
        let storm = Storm {
            clients: 10,
            spread,
            cp_cpu_s: 0.5,
            cp_peak_rss_kib: 40_000,
        };
        Report {
            w7: W7Report {
                endpoints_per_service: 3,
                rows: vec![W7Row {
                    services: 100,
                    endpoints: 300,
                    ready_ms: 50.0,
                    rss_kib: 8000,
                    hwm_kib: 9000,
                    services_in_dump: 100,
                    clusters_in_dump: 120,
                    cp_rss_kib: 20_000,
                }],
                skipped: vec![],
                kib_per_service: Some(3.5),
                kib_per_endpoint: Some(1.0),
                kib_per_service_with_endpoints: Some(6.5),
            },
            w8: W8Report {
                services: 1000,
                endpoints: 10000,
                changes: 1,
                debounce_ms: 100,
                nofile_limit: 1 << 20,
                runs: vec![W8Run {
                    mode: "delta".into(),
                    clients: 10,
                    distinct_nodes: 10,
                    connect: storm.clone(),
                    reconnect: Some(storm),
                    cp_rss_before_kib: 30_000,
                    cp_rss_idle_kib: 40_000,
                    cp_hwm_kib: 41_000,
                    initial_bytes: 1,
                    endpoint: w8::summarize("endpoint", vec![change.clone()]),
                    route: w8::summarize("route", vec![change]),
                    max_response_bytes: 1000,
                    stream_errors: 0,
                    errors: vec![],
                    notes: vec![],
                    duration_s: 3.0,
                }],
                skipped: vec![Skip {
                    what: "W8 delta N=10000".into(),
                    reason: "RLIMIT_NOFILE".into(),
                }],
            },
        }
    }

    #[test]
    fn markdown_has_both_sections_and_every_goal() {
        let md = markdown(&sample());
        for needle in [
            "## W7: sidecar memory by config size",
            "## W8: control-plane propagation",
            "G4 ",
            "G9 ",
            "G10 ",
            "G11 ",
            "G13 ",
            "3.50 KiB per service",
            "| delta | 10 |",
            "Not run: W8 delta N=10000: RLIMIT_NOFILE",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        // 1 KiB per proxy: (40000 - 30000) / 10 = 1000 KiB.
        assert!(md.contains("1000 KiB per connected proxy"), "{md}");
    }

    #[test]
    fn one_summary_line_per_workload() {
        let lines = summary_lines(&sample());
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("W7 services=100"));
        assert!(lines[1].starts_with("W7 slope"));
        assert!(lines[2].starts_with("W8 delta N=10"));
        assert!(lines[3].starts_with("skipped"));
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let json = serde_json::to_string(&sample()).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.w8.runs[0].clients, 10);
    }
}
