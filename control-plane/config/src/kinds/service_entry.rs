//! `ServiceEntry` (networking.istio.io/v1 `ServiceEntry`), field for field. In local mode
//! ServiceEntries are the service registry.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::WorkloadSelector;
use super::workload_entry::WorkloadEntry;

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// MESH_EXTERNAL | MESH_INTERNAL.
    #[serde(default)]
    pub location: Option<String>,
    /// NONE | STATIC | DNS | DNS_ROUND_ROBIN.
    #[serde(default)]
    pub resolution: Option<String>,
    /// Inline endpoints (same schema as a WorkloadEntry spec).
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, deserialize_with = "super::de::opt_int")]
    pub number: Option<i64>,
    /// HTTP | HTTPS | GRPC | GRPC-WEB | HTTP2 | MONGO | MYSQL | REDIS | TCP | TLS | UDP
    /// (case-insensitive, as Istio reads it).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::de::opt_int")]
    pub target_port: Option<i64>,
}

impl ServicePort {
    /// The port number (0 when absent, which validation has rejected).
    pub fn number(&self) -> u32 {
        self.number.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
    }

    /// The workload port for an endpoint whose own `ports` map may name this port.
    pub fn target_for(&self, endpoint_ports: &BTreeMap<String, i64>) -> u32 {
        let named = self
            .name
            .as_deref()
            .and_then(|name| endpoint_ports.get(name))
            .and_then(|p| u32::try_from(*p).ok());
        named
            .or_else(|| self.target_port.and_then(|p| u32::try_from(p).ok()))
            .unwrap_or_else(|| self.number())
    }
}
