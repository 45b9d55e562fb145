//! Istio's bookinfo routing samples (../shared/conformance/istio-samples), loaded unchanged,
//! route as Istio's task pages say (see ../shared/conformance/README.md, section A).
//!
//! Each sample replaces the `reviews` VirtualService of the one before, as the request-routing
//! and traffic-shifting tasks do with `kubectl apply`.
//!
//! The fault-injection and request-timeouts tasks need Bookinfo's call graph, so there
//! [`Bookinfo::calling`] makes the apps call on as the real ones do (productpage calls
//! reviews with a 3 s timeout and one retry; reviews v2 and v3 call ratings with 10 s and 2.5 s
//! timeouts), each through its own sidecar, passing `end-user` on. The test client plays the
//! browser; each app reports its call in `x-upstream-*` headers (see `weft_e2e::apps::Call`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use weft_e2e::apps::{self, App, Call};
use weft_e2e::client::{H1, Response};
use weft_e2e::mesh::served_by;
use weft_e2e::{ConfigDir, ControlPlane, Net, Proxy, conformance_samples, eventually};

const REGISTRY: &str = include_str!("../fixtures/bookinfo-registry.yaml");
const REVIEWS: &str = "http://reviews:9080/reviews/0";
const RATINGS: &str = "http://ratings:9080/ratings/0";
const PRODUCTPAGE: &str = "http://productpage:9080/productpage";

struct Bookinfo {
    _net: Net,
    dir: ConfigDir,
    _cp: ControlPlane,
    client: Proxy,
    /// In the order of [`WORKLOADS`]: productpage's first.
    proxies: Vec<Proxy>,
    _apps: Vec<App>,
}

const WORKLOADS: [(u8, &str); 6] = [
    (11, "productpage-v1"),
    (21, "reviews-v1"),
    (22, "reviews-v2"),
    (23, "reviews-v3"),
    (31, "ratings-v1"),
    (41, "details-v1"),
];

