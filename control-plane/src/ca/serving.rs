//! The control plane's own serving certificate for port 15012: issued by the mesh CA at start
//! and renewed at half its life while the server runs.
//!
//! Proxies verify the control plane against the mesh root like any peer, so the control plane
//! needs a certificate from its own CA, with the names proxies dial (`weft-control`,
//! `localhost`, the listener's IP) and its SPIFFE ID. Renewal swaps the certificate in the TLS
//! resolver; open connections keep the one they started with.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::authority::{Authority, ServingSans, SignError};

/// Lifetime asked for the serving certificate (the issuer's expiry may shorten it).
pub const SERVING_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long to wait before retrying a failed renewal.
const RETRY: Duration = Duration::from_secs(60);

/// The service account the control plane's identity names.
pub const SERVICE_ACCOUNT: &str = "weft-control";
/// The namespace the control plane's identity names.
pub const NAMESPACE: &str = "weft-system";

/// Why the serving certificate cannot be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot issue the serving certificate: {0}")]
    Issue(#[from] SignError),
    #[error("invalid serving key: {0}")]
    Key(rustls::Error),
}

/// The serving certificate, replaceable while the server runs (renewal).
#[derive(Debug)]
pub struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SwappableCert {
    /// Starts with `chain` and `key`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, ServingError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified(chain, key)?),
        }))
    }

    /// New handshakes present `chain` from now on; open connections keep theirs.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<(), ServingError> {
        let new = certified(chain, key)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, ServingError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(ServingError::Key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// Issues the first serving certificate: the resolver for the TLS config, and when it expires.
pub fn issue(
    authority: &Authority,
    sans: &ServingSans,
) -> Result<(Arc<SwappableCert>, SystemTime), ServingError> {
    let cert = authority.issue_serving(sans, SERVING_LIFETIME, SystemTime::now())?;
    let swappable = SwappableCert::new(cert.chain, &cert.key)?;
    Ok((swappable, cert.not_after))
}

/// When to renew a certificate valid until `not_after`, seen at `now`: half of what is left,
/// so a failed renewal has the other half to succeed in.
pub fn renew_in(not_after: SystemTime, now: SystemTime) -> Duration {
    not_after
        .duration_since(now)
        .map(|left| left / 2)
        .unwrap_or_default()
}

/// Renews `cert` at half of its remaining life until `shutdown`.
pub async fn run_renewal(
    authority: Arc<Authority>,
    sans: ServingSans,
    cert: Arc<SwappableCert>,
    mut not_after: SystemTime,
    shutdown: CancellationToken,
) {
    loop {
        let wait = renew_in(not_after, SystemTime::now()).max(Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed = authority
            .issue_serving(&sans, SERVING_LIFETIME, SystemTime::now())
            .map_err(ServingError::from)
            .and_then(|c| {
                cert.set(c.chain, &c.key)?;
                Ok(c.not_after)
            });
        match renewed {
            Ok(until) => {
                not_after = until;
                tracing::info!(until = ?until, "renewed the control plane's serving certificate");
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?RETRY, "cannot renew the control plane's serving certificate");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_the_remaining_life() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            renew_in(now + Duration::from_secs(100), now),
            Duration::from_secs(50)
        );
        assert_eq!(renew_in(now - Duration::from_secs(1), now), Duration::ZERO);
    }
}
