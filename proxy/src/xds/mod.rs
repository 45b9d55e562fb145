//! The config path: an ADS client that turns the control plane's responses into snapshots.
//!
//! `state` decides what to send (pure protocol bookkeeping), `apply` decides whether a response
//! is acceptable and publishes the new snapshot, and `client` only moves messages over a
//! [`Transport`]. Only this module (and `model`'s conversions) know the wire types.

mod apply;
mod client;
mod state;

pub use apply::{Applier, ApplyError};
pub use client::{
    Backoff, ClientIdentityFn, GrpcTransport, Mode, ResponseStream, Transport, TransportError,
    XdsClient, XdsStatus,
};
pub use state::{DeltaState, SotwState};

/// Creates the `Node` this proxy identifies itself with.
pub fn node(id: &str) -> weft_api::core::Node {
    weft_api::core::Node {
        id: id.to_string(),
        user_agent_name: "weft-proxy".to_string(),
        user_agent_version_type: Some(
            weft_api::core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
