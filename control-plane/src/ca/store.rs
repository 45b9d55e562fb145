//! Where the CA's key material lives between restarts.
//!
//! DESIGN.md: the root is "made once and kept ... reused across restarts", and "a user-supplied
//! intermediate CA can be plugged in". [`CaStore`] is the seam: [`DirStore`] keeps a root in a
//! local directory (local mode), [`PluginDir`] reads Istio's `cacerts` files, and the
//! Kubernetes issue adds a Secret-backed store without touching the authority.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::authority::{self, AuthorityError, CaMaterial};

/// Root certificate file name, in both layouts: proxies read it as their `--ca-root`.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Root key file name of [`DirStore`] (mode 0600).
pub const ROOT_KEY: &str = "root-key.pem";
/// Extra trusted roots (PEM, any number) added to the trust bundle during a root rotation.
pub const EXTRA_ROOTS: &str = "extra-roots.pem";
/// Istio `cacerts` names used by [`PluginDir`].
pub const PLUGIN_CA_CERT: &str = "ca-cert.pem";
pub const PLUGIN_CA_KEY: &str = "ca-key.pem";
pub const PLUGIN_CERT_CHAIN: &str = "cert-chain.pem";

/// Loads the CA's material, creating it the first time if the store can.
pub trait CaStore: Send + Sync {
    /// The material; the same on every call once it exists.
    fn load_or_create(&self, trust_domain: &str) -> Result<CaMaterial, StoreError>;
    /// Roots to trust besides the CA's own (PEM blocks), e.g. the old root during a rotation.
    fn extra_roots(&self) -> Result<Vec<String>, StoreError>;
}

/// Why the CA material cannot be loaded or kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Material {
        path: PathBuf,
        #[source]
        source: AuthorityError,
    },
    #[error(
        "{dir}: has {present} but not {missing}; a CA directory needs both (delete both to make a new root)"
    )]
    HalfRoot {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, StoreError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Reads `<dir>/extra-roots.pem` if present.
fn extra_roots_in(dir: &Path) -> Result<Vec<String>, StoreError> {
    let path = dir.join(EXTRA_ROOTS);
    match std::fs::read_to_string(&path) {
        Ok(text) => authority::split_pem(&text).map_err(|source| StoreError::Material {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// A self-signed root kept in a directory: `root-cert.pem` and `root-key.pem` (0600).
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create(&self, trust_domain: &str) -> Result<CaMaterial, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let material = authority::new_root(trust_domain, SystemTime::now()).map_err(|source| {
            StoreError::Material {
                path: self.dir.clone(),
                source,
            }
        })?;
        // Key first, created 0600 from the start (never readable by others, not even
        // briefly), and the certificate last: a crash in between leaves a key without a
        // certificate, which the next start reports instead of silently replacing.
        write_new(
            &self.dir.join(ROOT_KEY),
            material.issuer_key_pem.as_bytes(),
            0o600,
        )?;
        write_new(
            &self.dir.join(ROOT_CERT),
            material.issuer_cert_pem.as_bytes(),
            0o644,
        )?;
        tracing::info!(dir = %self.dir.display(), "created a new mesh root CA");
        Ok(material)
    }
}

/// Writes a file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

impl CaStore for DirStore {
    fn load_or_create(&self, trust_domain: &str) -> Result<CaMaterial, StoreError> {
        let cert = self.dir.join(ROOT_CERT);
        let key = self.dir.join(ROOT_KEY);
        match (cert.exists(), key.exists()) {
            (false, false) => self.create(trust_domain),
            (true, true) => {
                let cert_pem = read(&cert)?;
                authority::pem_to_der(&cert_pem).map_err(|source| StoreError::Material {
                    path: cert.clone(),
                    source,
                })?;
                Ok(CaMaterial {
                    issuer_key_pem: read(&key)?,
                    chain: vec![cert_pem.clone()],
                    issuer_cert_pem: cert_pem,
                })
            }
            (true, false) => Err(StoreError::HalfRoot {
                dir: self.dir.clone(),
                present: ROOT_CERT,
                missing: ROOT_KEY,
            }),
            (false, true) => Err(StoreError::HalfRoot {
                dir: self.dir.clone(),
                present: ROOT_KEY,
                missing: ROOT_CERT,
            }),
        }
    }

    fn extra_roots(&self) -> Result<Vec<String>, StoreError> {
        extra_roots_in(&self.dir)
    }
}

/// A user-supplied intermediate in Istio's `cacerts` layout: `ca-cert.pem` (the intermediate),
/// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` (the intermediate up to the root). Read
/// only; Weft never writes into it.
#[derive(Debug, Clone)]
pub struct PluginDir {
    dir: PathBuf,
}

impl PluginDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn certs(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let path = self.dir.join(name);
        authority::split_pem(&read(&path)?).map_err(|source| StoreError::Material { path, source })
    }
}

impl CaStore for PluginDir {
    fn load_or_create(&self, _trust_domain: &str) -> Result<CaMaterial, StoreError> {
        let ca_cert = self.certs(PLUGIN_CA_CERT)?;
        let root = self.certs(ROOT_CERT)?;
        let (Some(ca_cert), Some(root)) = (ca_cert.first(), root.first()) else {
            return Err(StoreError::Material {
                path: self.dir.clone(),
                source: AuthorityError::EmptyChain,
            });
        };
        let key = read(&self.dir.join(PLUGIN_CA_KEY))?;
        // Istio's cert-chain.pem is "ca-cert.pem then up to the root"; tolerate files that
        // leave out either end, so the chain a leaf gets always runs issuer .. root.
        let chain_path = self.dir.join(PLUGIN_CERT_CHAIN);
        let mut chain = if chain_path.exists() {
            self.certs(PLUGIN_CERT_CHAIN)?
        } else {
            Vec::new()
        };
        if chain.first() != Some(ca_cert) {
            chain.insert(0, ca_cert.clone());
        }
        if chain.last() != Some(root) {
            chain.push(root.clone());
        }
        Ok(CaMaterial {
            issuer_cert_pem: ca_cert.clone(),
            issuer_key_pem: key,
            chain,
        })
    }

    fn extra_roots(&self) -> Result<Vec<String>, StoreError> {
        extra_roots_in(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "weft-ca-store-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn dir_store_creates_once_then_reuses() {
        let dir = mk_dir("reuse");
        let store = DirStore::new(&dir);
        let first = store.load_or_create("cluster.local").unwrap();
        let bytes = std::fs::read(dir.join(ROOT_CERT)).unwrap();
        let second = store.load_or_create("cluster.local").unwrap();
        assert_eq!(first.issuer_cert_pem, second.issuer_cert_pem);
        assert_eq!(bytes, std::fs::read(dir.join(ROOT_CERT)).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(ROOT_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(store.extra_roots().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_half_root_is_refused_not_replaced() {
        let dir = mk_dir("half");
        let store = DirStore::new(&dir);
        store.load_or_create("cluster.local").unwrap();
        std::fs::remove_file(dir.join(ROOT_KEY)).unwrap();
        let err = store.load_or_create("cluster.local").unwrap_err();
        assert!(err.to_string().contains("root-key.pem"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn extra_roots_are_read() {
        let dir = mk_dir("extra");
        let store = DirStore::new(&dir);
        let m = store.load_or_create("cluster.local").unwrap();
        let other = authority::new_root("cluster.local", SystemTime::now()).unwrap();
        std::fs::write(
            dir.join(EXTRA_ROOTS),
            format!("{}{}", m.issuer_cert_pem, other.issuer_cert_pem),
        )
        .unwrap();
        assert_eq!(store.extra_roots().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
