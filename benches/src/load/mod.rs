//! `meshbench load`: the open-loop, coordinated-omission-corrected load generator of
//! PERFORMANCE.md §6 (wrk2's model), for HTTP/1.1, h2c and gRPC unary.
//!
//! - **Open loop** (`--rate`): request `k` is due at `k / rate` after the start. HTTP/1.1
//!   keep-alive splits the schedule over the connections (connection `i` takes `k ≡ i mod N`:
//!   `rate / N` each, phases staggered by `1 / rate`) and sends one request at a time on each;
//!   when an answer comes late, the next request goes out at once. HTTP/2 and gRPC spread the
//!   schedule round-robin over N multiplexed connections; `--new-conn` opens a connection per
//!   request at its due time. Both are capped by `--max-in-flight`.
//! - **The correction**: a request held back by the target (its connection still busy with a
//!   late answer, or the in-flight cap full) is measured from its *intended* time, so a stall
//!   shows up in every request it delayed and not only in the one that hit it. A request whose
//!   own timer fired late is measured from its actual send but at most 1 ms after its
//!   intended time: tokio's timer tick is forgiven, a generator short of CPU is not (its
//!   delay is charged, counted in `lagged`, and reported on stderr). Timers are set 1 ms
//!   early because tokio's fire up to 2 ms late; a request woken early goes out at once and
//!   is measured from its send. The timer also limits one HTTP/1.1 connection to about
//!   500 rps of precise pacing (a warning says so): use more connections for higher rates.
//! - **Closed loop** (no `--rate`): each connection sends back to back, measured from the send.
//! - **Window**: the schedule runs warm-up then the measured window; a request belongs to the
//!   window when its intended time (closed loop: its send) falls in it. After the window the
//!   backlog is drained for at most `--timeout`; what is still unsent or unanswered then counts
//!   as an error, so `requests` is exactly `rate × duration` in open loop. `achieved_rps`
//!   counts only the answers that arrived inside the window; those of the drain are
//!   `ok_after_window`.
//! - **File descriptors**: `main` raises the open-files limit to its hard limit and keeps
//!   `--max-in-flight` under it; a request that still finds none is a `generator_errors`,
//!   not a target error.

mod engine;
mod proto;
mod record;
mod schedule;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use schedule::parse_duration;

/// The default gRPC message size (PERFORMANCE.md §7.3, W3: unary 100 B).
const GRPC_DEFAULT_BODY: usize = 100;
/// The default gRPC method when `--path` is not given (any path reaches the app's echo).
const GRPC_DEFAULT_PATH: &str = "/meshbench.Echo/Unary";
const DEFAULT_PATH: &str = "/1024";
/// Requests per second one HTTP/1.1 lane can pace precisely (a period of 2 ms, twice the
/// timer's granularity).
const MAX_LANE_RATE: f64 = 500.0;

/// The protocol spoken to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// HTTP/1.1 (keep-alive unless `--new-conn`).
    H1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
    /// gRPC unary over h2c.
    Grpc,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
            Proto::Grpc => "grpc",
        }
    }

    fn is_h2(self) -> bool {
        self != Proto::H1
    }
}

/// Command-line arguments of `meshbench load`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to connect (IP:PORT).
    #[arg(long)]
    pub target: SocketAddr,
    /// Host header / :authority (default: the target).
    #[arg(long)]
    pub host: Option<String>,
    /// Request path [default: /1024; grpc: /meshbench.Echo/Unary]. `GET /<n>` must return n
    /// bytes (`/`: 16).
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long, value_enum, default_value = "h1")]
    pub proto: Proto,
    /// Offered requests per second (open loop, CO-corrected); absent = closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections (closed loop: concurrent back-to-back senders).
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The same load before the window, not recorded.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A new TCP connection per request (connect, one request, close).
    #[arg(long)]
    pub new_conn: bool,
    /// Per request, from its send (connecting included).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Open loop on HTTP/2 or with --new-conn: requests outstanding at most.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// POST (h1/h2c: echoed body) or gRPC message size in bytes [grpc default: 100].
    #[arg(long)]
    pub body_size: Option<usize>,
}

