//! Type URLs of Weft's resources and helpers to pack them into, and out of, `Any`.

use prost::Message;
use prost_types::Any;

const PREFIX: &str = "type.googleapis.com/";

/// `weft.mesh.v1.Mesh`: mesh-wide settings (one resource, named [`MESH_NAME`]).
pub const MESH: &str = "type.googleapis.com/weft.mesh.v1.Mesh";
/// `weft.mesh.v1.Inbound`: the proxy's own workload (one resource, named [`INBOUND_NAME`]).
pub const INBOUND: &str = "type.googleapis.com/weft.mesh.v1.Inbound";
/// `weft.mesh.v1.Service`: routing for one host.
pub const SERVICE: &str = "type.googleapis.com/weft.mesh.v1.Service";
/// `weft.mesh.v1.Cluster`: one routing target.
pub const CLUSTER: &str = "type.googleapis.com/weft.mesh.v1.Cluster";
/// `weft.mesh.v1.Endpoints`: the endpoints of one cluster.
pub const ENDPOINTS: &str = "type.googleapis.com/weft.mesh.v1.Endpoints";

/// Every type a proxy subscribes to, in the order a proxy should apply them so that a
/// reference (service -> cluster -> endpoints) never points at something not yet known.
pub const ALL: [&str; 5] = [MESH, INBOUND, ENDPOINTS, CLUSTER, SERVICE];

/// Name of the single `Mesh` resource.
pub const MESH_NAME: &str = "mesh";
/// Name of the single `Inbound` resource.
pub const INBOUND_NAME: &str = "inbound";

/// A resource message that has a Weft type URL.
pub trait Resource: Message + Default + Sized {
    /// The full type URL, `type.googleapis.com/weft.mesh.v1.<Message>`.
    const TYPE_URL: &'static str;

    /// Packs the message into an `Any` with its type URL.
    fn to_any(&self) -> Any {
        Any {
            type_url: Self::TYPE_URL.to_string(),
            value: self.encode_to_vec(),
        }
    }

    /// Unpacks an `Any`, checking that its type URL is this message's.
    fn from_any(any: &Any) -> Result<Self, UnpackError> {
        if any.type_url != Self::TYPE_URL {
            return Err(UnpackError::WrongType {
                expected: Self::TYPE_URL,
                got: any.type_url.clone(),
            });
        }
        Self::decode(any.value.as_slice()).map_err(|e| UnpackError::Decode {
            type_url: Self::TYPE_URL,
            reason: e.to_string(),
        })
    }
}

/// Why an `Any` could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    WrongType {
        expected: &'static str,
        got: String,
    },
    Decode {
        type_url: &'static str,
        reason: String,
    },
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongType { expected, got } => {
                write!(f, "resource has type {got}, expected {expected}")
            }
            Self::Decode { type_url, reason } => write!(f, "cannot decode {type_url}: {reason}"),
        }
    }
}

impl std::error::Error for UnpackError {}

macro_rules! resource {
    ($ty:ty, $url:expr) => {
        impl Resource for $ty {
            const TYPE_URL: &'static str = $url;
        }
    };
}

resource!(crate::mesh::Mesh, MESH);
resource!(crate::mesh::Inbound, INBOUND);
resource!(crate::mesh::Service, SERVICE);
resource!(crate::mesh::Cluster, CLUSTER);
resource!(crate::mesh::Endpoints, ENDPOINTS);

/// The short message name of a type URL ("weft.mesh.v1.Service" -> "Service"), for logs.
pub fn short_name(type_url: &str) -> &str {
    let full = type_url.strip_prefix(PREFIX).unwrap_or(type_url);
    full.rsplit('.').next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh;

    #[test]
    fn round_trips_through_any() {
        let svc = mesh::Service {
            name: "reviews.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let any = svc.to_any();
        assert_eq!(any.type_url, SERVICE);
        assert_eq!(mesh::Service::from_any(&any), Ok(svc));
    }

    #[test]
    fn rejects_a_foreign_type() {
        let any = mesh::Mesh::default().to_any();
        let err = mesh::Service::from_any(&any).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected type.googleapis.com/weft.mesh.v1.Service")
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name(CLUSTER), "Cluster");
        assert_eq!(short_name("weird"), "weird");
    }
}
