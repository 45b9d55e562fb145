//! The protocol rules, one test each, phrased as in Envoy's xDS protocol document.

use std::collections::BTreeMap;

use prost_types::Any;
use weft_api::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use weft_api::rpc::Status;
use weft_api::type_url::{CLUSTER, SERVICE};

use super::*;
use crate::xds::snapshot::{Generated, Snapshot};

fn mk_any(type_url: &str, body: &str) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: body.as_bytes().to_vec(),
    }
}

/// A snapshot from `(type, [(name, body)])`.
fn mk_snap(types: &[(&'static str, &[(&str, &str)])]) -> Snapshot {
    let mut g = Generated::new();
    for (t, resources) in types {
        let by_name: BTreeMap<String, Any> = resources
            .iter()
            .map(|(n, b)| ((*n).to_string(), mk_any(t, b)))
            .collect();
        g.insert(*t, by_name);
    }
    Snapshot::from_generated(g)
}

fn sotw_req(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn nack(mut req: DiscoveryRequest, reason: &str) -> DiscoveryRequest {
    req.error_detail = Some(Status {
        code: 3,
        message: reason.to_string(),
        details: vec![],
    });
    req
}

fn sotw() -> SotwStream {
    SotwStream::new(Nonces::new("n"))
}

fn delta() -> DeltaStream {
    DeltaStream::new(Nonces::new("n"))
}

fn delta_req(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

// === SotW ===

#[test]
fn sotw_first_request_gets_the_full_set_with_version_and_nonce() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "2")])]);
    let mut s = sotw();
    let step = s.on_request(&sotw_req(SERVICE, "", ""), &snap).unwrap();
    assert_eq!(
        step.events,
        vec![Event::Subscribed {
            type_url: SERVICE.into()
        }]
    );
    let [resp] = step.responses.as_slice() else {
        panic!("one response expected: {step:?}")
    };
    assert_eq!(resp.type_url, SERVICE);
    assert_eq!(resp.version_info, snap.get(SERVICE).version);
    assert_eq!(resp.nonce, "n-1");
    assert_eq!(resp.resources.len(), 2);
}

#[test]
fn sotw_a_type_with_no_resources_still_gets_an_empty_answer() {
    let mut s = sotw();
    let step = s
        .on_request(&sotw_req(CLUSTER, "", ""), &Snapshot::default())
        .unwrap();
    assert_eq!(step.responses.len(), 1);
    assert!(step.responses[0].resources.is_empty());
}

#[test]
fn sotw_ack_records_the_version_and_sends_nothing() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let mut s = sotw();
    let v = s
        .on_request(&sotw_req(SERVICE, "", ""), &snap)
        .unwrap()
        .responses[0]
        .version_info
        .clone();
    let step = s.on_request(&sotw_req(SERVICE, &v, "n-1"), &snap).unwrap();
    assert_eq!(
        step.events,
        vec![Event::Ack {
            type_url: SERVICE.into(),
            version: v.clone(),
            nonce: "n-1".into()
        }]
    );
    assert!(step.responses.is_empty());
    assert_eq!(s.syncs()[SERVICE].acked_version, Some(v));
}

