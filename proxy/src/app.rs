//! Wiring only: listeners, the xDS client, the data plane and the admin server, started in
//! that order. Knows every module; no module knows it.
//!
//! Shutdown is a drain, in this order: the data-plane listeners close (a new connect is
//! refused), `/ready` turns 503, open connections are asked to finish (HTTP/2 GOAWAY,
//! `Connection: close` on HTTP/1.1) and get up to `Config::drain`; then the admin server, xDS
//! and certificate rotation stop. They outlive the listeners on purpose: `/live` must stay 200
//! and `/ready` report the drain until the exit, and long requests still need config and a
//! valid certificate.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, Lifecycle};
use crate::identity::{
    CertStore, GrpcCaClient, MeshTls, RetryPolicy, Rotator, TokenFile, Trust, TrustBundle,
};
use crate::inbound::{Inbound, InboundAccept, InboundIntercepted};
use crate::model::SharedSnapshot;
use crate::outbound::{Outbound, Transparent, Workload};
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
    /// How long in-flight requests get to finish on shutdown; what is still open then is
    /// closed.
    pub drain: Duration,
    /// The bound on protocol detection of intercepted connections (both listeners).
    pub detect_timeout: Duration,
    /// mTLS bootstrap; `None` runs without identity (plaintext, issue 2 behaviour).
    pub identity: Option<IdentityConfig>,
}

/// Where the proxy's identity comes from.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// PEM root(s) of the control plane and the initial trust bundle.
    pub ca_root: std::path::PathBuf,
    /// `{"token", "identity", "node_id"}` written by `weftctl up`.
    pub token_file: std::path::PathBuf,
    /// The CA's `host:port` (defaults to the xDS address).
    pub ca_addr: String,
    /// Requested certificate lifetime; zero: the CA's default.
    pub cert_validity: Duration,
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
        let data = data_plane_address(cfg.address);
        Ok(Self {
            outbound: bind_data(data, cfg.outbound_port, "outbound").await?,
            inbound: bind_data(data, cfg.inbound_port, "inbound").await?,
            admin: transport::bind(at(cfg.admin_port), "admin").await?,
        })
    }
}

