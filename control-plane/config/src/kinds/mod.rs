//! Serde types for the kinds Weft reads, field for field with Istio's schemas.
//!
//! Every Istio field is present even when Weft does not act on it yet, so that existing
//! Istio YAML is accepted as-is and `deny_unknown_fields` still catches typos: an unknown
//! field is far more often a mistake (`subsets` vs `subset`) than a newer Istio field.
//! Only `metadata` is lenient, because `kubectl get -o yaml` output carries server-set
//! fields (uid, resourceVersion, managedFields) that have nothing to do with mesh config.
//!
//! Enum-like fields (`loadBalancer.simple`, `resolution`, `tls.mode`) are plain strings
//! checked by [`crate::validate`], which can then name the field and list the allowed values
//! the way Kubernetes does (`Unsupported value: "BLAH"`). Integers that Istio range-checks
//! are `i64` so that `-1` reaches the validator (and gets a range message) instead of
//! failing as a type error.

mod common;
mod destination_rule;
mod peer_authentication;
mod service_entry;
mod virtual_service;
mod workload_entry;

pub(crate) mod de;

pub use common::*;
pub use destination_rule::*;
pub use peer_authentication::*;
pub use service_entry::*;
pub use virtual_service::*;
pub use workload_entry::*;

/// API groups/versions accepted for the networking kinds.
pub const NETWORKING_API_VERSIONS: [&str; 4] = [
    "networking.weft.dev/v1",
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// API groups/versions accepted for the security kinds (PeerAuthentication).
pub const SECURITY_API_VERSIONS: [&str; 3] = [
    "security.weft.dev/v1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];
