//! `meshbench app`: the upstream application of PERFORMANCE.md §7.1, built to cost almost
//! nothing so that what is measured is the path in front of it.
//!
//! One port speaks HTTP/1.1 and h2c (prior knowledge): `GET /<n>` answers n bytes (`/`: 16)
//! sliced from one shared buffer, `POST` streams the request body back, and a request with
//! `content-type: application/grpc` gets its frames back followed by `grpc-status: 0`. `--tcp`
//! adds a TCP echo. Single-threaded runtime, keep-alive, TCP_NODELAY.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The bytes every `GET /<n>` answer is sliced from; longer answers repeat it.
const CHUNK: usize = 256 * 1024;
/// Room for connection bursts (the churn workload opens hundreds per second).
const BACKLOG: u32 = 4096;
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
const ECHO_BUFFER: usize = 64 * 1024;
/// HTTP/2 streams per connection (hyper's default of 200 would throttle the load generator's
/// multiplexed connections before the path under test does).
const MAX_STREAMS: u32 = 4096;

/// Command-line arguments of `meshbench app`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// HTTP/1.1 + h2c listen address.
    #[arg(long)]
    pub http: SocketAddr,
    /// TCP echo listen address.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// n bytes of body.
    Fixed(u64),
    /// The request body back.
    Echo,
    /// The gRPC frames back, then `grpc-status: 0`.
    Grpc,
    NotFound,
    MethodNotAllowed,
}

/// Routes by method, path and content type (pure).
pub(crate) fn route(method: &Method, path: &str, content_type: Option<&[u8]>) -> Route {
    if content_type.is_some_and(|c| c.starts_with(b"application/grpc")) {
        return Route::Grpc;
    }
    match *method {
        Method::POST | Method::PUT => Route::Echo,
        Method::GET | Method::HEAD => match path.strip_prefix('/') {
            Some("") => Route::Fixed(16),
            Some(n) => n.parse().map_or(Route::NotFound, Route::Fixed),
            None => Route::NotFound,
        },
        _ => Route::MethodNotAllowed,
    }
}

/// A response body that costs no copy: slices of the shared buffer, or the request body
/// streamed back.
#[derive(Debug)]
enum AppBody {
    Fixed { chunk: Bytes, left: usize },
    Echo(Incoming),
    Grpc { inner: Incoming, done: bool },
    Empty,
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            AppBody::Fixed { chunk, left } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(chunk.len());
                *left -= n;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
            AppBody::Echo(inner) => Pin::new(inner).poll_frame(cx),
            AppBody::Grpc { inner, done } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // The client's own trailers (if any) are not echoed.
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        *done = true;
                        let mut trailers = HeaderMap::with_capacity(1);
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
            },
            AppBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Fixed { left, .. } => *left == 0,
            AppBody::Echo(inner) => inner.is_end_stream(),
            AppBody::Grpc { done, .. } => *done,
            AppBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AppBody::Fixed { left, .. } => SizeHint::with_exact(*left as u64),
            AppBody::Echo(inner) => inner.size_hint(),
            // Trailers follow, so no content-length.
            AppBody::Grpc { .. } => SizeHint::default(),
            AppBody::Empty => SizeHint::with_exact(0),
        }
    }
}

fn respond(req: Request<Incoming>, chunk: &Bytes) -> Response<AppBody> {
    let content_type = req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let decision = route(req.method(), req.uri().path(), content_type);
    let head_only = req.method() == Method::HEAD;
    let (status, body) = match decision {
        Route::Fixed(n) => match usize::try_from(n) {
            Ok(left) if !head_only => (
                StatusCode::OK,
                AppBody::Fixed {
                    chunk: chunk.clone(),
                    left,
                },
            ),
            Ok(_) => {
                // HEAD: the headers a GET would get (content-length n), no body.
                let mut resp = Response::new(AppBody::Empty);
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(n));
                return resp;
            }
            Err(_) => (StatusCode::NOT_FOUND, AppBody::Empty),
        },
        Route::Echo => (StatusCode::OK, AppBody::Echo(req.into_body())),
        Route::Grpc => {
            let body = AppBody::Grpc {
                inner: req.into_body(),
                done: false,
            };
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            return resp;
        }
        Route::NotFound => (StatusCode::NOT_FOUND, AppBody::Empty),
        Route::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, AppBody::Empty),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

/// Binds with a deep accept backlog and SO_REUSEADDR (restarts between rounds).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(|| format!("socket for {addr}"))?;
    socket
        .set_reuseaddr(true)
        .with_context(|| format!("SO_REUSEADDR for {addr}"))?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listening on {addr}"))
}

async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Best effort: a socket that refuses TCP_NODELAY still works.
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                // EMFILE and friends pass; stopping the app would fail the whole run.
                eprintln!("meshbench app: accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Serves HTTP/1.1 and h2c on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener) {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().max_concurrent_streams(MAX_STREAMS);
    loop {
        let stream = accept(&listener).await;
        let chunk = chunk.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = respond(req, &chunk);
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client going away mid-request is its business, not an app failure.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Echoes every TCP connection on `listener` until the task is dropped.
pub async fn serve_tcp_echo(listener: TcpListener) {
    loop {
        let mut stream = accept(&listener).await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; ECHO_BUFFER];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `meshbench app`: binds, prints `ready http=ADDR [tcp=ADDR]`, serves until SIGTERM/SIGINT.
pub fn main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the app's runtime")?;
    runtime.block_on(async {
        let http = bind(args.http)?;
        let tcp = args.tcp.map(bind).transpose()?;
        let mut line = format!("ready http={}", http.local_addr().context("http address")?);
        if let Some(tcp) = &tcp {
            line.push_str(&format!(
                " tcp={}",
                tcp.local_addr().context("tcp address")?
            ));
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .context("printing readiness")?;
        drop(stdout);

        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let echo = async {
            match tcp {
                Some(l) => serve_tcp_echo(l).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = serve_http(http) => {}
            () = echo => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let grpc = Some(&b"application/grpc+proto"[..]);
        assert_eq!(route(&Method::POST, "/x.Y/Z", grpc), Route::Grpc);
        assert_eq!(route(&Method::POST, "/anything", None), Route::Echo);
        assert_eq!(route(&Method::GET, "/", None), Route::Fixed(16));
        assert_eq!(route(&Method::GET, "/1024", None), Route::Fixed(1024));
        assert_eq!(route(&Method::HEAD, "/7", None), Route::Fixed(7));
        assert_eq!(route(&Method::GET, "/healthz", None), Route::NotFound);
        assert_eq!(route(&Method::DELETE, "/1", None), Route::MethodNotAllowed);
    }

    #[test]
    fn fixed_bodies_are_sliced_to_the_exact_length() {
        let chunk = Bytes::from(vec![b'x'; 10]);
        let mut body = AppBody::Fixed { chunk, left: 25 };
        assert_eq!(body.size_hint().exact(), Some(25));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            sizes.push(frame.into_data().unwrap().len());
        }
        assert_eq!(sizes, [10, 10, 5]);
        assert!(body.is_end_stream());
    }
}
