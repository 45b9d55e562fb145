//! Unit tests of the resilience decisions and state; time-dependent ones run on paused time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use weft_api::mesh as pb;

use super::backoff::ceiling;
use super::config::{DEFAULT_BACKOFF_BASE, H2UpgradePolicy};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pd(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// Istio's default retry policy, as translation sends it.
fn istio_default_wire() -> pb::RetryPolicy {
    use pb::retry_policy::{Condition as Wc, GrpcCondition as Wg};
    pb::RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: vec![
            Wc::ConnectFailure as i32,
            Wc::RefusedStream as i32,
            Wc::RetriableStatusCodes as i32,
        ],
        retriable_status_codes: vec![503],
        grpc_retry_on: vec![Wg::Unavailable as i32, Wg::Cancelled as i32],
        backoff_base_interval: pd(ms(25)),
        backoff_max_interval: pd(ms(250)),
        retry_ignore_previous_hosts: true,
        retry_remote_localities: false,
        configured: false,
    }
}

fn policy_with(conditions: &[RetryCondition], codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        retry_on: conditions.iter().copied().collect(),
        retriable_status_codes: codes.to_vec(),
        ..RetryPolicy::default()
    }
}

fn response(status: u16) -> AttemptOutcome {
    AttemptOutcome::Response {
        status,
        grpc_status: None,
    }
}

fn grpc(code: u32) -> AttemptOutcome {
    AttemptOutcome::Response {
        status: 200,
        grpc_status: Some(code),
    }
}

// === retry conditions ===

