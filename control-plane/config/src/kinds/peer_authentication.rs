//! `PeerAuthentication` (security.istio.io/v1 `PeerAuthentication`), field for field: which
//! mTLS mode a workload's inbound side accepts, at mesh, namespace, workload and port level.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::MatchLabelsSelector;

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Absent (or empty `matchLabels`): the policy is namespace-wide, or mesh-wide in the
    /// root namespace.
    #[serde(default)]
    pub selector: Option<MatchLabelsSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Workload (target) port -> mode. Keys are kept as written (`80` and `"80"` both read
    /// as `"80"`) so that validation can name a bad key (`"acd"`, `"0"`) instead of failing
    /// as a type error; [`PeerAuthentication::port_level`] gives the parsed view.
    /// `None` and `Some(empty)` differ: Istio rejects an empty map that is written out.
    #[serde(default, deserialize_with = "super::de::opt_key_map")]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// UNSET | DISABLE | PERMISSIVE | STRICT; absent is UNSET (inherit from the parent).
    #[serde(default)]
    pub mode: Option<String>,
}

impl MutualTls {
    /// The mode, `None` when unset (inherit).
    pub fn mode(&self) -> Option<&str> {
        self.mode.as_deref().filter(|m| *m != "UNSET")
    }
}

impl PeerAuthentication {
    /// Whether the policy selects workloads (Istio: a selector with at least one label);
    /// otherwise it applies to its whole namespace.
    pub fn is_workload_level(&self) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    }

    /// The policy's own mode, `None` when unset.
    pub fn mode(&self) -> Option<&str> {
        self.mtls.as_ref().and_then(MutualTls::mode)
    }

    /// Port-level modes by port number (`None` = unset); keys that are not port numbers
    /// (rejected by validation) are left out.
    pub fn port_level(&self) -> BTreeMap<u32, Option<&str>> {
        self.port_level_mtls
            .iter()
            .flatten()
            .filter_map(|(port, mtls)| Some((port.trim().parse::<u32>().ok()?, mtls.mode())))
            .collect()
    }
}
