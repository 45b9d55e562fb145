//! Weft's configuration API: Istio-compatible kinds, YAML with positions, validation, the
//! source-agnostic model and index, and pure per-proxy translation.
//!
//! This crate has no tokio and no network (STYLE.md §9) so that the control plane, the
//! admission webhook and `weftctl analyze` share one validator, and so that every rule is
//! tested with plain `#[test]`s. The path through it:
//!
//! ```text
//! text --parse::parse_str--> Resource (schema-valid) --Index::apply--> Model --translate::for_proxy--> ProxyResources
//!         (Diagnostics)                                 (cross-reference Diagnostics)
//! ```
//!
//! Deliberate differences from Istio are listed in this crate's README.md.

pub mod diag;
pub mod host;
pub mod index;
pub mod kinds;
pub mod model;
pub mod parse;
pub mod translate;
pub mod validate;
mod yaml;

pub use diag::{Diagnostic, Kind, ObjectRef, Severity};
pub use index::Index;
pub use model::{MeshSettings, Model, OutboundTrafficPolicy};
pub use parse::{Object, Origin, Parsed, Resource, parse_str};
pub use translate::{ProxyId, ProxyResources, for_proxy};
pub use yaml::Positions;
