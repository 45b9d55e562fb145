//! The proxy's identity: its SPIFFE ID, its private key and the certificate the mesh CA signed
//! for it, kept fresh, and the rustls configs built on them.
//!
//! Why it looks like this:
//! - The key is made here and never leaves the process: it is not serialised, logged, put in
//!   `/config_dump` or sent anywhere (the CA gets a CSR). `Debug` of [`Certified`] redacts it.
//! - The current certificate lives in a [`CertStore`] (`ArcSwap` + `watch`): TLS handshakes
//!   read it lock-free through custom resolvers, so a rotation needs no config rebuild and
//!   established connections are untouched; readiness and the xDS channel wait on the `watch`.
//! - `csr` (key + CSR, chain validation) and `rotate::refresh_delay` are pure; `ca_client`
//!   does the one RPC; `rotate` is the loop (tokio time, so it is tested in paused time).
//! - `ca_client` imports `weft_api` (the CA contract), like `xds/` does for config.

mod ca_client;
mod csr;
mod rotate;
pub mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::watch;

pub use ca_client::{CaClient, CaError, GrpcCaClient};
pub use csr::{KeyAndCsr, new_key_and_csr, validate_chain};
pub use rotate::{RetryPolicy, Rotator, refresh_delay, retry_delay};
pub use tls::{MeshTls, Trust, TrustBundle, spiffe_id_of};

/// The name the control plane's certificate is checked against (xDS and CA).
pub const CONTROL_PLANE_NAME: &str = "weft-control";

/// Why the identity could not be set up or renewed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("{0:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>)")]
    BadSpiffeId(String),
    #[error("cannot make a key or CSR: {0}")]
    Csr(String),
    #[error("the CA's answer is unusable: {0}")]
    BadChain(String),
    #[error("CA request failed: {0}")]
    Ca(String),
    #[error("CA roots {path}: {reason}")]
    Roots { path: String, reason: String },
}

// === SpiffeId ===

/// `spiffe://<trust-domain>/<path>`, checked on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SpiffeId(Arc<str>);

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::BadSpiffeId(s.to_string()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::BadSpiffeId(s.to_string()))?;
        if domain.is_empty() || path.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(IdentityError::BadSpiffeId(s.to_string()));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        trust_domain(&self.0)
    }

    /// The namespace of a Kubernetes-shaped ID (`.../ns/<ns>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        spiffe_namespace(&self.0)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The trust domain of a SPIFFE ID string ("" when it is not one).
pub fn trust_domain(id: &str) -> &str {
    id.strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
}

/// The namespace of `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

// === TokenFile ===

/// The bootstrap credential `weftctl up` writes (mode 0600): who this proxy is, and the token
/// that proves it to the CA.
#[derive(Clone, serde::Deserialize)]
pub struct TokenFile {
    pub token: String,
    pub identity: String,
    #[serde(default)]
    pub node_id: String,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("token", &"<redacted>")
            .field("identity", &self.identity)
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl TokenFile {
    pub fn parse(path: &str, json: &str) -> Result<(Self, SpiffeId), IdentityError> {
        let err = |reason: String| IdentityError::TokenFile {
            path: path.to_string(),
            reason,
        };
        let t: TokenFile = serde_json::from_str(json).map_err(|e| {
            err(format!(
                "not the expected JSON {{token, identity, node_id}}: {e}"
            ))
        })?;
        if t.token.trim().is_empty() {
            return Err(err("\"token\" is empty".into()));
        }
        let id = SpiffeId::parse(&t.identity).map_err(|e| err(e.to_string()))?;
        Ok((t, id))
    }

    pub fn read(path: &Path) -> Result<(Self, SpiffeId), IdentityError> {
        let p = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|e| IdentityError::TokenFile {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&p, &json)
    }
}

// === Certified ===

/// A certificate this proxy holds, with its key. Never serialised; see [`CertInfo`].
#[derive(Clone)]
pub struct Certified {
    pub id: SpiffeId,
    /// Leaf first, then intermediates (and the root, as the CA sent it).
    pub chain: Vec<CertificateDer<'static>>,
    /// The same chain in PEM (the xDS channel's tonic identity wants PEM).
    pub chain_pem: String,
    /// The rustls key + chain handed to handshakes.
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
    /// PKCS#8 PEM of the private key, for tonic's client identity only. In memory only.
    key_pem: Arc<str>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex serial number.
    pub serial: String,
}

impl fmt::Debug for Certified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certified")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Certified {
    /// The private key in PEM, for the xDS channel's TLS identity (tonic takes PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Time left before expiry (zero when expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    pub fn info(&self) -> CertInfo {
        CertInfo {
            identity: self.id.to_string(),
            serial: self.serial.clone(),
            not_before: unix(self.not_before),
            not_after: unix(self.not_after),
        }
    }
}

/// What `/config_dump` shows of the certificate: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub identity: String,
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

// === CertStore ===

/// The current certificate: lock-free reads for handshakes, a `watch` for waiters.
#[derive(Debug, Clone)]
pub struct CertStore {
    current: Arc<ArcSwapOption<Certified>>,
    tx: Arc<watch::Sender<Option<Arc<Certified>>>>,
}

impl Default for CertStore {
    fn default() -> Self {
        Self {
            current: Arc::default(),
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl CertStore {
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.load_full()
    }

    pub fn publish(&self, c: Arc<Certified>) {
        self.current.store(Some(c.clone()));
        self.tx.send_replace(Some(c));
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Certified>>> {
        self.tx.subscribe()
    }

    /// A tonic client identity from the current certificate, for the xDS channel.
    pub fn tonic_identity(&self) -> Option<tonic::transport::Identity> {
        self.current()
            .map(|c| tonic::transport::Identity::from_pem(&c.chain_pem, c.key_pem()))
    }
}
