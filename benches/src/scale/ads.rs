//! Simulated sidecars for W8: N ADS clients in this process, each on its own tonic `Channel`
//! (its own TCP connection), speaking exactly as `weft-proxy`'s client does: one wildcard
//! request per type of `weft_api::type_url::ALL` on open (SotW with the versions held, delta
//! with `initial_resource_versions`), then an ACK for every response, echoing its nonce (SotW
//! also its version). They never NACK: they apply nothing, they only watch for a change.
//!
//! A client reports two things to the orchestrator: when its stream is in sync (every type
//! answered and ACKed, or for a SotW resume every type already held), and when it has ACKed
//! the first response that carries the change being watched. The change is recognised by
//! content (the changed endpoint's new, never-used address in that cluster's `Endpoints`, or
//! the new weights in that host's `Service`), so an unrelated push cannot be taken for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use weft_api::core::Node;
use weft_api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_api::{mesh, type_url};

use super::agg::field1_str;

/// Which ADS variant the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delta,
    Sotw,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "delta" => Ok(Self::Delta),
            "sotw" => Ok(Self::Sotw),
            other => anyhow::bail!("unknown xDS mode {other:?}: expected delta or sotw"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Sotw => "sotw",
        }
    }
}

/// The content that shows a client has a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `Endpoints` of `cluster` lists `address`.
    Endpoint { cluster: String, address: String },
    /// `Service` `fqdn` has a route splitting `v1.1` / `v2.1` between clusters `v1.0` / `v2.0`.
    Route {
        fqdn: String,
        v1: (String, u32),
        v2: (String, u32),
    },
}

impl Probe {
    pub fn type_url(&self) -> &'static str {
        match self {
            Self::Endpoint { .. } => type_url::ENDPOINTS,
            Self::Route { .. } => type_url::SERVICE,
        }
    }

    /// The resource name the change is in.
    pub fn name(&self) -> &str {
        match self {
            Self::Endpoint { cluster, .. } => cluster,
            Self::Route { fqdn, .. } => fqdn,
        }
    }

    /// Whether the packed resource (`Any.value`) carries the change.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Endpoint { cluster, address } => mesh::Endpoints::decode(value).is_ok_and(|e| {
                &e.cluster == cluster && e.endpoints.iter().any(|ep| &ep.address == address)
            }),
            Self::Route { fqdn, v1, v2 } => mesh::Service::decode(value).is_ok_and(|s| {
                let has = |want: &(String, u32), r: &mesh::HttpRoute| {
                    r.clusters
                        .iter()
                        .any(|c| c.cluster == want.0 && c.weight == want.1)
                };
                &s.name == fqdn && s.http.iter().any(|r| has(v1, r) && has(v2, r))
            }),
        }
    }

    /// Whether a SotW response carries the change (only the named resource is decoded).
    pub fn in_sotw(&self, rsp: &DiscoveryResponse) -> bool {
        rsp.type_url == self.type_url()
            && rsp
                .resources
                .iter()
                .any(|a| field1_str(&a.value) == Some(self.name()) && self.matches(&a.value))
    }

    /// Whether a delta response carries the change.
    pub fn in_delta(&self, rsp: &DeltaDiscoveryResponse) -> bool {
        rsp.type_url == self.type_url()
            && rsp.resources.iter().any(|r| {
                r.name == self.name() && r.resource.as_ref().is_some_and(|a| self.matches(&a.value))
            })
    }
}

/// A change being watched for: its id and what it looks like.
#[derive(Debug)]
pub struct Watch {
    pub id: u64,
    pub probe: Probe,
}

/// What a client tells the orchestrator.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Stream `epoch` of `client` is in sync.
    Synced {
        client: usize,
        epoch: u64,
        at: Instant,
    },
    /// `client` ACKed the response carrying change `change`.
    Changed {
        client: usize,
        change: u64,
        at: Instant,
    },
}

