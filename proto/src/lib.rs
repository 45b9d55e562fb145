//! Weft's wire contract, shared by the control plane and the proxy (and by nothing else).
//!
//! - [`discovery`]: Envoy's ADS transport (`envoy.service.discovery.v3`), field for field.
//! - [`mesh`]: Weft's own resources (`weft.mesh.v1`), sent packed in `Any`.
//! - [`type_url`]: the type URLs of those resources, and helpers to pack and unpack them.

#![allow(missing_docs, unreachable_pub)]

// Generated modules nest by protobuf package, because prost's generated code refers to other
// packages by relative `super::` paths. The short aliases below are what callers use.

/// Generated code, one module per protobuf package.
pub mod pb {
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.discovery.v3");
                }
            }
        }
    }
    pub mod weft {
        pub mod ca {
            pub mod v1 {
                tonic::include_proto!("weft.ca.v1");
            }
        }
        pub mod mesh {
            pub mod v1 {
                tonic::include_proto!("weft.mesh.v1");
            }
        }
    }
}

/// `google.rpc`: the status carried by a NACK.
pub use pb::google::rpc;

/// `envoy.config.core.v3`: `Node` and `ControlPlane`.
pub use pb::envoy::config::core::v3 as core;

/// `envoy.service.discovery.v3`: the ADS service and its request and response messages.
pub use pb::envoy::service::discovery::v3 as discovery;

/// `weft.ca.v1`: the mesh certificate authority (CSR in, certificate chain out).
pub use pb::weft::ca::v1 as ca;

/// `weft.mesh.v1`: the resources a proxy is configured with.
pub use pb::weft::mesh::v1 as mesh;

pub mod type_url;
