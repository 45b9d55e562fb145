//! What each connected proxy has been sent and has acknowledged, for `/debug/syncz` and
//! `weftctl proxy-status`: the first place to look when a proxy does not behave as configured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use super::stream::TypeSync;

/// One stream of one proxy, as `/debug/syncz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxySync {
    /// The proxy's `node.id`, `<name>.<namespace>`.
    pub node_id: String,
    /// `"sotw"` or `"delta"`.
    pub stream: &'static str,
    /// When the stream opened, RFC 3339 UTC.
    pub connected_at: String,
    /// Per type URL: what was last sent, ACKed and NACKed.
    pub types: BTreeMap<String, TypeSync>,
}

/// All open streams. Streams write their own entry; the admin server reads a copy.
#[derive(Debug, Default)]
pub struct SyncRegistry {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, ProxySync>>,
}

/// Removes its stream's entry when the stream ends, however it ends.
#[derive(Debug)]
pub struct SyncEntry<'a> {
    id: u64,
    registry: &'a SyncRegistry,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl SyncRegistry ===

impl SyncRegistry {
    /// Registers a new stream.
    pub fn open(&self, node_id: &str, stream: &'static str) -> SyncEntry<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).insert(
            id,
            ProxySync {
                node_id: node_id.to_string(),
                stream,
                connected_at: rfc3339(SystemTime::now()),
                types: BTreeMap::new(),
            },
        );
        SyncEntry { id, registry: self }
    }

    /// Every open stream, ordered by node id.
    pub fn list(&self) -> Vec<ProxySync> {
        let mut all: Vec<ProxySync> = lock(&self.streams).values().cloned().collect();
        all.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        all
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        lock(&self.streams).len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl SyncEntry ===

impl SyncEntry<'_> {
    /// Replaces the stream's per-type state.
    pub fn update(&self, types: BTreeMap<String, TypeSync>) {
        if let Some(entry) = lock(&self.registry.streams).get_mut(&self.id) {
            entry.types = types;
        }
    }
}

impl Drop for SyncEntry<'_> {
    fn drop(&mut self) {
        lock(&self.registry.streams).remove(&self.id);
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn entries_leave_with_their_stream() {
        let r = SyncRegistry::default();
        let a = r.open("a.ns", "sotw");
        {
            let _b = r.open("b.ns", "delta");
            assert_eq!(r.len(), 2);
        }
        a.update(BTreeMap::from([("t".to_string(), TypeSync::default())]));
        let list = r.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].node_id, "a.ns");
        assert!(list[0].types.contains_key("t"));
    }
}
