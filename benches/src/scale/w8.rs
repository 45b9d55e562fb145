//! W8: the real control plane with N simulated proxies: connect storm, endpoint and route
//! changes (time to ACK by every client, CP CPU per push, bytes on the wire), CP memory with
//! N connected, and a reconnect storm.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::ads::{Fleet, Mode, Probe};
use super::agg::{Spread, percentile};
use super::config::{self, Mesh};
use super::procs::{self, ControlPlane};
use super::{ChangeRun, Changes, Skip, Spec, Storm, W8Report, W8Run};

/// The control plane's default `--debounce-ms`, which we leave as shipped. It applies twice
/// on the path of a file change: the file source's rescan and the cache's regeneration.
pub const CP_DEBOUNCE_MS: u64 = 100;

/// How long no response must arrive before a push counts as finished: longer than both
/// debounces, so a second push of the same change would still be inside the window.
const QUIET: Duration = Duration::from_millis(3 * CP_DEBOUNCE_MS + 100);

/// A change slower than this to reach every client ends the series of its kind (one more
/// would only repeat the finding and cost as much time).
const SLOW_CHANGE_MS: f64 = 20_000.0;

/// File descriptors kept free for everything but the client connections.
const FD_MARGIN: u64 = 256;

pub async fn run(spec: &Spec, nofile: u64) -> W8Report {
    let mut report = W8Report {
        services: spec.services,
        endpoints: spec.endpoints,
        changes: spec.changes,
        debounce_ms: CP_DEBOUNCE_MS,
        nofile_limit: nofile,
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    let modes: Vec<Mode> = spec
        .modes
        .iter()
        .filter_map(|m| match Mode::parse(m) {
            Ok(m) => Some(m),
            Err(e) => {
                report.skipped.push(Skip {
                    what: format!("mode {m}"),
                    reason: e.to_string(),
                });
                None
            }
        })
        .collect();
    // KiB of CP memory per connected client, from the largest run so far: predicts whether
    // the next N fits in memory.
    let mut per_client_kib: Option<f64> = None;
    let mut clients = spec.clients.clone();
    clients.sort_unstable();
    for &n in &clients {
        for &mode in &modes {
            let what = format!("W8 {} N={n}", mode.as_str());
            if let Some(reason) = cannot_fit(n, nofile, per_client_kib) {
                eprintln!("meshbench scale: skipping {what}: {reason}");
                report.skipped.push(Skip { what, reason });
                continue;
            }
            eprintln!("meshbench scale: {what} ...");
            let dir = spec.work_dir.join(format!("w8-{}-{n}", mode.as_str()));
            let started = Instant::now();
            let result = run_one(spec, &dir, mode, n).await;
            let _ = std::fs::remove_dir_all(&dir);
            match result {
                Ok(mut run) => {
                    run.duration_s = started.elapsed().as_secs_f64();
                    if n > 0 {
                        let grown = run.cp_rss_idle_kib.saturating_sub(run.cp_rss_before_kib);
                        let k = grown as f64 / n as f64;
                        per_client_kib = Some(per_client_kib.map_or(k, |p: f64| p.max(k)));
                    }
                    eprintln!("meshbench scale: {what} done in {:.1} s", run.duration_s);
                    report.runs.push(run);
                }
                Err(e) => {
                    eprintln!("meshbench scale: {what} failed: {e:#}");
                    report.skipped.push(Skip {
                        what,
                        reason: format!("failed: {e:#}"),
                    });
                }
            }
        }
    }
    report
}

/// Why N clients cannot run here, if they cannot: file descriptors (ours and the CP's, which
/// inherits our limit) or memory predicted from a smaller run.
fn cannot_fit(n: usize, nofile: u64, per_client_kib: Option<f64>) -> Option<String> {
    if n as u64 + FD_MARGIN > nofile {
        return Some(format!(
            "RLIMIT_NOFILE is {nofile} (raised to the hard limit): {n} connections + {FD_MARGIN} do not fit"
        ));
    }
    let available = procs::mem_available_kib().ok()?;
    let per = per_client_kib?;
    // The clients of this process cost memory too; count them as much as the CP's share.
    let need = per * n as f64 * 2.0;
    (need > available as f64 * 0.8).then(|| {
        format!(
            "predicted memory {:.1} GiB (CP {:.0} KiB/client from a smaller run, x2 for the simulated clients) exceeds 80 % of MemAvailable {:.1} GiB",
            need / 1048576.0,
            per,
            available as f64 / 1048576.0
        )
    })
}

/// Samples the CP's RSS until stopped; the peak.
struct Sampler {
    stop: CancellationToken,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = CancellationToken::new();
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, peak) = (stop.clone(), Arc::clone(&peak));
            async move {
                loop {
                    if let Ok(kib) = crate::sys::rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        });
        Self { stop, peak, task }
    }

    async fn finish(self, pid: u32) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        if let Ok(kib) = crate::sys::rss_kib(pid) {
            self.peak.fetch_max(kib, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

async fn run_one(spec: &Spec, dir: &Path, mode: Mode, n: usize) -> anyhow::Result<W8Run> {
    let mut mesh = Mesh::new(spec.services, spec.endpoints);
    mesh.write_all(dir)?;
    let node_ids: Vec<String> = (0..n).filter_map(|k| mesh.node_id(k)).collect();
    anyhow::ensure!(
        node_ids.len() == n,
        "no workloads to take node ids from (--endpoints 0)"
    );
    let distinct = n.min(mesh.endpoints());
    let mut cp = ControlPlane::start(&spec.control, dir, Duration::from_secs(120))
        .await
        .context("start weft-control")?;
    let pid = cp.child.pid;
    let rss_before = cp.child.rss_kib()?;
    let scale = n as u64;

    // Connect storm: every client at once, from nothing.
    let cpu0 = cp.child.cpu_seconds()?;
    let sampler = Sampler::start(pid);
    let t0 = Instant::now();
    let mut fleet = Fleet::start(cp.xds, mode, &node_ids);
    let deadline = t0 + Duration::from_secs(120) + Duration::from_millis(30 * scale);
    let synced = fleet.synced(0, n, t0, deadline).await;
    fleet.quiesce(QUIET, Duration::from_secs(60)).await;
    let peak = sampler.finish(pid).await;
    cp.child.check_alive()?;
    let connect = Storm {
        clients: n,
        spread: Spread::of(&synced),
        cp_cpu_s: cp.child.cpu_seconds()? - cpu0,
        cp_peak_rss_kib: peak,
    };
    let cp_rss_idle_kib = cp.child.rss_kib()?;
    let bytes_initial = fleet.hub.bytes.load(Ordering::Relaxed);
    eprintln!(
        "meshbench scale:   connect storm: {} of {n} in sync, slowest {} ms, CP {:.1} CPU-s, CP RSS {} MiB",
        synced.len(),
        connect.spread.max_ms,
        connect.cp_cpu_s,
        cp_rss_idle_kib / 1024
    );
    let mut notes = Vec::new();
    if synced.len() < n {
        // A change costs the CP what the storm cost it (every node is translated again), so
        // changes would not finish either: say so rather than wait for them.
        notes.push(format!(
            "only {} of {n} clients had their initial config after {:.0} s (no progress for {:.0} s, or {:.0} s in all): changes and the reconnect storm were not run",
            synced.len(),
            t0.elapsed().as_secs_f64(),
            deadline.saturating_duration_since(t0).as_secs_f64(),
            super::ads::MAX_WAIT.as_secs_f64()
        ));
        let hub = Arc::clone(&fleet.hub);
        fleet.stop().await;
        cp.child.kill().await;
        return Ok(W8Run {
            mode: mode.as_str().to_string(),
            clients: n,
            distinct_nodes: distinct,
            connect,
            reconnect: None,
            cp_rss_before_kib: rss_before,
            cp_rss_idle_kib,
            cp_hwm_kib: 0,
            initial_bytes: bytes_initial,
            endpoint: summarize("endpoint", Vec::new()),
            route: summarize("route", Vec::new()),
            max_response_bytes: hub.max_response.load(Ordering::Relaxed),
            stream_errors: hub.stream_errors.load(Ordering::Relaxed),
            errors: hub.errors(),
            notes,
            duration_s: 0.0,
        });
    }

    // Changes, alternating kinds so that neither always follows the other.
    let mut endpoint = Vec::new();
    let mut route = Vec::new();
    let mut id = 0u64;
    let mut slow = [false; 2];
    for c in 0..spec.changes {
        for (k, kind) in ["endpoint", "route"].into_iter().enumerate() {
            if slow[k] {
                continue;
            }
            id += 1;
            let (service, probe) = match kind {
                "endpoint" => match mesh.change_endpoint(c) {
                    Some(ch) => (
                        ch.service,
                        Probe::Endpoint {
                            cluster: ch.cluster,
                            address: ch.address,
                        },
                    ),
                    None => continue,
                },
                _ => match mesh.change_route(c) {
                    Some(ch) => (
                        ch.service,
                        Probe::Route {
                            fqdn: ch.fqdn,
                            v1: ch.v1,
                            v2: ch.v2,
                        },
                    ),
                    None => continue,
                },
            };
            let run = one_change(&mut cp, &mut fleet, &mesh, dir, service, id, probe, n).await?;
            eprintln!(
                "meshbench scale:   {kind} change {}: {} of {n} ACKed, p50 {} ms, 100 % {} ms, {} bytes, CP {:.2} CPU-s",
                c + 1,
                run.spread.n,
                run.spread.p50_ms,
                run.spread.max_ms,
                run.bytes,
                run.cp_cpu_s
            );
            // Bound the run's time: a change whose push takes longer than this is not going
            // to be averaged away by more of them.
            if (run.spread.max_ms.is_nan() || run.spread.max_ms > SLOW_CHANGE_MS)
                && c + 1 < spec.changes
            {
                slow[k] = true;
                notes.push(format!(
                    "{kind} changes stopped after {}: the last took {:.0} ms to reach every client (> {SLOW_CHANGE_MS} ms)",
                    c + 1,
                    run.spread.max_ms
                ));
            }
            match kind {
                "endpoint" => endpoint.push(run),
                _ => route.push(run),
            }
        }
    }

    // Reconnect storm: every client drops its connection and resumes at once.
    let cpu0 = cp.child.cpu_seconds()?;
    let sampler = Sampler::start(pid);
    let t0 = Instant::now();
    let epoch = fleet.reconnect_all();
    let deadline = t0 + Duration::from_secs(120) + Duration::from_millis(30 * scale);
    let resynced = fleet.synced(epoch, n, t0, deadline).await;
    fleet.quiesce(QUIET, Duration::from_secs(60)).await;
    let peak = sampler.finish(pid).await;
    let reconnect = Storm {
        clients: n,
        spread: Spread::of(&resynced),
        cp_cpu_s: cp.child.cpu_seconds()? - cpu0,
        cp_peak_rss_kib: peak,
    };
    eprintln!(
        "meshbench scale:   reconnect storm: {} of {n} in sync, slowest {} ms, CP peak RSS {} MiB",
        resynced.len(),
        reconnect.spread.max_ms,
        peak / 1024
    );
    cp.child.check_alive()?;
    let cp_hwm_kib = cp.child.hwm_kib()?;
    let hub = Arc::clone(&fleet.hub);
    fleet.stop().await;
    cp.child.kill().await;

    Ok(W8Run {
        mode: mode.as_str().to_string(),
        clients: n,
        distinct_nodes: distinct,
        connect,
        reconnect: Some(reconnect),
        cp_rss_before_kib: rss_before,
        cp_rss_idle_kib,
        cp_hwm_kib,
        initial_bytes: bytes_initial,
        endpoint: summarize("endpoint", endpoint),
        route: summarize("route", route),
        max_response_bytes: hub.max_response.load(Ordering::Relaxed),
        stream_errors: hub.stream_errors.load(Ordering::Relaxed),
        errors: hub.errors(),
        notes,
        duration_s: 0.0,
    })
}

#[allow(clippy::too_many_arguments)]
async fn one_change(
    cp: &mut ControlPlane,
    fleet: &mut Fleet,
    mesh: &Mesh,
    dir: &Path,
    service: usize,
    id: u64,
    probe: Probe,
    n: usize,
) -> anyhow::Result<ChangeRun> {
    let bytes0 = fleet.hub.bytes.load(Ordering::Relaxed);
    let responses0 = fleet.hub.responses.load(Ordering::Relaxed);
    let cpu0 = cp.child.cpu_seconds()?;
    fleet.watch(id, probe);
    let file = mesh.file_of(service);
    let text = mesh.render_file(file);
    let t0 = Instant::now();
    config::write_atomic(dir, &mesh.file_name(file), &text)?;
    let deadline = t0 + Duration::from_secs(60) + Duration::from_millis(10 * n as u64);
    let acked = fleet.changed(id, n, t0, deadline).await;
    fleet.quiesce(QUIET, Duration::from_secs(60)).await;
    cp.child.check_alive()?;
    Ok(ChangeRun {
        spread: Spread::of(&acked),
        missing: n - acked.len(),
        bytes: fleet.hub.bytes.load(Ordering::Relaxed) - bytes0,
        responses: fleet.hub.responses.load(Ordering::Relaxed) - responses0,
        cp_cpu_s: cp.child.cpu_seconds()? - cpu0,
    })
}

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0).unwrap_or(f64::NAN)
}

