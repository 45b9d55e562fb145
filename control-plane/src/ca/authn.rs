//! Who is calling the CA: a bearer token in, an authenticated identity out.
//!
//! DESIGN.md: "the caller proves who it is with a bearer token (Kubernetes: a projected
//! ServiceAccount token checked by TokenReview; local mode: a per-workload token that `weftctl
//! up` writes)". [`Authenticator`] is that seam; [`LocalTokens`] is the local-mode half, and
//! TokenReview arrives with the Kubernetes issue as a second implementation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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

impl AuthnError {
    /// A short name of the refusal: the `result` label of `ca_certificates_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing | Self::NotBearer | Self::Unknown => "unauthenticated",
            Self::Backend(_) => "authn_unavailable",
        }
    }
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

/// Local mode: `<dir>/*.json`, one token per workload.
///
/// The directory is read again when its modification time changed (a token added, rewritten
/// or removed by `weftctl up` takes effect at the next call) and, when a token is not found,
/// at most once per [`MISS_RELOAD_INTERVAL`] (for changes the directory's mtime does not show,
/// such as a file rewritten in place). A flood of unknown tokens therefore costs one `stat`
/// per request, not one directory read.
///
/// Tokens are secrets: they are matched by a constant-time comparison against every known
/// token, never by a hash-map lookup or an early-exit string compare, and never logged.
#[derive(Debug, Clone)]
pub struct LocalTokens {
    dir: PathBuf,
    known: Arc<Mutex<Known>>,
    /// Held while the directory is read, so concurrent misses cause one read, not many.
    reading: Arc<tokio::sync::Mutex<()>>,
    /// Directory reads so far (tests check the miss rate limit with it).
    reads: Arc<AtomicU64>,
}

/// How often, at most, a token that is not known makes [`LocalTokens`] read its directory.
pub const MISS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Known {
    /// The directory's mtime at the last read.
    mtime: Option<SystemTime>,
    /// When the directory was last read (monotonic), if ever.
    read_at: Option<Instant>,
    tokens: Vec<(Vec<u8>, Caller)>,
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens are secrets: only their number is shown.
        f.debug_struct("Known")
            .field("mtime", &self.mtime)
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Known {
    /// The caller of `token`, comparing against every known token in constant time.
    fn find(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for (known, caller) in &self.tokens {
            // No early exit: every entry is compared whatever matched before.
            if ct_eq(known, token.as_bytes()) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// Whether `a == b`, in time that depends only on the lengths, not on where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    // Keeps the optimiser from turning the loop back into an early exit.
    std::hint::black_box(diff) == 0
}

impl LocalTokens {
    /// Tokens in `dir`; the directory need not exist yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            known: Arc::default(),
            reading: Arc::default(),
            reads: Arc::default(),
        }
    }

    /// How many times the directory has been read.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok()
    }

    /// Whether the directory must be read before answering: never read, changed since, or
    /// (after a miss) not read for [`MISS_RELOAD_INTERVAL`].
    fn stale(&self, mtime: Option<SystemTime>, missed: bool, now: Instant) -> bool {
        let known = self.lock();
        match known.read_at {
            None => true,
            Some(_) if known.mtime != mtime => true,
            Some(at) => missed && now.saturating_duration_since(at) >= MISS_RELOAD_INTERVAL,
        }
    }

    /// Re-reads the directory, replacing what was known. A bad file is logged and skipped,
    /// so one broken file cannot lock every workload out.
    fn reload(&self) -> Result<(), AuthnError> {
        // The mtime is taken before reading: a change during the read triggers another read.
        let mtime = self.mtime();
        let read_at = Instant::now();
        let tokens = read_dir(&self.dir)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        *self.lock() = Known {
            mtime,
            read_at: Some(read_at),
            tokens,
        };
        Ok(())
    }

    /// Reads the directory if it is still stale once the read lock is held (another caller
    /// may have just read it).
    async fn reload_if_stale(&self, missed: bool) -> Result<(), AuthnError> {
        let _reading = self.reading.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if this.stale(this.mtime(), missed, Instant::now()) {
                this.reload()
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| AuthnError::Backend(e.to_string()))?
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(Vec<u8>, Caller)>, AuthnError> {
    let mut known = Vec::new();
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
                known.push((token.into_bytes(), caller));
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
        // One `stat` per call: a changed directory is read before the token is looked up, so
        // a removed or rewritten token stops working at once.
        if self.stale(self.mtime(), false, Instant::now()) {
            self.reload_if_stale(false).await?;
        }
        if let Some(caller) = self.lock().find(token) {
            return Ok(caller);
        }
        // Not known: read again, but at most once per interval whatever the request rate.
        if self.stale(self.mtime(), true, Instant::now()) {
            self.reload_if_stale(true).await?;
        }
        self.lock().find(token).ok_or(AuthnError::Unknown)
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

    #[test]
    fn tokens_compare_whole() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"secret", b"secre"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }

    #[tokio::test]
    async fn unknown_tokens_do_not_reread_the_dir_every_time() {
        let dir = mk_dir();
        let id = "spiffe://cluster.local/ns/default/sa/reviews";
        write(&dir, "reviews", "t1", id);
        let tokens = LocalTokens::new(&dir);
        assert!(tokens.authenticate("t1").await.is_ok());
        let before = tokens.reads();
        for i in 0..200 {
            let guess = format!("guess-{i}");
            assert_eq!(tokens.authenticate(&guess).await, Err(AuthnError::Unknown));
        }
        assert!(
            tokens.reads() - before <= 1,
            "{} reads for 200 unknown tokens",
            tokens.reads() - before
        );
        // A new workload's token is still found at its first call: the directory changed.
        write(
            &dir,
            "ratings",
            "t2",
            "spiffe://cluster.local/ns/default/sa/ratings",
        );
        assert!(tokens.authenticate("t2").await.is_ok());
        // A file rewritten in place (the directory's mtime unchanged) is seen by the next miss
        // once the interval has passed.
        std::thread::sleep(MISS_RELOAD_INTERVAL + Duration::from_millis(50));
        std::fs::write(
            dir.join("reviews.json"),
            format!(r#"{{"token": "t3", "identity": "{id}"}}"#),
        )
        .unwrap();
        assert!(tokens.authenticate("t3").await.is_ok());
        assert_eq!(tokens.authenticate("t1").await, Err(AuthnError::Unknown));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let dir = mk_dir();
        write(
            &dir,
            "reviews",
            "s3cr3t-token",
            "spiffe://cluster.local/ns/default/sa/reviews",
        );
        let tokens = LocalTokens::new(&dir);
        tokens.reload().unwrap();
        assert!(!format!("{tokens:?}").contains("s3cr3t"), "{tokens:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_missing_dir_means_no_tokens() {
        let tokens = LocalTokens::new("/nonexistent/weft-tokens");
        assert_eq!(tokens.authenticate("x").await, Err(AuthnError::Unknown));
    }
}
