//! Istio's bookinfo fault, timeout and circuit-breaking samples (../shared/conformance),
//! translated: the values the resilience issue's end-to-end tests rely on.

use std::path::{Path, PathBuf};

use weft_api::mesh::{self, fault_injection::abort::Error};
use weft_config::translate::{self, ProxyId, Translated};
use weft_config::{Index, MeshSettings};

fn path(p: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match p.strip_prefix("conformance/") {
        Some(rest) => dir.join("../../../shared/conformance").join(rest),
        None => dir.join(p),
    }
}

fn translate(proxy: &str, files: &[&str]) -> Translated {
    let mut index = Index::new(MeshSettings::default());
    for f in files {
        let body = std::fs::read_to_string(path(f)).expect("read");
        let diags = index.apply_file(Path::new(f), &body);
        assert!(
            diags
                .iter()
                .all(|d| d.severity != weft_config::Severity::Error),
            "{f}: {diags:?}"
        );
    }
    translate::translate(&index.model(), &ProxyId::from_node_id(proxy).expect("id"))
}

fn routes<'a>(t: &'a Translated, host: &str) -> &'a [mesh::HttpRoute] {
    &t.services
        .iter()
        .find(|s| s.name == format!("{host}.default.svc.cluster.local"))
        .expect("service")
        .http
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .expect("duration")
}

const BOOKINFO: [&str; 2] = [
    "tests/fixtures/bookinfo-registry.yaml",
    "conformance/istio-samples/destination-rule-all.yaml",
];

#[test]
fn ratings_delay_7s_for_jason() {
    let t = translate(
        "productpage-v1.default",
        &[
            BOOKINFO[0],
            BOOKINFO[1],
            "conformance/istio-samples/virtual-service-ratings-test-delay.yaml",
        ],
    );
    let r = routes(&t, "ratings");
    let jason = &r[0];
    assert_eq!(
        jason.matches[0].headers["end-user"].kind,
        Some(mesh::string_match::Kind::Exact("jason".into()))
    );
    let delay = jason
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(secs(delay.fixed_delay.as_ref()), 7.0);
    assert_eq!(delay.percentage, 100.0);
    // As in Istio: no timeout written, the default retry policy kept.
    assert_eq!(jason.timeout, None);
    let retries = jason.retries.as_ref().expect("retries");
    assert_eq!((retries.attempts, retries.configured), (2, false));
    assert!(r[1].fault.is_none());
}

#[test]
fn ratings_abort_500_for_jason_and_details_555() {
    let t = translate(
        "productpage-v1.default",
        &[
            BOOKINFO[0],
            BOOKINFO[1],
            "conformance/istio-samples/virtual-service-ratings-test-abort.yaml",
            "conformance/istio-samples/fault-injection-details-v1.yaml",
        ],
    );
    let abort = routes(&t, "ratings")[0]
        .fault
        .as_ref()
        .and_then(|f| f.abort)
        .expect("abort");
    assert_eq!(
        (abort.error, abort.percentage),
        (Some(Error::HttpStatus(500)), 100.0)
    );
    let details = &routes(&t, "details")[0];
    let abort = details.fault.as_ref().and_then(|f| f.abort).expect("abort");
    assert_eq!(
        (abort.error, abort.percentage),
        (Some(Error::HttpStatus(555)), 100.0)
    );
    assert_eq!(
        details.clusters[0].cluster,
        "outbound|9080|v1|details.default.svc.cluster.local"
    );
}

#[test]
fn request_timeouts() {
    let base = [
        BOOKINFO[0],
        BOOKINFO[1],
        "conformance/istio-samples/request-timeouts-01.yaml",
    ];
    let t = translate("productpage-v1.default", &base);
    let reviews = &routes(&t, "reviews")[0];
    assert_eq!(
        reviews.clusters[0].cluster,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(reviews.timeout, None);
    let t = translate(
        "productpage-v1.default",
        &[
            base[0],
            base[1],
            base[2],
            "conformance/istio-samples/request-timeouts-02.yaml",
            "conformance/istio-samples/request-timeouts-03.yaml",
        ],
    );
    assert_eq!(secs(routes(&t, "reviews")[0].timeout.as_ref()), 0.5);
    // Legacy integer `percent: 100` on the ratings delay.
    let delay = routes(&t, "ratings")[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay)
        .expect("delay");
    assert_eq!(
        (secs(delay.fixed_delay.as_ref()), delay.percentage),
        (2.0, 100.0)
    );
}

#[test]
fn circuit_breaking_limits() {
    let t = translate(
        "fortio.default",
        &[
            "tests/fixtures/httpbin-registry.yaml",
            "conformance/istio-samples/circuit-breaking-01.yaml",
        ],
    );
    let c = t
        .clusters
        .iter()
        .find(|c| c.name == "outbound|8000||httpbin.default.svc.cluster.local")
        .expect("cluster");
    let pool = c.connection_pool.as_ref().expect("pool");
    assert_eq!(pool.tcp.as_ref().expect("tcp").max_connections, 1);
    let http = pool.http.as_ref().expect("http");
    assert_eq!(
        (
            http.http1_max_pending_requests,
            http.max_requests_per_connection
        ),
        (1, 1)
    );
    let od = c.outlier_detection.as_ref().expect("outlier");
    assert_eq!(od.consecutive_5xx_errors, 1);
    assert_eq!(secs(od.interval.as_ref()), 1.0);
    assert_eq!(secs(od.base_ejection_time.as_ref()), 180.0);
    assert_eq!(od.max_ejection_percent, 100);
}
