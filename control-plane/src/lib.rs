//! Weft's control plane: config sources feed a validated model, the model is translated per
//! proxy, and an Envoy-compatible ADS server streams the result; an admin server reports on it.
//!
//! The binary is a thin wrapper over [`main_with_args`], which `weftctl` also calls to run the
//! control plane in-process (local mode).

pub mod admin;
pub mod app;
pub mod config;
pub mod metrics;
pub mod sources;
pub mod xds;

pub use app::{Args, main_with_args};
