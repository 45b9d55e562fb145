//! The file source against a fake store on a real temporary directory. Tests wait on published
//! generations, never on sleeps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;

/// Records applied files; a document containing "bad" gets an error diagnostic.
#[derive(Debug, Default, Clone)]
struct FakeStore {
    files: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    published: Arc<Mutex<BTreeMap<PathBuf, String>>>,
}

impl ConfigStore for FakeStore {
    fn apply_file(&mut self, path: &Path, text: &str) -> Vec<ConfigDiagnostic> {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), text.to_string());
        self.diagnostics()
    }
    fn remove_file(&mut self, path: &Path) {
        self.files.lock().unwrap().remove(path);
    }
    fn diagnostics(&self) -> Vec<ConfigDiagnostic> {
        self.files
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.contains("bad"))
            .map(|(p, _)| ConfigDiagnostic {
                file: Some(p.display().to_string()),
                line: 1,
                column: 1,
                object: None,
                field: "spec".into(),
                message: "bad".into(),
                severity: Severity::Error,
                text: format!("{}:1:1: spec: bad", p.display()),
            })
            .collect()
    }
    fn publish(&mut self) {
        *self.published.lock().unwrap() = self.files.lock().unwrap().clone();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "weft-control-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    dir: TempDir,
    store: FakeStore,
    state: watch::Receiver<ConfigState>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn mk_source(name: &str, setup: impl FnOnce(&Path)) -> Harness {
    let dir = TempDir::new(name);
    setup(&dir.0);
    let store = FakeStore::default();
    let (tx, state) = watch::channel(ConfigState::default());
    let shutdown = CancellationToken::new();
    let task = start(
        dir.0.clone(),
        store.clone(),
        tx,
        Duration::from_millis(20),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Harness {
        dir,
        store,
        state,
        shutdown,
        task,
    }
}

impl Harness {
    fn published(&self) -> BTreeMap<String, String> {
        self.store
            .published
            .lock()
            .unwrap()
            .iter()
            .map(|(p, t)| {
                let rel = p.strip_prefix(&self.dir.0).unwrap();
                (rel.display().to_string(), t.clone())
            })
            .collect()
    }

    /// Waits until a published generation satisfies `f`.
    async fn until(&mut self, f: impl Fn(&Self) -> bool) {
        while !f(self) {
            self.state.changed().await.unwrap();
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn initial_load_reads_yaml_recursively_and_publishes_generation_one() {
    let h = mk_source("initial", |d| {
        std::fs::write(d.join("a.yaml"), "a").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/b.yml"), "b").unwrap();
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "ignored").unwrap();
    })
    .await;
    assert_eq!(h.state.borrow().generation, 1);
    assert_eq!(
        h.published(),
        BTreeMap::from([
            ("a.yaml".into(), "a".into()),
            ("sub/b.yml".into(), "b".into())
        ])
    );
    h.stop().await;
}

#[tokio::test]
async fn an_empty_directory_still_counts_as_loaded() {
    let h = mk_source("empty", |_| {}).await;
    assert!(h.state.borrow().loaded());
    h.stop().await;
}

#[tokio::test]
async fn a_missing_directory_is_named() {
    let (tx, _rx) = watch::channel(ConfigState::default());
    let missing = std::env::temp_dir().join("weft-control-surely-missing-dir");
    let err = start(
        missing.clone(),
        FakeStore::default(),
        tx,
        Duration::from_millis(20),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn edits_creations_and_deletions_are_applied() {
    let mut h = mk_source("edits", |d| {
        std::fs::write(d.join("a.yaml"), "a1").unwrap();
        std::fs::write(d.join("b.yaml"), "b1").unwrap();
    })
    .await;
    std::fs::write(h.dir.0.join("a.yaml"), "a2").unwrap();
    std::fs::remove_file(h.dir.0.join("b.yaml")).unwrap();
    std::fs::write(h.dir.0.join("c.yaml"), "c1").unwrap();
    h.until(|h| {
        h.published()
            == BTreeMap::from([
                ("a.yaml".into(), "a2".into()),
                ("c.yaml".into(), "c1".into()),
            ])
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn an_editor_writing_through_a_rename_is_seen() {
    let mut h = mk_source("rename", |d| {
        std::fs::write(d.join("a.yaml"), "old").unwrap();
    })
    .await;
    let tmp = h.dir.0.join(".a.yaml.tmp");
    std::fs::write(&tmp, "new").unwrap();
    std::fs::rename(&tmp, h.dir.0.join("a.yaml")).unwrap();
    h.until(|h| h.published().get("a.yaml").map(String::as_str) == Some("new"))
        .await;
    h.stop().await;
}

#[tokio::test]
async fn a_bad_document_is_reported_and_the_source_keeps_going() {
    let mut h = mk_source("bad", |d| {
        std::fs::write(d.join("a.yaml"), "bad").unwrap();
    })
    .await;
    {
        let state = h.state.borrow();
        assert_eq!(state.errors(), 1);
        assert!(state.diagnostics[0].text.contains("a.yaml:1:1: spec: bad"));
    }
    std::fs::write(h.dir.0.join("a.yaml"), "good").unwrap();
    h.until(|h| h.state.borrow().errors() == 0).await;
    assert!(h.state.borrow().generation >= 2);
    h.stop().await;
}

#[tokio::test]
async fn a_file_deleted_then_recreated_is_seen() {
    let mut h = mk_source("recreate", |d| {
        std::fs::write(d.join("a.yaml"), "a1").unwrap();
    })
    .await;
    std::fs::remove_file(h.dir.0.join("a.yaml")).unwrap();
    h.until(|h| h.published().is_empty()).await;
    std::fs::write(h.dir.0.join("a.yaml"), "a2").unwrap();
    h.until(|h| h.published().get("a.yaml").map(String::as_str) == Some("a2"))
        .await;
    h.stop().await;
}

#[tokio::test]
async fn a_file_written_continuously_does_not_hold_back_other_changes() {
    let mut h = mk_source("trickle", |d| {
        std::fs::write(d.join("a.yaml"), "a1").unwrap();
    })
    .await;
    // A log written every 5 ms, well inside the 20 ms debounce: without a cap on the debounce,
    // the directory never goes quiet and the edit below is never applied.
    let log = h.dir.0.join("app.log");
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            let _ = std::fs::write(&log, i.to_string());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(h.dir.0.join("a.yaml"), "a2").unwrap();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        h.until(|h| h.published().get("a.yaml").map(String::as_str) == Some("a2")),
    )
    .await;
    writer.abort();
    assert!(seen.is_ok(), "the edit was never applied");
    h.stop().await;
}

#[test]
fn a_directory_that_cannot_be_listed_keeps_its_files() {
    let dir = TempDir::new("unlisted");
    std::fs::write(dir.0.join("a.yaml"), "a1").unwrap();
    let store = FakeStore::default();
    let (tx, state) = watch::channel(ConfigState::default());
    let mut src = Dir {
        root: dir.0.clone(),
        store: store.clone(),
        applied: BTreeMap::new(),
        published: BTreeSet::new(),
        generation: 0,
        state: tx,
    };
    src.rescan(true);
    assert_eq!(state.borrow().generation, 1);
    // The root goes away (replaced by `rm -rf dir && cp -r new dir`, say): proxies keep their
    // config rather than losing all of it.
    std::fs::remove_dir_all(&dir.0).unwrap();
    src.rescan(false);
    assert_eq!(state.borrow().generation, 1);
    assert_eq!(store.published.lock().unwrap().len(), 1);
}
