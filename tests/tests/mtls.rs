//! Identity and mTLS through real sidecars: PeerAuthentication modes, secure naming, a foreign
//! root, certificate rotation under traffic, and a control-plane restart that keeps the root.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_e2e::apps;
use weft_e2e::mesh::{Mesh, REGISTRY, served_by};
use weft_e2e::procs::Credentials;
use weft_e2e::{ConfigDir, ControlPlane, Net, Proxy};

const STRICT: &str = r#"
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
"#;

const ALL_TO_V2: &str = r#"
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web, subset: v2}
"#;

/// Sends one plaintext HTTP/1.1 request straight to a sidecar's inbound port, as a client
/// outside the mesh would, and returns whatever comes back (empty if the connection closed).
async fn plaintext_to_inbound(addr: std::net::SocketAddr, port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to inbound");
    let req = format!(
        "GET /plain HTTP/1.1\r\nhost: api:8080\r\nweft-dst-port: {port}\r\nconnection: close\r\n\r\n"
    );
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_while_mesh_traffic_flows() {
    let mesh = Mesh::start(&[("peer-auth.yaml", STRICT)]).await;
    let mut c = mesh.h1().await;
    let r = c.get("http://api:8080/meshed", &[]).await.unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "api"),
        "mesh traffic is mTLS: {r:?}"
    );

    let served_before = mesh.apps[2].requests();
    let answer = plaintext_to_inbound(mesh.net.addr(13, 15006), 8080).await;
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a plaintext client must not reach a STRICT workload: {answer}"
    );
    assert_eq!(
        mesh.apps[2].requests(),
        served_before,
        "the app saw nothing"
    );

    // Mesh traffic keeps flowing.
    let counts = served_by(&mut c, 20, "http://api:8080/", &[]).await;
    assert_eq!(counts.get("api"), Some(&20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_mtls_and_plaintext_on_one_port() {
    let mesh = Mesh::start(&[]).await;
    let mut c = mesh.h1().await;
    let r = c.get("http://api:8080/", &[]).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "api"));
    let answer = plaintext_to_inbound(mesh.net.addr(13, 15006), 8080).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("api"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_a_certificate_from_another_root_is_refused() {
    let mesh = Mesh::start(&[]).await;
    // A second control plane with its own root, serving the same registry.
    let other = ConfigDir::new(mesh.net);
    other.write("registry.yaml", REGISTRY);
    let cp2 = ControlPlane::start_on(mesh.net, 2, other.path(), &[]).await;
    let outsider = Proxy::start(mesh.net, 14, "outsider", &cp2).await;
    let served_before = mesh.apps[2].requests();

    let mut c = weft_e2e::client::H1::connect(outsider.outbound)
        .await
        .unwrap();
    let r = c.get("http://api:8080/", &[]).await.unwrap();
    assert_ne!(r.status, 200, "a foreign root must not get through: {r:?}");
    assert!(
        r.header("weft-proxy-error").is_some(),
        "the refusal is explained: {r:?}"
    );
    assert_eq!(
        mesh.apps[2].requests(),
        served_before,
        "the app saw nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_presenting_an_unexpected_identity_is_refused() {
    let net = Net::new();
    let dir = ConfigDir::new(net);
    dir.write("registry.yaml", REGISTRY);
    dir.write("web-vs.yaml", ALL_TO_V2);
    let _apps = [
        apps::http(net.addr(11, 8080), "web-v1").await,
        apps::http(net.addr(12, 8080), "web-v2").await,
    ];
    let cp = ControlPlane::start(net, dir.path()).await;
    // web-v2's sidecar gets its certificate (from the same root) through a control plane
    // that believes web-v2 runs as "impostor": it presents the wrong identity.
    let liar = ConfigDir::new(net);
    liar.write(
        "registry.yaml",
        &REGISTRY.replace(
            "labels: {app: web, version: v2}\n  serviceAccount: web",
            "labels: {app: web, version: v2}\n  serviceAccount: impostor",
        ),
    );
    let ca_dir = dir.path().join(".weft/ca").display().to_string();
    let cp2 = ControlPlane::start_on(net, 2, liar.path(), &["--ca-dir", &ca_dir]).await;
    let mut creds = Credentials::write(liar.path(), "web-v2", None);
    creds.ca_root = dir.path().join(".weft/ca/root-cert.pem");
    let _web_v2 = Proxy::start_full(net, 12, "web-v2", &cp2, "delta", &creds).await;
    let client = Proxy::start(net, 10, "client", &cp).await;

    let mut c = weft_e2e::client::H1::connect(client.outbound)
        .await
        .unwrap();
    let r = c.get("http://web:8080/", &[]).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    let why = format!(
        "{} {}",
        r.header("weft-proxy-error").unwrap_or(""),
        r.text()
    );
    assert!(
        why.contains("identity"),
        "names the identity problem: {why}"
    );
    assert!(
        why.contains("impostor"),
        "names the identity presented: {why}"
    );
    let _ = cp.logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_a_failed_request() {
    let mesh = Mesh::start_opts(&[], "delta", &["--cert-lifetime", "3s"]).await;
    let serial = |dump: serde_json::Value| dump["identity"]["serial"].to_string();
    let first = serial(mesh.client.config_dump().await);
    let mut c = mesh.h1().await;
    let mut serials = vec![first];
    let deadline = tokio::time::Instant::now() + weft_e2e::PATIENCE;
    // Traffic until the client's certificate has been replaced three times; every request must
    // succeed, across old and new certificates on both ends.
    let mut served = 0;
    while serials.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no three rotations within {:?}: {serials:?}",
            weft_e2e::PATIENCE
        );
        for _ in 0..20 {
            let r = c
                .get("http://api:8080/", &[])
                .await
                .expect("no failed request");
            assert_eq!(r.status, 200, "no failed request during rotation: {r:?}");
            served += 1;
        }
        let now = serial(mesh.client.config_dump().await);
        if serials.last() != Some(&now) {
            serials.push(now);
        }
    }
    assert!(served > 0);
    println!("served {served} requests across certificates {serials:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_keeps_the_root_and_the_mesh_working() {
    let mut mesh = Mesh::start(&[]).await;
    let root = mesh.dir.path().join(".weft/ca/root-cert.pem");
    let before = std::fs::read(&root).expect("the control plane wrote the root");
    mesh.cp.restart().await;
    assert_eq!(std::fs::read(&root).unwrap(), before, "the root is reused");

    // Old sidecars and one started after the restart talk to each other.
    let outsider = Proxy::start(mesh.net, 14, "outsider", &mesh.cp).await;
    let mut c = weft_e2e::client::H1::connect(outsider.outbound)
        .await
        .unwrap();
    let r = c.get("http://api:8080/", &[]).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "api"));
    let mut c = mesh.h1().await;
    let r = c.get("http://api:8080/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_shows_a_private_key() {
    let mesh = Mesh::start(&[]).await;
    let dump = mesh.client.config_dump().await.to_string();
    assert!(
        dump.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{dump}"
    );
    let metrics = mesh.client.metrics().await;
    let syncz = mesh.cp.debug("syncz").await.to_string();
    for text in [&dump, &metrics, &syncz] {
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key leaked: {text}"
        );
    }
}
