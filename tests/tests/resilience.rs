//! Resilience through real sidecars (issue 4): retries, per-try and route timeouts, circuit
//! breaking, outlier detection, fault injection and load balancing, with Istio's field
//! semantics.
//!
//! Every response a proxy makes up instead of the upstream's carries `x-weft-reason` (what
//! happened, e.g. `timeout(500ms)`) besides the `weft-proxy-error` code; an upstream's own
//! answer carries neither. The backends fail on demand: see `weft_e2e::apps` for the request
//! headers (`x-app-fail-first`, `x-app-hang-first`, `x-app-delay-ms`, ...) and the per-instance
//! switches (`App::control`).
//!
//! Config is written before the mesh starts, so a proxy that is ready has it; time is waited
//! on only where it is the subject (delays, ejection time), with short configured durations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use weft_e2e::apps::{self, App, echo};
use weft_e2e::client::{H1, H2, Response};
use weft_e2e::mesh::{Mesh, served_by};
use weft_e2e::{ConfigDir, ControlPlane, Net, Proxy};

const REASON: &str = "x-weft-reason";
const PROXY_ERROR: &str = "weft-proxy-error";
const API: &str = "http://api:8080/";
const BACKEND: &str = "http://backend:8080/";

/// The standard mesh's `api` app (one endpoint, at .13).
fn api(mesh: &Mesh) -> &App {
    &mesh.apps[2]
}

fn reason(r: &Response) -> &str {
    r.header(REASON).unwrap_or("<none>")
}

/// One line about an answer, for assertion messages.
fn describe(r: &Response) -> String {
    format!(
        "{} served-by={} x-app-attempt={} weft-proxy-error={} x-weft-reason={} body={:?}",
        r.status,
        r.header("x-served-by").unwrap_or("-"),
        r.header("x-app-attempt").unwrap_or("-"),
        r.header(PROXY_ERROR).unwrap_or("-"),
        reason(r),
        r.text().trim(),
    )
}

/// Asserts that `r` was made by the proxy: `status`, a `weft-proxy-error` code and
/// `x-weft-reason` equal to `want`.
fn assert_generated(r: &Response, status: u16, want: &str, context: &str) {
    assert_eq!(
        (r.status, reason(r)),
        (status, want),
        "{context}: expected the proxy's {status} with x-weft-reason {want:?}, got {}",
        describe(r)
    );
    assert!(
        r.header(PROXY_ERROR).is_some(),
        "{context}: a generated answer carries weft-proxy-error too: {}",
        describe(r)
    );
}