/// Counters shared by every client.
#[derive(Debug, Default)]
pub struct Hub {
    /// Protobuf-encoded bytes of every response + 5 bytes of gRPC framing each.
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    /// The largest single response, in bytes (tonic's default decode limit is 4 MiB).
    pub max_response: AtomicU64,
    pub stream_errors: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Hub {
    fn count(&self, len: usize) {
        let len = len as u64 + 5;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        self.responses.fetch_add(1, Ordering::Relaxed);
        self.max_response.fetch_max(len, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        self.stream_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < 5
            && !errors.contains(&e)
        {
            errors.push(e);
        }
    }

    /// The first few distinct stream errors.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// N simulated proxies and the channels to steer and hear them.
#[derive(Debug)]
pub struct Fleet {
    pub hub: Arc<Hub>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    watch: watch::Sender<Option<Arc<Watch>>>,
    epoch: watch::Sender<u64>,
    events: mpsc::UnboundedReceiver<Event>,
}

struct ClientCtx {
    ix: usize,
    node: Node,
    uri: String,
    hub: Arc<Hub>,
    events: mpsc::UnboundedSender<Event>,
    watch: watch::Receiver<Option<Arc<Watch>>>,
    epoch: watch::Receiver<u64>,
    stop: CancellationToken,
    /// The last change reported, so each is reported once.
    reported: u64,
}

/// What a client holds across streams, as the real proxy's `SotwState` / `DeltaState`.
#[derive(Debug, Default)]
struct Held {
    /// SotW: type -> version last ACKed.
    versions: BTreeMap<&'static str, String>,
    /// Delta: type -> name -> version.
    resources: BTreeMap<&'static str, BTreeMap<String, String>>,
}

enum End {
    Stop,
    Reconnect,
    Error(String),
}

fn static_type(t: &str) -> &'static str {
    type_url::ALL
        .iter()
        .copied()
        .find(|k| *k == t)
        .unwrap_or("unknown")
}

/// The largest response the simulated clients accept. Higher than tonic's 4 MiB default
/// (which `weft-proxy` keeps) so that a large SotW response is measured rather than refused;
/// the report shows the largest response seen.
const MAX_DECODE: usize = 512 << 20;

/// The longest wait for one storm or one change, however steadily clients keep reporting.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

impl Fleet {
    /// Starts one client per node id, all at once, against plaintext ADS at `addr`.
    pub fn start(addr: SocketAddr, mode: Mode, node_ids: &[String]) -> Self {
        let hub = Arc::new(Hub::default());
        let stop = CancellationToken::new();
        let (watch_tx, watch_rx) = watch::channel(None);
        let (epoch_tx, epoch_rx) = watch::channel(0u64);
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for (ix, id) in node_ids.iter().enumerate() {
            let ctx = ClientCtx {
                ix,
                node: node(id),
                uri: format!("http://{addr}"),
                hub: Arc::clone(&hub),
                events: events_tx.clone(),
                watch: watch_rx.clone(),
                epoch: epoch_rx.clone(),
                stop: stop.clone(),
                reported: 0,
            };
            tasks.spawn(run_client(ctx, mode));
        }
        Self {
            hub,
            tasks,
            stop,
            watch: watch_tx,
            epoch: epoch_tx,
            events,
        }
    }

    /// Starts watching for a change; call before writing it.
    pub fn watch(&self, id: u64, probe: Probe) {
        self.watch.send_replace(Some(Arc::new(Watch { id, probe })));
    }

    /// Makes every client drop its connection and reconnect at once, resuming with what it
    /// holds; returns the new stream epoch.
    pub fn reconnect_all(&self) -> u64 {
        let mut next = 0;
        self.epoch.send_modify(|e| {
            *e += 1;
            next = *e;
        });
        next
    }

    /// Waits until `n` clients reported stream `epoch` in sync, or until no new one came
    /// within the time from now to `deadline` (at most [`MAX_WAIT`] in all); returns the
    /// milliseconds since `since` of each report.
    pub async fn synced(
        &mut self,
        epoch: u64,
        n: usize,
        since: Instant,
        deadline: Instant,
    ) -> Vec<f64> {
        self.collect(n, since, deadline, |e| match e {
            Event::Synced { epoch: got, at, .. } if got == epoch => Some(at),
            _ => None,
        })
        .await
    }

    /// Waits until `n` clients ACKed change `id`, with the same limits as [`Self::synced`].
    pub async fn changed(
        &mut self,
        id: u64,
        n: usize,
        since: Instant,
        deadline: Instant,
    ) -> Vec<f64> {
        self.collect(n, since, deadline, |e| match e {
            Event::Changed { change, at, .. } if change == id => Some(at),
            _ => None,
        })
        .await
    }

    async fn collect(
        &mut self,
        n: usize,
        since: Instant,
        deadline: Instant,
        want: impl Fn(Event) -> Option<Instant>,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        let mut seen = BTreeSet::new();
        // `deadline` bounds the wait for the first report and for each next one: a slow
        // control plane that still makes progress is waited for, up to MAX_WAIT, and one
        // that stalls is not.
        let stall = deadline.saturating_duration_since(Instant::now());
        let cap = Instant::now() + MAX_WAIT;
        let mut until = deadline;
        while out.len() < n {
            let event = tokio::select! {
                e = self.events.recv() => match e { Some(e) => e, None => break },
                _ = tokio::time::sleep_until(until.min(cap).into()) => break,
            };
            let client = match event {
                Event::Synced { client, .. } | Event::Changed { client, .. } => client,
            };
            if let Some(at) = want(event)
                && seen.insert(client)
            {
                out.push(at.saturating_duration_since(since).as_secs_f64() * 1e3);
                until = Instant::now() + stall;
            }
        }
        out
    }

    /// Waits until no response has arrived for `quiet` (at most `max`); says whether it got
    /// quiet.
    pub async fn quiesce(&self, quiet: Duration, max: Duration) -> bool {
        let end = Instant::now() + max;
        let mut last = self.hub.responses.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.hub.responses.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return true;
            }
        }
        false
    }

