//! Applications behind the sidecars: plain servers that know nothing about the mesh.
//!
//! Each answers in a way that says who served the request, so a test can see where the mesh
//! sent it: the HTTP app puts its name in the body and in `x-served-by`, the gRPC app in the reply,
//! the TCP app in a prefix.
//!
//! # Failures on demand (HTTP app)
//!
//! The resilience tests need backends that fail, hang or are slow. The HTTP app does so when a
//! request asks (headers below) or when the test flips a switch on the instance ([`Control`],
//! from [`App::control`]). A request without these headers, to an app whose switches are off,
//! is answered at once with 200 as before.
//!
//! Request headers (read by the app; the mesh forwards them like any other header):
//! - `x-app-key: <key>`: the key of the per-key counter; default: the request path. Every
//!   request bumps its key's counter **in this app instance** (another instance counts apart),
//!   and the answer carries the count as `x-app-attempt` (1 for the first request of a key).
//! - `x-app-fail-first: <n>`: the first `n` requests of the key are answered with
//!   `x-app-fail-status` (default 503); later ones succeed. "Fails twice, then succeeds" is
//!   `x-app-fail-first: 2` with a fresh key.
//! - `x-app-hang-first: <n>`: the first `n` requests of the key are never answered (the app
//!   holds them until the connection goes away); later ones are answered.
//! - `x-app-delay-ms: <ms>`: wait this long before answering.
//! - `x-app-status: <code>`: answer with this status.
//!
//! Response headers: `x-served-by` (the app's name), `x-app-attempt`, `x-app-saw-version`,
//! `x-app-saw-path`, `x-app-saw-host`. The body is the app's name, whatever the status.
//!
//! Precedence: delays (the instance's, then the request's) are waited out first, then a hang;
//! the status is the instance's failure switch, else `x-app-status`, else `x-app-fail-first`,
//! else 200.
//!
//! # Calls to another service (HTTP app)
//!
//! [`http_calling`] makes an app call another service for every request it serves, through
//! its own sidecar, as Bookinfo's productpage (reviews) and reviews v2/v3 (ratings) do; see
//! [`Call`] for what the answer says about the call.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::client;

/// Generated code of the test-only gRPC service (tests/proto/echo.proto).
pub mod echo {
    tonic::include_proto!("weft.testing.v1");
}