/// Every outcome the table below covers, in column order.
fn outcomes() -> [(&'static str, AttemptOutcome); 20] {
    [
        ("200", response(200)),
        ("409", response(409)),
        ("429", response(429)),
        ("500", response(500)),
        ("502", response(502)),
        ("503", response(503)),
        ("504", response(504)),
        ("grpc 1", grpc(1)),
        ("grpc 4", grpc(4)),
        ("grpc 8", grpc(8)),
        ("grpc 13", grpc(13)),
        ("grpc 14", grpc(14)),
        ("grpc 2", grpc(2)),
        ("connect failure", AttemptOutcome::ConnectFailure),
        ("connect timeout", AttemptOutcome::ConnectTimeout(ms(10))),
        (
            "reset before request",
            AttemptOutcome::Reset {
                request_sent: false,
            },
        ),
        (
            "reset after request",
            AttemptOutcome::Reset { request_sent: true },
        ),
        ("refused stream", AttemptOutcome::RefusedStream),
        ("per-try timeout", AttemptOutcome::PerTryTimeout),
        (
            "overflow",
            AttemptOutcome::Overflow(Overflow::MaxPending(1)),
        ),
    ]
}

#[test]
fn every_condition_against_every_outcome() {
    use RetryCondition as C;
    // One column per outcome above: R = retried.
    //                                200 409 429 500 502 503 504 g1 g4 g8 g13 g14 g2 cf ct rb ra rs pt ov
    let table: [(C, &str); 16] = [
        (C::Status5xx, "...RRRR......RRRRRR."),
        (C::GatewayError, "....RRR......RRRRRR."),
        (C::Reset, ".............RRRRRR."),
        (C::ResetBeforeRequest, ".............RRR...."),
        (C::ConnectFailure, ".............RR....."),
        (C::EnvoyRatelimited, "...................."),
        (C::Retriable4xx, ".R.................."),
        (C::RefusedStream, ".................R.."),
        (C::RetriableStatusCodes, "..R..R.............."),
        (C::RetriableHeaders, "...................."),
        (C::Http3PostConnectFailure, "...................."),
        (C::GrpcCancelled, ".......R............"),
        (C::GrpcDeadlineExceeded, "........R..........."),
        (C::GrpcResourceExhausted, ".........R.........."),
        (C::GrpcInternal, "..........R........."),
        (C::GrpcUnavailable, "...........R........"),
    ];
    for (condition, row) in table {
        let policy = policy_with(&[condition], &[503, 429]);
        for ((name, outcome), expected) in outcomes().iter().zip(row.chars()) {
            assert_eq!(
                retriable(&policy, outcome),
                expected == 'R',
                "{condition} on {name}"
            );
        }
    }
}

#[test]
fn retriable_status_codes_need_the_condition() {
    let policy = policy_with(&[RetryCondition::Status5xx], &[409]);
    assert!(!retriable(&policy, &response(409)));
    let policy = policy_with(&[RetryCondition::RetriableStatusCodes], &[]);
    assert!(!retriable(&policy, &response(503)));
}

#[test]
fn grpc_status_in_headers_is_read() {
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-status", http::HeaderValue::from_static("14"));
    let outcome = AttemptOutcome::from_response(http::StatusCode::OK, &headers);
    assert_eq!(outcome, grpc(14));
    headers.insert("grpc-status", http::HeaderValue::from_static("nope"));
    assert_eq!(
        AttemptOutcome::from_response(http::StatusCode::OK, &headers),
        response(200)
    );
}

#[test]
fn istio_default_policy() {
    let policy = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    assert_eq!(policy.attempts, 2);
    assert!(policy.enabled());
    let retried = |o: AttemptOutcome| retriable(&policy, &o);
    assert!(retried(AttemptOutcome::ConnectFailure));
    assert!(retried(AttemptOutcome::ConnectTimeout(ms(1))));
    assert!(retried(AttemptOutcome::RefusedStream));
    assert!(retried(response(503)));
    assert!(retried(grpc(14)), "unavailable");
    assert!(retried(grpc(1)), "cancelled");
    // And nothing else.
    assert!(!retried(response(500)));
    assert!(!retried(response(502)));
    assert!(!retried(response(504)));
    assert!(!retried(response(200)));
    assert!(!retried(grpc(4)));
    assert!(!retried(AttemptOutcome::Reset { request_sent: true }));
    assert!(!retried(AttemptOutcome::Reset {
        request_sent: false
    }));
    assert!(!retried(AttemptOutcome::PerTryTimeout));
}

// === retry loop ===

#[test]
fn retries_until_attempts_are_used_up() {
    let policy = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    let cluster = ClusterLimits::new();
    let cp = ClusterPolicy::default();
    let mut rng = rng();
    let mut state = RetryState::new();
    for retry in 1..=2 {
        state.begin_attempt();
        match state.next(&policy, &response(503), &cluster, &cp, &mut rng) {
            RetryStep::Retry { backoff, retry: n } => {
                assert_eq!(n, retry);
                assert!(backoff < ceiling(ms(25), ms(250), retry));
            }
            other => panic!("retry {retry}: {other:?}"),
        }
        assert_eq!(cluster.active_retries(), 1, "the retry is outstanding");
    }
    assert_eq!(state.begin_attempt(), 3);
    assert_eq!(
        state.next(&policy, &response(503), &cluster, &cp, &mut rng),
        RetryStep::Stop(RetryStop::AttemptsExhausted { attempts: 2 })
    );
    assert_eq!(cluster.active_retries(), 0, "released when the retry ended");
}

#[test]
fn attempts_zero_disables_retries() {
    let mut wire = istio_default_wire();
    wire.attempts = 0;
    let policy = RetryPolicy::from_proto(&wire).unwrap();
    assert!(!policy.enabled());
    let mut state = RetryState::new();
    state.begin_attempt();
    let step = state.next(
        &policy,
        &AttemptOutcome::ConnectFailure,
        &ClusterLimits::new(),
        &ClusterPolicy::default(),
        &mut rng(),
    );
    assert_eq!(
        step,
        RetryStep::Stop(RetryStop::AttemptsExhausted { attempts: 0 })
    );
    // A route without `retries` on the wire does not retry either.
    assert!(!RetryPolicy::from_route(None).unwrap().enabled());
}

#[test]
fn successes_and_unreplayable_bodies_stop() {
    let policy = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    let cluster = ClusterLimits::new();
    let cp = ClusterPolicy::default();
    let mut state = RetryState::new();
    state.begin_attempt();
    assert_eq!(
        state.next(&policy, &response(200), &cluster, &cp, &mut rng()),
        RetryStep::Stop(RetryStop::NotRetriable)
    );
    state.mark_not_replayable();
    assert_eq!(
        state.next(&policy, &response(503), &cluster, &cp, &mut rng()),
        RetryStep::Stop(RetryStop::BodyNotReplayable)
    );
    assert_eq!(cluster.active_retries(), 0);
}

#[test]
fn an_exhausted_budget_stops_retries_and_says_so() {
    let policy = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    let cluster = ClusterLimits::new();
    let cp = ClusterPolicy {
        retry_budget: Some(RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 1,
            configured: true,
        }),
        ..ClusterPolicy::default()
    };
    let _other = cluster.try_acquire_retry(&cp).unwrap();
    let mut state = RetryState::new();
    state.begin_attempt();
    assert_eq!(
        state.next(&policy, &response(503), &cluster, &cp, &mut rng()),
        RetryStep::Stop(RetryStop::BudgetExhausted { limit: 1 })
    );
}

#[test]
fn dropping_the_state_releases_its_retry() {
    let policy = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    let cluster = ClusterLimits::new();
    let mut state = RetryState::new();
    state.begin_attempt();
    let step = state.next(
        &policy,
        &response(503),
        &cluster,
        &ClusterPolicy::default(),
        &mut rng(),
    );
    assert!(matches!(step, RetryStep::Retry { retry: 1, .. }));
    assert_eq!(cluster.active_retries(), 1);
    drop(state);
    assert_eq!(cluster.active_retries(), 0);
}

