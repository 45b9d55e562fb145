//! Wiring: flags -> CA -> listeners -> file source -> cache -> ADS + CA (TLS) and admin servers
//! -> shutdown.
//!
//! [`start`] takes the config store and generator as parameters so that component tests can run
//! the whole control plane with fakes; [`main_with_args`] wires the real ones (`weft-config`).
//! The CA is loaded first because its roots are part of the mesh settings the real generator
//! is built with ([`start_with_ca`] takes a loaded one).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, Readiness};
use crate::ca::authn::LocalTokens;
use crate::ca::authority::ServingSans;
use crate::ca::server::CaServer;
use crate::ca::{self, Ca, CaConfig, serving};
use crate::metrics::Metrics;
use crate::sources::{ConfigState, ConfigStore, file};
use crate::spiffe::SpiffeId;
use crate::xds::cache::{self, Cache, Generator};
use crate::xds::server::{self, AdsServer, Services, Transport};
use crate::xds::syncz::SyncRegistry;

/// `weft-control` flags; each is also read from the environment (`WEFT_*`).
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-control", version, about = "Weft's control plane")]
pub struct Args {
    /// Directory of mesh YAML (watched recursively; *.yaml and *.yml).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Address of the control channel: ADS and the CA over gRPC, TLS unless --plaintext-xds.
    #[arg(long, env = "WEFT_XDS_ADDR", default_value = "127.0.0.1:15012")]
    pub xds_addr: SocketAddr,
    /// Serve the control channel in plaintext, without client-certificate checks. For tests
    /// that have not moved to TLS only: it exposes tokens and config to anyone on the network.
    #[arg(long, env = "WEFT_PLAINTEXT_XDS")]
    pub plaintext_xds: bool,
    /// Directory of the mesh root CA (`root-cert.pem`, `root-key.pem`), made on first start
    /// and reused after. Default: `<config-dir>/.weft/ca`.
    #[arg(long, env = "WEFT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// An Istio-style `cacerts` directory (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`): sign with this intermediate instead of a local root.
    #[arg(long, env = "WEFT_PLUGIN_CA_DIR")]
    pub plugin_ca_dir: Option<PathBuf>,
    /// Directory of local-mode workload tokens (`*.json`, written by `weftctl up`).
    /// Default: `<config-dir>/.weft/tokens`.
    #[arg(long, env = "WEFT_TOKEN_DIR")]
    pub token_dir: Option<PathBuf>,
    /// Longest lifetime of a workload certificate, e.g. `24h`, `90m`, `5s`.
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = ca::parse_lifetime)]
    pub cert_lifetime: Duration,
    /// Address of the admin HTTP server (/ready, /live, /metrics, /debug/*).
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// Quiet time, in milliseconds, before config changes are pushed to proxies.
    #[arg(long, env = "WEFT_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// What proxies do with outbound traffic to addresses no service claims: `ALLOW_ANY`
    /// (pass it through unchanged) or `REGISTRY_ONLY` (refuse it). Istio's
    /// `meshConfig.outboundTrafficPolicy.mode`.
    #[arg(
        long,
        env = "WEFT_OUTBOUND_TRAFFIC_POLICY",
        default_value = "ALLOW_ANY"
    )]
    pub outbound_traffic_policy: crate::config::OutboundTrafficPolicy,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,weft_control::xds=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
}

/// A started control plane.
#[derive(Debug)]
pub struct Running {
    /// Where ADS is served (the bound address, useful with port 0).
    pub xds_addr: SocketAddr,
    /// Where admin is served.
    pub admin_addr: SocketAddr,
    /// The mesh root proxies trust (`--ca-root`).
    pub ca_root: PathBuf,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Binds `addr` for `what`, with an error an operator can act on.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        anyhow!("cannot listen on {addr} ({what}): {reason}")
    })
}

// === impl Args ===

impl Args {
    /// `--ca-dir`, or its default under the config directory (hidden, so the file source
    /// skips it).
    pub fn ca_dir(&self) -> PathBuf {
        self.ca_dir
            .clone()
            .unwrap_or_else(|| self.config_dir.join(".weft").join("ca"))
    }

    /// `--token-dir`, or its default under the config directory.
    pub fn token_dir(&self) -> PathBuf {
        self.token_dir
            .clone()
            .unwrap_or_else(|| self.config_dir.join(".weft").join("tokens"))
    }

    /// The CA's settings.
    pub fn ca_config(&self) -> CaConfig {
        CaConfig {
            ca_dir: self.ca_dir(),
            plugin_ca_dir: self.plugin_ca_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            cert_lifetime: self.cert_lifetime,
        }
    }
}

fn check_config_dir(args: &Args) -> anyhow::Result<()> {
    if !args.config_dir.is_dir() {
        return Err(anyhow!(
            "config directory {} does not exist or is not a directory",
            args.config_dir.display()
        ));
    }
    Ok(())
}

/// Loads the CA for `args` (creating the root on first start).
pub fn load_ca(args: &Args) -> anyhow::Result<Ca> {
    check_config_dir(args)?;
    ca::load(&args.ca_config()).context("mesh CA")
}

