//! The demo's applications: a small bookinfo (productpage -> reviews v1/v2/v3 -> ratings).
//!
//! Each app is a plain HTTP server that knows nothing about Weft: it reaches other services by
//! name through its sidecar, used as an HTTP proxy, exactly as an app with `HTTP_PROXY` set
//! would. Answers are JSON that says who served them, so the demo can measure what the mesh did.
//!
//! - productpage: `GET /productpage` calls `http://reviews:9080/reviews/0`, passing the
//!   `end-user` header on (as bookinfo does after login), and embeds the answer.
//! - reviews v1: no stars. v2 (black stars) and v3 (red stars) call `http://ratings:9080/ratings/0`.
//! - ratings: a rating of 5.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};

use crate::proxy_client::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    Productpage,
    Reviews,
    Ratings,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AppArgs {
    /// Which app to run.
    #[arg(long, value_enum)]
    pub(crate) kind: Kind,
    /// Version label (reviews: v1 no stars, v2 black stars, v3 red stars).
    #[arg(long, default_value = "v1")]
    pub(crate) version: String,
    /// Address to serve on (the workload's address and app port).
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// The workload's sidecar outbound listener, used as an HTTP proxy.
    #[arg(long)]
    pub(crate) proxy: SocketAddr,
}

#[derive(Debug)]
struct App {
    kind: Kind,
    version: String,
    upstream: Client,
}

pub(crate) fn main(args: AppArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo app: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: AppArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let app = Arc::new(App {
        kind: args.kind,
        version: args.version,
        upstream: Client::new(args.proxy),
    });
    eprintln!(
        "demo app {:?} {} listening on {}",
        app.kind, app.version, args.listen
    );
    loop {
        tokio::select! {
            () = crate::local::shutdown_signal() => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

impl App {
    async fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Full<Bytes>> {
        if req.uri().path() == "/ready" {
            return http::Response::new(Full::new(Bytes::from_static(b"ready")));
        }
        let user = req
            .headers()
            .get("end-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match self.kind {
            Kind::Ratings => {
                Ok(json!({"service": "ratings", "version": self.version, "rating": 5}))
            }
            Kind::Reviews => self.reviews(user.as_deref()).await,
            Kind::Productpage => self.productpage(user.as_deref()).await,
        };
        let (status, body) = match body {
            Ok(v) => (200, v),
            Err(e) => (
                502,
                json!({"service": format!("{:?}", self.kind), "error": e}),
            ),
        };
        let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    async fn productpage(&self, user: Option<&str>) -> Result<Value, String> {
        let reviews = self.call("http://reviews:9080/reviews/0", user).await?;
        Ok(
            json!({"service": "productpage", "version": self.version, "user": user, "reviews": reviews}),
        )
    }

    async fn reviews(&self, user: Option<&str>) -> Result<Value, String> {
        let stars = match self.version.as_str() {
            "v2" => "black",
            "v3" => "red",
            _ => {
                return Ok(json!({"service": "reviews", "version": self.version, "stars": null}));
            }
        };
        let ratings = self.call("http://ratings:9080/ratings/0", user).await?;
        Ok(
            json!({"service": "reviews", "version": self.version, "stars": stars, "ratings": ratings}),
        )
    }

    async fn call(&self, url: &str, user: Option<&str>) -> Result<Value, String> {
        let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
        let resp = self
            .upstream
            .get(url, &headers)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            let why = resp
                .headers
                .get("weft-proxy-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!("{url} answered {} {why}", resp.status));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("{url}: bad JSON: {e}"))
    }
}
