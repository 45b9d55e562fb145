//! Helpers shared by the integration tests (each test file is its own crate and uses what it
//! needs of these).

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

use weft_control::sources::{ConfigDiagnostic, ConfigStore};

/// A config store that holds nothing: the tests' generators ignore the model.
#[derive(Debug)]
pub(crate) struct NoStore;

impl ConfigStore for NoStore {
    fn apply_file(&mut self, _: &Path, _: &str) -> Vec<ConfigDiagnostic> {
        Vec::new()
    }
    fn remove_file(&mut self, _: &Path) {}
    fn diagnostics(&self) -> Vec<ConfigDiagnostic> {
        Vec::new()
    }
    fn publish(&mut self) {}
}

/// A new, empty directory of its own under the temp dir (watching all of /tmp would be slow
/// and racy), named after the test.
pub(crate) fn mk_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weft-control-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A plain HTTP/1.1 GET on the admin listener: the whole response, headers included.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
