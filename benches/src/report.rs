//! The suite's report (PERFORMANCE.md §7.4–§7.5): within-round ratios to the best peer with a
//! 95 % bootstrap interval over rounds, the absolute figures per configuration, the TLS
//! settings, the calibration block, the notes and the §8.1 goals, as Markdown; and the one-line
//! summaries printed on stdout.
//!
//! Everything here is pure: the suite collects [`Sample`]s and the rest of a [`Run`], this
//! module decides (added latency, best peer, discarded rounds) and renders. Nothing is a gate:
//! goals are stated as measured value against target, never as pass or fail.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{self, Estimate};
use crate::sys::{Host, Mem};

/// The configurations of §7.2 run by the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Config {
    C0,
    C1,
    C1p,
    C2,
    C3,
}

impl Config {
    pub const ALL: [Config; 5] = [Config::C0, Config::C1, Config::C1p, Config::C2, Config::C3];
    /// The in-run peers a ratio is taken against.
    pub const PEERS: [Config; 2] = [Config::C2, Config::C3];

    pub fn id(self) -> &'static str {
        match self {
            Config::C0 => "C0",
            Config::C1 => "C1",
            Config::C1p => "C1p",
            Config::C2 => "C2",
            Config::C3 => "C3",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Config::C0 => "direct (no proxy)",
            Config::C1 => "Weft pair, mTLS",
            Config::C1p => "Weft pair, plaintext",
            Config::C2 => "nginx pair, mTLS",
            Config::C3 => "HAProxy pair, mTLS",
        }
    }

    /// `C0`.. `C3`, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.id().eq_ignore_ascii_case(s.trim()))
    }
}

/// The workloads of §7.3 measured in rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Workload {
    W1,
    W2,
    W5,
}

impl Workload {
    pub fn id(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W5 => "W5",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Workload::W1 => "W1: HTTP/1.1 keep-alive GET 1 KiB, open loop (Layout L)",
            Workload::W2 => "W2: maximum throughput, closed loop 64 connections (Layout S)",
            Workload::W5 => {
                "W5: connection churn, a new client connection per request, open loop (Layout L)"
            }
        }
    }

    /// The metrics whose ratios the report states for this workload.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::W1 => &[
                Metric::AddedP50,
                Metric::AddedP99,
                Metric::AddedP999,
                Metric::Cpu10k,
            ],
            Workload::W2 => &[Metric::Rps, Metric::RpsPerCore],
            Workload::W5 => &[Metric::AddedP50, Metric::AddedP99, Metric::ConnsPerCore],
        }
    }

    /// Whether rounds are discarded by C0's p50 (latency workloads only: W2's closed loop
    /// p50 is a queueing figure, not a noise indicator).
    fn discards_by_c0(self) -> bool {
        matches!(self, Workload::W1 | Workload::W5)
    }
}

/// What one load run measured, from the load generator's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub offered_rps: Option<f64>,
    pub achieved_rps: f64,
    pub measured_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub connections: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One configuration, one case of a workload, one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub workload: Workload,
    /// The load point, e.g. "1000 rps x 16 conns"; samples pair up within a case.
    pub case: String,
    pub config: Config,
    /// 1-based.
    pub round: usize,
    pub load: Measured,
    /// CPU seconds of the system under test (both proxies' process trees; not the app, not
    /// the load generator) between just before and just after the measured run.
    pub sut_cpu_s: f64,
}

/// A ratio or value metric of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// p50 minus C0's p50 in the same case and round.
    AddedP50,
    AddedP99,
    AddedP999,
    /// SUT CPU seconds per 10,000 completed requests.
    Cpu10k,
    /// Completed requests per second.
    Rps,
    /// Completed rps per SUT core busy (CPU seconds / measured seconds).
    RpsPerCore,
    /// New connections per SUT CPU second (handshakes per second per core).
    ConnsPerCore,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::AddedP50 => "added p50",
            Metric::AddedP99 => "added p99",
            Metric::AddedP999 => "added p99.9",
            Metric::Cpu10k => "CPU per 10k req",
            Metric::Rps => "rps",
            Metric::RpsPerCore => "rps per SUT core",
            Metric::ConnsPerCore => "handshakes/s per core",
        }
    }

    /// Lower is better for latency and CPU; the best peer is then the lower one.
    pub fn lower_is_better(self) -> bool {
        matches!(
            self,
            Metric::AddedP50 | Metric::AddedP99 | Metric::AddedP999 | Metric::Cpu10k
        )
    }

    /// The metric of `s`; `c0` is C0's sample of the same case and round (added latency).
    pub fn value(self, s: &Sample, c0: Option<&Sample>) -> Option<f64> {
        let l = &s.load;
        let finite = |v: f64| v.is_finite().then_some(v);
        match self {
            Metric::AddedP50 => c0.map(|c| l.p50_us - c.load.p50_us),
            Metric::AddedP99 => c0.map(|c| l.p99_us - c.load.p99_us),
            Metric::AddedP999 => c0.map(|c| l.p999_us - c.load.p999_us),
            Metric::Cpu10k => (l.ok > 0).then(|| s.sut_cpu_s / l.ok as f64 * 10_000.0),
            Metric::Rps => Some(l.achieved_rps),
            Metric::RpsPerCore => {
                (s.sut_cpu_s > 0.0).then(|| l.achieved_rps * l.measured_s / s.sut_cpu_s)
            }
            Metric::ConnsPerCore => (s.sut_cpu_s > 0.0).then(|| l.connections as f64 / s.sut_cpu_s),
        }
        .and_then(finite)
    }
}

/// What a ratio is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// The better of C2 and C3 in the same round.
    BestPeer,
    One(Config),
}

/// Memory of one configuration's proxies (both sides; empty for C0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub config: Option<Config>,
    /// Right after start, before any load.
    pub idle_client: Mem,
    pub idle_server: Mem,
    /// After the last W1 5k run (VmHWM is the peak of the process life).
    pub loaded_client: Option<Mem>,
    pub loaded_server: Option<Mem>,
}