/// Where the outbound and inbound listeners bind for a workload at `address`.
///
/// A loopback address is local mode: several proxies share the host, each on its own
/// 127.0.0.x, so each binds exactly its own. Any other address is a pod IP with
/// interception: `weft-proxy init`'s OUTPUT REDIRECT sends the app's connections to the
/// loopback address (127.0.0.1 or ::1, by the family of the app's destination), PREROUTING
/// sends peers' to the pod IP, so the listeners bind `[::]` accepting both families (see
/// [`bind_data`]; a pod's app may call v4 and v6 destinations whatever the pod's own
/// address), as Envoy's do in Istio; the pod's network namespace is the proxy's own. An
/// explicit unspecified address is kept as given. The admin port stays on `address`.
pub fn data_plane_address(address: IpAddr) -> IpAddr {
    use std::net::Ipv6Addr;
    match address {
        a if a.is_loopback() || a.is_unspecified() => a,
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Binds a data-plane listener at `ip:port`. `[::]` is bound dual-stack (IPV6_V6ONLY off,
/// whatever `net.ipv6.bindv6only` says), so v4 connections arrive as v4-mapped peers (the
/// servers normalise them back to v4); on a kernel without IPv6 it falls back to `0.0.0.0`.
async fn bind_data(
    ip: IpAddr,
    port: u16,
    what: &'static str,
) -> Result<TcpListener, transport::BindError> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let addr = SocketAddr::new(ip, port);
    if ip != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return transport::bind(addr, what).await;
    }
    match dual_stack_listener(addr) {
        Ok(listener) => Ok(listener),
        // Taken is taken: report it as such rather than binding v4 only.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => transport::bind(addr, what).await,
        Err(e) => {
            tracing::info!(listener = what, error = %e, "cannot bind [::] (no IPv6?); binding 0.0.0.0");
            transport::bind(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                what,
            )
            .await
        }
    }
}

fn dual_stack_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A running data plane (outbound + inbound listeners), for `run` and for tests.
#[derive(Debug)]
pub struct DataPlane {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub outbound_stats: Arc<ServerStats>,
    pub inbound_stats: Arc<ServerStats>,
    pub connector: Connector,
    /// One per listener, cancelled once that listener is closed (its accept loop returned).
    closed: Vec<CancellationToken>,
}

impl DataPlane {
    /// Resolves once both listeners are closed, which follows shutdown at once: from then on
    /// a new connect to either port is refused.
    pub async fn listeners_closed(&self) {
        for c in &self.closed {
            c.cancelled().await;
        }
    }
}

/// What the data plane needs besides its listeners.
#[derive(Debug, Clone)]
pub struct DataPlaneParams {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub workload: Workload,
    pub app_address: IpAddr,
    /// mTLS for the mesh hop (both directions); `None`: plaintext only.
    pub tls: Option<Arc<MeshTls>>,
}

/// How both listeners treat redirected (intercepted) connections.
#[derive(Clone)]
pub struct Interception {
    /// Reads a connection's original destination: SO_ORIGINAL_DST in production; tests
    /// inject their own so interception needs no root.
    pub orig_dst: Arc<dyn transport::OrigDst>,
    /// The bound on protocol detection (`--detect-timeout`), outbound and inbound.
    pub detect_timeout: Duration,
    /// Listener addresses of this proxy besides the data plane's (the admin port), for the
    /// loop guard.
    pub other_own_addrs: Vec<SocketAddr>,
}

impl Default for Interception {
    fn default() -> Self {
        Self {
            orig_dst: Arc::new(transport::SoOriginalDst),
            detect_timeout: crate::outbound::DEFAULT_DETECT_TIMEOUT,
            other_own_addrs: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Interception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interception")
            .field("detect_timeout", &self.detect_timeout)
            .field("other_own_addrs", &self.other_own_addrs)
            .finish_non_exhaustive()
    }
}

/// Starts serving on already-bound listeners; returns at once.
pub fn spawn_data_plane(
    outbound: TcpListener,
    inbound: TcpListener,
    params: DataPlaneParams,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<DataPlane> {
    spawn_data_plane_with(
        outbound,
        inbound,
        params,
        Interception::default(),
        shutdown,
        tracker,
    )
}

/// [`spawn_data_plane`] with explicit interception settings.
pub fn spawn_data_plane_with(
    outbound: TcpListener,
    inbound: TcpListener,
    params: DataPlaneParams,
    interception: Interception,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<DataPlane> {
    let connector = Connector::with_tls(
        Duration::from_secs(5),
        params
            .tls
            .clone()
            .map(|t| t as Arc<dyn crate::transport::MeshClientTls>),
        Some(params.metrics.clone()),
    );
    let (outbound_closed, inbound_closed) = (CancellationToken::new(), CancellationToken::new());
    let dp = DataPlane {
        outbound_addr: outbound.local_addr()?,
        inbound_addr: inbound.local_addr()?,
        outbound_stats: Arc::default(),
        inbound_stats: Arc::default(),
        connector: connector.clone(),
        closed: vec![outbound_closed.clone(), inbound_closed.clone()],
    };
    let out = Arc::new(Outbound {
        snapshot: params.snapshot.clone(),
        connector: connector.clone(),
        metrics: params.metrics.clone(),
        workload: params.workload,
        mtls: params.tls.is_some(),
    });
    let accept = Arc::new(InboundAccept {
        snapshot: params.snapshot.clone(),
        tls: params
            .tls
            .clone()
            .map(|t| t as Arc<dyn crate::transport::MeshServerTls>),
        metrics: params.metrics.clone(),
    });
    let inb = Arc::new(Inbound {
        snapshot: params.snapshot,
        connector,
        metrics: params.metrics,
        app_address: params.app_address,
    });
    let inb_intercepted = Arc::new(InboundIntercepted {
        inbound: inb.clone(),
        accept: accept.clone(),
        detect_timeout: interception.detect_timeout,
    });
    // The guards fire when the accept loops return, and the listeners are dropped before
    // that: whoever waits on `closed` knows the ports refuse connections.
    let mut own_addrs = vec![dp.outbound_addr, dp.inbound_addr];
    own_addrs.extend(interception.other_own_addrs);
    let transparent = Arc::new(Transparent {
        outbound: out.clone(),
        detect_timeout: interception.detect_timeout,
        own_addrs,
    });
    let serve_out = transport::serve_intercepting(
        outbound,
        out,
        transparent,
        interception.orig_dst.clone(),
        dp.outbound_stats.clone(),
        shutdown.clone(),
        tracker.clone(),
        transport::ServerTimeouts::default(),
    );
    tracker.spawn(async move {
        let _closed = outbound_closed.drop_guard();
        serve_out.await;
    });
    let serve_in = transport::serve_tls(
        inbound,
        inb,
        accept,
        inb_intercepted,
        interception.orig_dst,
        dp.inbound_stats.clone(),
        shutdown.clone(),
        tracker.clone(),
        transport::ServerTimeouts::default(),
    );
    tracker.spawn(async move {
        let _closed = inbound_closed.drop_guard();
        serve_in.await;
    });
    Ok(dp)
}

/// Runs the whole proxy until `shutdown` (SIGTERM, or `POST /quitquitquit`, which cancels
/// it too), then drains for up to `cfg.drain` and returns.
///
/// Returning closes what `run` owns (admin, xDS, rotation); connections still open after the
/// drain time are closed by the caller's runtime ending, as the binary's does at exit.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&cfg).await?;
    let admin_addr = listeners.admin.local_addr().context("admin address")?;
    // Stops what outlives the drain. The guard also stops it when an error returns early.
    let exit = CancellationToken::new();
    let _exit = exit.clone().drop_guard();
    let lifecycle = Lifecycle::new(shutdown.clone());

    let metrics = Arc::new(Metrics::new());
    let snapshot = SharedSnapshot::default();
    let (status_tx, status_rx) = watch::channel(XdsStatus {
        server: cfg.xds_addr.clone(),
        ..Default::default()
    });

    let ident = match &cfg.identity {
        Some(ic) => Some(start_identity(ic, &cfg, &snapshot, &metrics, &exit)?),
        None => {
            tracing::warn!(
                "RUNNING WITHOUT IDENTITY: no --ca-root given, so xDS and the mesh hop are \
                 PLAINTEXT and peers are not authenticated. This mode is for the transition \
                 only and will be removed."
            );
            None
        }
    };

    let tracker = TaskTracker::new();
    let dp = spawn_data_plane_with(
        listeners.outbound,
        listeners.inbound,
        DataPlaneParams {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            workload: Workload::from_node_id(&cfg.node_id),
            app_address: cfg.app_address,
            tls: ident.as_ref().map(|i| i.tls.clone()),
        },
        Interception {
            detect_timeout: cfg.detect_timeout,
            other_own_addrs: vec![admin_addr],
            ..Interception::default()
        },
        &shutdown,
        &tracker,
    )
    .context("starting the data plane")?;

    let transport = match &ident {
        Some(i) => {
            let store = i.tls.store().clone();
            GrpcTransport::with_tls(
                cfg.xds_addr.clone(),
                i.ca_root_pem.clone(),
                Arc::new(move || store.tonic_identity()),
            )
        }
        None => GrpcTransport::plaintext(cfg.xds_addr.clone()),
    };
    let client = XdsClient::new(
        transport,
        cfg.xds_mode,
        xds::node(&cfg.node_id),
        Applier::new(snapshot.clone()),
        status_tx,
        metrics.clone(),
    );
    // The xDS client is not tracked: it has nothing to drain. With an identity it waits
    // (briefly) for the first certificate, so the control plane can authenticate the stream
    // by it; if the CA is slow, xDS starts without and presents it on its next reconnect.
    let first_cert = ident.as_ref().map(|i| i.tls.store().subscribe());
    let xds_shutdown = exit.clone();
    tokio::spawn(async move {
        if let Some(mut rx) = first_cert {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
        }
        client.run(xds_shutdown).await;
    });

    // Not tracked: the drain waits for data-plane connections only, and the admin server
    // has to answer (/ready 503, /live 200) for as long as the drain lasts.
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        AdminState {
            node_id: cfg.node_id.clone(),
            snapshot,
            xds: status_rx,
            metrics,
            cert: ident.as_ref().map(|i| i.tls.store().subscribe()),
            lifecycle: lifecycle.clone(),
        },
        exit.clone(),
    ));

    eprintln!(
        "weft-proxy {} listening: outbound={} inbound={} admin={}",
        cfg.node_id, dp.outbound_addr, dp.inbound_addr, admin_addr
    );

    shutdown.cancelled().await;
    drain(&cfg, &dp, &lifecycle, &tracker).await;
    exit.cancel();
    // The admin server's graceful stop waits for its open connections (a probe's kept-alive
    // one, say); bound it, the process is leaving.
    let admin_abort = admin_task.abort_handle();
    if tokio::time::timeout(ADMIN_STOP, admin_task).await.is_err() {
        admin_abort.abort();
    }
    Ok(())
}

/// How long the admin server gets to close its connections at exit.
const ADMIN_STOP: Duration = Duration::from_secs(1);

/// The drain proper, once `shutdown` fired (the data plane has seen it too).
async fn drain(cfg: &Config, dp: &DataPlane, lifecycle: &Lifecycle, tracker: &TaskTracker) {
    // The accept loops return at once; only then does `/ready` say so, so a client that saw
    // the 503 also finds the ports closed.
    dp.listeners_closed().await;
    lifecycle.start_draining();
    // On stderr whatever the log filter, like the "listening" line: tests and operators
    // synchronise on it.
    eprintln!(
        "weft-proxy {}: draining: listeners closed, /ready answers 503; open connections get \
         up to {:?}",
        cfg.node_id, cfg.drain
    );
    tracker.close();
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(cfg.drain, tracker.wait()).await {
        Ok(()) => tracing::info!(took = ?started.elapsed(), "drained: every connection closed"),
        Err(_) => tracing::info!(
            drain = ?cfg.drain,
            // The tracker also counts connections' helper tasks; close enough for a log line.
            still_open = tracker.len(),
            "drain time over; closing the remaining connections"
        ),
    }
}

/// The identity side of a running proxy.
struct RunningIdentity {
    tls: Arc<MeshTls>,
    ca_root_pem: String,
}

/// Reads the bootstrap files, then starts the rotation loop (which gets the first certificate).
fn start_identity(
    ic: &IdentityConfig,
    cfg: &Config,
    snapshot: &SharedSnapshot,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunningIdentity> {
    let ca_root_pem = std::fs::read_to_string(&ic.ca_root)
        .with_context(|| format!("reading --ca-root {}", ic.ca_root.display()))?;
    let bundle = TrustBundle::from_pems(&[ca_root_pem.as_str()])
        .map_err(|e| anyhow::anyhow!("--ca-root {}: {e}", ic.ca_root.display()))?;
    let (token, id) = TokenFile::read(&ic.token_file)?;
    if !token.node_id.is_empty() && token.node_id != cfg.node_id {
        anyhow::bail!(
            "token file {} is for node {:?}, but this proxy is --node-id {:?}",
            ic.token_file.display(),
            token.node_id,
            cfg.node_id
        );
    }
    let store = CertStore::default();
    let trust = Arc::new(Trust::new(bundle, snapshot.clone()));
    let tls = Arc::new(MeshTls::new(store.clone(), trust).context("building TLS configs")?);
    let ca = GrpcCaClient::new(&ic.ca_addr, &ca_root_pem, token.token.clone())
        .map_err(|e| anyhow::anyhow!("CA client: {e}"))?;
    tracing::info!(identity = %id, ca = %ic.ca_addr, "requesting a certificate");
    let rotator = Rotator {
        ca,
        id,
        store,
        metrics: metrics.clone(),
        retry: RetryPolicy::default(),
        validity: ic.cert_validity,
    };
    tokio::spawn(rotator.run(shutdown.clone()));
    Ok(RunningIdentity { tls, ca_root_pem })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::data_plane_address;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_mode_binds_its_own_loopback_address_and_pods_bind_every_address() {
        assert_eq!(data_plane_address(ip("127.0.10.3")), ip("127.0.10.3"));
        assert_eq!(data_plane_address(ip("::1")), ip("::1"));
        assert_eq!(data_plane_address(ip("10.1.2.3")), ip("::"));
        assert_eq!(data_plane_address(ip("fd00::5")), ip("::"));
        assert_eq!(data_plane_address(ip("0.0.0.0")), ip("0.0.0.0"));
    }

    /// A pod's listener takes the app's redirected connections of both families.
    #[tokio::test]
    async fn a_pod_listener_accepts_v4_and_v6_connections() {
        let l = super::bind_data(data_plane_address(ip("10.1.2.3")), 0, "outbound")
            .await
            .unwrap();
        let port = l.local_addr().unwrap().port();
        let mut want = vec![ip("127.0.0.1")];
        if l.local_addr().unwrap().is_ipv6() {
            want.push(ip("::1"));
        }
        for at in want {
            let _c = tokio::net::TcpStream::connect((at, port)).await.unwrap();
            let (_s, peer) = l.accept().await.unwrap();
            assert_eq!(peer.ip().to_canonical(), at);
        }
    }
}