/// A running app; it stops when the handle is dropped.
#[derive(Debug)]
pub struct App {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Requests (or connections, for TCP) served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The instance's switches and counters (HTTP app only; inert for the others).
    pub fn control(&self) -> &Control {
        &self.control
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Switches a test flips on a running HTTP app, and its per-key counters. See the module docs.
#[derive(Debug, Default)]
pub struct Control {
    /// 0: no failure.
    status: AtomicU16,
    delay_ms: AtomicU64,
    keys: Mutex<HashMap<String, u64>>,
}

impl Control {
    /// Answers every request with `status` (e.g. 500) until [`Self::heal`].
    pub fn fail_with(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Ends [`Self::fail_with`].
    pub fn heal(&self) {
        self.status.store(0, Ordering::Relaxed);
    }

    /// Makes the instance slow: every answer waits `delay` first (zero: back to normal).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// How many requests of `key` this instance has received (answered or not).
    pub fn seen(&self, key: &str) -> u64 {
        self.keys
            .lock()
            .map(|k| k.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts one request of `key`; returns its number (1-based).
    fn count(&self, key: &str) -> u64 {
        let Ok(mut keys) = self.keys.lock() else {
            return 0;
        };
        let n = keys.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

/// A call an app makes for every request it serves: `GET url` through the HTTP proxy at
/// `via` (the app's own sidecar), carrying the incoming `end-user` header on, as Bookinfo's
/// services propagate it. A try that does not answer 200 within `timeout` is tried again,
/// `tries` in all (Bookinfo's productpage: 3 s, 2 tries; reviews v2 to ratings: 10 s, 1 try;
/// reviews v3: 2.5 s, 1 try).
///
/// The app still answers 200 (as a page that shows "unavailable" does) and says how the call
/// went in response headers:
/// - `x-upstream-status`: the last try's status, or `timeout`, or `error`;
/// - `x-upstream-tries`: the number of tries made;
/// - `x-upstream-served-by`, `x-upstream-reason`: the last answer's `x-served-by` and
///   `x-weft-reason`, when it had them;
/// - the last answer's own `x-upstream-*` headers as `x-upstream-upstream-*`, so
///   `x-upstream-upstream-status` is what the called service saw of *its* call.
#[derive(Debug, Clone)]
pub struct Call {
    pub via: SocketAddr,
    pub url: String,
    pub timeout: Duration,
    pub tries: u32,
}

/// What an HTTP app is: its name, switches, and the call it makes (if any).
#[derive(Debug)]
struct HttpState {
    name: Arc<str>,
    control: Arc<Control>,
    call: Option<Call>,
}

/// An HTTP/1.1 + h2c server. The body is `name`; headers say who served it, which protocol
/// version it saw, and the path. It fails on demand (see the module docs).
pub async fn http(addr: SocketAddr, name: &str) -> App {
    serve_http(addr, name, None).await
}

/// [`http`] that also makes `call` for every request it serves.
pub async fn http_calling(addr: SocketAddr, name: &str, call: Call) -> App {
    serve_http(addr, name, Some(call)).await
}

async fn serve_http(addr: SocketAddr, name: &str, call: Option<Call>) -> App {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("app {name} cannot listen on {addr}: {e}"));
    serve_http_on(listener, name, call)
}

/// [`http`] on a listener the caller made (e.g. inside a network namespace).
pub fn http_on(listener: TcpListener, name: &str) -> App {
    serve_http_on(listener, name, None)
}

fn serve_http_on(listener: TcpListener, name: &str, call: Option<Call>) -> App {
    let addr = listener.local_addr().expect("listener address");
    let requests = Arc::new(AtomicU64::new(0));
    let control = Arc::new(Control::default());
    let state = Arc::new(HttpState {
        name: name.into(),
        control: control.clone(),
        call,
    });
    let count = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
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
        control,
        task,
    }
}

fn header<'a>(req: &'a http::Request<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_num(req: &http::Request<hyper::body::Incoming>, name: &str) -> u64 {
    header(req, name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn answer(
    state: &HttpState,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let key = header(&req, "x-app-key").unwrap_or(req.uri().path());
    let attempt = state.control.count(key);
    let delay = state.control.delay_ms.load(Ordering::Relaxed) + header_num(&req, "x-app-delay-ms");
    let hang = attempt <= header_num(&req, "x-app-hang-first");
    let fail_first = attempt <= header_num(&req, "x-app-fail-first");
    let status = match state.control.status.load(Ordering::Relaxed) {
        0 => header(&req, "x-app-status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .or_else(|| {
                fail_first.then(|| {
                    header(&req, "x-app-fail-status")
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(503)
                })
            })
            .unwrap_or(200),
        failing => failing,
    };
    let end_user = header(&req, "end-user").map(str::to_owned);
    let host = req
        .headers()
        .get(http::header::HOST)
        .cloned()
        .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()))
        .unwrap_or_else(|| http::HeaderValue::from_static(""));
    let mut rsp = http::Response::builder()
        .status(status)
        .header("x-served-by", &*state.name)
        .header("x-app-attempt", attempt)
        .header("x-app-saw-version", format!("{:?}", req.version()))
        .header("x-app-saw-path", req.uri().path())
        .header("x-app-saw-host", host);
    drop(req);

    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if hang {
        // Held until the connection goes away, which drops this future.
        std::future::pending::<()>().await;
    }
    if let Some(call) = &state.call
        && let Some(headers) = rsp.headers_mut()
    {
        for (name, value) in make_call(call, end_user.as_deref()).await {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::try_from(value),
            ) {
                headers.append(name, value);
            }
        }
    }
    rsp.body(Full::new(Bytes::from(state.name.to_string())))
        .unwrap_or_default()
}

/// Makes `call` and describes its outcome as `x-upstream-*` headers (see [`Call`]).
async fn make_call(call: &Call, end_user: Option<&str>) -> Vec<(String, String)> {
    let headers: Vec<(&str, &str)> = end_user.map(|u| ("end-user", u)).into_iter().collect();
    let mut out = Vec::new();
    let mut tries = 0;
    for _ in 0..call.tries.max(1) {
        tries += 1;
        out.clear();
        match tokio::time::timeout(call.timeout, client::get(call.via, &call.url, &headers)).await {
            Err(_) => out.push(("x-upstream-status".into(), "timeout".into())),
            Ok(Err(e)) => {
                out.push(("x-upstream-status".into(), "error".into()));
                out.push(("x-upstream-error".into(), format!("{e:#}")));
            }
            Ok(Ok(r)) => {
                out.push(("x-upstream-status".into(), r.status.to_string()));
                for (name, copy) in [
                    ("x-served-by", "x-upstream-served-by"),
                    ("x-weft-reason", "x-upstream-reason"),
                ] {
                    if let Some(v) = r.header(name) {
                        out.push((copy.into(), v.into()));
                    }
                }
                for (name, value) in &r.headers {
                    // x-upstream-status -> x-upstream-upstream-status
                    if let Some(rest) = name.as_str().strip_prefix("x-upstream-")
                        && let Ok(v) = value.to_str()
                    {
                        out.push((format!("x-upstream-upstream-{rest}"), v.into()));
                    }
                }
                if r.status == 200 {
                    break;
                }
            }
        }
    }
    out.push(("x-upstream-tries".into(), tries.to_string()));
    out
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
        control: Arc::default(),
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
    grpc_on(listener, name)
}

/// [`grpc`] on a listener the caller made (e.g. inside a network namespace).
pub fn grpc_on(listener: TcpListener, name: &str) -> App {
    let addr = listener.local_addr().expect("listener address");
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
        control: Arc::default(),
        task,
    }
}
