//! `meshbench probe URL`: wait until a plain-HTTP URL answers 200, polling every 50 ms with a
//! fresh connection per try (readiness of apps, peers and proxies inside a namespace, where the
//! harness has no HTTP client of its own).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(50);
/// One try never takes longer than this, so a black-holed connect does not eat the budget.
const TRY_LIMIT: Duration = Duration::from_secs(2);

/// Command-line arguments of `meshbench probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// http://HOST:PORT/PATH
    pub url: String,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = crate::load::parse_duration)]
    pub timeout: Duration,
}

/// Where a probe URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port` to connect to and to send as Host.
    pub(crate) authority: String,
    pub(crate) path: String,
}

/// Parses `http://host[:port][/path]` (port 80 by default; no TLS).
pub(crate) fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse().with_context(|| format!("probe URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("probe URL {url:?}: only http:// is supported");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("probe URL {url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(Target {
        authority: format!("{}:{port}", authority.host()),
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
    })
}

/// One GET on a fresh connection: the status, or why there was none.
async fn try_once(target: &Target) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(target.authority.as_str())
        .await
        .with_context(|| format!("connect {}", target.authority))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = target.path.parse().context("request path")?;
    req.headers_mut().insert(
        HOST,
        HeaderValue::from_str(&target.authority).context("Host header")?,
    );
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    let resp = sender.send_request(req).await.context("GET")?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .context("reading the body")?;
    Ok(status)
}

/// Polls `url` until it answers 200; the error names the URL and the last failure.
pub async fn wait_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    loop {
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(TRY_LIMIT);
        let last = match tokio::time::timeout(limit, try_once(&target)).await {
            Ok(Ok(StatusCode::OK)) => return Ok(()),
            Ok(Ok(status)) => format!("status {status}"),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {limit:?}"),
        };
        if Instant::now() + INTERVAL >= deadline {
            bail!("{url} did not answer 200 within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// `meshbench probe`: exit 0 once the URL answers 200.
pub fn main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the probe's runtime")?;
    runtime.block_on(wait_ok(&args.url, args.timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://198.18.0.2:8080/1024?x=1").unwrap();
        assert_eq!(t.authority, "198.18.0.2:8080");
        assert_eq!(t.path, "/1024?x=1");
        let t = parse_url("http://localhost").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("localhost:80", "/")
        );
        let t = parse_url("http://[::1]:9000/").unwrap();
        assert_eq!(t.authority, "[::1]:9000");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("x:80").is_err());
    }
}