/// One run of the load generator (what `Args` resolve to; built directly in-process).
#[derive(Debug, Clone)]
pub struct Spec {
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    pub proto: Proto,
    pub rate: Option<f64>,
    pub conns: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub new_conn: bool,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub body_size: Option<usize>,
}

/// The JSON line `meshbench load` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// "h1" | "h2c" | "grpc"
    pub proto: String,
    pub open_loop: bool,
    pub offered_rps: Option<f64>,
    /// Ok answers that arrived inside the measured window / measured seconds.
    pub achieved_rps: f64,
    pub measured_s: f64,
    /// Requests of the measured window (ok + errors + generator_errors): scheduled in it (open
    /// loop) or sent in it (closed loop).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// TCP connections opened for the measured window.
    pub connections: u64,
    /// Ok requests, in microseconds; open loop: CO-corrected (see the module doc).
    pub latency_us: Latency,
    /// Of `ok`: answers that arrived during the drain after the window (not in
    /// `achieved_rps`).
    #[serde(default)]
    pub ok_after_window: u64,
    /// Measured requests the generator itself failed to make (out of file descriptors); in
    /// `requests`, not in `errors`.
    #[serde(default)]
    pub generator_errors: u64,
    /// Measured requests the generator sent more than 1 ms after their due time (short of
    /// CPU), and the worst such delay in microseconds; their delay is in `latency_us`.
    #[serde(default)]
    pub lagged: u64,
    #[serde(default)]
    pub max_lag_us: f64,
    /// p99 of ok requests measured from their actual send (no correction), in microseconds.
    #[serde(default)]
    pub service_p99_us: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// A report with the histograms behind it, for callers that need more than percentiles.
#[derive(Debug, Clone)]
pub struct Detailed {
    pub report: Report,
    /// Ok requests from the corrected start (what `report.latency_us` summarises), in µs.
    pub latency: Histogram<u64>,
    /// Ok requests from their actual send (what an uncorrected generator reports), in µs.
    pub service: Histogram<u64>,
    /// Measured requests sent more than 1 ms after their due time (the generator lacked CPU).
    pub lagged: u64,
    /// The latest a timer fired.
    pub max_lag: Duration,
}

// === impl Spec ===