/// Sends `per_worker` requests on each of `workers` keep-alive connections to `sidecar`, all
/// connections opened first so the workers start together. Returns every answer with how long
/// it took; a request that gets no answer fails the test.
async fn load(
    sidecar: SocketAddr,
    workers: usize,
    per_worker: usize,
    url: &str,
    headers: &[(&str, &str)],
) -> Vec<(Response, Duration)> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut conns = Vec::new();
    for _ in 0..workers {
        conns.push(
            H1::connect(sidecar)
                .await
                .expect("connect to the client sidecar"),
        );
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            let url = url.to_string();
            let headers = headers.clone();
            tokio::spawn(async move {
                let hs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut out = Vec::with_capacity(per_worker);
                for i in 0..per_worker {
                    let start = Instant::now();
                    let r = c.get(&url, &hs).await.unwrap_or_else(|e| {
                        panic!("worker {w}, request {i} to {url}: no answer: {e:#}")
                    });
                    out.push((r, start.elapsed()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load worker"));
    }
    all
}

/// A GET on its own connection, timed.
async fn timed_get(
    sidecar: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> (anyhow::Result<Response>, Duration) {
    let start = Instant::now();
    let r = weft_e2e::client::get(sidecar, url, headers).await;
    (r, start.elapsed())
}

/// `backend`: one service with `n` instances (`backend-1` .. `backend-n` at .21, .22, ...,
/// label `instance: b<i>`) behind sidecars, and a `client` workload at .10.
struct Backends {
    _dir: ConfigDir,
    _cp: ControlPlane,
    client: Proxy,
    _proxies: Vec<Proxy>,
    apps: Vec<App>,
}

impl Backends {
    fn registry(n: u8) -> String {
        let mut yaml = String::from(
            r#"apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.default.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: client, namespace: default}
spec: {address: "{{net}}.10", labels: {app: client}, serviceAccount: client}
"#,
        );
        for i in 1..=n {
            yaml.push_str(&format!(
                r#"---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {{name: backend-{i}, namespace: default}}
spec: {{address: "{{{{net}}}}.{host}", labels: {{app: backend, instance: b{i}}}, serviceAccount: backend}}
"#,
                host = 20 + i
            ));
        }
        yaml
    }

    async fn start(n: u8, extra: &[(&str, &str)]) -> Self {
        let net = Net::new();
        let dir = ConfigDir::new(net);
        dir.write("backend-registry.yaml", &Self::registry(n));
        for (name, text) in extra {
            dir.write(name, text);
        }
        let mut apps = Vec::new();
        for i in 1..=n {
            apps.push(apps::http(net.addr(20 + i, 8080), &format!("backend-{i}")).await);
        }
        let cp = ControlPlane::start(net, dir.path()).await;
        let client = Proxy::start(net, 10, "client", &cp).await;
        let mut proxies = Vec::new();
        for i in 1..=n {
            proxies.push(Proxy::start(net, 20 + i, &format!("backend-{i}"), &cp).await);
        }
        Self {
            _dir: dir,
            _cp: cp,
            client,
            _proxies: proxies,
            apps,
        }
    }

    async fn h1(&self) -> H1 {
        H1::connect(self.client.outbound)
            .await
            .expect("connect to the client sidecar")
    }
}

// --- 1. retries ------------------------------------------------------------------------------

const API_RETRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - name: no-retries
    match: [{headers: {x-retries: {exact: "off"}}}]
    retries: {attempts: 0}
    route: [{destination: {host: api}}]
  - name: istio-default
    match: [{headers: {x-retries: {exact: default}}}]
    route: [{destination: {host: api}}]
  - name: three
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: api}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_two_503s_into_a_200_and_attempts_0_passes_the_503_on() {
    let mesh = Mesh::start(&[("api-vs.yaml", API_RETRIES)]).await;
    let app = api(&mesh).control();
    let mut c = mesh.h1().await;

    // attempts: 3, retryOn: 5xx: the app answers 503 twice, then 200.
    let r = c
        .get(API, &[("x-app-key", "three"), ("x-app-fail-first", "2")])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-app-attempt")),
        (200, Some("3")),
        "attempts: 3 must retry two 503s and serve the third try's 200; got {} (the app saw \
         {} tries)",
        describe(&r),
        app.seen("three")
    );
    assert_eq!(app.seen("three"), 3, "exactly three tries reached the app");

    // attempts: 0: the app's own 503 reaches the client as it was sent.
    let r = c
        .get(
            API,
            &[
                ("x-retries", "off"),
                ("x-app-key", "off"),
                ("x-app-fail-first", "2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-served-by")),
        (503, Some("api")),
        "attempts: 0 passes the upstream's 503 on: {}",
        describe(&r)
    );
    assert!(
        r.header(REASON).is_none() && r.header(PROXY_ERROR).is_none(),
        "the upstream's 503 is not dressed as the proxy's: {}",
        describe(&r)
    );
    assert_eq!(app.seen("off"), 1, "attempts: 0 makes no retry");

    // No `retries` written: Istio's default, 2 retries on 503 (retriable-status-codes)...
    let r = c
        .get(
            API,
            &[
                ("x-retries", "default"),
                ("x-app-key", "default-503"),
                ("x-app-fail-first", "2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-app-attempt")),
        (200, Some("3")),
        "Istio's default policy retries a 503 twice: {}",
        describe(&r)
    );
    // ...and not on a 500.
    let r = c
        .get(
            API,
            &[
                ("x-retries", "default"),
                ("x-app-key", "default-500"),
                ("x-app-fail-first", "1"),
                ("x-app-fail-status", "500"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        r.status,
        500,
        "Istio's default policy does not retry a 500: {}",
        describe(&r)
    );
    assert_eq!(app.seen("default-500"), 1, "no retry of the 500");
}

// --- 2. per-try timeout ----------------------------------------------------------------------

const API_PER_TRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - retries: {attempts: 2, perTryTimeout: 200ms, retryOn: gateway-error}
    route: [{destination: {host: api}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_cuts_a_hanging_attempt_and_the_retry_answers() {
    let mesh = Mesh::start(&[("api-vs.yaml", API_PER_TRY)]).await;
    let app = api(&mesh).control();

    // The first try of this key hangs; the second answers.
    let (r, took) = timed_get(
        mesh.client.outbound,
        API,
        &[("x-app-key", "once"), ("x-app-hang-first", "1")],
    )
    .await;
    let r = r.unwrap_or_else(|e| {
        panic!("perTryTimeout 200ms did not cut the hanging first try (no answer after {took:?}): {e:#}")
    });
    assert_eq!(
        (r.status, r.header("x-app-attempt")),
        (200, Some("2")),
        "the retry after the cut try answers: {}",
        describe(&r)
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "the first try was waited out for its 200ms, then retried at once: took {took:?}"
    );

    // Every try hangs: 1 + 2 tries of 200ms each, then the proxy's 504.
    let (r, took) = timed_get(
        mesh.client.outbound,
        API,
        &[("x-app-key", "always"), ("x-app-hang-first", "1000")],
    )
    .await;
    let r = r.unwrap_or_else(|e| panic!("no answer after {took:?} though every try is cut: {e:#}"));
    assert_eq!(r.status, 504, "{}", describe(&r));
    assert!(
        reason(&r).starts_with("per_try_timeout(200ms,attempt="),
        "the 504 names the per-try timeout: {}",
        describe(&r)
    );
    assert!(r.header(PROXY_ERROR).is_some(), "{}", describe(&r));
    assert_eq!(
        app.seen("always"),
        3,
        "the first try and two retries reached the app"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "three tries of 200ms: took {took:?}"
    );
}

// --- 3. route timeout ------------------------------------------------------------------------

const API_TIMEOUTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - match: [{headers: {x-timeout: {exact: "1.5s"}}}]
    timeout: 1.5s
    route: [{destination: {host: api}}]
  - timeout: 500ms
    route: [{destination: {host: api}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504_naming_it_in_bounded_time() {
    let mesh = Mesh::start(&[("api-vs.yaml", API_TIMEOUTS)]).await;
    let sidecar = mesh.client.outbound;
    let slow = [("x-app-delay-ms", "5000")];
    let slow_long = [("x-app-delay-ms", "5000"), ("x-timeout", "1.5s")];
    let quick = [("x-app-delay-ms", "100")];
    let ((short, short_took), (long, long_took), (fast, _)) = tokio::join!(
        timed_get(sidecar, API, &slow),
        timed_get(sidecar, API, &slow_long),
        timed_get(sidecar, API, &quick),
    );

    let short = short.unwrap_or_else(|e| panic!("no answer after {short_took:?}: {e:#}"));
    assert_generated(
        &short,
        504,
        "timeout(500ms)",
        &format!("timeout: 500ms to a 5s backend (took {short_took:?})"),
    );
    assert!(
        short_took >= Duration::from_millis(500) && short_took < Duration::from_secs(3),
        "the 500ms timeout answers in bounded time: took {short_took:?}"
    );

    let long = long.unwrap_or_else(|e| panic!("no answer after {long_took:?}: {e:#}"));
    assert_generated(
        &long,
        504,
        "timeout(1.5s)",
        &format!("timeout: 1.5s to a 5s backend (took {long_took:?})"),
    );
    assert!(
        long_took >= Duration::from_millis(1500) && long_took < Duration::from_secs(4),
        "the 1.5s timeout answers in bounded time: took {long_took:?}"
    );

    let fast = fast.expect("a 100ms answer");
    assert_eq!(
        fast.status,
        200,
        "an answer within the timeout is served: {}",
        describe(&fast)
    );
}

// --- 4. connection pool ----------------------------------------------------------------------

const API_POOL_OF_ONE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_pool_of_one_refuses_the_overflow_at_once() {
    let mesh = Mesh::start(&[("api-dr.yaml", API_POOL_OF_ONE)]).await;
    let delay = Duration::from_secs(2);
    let answers = load(
        mesh.client.outbound,
        10,
        1,
        API,
        &[("x-app-delay-ms", "2000")],
    )
    .await;
    let summary: Vec<String> = answers
        .iter()
        .map(|(r, took)| format!("{} {} after {took:.2?}", r.status, reason(r)))
        .collect();
    let is_overflow = |r: &Response| r.status == 503 && reason(r).starts_with("upstream_overflow(");
    let overflow: Vec<_> = answers.iter().filter(|(r, _)| is_overflow(r)).collect();
    let served = answers.iter().filter(|(r, _)| r.status == 200).count();

    assert!(
        !overflow.is_empty(),
        "10 concurrent requests to a pool of 1 connection + 1 pending: some must be refused \
         with upstream_overflow; got {summary:#?}"
    );
    assert!(served >= 1, "at least one request is served: {summary:#?}");
    assert_eq!(
        served + overflow.len(),
        answers.len(),
        "every answer is a 200 or an overflow 503: {summary:#?}"
    );
    for (r, took) in &overflow {
        assert!(
            [
                "upstream_overflow(max_pending=1)",
                "upstream_overflow(max_connections=1)"
            ]
            .contains(&reason(r)),
            "the overflow names a limit this pool sets: {}",
            describe(r)
        );
        assert!(
            r.header(PROXY_ERROR).is_some(),
            "the overflow is the proxy's: {}",
            describe(r)
        );
        assert!(
            *took < delay / 2,
            "an overflow is refused at once, not after the backend's {delay:?}: {summary:#?}"
        );
    }
}

// --- 5. outlier detection --------------------------------------------------------------------

const BACKEND_NO_RETRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: backend}}]
"#;

const BACKEND_OUTLIER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: default}
spec:
  host: backend
  trafficPolicy:
    # Round robin, so that "the healthy two share the traffic" is a fair expectation: the
    # default LEAST_REQUEST (latency-aware P2C) may keep sequential traffic on the faster one.
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back_after_it_heals() {
    let b = Backends::start(
        3,
        &[
            ("backend-vs.yaml", BACKEND_NO_RETRIES),
            ("backend-dr.yaml", BACKEND_OUTLIER),
        ],
    )
    .await;
    let bad = &b.apps[2];
    bad.control().fail_with(500);
    let mut c = b.h1().await;

    // Until backend-3 is ejected: its 500s stop and 20 answers in a row are 200s. Ejection
    // is due at the third 500; the limit leaves room for a proxy that ejects on its 1s
    // interval instead.
    let limit = Duration::from_secs(4);
    let deadline = Instant::now() + limit;
    let (mut errors, mut in_a_row, mut sent) = (0, 0, 0);
    let mut last_error = None;
    let mut seen = BTreeMap::new();
    while in_a_row < 20 {
        assert!(
            Instant::now() < deadline,
            "backend-3 (answering 500) was never ejected: {errors} errors in {sent} requests \
             over {limit:?}; served by {seen:?}"
        );
        let r = c.get(BACKEND, &[]).await.expect("an answer");
        sent += 1;
        let by = r.header("x-served-by").unwrap_or("?").to_string();
        *seen.entry(by.clone()).or_insert(0) += 1;
        match (r.status, by.as_str()) {
            (200, _) => in_a_row += 1,
            (500, "backend-3") => {
                errors += 1;
                in_a_row = 0;
                last_error = Some(Instant::now());
            }
            _ => panic!("unexpected answer: {}", describe(&r)),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        errors >= 3,
        "backend-3 is ejected after 3 consecutive 5xx, not before: it answered {errors} 500s"
    );
    let ejected_at = last_error.expect("errors >= 3");

    // While ejected (baseEjectionTime 2s; checked up to 1.5s after the last 500), backend-3
    // gets nothing and every request succeeds on the other two.
    let window_end = ejected_at + Duration::from_millis(1500);
    let before = bad.requests();
    let mut during = BTreeMap::new();
    let mut n = 0;
    while n < 100 && Instant::now() < window_end {
        let r = c.get(BACKEND, &[]).await.expect("an answer");
        assert_eq!(
            r.status,
            200,
            "request {n} after the ejection failed: {}",
            describe(&r)
        );
        *during
            .entry(r.header("x-served-by").unwrap_or("?").to_string())
            .or_insert(0) += 1;
        n += 1;
    }
    assert!(
        n >= 10,
        "only {n} requests fitted in the 1.5s after the ejection: too slow to tell"
    );
    assert_eq!(
        bad.requests(),
        before,
        "the ejected endpoint gets no traffic: {during:?}"
    );
    assert_eq!(
        during.keys().collect::<Vec<_>>(),
        ["backend-1", "backend-2"],
        "the healthy two share the traffic: {during:?}"
    );

    // Healed, backend-3 gets traffic again once baseEjectionTime has passed.
    bad.control().heal();
    let limit = Duration::from_secs(10);
    let back_at = loop {
        assert!(
            ejected_at.elapsed() < limit,
            "backend-3, healed, got no traffic within {limit:?} of its ejection \
             (baseEjectionTime 2s, interval 1s)"
        );
        let r = c.get(BACKEND, &[]).await.expect("an answer");
        assert_eq!(r.status, 200, "{}", describe(&r));
        if r.header("x-served-by") == Some("backend-3") {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let away = back_at - ejected_at;
    assert!(
        away >= Duration::from_millis(1500),
        "backend-3 came back after {away:?}, before its baseEjectionTime of 2s"
    );
}

// --- 6. faults -------------------------------------------------------------------------------

const API_ABORT_HALF: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - fault:
      abort: {httpStatus: 503, percentage: {value: 50}}
    route: [{destination: {host: api}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_fault_at_50_percent_aborts_half_of_1000_requests() {
    let mesh = Mesh::start(&[("api-vs.yaml", API_ABORT_HALF)]).await;
    let before = api(&mesh).requests();
    let answers = load(mesh.client.outbound, 4, 250, API, &[]).await;
    let aborted: Vec<_> = answers.iter().filter(|(r, _)| r.status == 503).collect();
    let served = answers.iter().filter(|(r, _)| r.status == 200).count();
    let share = aborted.len() as f64 / answers.len() as f64;
    assert!(
        (0.45..=0.55).contains(&share),
        "aborted share {:.1}% ({} of {}) is not 50% ± 5%",
        share * 100.0,
        aborted.len(),
        answers.len()
    );
    assert_eq!(
        served + aborted.len(),
        answers.len(),
        "every answer is a 200 or the abort"
    );
    for (r, _) in &aborted {
        assert_generated(r, 503, "fault_abort(503)", "an aborted request");
    }
    assert_eq!(
        api(&mesh).requests() - before,
        served as u64,
        "aborted requests never reach the app (nor are they retried)"
    );
}

const API_DELAY_FIFTH: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - fault:
      delay: {fixedDelay: 200ms, percentage: {value: 20}}
    route: [{destination: {host: api}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_at_20_percent_delays_a_fifth_of_the_requests() {
    let mesh = Mesh::start(&[("api-vs.yaml", API_DELAY_FIFTH)]).await;
    let delay = Duration::from_millis(200);
    // 1,000 requests on 25 connections: ~200 delayed requests cost ~1.6s of wall time.
    let answers = load(mesh.client.outbound, 25, 40, API, &[]).await;
    for (r, _) in &answers {
        assert_eq!(r.status, 200, "a delay is not a failure: {}", describe(r));
    }
    let mut took: Vec<Duration> = answers.iter().map(|(_, t)| *t).collect();
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < delay / 2,
        "undelayed requests must be much faster than the 200ms delay to be told apart; \
         the median took {median:?}"
    );
    let delayed = took.iter().filter(|t| **t >= delay).count();
    let share = delayed as f64 / took.len() as f64;
    assert!(
        (0.15..=0.25).contains(&share),
        "delayed share {:.1}% ({delayed} of {} took >= {delay:?}) is not 20% ± 5%; \
         slowest: {:?}",
        share * 100.0,
        took.len(),
        took.last()
    );
}

const GRPC_ABORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-grpc, namespace: default}
spec:
  hosts: [web-grpc]
  http:
  - fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
    route: [{destination: {host: web-grpc}}]
"#;

/// A tonic client whose requests carry `:authority = web-grpc:9090` and go through `sidecar`.
async fn grpc_client(
    sidecar: SocketAddr,
) -> echo::echo_client::EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://web-grpc:9090")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let stream = tokio::net::TcpStream::connect(sidecar).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .expect("gRPC channel through the sidecar");
    echo::echo_client::EchoClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_abort_fault_answers_http_200_with_grpc_status_14() {
    let mesh = Mesh::start(&[("web-grpc-vs.yaml", GRPC_ABORT)]).await;
    let grpc_apps = &mesh.apps[3..5];
    let before: u64 = grpc_apps.iter().map(App::requests).sum();

    // As a gRPC client sees it: UNAVAILABLE, with the reason in the metadata.
    let mut client = grpc_client(mesh.client.outbound).await;
    let status = match client
        .say(echo::SayRequest {
            message: "hello".into(),
        })
        .await
    {
        Ok(reply) => panic!(
            "grpcStatus: UNAVAILABLE at 100% must abort the call; it was answered: {:?}",
            reply.into_inner()
        ),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.metadata().get(REASON).and_then(|v| v.to_str().ok()),
        Some("fault_abort(grpc=14)"),
        "{status:?}"
    );

    // On the wire: HTTP 200 with grpc-status 14 (a trailers-only response).
    let mut h2 = H2::connect(mesh.client.outbound).await.unwrap();
    let req = http::Request::post("http://web-grpc:9090/weft.testing.v1.Echo/Say")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One uncompressed, empty message: an empty SayRequest.
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let r = h2.send(req).await.expect("an answer");
    let grpc_status = r
        .headers
        .get("grpc-status")
        .or_else(|| r.trailers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        (r.status, grpc_status),
        (200, Some("14")),
        "a gRPC abort is HTTP 200 with grpc-status 14: {} headers={:?} trailers={:?}",
        describe(&r),
        r.headers,
        r.trailers
    );
    assert_eq!(reason(&r), "fault_abort(grpc=14)", "{}", describe(&r));

    let after: u64 = grpc_apps.iter().map(App::requests).sum();
    assert_eq!(after, before, "aborted calls never reach the app");
}

// --- 7. consistent hashing -------------------------------------------------------------------

const BACKEND_HASH_BY_USER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: default}
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_endpoint() {
    let b = Backends::start(3, &[("backend-dr.yaml", BACKEND_HASH_BY_USER)]).await;
    let mut c = b.h1().await;

    let alice = served_by(&mut c, 50, BACKEND, &[("x-user", "alice")]).await;
    assert_eq!(
        alice.len(),
        1,
        "every request with x-user: alice goes to one endpoint: {alice:?}"
    );

    let mut endpoints = BTreeMap::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let counts = served_by(&mut c, 5, BACKEND, &[("x-user", &user)]).await;
        assert_eq!(
            counts.len(),
            1,
            "x-user: {user} sticks to one endpoint: {counts:?}"
        );
        for by in counts.into_keys() {
            *endpoints.entry(by).or_insert(0) += 1;
        }
    }
    assert!(
        endpoints.len() >= 2,
        "20 users spread over more than one of 3 endpoints: {endpoints:?}"
    );
}

// --- 8. least request ------------------------------------------------------------------------

const BACKEND_LEAST_REQUEST: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: default}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_traffic_to_a_slow_endpoint() {
    let b = Backends::start(2, &[("backend-dr.yaml", BACKEND_LEAST_REQUEST)]).await;
    b.apps[1].control().set_delay(Duration::from_millis(100));
    // 8 connections at once, 50 requests each (round robin would take ~2.5s; less is better).
    let answers = load(b.client.outbound, 8, 50, BACKEND, &[]).await;
    let mut counts = BTreeMap::new();
    for (r, _) in &answers {
        assert_eq!(r.status, 200, "{}", describe(r));
        *counts
            .entry(r.header("x-served-by").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let slow = counts.get("backend-2").copied().unwrap_or(0) as f64 / answers.len() as f64;
    assert!(
        slow < 0.35,
        "the endpoint that takes 100ms gets clearly less than half: {:.1}% ({counts:?})",
        slow * 100.0
    );
}

// --- reasons ---------------------------------------------------------------------------------

const BACKEND_GHOST_SUBSET: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: default}
spec:
  host: backend
  subsets:
  - name: live
    labels: {instance: b1}
  - name: ghost
    labels: {instance: nobody}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend]
  http:
  - match: [{headers: {x-subset: {exact: live}}}]
    route: [{destination: {host: backend, subset: live}}]
  - route: [{destination: {host: backend, subset: ghost}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_without_endpoints_answers_503_naming_the_subset() {
    let b = Backends::start(1, &[("backend-routing.yaml", BACKEND_GHOST_SUBSET)]).await;
    let mut c = b.h1().await;
    let live = c.get(BACKEND, &[("x-subset", "live")]).await.unwrap();
    assert_eq!(live.status, 200, "{}", describe(&live));
    let r = c.get(BACKEND, &[]).await.unwrap();
    assert_generated(
        &r,
        503,
        "no_healthy_endpoints(subset=ghost)",
        "a route to an empty subset",
    );
}
