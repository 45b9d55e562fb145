//! Routing through real sidecars: hosts, header and path matches, weighted splits, live edits,
//! bad documents and control-plane restarts.

use weft_e2e::eventually;
use weft_e2e::mesh::{Mesh, served_by};

const SPLIT_80_20: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts: [web]
  http:
  - name: alice
    match:
    - headers:
        x-user:
          exact: alice
    - uri:
        prefix: /v2/
    route:
    - destination: {host: web, subset: v2}
  - name: split
    route:
    - destination: {host: web, subset: v1}
      weight: 80
    - destination: {host: web, subset: v2}
      weight: 20
"#;

fn all_to(subset: &str) -> String {
    format!(
        r#"
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: {}
    - destination: {{host: web, subset: v2}}
      weight: {}
"#,
        if subset == "v1" { 100 } else { 0 },
        if subset == "v2" { 100 } else { 0 },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_explains_unknown_hosts() {
    let mesh = Mesh::start(&[]).await;
    let mut c = mesh.h1().await;

    // Short name, namespace-qualified name and FQDN all reach the same service.
    for url in [
        "http://api:8080/x",
        "http://api.default:8080/x",
        "http://api.default.svc.cluster.local:8080/x",
    ] {
        let r = c.get(url, &[]).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "api"), "{url}");
        assert_eq!(r.header("x-app-saw-path"), Some("/x"));
    }

    // Without a VirtualService, web's requests go to both versions.
    let counts = served_by(&mut c, 40, "http://web:8080/", &[]).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["web-v1", "web-v2"],
        "{counts:?}"
    );

    // A host nobody knows gets an immediate, explained 404.
    let r = c.get("http://nope:8080/", &[]).await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.header("weft-proxy-error").is_some(), "{r:?}");
    assert!(
        r.text().contains("nope"),
        "the body says which host: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_matches_win_over_the_split() {
    let mesh = Mesh::start(&[("web-vs.yaml", SPLIT_80_20)]).await;
    let mut c = mesh.h1().await;
    let alice = served_by(&mut c, 50, "http://web:8080/", &[("x-user", "alice")]).await;
    assert_eq!(alice.get("web-v2"), Some(&50), "{alice:?}");
    let path = served_by(&mut c, 50, "http://web:8080/v2/page", &[]).await;
    assert_eq!(path.get("web-v2"), Some(&50), "{path:?}");
    let bob = served_by(&mut c, 200, "http://web:8080/", &[("x-user", "bob")]).await;
    assert!(bob.get("web-v1").copied().unwrap_or(0) > 100, "{bob:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_20_split_holds_over_2000_requests() {
    let mesh = Mesh::start(&[("web-vs.yaml", SPLIT_80_20)]).await;
    let mut c = mesh.h1().await;
    let n = 2000;
    let counts = served_by(&mut c, n, "http://web:8080/", &[]).await;
    let v1 = counts.get("web-v1").copied().unwrap_or(0) as f64 / n as f64;
    let v2 = counts.get("web-v2").copied().unwrap_or(0) as f64 / n as f64;
    assert!(
        (0.75..=0.85).contains(&v1),
        "v1 share {v1} is not 80% ± 5%: {counts:?}"
    );
    assert!(
        (0.15..=0.25).contains(&v2),
        "v2 share {v2} is not 20% ± 5%: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_edit_takes_effect_within_2s_without_a_failed_request() {
    let mesh = Mesh::start(&[("web-vs.yaml", &all_to("v1"))]).await;
    let mut c = mesh.h1().await;
    let before = served_by(&mut c, 20, "http://web:8080/", &[]).await;
    assert_eq!(before.get("web-v1"), Some(&20), "{before:?}");

    // Traffic keeps flowing while the file changes; every answer is recorded.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut traffic_client = mesh.h1().await;
    let traffic = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !*stop_rx.borrow() {
            let r = traffic_client.get("http://web:8080/", &[]).await;
            let at = tokio::time::Instant::now();
            seen.push((
                at,
                r.map(|r| (r.status, r.header("x-served-by").map(str::to_owned))),
            ));
        }
        seen
    });

    let written = tokio::time::Instant::now();
    mesh.dir.write("web-vs.yaml", &all_to("v2"));
    // Wait until the change shows, then keep the traffic going a little longer.
    mesh.until(
        "the edit to reach the client sidecar",
        "http://web:8080/",
        |r| r.header("x-served-by") == Some("web-v2"),
    )
    .await;
    let mut after = mesh.h1().await;
    let tail = served_by(&mut after, 100, "http://web:8080/", &[]).await;
    assert_eq!(tail.get("web-v2"), Some(&100), "after the edit: {tail:?}");
    let _ = stop_tx.send(true);
    let seen = traffic.await.unwrap();

    assert!(
        seen.len() > 10,
        "the traffic loop ran: {} requests",
        seen.len()
    );
    for (_, r) in &seen {
        let (status, _) = r.as_ref().expect("no request failed during the edit");
        assert_eq!(*status, 200, "no request failed during the edit");
    }
    let first_v2 = seen
        .iter()
        .find(|(_, r)| matches!(r, Ok((_, Some(by))) if by == "web-v2"))
        .map(|(at, _)| *at)
        .expect("the traffic loop saw v2");
    let took = first_v2.duration_since(written);
    assert!(
        took.as_secs_f64() <= 2.0,
        "the edit took {took:?} to take effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_is_rejected_by_file_and_line_and_the_old_config_keeps_serving() {
    let mesh = Mesh::start(&[("web-vs.yaml", &all_to("v2"))]).await;
    let mut c = mesh.h1().await;
    let before = served_by(&mut c, 20, "http://web:8080/", &[]).await;
    assert_eq!(before.get("web-v2"), Some(&20));

    // Line 12 has a typo'd field; the rest of the file would send everything to v1.
    let bad = all_to("v1").replace("      weight: 100", "      wieght: 100");
    let line = bad.lines().position(|l| l.contains("wieght")).unwrap() + 1;
    mesh.dir.write("web-vs.yaml", &bad);

    let diag = eventually("the control plane to report the bad document", || async {
        let all = mesh.cp.debug("diagnostics").await;
        all.as_array()?
            .iter()
            .find(|d| d.to_string().contains("web-vs.yaml"))
            .cloned()
    })
    .await;
    let text = diag.to_string();
    assert!(text.contains("wieght"), "names the field: {text}");
    assert_eq!(
        diag["line"].as_u64(),
        Some(line as u64),
        "names the line: {text}"
    );
    assert!(
        mesh.cp.logs().contains(&format!("web-vs.yaml:{line}")),
        "the log names file:line:\n{}",
        mesh.cp.logs()
    );

    // The old config keeps serving.
    let after = served_by(&mut c, 50, "http://web:8080/", &[]).await;
    assert_eq!(after.get("web-v2"), Some(&50), "{after:?}");

    // Fixing the file applies it.
    mesh.dir.write("web-vs.yaml", &all_to("v1"));
    mesh.until("the fix to apply", "http://web:8080/", |r| {
        r.header("x-served-by") == Some("web-v1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_without_the_control_plane_and_resync_when_it_returns() {
    let mut mesh = Mesh::start(&[("web-vs.yaml", &all_to("v1"))]).await;
    let mut c = mesh.h1().await;
    mesh.cp.kill().await;

    let counts = served_by(&mut c, 100, "http://web:8080/", &[]).await;
    assert_eq!(
        counts.get("web-v1"),
        Some(&100),
        "served from the last config: {counts:?}"
    );
    let api = c.get("http://api:8080/", &[]).await.unwrap();
    assert_eq!(api.status, 200);

    // A change made while the control plane is away reaches every proxy once it is back.
    mesh.dir.write("web-vs.yaml", &all_to("v2"));
    mesh.cp.restart().await;
    mesh.until("the client sidecar to resync", "http://web:8080/", |r| {
        r.header("x-served-by") == Some("web-v2")
    })
    .await;
    let synced = eventually("every proxy to reconnect", || async {
        let syncz = mesh.cp.debug("syncz").await;
        let n = syncz.as_array().map(Vec::len).unwrap_or(0);
        (n == 4).then_some(syncz)
    })
    .await;
    for node in [
        "client.default",
        "web-v1.default",
        "web-v2.default",
        "api.default",
    ] {
        assert!(
            synced.to_string().contains(node),
            "{node} resynced: {synced}"
        );
    }
    mesh.client.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_the_world_xds_routes_the_same() {
    let mesh = Mesh::start_with(&[("web-vs.yaml", &all_to("v2"))], "sotw").await;
    let mut c = mesh.h1().await;
    let counts = served_by(&mut c, 20, "http://web:8080/", &[]).await;
    assert_eq!(counts.get("web-v2"), Some(&20), "{counts:?}");
    mesh.dir.write("web-vs.yaml", &all_to("v1"));
    mesh.until("a SotW push", "http://web:8080/", |r| {
        r.header("x-served-by") == Some("web-v1")
    })
    .await;
}

const PRIVATE_SERVICE: &str = r#"
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata:
  name: private
  namespace: team-b
spec:
  hosts: [private.team-b.svc.cluster.local]
  exportTo: ["."]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  resolution: STATIC
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_only_what_it_needs() {
    let mesh = Mesh::start(&[("private.yaml", PRIVATE_SERVICE)]).await;
    let dump = mesh.client.config_dump().await;
    // Its own workload's inbound view, not another's...
    assert_eq!(dump["inbound"]["name"], "client", "{dump}");
    assert_eq!(mesh.web_v1.config_dump().await["inbound"]["name"], "web-v1");
    // ...the services visible from its namespace...
    let services = dump["services"].to_string();
    assert!(
        services.contains("web.default.svc.cluster.local"),
        "{services}"
    );
    // ...and not a service another namespace keeps to itself (exportTo: ".").
    assert!(!services.contains("private.team-b"), "{services}");
    let mut c = mesh.h1().await;
    let r = c
        .get("http://private.team-b.svc.cluster.local:8080/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
}
