//! The xDS side of the control plane: per-proxy snapshots and Envoy's ADS over gRPC.
//!
//! - [`snapshot`]: content-versioned resources of one proxy.
//! - [`cache`]: one snapshot per connected proxy, regenerated (debounced) when the model changes.
//! - [`stream`]: the protocol rules, pure.
//! - [`server`]: the tonic service that moves messages between a stream and the cache, and the
//!   listener (ADS + CA, TLS or plaintext).
//! - [`tls`]: the control channel's rustls config and TLS accept loop.
//! - [`auth`]: which node a client certificate may read.
//! - [`syncz`]: what each connected proxy has been sent and has acknowledged.

pub mod auth;
pub mod cache;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod syncz;
pub mod tls;
