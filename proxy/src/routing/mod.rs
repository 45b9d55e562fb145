//! Pure routing decisions: request facts + `&Snapshot` in, a [`HttpDecision`] or a
//! [`ProxyError`](crate::errors::ProxyError) out. No I/O here, so every rule is a `#[test]`.

mod matches;
mod select;

pub use matches::{RequestView, match_route};
pub use select::{
    HttpDecision, TcpDecision, parse_authority, pick_endpoint, pick_weighted, select_http,
    select_http_in, select_tcp, select_tcp_in,
};

#[cfg(test)]
mod tests;
