//! Per-stream xDS bookkeeping, SotW and delta, as pure state machines.
//!
//! The rules of Envoy's xDS protocol (versions, nonces, ACK/NACK, wildcard, subscriptions,
//! `initial_resource_versions`) are easy to get subtly wrong and silent when wrong, so they live
//! here, away from gRPC: given a request (or a new snapshot) the state says what happened and what
//! to send. The server only moves messages; `tests.rs` reads like the protocol document.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};

use super::snapshot::Snapshot;

/// The wildcard resource name: "everything of this type".
const WILDCARD: &str = "*";

/// Why a request cannot be processed; the server ends the stream with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// ADS multiplexes types over one stream, so each request must say which it is about.
    #[error("request without type_url")]
    MissingTypeUrl,
}

/// What a request meant, for logs, metrics and `/debug/syncz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first request for a type on this stream.
    Subscribed { type_url: String },
    /// The client applied the response with this nonce.
    Ack {
        type_url: String,
        version: String,
        nonce: String,
    },
    /// The client rejected the response with this nonce and keeps what it had.
    Nack {
        type_url: String,
        version: String,
        nonce: String,
        reason: String,
    },
    /// The request answers a response that a newer one has superseded; ignored as Envoy asks.
    Stale { type_url: String, nonce: String },
}

/// The outcome of one input: what happened, and the responses to send, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<R> {
    /// What the input meant.
    pub events: Vec<Event>,
    /// Responses to send now.
    pub responses: Vec<R>,
}

impl<R> Default for Step<R> {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            responses: Vec::new(),
        }
    }
}

/// The last rejection of a type, as `/debug/syncz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// The version that was rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub reason: String,
}

/// Where one type of one stream stands, as `/debug/syncz` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeSync {
    /// The version of the last response sent (SotW `version_info`, delta `system_version_info`).
    pub last_sent_version: Option<String>,
    /// The nonce of the last response sent.
    pub last_sent_nonce: Option<String>,
    /// The version of the last response the client ACKed.
    pub acked_version: Option<String>,
    /// The last NACK, kept after later ACKs so that an operator can see what went wrong.
    pub last_nack: Option<Nack>,
}

/// Fresh nonces: a per-stream random prefix and a counter, so that a nonce from an earlier stream
/// never matches one on this stream by chance.
#[derive(Debug, Clone)]
pub struct Nonces {
    prefix: String,
    next: u64,
}

impl Nonces {
    /// Nonces `"<prefix>-1"`, `"<prefix>-2"`, ...
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            next: 1,
        }
    }

    /// A random prefix, for real streams.
    pub fn random() -> Self {
        Self::new(format!("{:08x}", rand::random::<u32>()))
    }

    fn next(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        format!("{}-{n}", self.prefix)
    }
}

/// Types in the order a proxy should apply them (see `weft_api::type_url::ALL`), then others.
fn type_order(type_url: &str) -> (usize, &str) {
    let pos = weft_api::type_url::ALL
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(usize::MAX);
    (pos, type_url)
}

fn sorted_types<'a, T>(types: &'a BTreeMap<String, T>) -> Vec<String> {
    let mut keys: Vec<&'a String> = types.keys().collect();
    keys.sort_by_key(|t| type_order(t));
    keys.into_iter().cloned().collect()
}

fn error_reason(status: &weft_api::rpc::Status) -> String {
    if status.message.is_empty() {
        format!("code {}", status.code)
    } else {
        status.message.clone()
    }
}

/// Interprets a request that answers a response (`response_nonce` set), for SotW and delta
/// alike: a nonce other than the last one sent is stale; otherwise it is an ACK or, with
/// `error_detail`, a NACK of the last version sent, recorded in `sync`.
fn answer(
    sync: &mut TypeSync,
    type_url: &str,
    nonce: &str,
    error: Option<&weft_api::rpc::Status>,
) -> Event {
    let (type_url, nonce) = (type_url.to_string(), nonce.to_string());
    if sync.last_sent_nonce.as_ref() != Some(&nonce) {
        return Event::Stale { type_url, nonce };
    }
    let version = sync.last_sent_version.clone().unwrap_or_default();
    match error {
        Some(status) => {
            let reason = error_reason(status);
            sync.last_nack = Some(Nack {
                version: version.clone(),
                nonce: nonce.clone(),
                reason: reason.clone(),
            });
            Event::Nack {
                type_url,
                version,
                nonce,
                reason,
            }
        }
        None => {
            sync.acked_version = Some(version.clone());
            Event::Ack {
                type_url,
                version,
                nonce,
            }
        }
    }
}

