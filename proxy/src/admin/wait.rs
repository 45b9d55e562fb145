//! `weft-proxy wait`: the client side of `/ready`, for holding an application until its
//! sidecar can carry traffic (Istio's `holdApplicationUntilProxyStarts`).
//!
//! It polls, with a short capped backoff: the proxy has no way to push readiness to a process
//! that is not connected yet, and a poll every few hundred milliseconds costs nothing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// First pause between polls; doubled after each failed poll up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Long enough not to busy the proxy, short enough that the app starts soon after it is ready.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// One poll never takes longer than this, so a proxy that accepts but does not answer cannot
/// stall the whole wait past its timeout.
const POLL_LIMIT: Duration = Duration::from_secs(2);

/// `/ready` did not answer 200 within the timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the proxy at {addr} was not ready after {timeout:?}: {last}")]
pub struct NotReady {
    pub addr: String,
    pub timeout: Duration,
    /// What the last poll saw: a status and the body's first line, or the connection error.
    pub last: String,
}

/// Polls `http://<addr>/ready` until it answers 200 (`Ok`) or `timeout` passes.
pub async fn wait_ready(addr: &str, timeout: Duration) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut last = "no answer yet".to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(POLL_LIMIT), poll(addr)).await {
            Ok(Ok((200, _))) => return Ok(()),
            Ok(Ok((status, body))) => {
                let first = body.lines().next().unwrap_or("").trim();
                last = format!("/ready answered {status}: {first}");
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("/ready did not answer within {POLL_LIMIT:?}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Err(NotReady {
        addr: addr.to_string(),
        timeout,
        last,
    })
}

/// One `GET /ready`: the status and body, or why there was none.
async fn poll(addr: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection task ends with the exchange; its error, if any, shows in the response.
    tokio::spawn(conn);
    let req = http::Request::get("/ready")
        .header(http::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
