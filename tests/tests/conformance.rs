//! Istio's bookinfo routing samples (../shared/conformance/istio-samples), loaded unchanged,
//! route as Istio's task pages say (see ../shared/conformance/README.md, section A).
//!
//! Each sample replaces the `reviews` VirtualService of the one before, as the request-routing
//! and traffic-shifting tasks do with `kubectl apply`.

use std::collections::BTreeMap;

use weft_e2e::apps::{self, App};
use weft_e2e::client::H1;
use weft_e2e::mesh::served_by;
use weft_e2e::{ConfigDir, ControlPlane, Net, Proxy, conformance_samples, eventually};

const REGISTRY: &str = include_str!("../fixtures/bookinfo-registry.yaml");
const REVIEWS: &str = "http://reviews:9080/reviews/0";

struct Bookinfo {
    _net: Net,
    dir: ConfigDir,
    _cp: ControlPlane,
    client: Proxy,
    _proxies: Vec<Proxy>,
    _apps: Vec<App>,
}

impl Bookinfo {
    async fn start() -> Self {
        let net = Net::new();
        let dir = ConfigDir::new(net);
        dir.write("bookinfo-registry.yaml", REGISTRY);
        dir.copy(&conformance_samples().join("destination-rule-all.yaml"));
        let workloads = [
            (11, "productpage-v1"),
            (21, "reviews-v1"),
            (22, "reviews-v2"),
            (23, "reviews-v3"),
            (31, "ratings-v1"),
            (41, "details-v1"),
        ];
        let mut apps = Vec::new();
        for (host, name) in workloads {
            apps.push(apps::http(net.addr(host, 9080), name).await);
        }
        let cp = ControlPlane::start(net, dir.path()).await;
        let client = Proxy::start(net, 10, "client", &cp).await;
        let mut proxies = Vec::new();
        for (host, name) in workloads {
            proxies.push(Proxy::start(net, host, name, &cp).await);
        }
        Self {
            _net: net,
            dir,
            _cp: cp,
            client,
            _proxies: proxies,
            _apps: apps,
        }
    }

    /// Applies a sample as the reviews routing, then waits until `settled` holds for the answers
    /// to 20 requests (a new config may take a moment to reach the sidecar). `settled` must be
    /// false under the previous sample, or the wait proves nothing.
    async fn apply(&self, sample: &str, settled: impl Fn(&BTreeMap<String, usize>) -> bool) {
        self.apply_as(sample, None, settled).await;
    }

    /// Like [`Self::apply`], settling on the answers a given `end-user` gets.
    async fn apply_as(
        &self,
        sample: &str,
        user: Option<&str>,
        settled: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) {
        let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
        let text = std::fs::read_to_string(conformance_samples().join(sample))
            .unwrap_or_else(|e| panic!("{sample}: {e}"));
        self.dir.write("reviews-routing.yaml", &text);
        eventually(&format!("{sample} to take effect"), || async {
            let mut c = self.h1().await;
            let counts = served_by(&mut c, 20, REVIEWS, &headers).await;
            settled(&counts).then_some(())
        })
        .await;
    }

    async fn h1(&self) -> H1 {
        H1::connect(self.client.outbound)
            .await
            .expect("client sidecar")
    }
}

fn only(counts: &BTreeMap<String, usize>, who: &str) -> bool {
    counts.len() == 1 && counts.contains_key(who)
}

fn share(counts: &BTreeMap<String, usize>, who: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(who).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_request_routing_and_traffic_shifting() {
    let b = Bookinfo::start().await;
    let mut c = b.h1().await;

    // Without routing rules, reviews versions are used round robin.
    let rr = served_by(&mut c, 30, REVIEWS, &[]).await;
    assert_eq!(rr.len(), 3, "all three versions serve: {rr:?}");

    // request-routing: virtual-service-all-v1.yaml sends everything to v1 (no stars).
    b.apply("virtual-service-all-v1.yaml", |c| only(c, "reviews-v1"))
        .await;
    let details = c.get("http://details:9080/details/0", &[]).await.unwrap();
    assert_eq!(details.text(), "details-v1");

    // virtual-service-reviews-test-v2.yaml: jason sees v2, everyone else v1.
    b.apply_as("virtual-service-reviews-test-v2.yaml", Some("jason"), |c| {
        only(c, "reviews-v2")
    })
    .await;
    let jason = served_by(&mut c, 20, REVIEWS, &[("end-user", "jason")]).await;
    assert!(only(&jason, "reviews-v2"), "{jason:?}");
    let other = served_by(&mut c, 20, REVIEWS, &[("end-user", "mary")]).await;
    assert!(only(&other, "reviews-v1"), "{other:?}");

    // virtual-service-reviews-jason-v2-v3.yaml: jason v2, everyone else v3.
    b.apply("virtual-service-reviews-jason-v2-v3.yaml", |c| {
        only(c, "reviews-v3")
    })
    .await;
    let jason = served_by(&mut c, 20, REVIEWS, &[("end-user", "jason")]).await;
    assert!(only(&jason, "reviews-v2"), "{jason:?}");

    // traffic-shifting: 50/50 between v1 and v3.
    b.apply("virtual-service-reviews-50-v3.yaml", |c| {
        c.contains_key("reviews-v1") && c.contains_key("reviews-v3") && c.len() == 2
    })
    .await;
    let half = served_by(&mut c, 1000, REVIEWS, &[]).await;
    let v3 = share(&half, "reviews-v3");
    assert!((0.45..=0.55).contains(&v3), "v3 share {v3}: {half:?}");

    // 80/20 between v1 and v2.
    b.apply("virtual-service-reviews-80-20.yaml", |c| {
        !c.contains_key("reviews-v3")
    })
    .await;
    let split = served_by(&mut c, 1000, REVIEWS, &[]).await;
    let v2 = share(&split, "reviews-v2");
    assert!((0.15..=0.25).contains(&v2), "v2 share {v2}: {split:?}");

    // v2/v3 50/50, then everything to v3 (red stars on every refresh).
    b.apply("virtual-service-reviews-v2-v3.yaml", |c| {
        !c.contains_key("reviews-v1")
    })
    .await;
    b.apply("virtual-service-reviews-v3.yaml", |c| only(c, "reviews-v3"))
        .await;
    let all = served_by(&mut c, 50, REVIEWS, &[]).await;
    assert!(only(&all, "reviews-v3"), "{all:?}");
}