/// One ADS stream's protocol state, SotW or delta: what the server task drives.
pub trait Protocol: Send + 'static {
    /// The request message.
    type Req: Send + 'static;
    /// The response message.
    type Resp: Send + 'static;
    /// `"sotw"` or `"delta"`, for logs and `/debug/syncz`.
    const KIND: &'static str;
    /// The request's `node.id`, if it has a node.
    fn node_id(req: &Self::Req) -> Option<&str>;
    /// The response's type URL.
    fn type_url(resp: &Self::Resp) -> &str;
    /// Handles a request against the proxy's current snapshot.
    fn on_request(
        &mut self,
        req: &Self::Req,
        snap: &Snapshot,
    ) -> Result<Step<Self::Resp>, ProtocolError>;
    /// Handles a new snapshot: what changed for each subscribed type.
    fn on_snapshot(&mut self, snap: &Snapshot) -> Step<Self::Resp>;
    /// Per-type bookkeeping, for `/debug/syncz`.
    fn syncs(&self) -> BTreeMap<String, TypeSync>;
}

fn type_syncs<T>(
    types: &BTreeMap<String, T>,
    sync: impl Fn(&T) -> &TypeSync,
) -> BTreeMap<String, TypeSync> {
    types
        .iter()
        .map(|(t, s)| (t.clone(), sync(s).clone()))
        .collect()
}

// === SotW ===

/// One type of a state-of-the-world stream.
#[derive(Debug, Clone, Default)]
struct SotwType {
    /// `None` is a wildcard subscription (empty `resource_names`, or `"*"`).
    names: Option<BTreeSet<String>>,
    sync: TypeSync,
}

/// A state-of-the-world (`StreamAggregatedResources`) stream.
#[derive(Debug, Clone)]
pub struct SotwStream {
    types: BTreeMap<String, SotwType>,
    nonces: Nonces,
}

impl SotwStream {
    /// A new stream, before its first request.
    pub fn new(nonces: Nonces) -> Self {
        Self {
            types: BTreeMap::new(),
            nonces,
        }
    }

    fn respond(&mut self, type_url: &str, snap: &Snapshot) -> DiscoveryResponse {
        let nonce = self.nonces.next();
        let resources = snap.get(type_url);
        let state = self.types.entry(type_url.to_string()).or_default();
        let version = resources.version_of(state.names.as_ref());
        let anys = resources
            .resources
            .iter()
            .filter(|(n, _)| state.names.as_ref().is_none_or(|names| names.contains(*n)))
            .map(|(_, r)| r.resource.clone())
            .collect();
        state.sync.last_sent_version = Some(version.clone());
        state.sync.last_sent_nonce = Some(nonce.clone());
        DiscoveryResponse {
            version_info: version,
            resources: anys,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
    }
}

impl Protocol for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const KIND: &'static str = "sotw";

