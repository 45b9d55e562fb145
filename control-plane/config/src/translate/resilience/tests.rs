use super::*;
use mesh::retry_policy::{Condition as C, GrpcCondition as G};

fn d(text: &str) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(parse_duration(text).expect("duration")).ok()
}

fn retry(yaml: &str) -> HttpRetry {
    serde_saphyr::from_str(yaml).expect("HTTPRetry")
}

fn conds(c: &[C]) -> Vec<i32> {
    c.iter().map(|c| *c as i32).collect()
}

fn grpc(g: &[G]) -> Vec<i32> {
    g.iter().map(|g| *g as i32).collect()
}

#[test]
fn absent_retries_is_istios_default_policy() {
    let p = retry_policy(None, false);
    assert_eq!(p.attempts, 2);
    assert_eq!(
        p.retry_on,
        conds(&[C::ConnectFailure, C::RefusedStream, C::RetriableStatusCodes])
    );
    assert_eq!(p.retriable_status_codes, vec![503]);
    assert_eq!(p.grpc_retry_on, grpc(&[G::Unavailable, G::Cancelled]));
    assert_eq!(p.per_try_timeout, None);
    assert_eq!(p.backoff_base_interval, d("25ms"));
    assert_eq!(p.backoff_max_interval, d("250ms"));
    assert!(p.retry_ignore_previous_hosts);
    assert!(!p.configured);
    // Consistent hashing: Istio's default keeps retries on the same host.
    assert!(!retry_policy(None, true).retry_ignore_previous_hosts);
}

#[test]
fn zero_or_missing_attempts_disable_retries() {
    for yaml in ["{attempts: 0}", "{perTryTimeout: 2s, retryOn: 5xx}"] {
        let p = retry_policy(Some(&retry(yaml)), false);
        assert_eq!(
            p,
            mesh::RetryPolicy {
                configured: true,
                ..Default::default()
            },
            "{yaml}"
        );
    }
}

#[test]
fn written_policy_overrides_the_default() {
    let p = retry_policy(
        Some(&retry(
            "{attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error, 5xx,429,unavailable,5xx,deadline-exceeded', backoff: 100ms, retryIgnorePreviousHosts: false, retryRemoteLocalities: true}",
        )),
        false,
    );
    assert_eq!(p.attempts, 3);
    assert_eq!(p.per_try_timeout, d("2s"));
    // Order kept, duplicates dropped, retriable-status-codes added for the bare code.
    assert_eq!(
        p.retry_on,
        conds(&[C::GatewayError, C::Status5xx, C::RetriableStatusCodes])
    );
    assert_eq!(p.retriable_status_codes, vec![429]);
    assert_eq!(
        p.grpc_retry_on,
        grpc(&[G::Unavailable, G::DeadlineExceeded])
    );
    assert_eq!(p.backoff_base_interval, d("100ms"));
    assert_eq!(p.backoff_max_interval, d("1s"));
    assert!(!p.retry_ignore_previous_hosts);
    assert!(p.retry_remote_localities);
    assert!(p.configured);
}

#[test]
fn written_retry_on_replaces_default_codes_and_attempts_alone_keep_them() {
    // retryOn without codes: no 503 list any more (Istio's parseRetryOn).
    let p = retry_policy(Some(&retry("{attempts: 1, retryOn: 5xx}")), true);
    assert_eq!(p.retry_on, conds(&[C::Status5xx]));
    assert!(p.retriable_status_codes.is_empty());
    assert!(p.grpc_retry_on.is_empty());
    assert!(!p.retry_ignore_previous_hosts, "hashed destination");
    // attempts alone: the default conditions and codes stay.
    let p = retry_policy(Some(&retry("{attempts: 5}")), false);
    assert_eq!(p.attempts, 5);
    assert_eq!(p.retriable_status_codes, vec![503]);
    assert!(p.retry_ignore_previous_hosts);
    assert!(p.configured);
}

