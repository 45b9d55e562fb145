//! Turns one xDS response into one new snapshot, or into a NACK reason: all or nothing.
//!
//! The applier edits a copy of the current [`Parts`]; only when every resource in the
//! response decodes and validates is the copy kept and a new `Arc<Snapshot>` published. A
//! rejected response leaves the data path on the previous snapshot, untouched.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost_types::Any;
use weft_api::discovery::{DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource};
use weft_api::mesh as pb;
use weft_api::type_url::{self, Resource, UnpackError};

use crate::model::{self, InvalidResource, Parts, SharedSnapshot, Snapshot};

/// Why a response was rejected; its `Display` is the NACK's `error_detail.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{name}: {source}")]
    Decode { name: String, source: UnpackError },
    #[error("{kind} {name}: {source}")]
    Invalid {
        kind: &'static str,
        name: String,
        source: InvalidResource,
    },
    #[error("{0} resource has no name (neither its own nor the envelope's)")]
    Unnamed(&'static str),
    #[error("resource {0} has no body")]
    MissingBody(String),
    #[error("type {0} is not one this proxy subscribes to")]
    UnknownType(String),
    #[error("resource is named {got:?} in the envelope but {inner:?} inside")]
    NameMismatch { got: String, inner: String },
}

/// Holds the resources currently applied and publishes the snapshot built from them.
#[derive(Debug)]
pub struct Applier {
    parts: Parts,
    published: SharedSnapshot,
    /// Per-cluster state that outlives snapshots (endpoint health, breaker counters).
    runtimes: crate::model::Runtimes,
    /// Types that have had at least one accepted response.
    answered: BTreeSet<&'static str>,
}

impl Applier {
    pub fn new(published: SharedSnapshot) -> Self {
        Self {
            parts: Parts::default(),
            published,
            runtimes: crate::model::Runtimes::default(),
            answered: BTreeSet::new(),
        }
    }

    /// Whether every subscribed type has been answered once: the first complete config.
    pub fn complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// Types still waiting for their first response, for `/ready` and logs.
    pub fn missing(&self) -> Vec<&'static str> {
        type_url::ALL
            .iter()
            .filter(|t| !self.answered.contains(*t))
            .map(|t| type_url::short_name(t))
            .collect()
    }

    /// Applies a state-of-the-world response: the resources replace the whole type.
    pub fn apply_sotw(&mut self, rsp: &DiscoveryResponse) -> Result<(), ApplyError> {
        let t = known_type(&rsp.type_url)?;
        let mut next = self.parts.clone();
        clear(&mut next, t);
        for any in &rsp.resources {
            insert(&mut next, t, None, any)?;
        }
        next.versions
            .insert(t.to_string(), rsp.version_info.clone());
        self.commit(t, next);
        Ok(())
    }

    /// Applies a delta response: upserts and removals on top of what is held.
    pub fn apply_delta(&mut self, rsp: &DeltaDiscoveryResponse) -> Result<(), ApplyError> {
        let t = known_type(&rsp.type_url)?;
        let mut next = self.parts.clone();
        for name in removed_names(rsp) {
            remove(&mut next, t, name);
        }
        for r in &rsp.resources {
            let name = resource_name(r);
            let any = r
                .resource
                .as_ref()
                .ok_or_else(|| ApplyError::MissingBody(name.to_string()))?;
            insert(&mut next, t, Some(name), any)?;
        }
        next.versions
            .insert(t.to_string(), rsp.system_version_info.clone());
        self.commit(t, next);
        Ok(())
    }

    fn commit(&mut self, t: &'static str, next: Parts) {
        self.parts = next;
        self.answered.insert(t);
        let previous = self.published.load();
        let next = Snapshot::build_with(&self.parts, &self.runtimes, Some(&previous));
        self.published.store(Arc::new(next));
    }
}

