//! One snapshot per connected proxy, regenerated when the model changes.
//!
//! The cache sees the model only through [`Generator`], so the xDS server can be tested with a
//! fake one. Each proxy's snapshot is published through a `watch`; a regeneration that yields the
//! same content publishes nothing, so only proxies whose resources actually changed wake up (and
//! their streams then send only the types, or resources, that changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshot;

/// Produces a proxy's resources from the current model. Implementations are pure with respect to
/// the model they hold: called twice with no model change, they return the same resources.
pub trait Generator: Send + Sync + 'static {
    /// The resources for the proxy whose `node.id` is `node_id`, or why there are none.
    fn generate(&self, node_id: &str) -> Result<Snapshot, String>;
}

/// Why a proxy cannot subscribe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The generator refused the node (a malformed id, for instance).
    #[error("cannot generate config for {node_id}: {reason}")]
    Generate { node_id: String, reason: String },
}

/// What a refresh did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Connected proxies whose snapshot was regenerated.
    pub nodes: usize,
    /// Of those, how many got a different snapshot.
    pub changed: usize,
    /// Of those, how many failed (their previous snapshot is kept).
    pub failed: usize,
}

#[derive(Debug)]
struct NodeEntry {
    tx: watch::Sender<Arc<Snapshot>>,
    streams: usize,
}

/// Per-proxy snapshots of connected proxies.
pub struct Cache {
    generator: Arc<dyn Generator>,
    nodes: Mutex<HashMap<String, NodeEntry>>,
    /// Serialises generation, so that a proxy connecting during a refresh cannot publish a
    /// snapshot built from an older model after the refresh published a newer one.
    generating: Mutex<()>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("nodes", &lock(&self.nodes).len())
            .finish_non_exhaustive()
    }
}

/// A proxy's view of its snapshot, held by each of its streams. Dropping the last subscription
/// of a node forgets the node.
#[derive(Debug)]
pub struct Subscription {
    node_id: String,
    rx: watch::Receiver<Arc<Snapshot>>,
    cache: Arc<Cache>,
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Cache ===

impl Cache {
    /// An empty cache over `generator`.
    pub fn new(generator: Arc<dyn Generator>) -> Arc<Self> {
        Arc::new(Self {
            generator,
            nodes: Mutex::new(HashMap::new()),
            generating: Mutex::new(()),
        })
    }

    /// Subscribes a stream of `node_id`, generating its snapshot from the current model (a
    /// connecting proxy always gets fresh config, even if no model change happened since).
    pub fn subscribe(self: &Arc<Self>, node_id: &str) -> Result<Subscription, CacheError> {
        let _generating = lock(&self.generating);
        let snapshot = self
            .generator
            .generate(node_id)
            .map_err(|reason| CacheError::Generate {
                node_id: node_id.to_string(),
                reason,
            })?;
        let mut nodes = lock(&self.nodes);
        let rx = match nodes.get_mut(node_id) {
            Some(entry) => {
                entry.streams += 1;
                publish(&entry.tx, snapshot);
                entry.tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(Arc::new(snapshot));
                nodes.insert(node_id.to_string(), NodeEntry { tx, streams: 1 });
                rx
            }
        };
        Ok(Subscription {
            node_id: node_id.to_string(),
            rx,
            cache: Arc::clone(self),
        })
    }

    /// Regenerates every connected proxy's snapshot; publishes only those that changed.
    pub fn refresh(&self) -> RefreshStats {
        let _generating = lock(&self.generating);
        let node_ids: Vec<String> = lock(&self.nodes).keys().cloned().collect();
        let mut stats = RefreshStats::default();
        for node_id in node_ids {
            // Generate without holding the map, so streams can come and go meanwhile.
            let generated = self.generator.generate(&node_id);
            stats.nodes += 1;
            let snapshot = match generated {
                Ok(s) => s,
                Err(reason) => {
                    stats.failed += 1;
                    tracing::error!(node = %node_id, %reason, "cannot generate config; the proxy keeps its previous config");
                    continue;
                }
            };
            if let Some(entry) = lock(&self.nodes).get(&node_id)
                && publish(&entry.tx, snapshot)
            {
                stats.changed += 1;
            }
        }
        stats
    }

    /// How many proxies have at least one stream.
    pub fn connected_nodes(&self) -> usize {
        lock(&self.nodes).len()
    }

    fn unsubscribe(&self, node_id: &str) {
        let mut nodes = lock(&self.nodes);
        if let Some(entry) = nodes.get_mut(node_id) {
            entry.streams -= 1;
            if entry.streams == 0 {
                nodes.remove(node_id);
            }
        }
    }
}

/// Publishes `snapshot` unless it has the same content as the current one; says whether it did.
fn publish(tx: &watch::Sender<Arc<Snapshot>>, snapshot: Snapshot) -> bool {
    tx.send_if_modified(|current| {
        if current.same_content(&snapshot) {
            false
        } else {
            *current = Arc::new(snapshot);
            true
        }
    })
}

/// Regenerates snapshots after model changes, debounced: a burst of changes (an editor saving
/// several files, a relist) costs one regeneration, `debounce` after the last change (but at
/// most `10 * debounce` after the first, so a steady trickle cannot starve pushes).
pub async fn run_refresh<T: Send + Sync>(
    cache: Arc<Cache>,
    mut changes: watch::Receiver<T>,
    debounce: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let deadline = tokio::time::Instant::now() + debounce * 10;
        loop {
            let quiet = tokio::time::sleep(debounce);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = quiet => break,
                _ = tokio::time::sleep_until(deadline) => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        changes.borrow_and_update();
        let cache = Arc::clone(&cache);
        // Translation is CPU work; keep it off the async workers.
        let stats = tokio::task::spawn_blocking(move || cache.refresh()).await;
        match stats {
            Ok(stats) => tracing::debug!(
                nodes = stats.nodes,
                changed = stats.changed,
                failed = stats.failed,
                "regenerated proxy config"
            ),
            Err(error) => tracing::error!(%error, "config regeneration panicked"),
        }
    }
}

// === impl Subscription ===

impl Subscription {
    /// The proxy's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The current snapshot, without marking it seen.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.rx.borrow())
    }