impl Memory {
    /// The pair's idle memory: PSS summed over the trees (RSS for a single process but not
    /// charging nginx's master and worker twice for shared pages).
    pub fn idle_pss(&self) -> u64 {
        self.idle_client.pss_kib + self.idle_server.pss_kib
    }

    pub fn idle_rss(&self) -> u64 {
        self.idle_client.rss_kib + self.idle_server.rss_kib
    }

    /// The pair's peak RSS (VmHWM summed over the trees), once loaded.
    pub fn peak(&self) -> Option<u64> {
        Some(self.loaded_client?.hwm_kib + self.loaded_server?.hwm_kib)
    }
}

/// A round-trip figure of the calibration block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// §5.1's calibration block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub host: Host,
    /// Loopback TCP ping-pong inside `srv` (to the app's TCP echo).
    pub rtt_loopback: Option<Rtt>,
    /// Across the veth, `cli` to `srv`.
    pub rtt_veth: Option<Rtt>,
    /// Closed-loop rps against the app directly: (connections, rps).
    pub hello_rps: Vec<(u32, f64)>,
    /// Seen before each round: (round, 1-min load average, CPUs busy over the last second in
    /// cores, steal fraction).
    pub per_round: Vec<(usize, f64, f64, f64)>,
}

/// Everything a report is made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// "smoke" or "full".
    pub mode: String,
    /// UTC, RFC 3339.
    pub date: String,
    pub commit: Option<String>,
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub configs: Vec<Config>,
    pub samples: Vec<Sample>,
    pub memory: Vec<Memory>,
    pub calibration: Calibration,
    /// The TLS settings used, one line each.
    pub tls: Vec<String>,
    /// Free-form notes (skipped configurations with reasons, verification results...).
    pub notes: Vec<String>,
    /// Rounds started before the machine was quiet (bounded wait ran out).
    pub noisy_rounds: Vec<usize>,
    /// What failed: request errors, broken configurations. Non-empty = the run fails.
    pub failures: Vec<String>,
    /// `scale::markdown` (W7 config size, W8), if it ran.
    pub scale_markdown: Option<String>,
    /// `scale::summary_lines`.
    pub scale_summary: Vec<String>,
}

// === decisions ===

/// The cases of `workload` in the order first seen.
pub fn cases(samples: &[Sample], workload: Workload) -> Vec<String> {
    let mut seen = Vec::new();
    for s in samples.iter().filter(|s| s.workload == workload) {
        if !seen.contains(&s.case) {
            seen.push(s.case.clone());
        }
    }
    seen
}

fn find<'a>(
    samples: &'a [Sample],
    workload: Workload,
    case: &str,
    config: Config,
    round: usize,
) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.workload == workload && s.case == case && s.config == config && s.round == round
    })
}