#[test]
fn sotw_nack_echoes_the_nonce_keeps_the_old_version_and_is_not_answered_with_the_same_version() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "2")])]);
    let mut s = sotw();
    s.on_request(&sotw_req(SERVICE, "", ""), &v1).unwrap();
    let good = v1.get(SERVICE).version.clone();
    s.on_request(&sotw_req(SERVICE, &good, "n-1"), &v1).unwrap();

    let pushed = s.on_snapshot(&v2);
    assert_eq!(pushed.responses[0].nonce, "n-2");
    let bad = v2.get(SERVICE).version.clone();

    // The client rejects v2: it sends the version still in force and the rejected nonce.
    let step = s
        .on_request(&nack(sotw_req(SERVICE, &good, "n-2"), "bad route"), &v2)
        .unwrap();
    assert_eq!(
        step.events,
        vec![Event::Nack {
            type_url: SERVICE.into(),
            version: bad.clone(),
            nonce: "n-2".into(),
            reason: "bad route".into()
        }]
    );
    assert!(
        step.responses.is_empty(),
        "the rejected version is not resent"
    );
    let sync = &s.syncs()[SERVICE];
    assert_eq!(sync.acked_version, Some(good));
    assert_eq!(
        sync.last_nack,
        Some(Nack {
            version: bad,
            nonce: "n-2".into(),
            reason: "bad route".into()
        })
    );

    // The same snapshot again (e.g. an unrelated model change) does not resend it either.
    assert!(s.on_snapshot(&v2).responses.is_empty());
    // A config change does.
    let v3 = mk_snap(&[(SERVICE, &[("a", "3")])]);
    assert_eq!(s.on_snapshot(&v3).responses.len(), 1);
}

#[test]
fn sotw_a_request_with_a_stale_nonce_is_ignored() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "2")])]);
    let mut s = sotw();
    s.on_request(&sotw_req(SERVICE, "", ""), &v1).unwrap();
    s.on_snapshot(&v2); // n-2 supersedes n-1
    let step = s
        .on_request(&sotw_req(SERVICE, &v1.get(SERVICE).version, "n-1"), &v2)
        .unwrap();
    assert_eq!(
        step.events,
        vec![Event::Stale {
            type_url: SERVICE.into(),
            nonce: "n-1".into()
        }]
    );
    assert!(step.responses.is_empty());
    assert_eq!(s.syncs()[SERVICE].acked_version, None);
}

#[test]
fn sotw_per_type_versions_and_nonces_are_independent() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1")]), (CLUSTER, &[("c", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "1")]), (CLUSTER, &[("c", "2")])]);
    let mut s = sotw();
    s.on_request(&sotw_req(CLUSTER, "", ""), &v1).unwrap(); // n-1
    s.on_request(&sotw_req(SERVICE, "", ""), &v1).unwrap(); // n-2
    // Only the changed type is pushed.
    let pushed = s.on_snapshot(&v2);
    assert_eq!(pushed.responses.len(), 1);
    assert_eq!(pushed.responses[0].type_url, CLUSTER);
    assert_eq!(pushed.responses[0].nonce, "n-3");
    // The service ACK still matches the service's latest nonce although a newer cluster
    // nonce exists: nonces are tracked per type.
    let step = s
        .on_request(&sotw_req(SERVICE, &v1.get(SERVICE).version, "n-2"), &v2)
        .unwrap();
    assert!(matches!(step.events[0], Event::Ack { .. }));
    assert_ne!(
        s.syncs()[SERVICE].last_sent_version,
        s.syncs()[CLUSTER].last_sent_version
    );
}

#[test]
fn sotw_resource_names_select_a_subset_and_a_change_of_names_is_answered() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "2")])]);
    let mut s = sotw();
    let mut req = sotw_req(SERVICE, "", "");
    req.resource_names = vec!["a".into()];
    let resp = s.on_request(&req, &snap).unwrap().responses.remove(0);
    assert_eq!(resp.resources, vec![mk_any(SERVICE, "1")]);

    let mut ack = sotw_req(SERVICE, &resp.version_info, &resp.nonce);
    ack.resource_names = vec!["a".into(), "b".into()];
    let step = s.on_request(&ack, &snap).unwrap();
    assert_eq!(step.responses[0].resources.len(), 2);
}

#[test]
fn sotw_reconnect_with_the_current_version_is_not_resent() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let mut s = sotw();
    let v = snap.get(SERVICE).version.clone();
    let step = s.on_request(&sotw_req(SERVICE, &v, ""), &snap).unwrap();
    assert!(step.responses.is_empty());
    assert_eq!(s.syncs()[SERVICE].acked_version, Some(v));
    // An older version is answered.
    let mut s = sotw();
    let step = s.on_request(&sotw_req(SERVICE, "old", ""), &snap).unwrap();
    assert_eq!(step.responses.len(), 1);
}

