//! Wiring only: listeners, the xDS client, the data plane and the admin server, started in
//! that order and stopped together. Knows every module; no module knows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::inbound::Inbound;
use crate::model::SharedSnapshot;
use crate::outbound::{Outbound, Workload};
use crate::telemetry::Metrics;
use crate::transport::{self, Connector, ServerStats};
use crate::xds::{self, Applier, GrpcTransport, Mode, XdsClient, XdsStatus};

/// Settings of `weft-proxy run`, already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// "<name>.<namespace>" of the workload.
    pub node_id: String,
    /// The workload's address; every listener binds here.
    pub address: IpAddr,
    /// Where the application listens (defaults to `address`).
    pub app_address: IpAddr,
    /// Control plane `host:port`.
    pub xds_addr: String,
    pub xds_mode: Mode,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    /// How long in-flight requests get to finish on shutdown.
    pub drain: Duration,
}

/// The three bound listeners. Binding is separate from running so failures are reported
/// before anything starts, and tests can pass port-0 listeners.
#[derive(Debug)]
pub struct Listeners {
    pub outbound: TcpListener,
    pub inbound: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> Result<Self, transport::BindError> {
        let at = |port| SocketAddr::new(cfg.address, port);
        Ok(Self {
            outbound: transport::bind(at(cfg.outbound_port), "outbound").await?,
            inbound: transport::bind(at(cfg.inbound_port), "inbound").await?,
            admin: transport::bind(at(cfg.admin_port), "admin").await?,
        })
    }
}

/// A running data plane (outbound + inbound listeners), for `run` and for tests.
#[derive(Debug)]
pub struct DataPlane {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub outbound_stats: Arc<ServerStats>,
    pub inbound_stats: Arc<ServerStats>,
    pub connector: Connector,
}

/// What the data plane needs besides its listeners.
#[derive(Debug, Clone)]
pub struct DataPlaneParams {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub workload: Workload,
    pub app_address: IpAddr,
}

/// Starts serving on already-bound listeners; returns at once.
pub fn spawn_data_plane(
    outbound: TcpListener,
    inbound: TcpListener,
    params: DataPlaneParams,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<DataPlane> {
    let connector = Connector::default();
    let dp = DataPlane {
        outbound_addr: outbound.local_addr()?,
        inbound_addr: inbound.local_addr()?,
        outbound_stats: Arc::default(),
        inbound_stats: Arc::default(),
        connector: connector.clone(),
    };
    let out = Arc::new(Outbound {
        snapshot: params.snapshot.clone(),
        connector: connector.clone(),
        metrics: params.metrics.clone(),
        workload: params.workload,
    });
    let inb = Arc::new(Inbound {
        snapshot: params.snapshot,
        connector,
        metrics: params.metrics,
        app_address: params.app_address,
    });
    tracker.spawn(transport::serve(
        outbound,
        out,
        dp.outbound_stats.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(transport::serve(
        inbound,
        inb,
        dp.inbound_stats.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    Ok(dp)
}

/// Runs the whole proxy until `shutdown`, then drains for up to `cfg.drain`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&cfg).await?;
    let admin_addr = listeners.admin.local_addr().context("admin address")?;

    let metrics = Arc::new(Metrics::new());
    let snapshot = SharedSnapshot::default();
    let (status_tx, status_rx) = watch::channel(XdsStatus {
        server: cfg.xds_addr.clone(),
        ..Default::default()
    });

    let tracker = TaskTracker::new();
    let dp = spawn_data_plane(
        listeners.outbound,
        listeners.inbound,
        DataPlaneParams {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            workload: Workload::from_node_id(&cfg.node_id),
            app_address: cfg.app_address,
        },
        &shutdown,
        &tracker,
    )
    .context("starting the data plane")?;

    let client = XdsClient::new(
        GrpcTransport {
            addr: cfg.xds_addr.clone(),
        },
        cfg.xds_mode,
        xds::node(&cfg.node_id),
        Applier::new(snapshot.clone()),
        status_tx,
        metrics.clone(),
    );
    // The xDS client is not tracked: it has nothing to drain.
    tokio::spawn(client.run(shutdown.clone()));

    tracker.spawn(admin::serve(
        listeners.admin,
        AdminState {
            node_id: cfg.node_id.clone(),
            snapshot,
            xds: status_rx,
            metrics,
        },
        shutdown.clone(),
    ));

    eprintln!(
        "weft-proxy {} listening: outbound={} inbound={} admin={}",
        cfg.node_id, dp.outbound_addr, dp.inbound_addr, admin_addr
    );

    shutdown.cancelled().await;
    tracker.close();
    if tokio::time::timeout(cfg.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::info!(drain = ?cfg.drain, "drain period over; closing remaining connections");
    }
    Ok(())
}
