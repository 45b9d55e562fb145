//! Wiring: flags -> listeners -> file source -> cache -> ADS and admin servers -> shutdown.
//!
//! [`start`] takes the config store and generator as parameters so that component tests can run
//! the whole control plane with fakes; [`main_with_args`] wires the real ones (`weft-config`).

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
use crate::metrics::Metrics;
use crate::sources::{ConfigState, ConfigStore, file};
use crate::xds::cache::{self, Cache, Generator};
use crate::xds::server::{self, AdsServer};
use crate::xds::syncz::SyncRegistry;

/// `weft-control` flags; each is also read from the environment (`WEFT_*`).
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-control", version, about = "Weft's control plane")]
pub struct Args {
    /// Directory of mesh YAML (watched recursively; *.yaml and *.yml).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Address of the xDS (ADS) gRPC server. Plaintext in this release.
    #[arg(long, env = "WEFT_XDS_ADDR", default_value = "127.0.0.1:15012")]
    pub xds_addr: SocketAddr,
    /// Address of the admin HTTP server (/ready, /live, /metrics, /debug/*).
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// Quiet time, in milliseconds, before config changes are pushed to proxies.
    #[arg(long, env = "WEFT_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
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

/// Starts everything and returns once ready: listeners bound, first config load published.
pub async fn start<S: ConfigStore>(
    args: &Args,
    store: S,
    generator: Arc<dyn Generator>,
) -> anyhow::Result<Running> {
    if !args.config_dir.is_dir() {
        return Err(anyhow!(
            "config directory {} does not exist or is not a directory",
            args.config_dir.display()
        ));
    }
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
    let ads = AdsServer::new(cache, syncz, metrics, shutdown.clone());
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move {
            server::serve(xds_listener, ads, shutdown)
                .await
                .context("xDS server")
        }
    });

    readiness.set_ready();
    Ok(Running {
        xds_addr,
        admin_addr,
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
    let (store, generator) = crate::config::real(&args);
    let running = start(&args, store, generator).await?;
    println!(
        "weft-control ready: xds={} admin={} config={}",
        running.xds_addr,
        running.admin_addr,
        args.config_dir.display()
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