    /// Waits for a snapshot newer than the last one returned here, and returns it.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        self.rx.changed().await.ok()?;
        Some(Arc::clone(&self.rx.borrow_and_update()))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cache.unsubscribe(&self.node_id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use prost_types::Any;
    use weft_api::type_url::{CLUSTER, SERVICE};

    use super::*;
    use crate::xds::snapshot::Generated;

    /// Serves `SERVICE` with a body per node that tests can change.
    #[derive(Default)]
    struct FakeGen {
        bodies: Mutex<HashMap<String, String>>,
        calls: AtomicU64,
    }

    impl Generator for FakeGen {
        fn generate(&self, node_id: &str) -> Result<Snapshot, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let body = lock(&self.bodies)
                .get(node_id)
                .cloned()
                .ok_or_else(|| format!("unknown node {node_id}"))?;
            let any = Any {
                type_url: SERVICE.into(),
                value: body.into_bytes(),
            };
            Ok(Snapshot::from_generated(Generated::from([(
                SERVICE,
                BTreeMap::from([("svc".to_string(), any)]),
            )])))
        }
    }

    fn mk_cache(nodes: &[(&str, &str)]) -> (Arc<FakeGen>, Arc<Cache>) {
        let fake = Arc::new(FakeGen::default());
        for (n, b) in nodes {
            lock(&fake.bodies).insert((*n).into(), (*b).into());
        }
        let cache = Cache::new(fake.clone());
        (fake, cache)
    }

    #[test]
    fn subscribing_an_unknown_node_fails_with_the_generator_reason() {
        let (_, cache) = mk_cache(&[]);
        let err = cache.subscribe("x.ns").unwrap_err();
        assert!(err.to_string().contains("unknown node x.ns"), "{err}");
        assert_eq!(cache.connected_nodes(), 0);
    }

    #[test]
    fn only_changed_nodes_are_published() {
        let (fake, cache) = mk_cache(&[("a.ns", "1"), ("b.ns", "1")]);
        let a = cache.subscribe("a.ns").unwrap();
        let b = cache.subscribe("b.ns").unwrap();
        lock(&fake.bodies).insert("a.ns".into(), "2".into());
        let stats = cache.refresh();
        assert_eq!(
            stats,
            RefreshStats {
                nodes: 2,
                changed: 1,
                failed: 0
            }
        );
        assert!(a.rx.has_changed().unwrap());
        assert!(!b.rx.has_changed().unwrap());
        assert_ne!(
            a.current().get(SERVICE).version,
            b.current().get(SERVICE).version
        );
        assert_eq!(
            a.current().get(CLUSTER).version,
            b.current().get(CLUSTER).version
        );
    }

    #[test]
    fn a_failing_node_keeps_its_snapshot() {
        let (fake, cache) = mk_cache(&[("a.ns", "1")]);
        let a = cache.subscribe("a.ns").unwrap();
        let before = a.current();
        lock(&fake.bodies).clear();
        assert_eq!(cache.refresh().failed, 1);
        assert_eq!(a.current(), before);
    }

    #[test]
    fn the_last_stream_of_a_node_forgets_it() {
        let (_, cache) = mk_cache(&[("a.ns", "1")]);
        let s1 = cache.subscribe("a.ns").unwrap();
        let s2 = cache.subscribe("a.ns").unwrap();
        assert_eq!(cache.connected_nodes(), 1);
        drop(s1);
        assert_eq!(cache.connected_nodes(), 1);
        drop(s2);
        assert_eq!(cache.connected_nodes(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_burst_of_model_changes_costs_one_refresh() {
        let (fake, cache) = mk_cache(&[("a.ns", "1")]);
        let mut sub = cache.subscribe("a.ns").unwrap();
        let calls_after_subscribe = fake.calls.load(Ordering::SeqCst);
        let (tx, rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_refresh(
            cache.clone(),
            rx,
            Duration::from_millis(100),
            shutdown.clone(),
        ));
        lock(&fake.bodies).insert("a.ns".into(), "2".into());
        for g in 1..=5 {
            tx.send_replace(g);
            tokio::task::yield_now().await;
        }
        let snap = sub.changed().await.unwrap();
        assert_eq!(
            snap.get(SERVICE).resources["svc"].resource.value,
            b"2".to_vec()
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls_after_subscribe + 1);
        shutdown.cancel();
        task.await.unwrap();
    }
}
