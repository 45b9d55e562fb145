//! mTLS decisions: PeerAuthentication precedence for a workload's inbound side, and
//! DestinationRule `tls` for a client's upstream side.
//!
//! Both are pure functions of the model so that they can be tested as tables (the identity
//! issue asks for a "PeerAuthentication precedence table" test) and so that a policy change
//! alters exactly the resources it should: an `Inbound` only for the workloads a
//! PeerAuthentication reaches, a `Cluster` only for the clients a DestinationRule reaches.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use weft_api::mesh::{self, MtlsMode};

use crate::kinds::{ClientTlsSettings, DestinationRule, PeerAuthentication, Subset};
use crate::parse::Object;

/// The resolved PeerAuthentication of one workload: its mode, and per-port overrides
/// keyed by workload (target) port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    pub mode: MtlsMode,
    pub ports: BTreeMap<u32, MtlsMode>,
}

/// Resolves the PeerAuthentication of a workload in `namespace` with `labels`, Istio's
/// `ComposePeerAuthentication`:
///
/// 1. Candidates: selector-less policies of the root namespace (mesh level) and of the
///    workload's namespace (namespace level), and policies of the workload's namespace whose
///    selector matches its labels (workload level). A policy with a selector in the root
///    namespace only applies to the root namespace's own workloads (Istio likewise).
/// 2. Several candidates of one level: Istio takes the oldest; objects from files have no
///    creation time, so Weft takes the first by namespace/name (the order `policies` must
///    come in, as the model's maps give it).
/// 3. Modes are applied mesh, then namespace, then workload, each overriding the one before
///    unless it is UNSET (absent `mtls` or `mode: UNSET`), which inherits.
/// 4. The workload-level policy's `portLevelMtls` gives per-port modes; an UNSET port
///    inherits the workload's resolved mode.
///
/// With no policy at all the mode is PERMISSIVE, Istio's default. Weft always sends the
/// resolved mode (never `MTLS_MODE_UNSPECIFIED`), so a proxy applies what it is told and
/// `/config_dump` shows the real mode.
pub fn resolve_peer_authentication<'a>(
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: impl IntoIterator<Item = &'a Object<PeerAuthentication>>,
) -> EffectiveMtls {
    let mut mesh_level: Option<&Object<PeerAuthentication>> = None;
    let mut namespace_level: Option<&Object<PeerAuthentication>> = None;
    let mut workload_level: Option<&Object<PeerAuthentication>> = None;
    for pa in policies {
        let slot = if pa.spec.is_workload_level() {
            let selects = pa.namespace() == namespace
                && pa.spec.selector.as_ref().is_some_and(|s| s.matches(labels));
            if !selects {
                continue;
            }
            &mut workload_level
        } else if pa.namespace() == root_namespace {
            &mut mesh_level
        } else if pa.namespace() == namespace {
            &mut namespace_level
        } else {
            continue;
        };
        // The first by namespace/name wins (see 2. above).
        let replace = match slot {
            None => true,
            Some(current) => pa.id < current.id,
        };
        if replace {
            *slot = Some(pa);
        }
    }
    let mut mode = MtlsMode::Permissive;
    for pa in [mesh_level, namespace_level, workload_level]
        .into_iter()
        .flatten()
    {
        if let Some(m) = pa.spec.mode().and_then(mtls_mode) {
            mode = m;
        }
    }
    let ports = workload_level
        .map(|pa| {
            pa.spec
                .port_level()
                .into_iter()
                .map(|(port, m)| (port, m.and_then(mtls_mode).unwrap_or(mode)))
                .collect()
        })
        .unwrap_or_default();
    EffectiveMtls { mode, ports }
}

/// A validated mode name; `None` for UNSET (and anything validation would have refused).
fn mtls_mode(name: &str) -> Option<MtlsMode> {
    match name {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        _ => None,
    }
}

/// The client TLS for one port of one subset, with Istio's merge order
/// (`MergeTrafficPolicy`): the DestinationRule's `trafficPolicy.tls`, then its
/// `portLevelSettings` for the port, then the subset's, then the subset's port-level
/// settings; a later `tls` replaces an earlier one as a whole (fields are not merged).
///
/// No `tls` anywhere is AUTO (auto mTLS: ISTIO_MUTUAL to endpoints with a sidecar).
/// A `tls` without `mode` is DISABLE, because DISABLE is the zero value of Istio's enum.
pub fn upstream_tls(
    dr: Option<&DestinationRule>,
    subset: Option<&Subset>,
    port: u32,
) -> mesh::UpstreamTls {
    use mesh::upstream_tls::Mode;
    let chosen = super::pick_policy(dr, subset, port, |p| p.tls.as_ref(), |p| p.tls.as_ref());
    let Some(tls) = chosen else {
        return mesh::UpstreamTls::default();
    };
    let mode = match tls.mode.as_deref() {
        Some("ISTIO_MUTUAL") => Mode::IstioMutual,
        Some("SIMPLE") => Mode::Simple,
        Some("MUTUAL") => Mode::Mutual,
        _ => Mode::Disable,
    };
    if mode == Mode::Disable {
        return mesh::UpstreamTls {
            mode: mode as i32,
            ..Default::default()
        };
    }
    upstream_fields(tls, mode)
}

/// The fields a TLS mode carries. `caCertificates` is passed as written: Istio's value is
/// a file path on the proxy, while mesh.proto expects PEM (see README: differences).
fn upstream_fields(tls: &ClientTlsSettings, mode: mesh::upstream_tls::Mode) -> mesh::UpstreamTls {
    mesh::UpstreamTls {
        mode: mode as i32,
        sni: tls.sni.clone().unwrap_or_default(),
        subject_alt_names: tls.subject_alt_names.clone(),
        ca_certificates: tls.ca_certificates.clone().unwrap_or_default(),
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
    }
}

/// Secure naming: every identity a server of a service may present, sorted and without
/// duplicates. `endpoint_identities` are the SPIFFE IDs of the service's endpoints (across
/// all subsets and ports; empty ones, i.e. endpoints without a sidecar, are skipped);
/// `subject_alt_names` is the ServiceEntry's own list, which Istio adds to the service's
/// accounts as well.
pub fn service_identities<'a>(
    endpoint_identities: impl IntoIterator<Item = &'a str>,
    subject_alt_names: &'a [String],
) -> Vec<String> {
    endpoint_identities
        .into_iter()
        .chain(subject_alt_names.iter().map(String::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
