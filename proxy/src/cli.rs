//! The command line: `weft-proxy run`, `weft-proxy init` and `weft-proxy wait`. Parsing and
//! process concerns (signals, exit codes) only; `app`, `init` and `admin::wait` do the work.
//!
//! Every flag can also come from a `WEFT_*` environment variable, so the same binary is
//! configured by flags locally and by env in a Kubernetes pod spec.

use std::ffi::OsString;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Config, IdentityConfig};
use crate::init;
use crate::xds::Mode;

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "Weft's sidecar proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar for one workload.
    Run(Box<RunArgs>),
    /// Install the pod's NAT rules for transparent interception (the init container).
    Init(InitArgs),
    /// Block until the proxy's /ready answers 200 (hold the app until its sidecar is ready).
    Wait(WaitArgs),
}

/// `weft-proxy wait`: exits 0 once the proxy is ready, 1 on timeout.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The proxy's admin address, host:port; defaults to WEFT_ADDRESS (else 127.0.0.1) and
    /// WEFT_ADMIN_PORT (else 15020), so it works with the sidecar's own environment.
    #[arg(long, env = "WEFT_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// How long to wait, e.g. "60s", "500ms", "2m" (a bare number is seconds).
    #[arg(long, env = "WEFT_WAIT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[arg(long, env = "WEFT_ADDRESS", hide = true)]
    pub address: Option<IpAddr>,
    #[arg(long, env = "WEFT_ADMIN_PORT", default_value_t = 15020, hide = true)]
    pub admin_port: u16,
}

impl WaitArgs {
    /// The address to poll.
    pub fn admin_addr(&self) -> String {
        self.admin_addr.clone().unwrap_or_else(|| {
            let ip = self.address.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            std::net::SocketAddr::new(ip, self.admin_port).to_string()
        })
    }
}

/// A duration as people write it: `<n>ms`, `<n>s`, `<n>m`, `<n>h`, or a bare `<n>` seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 500ms, 2m)"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        u => Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m or h)")),
    }
}

/// `weft-proxy init`: the list flags take the syntax of Istio's
/// `traffic.sidecar.istio.io/*` annotations (comma-separated; `*` all; empty none).
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The proxy's UID: its own traffic is never captured.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = init::options::DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// The proxy's GID, also exempt; defaults to --proxy-uid.
    #[arg(long, env = "WEFT_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// Where inbound TCP is redirected (the proxy's inbound listener).
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = init::options::DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// Where outbound TCP is redirected (the proxy's outbound listener).
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = init::options::DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Inbound ports to capture: "*" (all), a list, or "" (none). includeInboundPorts.
    #[arg(long, env = "WEFT_INCLUDE_INBOUND_PORTS", default_value = "*")]
    pub include_inbound_ports: String,
    /// Inbound ports never captured (with --include-inbound-ports "*"). excludeInboundPorts.
    #[arg(long, env = "WEFT_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured. excludeOutboundPorts.
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations to capture: "*" (all), CIDRs, or "" (none).
    /// includeOutboundIPRanges.
    #[arg(long, env = "WEFT_INCLUDE_OUTBOUND_IP_RANGES", default_value = "*")]
    pub include_outbound_ip_ranges: String,
    /// Outbound destination CIDRs never captured. excludeOutboundIPRanges.
    #[arg(long, env = "WEFT_EXCLUDE_OUTBOUND_IP_RANGES", default_value = "")]
    pub exclude_outbound_ip_ranges: String,
    /// Capture IPv6 too (ip6tables / the ip6 half of the nft table).
    #[arg(long, env = "WEFT_IPV6", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// iptables-nft, iptables-legacy or nft; default: what the node uses.
    #[arg(long, env = "WEFT_INIT_BACKEND", value_enum)]
    pub backend: Option<init::Backend>,
    /// Print the chosen backend and the exact rules, change nothing (no root needed).
    #[arg(long, env = "WEFT_DRY_RUN")]
    pub dry_run: bool,
}