#[test]
fn sotw_snapshot_pushes_only_subscribed_types_in_dependency_order() {
    let v1 = mk_snap(&[]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "1")]), (CLUSTER, &[("c", "1")])]);
    let mut s = sotw();
    s.on_request(&sotw_req(SERVICE, "", ""), &v1).unwrap();
    s.on_request(&sotw_req(CLUSTER, "", ""), &v1).unwrap();
    let types: Vec<_> = s
        .on_snapshot(&v2)
        .responses
        .iter()
        .map(|r| r.type_url.clone())
        .collect();
    assert_eq!(types, vec![CLUSTER.to_string(), SERVICE.to_string()]);
}

#[test]
fn sotw_request_without_type_url_is_an_error() {
    let err = sotw().on_request(&sotw_req("", "", ""), &Snapshot::default());
    assert_eq!(err, Err(ProtocolError::MissingTypeUrl));
}

// === Delta ===

#[test]
fn delta_first_request_without_names_is_a_wildcard_and_gets_everything() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "2")])]);
    let mut d = delta();
    let step = d.on_request(&delta_req(SERVICE, ""), &snap).unwrap();
    let resp = &step.responses[0];
    assert_eq!(names(resp), vec!["a", "b"]);
    assert_eq!(resp.system_version_info, snap.get(SERVICE).version);
    assert!(resp.removed_resources.is_empty());
    assert_eq!(
        resp.resources[0].version,
        snap.get(SERVICE).resources["a"].version
    );
}

#[test]
fn delta_first_request_is_answered_even_when_empty() {
    let mut d = delta();
    let step = d
        .on_request(&delta_req(CLUSTER, ""), &Snapshot::default())
        .unwrap();
    assert_eq!(step.responses.len(), 1);
    assert!(step.responses[0].resources.is_empty());
}

#[test]
fn delta_sends_only_changed_and_removed_resources() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1"), ("c", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "2"), ("d", "1")])]);
    let mut d = delta();
    d.on_request(&delta_req(SERVICE, ""), &v1).unwrap();
    let step = d.on_snapshot(&v2);
    let resp = &step.responses[0];
    assert_eq!(names(resp), vec!["b", "d"]);
    assert_eq!(resp.removed_resources, vec!["c".to_string()]);
    // Nothing changed: nothing sent.
    assert!(d.on_snapshot(&v2).responses.is_empty());
}

#[test]
fn delta_explicit_subscribe_and_unsubscribe() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.resource_names_subscribe = vec!["a".into()];
    let resp = d.on_request(&req, &snap).unwrap().responses.remove(0);
    assert_eq!(names(&resp), vec!["a"]);

    let mut req = delta_req(SERVICE, &resp.nonce);
    req.resource_names_subscribe = vec!["b".into()];
    req.resource_names_unsubscribe = vec!["a".into()];
    let step = d.on_request(&req, &snap).unwrap();
    assert!(matches!(step.events[0], Event::Ack { .. }));
    assert_eq!(names(&step.responses[0]), vec!["b"]);
    assert!(step.responses[0].removed_resources.is_empty());

    // A change to the unsubscribed resource is not sent.
    let v2 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "1")])]);
    assert!(d.on_snapshot(&v2).responses.is_empty());
}

#[test]
fn delta_subscribing_to_a_missing_resource_is_answered_with_its_removal() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.resource_names_subscribe = vec!["a".into(), "ghost".into()];
    let resp = d.on_request(&req, &snap).unwrap().responses.remove(0);
    assert_eq!(names(&resp), vec!["a"]);
    assert_eq!(resp.removed_resources, vec!["ghost".to_string()]);
    // Once told, not repeated; when it appears it is sent.
    assert!(d.on_snapshot(&snap).responses.is_empty());
    let v2 = mk_snap(&[(SERVICE, &[("a", "1"), ("ghost", "1")])]);
    assert_eq!(names(&d.on_snapshot(&v2).responses[0]), vec!["ghost"]);
}