    /// Stops every client and waits for them to close their connections.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The `Node` as `weft-proxy` sends it.
fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        user_agent_name: "weft-proxy".to_string(),
        user_agent_version_type: Some(
            weft_api::core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ),
        ..Default::default()
    }
}

async fn run_client(mut ctx: ClientCtx, mode: Mode) {
    let mut held = Held::default();
    loop {
        let epoch = *ctx.epoch.borrow_and_update();
        let end = match mode {
            Mode::Delta => delta_stream(&mut ctx, &mut held, epoch).await,
            Mode::Sotw => sotw_stream(&mut ctx, &mut held, epoch).await,
        };
        match end {
            End::Stop => return,
            End::Reconnect => {}
            End::Error(e) => {
                ctx.hub.error(e);
                // As the real client: back off (spread by client so retries do not stampede).
                let delay = Duration::from_millis(100 + (ctx.ix as u64 * 37) % 400);
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn grpc_client(
    uri: &str,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("bad xDS address {uri}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30));
    // A new lazy channel per stream: its own TCP connection, opened by the first call.
    Ok(
        AggregatedDiscoveryServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_DECODE),
    )
}

impl ClientCtx {
    fn synced(&self, epoch: u64) {
        let _ = self.events.send(Event::Synced {
            client: self.ix,
            epoch,
            at: Instant::now(),
        });
    }

    /// The change being watched, if this client has not reported it yet.
    fn watching(&self) -> Option<Arc<Watch>> {
        self.watch
            .borrow()
            .as_ref()
            .filter(|w| w.id != self.reported)
            .cloned()
    }

    /// After the ACK of a response of type `t`: reports the watched change if the response
    /// carried it, and the sync once every type awaited on this stream has arrived.
    fn acked(
        &mut self,
        hit: Option<u64>,
        pending: &mut BTreeSet<&'static str>,
        t: &'static str,
        epoch: u64,
    ) {
        if let Some(id) = hit {
            self.changed(id);
        }
        if pending.remove(t) && pending.is_empty() {
            self.synced(epoch);
        }
    }

    fn changed(&mut self, id: u64) {
        self.reported = id;
        let _ = self.events.send(Event::Changed {
            client: self.ix,
            change: id,
            at: Instant::now(),
        });
    }
}

async fn delta_stream(ctx: &mut ClientCtx, held: &mut Held, epoch: u64) -> End {
    let mut client = match grpc_client(&ctx.uri) {
        Ok(c) => c,
        Err(e) => return End::Error(e),
    };
    let (tx, rx) = mpsc::channel(16);
    for t in sorted_types() {
        let initial = held
            .resources
            .get(t)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let _ = tx.try_send(DeltaDiscoveryRequest {
            node: Some(ctx.node.clone()),
            type_url: t.to_string(),
            initial_resource_versions: initial,
            ..Default::default()
        });
    }
    let opened = tokio::select! {
        _ = ctx.stop.cancelled() => return End::Stop,
        r = client.delta_aggregated_resources(ReceiverStream::new(rx)) => r,
    };
    let mut inbound = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return End::Error(format!(
                "delta stream failed: {}: {}",
                s.code(),
                s.message()
            ));
        }
    };
    // The server answers the first request of every type, even with nothing to send.
    let mut pending: BTreeSet<&'static str> = type_url::ALL.iter().copied().collect();
    loop {
        let msg = tokio::select! {
            _ = ctx.stop.cancelled() => return End::Stop,
            _ = ctx.epoch.changed() => return End::Reconnect,
            m = inbound.message() => m,
        };
        let rsp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return End::Error("control plane closed the stream".into()),
            Err(s) => {
                return End::Error(format!(
                    "delta stream failed: {}: {}",
                    s.code(),
                    s.message()
                ));
            }
        };
        ctx.hub.count(rsp.encoded_len());
        let t = static_type(&rsp.type_url);
        let hit = ctx
            .watching()
            .filter(|w| w.probe.in_delta(&rsp))
            .map(|w| w.id);
        let versions = held.resources.entry(t).or_default();
        for r in &rsp.resources {
            versions.insert(r.name.clone(), r.version.clone());
        }
        for name in &rsp.removed_resources {
            versions.remove(name);
        }
        let ack = DeltaDiscoveryRequest {
            node: Some(ctx.node.clone()),
            type_url: rsp.type_url.clone(),
            response_nonce: rsp.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return End::Error("request stream closed".into());
        }
        ctx.acked(hit, &mut pending, t, epoch);
    }
}

async fn sotw_stream(ctx: &mut ClientCtx, held: &mut Held, epoch: u64) -> End {
    let mut client = match grpc_client(&ctx.uri) {
        Ok(c) => c,
        Err(e) => return End::Error(e),
    };
    let (tx, rx) = mpsc::channel(16);
    // Types held from an earlier stream get no answer if still current: only the others are
    // waited for.
    let mut pending = BTreeSet::new();
    for t in sorted_types() {
        let version = held.versions.get(t).cloned().unwrap_or_default();
        if version.is_empty() {
            pending.insert(t);
        }
        let _ = tx.try_send(DiscoveryRequest {
            version_info: version,
            node: Some(ctx.node.clone()),
            type_url: t.to_string(),
            ..Default::default()
        });
    }
    let opened = tokio::select! {
        _ = ctx.stop.cancelled() => return End::Stop,
        r = client.stream_aggregated_resources(ReceiverStream::new(rx)) => r,
    };
    let mut inbound = match opened {
        Ok(r) => r.into_inner(),
        Err(s) => return End::Error(format!("sotw stream failed: {}: {}", s.code(), s.message())),
    };
    if pending.is_empty() {
        ctx.synced(epoch);
    }
    loop {
        let msg = tokio::select! {
            _ = ctx.stop.cancelled() => return End::Stop,
            _ = ctx.epoch.changed() => return End::Reconnect,
            m = inbound.message() => m,
        };
        let rsp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return End::Error("control plane closed the stream".into()),
            Err(s) => {
                return End::Error(format!("sotw stream failed: {}: {}", s.code(), s.message()));
            }
        };
        ctx.hub.count(rsp.encoded_len());
        let t = static_type(&rsp.type_url);
        let hit = ctx
            .watching()
            .filter(|w| w.probe.in_sotw(&rsp))
            .map(|w| w.id);
        held.versions.insert(t, rsp.version_info.clone());
        let ack = DiscoveryRequest {
            version_info: rsp.version_info.clone(),
            node: Some(ctx.node.clone()),
            type_url: rsp.type_url.clone(),
            response_nonce: rsp.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return End::Error("request stream closed".into());
        }
        ctx.acked(hit, &mut pending, t, epoch);
    }
}