#[test]
fn outcomes_name_their_reason() {
    let policy = RetryPolicy {
        per_try_timeout: Some(ms(2000)),
        ..RetryPolicy::default()
    };
    let reason = |o: AttemptOutcome| o.reason(&policy, 3).map(|r| r.to_string());
    assert_eq!(reason(response(503)), None);
    assert_eq!(
        reason(AttemptOutcome::PerTryTimeout).unwrap(),
        "per_try_timeout(2s,attempt=3)"
    );
    assert_eq!(
        reason(AttemptOutcome::ConnectTimeout(ms(10_000))).unwrap(),
        "connect_timeout(10s)"
    );
    assert_eq!(
        reason(AttemptOutcome::Overflow(Overflow::MaxPending(50))).unwrap(),
        "upstream_overflow(max_pending=50)"
    );
    assert_eq!(
        reason(AttemptOutcome::RefusedStream).unwrap(),
        "upstream_reset"
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_deadlines() {
    let now = tokio::time::Instant::now();
    let route = now + ms(1000);
    assert_eq!(attempt_deadline(now, None, None), None);
    assert_eq!(
        attempt_deadline(now, Some(route), None),
        Some((route, TimeoutKind::Route))
    );
    assert_eq!(
        attempt_deadline(now, Some(route), Some(ms(300))),
        Some((now + ms(300), TimeoutKind::PerTry))
    );
    assert_eq!(
        attempt_deadline(now, Some(route), Some(ms(1000))),
        Some((route, TimeoutKind::Route)),
        "a tie goes to the route"
    );
    assert_eq!(
        attempt_deadline(now, None, Some(ms(300))),
        Some((now + ms(300), TimeoutKind::PerTry))
    );
}

// === backoff ===

#[test]
fn backoff_stays_under_its_ceiling_and_grows_to_the_cap() {
    let policy = RetryPolicy::default(); // 25ms, capped at 250ms
    let mut rng = rng();
    let expected = [25, 50, 100, 200, 250, 250, 250];
    for (n, &ceiling_ms) in (1..).zip(expected.iter()) {
        let ceil = ms(ceiling_ms);
        assert_eq!(ceiling(policy.backoff_base, policy.backoff_max, n), ceil);
        let samples: Vec<Duration> = (0..2000).map(|_| backoff(&policy, n, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d < ceil), "retry {n}");
        // Full jitter: the whole range is used, low and high.
        let max = samples.iter().max().unwrap();
        let min = samples.iter().min().unwrap();
        assert!(*max > ceil.mul_f64(0.95), "retry {n}: max {max:?}");
        assert!(*min < ceil.mul_f64(0.05), "retry {n}: min {min:?}");
        let mean = samples.iter().sum::<Duration>() / 2000;
        assert!(
            mean > ceil.mul_f64(0.45) && mean < ceil.mul_f64(0.55),
            "retry {n}: mean {mean:?}"
        );
    }
}

#[test]
fn backoff_never_overflows() {
    let policy = RetryPolicy::default();
    let mut rng = rng();
    for n in [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, u32::MAX] {
        assert!(
            backoff(&policy, n, &mut rng) < policy.backoff_max,
            "retry {n}"
        );
    }
    assert_eq!(ceiling(ms(25), ms(250), 0), ms(25), "0 counts as the first");
    let huge = Duration::MAX;
    assert_eq!(
        ceiling(Duration::from_nanos(1), huge, 40),
        Duration::from_nanos(1 << 39)
    );
    assert_eq!(ceiling(Duration::from_secs(1), huge, 200), huge);
    assert_eq!(ceiling(huge, huge, u32::MAX), huge);
    let zero = RetryPolicy {
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..RetryPolicy::default()
    };
    assert_eq!(backoff(&zero, 3, &mut rng), Duration::ZERO);
}

// === budget ===

#[test]
fn budget_arithmetic() {
    let budget = RetryBudget {
        percent: 20.0,
        min_retry_concurrency: 3,
        configured: false,
    };
    assert_eq!(budget.limit(10), 3, "20% of 10 is 2, but at least 3");
    assert_eq!(budget.limit(0), 3);
    assert_eq!(budget.limit(20), 4);
    assert_eq!(budget.limit(100), 20);
    let exact = RetryBudget {
        percent: 29.0,
        min_retry_concurrency: 0,
        configured: true,
    };
    assert_eq!(exact.limit(100), 29);
    let all = RetryBudget {
        percent: 100.0,
        ..exact
    };
    assert_eq!(all.limit(u64::MAX), u64::MAX, "saturates, no wrap");
}

#[test]
fn budget_follows_active_requests_and_permits_release_on_drop() {
    let cluster = ClusterLimits::new();
    let cp = ClusterPolicy {
        retry_budget: Some(RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
            configured: false,
        }),
        ..ClusterPolicy::default()
    };
    let pool = PoolLimits::default();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            cluster
                .acquire_request(&pool)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
        .collect();
    let mut retries: Vec<_> = (0..3)
        .map(|_| cluster.try_acquire_retry(&cp).unwrap())
        .collect();
    assert_eq!(
        cluster.try_acquire_retry(&cp).unwrap_err(),
        RetryStop::BudgetExhausted { limit: 3 }
    );
    retries.pop();
    assert_eq!(cluster.active_retries(), 2);
    retries.push(cluster.try_acquire_retry(&cp).unwrap());
    // 20 active: 20% is 4.
    let more: Vec<_> = (0..10)
        .map(|_| {
            cluster
                .acquire_request(&pool)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
        .collect();
    retries.push(cluster.try_acquire_retry(&cp).unwrap());
    assert!(cluster.try_acquire_retry(&cp).is_err());
    drop((requests, more, retries));
    assert_eq!(cluster.active_retries(), 0);
    assert_eq!(cluster.active_requests(), 0);
}

#[test]
fn max_retries_caps_retries_without_a_budget() {
    let cluster = ClusterLimits::new();
    let mut cp = ClusterPolicy::default();
    cp.pool.max_retries = Some(2);
    let a = cluster.try_acquire_retry(&cp).unwrap();
    let _b = cluster.try_acquire_retry(&cp).unwrap();
    assert_eq!(
        cluster.try_acquire_retry(&cp).unwrap_err(),
        RetryStop::MaxRetries(2)
    );
    drop(a);
    let _c = cluster.try_acquire_retry(&cp).unwrap();
    // Neither a budget nor maxRetries: unlimited.
    let unlimited = ClusterPolicy::default();
    let many: Vec<_> = (0..1000)
        .map(|_| cluster.try_acquire_retry(&unlimited).unwrap())
        .collect();
    assert_eq!(many.len(), 1000);
}

// === circuit breaker ===

/// Limits as on the wire: 0 is unlimited.
fn pool(max_connections: u32, max_pending: u32) -> PoolLimits {
    let limit = |n: u32| (n != 0).then_some(n);
    PoolLimits {
        max_connections: limit(max_connections),
        http1_max_pending_requests: limit(max_pending),
        ..PoolLimits::default()
    }
}

#[tokio::test(start_paused = true)]
async fn one_slot_one_waiter_then_overflow() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 1);
    let first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let mut second = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut second).is_pending(), "the 2nd waits");
    assert_eq!(cluster.pending_requests(), 1);
    let third = cluster.acquire_request(&limits).now_or_never();
    assert_eq!(
        third.unwrap().unwrap_err(),
        Overflow::MaxPending(1),
        "the 3rd fails at once"
    );
    drop(first);
    let second = match futures::poll!(&mut second) {
        std::task::Poll::Ready(p) => p.unwrap(),
        std::task::Poll::Pending => panic!("releasing the 1st lets the 2nd in"),
    };
    assert_eq!(cluster.active_requests(), 1);
    assert_eq!(cluster.pending_requests(), 0);
    drop(second);
    assert_eq!(cluster.active_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_raised_limit_lets_waiters_in_without_a_release() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 5);
    let _first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let mut second = Box::pin(cluster.acquire_request(&limits));
    let mut third = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut second).is_pending());
    assert!(futures::poll!(&mut third).is_pending());
    // A config push raises maxConnections to 3 while the first request is still running.
    cluster.update_limits(&pool(3, 5));
    let std::task::Poll::Ready(Ok(_second)) = futures::poll!(&mut second) else {
        panic!("the 2nd gets one of the new slots");
    };
    let std::task::Poll::Ready(Ok(_third)) = futures::poll!(&mut third) else {
        panic!("and the 3rd the other");
    };
    assert_eq!(cluster.active_requests(), 3);
    assert_eq!(cluster.pending_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_frees_its_place() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 1);
    let first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let mut waiter = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut waiter).is_pending());
    drop(waiter);
    assert_eq!(cluster.pending_requests(), 0);
    // The place is free again: the next request waits instead of overflowing.
    let mut next = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut next).is_pending());
    drop(first);
    assert!(futures::poll!(&mut next).is_ready());
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_is_dropped_passes_the_slot_on() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 0); // unlimited queue
    let first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let mut a = Box::pin(cluster.acquire_request(&limits));
    let mut b = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut a).is_pending());
    assert!(futures::poll!(&mut b).is_pending());
    drop(first); // wakes `a`...
    drop(a); // ...which leaves before running
    assert!(futures::poll!(&mut b).is_ready());
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order_and_newcomers_queue_behind() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 0);
    let first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let mut a = Box::pin(cluster.acquire_request(&limits));
    let mut b = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut a).is_pending());
    assert!(futures::poll!(&mut b).is_pending());
    drop(first); // the slot is `a`'s
    let mut late = Box::pin(cluster.acquire_request(&limits));
    assert!(futures::poll!(&mut late).is_pending(), "no overtaking");
    assert!(futures::poll!(&mut b).is_pending(), "b is behind a");
    let a = match futures::poll!(&mut a) {
        std::task::Poll::Ready(p) => p.unwrap(),
        std::task::Poll::Pending => panic!("a is first"),
    };
    drop(a);
    assert!(futures::poll!(&mut late).is_pending());
    assert!(futures::poll!(&mut b).is_ready());
}

