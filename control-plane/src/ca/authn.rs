//! Who is calling the CA: a bearer token in, an authenticated identity out.
//!
//! DESIGN.md: "the caller proves who it is with a bearer token (Kubernetes: a projected
//! ServiceAccount token checked by TokenReview; local mode: a per-workload token that `weftctl
//! up` writes)". [`Authenticator`] is that seam; [`LocalTokens`] is the local-mode half, and
//! TokenReview arrives with the Kubernetes issue as a second implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;

use crate::spiffe::SpiffeId;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity the credential proves; the only SPIFFE ID the CA will sign for it.
    pub identity: SpiffeId,
    /// The node id (`<name>.<namespace>`) the credential was issued for, when known.
    pub node_id: Option<String>,
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("the authorization metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("unknown or revoked token")]
    Unknown,
    /// The authentication backend failed; the caller may retry.
    #[error("cannot check the token: {0}")]
    Backend(String),
}

/// Checks a bearer token.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller `token` proves, or why it proves nothing.
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError>;
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer(value: Option<&str>) -> Result<&str, AuthnError> {
    let value = value.ok_or(AuthnError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthnError::NotBearer);
    }
    Ok(token)
}

/// One token file, as `weftctl up` writes it.
#[derive(Debug, Deserialize)]
struct TokenFile {
    token: String,
    identity: String,
    node_id: Option<String>,
}

/// Local mode: `<dir>/*.json`, one token per workload. The directory is re-read whenever a
/// token is not found (a workload added while the control plane runs is known at its first
/// call) and whenever the directory's modification time changed (a token rewritten or
/// removed by `weftctl up` stops working at once, not at the next miss).
#[derive(Debug, Clone)]
pub struct LocalTokens {
    dir: PathBuf,
    known: Arc<Mutex<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// The directory's mtime at the last read.
    read_at: Option<std::time::SystemTime>,
    tokens: HashMap<String, Caller>,
}

impl LocalTokens {
    /// Tokens in `dir`; the directory need not exist yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            known: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok()
    }

    /// A cached answer, unless the directory changed since it was read.
    fn lookup(&self, token: &str) -> Option<Caller> {
        let mtime = self.mtime();
        let known = self.lock();
        if known.read_at.is_none() || known.read_at != mtime {
            return None;
        }
        known.tokens.get(token).cloned()
    }

    /// Re-reads the directory, replacing what was known. A bad file is logged and skipped,
    /// so one broken file cannot lock every workload out.
    fn reload(&self) -> Result<(), AuthnError> {
        // The mtime is taken before reading: a change during the read triggers another read.
        let read_at = self.mtime();
        let tokens = read_dir(&self.dir)?;
        *self.lock() = Known { read_at, tokens };
        Ok(())
    }

    fn cached(&self, token: &str) -> Option<Caller> {
        self.lock().tokens.get(token).cloned()
    }
}

fn read_dir(dir: &Path) -> Result<HashMap<String, Caller>, AuthnError> {
    let mut known = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory yet means no tokens yet, not a broken backend.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(known),
        Err(e) => {
            return Err(AuthnError::Backend(format!("{}: {e}", dir.display())));
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match parse_file(&path) {
            Ok((token, caller)) => {
                known.insert(token, caller);
            }
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "ignoring token file");
            }
        }
    }
    Ok(known)
}

fn parse_file(path: &Path) -> Result<(String, Caller), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: TokenFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if file.token.is_empty() {
        return Err("empty token".into());
    }
    let identity = SpiffeId::parse(&file.identity).map_err(|e| e.to_string())?;
    Ok((
        file.token,
        Caller {
            identity,
            node_id: file.node_id,
        },
    ))
}

#[tonic::async_trait]
impl Authenticator for LocalTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        if let Some(caller) = self.lookup(token) {
            return Ok(caller);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload())
            .await
            .map_err(|e| AuthnError::Backend(e.to_string()))??;
        self.cached(token).ok_or(AuthnError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "weft-tokens-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, token: &str, id: &str) {
        std::fs::write(
            dir.join(format!("{name}.json")),
            format!(r#"{{"token": "{token}", "identity": "{id}", "node_id": "{name}.default"}}"#),
        )
        .unwrap();
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthnError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthnError::NotBearer));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthnError::NotBearer));
        assert_eq!(bearer(Some("abc")), Err(AuthnError::NotBearer));
    }

    #[tokio::test]
    async fn finds_tokens_added_after_start_and_refuses_unknown_ones() {
        let dir = mk_dir();
        let tokens = LocalTokens::new(&dir);
        assert_eq!(
            tokens.authenticate("t1").await,
            Err(AuthnError::Unknown),
            "empty dir"
        );
        write(
            &dir,
            "reviews",
            "t1",
            "spiffe://cluster.local/ns/default/sa/reviews",
        );
        std::fs::write(dir.join("broken.json"), "{").unwrap();
        let caller = tokens.authenticate("t1").await.unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(caller.node_id.as_deref(), Some("reviews.default"));
        assert_eq!(tokens.authenticate("nope").await, Err(AuthnError::Unknown));
        // A rewritten token file revokes the old token.
        std::fs::remove_file(dir.join("reviews.json")).unwrap();
        write(
            &dir,
            "reviews",
            "t2",
            "spiffe://cluster.local/ns/default/sa/reviews",
        );
        assert_eq!(tokens.authenticate("t1").await, Err(AuthnError::Unknown));
        assert!(tokens.authenticate("t2").await.is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_missing_dir_means_no_tokens() {
        let tokens = LocalTokens::new("/nonexistent/weft-tokens");
        assert_eq!(tokens.authenticate("x").await, Err(AuthnError::Unknown));
    }
}