impl InitArgs {
    pub fn request(&self) -> init::Request {
        init::Request {
            options: init::RawOptions {
                proxy_uid: self.proxy_uid,
                proxy_gid: self.proxy_gid,
                inbound_port: self.inbound_port,
                outbound_port: self.outbound_port,
                include_inbound_ports: self.include_inbound_ports.clone(),
                exclude_inbound_ports: self.exclude_inbound_ports.clone(),
                exclude_outbound_ports: self.exclude_outbound_ports.clone(),
                include_outbound_ip_ranges: self.include_outbound_ip_ranges.clone(),
                exclude_outbound_ip_ranges: self.exclude_outbound_ip_ranges.clone(),
                ipv6: self.ipv6,
            },
            backend: self.backend,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The workload this proxy serves, "<name>.<namespace>".
    #[arg(long, env = "WEFT_NODE_ID")]
    pub node_id: String,
    /// The workload's IP address; the proxy's listeners bind here.
    #[arg(long, env = "WEFT_ADDRESS")]
    pub address: IpAddr,
    /// Where the application listens. Defaults to --address when it is a loopback address
    /// (local mode), else to the loopback address of its family (a pod): the inbound side's
    /// own connection to the pod IP would be sent back to it by `weft-proxy init`'s rules.
    #[arg(long, env = "WEFT_APP_ADDRESS")]
    pub app_address: Option<IpAddr>,
    /// The control plane's xDS address, host:port.
    #[arg(long, env = "WEFT_XDS_ADDR")]
    pub xds_addr: String,
    /// ADS variant: incremental (delta) or state of the world (sotw).
    #[arg(long, env = "WEFT_XDS_MODE", value_enum, default_value = "delta")]
    pub xds_mode: Mode,
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    #[arg(long, env = "WEFT_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. "info" or "weft_proxy=debug".
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
    /// How long open connections get to finish after SIGTERM/SIGINT or POST /quitquitquit
    /// (Istio's terminationDrainDuration), e.g. "5s", "500ms"; then they are closed.
    #[arg(long, env = "WEFT_DRAIN_TIME", default_value = "5s", value_parser = parse_duration)]
    pub drain_time: Duration,
    /// How long protocol detection waits for an intercepted client's first bytes before the
    /// connection is treated as opaque TCP (server-first protocols on undeclared ports), e.g.
    /// "5s", "500ms".
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// PEM root(s) the control plane's certificate chains to (server name "weft-control"),
    /// also the trust bundle until xDS sends one. Without it the proxy runs WITHOUT
    /// identity: plaintext xDS and mesh hop (transitional; to be removed).
    #[arg(long, env = "WEFT_CA_ROOT", requires = "token_file")]
    pub ca_root: Option<std::path::PathBuf>,
    /// JSON {"token", "identity", "node_id"} proving this workload's identity to the CA.
    #[arg(long, env = "WEFT_TOKEN_FILE", requires = "ca_root")]
    pub token_file: Option<std::path::PathBuf>,
    /// The CA's host:port; defaults to --xds-addr (both are served on 15012).
    #[arg(long, env = "WEFT_CA_ADDR")]
    pub ca_addr: Option<String>,
    /// Worker threads of the data path (Istio's `concurrency`): 1 runs everything on one
    /// thread, which is what the benchmarks compare with one nginx worker or HAProxy thread.
    #[arg(long, env = "WEFT_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Requested certificate lifetime in seconds; 0 takes the CA's default.
    #[arg(long, env = "WEFT_CERT_VALIDITY_SECONDS", default_value_t = 0)]
    pub cert_validity_seconds: u64,
}

impl RunArgs {
    pub fn config(&self) -> Config {
        Config {
            node_id: self.node_id.clone(),
            address: self.address,
            app_address: self
                .app_address
                .unwrap_or_else(|| default_app_address(self.address)),
            xds_addr: self.xds_addr.clone(),
            xds_mode: self.xds_mode,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            drain: self.drain_time,
            detect_timeout: self.detect_timeout,
            identity: match (&self.ca_root, &self.token_file) {
                (Some(ca_root), Some(token_file)) => Some(IdentityConfig {
                    ca_root: ca_root.clone(),
                    token_file: token_file.clone(),
                    ca_addr: self
                        .ca_addr
                        .clone()
                        .unwrap_or_else(|| self.xds_addr.clone()),
                    cert_validity: Duration::from_secs(self.cert_validity_seconds),
                }),
                _ => None,
            },
        }
    }
}

/// Runs `weft-proxy` with `args` (the first is the program name), as the binary does; `weftctl`
/// calls this to re-exec itself as a proxy.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Command::Init(args) => init_main(&args),
        Command::Run(args) => run(&args),
        Command::Wait(args) => wait_main(&args),
    }
}