/// Reads a sample from the conformance corpus.
fn sample(name: &str) -> String {
    std::fs::read_to_string(conformance_samples().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

impl Bookinfo {
    /// Bookinfo with the default DestinationRules; the apps answer without calling on.
    async fn start() -> Self {
        Self::start_with(false, &[]).await
    }

    /// Bookinfo whose apps call on as the real ones do, with `routing` (file name, sample
    /// name) written before anything starts, so every sidecar is ready with it.
    async fn calling(routing: &[(&str, &str)]) -> Self {
        Self::start_with(true, routing).await
    }

    async fn start_with(calls: bool, routing: &[(&str, &str)]) -> Self {
        let net = Net::new();
        let dir = ConfigDir::new(net);
        dir.write("bookinfo-registry.yaml", REGISTRY);
        dir.copy(&conformance_samples().join("destination-rule-all.yaml"));
        for (file, name) in routing {
            dir.write(file, &sample(name));
        }
        // Bookinfo's own call graph and client timeouts (productpage.py; reviews'
        // LibertyRestEndpoint: black stars (v2) wait 10 s for ratings, red (v3) 2.5 s).
        let call = |host: u8, url: &str, timeout: Duration, tries: u32| Call {
            via: net.addr(host, 15001),
            url: url.to_string(),
            timeout,
            tries,
        };
        let mut apps = Vec::new();
        for (host, name) in WORKLOADS {
            let addr = net.addr(host, 9080);
            let app = match (calls, name) {
                (true, "productpage-v1") => {
                    let c = call(host, REVIEWS, Duration::from_secs(3), 2);
                    apps::http_calling(addr, name, c).await
                }
                (true, "reviews-v2") => {
                    let c = call(host, RATINGS, Duration::from_secs(10), 1);
                    apps::http_calling(addr, name, c).await
                }
                (true, "reviews-v3") => {
                    let c = call(host, RATINGS, Duration::from_millis(2500), 1);
                    apps::http_calling(addr, name, c).await
                }
                _ => apps::http(addr, name).await,
            };
            apps.push(app);
        }
        let cp = ControlPlane::start(net, dir.path()).await;
        let client = Proxy::start(net, 10, "client", &cp).await;
        let mut proxies = Vec::new();
        for (host, name) in WORKLOADS {
            proxies.push(Proxy::start(net, host, name, &cp).await);
        }
        Self {
            _net: net,
            dir,
            _cp: cp,
            client,
            proxies,
            _apps: apps,
        }
    }

    /// Writes sample `name` as `file`, a reviews rule, and waits until the callers of reviews
    /// (the client's and productpage's sidecars) have applied a new config. For edits whose
    /// effect only the behaviour under test could show.
    async fn replace_reviews_rule(&self, file: &str, name: &str) {
        let all = [&self.client, &self.proxies[0]];
        let mut before = Vec::new();
        for p in &all {
            before.push(p.config_versions().await);
        }
        self.dir.write(file, &sample(name));
        for (p, before) in all.iter().zip(before) {
            eventually(&format!("{name} to reach {}", p.node_id), || async {
                (p.config_versions().await != before).then_some(())
            })
            .await;
        }
    }

    /// Applies a sample as the reviews routing, then waits until `settled` holds for the answers
    /// to 20 requests (a new config may take a moment to reach the sidecar). `settled` must be
    /// false under the previous sample, or the wait proves nothing.
    async fn apply(&self, name: &str, settled: impl Fn(&BTreeMap<String, usize>) -> bool) {
        self.apply_as(name, None, settled).await;
    }

    /// Like [`Self::apply`], settling on the answers a given `end-user` gets.
    async fn apply_as(
        &self,
        name: &str,
        user: Option<&str>,
        settled: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) {
        let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
        self.dir.write("reviews-routing.yaml", &sample(name));
        eventually(&format!("{name} to take effect"), || async {
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

/// The page as the test client (the browser) loads it, as `user` if logged in.
async fn page(b: &Bookinfo, user: Option<&str>) -> (Response, Duration) {
    timed(b, PRODUCTPAGE, user).await
}

async fn timed(b: &Bookinfo, url: &str, user: Option<&str>) -> (Response, Duration) {
    let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
    let start = Instant::now();
    let r = weft_e2e::client::get(b.client.outbound, url, &headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url} as {user:?}: {e:#}"));
    (r, start.elapsed())
}

/// An answer and the calls behind it, for assertion messages.
fn calls(r: &Response, took: Duration) -> String {
    let mut out = format!(
        "{} from {} after {took:.2?}",
        r.status,
        r.header("x-served-by").unwrap_or("the proxy")
    );
    for (name, value) in &r.headers {
        if name.as_str().starts_with("x-upstream-") || name.as_str().contains("weft") {
            out.push_str(&format!(" {name}={}", value.to_str().unwrap_or("?")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_fault_injection_abort_for_jason() {
    // The fault-injection task applies virtual-service-all-v1.yaml and
    // virtual-service-reviews-test-v2.yaml, then the abort. all-v1 pins only single-version
    // services here and test-v2 replaces its reviews rule, so these two files are that state.
    let b = Bookinfo::calling(&[
        (
            "reviews-routing.yaml",
            "virtual-service-reviews-test-v2.yaml",
        ),
        (
            "ratings-routing.yaml",
            "virtual-service-ratings-test-abort.yaml",
        ),
    ])
    .await;

    // jason: reviews v2 calls ratings and gets an HTTP 500 abort at once ("Ratings service is
    // currently unavailable"); the page loads immediately.
    let (r, took) = page(&b, Some("jason")).await;
    let seen = calls(&r, took);
    assert_eq!(
        (r.status, r.header("x-upstream-served-by")),
        (200, Some("reviews-v2")),
        "jason's page shows reviews v2: {seen}"
    );
    assert_eq!(
        (
            r.header("x-upstream-upstream-status"),
            r.header("x-upstream-upstream-reason")
        ),
        (Some("500"), Some("fault_abort(500)")),
        "reviews v2's call to ratings is aborted with 500 for jason: {seen}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the page loads immediately: {seen}"
    );

    // Everyone else gets reviews v1, which does not call ratings: no error.
    for user in [Some("mary"), None] {
        let (r, took) = page(&b, user).await;
        let seen = calls(&r, took);
        assert_eq!(
            (
                r.header("x-upstream-status"),
                r.header("x-upstream-served-by")
            ),
            (Some("200"), Some("reviews-v1")),
            "{user:?} sees reviews v1: {seen}"
        );
        assert!(
            r.header("x-upstream-upstream-status").is_none(),
            "reviews v1 does not call ratings: {seen}"
        );
    }

    // Straight to ratings: the abort is the proxy's own 500, for jason only.
    let (r, took) = timed(&b, RATINGS, Some("jason")).await;
    let seen = calls(&r, took);
    assert_eq!(
        (r.status, r.header("x-weft-reason")),
        (500, Some("fault_abort(500)")),
        "{seen}"
    );
    assert!(r.header("weft-proxy-error").is_some(), "{seen}");
    let (r, took) = timed(&b, RATINGS, Some("mary")).await;
    assert_eq!(
        (r.status, r.header("x-served-by")),
        (200, Some("ratings-v1")),
        "{}",
        calls(&r, took)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_fault_injection_delay_for_jason() {
    // As the abort test, with the 7s delay for jason.
    let b = Bookinfo::calling(&[
        (
            "reviews-routing.yaml",
            "virtual-service-reviews-test-v2.yaml",
        ),
        (
            "ratings-routing.yaml",
            "virtual-service-ratings-test-delay.yaml",
        ),
    ])
    .await;

    // At once: jason's page, jason straight to ratings, and mary's page.
    let ((jason, jason_took), (ratings, ratings_took), (mary, mary_took)) = tokio::join!(
        page(&b, Some("jason")),
        timed(&b, RATINGS, Some("jason")),
        page(&b, Some("mary")),
    );

    // jason: "the page loads in about 6 s" with "Sorry, product reviews are currently
    // unavailable": productpage gives reviews 3 s, twice, and reviews v2 waits out ratings'
    // 7 s delay.
    let seen = calls(&jason, jason_took);
    assert_eq!(
        (
            jason.header("x-upstream-status"),
            jason.header("x-upstream-tries")
        ),
        (Some("timeout"), Some("2")),
        "jason's reviews are unavailable after two 3s tries: {seen}"
    );
    assert!(
        jason_took >= Duration::from_secs(6) && jason_took < Duration::from_millis(7500),
        "jason's page takes about 6s: {seen}"
    );

    // ratings answers jason after its 7s delay.
    let seen = calls(&ratings, ratings_took);
    assert_eq!(
        (ratings.status, ratings.header("x-served-by")),
        (200, Some("ratings-v1")),
        "a delay is not an error: {seen}"
    );
    assert!(
        ratings_took >= Duration::from_secs(7),
        "ratings is delayed 7s for jason: {seen}"
    );

    // mary is not delayed (reviews v1 does not call ratings anyway).
    let seen = calls(&mary, mary_took);
    assert_eq!(
        (
            mary.header("x-upstream-status"),
            mary.header("x-upstream-served-by")
        ),
        (Some("200"), Some("reviews-v1")),
        "{seen}"
    );
    assert!(mary_took < Duration::from_secs(2), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_request_timeouts() {
    // request-timeouts: all-v1, then 01 (reviews to v2, which calls ratings) and 02 (ratings
    // delayed 2s, with the legacy integer `percent: 100`).
    let b = Bookinfo::calling(&[
        ("reviews-routing.yaml", "request-timeouts-01.yaml"),
        ("ratings-routing.yaml", "request-timeouts-02.yaml"),
    ])
    .await;

    // "The page works, with stars, but each refresh takes about 2 s."
    let (r, took) = page(&b, None).await;
    let seen = calls(&r, took);
    assert_eq!(
        (
            r.header("x-upstream-served-by"),
            r.header("x-upstream-upstream-status")
        ),
        (Some("reviews-v2"), Some("200")),
        "reviews v2 shows ratings: {seen}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "ratings' 2s delay makes the page take about 2s: {seen}"
    );

    // 03: reviews gets `timeout: 0.5s`. The page returns in about 1s (productpage tries
    // reviews twice, each cut at 0.5s) and reviews are unavailable.
    b.replace_reviews_rule("reviews-routing.yaml", "request-timeouts-03.yaml")
        .await;
    let (r, took) = page(&b, None).await;
    let seen = calls(&r, took);
    assert_eq!(
        (
            r.header("x-upstream-status"),
            r.header("x-upstream-reason"),
            r.header("x-upstream-tries")
        ),
        (Some("504"), Some("timeout(500ms)"), Some("2")),
        "productpage's two calls to reviews time out after 0.5s: {seen}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "the page returns in about 1s: {seen}"
    );

    // Straight to reviews: the proxy's 504 after 0.5s.
    let (r, took) = timed(&b, REVIEWS, None).await;
    let seen = calls(&r, took);
    assert_eq!(
        (r.status, r.header("x-weft-reason")),
        (504, Some("timeout(500ms)")),
        "{seen}"
    );
    assert!(r.header("weft-proxy-error").is_some(), "{seen}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{seen}"
    );
}