/// Starts everything and returns once ready: listeners bound, first config load published.
pub async fn start<S: ConfigStore>(
    args: &Args,
    store: S,
    generator: Arc<dyn Generator>,
) -> anyhow::Result<Running> {
    let ca = load_ca(args)?;
    start_with_ca(args, ca, store, generator).await
}

/// The names in the control plane's serving certificate: what proxies may dial.
fn serving_sans(args: &Args, xds_addr: SocketAddr) -> ServingSans {
    let ip = xds_addr.ip();
    let ips = if ip.is_unspecified() {
        vec![std::net::Ipv4Addr::LOCALHOST.into()]
    } else {
        vec![ip]
    };
    ServingSans {
        dns: vec!["weft-control".into(), "localhost".into()],
        ips,
        identity: SpiffeId::new(
            args.trust_domain.clone(),
            serving::NAMESPACE,
            serving::SERVICE_ACCOUNT,
        ),
    }
}

/// [`start`] with a CA already loaded ([`load_ca`]).
pub async fn start_with_ca<S: ConfigStore>(
    args: &Args,
    ca: Ca,
    store: S,
    generator: Arc<dyn Generator>,
) -> anyhow::Result<Running> {
    check_config_dir(args)?;
    let xds_listener = bind(args.xds_addr, "xDS").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let xds_addr = xds_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let debounce = Duration::from_millis(args.debounce_ms);
    let metrics = Arc::new(Metrics::new());
    let syncz = Arc::new(SyncRegistry::default());
    let readiness = Readiness::default();
    let (config_tx, config_rx) = watch::channel(ConfigState::default());
    let mut tasks = JoinSet::new();

    // Admin first, so /ready answers (503) while the config loads.
    let admin_state = AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        syncz: syncz.clone(),
        config: config_rx.clone(),
    };
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move {
            admin::serve(admin_listener, admin_state, shutdown)
                .await
                .context("admin server")
        }
    });

    let source = file::start(
        args.config_dir.clone(),
        store,
        config_tx,
        debounce,
        shutdown.clone(),
    )
    .await
    .context("file source")?;
    tasks.spawn(async move { source.await.context("file source task") });

    let cache = Cache::new(generator);
    tasks.spawn({
        let (cache, shutdown) = (cache.clone(), shutdown.clone());
        async move {
            cache::run_refresh(cache, config_rx, debounce, shutdown).await;
            Ok(())
        }
    });
    let ca_server = CaServer::new(
        Arc::clone(&ca.authority),
        Arc::new(LocalTokens::new(args.token_dir())),
        Arc::clone(&metrics),
    );
    let ads = AdsServer::new(cache, syncz, metrics, shutdown.clone());
    let (ads, transport) = if args.plaintext_xds {
        tracing::warn!(
            addr = %xds_addr,
            "--plaintext-xds: xDS and the CA are served WITHOUT TLS; tokens and config travel \
             in the clear and proxies are not authenticated. Use only in tests."
        );
        (ads, Transport::Plaintext)
    } else {
        let sans = serving_sans(args, xds_addr);
        let (cert, not_after) =
            serving::issue(&ca.authority, &sans).context("control plane serving certificate")?;
        let config = crate::xds::tls::server_config(cert.clone(), &ca.trust_bundle)
            .context("control channel TLS")?;
        tasks.spawn({
            let (authority, shutdown) = (Arc::clone(&ca.authority), shutdown.clone());
            async move {
                serving::run_renewal(authority, sans, cert, not_after, shutdown).await;
                Ok(())
            }
        });
        (
            ads.require_client_certs(ca.authority.trust_domain()),
            Transport::Tls(config),
        )
    };
    let services = Services {
        ads,
        ca: Some(ca_server),
    };
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move {
            server::serve_grpc(xds_listener, services, transport, shutdown)
                .await
                .context("xDS server")
        }
    });

    readiness.set_ready();
    Ok(Running {
        xds_addr,
        admin_addr,
        ca_root: ca.root_path,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Runs until `shutdown` is cancelled or a server fails; then stops everything.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(done) = self.tasks.join_next() => {
                result = match done {
                    // Servers return Ok once shutdown began; only before that is it a failure.
                    Ok(Ok(())) if self.shutdown.is_cancelled() => Ok(()),
                    Ok(Ok(())) => Err(anyhow!("a control-plane task stopped unexpectedly")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow!(e).context("a control-plane task panicked")),
                };
            }
        }
        self.shutdown.cancel();
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %format!("{e:#}"), "error while shutting down");
            }
        }
        result
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca = load_ca(&args)?;
    let (store, generator) = crate::config::real(&args, ca.trust_bundle.clone());
    let running = start_with_ca(&args, ca, store, generator).await?;
    println!(
        "weft-control ready: xds={} ({}) admin={} config={} ca-root={}",
        running.xds_addr,
        if args.plaintext_xds {
            "plaintext"
        } else {
            "tls"
        },
        running.admin_addr,
        args.config_dir.display(),
        running.ca_root.display()
    );
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    running.wait().await
}

/// The control plane's `main`: parses `args` (the first is the program name), logs to stderr,
/// runs until Ctrl-C or SIGTERM. `weftctl` calls this to run the control plane in-process.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("weft-control: invalid --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    // A second install (weftctl may have one already) is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    // One crypto provider for the process (CRATES.md §3); weftctl may have installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft-control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