    fn node_id(req: &Self::Req) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(resp: &Self::Resp) -> &str {
        &resp.type_url
    }

    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Step<DiscoveryResponse>, ProtocolError> {
        if req.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let type_url = req.type_url.clone();
        let names = requested_names(&req.resource_names);
        let mut step = Step::default();

        let Some(state) = self.types.get_mut(&type_url) else {
            // First request for this type on this stream. A non-empty version_info means the
            // client held this type before reconnecting: if it is what we would send, say
            // nothing (Envoy keeps what it has) and count it as acknowledged.
            step.events.push(Event::Subscribed {
                type_url: type_url.clone(),
            });
            let mut state = SotwType {
                names,
                ..Default::default()
            };
            let current = snap.get(&type_url).version_of(state.names.as_ref());
            let up_to_date = !req.version_info.is_empty() && req.version_info == current;
            if up_to_date {
                state.sync.last_sent_version = Some(current.clone());
                state.sync.acked_version = Some(current);
            }
            self.types.insert(type_url.clone(), state);
            if !up_to_date {
                step.responses.push(self.respond(&type_url, snap));
            }
            return Ok(step);
        };

        if !req.response_nonce.is_empty() {
            let event = answer(
                &mut state.sync,
                &type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
            let stale = matches!(event, Event::Stale { .. });
            step.events.push(event);
            if stale {
                // "A nonce becomes stale following a newer nonce being presented to the
                // client": the client will answer the newer response too; this request is
                // ignored, subscription changes included.
                return Ok(step);
            }
        }

        // Answer only if the subscription now covers something other than what was last sent:
        // an ACK or NACK with unchanged names gets no response, so a rejected version is not
        // sent again until the config changes.
        state.names = names;
        let current = snap.get(&type_url).version_of(state.names.as_ref());
        if state.sync.last_sent_version.as_ref() != Some(&current) {
            step.responses.push(self.respond(&type_url, snap));
        }
        Ok(step)
    }

    fn on_snapshot(&mut self, snap: &Snapshot) -> Step<DiscoveryResponse> {
        let mut step = Step::default();
        for type_url in sorted_types(&self.types) {
            let Some(state) = self.types.get(&type_url) else {
                continue;
            };
            let current = snap.get(&type_url).version_of(state.names.as_ref());
            if state.sync.last_sent_version.as_ref() != Some(&current) {
                step.responses.push(self.respond(&type_url, snap));
            }
        }
        step
    }

    fn syncs(&self) -> BTreeMap<String, TypeSync> {
        type_syncs(&self.types, |t| &t.sync)
    }
}

/// SotW `resource_names`: empty or containing `"*"` is a wildcard (`None`).
fn requested_names(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() || names.iter().any(|n| n == WILDCARD) {
        None
    } else {
        Some(names.iter().cloned().collect())
    }
}

// === Delta ===

/// Per resource name, what a response told the client: the version sent, or `None` for a
/// removal.
type Changes = BTreeMap<String, Option<String>>;

/// What the client rejected with its last NACK, and the version of the type's resources that
/// response was computed from.
#[derive(Debug, Clone)]
struct Rejected {
    version: String,
    changes: Changes,
}

/// One type of a delta stream.
#[derive(Debug, Clone, Default)]
struct DeltaType {
    wildcard: bool,
    /// Names subscribed explicitly.
    names: BTreeSet<String>,
    /// What the client is known to hold, name -> version: `initial_resource_versions`, then
    /// what it ACKed.
    acked: BTreeMap<String, String>,
    /// Sent since the last ACK or NACK of the latest response. Committed into `acked` on ACK;
    /// dropped on NACK, because the client then keeps the versions it had.
    pending: Changes,
    /// Not sent again while the type's resources stay at the rejected version, so that a
    /// NACK is not answered with what was just rejected; the next change re-evaluates every
    /// resource against `acked`, the rejected ones included.
    rejected: Option<Rejected>,
    /// Names subscribed to that do not exist and that the client must be told about once.
    absent: BTreeSet<String>,
    sync: TypeSync,
}

impl DeltaType {
    /// The version the client holds, counting what was sent and not answered yet as held
    /// (the client applies responses in order; a NACK reverts it).
    fn held(&self, name: &str) -> Option<&String> {
        match self.pending.get(name) {
            Some(sent) => sent.as_ref(),
            None => self.acked.get(name),
        }
    }

    /// Every name the client holds, in the sense of [`Self::held`].
    fn held_names(&self) -> BTreeSet<&String> {
        let mut names: BTreeSet<&String> = self.acked.keys().collect();
        for (name, sent) in &self.pending {
            if sent.is_some() {
                names.insert(name);
            } else {
                names.remove(name);
            }
        }
        names
    }

    /// Whether telling the client `change` about `name` would repeat what it just rejected.
    fn was_rejected(&self, name: &str, change: Option<&String>) -> bool {
        self.rejected
            .as_ref()
            .and_then(|r| r.changes.get(name))
            .is_some_and(|rejected| rejected.as_ref() == change)
    }

    fn on_ack(&mut self) {
        for (name, sent) in std::mem::take(&mut self.pending) {
            match sent {
                Some(version) => self.acked.insert(name, version),
                None => self.acked.remove(&name),
            };
        }
    }

    fn on_nack(&mut self) {
        self.rejected = Some(Rejected {
            version: self.sync.last_sent_version.clone().unwrap_or_default(),
            changes: std::mem::take(&mut self.pending),
        });
    }