#[test]
fn delta_reconnect_with_initial_resource_versions_sends_only_the_difference() {
    let snap = mk_snap(&[(SERVICE, &[("same", "1"), ("changed", "2"), ("new", "1")])]);
    let have = |n: &str| snap.get(SERVICE).resources[n].version.clone();
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.initial_resource_versions = [
        ("same".to_string(), have("same")),
        ("changed".to_string(), "older".to_string()),
        ("gone".to_string(), "whatever".to_string()),
    ]
    .into();
    let resp = d.on_request(&req, &snap).unwrap().responses.remove(0);
    assert_eq!(names(&resp), vec!["changed", "new"]);
    assert_eq!(resp.removed_resources, vec!["gone".to_string()]);
}

#[test]
fn delta_reconnect_when_up_to_date_gets_an_empty_answer() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.initial_resource_versions = [(
        "a".to_string(),
        snap.get(SERVICE).resources["a"].version.clone(),
    )]
    .into();
    let resp = d.on_request(&req, &snap).unwrap().responses.remove(0);
    assert!(resp.resources.is_empty() && resp.removed_resources.is_empty());
}

#[test]
fn delta_nack_is_recorded_and_the_rejected_resources_are_not_resent() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "2")])]);
    let mut d = delta();
    d.on_request(&delta_req(SERVICE, ""), &v1).unwrap();
    d.on_request(&delta_req(SERVICE, "n-1"), &v1).unwrap();
    let pushed = d.on_snapshot(&v2).responses.remove(0);
    let mut req = delta_req(SERVICE, &pushed.nonce);
    req.error_detail = Some(Status {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    let step = d.on_request(&req, &v2).unwrap();
    assert!(matches!(&step.events[0], Event::Nack { reason, .. } if reason == "no"));
    assert!(step.responses.is_empty());
    assert!(d.on_snapshot(&v2).responses.is_empty());
    let sync = &d.syncs()[SERVICE];
    assert_eq!(sync.acked_version, Some(v1.get(SERVICE).version.clone()));
    assert_eq!(
        sync.last_nack.as_ref().map(|n| n.version.clone()),
        Some(v2.get(SERVICE).version.clone())
    );
}

#[test]
fn delta_stale_nonce_is_not_an_ack_but_subscriptions_still_apply() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.resource_names_subscribe = vec!["a".into()];
    d.on_request(&req, &v1).unwrap(); // n-1
    let mut req = delta_req(SERVICE, "n-0");
    req.resource_names_subscribe = vec!["b".into()];
    let step = d.on_request(&req, &v1).unwrap();
    assert!(matches!(step.events[0], Event::Stale { .. }));
    assert_eq!(names(&step.responses[0]), vec!["b"]);
    assert_eq!(d.syncs()[SERVICE].acked_version, None);
}

#[test]
fn delta_explicit_wildcard_and_leaving_it() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let mut d = delta();
    let mut req = delta_req(SERVICE, "");
    req.resource_names_subscribe = vec!["*".into()];
    let resp = d.on_request(&req, &snap).unwrap().responses.remove(0);
    assert_eq!(names(&resp), vec!["a", "b"]);

    let mut req = delta_req(SERVICE, &resp.nonce);
    req.resource_names_unsubscribe = vec!["*".into()];
    d.on_request(&req, &snap).unwrap();
    let v2 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "2"), ("c", "1")])]);
    assert!(d.on_snapshot(&v2).responses.is_empty());
}

