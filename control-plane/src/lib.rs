//! Weft's control plane: config sources feed a validated model, the model is translated per
//! proxy, and an Envoy-compatible ADS server streams the result over TLS, beside the mesh CA that
//! issues proxies their SPIFFE certificates; an admin server reports on it.
//!
//! The binary is a thin wrapper over [`main_with_args`], which `weftctl` also calls to run the
//! control plane in-process (local mode).

pub mod admin;
pub mod app;
pub mod ca;
pub mod config;
pub mod metrics;
pub mod sources;
pub mod spiffe;
pub mod xds;

pub use app::{Args, main_with_args};
