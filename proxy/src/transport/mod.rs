//! Sockets and connections: listening, serving, and the connections to upstreams.
//!
//! [`Connector`] is the one seam every upstream connection goes through. The mesh hop
//! (proxy to proxy) is its `mesh_*` half: a pooled, multiplexed HTTP/2 connection per peer,
//! carrying HTTP requests with two `weft-*` headers and opaque TCP as HTTP/2 CONNECT streams
//! (see proxy/README.md). The mTLS issue wraps exactly these two methods in TLS.

mod connect;
mod h2pool;
mod headers;
mod listen;
mod server;

pub use connect::{AppProtocol, Connector, Tunnel, TunnelIo};
pub use h2pool::{H2Pool, PoolConfig, PoolError};
pub use headers::{APP_PROTOCOL_HEADER, DST_PORT_HEADER, strip_hop_by_hop};
pub use listen::{BindError, bind};
pub use server::{ConnInfo, Handler, ServerStats, ServerTimeouts, serve, serve_with};

#[cfg(test)]
mod tests;
