//! Sockets and connections: listening, serving, and the connections to upstreams.
//!
//! [`Connector`] is the one seam every upstream connection goes through. The mesh hop
//! (proxy to proxy) is its `mesh_*` half: a pooled, multiplexed HTTP/2 connection per peer,
//! carrying HTTP requests with two `weft-*` headers and opaque TCP as HTTP/2 CONNECT streams
//! (see proxy/README.md), over mTLS with SPIFFE identities when the proxy has one.
//! `origin` is TLS origination to servers outside the mesh (DestinationRule SIMPLE).
//! Every upstream connection is dialed and kept as its cluster's [`DialProfile`] says
//! (DestinationRule `connectionPool`: connect timeout, keep-alive, lifetime, idle timeouts,
//! requests per connection, streams per connection): `dial` opens it, `h1pool` / `h2pool`
//! pool it under a key that includes the profile, `idle` closes idle tunnels.
//! `tls` holds the TLS vocabulary and the traits `identity` implements.

mod connect;
mod dial;
mod h1pool;
mod h2pool;
mod headers;
mod idle;
mod listen;
mod origin;
mod profile;
mod server;
mod tls;

pub use connect::{AppProtocol, Connector, Tunnel, TunnelIo};
pub use dial::{PoolError, TlsConfigFn, TlsDial};
pub use h1pool::H1Pool;
pub use h2pool::{H2Pool, PeerTls, PoolConfig, PoolKey};
pub use headers::{APP_PROTOCOL_HEADER, DST_PORT_HEADER, strip_hop_by_hop};
pub use listen::{BindError, bind};
pub use origin::{check_sans, client_config as origin_client_config};
pub use profile::{DEFAULT_KEEPALIVE, DialProfile, Keepalive};
pub(crate) use server::serve_http;
pub use server::{
    Admit, BoxFuture, ConnInfo, Handler, Intercepted, OrigDst, ServerStats, ServerTimeouts,
    SoOriginalDst, TlsAccept, serve, serve_intercepting, serve_mesh_tls, serve_tls, serve_with,
};
pub(crate) use tls::handshake_signatures;
pub use tls::{
    ChainVerifier, ExpectedIdentities, LeafCheck, MeshClientTls, MeshSecurity, MeshServerTls,
    TlsFailure, TlsReason,
};

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;