/// Per-kind summary: client latencies pooled over changes (p50, p99), the 100 % point of each
/// change (its slowest client) as median and worst over changes, medians of bytes and CPU.
pub fn summarize(kind: &str, runs: Vec<ChangeRun>) -> Changes {
    let full: Vec<f64> = runs.iter().map(|r| r.spread.max_ms).collect();
    let mut pooled_p50 = Vec::new();
    let mut pooled_p99 = Vec::new();
    for r in &runs {
        pooled_p50.push(r.spread.p50_ms);
        pooled_p99.push(r.spread.p99_ms);
    }
    Changes {
        kind: kind.to_string(),
        p50_ms: median(&pooled_p50),
        p99_ms: median(&pooled_p99),
        full_ms_median: median(&full),
        full_ms_max: percentile(&full, 100.0).unwrap_or(f64::NAN),
        bytes_median: median(&runs.iter().map(|r| r.bytes as f64).collect::<Vec<_>>()),
        responses_median: median(&runs.iter().map(|r| r.responses as f64).collect::<Vec<_>>()),
        cp_cpu_s_median: median(&runs.iter().map(|r| r.cp_cpu_s).collect::<Vec<_>>()),
        all_received: !runs.is_empty() && runs.iter().all(|r| r.missing == 0),
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: f64, bytes: u64, missing: usize) -> ChangeRun {
        ChangeRun {
            spread: Spread {
                n: 10,
                p50_ms: max / 2.0,
                p99_ms: max * 0.9,
                max_ms: max,
            },
            missing,
            bytes,
            responses: 10,
            cp_cpu_s: 0.1,
        }
    }

    #[test]
    fn summaries_take_medians_over_changes_and_the_worst_100_percent() {
        let s = summarize(
            "endpoint",
            vec![run(100.0, 10, 0), run(300.0, 30, 0), run(200.0, 20, 0)],
        );
        assert_eq!(s.full_ms_median, 200.0);
        assert_eq!(s.full_ms_max, 300.0);
        assert_eq!(s.p50_ms, 100.0);
        assert_eq!(s.bytes_median, 20.0);
        assert!(s.all_received);
        assert!(!summarize("route", vec![run(1.0, 1, 1)]).all_received);
        let empty = summarize("route", Vec::new());
        assert!(!empty.all_received);
        assert!(empty.p50_ms.is_nan());
    }

    #[test]
    fn too_many_clients_for_the_fd_limit_are_skipped() {
        let why = cannot_fit(10_000, 1024, None).unwrap();
        assert!(why.contains("RLIMIT_NOFILE is 1024"), "{why}");
        assert_eq!(cannot_fit(100, 1 << 20, None), None);
        let why = cannot_fit(10_000, 1 << 20, Some(1e9)).unwrap();
        assert!(why.contains("MemAvailable"), "{why}");
    }
}
