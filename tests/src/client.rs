//! Clients an application would use to reach the mesh through its sidecar in local mode: an
//! HTTP/1.1 client speaking to the sidecar as an HTTP proxy (absolute-form requests, as any client
//! with `HTTP_PROXY` set does), an HTTP/2 prior-knowledge client, and CONNECT for raw TCP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Trailers (gRPC's `grpc-status` after a body); empty when there were none.
    pub trailers: http::HeaderMap,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// No request in these tests should take long; a hang must fail loudly, not stall CI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request on a fresh HTTP/1.1 connection to `target` (a sidecar or an admin port).
pub async fn get(
    target: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    H1::connect(target).await?.get(url, headers).await
}

/// An HTTP/1.1 keep-alive connection to one address. Requests go out exactly as given, so an
/// absolute URL becomes an absolute-form request line (`GET http://svc:80/ HTTP/1.1`).
#[derive(Debug)]
pub struct H1 {
    target: SocketAddr,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target).await?;
        Self::over(stream).await
    }

    /// An HTTP/1.1 connection over a stream the caller opened (e.g. inside a network
    /// namespace). Should it close, the next request reconnects to its peer address from
    /// the test's own namespace, so use it for one connection's worth of requests.
    pub async fn over(stream: TcpStream) -> anyhow::Result<Self> {
        let target = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { target, sender })
    }

    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
        let mut req = http::Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new()))?).await
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> anyhow::Result<Response> {
        if self.sender.is_closed() {
            *self = Self::connect(self.target).await?;
        }
        let fut = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            read(resp).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| {
                anyhow::anyhow!("no answer from {} within {REQUEST_TIMEOUT:?}", self.target)
            })?
    }
}

/// An HTTP/2 prior-knowledge (h2c) connection to one address; requests carry `:authority`.
#[derive(Debug, Clone)]
pub struct H2 {
    sender: http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target).await?;
        Self::over(stream).await
    }

    /// An h2c connection over a stream the caller opened.
    pub async fn over(stream: TcpStream) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
        let mut req = http::Request::get(url).version(http::Version::HTTP_2);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new()))?).await
    }

    /// Sends any request (method, headers and body as given) on this connection.
    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> anyhow::Result<Response> {
        let fut = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            read(resp).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow::anyhow!("no h2 answer within {REQUEST_TIMEOUT:?}"))?
    }
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Response> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Opens an opaque TCP tunnel to `authority` through the sidecar at `proxy` with HTTP/1.1
/// CONNECT, and returns the raw stream once the proxy answered 200.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
) -> anyhow::Result<TokioIo<hyper::upgrade::Upgraded>> {
    let stream = TcpStream::connect(proxy).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header(http::header::HOST, authority)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(
        resp.status() == http::StatusCode::OK,
        "CONNECT {authority} answered {}: {:?}",
        resp.status(),
        resp.headers().get("weft-proxy-error")
    );
    Ok(TokioIo::new(hyper::upgrade::on(resp).await?))
}
