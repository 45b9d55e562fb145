//! Getting a certificate and keeping it fresh.
//!
//! Rule: renew at about half of the *remaining* lifetime (with ±10% jitter so proxies
//! started together do not all hit the CA at once); on failure retry with exponential backoff
//! and jitter, keeping the current certificate, which stays valid for the other half. Every
//! renewal makes a new key. The schedule is two pure functions; the loop sleeps on tokio time,
//! so tests run it in paused time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::RngExt as _;
use tokio_util::sync::CancellationToken;

use super::validate_chain;
use super::{CaClient, CertStore, Certified, IdentityError, SpiffeId, new_key_and_csr, unix};
use crate::telemetry::Metrics;

/// Renewal never waits less than this, so a CA handing out nearly-expired certificates cannot
/// make the proxy spin.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// When to renew a certificate with `remaining` validity; `jitter` is uniform in [0, 1).
pub fn refresh_delay(remaining: Duration, jitter: f64) -> Duration {
    let factor = 0.45 + 0.1 * jitter.clamp(0.0, 1.0);
    remaining.mul_f64(factor).max(MIN_REFRESH)
}

/// Backoff after `failures` consecutive failures (1 = the first): `min(cap, base * 2^(n-1))`
/// scaled by [0.5, 1) ("equal jitter": spread out, never zero).
pub fn retry_delay(policy: &RetryPolicy, failures: u32, jitter: f64) -> Duration {
    let exp = policy
        .base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    exp.min(policy.cap)
        .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Backoff bounds for CA failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

/// Owns the renewal loop for one identity.
pub struct Rotator<C> {
    pub ca: C,
    pub id: SpiffeId,
    pub store: CertStore,
    pub metrics: Arc<Metrics>,
    pub retry: RetryPolicy,
    /// Asked of the CA; zero means the CA's default.
    pub validity: Duration,
}

impl<C> std::fmt::Debug for Rotator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<C: CaClient> Rotator<C> {
    /// One request to the CA: new key, CSR, validated answer.
    pub async fn issue(&self) -> Result<Certified, IdentityError> {
        let kc = new_key_and_csr(&self.id)?;
        let chain = self
            .ca
            .create_certificate(kc.csr_pem, self.validity)
            .await
            .map_err(|e| IdentityError::Ca(e.0))?;
        validate_chain(&self.id, &kc.key, &chain, SystemTime::now())
    }

    /// Renews until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.issue().await {
                Ok(c) => {
                    failures = 0;
                    self.metrics.cert_rotation(true);
                    self.metrics.set_cert_expiry(unix(c.not_after));
                    let remaining = c.remaining(SystemTime::now());
                    tracing::info!(
                        identity = %c.id, serial = %c.serial,
                        valid_for = ?remaining, "certificate issued"
                    );
                    self.store.publish(Arc::new(c));
                    refresh_delay(remaining, rand::rng().random())
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.cert_rotation(false);
                    let delay = retry_delay(&self.retry, failures, rand::rng().random());
                    match self.store.current() {
                        Some(c) => tracing::warn!(
                            error = %e, retry_in = ?delay,
                            still_valid_for = ?c.remaining(SystemTime::now()),
                            "certificate renewal failed; keeping the current certificate"
                        ),
                        None => tracing::warn!(
                            error = %e, retry_in = ?delay,
                            "cannot get a certificate from the CA yet"
                        ),
                    }
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