/// A delta resource's name: the newer `resource_name` field when set, else the legacy `name`.
/// Applying and ACKing must agree on it, or the versions held would name other resources.
pub(super) fn resource_name(r: &DeltaResource) -> &str {
    r.resource_name
        .as_ref()
        .map(|n| n.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(&r.name)
}

/// Every name a delta response removes, from the legacy and the newer field alike.
pub(super) fn removed_names(rsp: &DeltaDiscoveryResponse) -> impl Iterator<Item = &str> {
    rsp.removed_resources
        .iter()
        .map(String::as_str)
        .chain(rsp.removed_resource_names.iter().map(|r| r.name.as_str()))
}

fn known_type(t: &str) -> Result<&'static str, ApplyError> {
    type_url::ALL
        .iter()
        .copied()
        .find(|k| *k == t)
        .ok_or_else(|| ApplyError::UnknownType(t.to_string()))
}

fn clear(parts: &mut Parts, t: &str) {
    match t {
        type_url::MESH => parts.mesh = None,
        type_url::INBOUND => parts.inbound = None,
        type_url::SERVICE => parts.services.clear(),
        type_url::CLUSTER => parts.clusters.clear(),
        type_url::ENDPOINTS => parts.endpoints.clear(),
        _ => {}
    }
}

fn remove(parts: &mut Parts, t: &str, name: &str) {
    match t {
        type_url::MESH => parts.mesh = None,
        type_url::INBOUND => parts.inbound = None,
        type_url::SERVICE => {
            parts.services.remove(name);
        }
        type_url::CLUSTER => {
            parts.clusters.remove(name);
        }
        type_url::ENDPOINTS => {
            parts.endpoints.remove(name);
        }
        _ => {}
    }
}

/// Decodes, validates and stores one resource. `envelope` is the delta `Resource.name`; when
/// given it must agree with the name inside the message (a disagreement means a server bug).
fn insert(
    parts: &mut Parts,
    t: &'static str,
    envelope: Option<&str>,
    any: &Any,
) -> Result<(), ApplyError> {
    let label = envelope.unwrap_or("<unnamed>");
    let decode_err = |source| ApplyError::Decode {
        name: label.to_string(),
        source,
    };
    let invalid = |name: &str| {
        let name = name.to_string();
        move |source| ApplyError::Invalid {
            kind: type_url::short_name(t),
            name,
            source,
        }
    };
    match t {
        type_url::MESH => {
            let m = pb::Mesh::from_any(any).map_err(decode_err)?;
            let m = model::Mesh::try_from(&m).map_err(invalid(type_url::MESH_NAME))?;
            parts.mesh = Some(Arc::new(m));
        }
        type_url::INBOUND => {
            let i = pb::Inbound::from_any(any).map_err(decode_err)?;
            let i = model::Inbound::try_from(&i).map_err(invalid(type_url::INBOUND_NAME))?;
            parts.inbound = Some(Arc::new(i));
        }
        type_url::SERVICE => {
            let s = pb::Service::from_any(any).map_err(decode_err)?;
            check_name(envelope, &s.name)?;
            let svc = model::Service::try_from(&s).map_err(invalid(&s.name))?;
            parts.services.insert(s.name, Arc::new(svc));
        }
        type_url::CLUSTER => {
            let c = pb::Cluster::from_any(any).map_err(decode_err)?;
            check_name(envelope, &c.name)?;
            let spec = model::ClusterSpec::try_from(&c).map_err(invalid(&c.name))?;
            parts.clusters.insert(c.name, Arc::new(spec));
        }
        type_url::ENDPOINTS => {
            let e = pb::Endpoints::from_any(any).map_err(decode_err)?;
            // Endpoints share their cluster's name; the field may be left empty in delta.
            let name = if e.cluster.is_empty() {
                // Stored under "" it would never join a cluster and would stay in the dump.
                match envelope.filter(|n| !n.is_empty()) {
                    Some(n) => n.to_string(),
                    None => return Err(ApplyError::Unnamed(type_url::short_name(t))),
                }
            } else {
                check_name(envelope, &e.cluster)?;
                e.cluster.clone()
            };
            let eps = model::endpoints_from_proto(&e).map_err(invalid(&name))?;
            parts.endpoints.insert(name, Arc::from(eps));
        }
        other => return Err(ApplyError::UnknownType(other.to_string())),
    }
    Ok(())
}

fn check_name(envelope: Option<&str>, inner: &str) -> Result<(), ApplyError> {
    match envelope {
        Some(got) if !got.is_empty() && got != inner => Err(ApplyError::NameMismatch {
            got: got.to_string(),
            inner: inner.to_string(),
        }),
        _ => Ok(()),
    }
}