fn wait_main(args: &WaitArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy wait: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = args.admin_addr();
    match rt.block_on(crate::admin::wait::wait_ready(&addr, args.timeout)) {
        Ok(()) => {
            eprintln!("weft-proxy wait: the proxy at {addr} is ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-proxy wait: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_main(args: &InitArgs) -> ExitCode {
    match init::run(&args.request(), &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy init: {e}");
            // Usage errors exit 2 like clap's; a node that cannot take the rules, 1.
            match e {
                init::InitError::Options(_) => ExitCode::from(2),
                init::InitError::Setup(_) => ExitCode::FAILURE,
            }
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    // One crypto provider for every rustls user (tonic included); an error means one is
    // already installed (weftctl runs us in-process), which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in captured logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    // Two workers by default: a sidecar shares its pod's CPU; more threads would mostly
    // contend. One worker is a current-thread runtime: no work stealing, no cross-thread wakeups.
    let mut builder = if args.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(args.concurrency));
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = args.config();
    let result = rt.block_on(async move {
        // Handlers go in before anything is bound, so a SIGTERM that arrives during startup
        // drains like any other instead of killing the process by the default action.
        let mut signals = Signals::install().context("installing the signal handlers")?;
        let shutdown = CancellationToken::new();
        let proxy = app::run(cfg, shutdown.clone());
        tokio::pin!(proxy);
        tokio::select! {
            r = proxy.as_mut() => return r,
            name = signals.next() => {
                tracing::info!(signal = name, "shutting down: draining");
                shutdown.cancel();
            }
        }
        // A second signal skips the rest of the drain: the operator insists.
        tokio::select! {
            r = proxy => r,
            name = signals.next() => {
                eprintln!("weft-proxy: second {name}: exiting without waiting for the drain");
                Ok(())
            }
        }
    });
    // Whatever is still running (connections past the drain time, a blocking DNS lookup) is
    // abandoned rather than waited for: the drain time is the promise.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what the kubelet sends) and SIGINT (Ctrl-C), registered once.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The application's address when `--app-address` is not given: the workload's own address
/// in local mode (loopback), the loopback address of the family in a pod. In a pod the
/// inbound side connects as the proxy's uid from the pod to its own IP; `weft-proxy init`'s
/// rules send such a connection (out of `lo` to a non-loopback address) to the inbound
/// listener again, which would loop.
pub fn default_app_address(address: IpAddr) -> IpAddr {
    match address {
        a if a.is_loopback() || a.is_unspecified() => a,
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn run_flags_and_defaults() {
        let cli = parse(&[
            "run",
            "--node-id",
            "productpage.default",
            "--address",
            "127.0.0.2",
            "--xds-addr",
            "127.0.0.1:15012",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        let cfg = a.config();
        assert_eq!(cfg.app_address, cfg.address);
        assert_eq!(
            (cfg.outbound_port, cfg.inbound_port, cfg.admin_port),
            (15001, 15006, 15020)
        );
        assert_eq!(cfg.xds_mode, Mode::Delta);
    }

    #[test]
    fn a_pod_reaches_its_app_on_loopback_by_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(default_app_address(ip("127.0.10.2")), ip("127.0.10.2"));
        assert_eq!(default_app_address(ip("10.1.2.3")), ip("127.0.0.1"));
        assert_eq!(default_app_address(ip("fd00::3")), ip("::1"));
    }

    #[test]
    fn sotw_mode_and_ports() {
        let cli = parse(&[
            "run",
            "--node-id",
            "a.b",
            "--address",
            "127.0.0.3",
            "--app-address",
            "127.0.0.9",
            "--xds-addr",
            "x:1",
            "--xds-mode",
            "sotw",
            "--outbound-port",
            "1",
            "--inbound-port",
            "2",
            "--admin-port",
            "3",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        let cfg = a.config();
        assert_eq!(cfg.xds_mode, Mode::Sotw);
        assert_eq!(cfg.app_address.to_string(), "127.0.0.9");
        assert_eq!(
            (cfg.outbound_port, cfg.inbound_port, cfg.admin_port),
            (1, 2, 3)
        );
    }

    #[test]
    fn identity_flags() {
        let base = [
            "run",
            "--node-id",
            "a.b",
            "--address",
            "127.0.0.3",
            "--xds-addr",
            "cp:15012",
        ];
        let Command::Run(a) = parse(&base).unwrap().command else {
            panic!("not run")
        };
        assert!(a.config().identity.is_none(), "no --ca-root: no identity");

        let mut args = base.to_vec();
        args.extend(["--ca-root", "/r.pem", "--token-file", "/t.json"]);
        let Command::Run(a) = parse(&args).unwrap().command else {
            panic!("not run")
        };
        let id = a.config().identity.unwrap();
        assert_eq!(id.ca_addr, "cp:15012", "the CA defaults to the xDS address");
        assert_eq!(id.cert_validity, Duration::ZERO);

        args.extend(["--ca-addr", "ca:1", "--cert-validity-seconds", "5"]);
        let Command::Run(a) = parse(&args).unwrap().command else {
            panic!("not run")
        };
        let id = a.config().identity.unwrap();
        assert_eq!(
            (id.ca_addr.as_str(), id.cert_validity.as_secs()),
            ("ca:1", 5)
        );

        let mut half = base.to_vec();
        half.extend(["--ca-root", "/r.pem"]);
        assert!(parse(&half).is_err(), "--ca-root needs --token-file");
    }

    #[test]
    fn drain_time_flag_and_default() {
        let base = [
            "run",
            "--node-id",
            "a.b",
            "--address",
            "127.0.0.3",
            "--xds-addr",
            "x:1",
        ];
        let Command::Run(a) = parse(&base).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(a.config().drain, Duration::from_secs(5), "Istio's default");
        let mut args = base.to_vec();
        args.extend(["--drain-time", "750ms"]);
        let Command::Run(a) = parse(&args).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(a.config().drain, Duration::from_millis(750));
        let mut bad = base.to_vec();
        bad.extend(["--drain-time", "5 parsecs"]);
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn detect_timeout_flag_and_default() {
        let base = [
            "run",
            "--node-id",
            "a.b",
            "--address",
            "127.0.0.3",
            "--xds-addr",
            "x:1",
        ];
        let Command::Run(a) = parse(&base).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(
            a.config().detect_timeout,
            crate::outbound::DEFAULT_DETECT_TIMEOUT
        );
        let mut args = base.to_vec();
        args.extend(["--detect-timeout", "250ms"]);
        let Command::Run(a) = parse(&args).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(a.config().detect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "1.5s", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wait_flags() {
        let Command::Wait(a) =
            parse(&["wait", "--admin-addr", "10.0.0.5:15020", "--timeout", "3s"])
                .unwrap()
                .command
        else {
            panic!("not wait")
        };
        assert_eq!(a.admin_addr(), "10.0.0.5:15020");
        assert_eq!(a.timeout, Duration::from_secs(3));
        let Command::Wait(a) = parse(&["wait", "--admin-port", "1"]).unwrap().command else {
            panic!("not wait")
        };
        assert_eq!(a.admin_addr(), "127.0.0.1:1");
        assert_eq!(a.timeout, Duration::from_secs(60));
    }

    #[test]
    fn init_flags_and_defaults() {
        let Command::Init(a) = parse(&["init"]).unwrap().command else {
            panic!("not init")
        };
        let req = a.request();
        assert_eq!(req.options, init::RawOptions::default());
        assert_eq!((req.backend, req.dry_run), (None, false));

        let Command::Init(a) = parse(&[
            "init",
            "--proxy-uid",
            "1000",
            "--include-inbound-ports",
            "80,443",
            "--ipv6",
            "false",
            "--backend",
            "iptables-legacy",
            "--dry-run",
        ])
        .unwrap()
        .command
        else {
            panic!("not init")
        };
        let req = a.request();
        assert_eq!(req.options.proxy_uid, 1000);
        assert_eq!(req.options.include_inbound_ports, "80,443");
        assert!(!req.options.ipv6);
        assert_eq!(req.backend, Some(init::Backend::IptablesLegacy));
        assert!(req.dry_run);
    }

    #[test]
    fn init_dry_run_exits_0_and_bad_options_exit_2() {
        let code = main_with_args(["weft-proxy", "init", "--dry-run"].map(OsString::from));
        assert_eq!(code, ExitCode::SUCCESS);
        let code = main_with_args(
            [
                "weft-proxy",
                "init",
                "--dry-run",
                "--exclude-inbound-ports",
                "x",
            ]
            .map(OsString::from),
        );
        assert_eq!(code, ExitCode::from(2));
    }
}
