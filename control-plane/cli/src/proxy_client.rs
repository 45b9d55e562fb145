//! A small HTTP/1.1 client for the demo: it talks to one address (a sidecar's outbound
//! listener used as an HTTP proxy, or an admin port) and keeps its connections for reuse.
//!
//! Requests to a proxy are sent in absolute form (`GET http://reviews:9080/ HTTP/1.1`), which is
//! what any HTTP client does when `HTTP_PROXY` is set; that is how an app in local mode reaches
//! the mesh.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response read to the end.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

/// Keep-alive HTTP/1.1 connections to one address.
#[derive(Debug)]
pub(crate) struct Client {
    target: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("HTTP error talking to {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// No demo request takes long; a hang means something is broken and should say so.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub(crate) fn new(target: SocketAddr) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `GET url` with extra headers and reads the whole response.
    pub(crate) async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, Error> {
        let mut req = http::Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new()))?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(req))
            .await
            .map_err(|_| Error::Timeout(self.target, REQUEST_TIMEOUT))?
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Response, Error> {
        let mut sender = match self.take_idle() {
            Some(s) => s,
            None => self.connect().await?,
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Error::Http(self.target, e))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::Http(self.target, e))?
            .to_bytes();
        if !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(sender);
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| Error::Connect(self.target, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Http(self.target, e))?;
        tokio::spawn(async move {
            // The connection ends when the peer closes it or the sender is dropped; either is
            // normal for a keep-alive pool.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// One-shot GET that returns only the status, or None if nothing answered (readiness probes).
pub(crate) async fn get_status(target: SocketAddr, url: &str) -> Option<u16> {
    Client::new(target)
        .get(url, &[])
        .await
        .ok()
        .map(|r| r.status)
}
