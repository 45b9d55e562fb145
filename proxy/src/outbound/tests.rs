#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! The hop decision as a table: DestinationRule TLS mode x sidecar x our identity.

use std::collections::BTreeMap;

use super::*;
use crate::errors::ErrorKind;

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/reviews-v2";

fn spec(tls: UpstreamTlsMode, identities: &[&str]) -> Cluster {
    spec_with(tls, identities, None)
}

fn spec_with(
    tls: UpstreamTlsMode,
    identities: &[&str],
    origination: Option<crate::model::OriginationTls>,
) -> Cluster {
    let spec = crate::model::ClusterSpec {
        name: "outbound|9080||reviews".into(),
        service: "reviews".into(),
        port: 9080,
        subset: String::new(),
        protocol: crate::model::Protocol::Http,
        lb: Default::default(),
        outlier: None,
        tls,
        origination,
        identities: identities.iter().map(|s| s.to_string()).collect(),
        policy: Default::default(),
    };
    Cluster::new(Arc::new(spec), Arc::from(Vec::new()))
}

fn ep(mesh_port: Option<u16>, identity: &str) -> Endpoint {
    Endpoint {
        addr: "10.0.0.1:9080".parse().unwrap(),
        mesh_port,
        identity: identity.into(),
        weight: 1,
        workload: String::new(),
        labels: BTreeMap::new(),
    }
}

fn mutual(ids: &[&str]) -> Hop {
    Hop::Mesh(
        "10.0.0.1:15006".parse().unwrap(),
        MeshSecurity::Mutual(ExpectedIdentities::new(
            ids.iter().map(|s| s.to_string()).collect(),
        )),
    )
}

#[test]
fn hop_table() {
    use UpstreamTlsMode::*;
    let plain = Hop::Mesh("10.0.0.1:15006".parse().unwrap(), MeshSecurity::Plaintext);
    type Case = (
        UpstreamTlsMode,
        &'static [&'static str],
        Option<u16>,
        bool,
        Hop,
    );
    let cases: Vec<Case> = vec![
        // AUTO: mTLS to sidecars when we have an identity; the endpoint's own identity
        // when the cluster lists none.
        (Auto, &[], Some(15006), true, mutual(&[REVIEWS])),
        (
            Auto,
            &[REVIEWS, OTHER],
            Some(15006),
            true,
            mutual(&[OTHER, REVIEWS]),
        ),
        (Auto, &[], Some(15006), false, plain.clone()),
        (Auto, &[], None, true, Hop::Direct),
        (Disable, &[REVIEWS], Some(15006), true, plain),
        (Disable, &[], None, true, Hop::Direct),
        (IstioMutual, &[], Some(15006), false, mutual(&[REVIEWS])),
    ];
    for (mode, ids, mesh_port, have_id, want) in cases {
        let got = choose_hop(&spec(mode, ids), &ep(mesh_port, REVIEWS), have_id).unwrap();
        assert_eq!(got, want, "{mode:?} {ids:?} {mesh_port:?} {have_id}");
    }
}

#[test]
fn mtls_that_cannot_be_checked_fails_closed() {
    let e = choose_hop(
        &spec(UpstreamTlsMode::IstioMutual, &[]),
        &ep(None, ""),
        true,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamTlsFailed);
    assert!(e.detail.contains("has no sidecar"), "{e}");
    let e = choose_hop(
        &spec(UpstreamTlsMode::Auto, &[]),
        &ep(Some(15006), ""),
        true,
    )
    .unwrap_err();
    assert!(e.detail.contains("secure naming"), "{e}");
}

#[test]
fn simple_originates_tls_and_mutual_is_refused_not_downgraded() {
    use crate::model::{CaCertificates, OriginationTls};
    let o = |ca| OriginationTls {
        sni: String::new(),
        subject_alt_names: vec![],
        ca_certificates: ca,
        insecure_skip_verify: false,
    };
    // SIMPLE: TLS to the endpoint itself, sidecar or not; SNI defaults to the service host.
    for mesh_port in [None, Some(15006)] {
        let c = spec_with(
            UpstreamTlsMode::Simple,
            &[],
            Some(o(CaCertificates::System)),
        );
        match choose_hop(&c, &ep(mesh_port, REVIEWS), true).unwrap() {
            Hop::Originate(t) => assert_eq!(t.server_name, "reviews"),
            other => panic!("{other:?}"),
        }
    }
    // An unreadable CA file fails the cluster's requests, naming the file.
    let c = spec_with(
        UpstreamTlsMode::Simple,
        &[],
        Some(o(CaCertificates::File("/nonexistent/ca.pem".into()))),
    );
    let e = choose_hop(&c, &ep(None, ""), true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamTlsUnsupported);
    assert!(e.detail.contains("/nonexistent/ca.pem"), "{e}");
    // MUTUAL: refused with a reason, whatever the endpoint.
    let c = spec_with(
        UpstreamTlsMode::Mutual,
        &[],
        Some(o(CaCertificates::System)),
    );
    let e = choose_hop(&c, &ep(None, ""), true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamTlsUnsupported);
    assert!(
        e.detail.contains("outbound|9080||reviews") && e.detail.contains("MUTUAL"),
        "{e}"
    );
}

/// Transport failures as the retry policy and outlier detection see them.
#[test]
fn transport_failures_are_classified() {
    use std::time::Duration;

    let timeout = Duration::from_millis(250);
    let e = ProxyError::new(ErrorKind::UpstreamConnectTimeout, "x")
        .with_reason(Reason::ConnectTimeout(timeout));
    let (outcome, report) = classify(&e);
    assert_eq!(outcome, AttemptOutcome::ConnectTimeout(timeout));
    assert_eq!(report, Some(Outcome::ConnectFailure));
    // As the last attempt's outcome, it answers with the timeout named.
    let policy = RetryPolicy::default();
    let r = outcome.reason(&policy, 1).unwrap();
    assert_eq!(r.to_string(), "connect_timeout(250ms)");
    let rsp = e.with_reason(r).to_response();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers()["x-weft-reason"], "connect_timeout(250ms)");
    assert_eq!(
        rsp.headers()["weft-proxy-error"],
        "upstream-connect-timeout"
    );

    let e = ProxyError::new(ErrorKind::UpstreamRefusedStream, "x");
    assert_eq!(
        classify(&e),
        (AttemptOutcome::RefusedStream, Some(Outcome::Reset))
    );
    // Retried under `refused-stream` alone, which a plain reset is not.
    let refused_only = RetryPolicy {
        attempts: 1,
        retry_on: [resilience::RetryCondition::RefusedStream]
            .into_iter()
            .collect(),
        ..RetryPolicy::default()
    };
    assert!(resilience::retriable(&refused_only, &classify(&e).0));
    let reset = ProxyError::new(ErrorKind::UpstreamReset, "x");
    assert!(!resilience::retriable(&refused_only, &classify(&reset).0));

    let e = ProxyError::new(ErrorKind::UpstreamConnectFailed, "x");
    assert_eq!(
        classify(&e),
        (
            AttemptOutcome::ConnectFailure,
            Some(Outcome::ConnectFailure)
        )
    );
}
