//! Per-type xDS bookkeeping, as pure data: what to send on connect, on ACK and on NACK.
//!
//! The rules follow Envoy's xDS protocol document and read like it:
//! - every request answering a response copies that response's nonce, ACK and NACK alike;
//! - an ACK (SotW) carries the version just applied; a NACK carries the version still in force
//!   (the previous one) and an `error_detail`;
//! - versions are tracked per type URL, never globally;
//! - delta tracks a version per resource and, on a new stream, reports them all in
//!   `initial_resource_versions` so the server sends only what changed.

use std::collections::BTreeMap;

use weft_api::core::Node;
use weft_api::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use weft_api::rpc::Status;

/// gRPC's INVALID_ARGUMENT: the code Envoy uses in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

fn error_detail(reason: &str) -> Option<Status> {
    Some(Status {
        code: INVALID_ARGUMENT,
        message: reason.to_string(),
        details: Vec::new(),
    })
}

/// State-of-the-world bookkeeping for every subscribed type.
#[derive(Debug, Clone)]
pub struct SotwState {
    node: Node,
    /// type URL -> the version last ACKed ("" before the first).
    versions: BTreeMap<String, String>,
}

impl SotwState {
    pub fn new(node: Node, type_urls: &[&str]) -> Self {
        Self {
            node,
            versions: type_urls
                .iter()
                .map(|t| (t.to_string(), String::new()))
                .collect(),
        }
    }

    /// The subscriptions that open a stream: one wildcard request per type (empty
    /// `resource_names`), carrying the version already held so a reconnect can be a no-op.
    pub fn on_connect(&self) -> Vec<DiscoveryRequest> {
        self.versions
            .iter()
            .map(|(type_url, version)| DiscoveryRequest {
                version_info: version.clone(),
                node: Some(self.node.clone()),
                resource_names: Vec::new(),
                type_url: type_url.clone(),
                response_nonce: String::new(),
                error_detail: None,
            })
            .collect()
    }

    /// ACK: the response's version becomes the type's version.
    pub fn ack(&mut self, type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
        self.versions
            .insert(type_url.to_string(), version.to_string());
        DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(self.node.clone()),
            resource_names: Vec::new(),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: None,
        }
    }

    /// NACK: echo the nonce, keep the previous version, say why.
    pub fn nack(&self, type_url: &str, nonce: &str, reason: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version(type_url).to_string(),
            node: Some(self.node.clone()),
            resource_names: Vec::new(),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error_detail(reason),
        }
    }

    pub fn version(&self, type_url: &str) -> &str {
        self.versions.get(type_url).map_or("", String::as_str)
    }
}

/// Incremental (delta) bookkeeping for every subscribed type.
#[derive(Debug, Clone)]
pub struct DeltaState {
    node: Node,
    /// type URL -> resource name -> version of the copy this proxy holds.
    resources: BTreeMap<String, BTreeMap<String, String>>,
}

impl DeltaState {
    pub fn new(node: Node, type_urls: &[&str]) -> Self {
        Self {
            node,
            resources: type_urls
                .iter()
                .map(|t| (t.to_string(), BTreeMap::new()))
                .collect(),
        }
    }

    /// The subscriptions that open a stream: a wildcard subscribe per type (empty
    /// `resource_names_subscribe` on the first request), with every version held.
    pub fn on_connect(&self) -> Vec<DeltaDiscoveryRequest> {
        self.resources
            .iter()
            .map(|(type_url, held)| DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.clone(),
                initial_resource_versions: held
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// ACK an applied response: record the new versions and drop the removed names.
    pub fn ack<'a>(
        &mut self,
        type_url: &str,
        nonce: &str,
        updated: impl IntoIterator<Item = (&'a str, &'a str)>,
        removed: impl IntoIterator<Item = &'a str>,
    ) -> DeltaDiscoveryRequest {
        let held = self.resources.entry(type_url.to_string()).or_default();
        for (name, version) in updated {
            held.insert(name.to_string(), version.to_string());
        }
        for name in removed {
            held.remove(name);
        }
        DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    /// NACK: echo the nonce, say why; the versions held do not change.
    pub fn nack(&self, type_url: &str, nonce: &str, reason: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error_detail(reason),
            ..Default::default()
        }
    }

    /// The version of each resource held for a type.
    pub fn held(&self, type_url: &str) -> Option<&BTreeMap<String, String>> {
        self.resources.get(type_url)
    }
}
