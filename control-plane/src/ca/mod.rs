//! The mesh certificate authority (DESIGN.md "Identity"): proxies send a CSR and a bearer token,
//! and get a short-lived certificate carrying their SPIFFE ID. Private keys never travel.
//!
//! - [`authority`]: pure signing rules (CSR + caller -> chain), the root's creation.
//! - [`store`]: where the root (or a plugged-in intermediate) lives between restarts.
//! - [`authn`]: who the caller is (bearer token -> identity); local-mode token files.
//! - [`server`]: the gRPC service, on the xDS listener.
//! - [`serving`]: the control plane's own TLS certificate, issued by this CA and renewed.
//!
//! [`load`] puts the first three together at startup.

pub mod authn;
pub mod authority;
pub mod server;
pub mod serving;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::authority::Authority;
use self::store::{CaStore, DirStore, PluginDir, StoreError};

/// Where the CA's files are and how it signs.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The local root's directory; `root-cert.pem` there is what proxies trust (`--ca-root`).
    pub ca_dir: PathBuf,
    /// An Istio-style `cacerts` directory to sign with instead of a local root.
    pub plugin_ca_dir: Option<PathBuf>,
    /// SPIFFE trust domain the CA signs for.
    pub trust_domain: String,
    /// Longest leaf lifetime.
    pub cert_lifetime: Duration,
}

/// A loaded CA.
#[derive(Debug)]
pub struct Ca {
    pub authority: Arc<Authority>,
    /// PEM roots proxies must trust: the CA's root first, then `extra-roots.pem` (rotation).
    pub trust_bundle: Vec<String>,
    /// The file holding the CA's root, for proxies' `--ca-root`.
    pub root_path: PathBuf,
}

/// Why the CA cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("CA material from {dir}: {source}")]
    Authority {
        dir: PathBuf,
        #[source]
        source: authority::AuthorityError,
    },
    #[error(
        "--plugin-ca-dir is set, but {ca_dir} holds a self-made root (root-key.pem); use another --ca-dir, or remove that root"
    )]
    PluginOverLocalRoot { ca_dir: PathBuf },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loads (or, the first time, creates) the CA described by `config`. Blocking file I/O; called
/// once at startup.
pub fn load(config: &CaConfig) -> Result<Ca, CaError> {
    let (store, dir): (Box<dyn CaStore>, &Path) = match &config.plugin_ca_dir {
        Some(dir) => (Box::new(PluginDir::new(dir)), dir),
        None => (Box::new(DirStore::new(&config.ca_dir)), &config.ca_dir),
    };
    let material = store.load_or_create(&config.trust_domain)?;
    let authority = Authority::new(&material, &config.trust_domain, config.cert_lifetime).map_err(
        |source| CaError::Authority {
            dir: dir.to_path_buf(),
            source,
        },
    )?;
    let root_path = config.ca_dir.join(store::ROOT_CERT);
    if config.plugin_ca_dir.is_some() {
        publish_plugin_root(&config.ca_dir, authority.root_pem())?;
    }
    let mut trust_bundle = vec![authority.root_pem().to_string()];
    for extra in store.extra_roots()? {
        if !trust_bundle.iter().any(|r| r.trim() == extra.trim()) {
            trust_bundle.push(extra);
        }
    }
    tracing::info!(
        root = %root_path.display(),
        plugin = config.plugin_ca_dir.is_some(),
        roots = trust_bundle.len(),
        lifetime = ?config.cert_lifetime,
        "mesh CA ready"
    );
    Ok(Ca {
        authority: Arc::new(authority),
        trust_bundle,
        root_path,
    })
}

/// Copies a plugged-in CA's root to `<ca_dir>/root-cert.pem`, where proxies read it in both
/// modes. Refuses to overwrite a self-made root, whose certificate must stay next to its key.
fn publish_plugin_root(ca_dir: &Path, root_pem: &str) -> Result<(), CaError> {
    if ca_dir.join(store::ROOT_KEY).exists() {
        return Err(CaError::PluginOverLocalRoot {
            ca_dir: ca_dir.to_path_buf(),
        });
    }
    let write = |path: &Path, r: std::io::Result<()>| {
        r.map_err(|source| CaError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(ca_dir, std::fs::create_dir_all(ca_dir))?;
    // Write then rename, so a proxy starting meanwhile never reads half a file.
    let tmp = ca_dir.join(format!(".{}.tmp", store::ROOT_CERT));
    let path = ca_dir.join(store::ROOT_CERT);
    write(&tmp, std::fs::write(&tmp, root_pem))?;
    write(&path, std::fs::rename(&tmp, &path))
}

/// Parses a lifetime such as `5s`, `90m`, `24h` or `7d` (a bare number is seconds).
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 5s, 90m, 24h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: a certificate lifetime must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::spiffe::SpiffeId;

    fn mk_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "weft-ca-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn config(ca_dir: &Path, plugin: Option<&Path>) -> CaConfig {
        CaConfig {
            ca_dir: ca_dir.to_path_buf(),
            plugin_ca_dir: plugin.map(Path::to_path_buf),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
        }
    }

    /// Istio's `cacerts` layout: an intermediate signed by a root.
    fn write_plugin(dir: &Path) -> (String, String) {
        let t = authority::test_intermediate();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca-cert.pem"), &t.int_pem).unwrap();
        std::fs::write(dir.join("ca-key.pem"), &t.int_key_pem).unwrap();
        std::fs::write(dir.join("root-cert.pem"), &t.root_pem).unwrap();
        std::fs::write(
            dir.join("cert-chain.pem"),
            format!("{}{}", t.int_pem, t.root_pem),
        )
        .unwrap();
        (t.int_pem, t.root_pem)
    }

    #[test]
    fn a_plugged_in_intermediate_signs_and_its_root_is_published() {
        let (plugin, ca_dir) = (mk_dir("plugin"), mk_dir("plugin-ca"));
        let (int, root) = write_plugin(&plugin);
        let ca = load(&config(&ca_dir, Some(&plugin))).unwrap();
        assert_eq!(ca.trust_bundle, vec![root.clone()]);
        assert_eq!(std::fs::read_to_string(&ca.root_path).unwrap(), root);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let id = "spiffe://cluster.local/ns/default/sa/reviews";
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let chain = ca
            .authority
            .sign_csr(
                &csr,
                &SpiffeId::parse(id).unwrap(),
                0,
                std::time::SystemTime::now(),
            )
            .unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!((&chain[1], &chain[2]), (&int, &root));

        // A self-made root in --ca-dir is never overwritten by a plugged-in one.
        let own = mk_dir("own");
        load(&config(&own, None)).unwrap();
        let err = load(&config(&own, Some(&plugin))).unwrap_err();
        assert!(matches!(err, CaError::PluginOverLocalRoot { .. }), "{err}");
        for d in [plugin, ca_dir, own] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn extra_roots_join_the_trust_bundle_once() {
        let dir = mk_dir("bundle");
        let first = load(&config(&dir, None)).unwrap();
        let other = authority::new_root("cluster.local", std::time::SystemTime::now()).unwrap();
        std::fs::write(
            dir.join(store::EXTRA_ROOTS),
            format!("{}{}", first.trust_bundle[0], other.issuer_cert_pem),
        )
        .unwrap();
        let again = load(&config(&dir, None)).unwrap();
        assert_eq!(again.trust_bundle.len(), 2);
        assert_eq!(again.trust_bundle[0], first.trust_bundle[0]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_lifetime("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_lifetime("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_lifetime("30"), Ok(Duration::from_secs(30)));
        for bad in ["", "h", "0s", "5x", "-5s", "1.5h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
