//! Binding listeners, with errors that say which listener and why.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listener could not be bound; the message is what an operator needs to fix it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub reason: String,
}

/// Binds `addr` for the listener called `what` ("outbound", "inbound", "admin").
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|e| BindError {
        addr,
        what,
        reason: match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use".to_string(),
            std::io::ErrorKind::AddrNotAvailable => {
                "address not available (is it assigned to an interface?)".to_string()
            }
            _ => e.to_string(),
        },
    })
}
