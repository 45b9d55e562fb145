//! Weft's sidecar proxy: an xDS-configured HTTP/TCP proxy for one workload.
//!
//! Config path: `xds` (ADS client) -> `model::Snapshot` published on a `watch` channel.
//! Request path: `outbound` (the app's explicit proxy, local mode) -> `routing` (pure) ->
//! `transport` (mesh hop to the peer's `inbound`, or plain upstream) -> `inbound` -> app.
//! Identity path: `identity` (key, CSR, CA, rotation, rustls configs) feeds the mesh hop's
//! mTLS and the xDS channel's client certificate.
//! `app` wires them together; `cli` is the command line.

pub mod admin;
pub mod app;
pub mod balance;
pub mod body;
pub mod cli;
pub mod detect;
pub mod errors;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod model;
pub mod outbound;
pub mod replay;
pub mod resilience;
pub mod routing;
pub mod telemetry;
pub mod transport;
pub mod xds;

pub use cli::main_with_args;
