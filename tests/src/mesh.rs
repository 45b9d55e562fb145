//! The standard test mesh: the registry in `tests/fixtures/registry.yaml`, a control plane, a
//! sidecar per workload and the apps behind them.

use crate::apps::{self, App};
use crate::client::{H1, Response};
use crate::{ConfigDir, ControlPlane, Net, Proxy, eventually};

/// The registry every end-to-end test starts from.
pub const REGISTRY: &str = include_str!("../fixtures/registry.yaml");

/// A running test mesh. `client` is a workload with no service, used to send requests.
#[derive(Debug)]
pub struct Mesh {
    pub net: Net,
    pub dir: ConfigDir,
    pub cp: ControlPlane,
    pub client: Proxy,
    pub web_v1: Proxy,
    pub web_v2: Proxy,
    pub api: Proxy,
    pub apps: Vec<App>,
}

impl Mesh {
    /// Writes the registry plus `extra` files, starts everything with delta xDS.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_with(extra, "delta").await
    }

    pub async fn start_with(extra: &[(&str, &str)], xds_mode: &str) -> Self {
        Self::start_opts(extra, xds_mode, &[]).await
    }

    /// Like [`Self::start_with`], with extra control-plane flags.
    pub async fn start_opts(extra: &[(&str, &str)], xds_mode: &str, cp_args: &[&str]) -> Self {
        let net = Net::new();
        let dir = ConfigDir::new(net);
        dir.write("registry.yaml", REGISTRY);
        for (name, text) in extra {
            dir.write(name, text);
        }
        let apps = vec![
            apps::http(net.addr(11, 8080), "web-v1").await,
            apps::http(net.addr(12, 8080), "web-v2").await,
            apps::http(net.addr(13, 8080), "api").await,
            apps::grpc(net.addr(11, 9090), "web-v1").await,
            apps::grpc(net.addr(12, 9090), "web-v2").await,
            apps::tcp_echo(net.addr(11, 9000), "web-v1").await,
            apps::tcp_echo(net.addr(12, 9000), "web-v2").await,
        ];
        let cp = ControlPlane::start_with(net, dir.path(), cp_args).await;
        let client = Proxy::start_with(net, 10, "client", &cp, xds_mode).await;
        let web_v1 = Proxy::start_with(net, 11, "web-v1", &cp, xds_mode).await;
        let web_v2 = Proxy::start_with(net, 12, "web-v2", &cp, xds_mode).await;
        let api = Proxy::start_with(net, 13, "api", &cp, xds_mode).await;
        Self {
            net,
            dir,
            cp,
            client,
            web_v1,
            web_v2,
            api,
            apps,
        }
    }

    /// A keep-alive HTTP/1.1 connection to the client workload's sidecar.
    pub async fn h1(&self) -> H1 {
        H1::connect(self.client.outbound)
            .await
            .expect("connect to the client sidecar")
    }

    /// Sends `GET url` from the client workload until `pred` holds for an answer.
    pub async fn until(&self, what: &str, url: &str, pred: impl Fn(&Response) -> bool) {
        eventually(what, || async {
            let mut c = self.h1().await;
            c.get(url, &[]).await.ok().filter(|r| pred(r)).map(|_| ())
        })
        .await;
    }
}

/// Counts which app served each of `n` requests (by `x-served-by`); fails on a non-200 answer.
pub async fn served_by(
    c: &mut H1,
    n: usize,
    url: &str,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = c.get(url, headers).await.expect("request through the mesh");
        assert_eq!(r.status, 200, "request {i} to {url} failed: {r:?}");
        let by = r.header("x-served-by").unwrap_or("?").to_string();
        *counts.entry(by).or_insert(0) += 1;
    }
    counts
}