#[tokio::test(start_paused = true)]
async fn max_requests_fails_fast() {
    let cluster = ClusterLimits::new();
    let limits = PoolLimits {
        http2_max_requests: Some(2),
        ..PoolLimits::default()
    };
    let held: Vec<_> = (0..2)
        .map(|_| {
            cluster
                .acquire_request(&limits)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
        .collect();
    assert_eq!(
        cluster
            .acquire_request(&limits)
            .now_or_never()
            .unwrap()
            .unwrap_err(),
        Overflow::MaxRequests(2)
    );
    drop(held);
    assert!(
        cluster
            .acquire_request(&limits)
            .now_or_never()
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_the_callers_timeout() {
    let cluster = ClusterLimits::new();
    let limits = pool(1, 1);
    let _first = cluster
        .acquire_request(&limits)
        .now_or_never()
        .unwrap()
        .unwrap();
    let waited = tokio::time::timeout(ms(500), cluster.acquire_request(&limits)).await;
    assert!(
        waited.is_err(),
        "still waiting when the route timeout fires"
    );
    assert_eq!(cluster.pending_requests(), 0, "and its place is back");
}

#[tokio::test(start_paused = true)]
async fn many_tasks_never_exceed_the_limit() {
    let cluster = ClusterLimits::new();
    let limits = Arc::new(pool(3, 0));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (cluster, limits, peak) = (cluster.clone(), limits.clone(), peak.clone());
            tokio::spawn(async move {
                let _permit = cluster.acquire_request(&limits).await.unwrap();
                peak.fetch_max(
                    cluster.active_requests(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                tokio::time::sleep(ms(10 + i % 7)).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(cluster.active_requests(), 0);
    assert_eq!(cluster.pending_requests(), 0);
}

/// Threads racing on acquire, release and cancellation: the limit always holds, nobody is
/// left waiting on a free slot (the test would hang), and every count returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquire_release_and_cancel() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let cluster = ClusterLimits::new();
    let limits = Arc::new(pool(4, 0));
    let over = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let (cluster, limits, over) = (cluster.clone(), limits.clone(), over.clone());
            tokio::spawn(async move {
                for round in 0..200u64 {
                    let acquire = cluster.acquire_request(&limits);
                    if (i + round) % 5 == 0 {
                        // Give up quickly now and then: cancellation while queued.
                        let _ = tokio::time::timeout(Duration::from_micros(50), acquire).await;
                        continue;
                    }
                    let _permit = acquire.await.unwrap();
                    if cluster.active_requests() > 4 {
                        over.fetch_add(1, SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("no waiter is stranded");
    assert_eq!(over.load(SeqCst), 0);
    assert_eq!(cluster.active_requests(), 0);
    assert_eq!(cluster.pending_requests(), 0);
}

#[test]
fn tcp_connections_fail_fast_at_max_connections() {
    let cluster = ClusterLimits::new();
    let limits = pool(2, 1);
    let a = cluster.acquire_connection(&limits).unwrap();
    let _b = cluster.acquire_connection(&limits).unwrap();
    assert_eq!(
        cluster.acquire_connection(&limits).unwrap_err(),
        Overflow::MaxConnections(2)
    );
    drop(a);
    assert!(cluster.acquire_connection(&limits).is_ok());
    assert_eq!(cluster.active_connections(), 1);
}

// === faults ===

fn share(fault: &Fault, pick: impl Fn(&FaultDecision) -> bool) -> f64 {
    let mut rng = rng();
    let hits = (0..10_000)
        .filter(|_| pick(&decide_fault(fault, &mut rng)))
        .count();
    hits as f64 / 100.0
}

#[test]
fn fault_percentages_hold_over_many_draws() {
    let fault = |delay: f64, abort: f64| Fault {
        delay: Some(FaultDelay {
            fixed: ms(5),
            percentage: delay,
        }),
        abort: Some(FaultAbort {
            kind: AbortKind::Http(503),
            percentage: abort,
        }),
    };
    for p in [0.0, 0.1, 10.0, 30.0, 50.0, 99.9, 100.0] {
        let f = fault(p, 100.0 - p);
        let delayed = share(&f, |d| d.delay.is_some());
        let aborted = share(&f, |d| d.abort.is_some());
        assert!((delayed - p).abs() <= 2.0, "delay {p}%: got {delayed}%");
        assert!(
            (aborted - (100.0 - p)).abs() <= 2.0,
            "abort {}%: got {aborted}%",
            100.0 - p
        );
    }
    // Independent draws: 50% x 50% = 25% both.
    let both = share(&fault(50.0, 50.0), |d| {
        d.delay.is_some() && d.abort.is_some()
    });
    assert!((both - 25.0).abs() <= 2.0, "both: {both}%");
    assert_eq!(
        share(&fault(0.0, 0.0), |d| *d != FaultDecision::default()),
        0.0
    );
    let d = decide_fault(&fault(100.0, 100.0), &mut rng());
    assert_eq!(d.delay, Some(ms(5)));
    assert_eq!(d.abort, Some(AbortKind::Http(503)));
    // 0.1% is about 10 in 10,000, not 0.
    let rare = share(&fault(0.1, 0.0), |d| d.delay.is_some());
    assert!(rare > 0.0 && rare < 0.3, "0.1%: got {rare}%");
}

#[test]
fn http_abort_response() {
    let rsp = abort_response(AbortKind::Http(503));
    assert_eq!(rsp.status(), 503);
    assert_eq!(rsp.body().as_ref(), b"fault filter abort");
    assert_eq!(rsp.headers()[REASON_HEADER], "fault_abort(503)");
    assert_eq!(
        rsp.headers()[http::header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
}

#[test]
fn grpc_abort_response_is_trailers_only() {
    let rsp = abort_response(AbortKind::Grpc(14));
    assert_eq!(rsp.status(), 200);
    assert!(rsp.body().is_empty());
    let h = rsp.headers();
    assert_eq!(h[http::header::CONTENT_TYPE], "application/grpc");
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["grpc-message"], "fault filter abort");
    assert_eq!(h[REASON_HEADER], "fault_abort(grpc=14)");
}

// === reasons ===

#[test]
fn reason_strings_are_exact() {
    let cases: [(Reason, &str, &str, u16); 11] = [
        (Reason::Timeout(ms(2000)), "timeout(2s)", "timeout", 504),
        (
            Reason::PerTryTimeout {
                timeout: ms(2000),
                attempt: 3,
            },
            "per_try_timeout(2s,attempt=3)",
            "per_try_timeout",
            504,
        ),
        (
            Reason::UpstreamOverflow(Overflow::MaxPending(50)),
            "upstream_overflow(max_pending=50)",
            "upstream_overflow",
            503,
        ),
        (
            Reason::UpstreamOverflow(Overflow::MaxRequests(100)),
            "upstream_overflow(max_requests=100)",
            "upstream_overflow",
            503,
        ),
        (
            Reason::UpstreamOverflow(Overflow::MaxConnections(1)),
            "upstream_overflow(max_connections=1)",
            "upstream_overflow",
            503,
        ),
        (
            Reason::NoHealthyEndpoints(EndpointScope::Subset("v2".into())),
            "no_healthy_endpoints(subset=v2)",
            "no_healthy_endpoints",
            503,
        ),
        (
            Reason::NoHealthyEndpoints(EndpointScope::Cluster(
                "outbound|9080||reviews.default.svc.cluster.local".into(),
            )),
            "no_healthy_endpoints(cluster=outbound|9080||reviews.default.svc.cluster.local)",
            "no_healthy_endpoints",
            503,
        ),
        (
            Reason::FaultAbort(AbortKind::Http(503)),
            "fault_abort(503)",
            "fault_abort",
            503,
        ),
        (
            Reason::FaultAbort(AbortKind::Grpc(14)),
            "fault_abort(grpc=14)",
            "fault_abort",
            200,
        ),
        (
            Reason::ConnectTimeout(ms(250)),
            "connect_timeout(250ms)",
            "connect_timeout",
            503,
        ),
        (
            Reason::ConnectFailure,
            "connect_failure",
            "connect_failure",
            503,
        ),
    ];
    for (reason, text, name, status) in cases {
        assert_eq!(reason.to_string(), text);
        assert_eq!(reason.name(), name);
        assert_eq!(reason.status(), status, "{text}");
        assert_eq!(reason.header_value(), text);
    }
    assert_eq!(Reason::UpstreamReset.to_string(), "upstream_reset");
    assert_eq!(Reason::UpstreamReset.status(), 502);
}

#[test]
fn unprintable_details_fall_back_to_the_name() {
    let r = Reason::NoHealthyEndpoints(EndpointScope::Subset("bad\nname".into()));
    assert_eq!(r.header_value(), "no_healthy_endpoints");
}

#[test]
fn retry_stops_read_well() {
    let cases = [
        (RetryStop::NotRetriable, "not_retriable", "not_retriable"),
        (
            RetryStop::AttemptsExhausted { attempts: 2 },
            "attempts_exhausted(attempts=2)",
            "attempts_exhausted",
        ),
        (
            RetryStop::BodyNotReplayable,
            "body_not_replayable",
            "body_not_replayable",
        ),
        (
            RetryStop::BudgetExhausted { limit: 3 },
            "retry_budget_exhausted(limit=3)",
            "retry_budget_exhausted",
        ),
        (
            RetryStop::MaxRetries(5),
            "retry_overflow(max_retries=5)",
            "retry_overflow",
        ),
    ];
    for (stop, text, name) in cases {
        assert_eq!(stop.to_string(), text);
        assert_eq!(stop.name(), name);
    }
}

#[test]
fn durations_print_compactly() {
    let cases = [
        (Duration::ZERO, "0s"),
        (ms(2000), "2s"),
        (ms(1500), "1.5s"),
        (ms(1250), "1.25s"),
        (ms(1001), "1.001s"),
        (Duration::from_micros(1_000_250), "1s"),
        (ms(250), "250ms"),
        (ms(1), "1ms"),
        (Duration::from_micros(1500), "1.5ms"),
        (Duration::from_micros(500), "500us"),
        (Duration::from_nanos(1500), "1.5us"),
        (Duration::from_nanos(7), "7ns"),
        (Duration::from_secs(3600), "3600s"),
    ];
    for (d, text) in cases {
        assert_eq!(CompactDuration(d).to_string(), text, "{d:?}");
    }
}

// === config ===

#[test]
fn retry_policy_from_the_wire() {
    let p = RetryPolicy::from_proto(&istio_default_wire()).unwrap();
    assert_eq!(
        p.retry_on
            .iter()
            .map(RetryCondition::name)
            .collect::<Vec<_>>(),
        [
            "connect-failure",
            "refused-stream",
            "retriable-status-codes",
            "cancelled",
            "unavailable"
        ]
    );
    assert_eq!(p.retriable_status_codes, [503]);
    assert_eq!((p.backoff_base, p.backoff_max), (ms(25), ms(250)));
    assert!(p.ignore_previous_hosts);
    assert_eq!(p.per_try_timeout, None);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["backoff_max"], "250ms");
    assert_eq!(json["retry_on"][0], "connect-failure");
    assert_eq!(json["per_try_timeout"], serde_json::Value::Null);
}

#[test]
fn retry_policy_defaults_and_errors() {
    // A control plane that predates the back-off fields: Envoy's defaults.
    let mut wire = istio_default_wire();
    wire.backoff_base_interval = None;
    wire.backoff_max_interval = None;
    wire.per_try_timeout = pd(Duration::ZERO);
    let p = RetryPolicy::from_proto(&wire).unwrap();
    assert_eq!(p.backoff_base, DEFAULT_BACKOFF_BASE);
    assert_eq!(p.backoff_max, ms(250));
    assert_eq!(p.per_try_timeout, None, "zero is unset");

    let err = |f: &dyn Fn(&mut pb::RetryPolicy)| {
        let mut w = istio_default_wire();
        f(&mut w);
        RetryPolicy::from_proto(&w).unwrap_err()
    };
    assert_eq!(
        err(&|w| w.retry_on.push(99)),
        "retry_on[3]: unknown retry condition 99"
    );
    assert_eq!(
        err(&|w| w.retry_on.push(0)),
        "retry_on[3]: unknown retry condition 0"
    );
    assert_eq!(
        err(&|w| w.grpc_retry_on.insert(0, 42)),
        "grpc_retry_on[0]: unknown gRPC retry condition 42"
    );
    assert_eq!(
        err(&|w| w.retriable_status_codes.push(700)),
        "retriable_status_codes[1]: 700 is not an HTTP status"
    );
    assert_eq!(
        err(&|w| w.backoff_max_interval = pd(ms(10))),
        "backoff_max_interval: 10ms is less than backoff_base_interval 25ms"
    );
    assert_eq!(
        err(&|w| w.backoff_base_interval = pd(Duration::ZERO)),
        "backoff_base_interval: must be greater than zero"
    );
    assert!(
        err(&|w| {
            w.per_try_timeout = Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            })
        })
        .starts_with("per_try_timeout: ")
    );
}

#[test]
fn route_timeout_conversion() {
    assert_eq!(route_timeout(None).unwrap(), None);
    assert_eq!(route_timeout(pd(Duration::ZERO).as_ref()).unwrap(), None);
    assert_eq!(
        route_timeout(pd(ms(1500)).as_ref()).unwrap(),
        Some(ms(1500))
    );
    let negative = prost_types::Duration {
        seconds: -3,
        nanos: 0,
    };
    assert!(
        route_timeout(Some(&negative))
            .unwrap_err()
            .starts_with("timeout: ")
    );
}

#[test]
fn fault_from_the_wire() {
    use pb::fault_injection::{Abort, Delay, abort::Error};
    let wire = pb::FaultInjection {
        delay: Some(Delay {
            fixed_delay: pd(ms(5000)),
            percentage: 0.1,
        }),
        abort: Some(Abort {
            error: Some(Error::GrpcStatus(14)),
            percentage: 50.0,
        }),
    };
    let f = Fault::from_proto(&wire).unwrap();
    assert_eq!(
        f.delay,
        Some(FaultDelay {
            fixed: ms(5000),
            percentage: 0.1
        })
    );
    assert_eq!(f.abort.unwrap().kind, AbortKind::Grpc(14));
    let json = serde_json::to_value(f).unwrap();
    assert_eq!(json["delay"]["fixed"], "5s");
    assert_eq!(json["abort"]["kind"]["grpc"], 14);

    let err = |f: &dyn Fn(&mut pb::FaultInjection)| {
        let mut w = wire;
        f(&mut w);
        Fault::from_proto(&w).unwrap_err()
    };
    assert_eq!(
        err(&|w| w.delay = Some(Delay::default())),
        "delay.fixed_delay: required"
    );
    assert_eq!(
        err(&|w| w.delay.as_mut().unwrap().percentage = 100.5),
        "delay.percentage: 100.5 is not a percentage (0-100)"
    );
    assert_eq!(
        err(&|w| w.abort.as_mut().unwrap().percentage = f64::NAN),
        "abort.percentage: NaN is not a percentage (0-100)"
    );
    assert_eq!(
        err(&|w| w.abort.as_mut().unwrap().error = Some(Error::HttpStatus(600))),
        "abort.http_status: 600 is not an HTTP status (200-599)"
    );
    assert_eq!(
        err(&|w| w.abort.as_mut().unwrap().error = Some(Error::GrpcStatus(17))),
        "abort.grpc_status: 17 is not a gRPC status code (0-16)"
    );
    assert_eq!(
        err(&|w| w.abort.as_mut().unwrap().error = None),
        "abort.error: http_status or grpc_status required"
    );
}

#[test]
fn pool_limits_resolve_defaults() {
    use pb::connection_pool::{Http, Tcp, TcpKeepalive as WireKeepalive};
    assert_eq!(PoolLimits::from_proto(None).unwrap(), PoolLimits::default());
    let d = PoolLimits::default();
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.tcp_idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(d.http_idle_timeout, Duration::from_secs(3600));
    assert_eq!(d.max_concurrent_streams, (1 << 31) - 1);
    assert_eq!(d.request_slots(), None);

    // Everything zero or unset: the defaults, no limits.
    let zeros = pb::ConnectionPool {
        tcp: Some(Tcp {
            connect_timeout: pd(Duration::ZERO),
            ..Tcp::default()
        }),
        http: Some(Http::default()),
    };
    assert_eq!(PoolLimits::from_proto(Some(&zeros)).unwrap(), d);

    let wire = pb::ConnectionPool {
        tcp: Some(Tcp {
            max_connections: 100,
            connect_timeout: pd(ms(250)),
            tcp_keepalive: Some(WireKeepalive {
                probes: 3,
                time: pd(Duration::from_secs(7200)),
                interval: None,
            }),
            max_connection_duration: pd(Duration::from_secs(600)),
            idle_timeout: pd(Duration::ZERO),
        }),
        http: Some(Http {
            http1_max_pending_requests: 50,
            http2_max_requests: 80,
            max_requests_per_connection: 1,
            max_retries: 4,
            idle_timeout: pd(Duration::from_secs(30)),
            max_concurrent_streams: 64,
            h2_upgrade_policy: 2,
            use_client_protocol: true,
        }),
    };
    let p = PoolLimits::from_proto(Some(&wire)).unwrap();
    assert_eq!(p.max_connections, Some(100));
    assert_eq!(p.connect_timeout, ms(250));
    assert_eq!(p.tcp_keepalive.unwrap().probes, Some(3));
    assert_eq!(p.tcp_keepalive.unwrap().interval, None);
    assert_eq!(p.max_connection_duration, Some(Duration::from_secs(600)));
    assert_eq!(p.tcp_idle_timeout, None, "zero: never");
    assert_eq!(p.http1_max_pending_requests, Some(50));
    assert_eq!(p.http2_max_requests, Some(80));
    assert_eq!(p.max_requests_per_connection, Some(1));
    assert_eq!(p.max_retries, Some(4));
    assert_eq!(p.http_idle_timeout, Duration::from_secs(30));
    assert_eq!(p.max_concurrent_streams, 64);
    assert_eq!(p.h2_upgrade_policy, H2UpgradePolicy::Upgrade);
    assert!(p.use_client_protocol);
    assert_eq!(p.request_slots(), Some(80));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["connect_timeout"], "250ms");
    assert_eq!(json["tcp_idle_timeout"], serde_json::Value::Null);
    assert_eq!(json["h2_upgrade_policy"], "UPGRADE");

    let mut bad = wire;
    bad.http.as_mut().unwrap().h2_upgrade_policy = 9;
    assert_eq!(
        PoolLimits::from_proto(Some(&bad)).unwrap_err(),
        "http.h2_upgrade_policy: unknown policy 9"
    );
}

#[test]
fn cluster_policy_from_the_wire() {
    let cluster = pb::Cluster {
        retry_budget: Some(pb::RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
            configured: false,
        }),
        ..pb::Cluster::default()
    };
    let cp = ClusterPolicy::from_proto(&cluster).unwrap();
    assert_eq!(cp.pool, PoolLimits::default());
    assert_eq!(cp.retry_budget.unwrap().min_retry_concurrency, 3);

    let bad = pb::Cluster {
        retry_budget: Some(pb::RetryBudget {
            percent: -1.0,
            ..pb::RetryBudget::default()
        }),
        ..pb::Cluster::default()
    };
    assert_eq!(
        ClusterPolicy::from_proto(&bad).unwrap_err(),
        "retry_budget.percent: -1 is not a percentage (0-100)"
    );
    let bad = pb::Cluster {
        connection_pool: Some(pb::ConnectionPool {
            tcp: Some(pb::connection_pool::Tcp {
                connect_timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            http: None,
        }),
        ..pb::Cluster::default()
    };
    assert!(
        ClusterPolicy::from_proto(&bad)
            .unwrap_err()
            .starts_with("connection_pool.tcp.connect_timeout: ")
    );
}

#[test]
fn grpc_statuses_map_to_http_as_envoy_does() {
    use super::grpc_to_http_status as map;
    use http::StatusCode;
    assert_eq!(map(0), StatusCode::OK);
    assert_eq!(map(14), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(map(4), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(map(8), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(map(13), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(map(12), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(map(99), StatusCode::INTERNAL_SERVER_ERROR);
}
