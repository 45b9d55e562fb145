//! Local-mode credentials: where the mesh CA keeps its root, and the per-workload tokens with
//! which each sidecar proves who it is when it asks the CA for a certificate.
//!
//! In Kubernetes a sidecar proves its identity with a projected ServiceAccount token that the
//! control plane checks by TokenReview. Local mode has no API server, so `weftctl up` plays that
//! part: before starting a sidecar it writes a fresh random token for it, readable only by the
//! owner (mode 0600), naming the one identity the token may ask for. The control plane's local
//! authenticator reads the same directory.
//!
//! Everything lives under `DIR/.weft/`, which the file source skips (hidden), so the mesh's own
//! state never reads as config.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::local::Workload;

/// `DIR/.weft`: local mode's own state.
pub(crate) fn state_dir(config_dir: &Path) -> PathBuf {
    config_dir.join(".weft")
}

/// The mesh root certificate the control plane writes; sidecars trust the control plane by it.
pub(crate) fn ca_root(config_dir: &Path) -> PathBuf {
    state_dir(config_dir).join("ca").join("root-cert.pem")
}

/// Where the tokens live; the control plane's `--token-dir` default.
pub(crate) fn token_dir(config_dir: &Path) -> PathBuf {
    state_dir(config_dir).join("tokens")
}

/// The token file of one workload.
pub(crate) fn token_file(config_dir: &Path, workload: &Workload) -> PathBuf {
    token_dir(config_dir).join(format!("{}.json", workload.node_id()))
}

/// Writes a fresh token for every workload. A new secret each run: a token from an earlier
/// run stops working when `up` starts again.
pub(crate) fn write_tokens(config_dir: &Path, workloads: &[Workload]) -> anyhow::Result<()> {
    let dir = token_dir(config_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for w in workloads {
        write_private(&token_file(config_dir, w), &token_json(w, &random_token()))?;
    }
    Ok(())
}

fn token_json(w: &Workload, token: &str) -> String {
    serde_json::json!({
        "token": token,
        "identity": w.identity,
        "node_id": w.node_id(),
    })
    .to_string()
}

fn random_token() -> String {
    use rand::Rng as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read, through a temporary name so that a reader never sees
/// it half written.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl() -> Workload {
        Workload {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            address: "127.0.0.2".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
        }
    }

    #[test]
    fn tokens_are_private_fresh_and_name_one_identity() {
        let dir = std::env::temp_dir().join(format!("weftctl-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_tokens(&dir, &[wl()]).unwrap();
        let path = token_file(&dir, &wl());
        let first: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(first["node_id"], "reviews-v1.default");
        assert_eq!(
            first["identity"],
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(first["token"].as_str().unwrap().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        write_tokens(&dir, &[wl()]).unwrap();
        let second: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_ne!(first["token"], second["token"], "a new secret each run");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