#[test]
fn retry_on_elements() {
    assert_eq!(retry_on("503"), Some(RetryOn::Status(503)));
    assert_eq!(retry_on("599"), None);
    assert_eq!(retry_on("306"), None);
    assert_eq!(retry_on("5xx"), Some(RetryOn::Http(C::Status5xx)));
    assert_eq!(retry_on("cancelled"), Some(RetryOn::Grpc(G::Cancelled)));
    assert_eq!(retry_on("5XX"), None);
    assert_eq!(grpc_status_code("OK"), Some(0));
    assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
    assert_eq!(grpc_status_code("UNAUTHENTICATED"), Some(16));
    assert_eq!(grpc_status_code("unavailable"), None);
}

fn fault_of(yaml: &str) -> Option<mesh::FaultInjection> {
    let f: HttpFaultInjection = serde_saphyr::from_str(yaml).expect("fault");
    fault(Some(&f))
}

#[test]
fn faults() {
    use mesh::fault_injection::abort::Error;
    let f = fault_of("{delay: {fixedDelay: 7s, percentage: {value: 100.0}}}").expect("fault");
    let delay = f.delay.expect("delay");
    assert_eq!(delay.fixed_delay, d("7s"));
    assert_eq!(delay.percentage, 100.0);
    assert!(f.abort.is_none());
    // Legacy integer percent; percentage wins when both are written.
    let f = fault_of("{delay: {fixedDelay: 2s, percent: 30}}").expect("fault");
    assert_eq!(f.delay.expect("delay").percentage, 30.0);
    let f = fault_of("{delay: {fixedDelay: 2s, percent: 30, percentage: {value: 0.5}}}")
        .expect("fault");
    assert_eq!(f.delay.expect("delay").percentage, 0.5);
    // No percentage at all: 0, as Istio and Envoy.
    let f = fault_of("{abort: {httpStatus: 555}}").expect("fault");
    let abort = f.abort.expect("abort");
    assert_eq!(abort.error, Some(Error::HttpStatus(555)));
    assert_eq!(abort.percentage, 0.0);
    let f =
        fault_of("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 12.5}}}").expect("fault");
    let abort = f.abort.expect("abort");
    assert_eq!(abort.error, Some(Error::GrpcStatus(14)));
    assert_eq!(abort.percentage, 12.5);
    // What Istio's translation drops.
    assert_eq!(
        fault_of("{delay: {exponentialDelay: 1s}, abort: {http2Error: x}}"),
        None
    );
}

#[test]
fn outlier_detection_defaults_and_quirks() {
    let od = |yaml: &str| {
        let od: OutlierDetection = serde_saphyr::from_str(yaml).expect("outlier");
        outlier_detection(Some(&od)).expect("set")
    };
    let o = od("{}");
    assert_eq!(
        (o.consecutive_5xx_errors, o.consecutive_gateway_errors),
        (5, 0)
    );
    assert_eq!(o.interval, d("10s"));
    assert_eq!(o.base_ejection_time, d("30s"));
    assert_eq!((o.max_ejection_percent, o.min_health_percent), (10, 0));
    assert_eq!(o.consecutive_local_origin_failures, 0);
    // Deprecated consecutiveErrors: gateway errors only.
    let o = od("{consecutiveErrors: 7}");
    assert_eq!(
        (o.consecutive_5xx_errors, o.consecutive_gateway_errors),
        (0, 7)
    );
    let o = od("{consecutiveErrors: 7, consecutive5xxErrors: 2}");
    assert_eq!(
        (o.consecutive_5xx_errors, o.consecutive_gateway_errors),
        (2, 7)
    );
    // 0 turns the 5xx check off; maxEjectionPercent 0 is Envoy's 10.
    let o = od("{consecutive5xxErrors: 0, maxEjectionPercent: 0, minHealthPercent: 50}");
    assert_eq!(o.consecutive_5xx_errors, 0);
    assert_eq!((o.max_ejection_percent, o.min_health_percent), (10, 50));
    // Local-origin failures only when split; 0 then means Envoy's 5.
    assert_eq!(
        od("{consecutiveLocalOriginFailures: 3}").consecutive_local_origin_failures,
        0
    );
    assert_eq!(
        od("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 0}")
            .consecutive_local_origin_failures,
        5
    );
    assert_eq!(
        od("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3}")
            .consecutive_local_origin_failures,
        3
    );
    assert_eq!(outlier_detection(None), None);
}