    /// The client dropped `name` (or never had it); forget everything about it.
    fn forget(&mut self, name: &str) {
        self.acked.remove(name);
        self.pending.remove(name);
        self.absent.remove(name);
        if let Some(rejected) = &mut self.rejected {
            rejected.changes.remove(name);
        }
    }
}

/// An incremental (`DeltaAggregatedResources`) stream.
#[derive(Debug, Clone)]
pub struct DeltaStream {
    types: BTreeMap<String, DeltaType>,
    nonces: Nonces,
}

impl DeltaStream {
    /// A new stream, before its first request.
    pub fn new(nonces: Nonces) -> Self {
        Self {
            types: BTreeMap::new(),
            nonces,
        }
    }

    fn respond(
        &mut self,
        type_url: &str,
        snap: &Snapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let current = snap.get(type_url);
        let state = self.types.get_mut(type_url)?;
        if state
            .rejected
            .as_ref()
            .is_some_and(|r| r.version != current.version)
        {
            state.rejected = None;
        }

        let changed: Vec<Resource> = current
            .resources
            .iter()
            .filter(|(name, _)| state.wildcard || state.names.contains(*name))
            .filter(|(name, r)| state.held(name) != Some(&r.version))
            .filter(|(name, r)| !state.was_rejected(name, Some(&r.version)))
            .map(|(name, r)| Resource {
                name: name.clone(),
                version: r.version.clone(),
                resource: Some(r.resource.clone()),
                ..Default::default()
            })
            .collect();
        let mut removed: BTreeSet<String> = state
            .held_names()
            .into_iter()
            .filter(|name| !current.resources.contains_key(*name))
            .filter(|name| !state.was_rejected(name, None))
            .cloned()
            .collect();
        removed.extend(std::mem::take(&mut state.absent));

        if changed.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &changed {
            state
                .pending
                .insert(r.name.clone(), Some(r.version.clone()));
        }
        for name in &removed {
            state.pending.insert(name.clone(), None);
        }
        let nonce = self.nonces.next();
        state.sync.last_sent_version = Some(current.version.clone());
        state.sync.last_sent_nonce = Some(nonce.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info: current.version.clone(),
            resources: changed,
            type_url: type_url.to_string(),
            nonce,
            removed_resources: removed.into_iter().collect(),
            ..Default::default()
        })
    }
}

impl Protocol for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const KIND: &'static str = "delta";

    fn node_id(req: &Self::Req) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(resp: &Self::Resp) -> &str {
        &resp.type_url
    }

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<Step<DeltaDiscoveryResponse>, ProtocolError> {
        if req.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let type_url = req.type_url.clone();
        let resources = snap.get(&type_url);
        let mut step = Step::default();
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if first {
            step.events.push(Event::Subscribed {
                type_url: type_url.clone(),
            });
            // The first request of a type is a wildcard unless it names resources; on a
            // reconnect it also says what the client already holds.
            state.wildcard = req.resource_names_subscribe.is_empty();
            state.acked = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        } else if !req.response_nonce.is_empty() {
            // A stale nonce is no ACK or NACK; subscription changes below still apply, since
            // in delta they are independent of the nonce.
            let event = answer(
                &mut state.sync,
                &type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
            match event {
                Event::Ack { .. } => state.on_ack(),
                Event::Nack { .. } => state.on_nack(),
                _ => {}
            }
            step.events.push(event);
        }

        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
            } else if state.names.insert(name.clone())
                && !resources.resources.contains_key(name)
                && state.held(name).is_none()
            {
                state.absent.insert(name.clone());
            }
        }
        if req.resource_names_unsubscribe.iter().any(|n| n == WILDCARD) {
            state.wildcard = false;
        }
        for name in &req.resource_names_unsubscribe {
            state.names.remove(name);
            // The client drops an unsubscribed resource itself, unless a wildcard
            // subscription still covers it; nothing to send either way.
            if name != WILDCARD && !state.wildcard {
                state.forget(name);
            }
        }

        // The first request always gets an answer, even an empty one, so the client knows it is
        // in sync; later ones only when there is something to say.
        if let Some(resp) = self.respond(&type_url, snap, first) {
            step.responses.push(resp);
        }
        Ok(step)
    }

    fn on_snapshot(&mut self, snap: &Snapshot) -> Step<DeltaDiscoveryResponse> {
        let mut step = Step::default();
        for type_url in sorted_types(&self.types) {
            if let Some(resp) = self.respond(&type_url, snap, false) {
                step.responses.push(resp);
            }
        }
        step
    }

    fn syncs(&self) -> BTreeMap<String, TypeSync> {
        type_syncs(&self.types, |t| &t.sync)
    }
}

#[cfg(test)]
mod tests;
