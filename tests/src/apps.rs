//! Applications behind the sidecars: plain servers that know nothing about the mesh.
//!
//! Each answers in a way that says who served the request, so a test can see where the mesh
//! sent it: the HTTP app puts its name in the body and in `x-served-by`, the gRPC app in the reply,
//! the TCP app in a prefix.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Generated code of the test-only gRPC service (tests/proto/echo.proto).
pub mod echo {
    tonic::include_proto!("weft.testing.v1");
}

/// A running app; it stops when the handle is dropped.
#[derive(Debug)]
pub struct App {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Requests (or connections, for TCP) served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 + h2c server. The body is `name`; headers say who served it, which protocol
/// version it saw, and the path.
pub async fn http(addr: SocketAddr, name: &str) -> App {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("app {name} cannot listen on {addr}: {e}"));
    let requests = Arc::new(AtomicU64::new(0));
    let name: Arc<str> = name.into();
    let count = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    let resp = http::Response::builder()
                        .header("x-served-by", &*name)
                        .header("x-app-saw-version", format!("{:?}", req.version()))
                        .header("x-app-saw-path", req.uri().path())
                        .header(
                            "x-app-saw-host",
                            req.headers()
                                .get(http::header::HOST)
                                .cloned()
                                .or_else(|| {
                                    req.uri().authority().and_then(|a| a.as_str().parse().ok())
                                })
                                .unwrap_or_else(|| http::HeaderValue::from_static("")),
                        )
                        .body(Full::new(Bytes::from(name.to_string())));
                    async move { Ok::<_, Infallible>(resp.unwrap_or_default()) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        requests,
        task,
    }
}

/// A TCP server that answers every chunk it reads with `<prefix> <chunk>`.
pub async fn tcp_echo(addr: SocketAddr, prefix: &str) -> App {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("tcp app cannot listen on {addr}: {e}"));
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    let prefix: Arc<str> = prefix.into();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::Relaxed);
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = format!("{prefix} ").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if stream.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    App {
        addr,
        requests,
        task,
    }
}

#[derive(Debug)]
struct EchoService {
    name: String,
    count: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<echo::SayRequest>,
    ) -> Result<tonic::Response<echo::SayReply>, tonic::Status> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let message = request.into_inner().message;
        if message == "fail" {
            // A failure after a normal response head: grpc-status travels in the trailers.
            return Err(tonic::Status::failed_precondition("asked to fail"));
        }
        Ok(tonic::Response::new(echo::SayReply {
            message,
            served_by: self.name.clone(),
        }))
    }
}

/// A gRPC server (h2c) with the Echo service.
pub async fn grpc(addr: SocketAddr, name: &str) -> App {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("grpc app cannot listen on {addr}: {e}"));
    let requests = Arc::new(AtomicU64::new(0));
    let svc = echo::echo_server::EchoServer::new(EchoService {
        name: name.to_string(),
        count: requests.clone(),
    });
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    App {
        addr,
        requests,
        task,
    }
}