/// `type_url::ALL` in the order the real proxy sends its first requests (it keeps them in a
/// `BTreeMap` keyed by type URL).
fn sorted_types() -> Vec<&'static str> {
    let mut all = type_url::ALL.to_vec();
    all.sort_unstable();
    all
}

#[cfg(test)]
mod tests {
    use weft_api::discovery::Resource;
    use weft_api::type_url::Resource as _;

    use super::*;

    fn endpoints(cluster: &str, addrs: &[&str]) -> mesh::Endpoints {
        mesh::Endpoints {
            cluster: cluster.into(),
            endpoints: addrs
                .iter()
                .map(|a| mesh::Endpoint {
                    address: (*a).into(),
                    port: 8080,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn service(fqdn: &str, w1: u32) -> mesh::Service {
        let wc = |subset: &str, weight| mesh::WeightedCluster {
            cluster: format!("outbound|8080|{subset}|{fqdn}"),
            weight,
        };
        mesh::Service {
            name: fqdn.into(),
            http: vec![mesh::HttpRoute {
                clusters: vec![wc("v1", w1), wc("v2", 100 - w1)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ep_probe() -> Probe {
        Probe::Endpoint {
            cluster: "c1".into(),
            address: "10.128.0.1".into(),
        }
    }

    #[test]
    fn an_endpoint_change_is_seen_only_in_its_cluster() {
        let p = ep_probe();
        let sotw = |list: Vec<mesh::Endpoints>| DiscoveryResponse {
            type_url: type_url::ENDPOINTS.into(),
            resources: list.iter().map(|e| e.to_any()).collect(),
            ..Default::default()
        };
        // The address elsewhere, or the cluster without it: not the change.
        assert!(!p.in_sotw(&sotw(vec![
            endpoints("c0", &["10.128.0.1"]),
            endpoints("c1", &["10.0.0.1"]),
        ])));
        assert!(p.in_sotw(&sotw(vec![
            endpoints("c0", &["10.0.0.2"]),
            endpoints("c1", &["10.0.0.1", "10.128.0.1"]),
        ])));
        // The right content under another type URL is not it either.
        let mut wrong = sotw(vec![endpoints("c1", &["10.128.0.1"])]);
        wrong.type_url = type_url::CLUSTER.into();
        assert!(!p.in_sotw(&wrong));

        let delta = |name: &str, e: mesh::Endpoints| DeltaDiscoveryResponse {
            type_url: type_url::ENDPOINTS.into(),
            resources: vec![Resource {
                name: name.into(),
                version: "1".into(),
                resource: Some(e.to_any()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(p.in_delta(&delta("c1", endpoints("c1", &["10.128.0.1"]))));
        assert!(!p.in_delta(&delta("c1", endpoints("c1", &["10.0.0.1"]))));
        assert!(!p.in_delta(&delta("c2", endpoints("c2", &["10.128.0.1"]))));
    }

    #[test]
    fn a_route_change_needs_both_new_weights() {
        let fqdn = "svc-00000.bench.svc.cluster.local";
        let p = Probe::Route {
            fqdn: fqdn.into(),
            v1: (format!("outbound|8080|v1|{fqdn}"), 80),
            v2: (format!("outbound|8080|v2|{fqdn}"), 20),
        };
        let rsp = |s: mesh::Service| DiscoveryResponse {
            type_url: type_url::SERVICE.into(),
            resources: vec![s.to_any()],
            ..Default::default()
        };
        assert!(p.in_sotw(&rsp(service(fqdn, 80))));
        assert!(!p.in_sotw(&rsp(service(fqdn, 90))));
        assert!(!p.in_sotw(&rsp(service("other.bench.svc.cluster.local", 80))));
        assert_eq!(p.type_url(), type_url::SERVICE);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("delta").unwrap(), Mode::Delta);
        assert_eq!(Mode::parse("sotw").unwrap().as_str(), "sotw");
        assert!(Mode::parse("incremental").is_err());
    }

    #[test]
    fn first_requests_follow_the_proxy_order() {
        let t = sorted_types();
        assert_eq!(t.len(), 5);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }
}