fn rounds_of(samples: &[Sample], workload: Workload, case: &str) -> Vec<usize> {
    samples
        .iter()
        .filter(|s| s.workload == workload && s.case == case)
        .map(|s| s.round)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Rounds of a case discarded because C0's p50 deviates more than 20 % from the median C0
/// p50 of that case (§7.5 step 3). Only for the latency workloads.
pub fn discarded_rounds(samples: &[Sample], workload: Workload, case: &str) -> Vec<usize> {
    if !workload.discards_by_c0() {
        return Vec::new();
    }
    let c0: Vec<(usize, f64)> = rounds_of(samples, workload, case)
        .into_iter()
        .filter_map(|r| find(samples, workload, case, Config::C0, r).map(|s| (r, s.load.p50_us)))
        .collect();
    let values: Vec<f64> = c0.iter().map(|(_, v)| *v).collect();
    stats::outliers_by_median(&values, 0.2)
        .into_iter()
        .filter_map(|i| c0.get(i).map(|(r, _)| *r))
        .collect()
}

/// The value of `metric` for `config` in one round (None when missing or undefined).
pub fn value_in_round(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    config: Config,
    round: usize,
    metric: Metric,
) -> Option<f64> {
    let s = find(samples, workload, case, config, round)?;
    let c0 = find(samples, workload, case, Config::C0, round);
    metric.value(s, c0)
}

/// The best peer's value in a round: the lower of C2 and C3 when lower is better, else the
/// higher; with the peer it came from.
pub fn best_peer(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    round: usize,
    metric: Metric,
) -> Option<(Config, f64)> {
    let values = Config::PEERS
        .into_iter()
        .filter_map(|p| value_in_round(samples, workload, case, p, round, metric).map(|v| (p, v)));
    if metric.lower_is_better() {
        values.min_by(|a, b| a.1.total_cmp(&b.1))
    } else {
        values.max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Within-round ratios of `config` to `against` for `metric`, over the rounds kept. A round
/// whose denominator is not positive (a peer adding no measurable latency) gives no ratio.
pub fn ratios(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    config: Config,
    against: Against,
    metric: Metric,
) -> Vec<f64> {
    let discarded = discarded_rounds(samples, workload, case);
    rounds_of(samples, workload, case)
        .into_iter()
        .filter(|r| !discarded.contains(r))
        .filter_map(|r| {
            let num = value_in_round(samples, workload, case, config, r, metric)?;
            let den = match against {
                Against::BestPeer => best_peer(samples, workload, case, r, metric)?.1,
                Against::One(c) => value_in_round(samples, workload, case, c, r, metric)?,
            };
            (den > 0.0).then(|| num / den).filter(|v| v.is_finite())
        })
        .collect()
}

/// A stable seed per label, so the same numbers give the same interval.
fn seed(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Median and 95 % CI of the within-round ratios.
pub fn ratio_estimate(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    config: Config,
    against: Against,
    metric: Metric,
) -> Option<Estimate> {
    let xs = ratios(samples, workload, case, config, against, metric);
    let label = format!(
        "{}{case}{}{:?}{:?}",
        workload.id(),
        config.id(),
        against,
        metric
    );
    stats::bootstrap_median(&xs, seed(&label))
}

/// The median over the kept rounds of `metric` for `config` (absolute tables).
pub fn median_value(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    config: Config,
    metric: Metric,
) -> Option<f64> {
    let discarded = discarded_rounds(samples, workload, case);
    let xs: Vec<f64> = rounds_of(samples, workload, case)
        .into_iter()
        .filter(|r| !discarded.contains(r))
        .filter_map(|r| value_in_round(samples, workload, case, config, r, metric))
        .collect();
    stats::median(&xs)
}

/// The median over kept rounds of a raw figure of the load report.
fn median_load(
    samples: &[Sample],
    workload: Workload,
    case: &str,
    config: Config,
    f: impl Fn(&Sample) -> f64,
) -> Option<f64> {
    let discarded = discarded_rounds(samples, workload, case);
    let xs: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.workload == workload
                && s.case == case
                && s.config == config
                && !discarded.contains(&s.round)
        })
        .map(f)
        .collect();
    stats::median(&xs)
}

fn errors_of(samples: &[Sample], workload: Workload, case: &str, config: Config) -> u64 {
    samples
        .iter()
        .filter(|s| s.workload == workload && s.case == case && s.config == config)
        .map(|s| s.load.errors)
        .sum()
}

/// Which memory ratio: idle PSS or peak RSS.
fn memory_ratio(run: &Run, config: Config, peak: bool) -> Option<f64> {
    let get = |c: Config| {
        run.memory
            .iter()
            .find(|m| m.config == Some(c))
            .and_then(|m| if peak { m.peak() } else { Some(m.idle_pss()) })
    };
    let ours = get(config)? as f64;
    let best = Config::PEERS.into_iter().filter_map(get).min()? as f64;
    (best > 0.0).then(|| ours / best)
}

// === rendering ===

fn est(e: Option<Estimate>) -> String {
    match e {
        Some(e) => format!("{:.2} [{:.2}, {:.2}] n={}", e.median, e.lo, e.hi, e.n),
        None => "–".to_string(),
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "–".to_string(),
    }
}

fn us(v: Option<f64>) -> String {
    num(v, 0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn has(run: &Run, c: Config) -> bool {
    run.configs.contains(&c)
}

/// The ratio columns present in this run: (header, config, against).
fn ratio_columns(run: &Run) -> Vec<(String, Config, Against)> {
    let mut cols = Vec::new();
    let peers = has(run, Config::C2) || has(run, Config::C3);
    if !peers {
        return cols;
    }
    for c in [Config::C1, Config::C1p] {
        if has(run, c) {
            cols.push((format!("{} / best peer", c.id()), c, Against::BestPeer));
        }
    }
    if has(run, Config::C1) {
        for p in Config::PEERS {
            if has(run, p) {
                cols.push((format!("C1 / {}", p.id()), Config::C1, Against::One(p)));
            }
        }
    }
    cols
}

fn ratio_section(run: &Run, out: &mut String) {
    let _ = writeln!(out, "## Ratios to the best peer\n");
    let _ = writeln!(
        out,
        "Each ratio is taken within a round (same minute, same noise), then the median over \
         rounds with its 95 % percentile-bootstrap interval `[lo, hi]` and the number of rounds \
         `n`. Best peer = the better of C2 (nginx) and C3 (HAProxy) in that round. Below 1 is \
         better for latency and CPU, above 1 for throughput. Added latency = pX(C) - pX(C0) at \
         the same offered load. A negative ratio means C1's percentile fell below C0's in \
         that round (noise larger than the effect); a round where the best peer added nothing \
         measurable gives no ratio (`n` counts the rounds that did).\n"
    );
    let cols = ratio_columns(run);
    if cols.is_empty() {
        let _ = writeln!(out, "_No peer configuration ran: no ratios._\n");
        return;
    }
    for w in [Workload::W1, Workload::W2, Workload::W5] {
        let cases = cases(&run.samples, w);
        if cases.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {}\n", w.title());
        let mut header = "| Case | Metric |".to_string();
        let mut rule = "|---|---|".to_string();
        for (h, _, _) in &cols {
            let _ = write!(header, " {h} |");
            rule.push_str("---|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for case in &cases {
            for &m in w.metrics() {
                let mut row = format!("| {case} | {} |", m.label());
                for (_, c, a) in &cols {
                    let e = ratio_estimate(&run.samples, w, case, *c, *a, m);
                    let _ = write!(row, " {} |", est(e));
                }
                let _ = writeln!(out, "{row}");
            }
        }
        out.push('\n');
    }
    if run.memory.iter().any(|m| m.config.is_some()) {
        let _ = writeln!(
            out,
            "### W7: memory (one measurement per run, no interval)\n"
        );
        // C1p runs on C1's processes, so one column covers both.
        let _ = writeln!(out, "| Metric | C1 (= C1p) / best peer |\n|---|---|");
        for (label, peak) in [("idle PSS of the pair", false), ("peak RSS after W1", true)] {
            let _ = writeln!(
                out,
                "| {label} | {} |",
                num(memory_ratio(run, Config::C1, peak), 2),
            );
        }
        out.push('\n');
    }
}

fn absolute_section(run: &Run, out: &mut String) {
    let _ = writeln!(out, "## Absolute figures\n");
    let _ = writeln!(
        out,
        "Medians over the kept rounds. Latencies in µs, CO-corrected (from the intended send \
         time) for open-loop runs. CPU = both proxies' process trees (not the app, not the load \
         generator), read just before and just after each measured run (the warm-up is a \
         separate, discarded run before it).\n"
    );
    for w in [Workload::W1, Workload::W2, Workload::W5] {
        for case in cases(&run.samples, w) {
            let _ = writeln!(out, "### {} — {case}\n", w.id());
            match w {
                Workload::W1 | Workload::W5 => {
                    let extra = if w == Workload::W1 {
                        "CPU s / 10k req"
                    } else {
                        "CPU s / 1k conns | handshakes/s per core"
                    };
                    let _ = writeln!(
                        out,
                        "| Config | p50 | p90 | p99 | p99.9 | added p50 | added p99 | added p99.9 \
                         | achieved rps | errors | {extra} |"
                    );
                    let cols = if w == Workload::W1 { 11 } else { 12 };
                    let _ = writeln!(out, "|{}", "---|".repeat(cols));
                }
                Workload::W2 => {
                    let _ = writeln!(
                        out,
                        "| Config | rps | SUT cores busy | rps per SUT core | p50 | p99 | errors |\n\
                         |---|---|---|---|---|---|---|"
                    );
                }
            }
            for &c in &run.configs {
                let samples = &run.samples;
                if !samples
                    .iter()
                    .any(|s| s.workload == w && s.case == case && s.config == c)
                {
                    continue;
                }
                let ml = |f: fn(&Sample) -> f64| median_load(samples, w, &case, c, f);
                let mv = |m: Metric| median_value(samples, w, &case, c, m);
                let errors = errors_of(samples, w, &case, c);
                let name = format!("{} {}", c.id(), c.describe());
                match w {
                    Workload::W1 | Workload::W5 => {
                        let added = |m: Metric| {
                            if c == Config::C0 {
                                "–".to_string()
                            } else {
                                us(mv(m))
                            }
                        };
                        let tail = if w == Workload::W1 {
                            num(mv(Metric::Cpu10k), 3)
                        } else {
                            let per_1k = mv(Metric::ConnsPerCore)
                                .filter(|v| *v > 0.0)
                                .map(|v| 1000.0 / v);
                            format!("{} | {}", num(per_1k, 3), num(mv(Metric::ConnsPerCore), 0))
                        };
                        let tail = if c == Config::C0 {
                            let dash = if w == Workload::W1 {
                                "–"
                            } else {
                                "– | –"
                            };
                            dash.to_string()
                        } else {
                            tail
                        };
                        let _ = writeln!(
                            out,
                            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} | {tail} |",
                            us(ml(|s| s.load.p50_us)),
                            us(ml(|s| s.load.p90_us)),
                            us(ml(|s| s.load.p99_us)),
                            us(ml(|s| s.load.p999_us)),
                            added(Metric::AddedP50),
                            added(Metric::AddedP99),
                            added(Metric::AddedP999),
                            num(ml(|s| s.load.achieved_rps), 0),
                        );
                    }
                    Workload::W2 => {
                        let cores = ml(|s| {
                            if s.load.measured_s > 0.0 {
                                s.sut_cpu_s / s.load.measured_s
                            } else {
                                f64::NAN
                            }
                        });
                        let (cores, per_core) = if c == Config::C0 {
                            ("–".to_string(), "–".to_string())
                        } else {
                            (num(cores, 2), num(mv(Metric::RpsPerCore), 0))
                        };
                        let _ = writeln!(
                            out,
                            "| {name} | {} | {cores} | {per_core} | {} | {} | {errors} |",
                            num(ml(|s| s.load.achieved_rps), 0),
                            us(ml(|s| s.load.p50_us)),
                            us(ml(|s| s.load.p99_us)),
                        );
                    }
                }
            }
            out.push('\n');
        }
    }
    if !run.memory.is_empty() {
        let _ = writeln!(
            out,
            "### W7 — memory of each pair (MiB; client + server side)\n\n\
             | Config | idle RSS | idle PSS | client RSS idle | server RSS idle | peak RSS (VmHWM) after the first W1 5k run |\n\
             |---|---|---|---|---|---|"
        );
        for m in &run.memory {
            let Some(c) = m.config else { continue };
            let _ = writeln!(
                out,
                "| {} {} | {} | {} | {} | {} | {} |",
                c.id(),
                c.describe(),
                mib(m.idle_rss()),
                mib(m.idle_pss()),
                mib(m.idle_client.rss_kib),
                mib(m.idle_server.rss_kib),
                m.peak().map(mib).unwrap_or_else(|| "–".into()),
            );
        }
        let _ = writeln!(
            out,
            "\nVmHWM is summed per process: for nginx (master + worker) it counts shared pages \
             twice, so compare peaks with that in mind; idle PSS does not.\n"
        );
    }
}

fn calibration_section(run: &Run, out: &mut String) {
    let c = &run.calibration;
    let h = &c.host;
    let _ = writeln!(out, "## Calibration\n");
    let _ = writeln!(out, "| Item | Value |\n|---|---|");
    let _ = writeln!(out, "| CPU model | {} |", h.cpu_model);
    let _ = writeln!(out, "| Kernel | {} |", h.kernel);
    let _ = writeln!(out, "| nproc | {} |", h.nproc);
    let _ = writeln!(
        out,
        "| Load average (1/5/15 min) at start | {:.2} / {:.2} / {:.2} |",
        h.loadavg[0], h.loadavg[1], h.loadavg[2]
    );
    let _ = writeln!(out, "| Steal at start | {:.1} % |", h.steal * 100.0);
    for (label, r) in [
        ("Loopback RTT in srv (64 B TCP ping-pong)", c.rtt_loopback),
        ("RTT across the veth, cli -> srv", c.rtt_veth),
    ] {
        let v = r
            .map(|r| format!("p50 {:.1} µs, p99 {:.1} µs", r.p50_us, r.p99_us))
            .unwrap_or_else(|| "not measured".into());
        let _ = writeln!(out, "| {label} | {v} |");
    }
    for (conns, rps) in &c.hello_rps {
        let _ = writeln!(
            out,
            "| Hello-world rps, app direct, closed loop, {conns} conn(s) | {rps:.0} |"
        );
    }
    for (label, v) in [
        ("OpenSSL", &h.openssl),
        ("nginx", &h.nginx),
        ("HAProxy", &h.haproxy),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} |",
            v.clone().unwrap_or_else(|| "not found".into())
        );
    }
    if !c.per_round.is_empty() {
        let rounds: Vec<String> = c
            .per_round
            .iter()
            .map(|(r, l, b, s)| format!("r{r}: {l:.2} / {b:.2} / {:.1} %", s * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "| Before each round: load average / cores busy (1 s) / steal | {} |",
            rounds.join("; ")
        );
    }
    out.push('\n');
}

fn ms(us: Option<f64>) -> String {
    us.map(|v| format!("{:.3} ms", v / 1000.0))
        .unwrap_or_else(|| "–".into())
}

/// The first case of a workload whose name contains `needle` (else the first case).
fn case_like(samples: &[Sample], w: Workload, needle: &str) -> Option<String> {
    let all = cases(samples, w);
    all.iter()
        .find(|c| c.contains(needle))
        .or_else(|| all.first())
        .cloned()
}

fn goals_section(run: &Run, out: &mut String) {
    let s = &run.samples;
    let _ = writeln!(
        out,
        "## Goals (PERFORMANCE.md §8.1): measured against target, no gates\n"
    );
    let r = |w, case: &str, against, m| est(ratio_estimate(s, w, case, Config::C1, against, m));
    let mut lines = Vec::new();
    if let Some(case) = case_like(s, Workload::W1, "1000 rps") {
        let w = Workload::W1;
        lines.push(format!(
            "- **G1** added latency at {case}: C1 adds p50 {} / p99 {}; ratio to the best peer \
             p50 {} / p99 {}. Target: <= 0.8x in-run; <= 0.10 ms p50 / 0.20 ms p99 on quiet \
             hardware.",
            ms(median_value(s, w, &case, Config::C1, Metric::AddedP50)),
            ms(median_value(s, w, &case, Config::C1, Metric::AddedP99)),
            r(w, &case, Against::BestPeer, Metric::AddedP50),
            r(w, &case, Against::BestPeer, Metric::AddedP99),
        ));
        let vcpu = median_load(s, w, &case, Config::C1, |x| {
            if x.load.measured_s > 0.0 && x.load.achieved_rps > 0.0 {
                // vCPU per 1000 rps per sidecar: the pair's busy cores / (rps / 1000) / 2.
                x.sut_cpu_s / x.load.measured_s / (x.load.achieved_rps / 1000.0) / 2.0
            } else {
                f64::NAN
            }
        });
        lines.push(format!(
            "- **G2** CPU per 10k requests at {case}: C1 / nginx {}, C1 / HAProxy {}; {} vCPU \
             per 1000 rps per sidecar. Target: <= 0.8x nginx, <= 1.0x HAProxy; <= 0.04 vCPU \
             per 1000 rps per sidecar.",
            r(w, &case, Against::One(Config::C2), Metric::Cpu10k),
            r(w, &case, Against::One(Config::C3), Metric::Cpu10k),
            num(vcpu, 3),
        ));
    }
    if let Some(case) = case_like(s, Workload::W2, "") {
        let w = Workload::W2;
        lines.push(format!(
            "- **G3** rps per SUT core ({case}): C1 {} rps/core; C1 / nginx {}, C1 / HAProxy {}. \
             Target: >= 1.25x nginx, >= 1.0x HAProxy.",
            num(median_value(s, w, &case, Config::C1, Metric::RpsPerCore), 0),
            r(w, &case, Against::One(Config::C2), Metric::RpsPerCore),
            r(w, &case, Against::One(Config::C3), Metric::RpsPerCore),
        ));
    }
    if let Some(m) = run.memory.iter().find(|m| m.config == Some(Config::C1)) {
        let per_sidecar_idle = m.idle_client.rss_kib.max(m.idle_server.rss_kib);
        let per_sidecar_peak = m
            .loaded_client
            .zip(m.loaded_server)
            .map(|(c, s)| c.hwm_kib.max(s.hwm_kib));
        lines.push(format!(
            "- **G4** memory: largest sidecar idle RSS {} MiB (3 services here), peak {} MiB \
             after W1; pair / best peer idle PSS {}, peak {}. Target: idle <= 6 MB with 100 \
             services, peak <= 12 MB, <= 1.0x best peer (config slope: see W7 below).",
            mib(per_sidecar_idle),
            per_sidecar_peak.map(mib).unwrap_or_else(|| "–".into()),
            num(memory_ratio(run, Config::C1, false), 2),
            num(memory_ratio(run, Config::C1, true), 2),
        ));
    }
    let w5b = cases(s, Workload::W5)
        .into_iter()
        .filter(|c| c.contains("pooling off"))
        .collect::<Vec<_>>();
    if let Some(first) = w5b.first() {
        let w = Workload::W5;
        let highest = w5b.last().unwrap_or(first);
        lines.push(format!(
            "- **G5** handshakes per core ({first}): C1 / nginx {}, C1 / HAProxy {}; added p99 \
             of a new-connection request at {highest}: {}. Target: >= 1.5x both; <= 1 ms at \
             500 new conns/s on quiet hardware.",
            r(w, first, Against::One(Config::C2), Metric::ConnsPerCore),
            r(w, first, Against::One(Config::C3), Metric::ConnsPerCore),
            ms(median_value(s, w, highest, Config::C1, Metric::AddedP99)),
        ));
    }
    if let Some(case) = case_like(s, Workload::W1, "5000 rps") {
        lines.push(format!(
            "- **G7** tail under load at {case}: C1 added p99.9 {}, ratio to the best peer {}. \
             Target: <= 1.0x.",
            ms(median_value(
                s,
                Workload::W1,
                &case,
                Config::C1,
                Metric::AddedP999
            )),
            r(Workload::W1, &case, Against::BestPeer, Metric::AddedP999),
        ));
    }
    if lines.is_empty() {
        lines.push("- (no workload of §8.1 ran)".into());
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    out.push('\n');
}

fn notes_section(run: &Run, out: &mut String) {
    let _ = writeln!(out, "## Notes\n");
    let mut notes: Vec<String> = Vec::new();
    for w in [Workload::W1, Workload::W2, Workload::W5] {
        for case in cases(&run.samples, w) {
            let d = discarded_rounds(&run.samples, w, &case);
            if !d.is_empty() {
                notes.push(format!(
                    "{} {case}: discarded round(s) {d:?} (C0 p50 more than 20 % from its median).",
                    w.id()
                ));
            }
        }
    }
    if !run.noisy_rounds.is_empty() {
        notes.push(format!(
            "NOISY: round(s) {:?} started while the machine was busy (neither the load average \
             nor the CPUs' busy time over the last second below 0.5, or steal >= 5 %) when the \
             bounded wait ran out.",
            run.noisy_rounds
        ));
    }
    for f in &run.failures {
        notes.push(format!("FAILED: {f}"));
    }
    notes.extend(run.notes.iter().cloned());
    if notes.is_empty() {
        notes.push("Nothing to note.".into());
    }
    for n in notes {
        // A log tail inside a note would end the Markdown list item.
        let _ = writeln!(out, "- {}", one_line(&n));
    }
    out.push('\n');
}

/// The whole report.
pub fn markdown(run: &Run) -> String {
    let mut out = String::new();
    let status = if !run.failures.is_empty() {
        "FAILED (see Notes)"
    } else if !run.noisy_rounds.is_empty() {
        "completed, NOISY"
    } else {
        "completed"
    };
    let _ = writeln!(out, "# Weft benchmark report ({})\n", run.mode);
    let _ = writeln!(out, "- Date: {}", run.date);
    let _ = writeln!(out, "- Mode: {}", run.mode);
    let _ = writeln!(
        out,
        "- Commit: {}",
        run.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(out, "- Status: {status}");
    let _ = writeln!(
        out,
        "- Rounds: {}; measured {} s per run after a {} s warm-up run",
        run.rounds, run.duration_s, run.warmup_s
    );
    let configs: Vec<String> = run
        .configs
        .iter()
        .map(|c| format!("{} ({})", c.id(), c.describe()))
        .collect();
    let _ = writeln!(out, "- Configurations: {}", configs.join(", "));
    let _ = writeln!(
        out,
        "- Host: {}, {} CPUs, kernel {}\n",
        run.calibration.host.cpu_model, run.calibration.host.nproc, run.calibration.host.kernel
    );
    let _ = writeln!(out, "## Summary\n");
    for l in summary_lines(run) {
        let _ = writeln!(out, "- {l}");
    }
    out.push('\n');
    ratio_section(run, &mut out);
    absolute_section(run, &mut out);
    if let Some(scale) = &run.scale_markdown {
        out.push_str(scale.trim_end());
        out.push_str("\n\n");
    }
    let _ = writeln!(out, "## TLS settings\n");
    for t in &run.tls {
        let _ = writeln!(out, "- {t}");
    }
    out.push('\n');
    calibration_section(run, &mut out);
    notes_section(run, &mut out);
    goals_section(run, &mut out);
    out
}

/// One line per workload for stdout (and the report's summary).
pub fn summary_lines(run: &Run) -> Vec<String> {
    let s = &run.samples;
    let mut lines = Vec::new();
    for w in [Workload::W1, Workload::W2, Workload::W5] {
        let cases = cases(s, w);
        if cases.is_empty() {
            continue;
        }
        let parts: Vec<String> = cases
            .iter()
            .map(|case| {
                let errors: u64 = run.configs.iter().map(|&c| errors_of(s, w, case, c)).sum();
                let figures: Vec<String> = w
                    .metrics()
                    .iter()
                    .map(|&m| {
                        let ratio = ratio_estimate(s, w, case, Config::C1, Against::BestPeer, m)
                            .map(|e| format!("{:.2}", e.median))
                            .unwrap_or_else(|| "–".into());
                        let c1 = median_value(s, w, case, Config::C1, m);
                        let c1 = match m {
                            Metric::Cpu10k => num(c1, 3),
                            Metric::AddedP50 | Metric::AddedP99 | Metric::AddedP999 => {
                                format!("{}us", us(c1))
                            }
                            _ => num(c1, 0),
                        };
                        format!("{} {c1} (x{ratio})", m.label())
                    })
                    .collect();
                format!("{case}: C1 {}; errors {errors}", figures.join(", "))
            })
            .collect();
        lines.push(format!("{} {}", w.id(), parts.join(" | ")));
    }
    if !run.memory.is_empty() {
        let parts: Vec<String> = run
            .memory
            .iter()
            .filter_map(|m| {
                let c = m.config?;
                Some(format!(
                    "{} idle PSS {} MiB peak {} MiB",
                    c.id(),
                    mib(m.idle_pss()),
                    m.peak().map(mib).unwrap_or_else(|| "–".into())
                ))
            })
            .collect();
        lines.push(format!(
            "W7 pair memory: {} (C1 / best peer idle x{})",
            parts.join("; "),
            num(memory_ratio(run, Config::C1, false), 2)
        ));
    }
    lines.extend(run.scale_summary.iter().cloned());
    if !run.failures.is_empty() {
        // First lines only: stdout gets one line; the report's notes have the rest.
        let short: Vec<&str> = run
            .failures
            .iter()
            .map(|f| f.lines().next().unwrap_or(""))
            .collect();
        lines.push(format!("FAILED: {}", short.join("; ")));
    }
    lines
}

/// `text` on one line: line breaks become ` / `, blank lines dropped.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Rotates `configs` by `round - 1` places: C0 C1 C2 C3, then C1 C2 C3 C0, ... (§7.5 step 3).
pub fn rotation(configs: &[Config], round: usize) -> Vec<Config> {
    if configs.is_empty() {
        return Vec::new();
    }
    let k = round.saturating_sub(1) % configs.len();
    let mut v = configs.to_vec();
    v.rotate_left(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpu_model: "Test CPU @ 2.50GHz".into(),
            kernel: "6.18.0".into(),
            nproc: 2,
            loadavg: [0.1, 0.2, 0.3],
            steal: 0.01,
            openssl: Some("OpenSSL 3.0.19".into()),
            nginx: Some("nginx/1.22.1".into()),
            haproxy: None,
        }
    }

    fn sample(w: Workload, case: &str, config: Config, round: usize, p50: f64) -> Sample {
        Sample {
            workload: w,
            case: case.into(),
            config,
            round,
            load: Measured {
                offered_rps: Some(1000.0),
                achieved_rps: 1000.0,
                measured_s: 10.0,
                requests: 10_000,
                ok: 10_000,
                errors: 0,
                error_samples: vec![],
                connections: 16,
                p50_us: p50,
                p90_us: p50 * 1.5,
                p99_us: p50 * 3.0,
                p999_us: p50 * 5.0,
                max_us: p50 * 10.0,
            },
            sut_cpu_s: 1.0,
        }
    }

    const CASE: &str = "1000 rps x 16 conns";

    /// Three rounds: C0 at 100 µs, C1 adds 40, C2 adds 50, C3 adds 80 (C2 is best).
    fn three_rounds() -> Vec<Sample> {
        let mut v = Vec::new();
        for r in 1..=3 {
            v.push(sample(Workload::W1, CASE, Config::C0, r, 100.0));
            v.push(sample(Workload::W1, CASE, Config::C1, r, 140.0));
            v.push(sample(Workload::W1, CASE, Config::C2, r, 150.0));
            v.push(sample(Workload::W1, CASE, Config::C3, r, 180.0));
        }
        v
    }

    fn run(samples: Vec<Sample>) -> Run {
        Run {
            mode: "smoke".into(),
            date: "2026-11-30T02:00:00Z".into(),
            commit: Some("abc1234".into()),
            rounds: 3,
            duration_s: 4.0,
            warmup_s: 1.0,
            configs: vec![Config::C0, Config::C1, Config::C2, Config::C3],
            samples,
            memory: vec![
                Memory {
                    config: Some(Config::C1),
                    idle_client: Mem {
                        rss_kib: 4096,
                        pss_kib: 4000,
                        hwm_kib: 4096,
                    },
                    idle_server: Mem {
                        rss_kib: 4096,
                        pss_kib: 4000,
                        hwm_kib: 4096,
                    },
                    loaded_client: Some(Mem {
                        rss_kib: 5000,
                        pss_kib: 5000,
                        hwm_kib: 6000,
                    }),
                    loaded_server: Some(Mem {
                        rss_kib: 5000,
                        pss_kib: 5000,
                        hwm_kib: 6000,
                    }),
                },
                Memory {
                    config: Some(Config::C2),
                    idle_client: Mem {
                        rss_kib: 8192,
                        pss_kib: 5000,
                        hwm_kib: 8192,
                    },
                    idle_server: Mem {
                        rss_kib: 8192,
                        pss_kib: 5000,
                        hwm_kib: 8192,
                    },
                    loaded_client: None,
                    loaded_server: None,
                },
            ],
            calibration: Calibration {
                host: host(),
                rtt_loopback: Some(Rtt {
                    p50_us: 22.5,
                    p99_us: 700.0,
                }),
                rtt_veth: Some(Rtt {
                    p50_us: 30.0,
                    p99_us: 900.0,
                }),
                hello_rps: vec![(1, 12_000.0), (32, 28_000.0)],
                per_round: vec![(1, 0.2, 0.1, 0.0)],
            },
            tls: vec!["TLS 1.3 only, TLS_AES_256_GCM_SHA384, X25519".into()],
            notes: vec!["C1p verified plaintext".into()],
            noisy_rounds: vec![],
            failures: vec![],
            scale_markdown: Some("## W8 control plane\n\nscale table".into()),
            scale_summary: vec!["W8 propagation ...".into()],
        }
    }

    #[test]
    fn added_latency_is_the_difference_to_c0_in_the_same_round() {
        let s = three_rounds();
        let v = value_in_round(&s, Workload::W1, CASE, Config::C1, 2, Metric::AddedP50);
        assert_eq!(v, Some(40.0));
        let v = value_in_round(&s, Workload::W1, CASE, Config::C3, 2, Metric::AddedP99);
        assert_eq!(v, Some(240.0));
        // No C0 in the round: no added latency.
        let only_c1 = vec![sample(Workload::W1, CASE, Config::C1, 1, 140.0)];
        assert_eq!(
            value_in_round(
                &only_c1,
                Workload::W1,
                CASE,
                Config::C1,
                1,
                Metric::AddedP50
            ),
            None
        );
    }

    #[test]
    fn the_best_peer_is_the_lower_for_latency_and_the_higher_for_throughput() {
        let mut s = three_rounds();
        assert_eq!(
            best_peer(&s, Workload::W1, CASE, 1, Metric::AddedP50),
            Some((Config::C2, 50.0))
        );
        let r = ratios(
            &s,
            Workload::W1,
            CASE,
            Config::C1,
            Against::BestPeer,
            Metric::AddedP50,
        );
        assert_eq!(r, vec![0.8, 0.8, 0.8]);
        let r = ratios(
            &s,
            Workload::W1,
            CASE,
            Config::C1,
            Against::One(Config::C3),
            Metric::AddedP50,
        );
        assert_eq!(r, vec![0.5, 0.5, 0.5]);
        // Throughput: HAProxy does more rps per core -> it is the best peer.
        for x in s.iter_mut() {
            x.workload = Workload::W2;
            x.sut_cpu_s = match x.config {
                Config::C2 => 2.0,
                Config::C3 => 1.0,
                _ => 1.25,
            };
        }
        assert_eq!(
            best_peer(&s, Workload::W2, CASE, 1, Metric::RpsPerCore),
            Some((Config::C3, 10_000.0))
        );
        let e = ratio_estimate(
            &s,
            Workload::W2,
            CASE,
            Config::C1,
            Against::BestPeer,
            Metric::RpsPerCore,
        )
        .unwrap();
        assert!((e.median - 0.8).abs() < 1e-9, "{e:?}");
        assert_eq!(e.n, 3);
    }

    #[test]
    fn a_round_with_an_outlying_c0_p50_is_discarded() {
        let mut s = three_rounds();
        for r in 4..=5 {
            s.push(sample(Workload::W1, CASE, Config::C0, r, 100.0));
            s.push(sample(Workload::W1, CASE, Config::C1, r, 140.0));
            s.push(sample(Workload::W1, CASE, Config::C2, r, 150.0));
            s.push(sample(Workload::W1, CASE, Config::C3, r, 180.0));
        }
        // Round 4: C0's p50 is 50 % off; its ratio would be (200-150)/(250-150) = 0.5.
        for x in s.iter_mut().filter(|x| x.round == 4) {
            x.load.p50_us += 50.0;
        }
        if let Some(x) = s
            .iter_mut()
            .find(|x| x.round == 4 && x.config == Config::C1)
        {
            x.load.p50_us = 250.0;
        }
        assert_eq!(discarded_rounds(&s, Workload::W1, CASE), vec![4]);
        let r = ratios(
            &s,
            Workload::W1,
            CASE,
            Config::C1,
            Against::BestPeer,
            Metric::AddedP50,
        );
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r.iter().all(|v| (*v - 0.8).abs() < 1e-9), "{r:?}");
        // W2 never discards by C0.
        for x in s.iter_mut() {
            x.workload = Workload::W2;
        }
        assert!(discarded_rounds(&s, Workload::W2, CASE).is_empty());
        let md = markdown(&run(three_rounds_plus(4)));
        assert!(md.contains("discarded round(s) [4]"), "{md}");
    }

    fn three_rounds_plus(outlier: usize) -> Vec<Sample> {
        let mut s = three_rounds();
        for c in [Config::C0, Config::C1, Config::C2, Config::C3] {
            let base = match c {
                Config::C0 => 300.0,
                Config::C1 => 340.0,
                Config::C2 => 350.0,
                _ => 380.0,
            };
            s.push(sample(Workload::W1, CASE, c, outlier, base));
        }
        s
    }

    #[test]
    fn a_peer_adding_nothing_gives_no_ratio_for_that_round() {
        let mut s = three_rounds();
        for x in s
            .iter_mut()
            .filter(|x| x.round == 1 && Config::PEERS.contains(&x.config))
        {
            x.load.p50_us = 90.0;
        }
        let r = ratios(
            &s,
            Workload::W1,
            CASE,
            Config::C1,
            Against::BestPeer,
            Metric::AddedP50,
        );
        assert_eq!(r.len(), 2, "{r:?}");
    }

    #[test]
    fn cpu_and_connection_metrics() {
        let s = sample(Workload::W5, "pooling off", Config::C1, 1, 100.0);
        assert_eq!(Metric::Cpu10k.value(&s, None), Some(1.0));
        assert_eq!(Metric::ConnsPerCore.value(&s, None), Some(16.0));
        assert_eq!(Metric::RpsPerCore.value(&s, None), Some(10_000.0));
        let mut idle = s.clone();
        idle.sut_cpu_s = 0.0;
        assert_eq!(Metric::RpsPerCore.value(&idle, None), None);
    }

    #[test]
    fn rotation_shifts_by_one_each_round() {
        let all = [Config::C0, Config::C1, Config::C2, Config::C3];
        assert_eq!(rotation(&all, 1), all.to_vec());
        assert_eq!(
            rotation(&all, 2),
            vec![Config::C1, Config::C2, Config::C3, Config::C0]
        );
        assert_eq!(rotation(&all, 5), all.to_vec());
        assert!(rotation(&[], 3).is_empty());
    }

    #[test]
    fn configs_parse_by_id() {
        assert_eq!(Config::parse("c1p"), Some(Config::C1p));
        assert_eq!(Config::parse(" C3 "), Some(Config::C3));
        assert_eq!(Config::parse("C9"), None);
    }

    #[test]
    fn the_report_has_ratios_absolutes_tls_calibration_goals_and_scale() {
        let r = run(three_rounds());
        let md = markdown(&r);
        for needle in [
            "# Weft benchmark report (smoke)",
            "- Commit: abc1234",
            "## Ratios to the best peer",
            "| C1 / best peer |",
            "| 1000 rps x 16 conns | added p50 | 0.80 [0.80, 0.80] n=3 |",
            "## Absolute figures",
            "### W1 — 1000 rps x 16 conns",
            "| C0 direct (no proxy) | 100 | 150 | 300 | 500 | – | – | – | 1000 | 0 | – |",
            "| C1 Weft pair, mTLS | 140 | 210 | 420 | 700 | 40 | 120 | 200 | 1000 | 0 | 1.000 |",
            "### W7 — memory",
            "## TLS settings",
            "TLS_AES_256_GCM_SHA384",
            "## Calibration",
            "| CPU model | Test CPU @ 2.50GHz |",
            "p50 22.5 µs, p99 700.0 µs",
            "| Hello-world rps, app direct, closed loop, 32 conn(s) | 28000 |",
            "| HAProxy | not found |",
            "## Notes",
            "C1p verified plaintext",
            "## Goals (PERFORMANCE.md §8.1)",
            "**G1**",
            "**G2**",
            "**G4**",
            "## W8 control plane",
            "- Status: completed",
        ] {
            assert!(md.contains(needle), "missing `{needle}` in:\n{md}");
        }
        // Idle PSS: C1 8000 KiB vs nginx 10000 KiB.
        assert!(md.contains("| idle PSS of the pair | 0.80 |"), "{md}");
        assert!(md.contains("| Metric | C1 (= C1p) / best peer |"), "{md}");
        let lines = summary_lines(&r);
        assert!(
            lines[0].starts_with("W1 1000 rps x 16 conns: C1 added p50 40us (x0.80)"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("W7 pair memory")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("W8")), "{lines:?}");
    }

    #[test]
    fn failures_and_noise_are_stated() {
        let mut r = run(three_rounds());
        r.failures
            .push("C3 W1 1000 rps: 2 request errors\nlog tail line".into());
        r.noisy_rounds.push(2);
        let md = markdown(&r);
        assert!(md.contains("- Status: FAILED"), "{md}");
        assert!(
            md.contains("FAILED: C3 W1 1000 rps: 2 request errors"),
            "{md}"
        );
        assert!(md.contains("NOISY: round(s) [2]"), "{md}");
        assert!(
            md.contains("FAILED: C3 W1 1000 rps: 2 request errors / log tail line"),
            "{md}"
        );
        let last = summary_lines(&r).pop().unwrap();
        assert_eq!(last, "FAILED: C3 W1 1000 rps: 2 request errors");
    }
}
