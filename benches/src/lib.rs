//! Weft's benchmarks (PERFORMANCE.md §7): the pieces of `meshbench`, as a library so that they
//! are unit-tested and so the suite can run the load generator in-process when it must.
//!
//! Benchmarks measure; they never gate anything on a number. The only failures are a broken
//! harness or a request that errors.

pub mod app;
pub mod certs;
pub mod load;
pub mod peers;
pub mod probe;
pub mod report;
pub mod rtt;
pub mod scale;
pub mod stats;
pub mod suite;
pub mod sys;
pub mod topo;
pub mod weft;