fn delta_nack(nonce: &str) -> DeltaDiscoveryRequest {
    let mut req = delta_req(SERVICE, nonce);
    req.error_detail = Some(Status {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    req
}

/// A wildcard delta stream that was sent `snap` and ACKed it.
fn delta_acked(snap: &Snapshot) -> DeltaStream {
    let mut d = delta();
    let resp = d
        .on_request(&delta_req(SERVICE, ""), snap)
        .unwrap()
        .responses
        .remove(0);
    d.on_request(&delta_req(SERVICE, &resp.nonce), snap)
        .unwrap();
    d
}

#[test]
fn delta_after_a_nack_the_next_change_resends_the_rejected_resources() {
    // The client keeps its old versions after a NACK, so the server must not count the rejected
    // ones as held: when anything changes, they are evaluated again against what was ACKed.
    let v1 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "1")])]);
    let v3 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "2")])]);
    let mut d = delta_acked(&v1);
    let pushed = d.on_snapshot(&v2).responses.remove(0);
    assert_eq!(names(&pushed), vec!["a"]);
    let step = d.on_request(&delta_nack(&pushed.nonce), &v2).unwrap();
    assert!(step.responses.is_empty());
    // The snapshot task may see v2 again after the NACK: still nothing to send.
    assert!(d.on_snapshot(&v2).responses.is_empty());

    let next = d.on_snapshot(&v3).responses.remove(0);
    assert_eq!(names(&next), vec!["a", "b"]);
    d.on_request(&delta_req(SERVICE, &next.nonce), &v3).unwrap();
    assert!(d.on_snapshot(&v3).responses.is_empty());
    assert_eq!(
        d.syncs()[SERVICE].acked_version,
        Some(v3.get(SERVICE).version.clone())
    );
}

#[test]
fn delta_a_nacked_removal_is_repeated_on_the_next_change() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "1")])]);
    let v3 = mk_snap(&[(SERVICE, &[("a", "2")])]);
    let mut d = delta_acked(&v1);
    let pushed = d.on_snapshot(&v2).responses.remove(0);
    assert_eq!(pushed.removed_resources, vec!["b".to_string()]);
    d.on_request(&delta_nack(&pushed.nonce), &v2).unwrap();
    assert!(d.on_snapshot(&v2).responses.is_empty());
    let next = d.on_snapshot(&v3).responses.remove(0);
    assert_eq!(names(&next), vec!["a"]);
    assert_eq!(next.removed_resources, vec!["b".to_string()]);
}

#[test]
fn delta_a_stale_ack_commits_nothing_and_the_latest_commits_everything_sent() {
    let v1 = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let v2 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "1")])]);
    let v3 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "2")])]);
    let mut d = delta();
    let first = d
        .on_request(&delta_req(SERVICE, ""), &v1)
        .unwrap()
        .responses
        .remove(0);
    let p2 = d.on_snapshot(&v2).responses.remove(0);
    let p3 = d.on_snapshot(&v3).responses.remove(0);
    assert_eq!((names(&p2), names(&p3)), (vec!["a"], vec!["b"]));
    let step = d
        .on_request(&delta_req(SERVICE, &first.nonce), &v3)
        .unwrap();
    assert!(matches!(step.events[0], Event::Stale { .. }));
    assert!(step.responses.is_empty());
    d.on_request(&delta_req(SERVICE, &p3.nonce), &v3).unwrap();
    assert!(d.on_snapshot(&v3).responses.is_empty());
    assert_eq!(
        d.syncs()[SERVICE].acked_version,
        Some(v3.get(SERVICE).version.clone())
    );
}

#[test]
fn delta_unsubscribing_a_name_under_a_wildcard_changes_nothing() {
    let snap = mk_snap(&[(SERVICE, &[("a", "1"), ("b", "1")])]);
    let mut d = delta();
    let resp = d
        .on_request(&delta_req(SERVICE, ""), &snap)
        .unwrap()
        .responses
        .remove(0);
    let mut req = delta_req(SERVICE, &resp.nonce);
    req.resource_names_unsubscribe = vec!["a".into()];
    let step = d.on_request(&req, &snap).unwrap();
    assert!(step.responses.is_empty(), "{:?}", step.responses);
    // Still covered by the wildcard: a change to it is sent.
    let v2 = mk_snap(&[(SERVICE, &[("a", "2"), ("b", "1")])]);
    assert_eq!(names(&d.on_snapshot(&v2).responses[0]), vec!["a"]);
}
