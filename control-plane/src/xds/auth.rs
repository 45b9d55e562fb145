//! Which node a proxy may ask config for, given the identity in its client certificate.
//!
//! Issue 3: "a proxy may only ask for config as the node its identity allows". Config names
//! peers, routes and (later) policies, so a workload reading another's config learns more than
//! it should, and one that impersonates a node could confuse `/debug/syncz`. The rule is pure
//! and reads the proxy's own snapshot, so it follows exactly what translation decided:
//!
//! - the SPIFFE ID must be of the mesh's trust domain (the trust bundle may hold roots of
//!   others during a rotation);
//! - the node has an `Inbound` (a WorkloadEntry or pod): the certificate's SPIFFE ID must equal
//!   `Inbound.identity`;
//! - otherwise (no workload known yet): the SPIFFE ID's namespace must be the node id's.
//!
//! Checked when a stream opens. A later change of the workload's service account does not end
//! open streams; the proxy's next certificate (minted for the new account) and reconnect do.

use weft_api::mesh::Inbound;
use weft_api::type_url::{INBOUND, INBOUND_NAME, Resource as _};

use super::snapshot::Snapshot;
use crate::spiffe::{SpiffeError, SpiffeId};

/// Why a stream may not have the node's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// TLS without a client certificate.
    #[error(
        "an xDS stream needs a client certificate from the mesh CA (call CreateCertificate first)"
    )]
    NoCertificate,
    /// The certificate carries no usable SPIFFE ID.
    #[error("the client certificate has no usable SPIFFE ID: {0}")]
    BadCertificate(SpiffeError),
    /// The certificate is of another trust domain.
    #[error("the client certificate is {peer}, not of trust domain {trust_domain}")]
    WrongTrustDomain { trust_domain: String, peer: String },
    /// The identity is not the node's workload identity.
    #[error("node {node_id} runs as {expected}, but the client certificate is {peer}")]
    WrongIdentity {
        node_id: String,
        expected: String,
        peer: String,
    },
    /// No workload: the namespaces differ.
    #[error("node {node_id} is in namespace {namespace}, but the client certificate is {peer}")]
    WrongNamespace {
        node_id: String,
        namespace: String,
        peer: String,
    },
}

/// The SPIFFE ID of the leaf among `peer_certs` (the first, as TLS orders them).
pub fn peer_identity(peer_certs: Option<&[impl AsRef<[u8]>]>) -> Result<SpiffeId, AuthzError> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or(AuthzError::NoCertificate)?;
    SpiffeId::from_cert_der(leaf.as_ref()).map_err(AuthzError::BadCertificate)
}

/// Whether `peer` may read `node_id`'s config, whose snapshot is `snapshot`, in a mesh of
/// `trust_domain`.
pub fn authorize(
    peer: &SpiffeId,
    trust_domain: &str,
    node_id: &str,
    snapshot: &Snapshot,
) -> Result<(), AuthzError> {
    if peer.trust_domain() != trust_domain {
        return Err(AuthzError::WrongTrustDomain {
            trust_domain: trust_domain.to_string(),
            peer: peer.to_string(),
        });
    }
    let inbound = snapshot
        .get(INBOUND)
        .resources
        .get(INBOUND_NAME)
        .and_then(|r| Inbound::from_any(&r.resource).ok())
        .filter(|i| !i.identity.is_empty());
    if let Some(inbound) = inbound {
        if inbound.identity == peer.to_string() {
            return Ok(());
        }
        return Err(AuthzError::WrongIdentity {
            node_id: node_id.to_string(),
            expected: inbound.identity,
            peer: peer.to_string(),
        });
    }
    // The node id's syntax was checked by the generator; the namespace is after the first dot.
    let namespace = node_id
        .split_once('.')
        .map(|(_, ns)| ns)
        .unwrap_or_default();
    if namespace == peer.namespace() {
        return Ok(());
    }
    Err(AuthzError::WrongNamespace {
        node_id: node_id.to_string(),
        namespace: namespace.to_string(),
        peer: peer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::xds::snapshot::Generated;

    fn snapshot(identity: Option<&str>) -> Snapshot {
        let mut generated = Generated::new();
        if let Some(identity) = identity {
            let inbound = Inbound {
                name: "reviews".into(),
                namespace: "default".into(),
                identity: identity.into(),
                ..Default::default()
            };
            generated.insert(
                INBOUND,
                BTreeMap::from([(INBOUND_NAME.to_string(), inbound.to_any())]),
            );
        }
        Snapshot::from_generated(generated)
    }

    const TD: &str = "cluster.local";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn another_trust_domain_is_refused_even_in_the_right_namespace() {
        let me = id("spiffe://other.example/ns/default/sa/reviews");
        for snap in [
            snapshot(None),
            snapshot(Some("spiffe://cluster.local/ns/default/sa/reviews")),
        ] {
            let err = authorize(&me, TD, "reviews.default", &snap).unwrap_err();
            assert!(matches!(err, AuthzError::WrongTrustDomain { .. }), "{err}");
        }
    }

    #[test]
    fn the_workload_identity_must_match() {
        let snap = snapshot(Some("spiffe://cluster.local/ns/default/sa/reviews"));
        let me = id("spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!(authorize(&me, TD, "reviews.default", &snap), Ok(()));
        let other = id("spiffe://cluster.local/ns/default/sa/ratings");
        let err = authorize(&other, TD, "reviews.default", &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node reviews.default runs as spiffe://cluster.local/ns/default/sa/reviews, but the \
             client certificate is spiffe://cluster.local/ns/default/sa/ratings"
        );
    }

    #[test]
    fn without_a_workload_the_namespace_must_match() {
        let snap = snapshot(None);
        let me = id("spiffe://cluster.local/ns/default/sa/anything");
        assert_eq!(authorize(&me, TD, "new.default", &snap), Ok(()));
        let err = authorize(&me, TD, "new.prod", &snap).unwrap_err();
        assert!(
            matches!(err, AuthzError::WrongNamespace { ref namespace, .. } if namespace == "prod"),
            "{err}"
        );
    }

    #[test]
    fn no_certificate_is_refused() {
        assert_eq!(
            peer_identity(None::<&[Vec<u8>]>),
            Err(AuthzError::NoCertificate)
        );
        assert_eq!(
            peer_identity(Some(&[] as &[Vec<u8>])),
            Err(AuthzError::NoCertificate)
        );
        assert!(matches!(
            peer_identity(Some(&[vec![1u8, 2, 3]])),
            Err(AuthzError::BadCertificate(_))
        ));
    }
}
