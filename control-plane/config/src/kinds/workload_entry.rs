//! `WorkloadEntry` (networking.istio.io/v1 `WorkloadEntry`), field for field. In local mode
//! each WorkloadEntry is one workload with its own sidecar.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `WorkloadEntry.spec` (also the schema of a ServiceEntry's inline `endpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: Option<String>,
    /// Port name -> workload port.
    #[serde(default, deserialize_with = "super::de::int_map")]
    pub ports: BTreeMap<String, i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default, deserialize_with = "super::de::opt_int")]
    pub weight: Option<i64>,
    #[serde(default)]
    pub service_account: Option<String>,
}

impl WorkloadEntry {
    /// The service account, `default` when absent (Kubernetes' default account).
    pub fn service_account(&self) -> &str {
        match self.service_account.as_deref() {
            Some(sa) if !sa.is_empty() => sa,
            _ => "default",
        }
    }
}
