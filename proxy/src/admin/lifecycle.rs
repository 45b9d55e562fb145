//! The proxy's shutdown state as the admin endpoints see it: whether draining has started
//! (`/ready` then answers 503) and how to ask for it (`POST /quitquitquit`, as a signal does).
//!
//! Two separate facts on purpose: a quit *request* (the token) and the drain having *started*
//! (the flag). `app::run` sets the flag only once the data-plane listeners are closed, so
//! anyone who sees `/ready` answer 503 for draining also sees new connections refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared between `app::run` (which drains) and the admin server (which reports and asks).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Cancelled to ask for a drain; `app::run` waits on it (the signal handler cancels it too).
    quit: CancellationToken,
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    /// A lifecycle whose quit requests cancel `quit`.
    pub fn new(quit: CancellationToken) -> Self {
        Self {
            quit,
            draining: Arc::default(),
        }
    }

    /// Asks the proxy to drain and exit, as SIGTERM does.
    pub fn quit(&self) {
        self.quit.cancel();
    }

    /// Whether a drain was asked for (it may not have started yet).
    pub fn quit_requested(&self) -> bool {
        self.quit.is_cancelled()
    }

    /// Marks the drain as started: the listeners are closed, `/ready` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Both ends of an admin connection, so `/quitquitquit` can tell a caller inside the pod
/// from one outside it.
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer {
    pub remote: SocketAddr,
    /// The address the connection arrived on; `None` if the socket could not say.
    pub local: Option<SocketAddr>,
}

impl AdminPeer {
    /// Whether the caller is in this pod (network namespace): a loopback source, or the
    /// pod's own address as source (a process in the pod calling the pod IP). Other pods and
    /// nodes have other source addresses, so they cannot make the proxy quit.
    pub fn is_local(&self) -> bool {
        let ip = self.remote.ip().to_canonical();
        ip.is_loopback() || self.local.is_some_and(|l| l.ip().to_canonical() == ip)
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}