impl Spec {
    /// The contract's defaults: `/1024` (gRPC: a unary method), 16 connections, closed loop,
    /// 10 s, no warm-up, 5 s timeout, 10,000 in flight.
    pub fn new(target: SocketAddr, proto: Proto) -> Self {
        let path = if proto == Proto::Grpc {
            GRPC_DEFAULT_PATH
        } else {
            DEFAULT_PATH
        };
        Self {
            target,
            host: target.to_string(),
            path: path.to_owned(),
            proto,
            rate: None,
            conns: 16,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            new_conn: false,
            timeout: Duration::from_secs(5),
            max_in_flight: 10_000,
            body_size: None,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.conns == 0 {
            bail!("--conns must be at least 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of requests per second, not {rate}");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be positive");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        if !self.path.starts_with('/') {
            bail!("--path must start with '/', not {:?}", self.path);
        }
        Ok(())
    }
}

impl From<Args> for Spec {
    fn from(a: Args) -> Self {
        let mut spec = Spec::new(a.target, a.proto);
        if let Some(host) = a.host {
            spec.host = host;
        }
        if let Some(path) = a.path {
            spec.path = path;
        }
        spec.rate = a.rate;
        spec.conns = a.conns;
        spec.duration = a.duration;
        spec.warmup = a.warmup;
        spec.new_conn = a.new_conn;
        spec.timeout = a.timeout;
        spec.max_in_flight = a.max_in_flight;
        spec.body_size = a.body_size;
        spec
    }
}

/// Runs the load in-process and returns the report.
pub async fn run(spec: &Spec) -> anyhow::Result<Report> {
    run_detailed(spec).await.map(|d| d.report)
}

/// Runs the load in-process and returns the report with its histograms.
pub async fn run_detailed(spec: &Spec) -> anyhow::Result<Detailed> {
    spec.validate()?;
    let shape = proto::Shape::new(spec)?;
    let recorder = engine::drive(spec, shape).await?;
    let measured_s = spec.duration.as_secs_f64();
    let in_window = recorder.ok - recorder.ok_after_window;
    let report = Report {
        proto: spec.proto.as_str().to_owned(),
        open_loop: spec.rate.is_some(),
        offered_rps: spec.rate,
        achieved_rps: in_window as f64 / measured_s,
        measured_s,
        requests: recorder.ok + recorder.errors + recorder.generator_errors,
        ok: recorder.ok,
        errors: recorder.errors,
        error_samples: recorder.samples.clone(),
        connections: recorder.connections,
        latency_us: record::summarize(&recorder.latency),
        ok_after_window: recorder.ok_after_window,
        generator_errors: recorder.generator_errors,
        lagged: recorder.lagged,
        max_lag_us: recorder.max_lag.as_secs_f64() * 1e6,
        service_p99_us: record::summarize(&recorder.service).p99,
    };
    Ok(Detailed {
        report,
        latency: recorder.latency,
        service: recorder.service,
        lagged: recorder.lagged,
        max_lag: recorder.max_lag,
    })
}

/// HTTP/1.1 lanes pace themselves with tokio's 1 ms timer: when a lane's period gets close to
/// that, a late timer can make the next request look held back by the target.
fn pacing_note(spec: &Spec) -> Option<String> {
    let rate = spec.rate?;
    let per_conn = rate / spec.conns as f64;
    (spec.proto == Proto::H1 && !spec.new_conn && per_conn > MAX_LANE_RATE).then(|| {
        format!(
            "{per_conn:.0} rps per connection (> {MAX_LANE_RATE:.0}): timer jitter may be \
             charged to the target; use more --conns"
        )
    })
}

/// File descriptors kept for everything but the requests' sockets (stdio, the runtime's epoll
/// and wakers, an in-process target in tests).
const FD_RESERVE: u64 = 64;

/// The in-flight cap that fits in `nofile` descriptors (`None`: unlimited); at least 1.
fn fd_cap(max_in_flight: usize, nofile: Option<u64>) -> usize {
    match nofile {
        None => max_in_flight,
        Some(limit) => {
            let usable = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            max_in_flight.min(usable).max(1)
        }
    }
}

/// `meshbench load`: one current-thread runtime (the harness pins the generator to one core),
/// one JSON line on stdout.
pub fn main(args: Args) -> anyhow::Result<()> {
    let mut spec = Spec::from(args);
    let nofile = crate::sys::raise_nofile();
    let cap = fd_cap(spec.max_in_flight, nofile);
    if cap < spec.max_in_flight {
        eprintln!(
            "meshbench load: warning: --max-in-flight {} lowered to {cap}: the open-files \
             limit is {nofile:?}",
            spec.max_in_flight
        );
        spec.max_in_flight = cap;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    if let Some(note) = pacing_note(&spec) {
        eprintln!("meshbench load: warning: {note}");
    }
    let detailed = runtime.block_on(run_detailed(&spec))?;
    // A few late timers are scheduling noise; more than 1 % means the numbers are suspect.
    if detailed.report.generator_errors > 0 {
        eprintln!(
            "meshbench load: warning: {} requests failed in the generator itself (see \
             error_samples): the run is not a measurement of the target",
            detailed.report.generator_errors
        );
    }
    if detailed.lagged * 100 > detailed.report.requests {
        eprintln!(
            "meshbench load: warning: {} of {} requests were sent more than 1 ms after their \
             due time (worst {:.1} ms): the generator is short of CPU, rates and latencies are \
             suspect",
            detailed.lagged,
            detailed.report.requests,
            detailed.max_lag.as_secs_f64() * 1e3
        );
    }
    let line = serde_json::to_string(&detailed.report).context("encoding the report")?;
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Spec {
        let argv = ["load"].iter().chain(args).copied();
        Spec::from(Cli::try_parse_from(argv).unwrap().args)
    }

    #[test]
    fn flags_resolve_to_the_contract_defaults() {
        let s = parse(&["--target", "198.18.0.2:8080"]);
        assert_eq!(s.host, "198.18.0.2:8080");
        assert_eq!(s.path, "/1024");
        assert_eq!((s.proto, s.rate, s.conns), (Proto::H1, None, 16));
        assert_eq!(
            (s.duration, s.warmup, s.timeout),
            (
                Duration::from_secs(10),
                Duration::ZERO,
                Duration::from_secs(5)
            )
        );
        assert_eq!(
            (s.new_conn, s.max_in_flight, s.body_size),
            (false, 10_000, None)
        );

        let s = parse(&[
            "--target",
            "127.0.0.1:1",
            "--proto",
            "grpc",
            "--rate",
            "1000",
            "--duration",
            "500ms",
            "--warmup",
            "2m",
            "--host",
            "app",
            "--new-conn",
            "--body-size",
            "7",
        ]);
        assert_eq!(s.path, GRPC_DEFAULT_PATH);
        assert_eq!(
            (s.proto, s.rate, s.host.as_str()),
            (Proto::Grpc, Some(1000.0), "app")
        );
        assert_eq!(
            (s.duration, s.warmup),
            (Duration::from_millis(500), Duration::from_secs(120))
        );
        assert!(s.new_conn && s.body_size == Some(7));
        assert!(Cli::try_parse_from(["load", "--target", "127.0.0.1:1", "--proto", "h3"]).is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        let ok = parse(&["--target", "127.0.0.1:1"]);
        assert!(ok.validate().is_ok());
        for broken in [
            Spec {
                conns: 0,
                ..ok.clone()
            },
            Spec {
                rate: Some(0.0),
                ..ok.clone()
            },
            Spec {
                rate: Some(f64::NAN),
                ..ok.clone()
            },
            Spec {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            Spec {
                max_in_flight: 0,
                ..ok.clone()
            },
            Spec {
                path: "1024".into(),
                ..ok.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    #[test]
    fn pacing_notes_only_for_fast_h1_lanes() {
        let mut s = parse(&[
            "--target",
            "127.0.0.1:1",
            "--rate",
            "10000",
            "--conns",
            "16",
        ]);
        assert!(pacing_note(&s).is_some());
        s.conns = 64;
        assert!(pacing_note(&s).is_none());
        s.conns = 1;
        s.proto = Proto::H2c;
        assert!(pacing_note(&s).is_none());
    }

    #[test]
    fn the_in_flight_cap_fits_the_open_files_limit() {
        assert_eq!(fd_cap(10_000, None), 10_000);
        assert_eq!(fd_cap(10_000, Some(1024)), 960);
        assert_eq!(fd_cap(100, Some(1 << 20)), 100);
        assert_eq!(fd_cap(100, Some(10)), 1);
    }

    #[test]
    fn reports_without_the_newer_fields_still_parse() {
        let old = r#"{"proto":"h1","open_loop":true,"offered_rps":100.0,"achieved_rps":99.0,
            "measured_s":1.0,"requests":100,"ok":100,"errors":0,"error_samples":[],
            "connections":2,"latency_us":{"p50":1.0,"p90":1.0,"p99":1.0,"p999":1.0,"max":1.0,
            "mean":1.0}}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!((r.ok_after_window, r.generator_errors, r.lagged), (0, 0, 0));
    }

    #[test]
    fn run_can_be_spawned() {
        fn send<T: Send>(_: T) {}
        let spec = Spec::new("127.0.0.1:1".parse().unwrap(), Proto::H1);
        send(run(&spec));
    }
}
