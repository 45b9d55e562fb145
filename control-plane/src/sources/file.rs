//! The file source: a directory of YAML, watched, as local mode's stand-in for `kubectl apply`.
//!
//! Every change, however it arrives (write in place, editor's write-to-temp-then-rename, a moved
//! directory, a deletion), triggers a debounced rescan of the whole directory that compares file
//! contents with what was last applied. Rescanning instead of interpreting individual notify
//! events is what makes renames and editors' tricks boring; config directories are small.
//!
//! A bad document only produces diagnostics; the source keeps running, and the index keeps the
//! last good version of the objects it rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ConfigDiagnostic, ConfigState, ConfigStore, Severity};

/// Why the file source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// `--config-dir` is missing or not a directory.
    #[error("config directory {} does not exist or is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The OS refused the watch (inotify limits, permissions).
    #[error("cannot watch {}: {source}", .dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// The initial load task died.
    #[error("initial config load failed: {0}")]
    Load(String),
}

/// The state of a directory between rescans.
#[derive(Debug)]
struct Dir<S> {
    root: PathBuf,
    store: S,
    /// Content hash of each file as last applied.
    applied: BTreeMap<PathBuf, u64>,
    /// Diagnostics as last published, to log only what is new.
    published: BTreeSet<String>,
    generation: u64,
    state: watch::Sender<ConfigState>,
}

/// Loads `dir` into `store`, publishes generation 1 through `state`, then keeps watching `dir`
/// until `shutdown`. Returns once the initial load is published; the watch runs in the returned
/// task.
pub async fn start<S: ConfigStore>(
    dir: PathBuf,
    store: S,
    state: watch::Sender<ConfigState>,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, FileSourceError> {
    if !dir.is_dir() {
        return Err(FileSourceError::NotADirectory(dir));
    }
    // Watch before the first scan, so that a change during the scan is not lost. Events carry
    // nothing (the rescan finds what changed), so one pending signal is enough: a full channel
    // already guarantees a rescan, and a burst of events costs no memory.
    let (tx, events) = mpsc::channel(1);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(error) => tracing::warn!(%error, "config directory watch error"),
        })
        .map_err(|source| FileSourceError::Watch {
            dir: dir.clone(),
            source,
        })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| FileSourceError::Watch {
            dir: dir.clone(),
            source,
        })?;

    let mut src = Dir {
        root: dir,
        store,
        applied: BTreeMap::new(),
        published: BTreeSet::new(),
        generation: 0,
        state,
    };
    let src = tokio::task::spawn_blocking(move || {
        src.rescan(true);
        src
    })
    .await
    .map_err(|e| FileSourceError::Load(e.to_string()))?;

    Ok(tokio::spawn(watch_loop(
        src, watcher, events, debounce, shutdown,
    )))
}

async fn watch_loop<S: ConfigStore>(
    mut src: Dir<S>,
    // Held so the watch lasts as long as the loop.
    _watcher: notify::RecommendedWatcher,
    mut events: mpsc::Receiver<()>,
    debounce: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => if e.is_none() { return },
        }
        // Debounce: editors and `cp -r` produce bursts; rescan once they go quiet, or at most
        // `10 * debounce` after the first event, so that a file written continuously somewhere
        // in the directory (a log, say) cannot hold back every other change.
        let deadline = tokio::time::Instant::now() + debounce * 10;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(debounce) => break,
                _ = tokio::time::sleep_until(deadline) => break,
                e = events.recv() => if e.is_none() { return },
            }
        }
        src = match tokio::task::spawn_blocking(move || {
            src.rescan(false);
            src
        })
        .await
        {
            Ok(src) => src,
            Err(error) => {
                tracing::error!(%error, "config rescan panicked; the file source stops");
                return;
            }
        };
    }
}

// === impl Dir ===

impl<S: ConfigStore> Dir<S> {
    /// Applies what changed since the last rescan; publishes a new generation if anything did
    /// (or always, for the initial load, so that readiness does not wait for a change).
    fn rescan(&mut self, initial: bool) {
        let mut found = BTreeMap::new();
        let mut unlisted = Vec::new();
        find_yaml(&self.root, &mut found, &mut unlisted);
        let mut changed = BTreeSet::new();

        for (path, text) in &found {
            let text = match text {
                Ok(text) => text,
                // Unreadable (permissions, a half-written non-UTF-8 file): keep what was applied.
                Err(error) => {
                    tracing::error!("{}: cannot read: {error}", path.display());
                    continue;
                }
            };
            let hash = content_hash(text);
            if self.applied.get(path) != Some(&hash) {
                tracing::debug!(file = %path.display(), "applying");
                self.store.apply_file(path, text);
                self.applied.insert(path.clone(), hash);
                changed.insert(path.clone());
            }
        }
        // A directory that cannot be listed (the root replaced or gone, permissions) is not
        // evidence that its files were deleted: they keep their last applied content, as
        // unreadable files do, rather than withdrawing config from every proxy.
        let gone: Vec<PathBuf> = self
            .applied
            .keys()
            .filter(|p| !found.contains_key(*p))
            .filter(|p| !unlisted.iter().any(|dir| p.starts_with(dir)))
            .cloned()
            .collect();
        for path in gone {
            tracing::debug!(file = %path.display(), "removing");
            self.store.remove_file(&path);
            self.applied.remove(&path);
            changed.insert(path);
        }

        if changed.is_empty() && !initial {
            return;
        }
        self.store.publish();
        let diagnostics = self.store.diagnostics();
        self.log(&diagnostics, &changed);
        self.published = diagnostics.iter().map(|d| d.text.clone()).collect();
        self.generation += 1;
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        tracing::info!(
            generation = self.generation,
            files = self.applied.len(),
            changed = changed.len(),
            errors,
            "config loaded"
        );
        self.state.send_replace(ConfigState {
            generation: self.generation,
            diagnostics: Arc::from(diagnostics),
        });
    }

    /// Logs diagnostics of the files just changed (still wrong after an edit is worth saying
    /// again) and new ones elsewhere (a removed file can break a reference in another).
    fn log(&self, diagnostics: &[ConfigDiagnostic], changed: &BTreeSet<PathBuf>) {
        for d in diagnostics {
            let in_changed = d
                .file
                .as_ref()
                .is_some_and(|f| changed.contains(Path::new(f)));
            if !in_changed && self.published.contains(&d.text) {
                continue;
            }
            match d.severity {
                Severity::Error => tracing::error!("{}", d.text),
                Severity::Warning => tracing::warn!("{}", d.text),
            }
        }
    }
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively, with its text; directories that
/// cannot be listed go to `unlisted`. Hidden files and directories (editor swap and lock files,
/// `..data` symlink farms) are skipped.
fn find_yaml(
    dir: &Path,
    out: &mut BTreeMap<PathBuf, io::Result<String>>,
    unlisted: &mut Vec<PathBuf>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::error!(
                "{}: cannot list: {error}; its files keep their last applied content",
                dir.display()
            );
            unlisted.push(dir.to_path_buf());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        // Follow symlinks: ConfigMap mounts are symlinks to files.
        if path.is_dir() {
            find_yaml(&path, out, unlisted);
        } else if is_yaml(&path) && path.is_file() {
            out.insert(path.clone(), std::fs::read_to_string(&path));
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// FNV-1a of the text: enough to tell whether a file changed since it was applied.
fn content_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
