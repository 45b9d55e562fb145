#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! The admin endpoints as an orchestrator, Prometheus and `weftctl proxy-config` see them,
//! driven through the router in memory (no port).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;

use super::*;
use crate::model::{Parts, Service, SharedSnapshot, Snapshot};
use crate::telemetry::RequestLabels;
use crate::xds::XdsStatus;

struct Admin {
    state: AdminState,
    xds: watch::Sender<XdsStatus>,
}

fn mk_admin() -> Admin {
    let (xds, rx) = watch::channel(XdsStatus {
        server: "127.0.0.1:15012".into(),
        waiting_for: vec!["Service", "Cluster"],
        last_error: Some("connection refused".into()),
        ..Default::default()
    });
    Admin {
        state: AdminState {
            node_id: "productpage.default".into(),
            snapshot: SharedSnapshot::default(),
            xds: rx,
            metrics: Arc::new(Metrics::new()),
            cert: None,
            lifecycle: Lifecycle::default(),
        },
        xds,
    }
}

async fn get(state: &AdminState, path: &str) -> (StatusCode, String, String) {
    let rsp = router(state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let ctype = rsp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

fn mk_service(name: &str) -> Service {
    Service {
        name: name.into(),
        namespace: "default".into(),
        aliases: vec![],
        ports: vec![],
        http: vec![],
        tcp: vec![],
        origin: String::new(),
        addresses: vec![],
    }
}

#[tokio::test]
async fn ready_says_why_until_config_arrives() {
    let a = mk_admin();
    let (status, _, body) = get(&a.state, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("Service, Cluster"), "{body}");
    assert!(body.contains("connection refused"), "{body}");

    a.xds.send_modify(|s| {
        s.complete = true;
        s.waiting_for.clear();
    });
    let (status, _, body) = get(&a.state, "/ready").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
}

#[tokio::test]
async fn live_answers_even_before_config() {
    let a = mk_admin();
    let (status, _, body) = get(&a.state, "/live").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "live\n"));
}

#[tokio::test]
async fn config_dump_shows_the_snapshot_and_versions() {
    let a = mk_admin();
    let mut parts = Parts::default();
    parts
        .services
        .insert("reviews".into(), Arc::new(mk_service("reviews")));
    parts.versions = BTreeMap::from([(
        "type.googleapis.com/weft.mesh.v1.Service".into(),
        "v7".into(),
    )]);
    a.state.snapshot.store(Arc::new(Snapshot::build(&parts)));

    let (status, ctype, body) = get(&a.state, "/config_dump").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["node_id"], "productpage.default");
    assert_eq!(dump["services"][0]["name"], "reviews");
    assert_eq!(
        dump["versions"]["type.googleapis.com/weft.mesh.v1.Service"],
        "v7"
    );
    assert_eq!(dump["xds"]["server"], "127.0.0.1:15012");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let a = mk_admin();
    a.state.metrics.request(RequestLabels {
        source_principal: String::new(),
        direction: "outbound",
        source_workload: "productpage".into(),
        source_namespace: "default".into(),
        destination_service: "reviews".into(),
        destination_workload: "reviews-v1".into(),
        destination_subset: "v1".into(),
        response_code: 200,
        reason: "",
    });
    let (status, ctype, body) = get(&a.state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.contains("weft_requests_total{"), "{body}");
    assert!(body.contains(r#"destination_service="reviews""#), "{body}");
    assert!(body.contains("weft_xds_connected 0"), "{body}");
}

#[tokio::test]
async fn ready_waits_for_a_certificate_and_the_dump_shows_it_without_the_key() {
    let mut a = mk_admin();
    a.xds.send_modify(|s| {
        s.complete = true;
        s.waiting_for.clear();
    });
    let store = crate::identity::CertStore::default();
    a.state.cert = Some(store.subscribe());
    let (status, _, body) = get(&a.state, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("a certificate from the CA"), "{body}");
    let (_, _, dump) = get(&a.state, "/config_dump").await;
    assert!(dump.contains(r#""identity": null"#), "{dump}");

    let id = "spiffe://cluster.local/ns/default/sa/productpage";
    let cert = crate::identity::tests::TestCa::new().certified(id);
    let serial = cert.serial.clone();
    store.publish(Arc::new(cert));
    let (status, _, _) = get(&a.state, "/ready").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, dump) = get(&a.state, "/config_dump").await;
    assert!(dump.contains(id) && dump.contains(&serial), "{dump}");
    assert!(dump.contains("not_after"), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "{dump}");
}

async fn send(state: &AdminState, req: Request<Body>) -> (StatusCode, String) {
    let rsp = router(state.clone()).oneshot(req).await.unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn quit_from(remote: &str, local: &str) -> Request<Body> {
    let mut req = Request::post("/quitquitquit").body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectInfo(AdminPeer {
        remote: remote.parse().unwrap(),
        local: Some(local.parse().unwrap()),
    }));
    req
}

#[tokio::test]
async fn ready_answers_503_while_draining_and_live_stays_200() {
    let a = mk_admin();
    a.xds.send_modify(|s| {
        s.complete = true;
        s.waiting_for.clear();
    });
    assert_eq!(get(&a.state, "/ready").await.0, StatusCode::OK);
    a.state.lifecycle.start_draining();
    let (status, _, body) = get(&a.state, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(&a.state, "/live").await.0, StatusCode::OK);
}

#[tokio::test]
async fn quitquitquit_is_post_only_and_from_inside_the_pod_only() {
    let a = mk_admin();
    let quit = tokio_util::sync::CancellationToken::new();
    let mut state = a.state.clone();
    state.lifecycle = Lifecycle::new(quit.clone());

    let (status, _, _) = get(&state, "/quitquitquit").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Another pod (or node) calling the pod IP: refused.
    let (status, body) = send(&state, quit_from("10.0.0.9:40000", "10.0.0.5:15020")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // No connection info at all: refused too.
    let req = Request::post("/quitquitquit").body(Body::empty()).unwrap();
    assert_eq!(send(&state, req).await.0, StatusCode::FORBIDDEN);
    assert!(!quit.is_cancelled());

    // The pod itself, by its own address or by loopback (v4, v6, v4-mapped).
    for (remote, local) in [
        ("10.0.0.5:40000", "10.0.0.5:15020"),
        ("127.0.0.1:40000", "127.0.0.1:15020"),
        ("[::1]:40000", "[::1]:15020"),
        ("[::ffff:127.0.0.1]:40000", "[::ffff:127.0.0.1]:15020"),
    ] {
        let (status, body) = send(&state, quit_from(remote, local)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "OK: draining\n"));
    }
    assert!(quit.is_cancelled(), "the quit request must reach the drain");
}