#[test]
fn retry_budget_defaults_on_unless_max_retries_is_written() {
    let dr: DestinationRule = serde_saphyr::from_str(
        "host: a\ntrafficPolicy: {retryBudget: {percent: 5}}\nsubsets: [{name: v1, labels: {v: '1'}, trafficPolicy: {retryBudget: {minRetryConcurrency: 1}}}, {name: v2, labels: {v: '2'}}]\n",
    )
    .expect("dr");
    let b = retry_budget(Some(&dr), None, None).expect("budget");
    assert_eq!(
        (b.percent, b.min_retry_concurrency, b.configured),
        (5.0, 3, true)
    );
    // The subset's block replaces the rule's as a whole.
    let b = retry_budget(Some(&dr), Some(&dr.subsets[0]), None).expect("budget");
    assert_eq!((b.percent, b.min_retry_concurrency), (20.0, 1));
    let b = retry_budget(Some(&dr), Some(&dr.subsets[1]), None).expect("budget");
    assert_eq!(b.percent, 5.0);
    // Nothing written: Weft's default budget...
    let b = retry_budget(None, None, None).expect("default budget");
    assert_eq!(
        (b.percent, b.min_retry_concurrency, b.configured),
        (20.0, 3, false)
    );
    // ...unless maxRetries caps retries, as in Istio.
    let pool: ConnectionPoolSettings =
        serde_saphyr::from_str("{http: {maxRetries: 4}}").expect("pool");
    assert_eq!(retry_budget(None, None, Some(&pool)), None);
    assert!(retry_budget(Some(&dr), None, Some(&pool)).is_some());
}

#[test]
fn load_balancer_consistent_hash_and_warmup() {
    use mesh::consistent_hash::{Algorithm, HashKey};
    let lb = |yaml: &str| {
        let lb: LoadBalancerSettings = serde_saphyr::from_str(yaml).expect("lb");
        load_balancer(Some(&lb))
    };
    let l = lb(
        "{consistentHash: {httpCookie: {name: user, path: /, ttl: 0s, attributes: [{name: HttpOnly}]}, maglev: {tableSize: 1009}}}",
    );
    let ch = l.consistent_hash.expect("hash");
    let Some(HashKey::HttpCookie(c)) = ch.hash_key else {
        panic!("cookie")
    };
    assert_eq!((c.name.as_str(), c.path.as_str()), ("user", "/"));
    assert_eq!(c.ttl, d("0s"));
    assert_eq!(c.attributes.get("HttpOnly").map(String::as_str), Some(""));
    assert_eq!(
        ch.algorithm,
        Some(Algorithm::Maglev(mesh::consistent_hash::Maglev {
            table_size: 1009
        }))
    );
    // Ring hash is the default algorithm; the deprecated minimumRingSize is read.
    let l = lb("{consistentHash: {httpHeaderName: X-User, minimumRingSize: 2048}}");
    let ch = l.consistent_hash.expect("hash");
    assert_eq!(ch.hash_key, Some(HashKey::HttpHeaderName("x-user".into())));
    assert_eq!(
        ch.algorithm,
        Some(Algorithm::RingHash(mesh::consistent_hash::RingHash {
            minimum_ring_size: 2048
        }))
    );
    let l = lb("{simple: ROUND_ROBIN, warmupDurationSecs: 60s}");
    let w = l.warmup.expect("warmup");
    assert_eq!(w.duration, d("60s"));
    assert_eq!((w.minimum_percent, w.aggression), (10.0, 1.0));
    let l =
        lb("{simple: LEAST_REQUEST, warmup: {duration: 30s, minimumPercent: 5, aggression: 2}}");
    let w = l.warmup.expect("warmup");
    assert_eq!(
        (w.duration, w.minimum_percent, w.aggression),
        (d("30s"), 5.0, 2.0)
    );
    assert_eq!(load_balancer(None), mesh::LoadBalancer::default());
}
