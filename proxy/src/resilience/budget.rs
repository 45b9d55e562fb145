//! Retry budgets: how many retries a cluster may have outstanding at once.
//!
//! With `Cluster.retry_budget` (on by default: translation adds Weft's 20 % / 3 unless the
//! DestinationRule sets `maxRetries` alone) the cap follows the load, as Envoy's
//! `retry_budget`: max(`min_retry_concurrency`, `percent`% of the cluster's active and
//! pending requests). Without one, `connectionPool.http.maxRetries` is a fixed cap (0:
//! unlimited). Retries past the cap are not made; the failure at hand is returned, and the
//! [`RetryStop`] says why for the access log.
//!
//! A retry counts from the decision to retry (back-off included) until that retry attempt
//! ends: the [`RetryPermit`] is held for exactly that span and released when dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use super::breaker::ClusterLimits;
use super::config::ClusterPolicy;
use super::retry::RetryStop;

/// One outstanding retry to a cluster; released when dropped.
#[derive(Debug)]
#[must_use = "the retry is no longer counted once the permit is dropped"]
pub struct RetryPermit {
    cluster: Arc<ClusterLimits>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.cluster.retries.fetch_sub(1, SeqCst);
    }
}

impl ClusterLimits {
    /// Counts one more retry if the cluster's budget (or `maxRetries`) allows it, else says
    /// which cap stopped it ([`RetryStop::BudgetExhausted`] or [`RetryStop::MaxRetries`]).
    /// Never waits: a retry over budget is given up, not delayed.
    pub fn try_acquire_retry(
        self: &Arc<Self>,
        policy: &ClusterPolicy,
    ) -> Result<RetryPermit, RetryStop> {
        let (cap, stop) = match (&policy.retry_budget, policy.pool.max_retries) {
            (Some(budget), _) => {
                // Envoy: active requests plus pending ones.
                let load = self.active.load(SeqCst) + self.pending.load(SeqCst);
                let limit = budget.limit(load);
                (Some(limit), RetryStop::BudgetExhausted { limit })
            }
            (None, Some(max)) => (Some(u64::from(max)), RetryStop::MaxRetries(max)),
            (None, None) => (None, RetryStop::MaxRetries(0)),
        };
        match cap {
            None => {
                self.retries.fetch_add(1, SeqCst);
            }
            Some(cap) => {
                self.retries
                    .fetch_update(SeqCst, SeqCst, |n| (n < cap).then_some(n + 1))
                    .map_err(|_| stop)?;
            }
        }
        Ok(RetryPermit {
            cluster: Arc::clone(self),
        })
    }
}
