//! Transparent interception for real: "pods" are network namespaces on a bridge, each with an
//! unmodified app, a `weft-proxy` running as uid 1337 and the NAT rules of `weft-proxy init`.
//! The apps call each other by IP and port, unaware of the mesh. The control plane runs in the
//! node namespace on the bridge address. Needs root, iproute2, iptables and nftables; skips
//! (and passes) with the reason printed otherwise. See `weft_e2e::netns`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use weft_e2e::apps::{self, App, echo};
use weft_e2e::client::{H1, H2};
use weft_e2e::netns::{self, Node, Pod};
use weft_e2e::procs::Process;
use weft_e2e::{ConfigDir, Net, eventually};

/// Prints why and returns from the test when this machine cannot run it.
macro_rules! require_netns {
    () => {
        if let Some(why) = netns::unsupported() {
            println!("SKIPPED (interception needs network namespaces): {why}");
            return;
        }
    };
}

const HOST_A: u8 = 10;
const HOST_B1: u8 = 11;
const HOST_B2: u8 = 12;
const HOST_OUTSIDER: u8 = 20;
/// The service address of `b`: no interface owns it; only the proxies know it.
const HOST_VIP: u8 = 200;

const SERVICE: &str = r#"
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata:
  name: b
  namespace: default
spec:
  hosts: [b.default.svc.cluster.local]
  addresses: ["{{pod}}.200"]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 9090, name: grpc, protocol: GRPC}
  - {number: 3306, name: mysql, protocol: TCP}
  resolution: STATIC
  workloadSelector:
    labels: {app: b}
---
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata:
  name: b
  namespace: default
spec:
  host: b.default.svc.cluster.local
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: a
  namespace: default
spec:
  address: "{{pod}}.10"
  labels: {app: a}
  serviceAccount: a
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: b-v1
  namespace: default
spec:
  address: "{{pod}}.11"
  labels: {app: b, version: v1}
  serviceAccount: b
"#;

/// The same service and workloads by IPv6 only: the VIP `<prefix6>::c8` (200), A at `::a`,
/// B at `::b`.
const SERVICE6: &str = r#"
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata:
  name: b
  namespace: default
spec:
  hosts: [b.default.svc.cluster.local]
  addresses: ["{{pod6}}:c8"]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  resolution: STATIC
  workloadSelector:
    labels: {app: b}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: a
  namespace: default
spec:
  address: "{{pod6}}:a"
  labels: {app: a}
  serviceAccount: a
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: b-v1
  namespace: default
spec:
  address: "{{pod6}}:b"
  labels: {app: b, version: v1}
  serviceAccount: b
"#;

const B_V2: &str = r#"
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: b-v2
  namespace: default
spec:
  address: "{{pod}}.12"
  labels: {app: b, version: v2}
  serviceAccount: b
"#;

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

const SPLIT_80_20: &str = r#"
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata:
  name: b
  namespace: default
spec:
  hosts: [b.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: b.default.svc.cluster.local, subset: v1}
      weight: 80
    - destination: {host: b.default.svc.cluster.local, subset: v2}
      weight: 20
"#;

/// One test's cluster. Fields drop in order: apps, then the pods (each kills its proxy before
/// its namespace goes), the control plane, the config, and last the node with the bridge.
struct Cluster {
    apps: Vec<App>,
    a: Pod,
    b: Vec<Pod>,
    outsider: Pod,
    _cp: Process,
    _dir: ConfigDir,
    node: Node,
}

struct Options {
    files: Vec<(&'static str, &'static str)>,
    with_b_v2: bool,
    b_proxy_args: Vec<&'static str>,
    /// IPv6 pods: the registry of [`SERVICE6`], the apps on `[::]`, and every proxy started
    /// with its v6 pod IP as `--address`.
    v6: bool,
    /// `b` gets the v6 service address `<prefix6>::c8` besides its v4 one (dual-stack pods;
    /// the endpoints stay v4).
    v6_vip: bool,
}

impl Cluster {
    async fn start(opts: Options) -> Self {
        let node = Node::new();
        let dir = ConfigDir::new(Net::new());
        let prefix = node.prefix();
        let prefix6 = node.prefix6();
        let mut registry = if opts.v6 { SERVICE6 } else { SERVICE }.to_string();
        if opts.v6_vip {
            registry = registry.replace(
                r#"addresses: ["{{pod}}.200"]"#,
                r#"addresses: ["{{pod}}.200", "{{pod6}}:c8"]"#,
            );
        }
        if opts.with_b_v2 {
            registry.push_str("---\n");
            registry.push_str(B_V2);
        }
        let fill = |t: &str| t.replace("{{pod6}}", &prefix6).replace("{{pod}}", &prefix);
        dir.write("registry.yaml", &fill(&registry));
        for (name, text) in &opts.files {
            dir.write(name, &fill(text));
        }
        let cp = node.control_plane(dir.path()).await;

        let mut a = node.pod(HOST_A, "a");
        let mut b = vec![node.pod(HOST_B1, "b-v1")];
        if opts.with_b_v2 {
            b.push(node.pod(HOST_B2, "b-v2"));
        }
        let outsider = node.pod(HOST_OUTSIDER, "outsider");

        // The apps listen on all addresses: without interception an outsider would reach them.
        let any = if opts.v6 { any6 } else { any };
        let mut apps = Vec::new();
        for pod in &b {
            let version = pod.name.clone();
            apps.push(apps::http_on(
                pod.ns.listen(any(8080)).await,
                &version.to_string(),
            ));
            apps.push(apps::grpc_on(pod.ns.listen(any(9090)).await, &version));
            tokio::spawn(greeting_server(pod.ns.listen(any(3306)).await, version));
        }

        // init first (as an init container), then the proxy, then the app may send.
        let address = |pod: &Pod| {
            if opts.v6 {
                IpAddr::V6(pod.ip6)
            } else {
                IpAddr::V4(pod.ip)
            }
        };
        a.init(&[]);
        a.start_proxy_at(&node, dir.path(), address(&a), &[]).await;
        for pod in &mut b {
            pod.init(&[]);
            let at = address(pod);
            pod.start_proxy_at(&node, dir.path(), at, &opts.b_proxy_args)
                .await;
        }
        Self {
            apps,
            a,
            b,
            outsider,
            _cp: cp,
            _dir: dir,
            node,
        }
    }

    fn vip(&self, port: u16) -> SocketAddr {
        self.node.addr(HOST_VIP, port)
    }

    /// A plain HTTP/1.1 connection from app A to `to`, as the app would open it.
    async fn a_h1(&self, to: SocketAddr) -> H1 {
        let stream = self.a.ns.connect(to).await.expect("A connects");
        H1::over(stream).await.expect("HTTP/1.1 handshake")
    }
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn any6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

fn default_options() -> Options {
    Options {
        files: vec![],
        with_b_v2: false,
        b_proxy_args: vec![],
        v6: false,
        v6_vip: false,
    }
}

/// A MySQL-like server-first protocol: the server greets first, then echoes each line.
async fn greeting_server(listener: tokio::net::TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            if w.write_all(format!("HELLO {name} 5.7.0\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{name} {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Inbound requests B's proxy counted from `principal`.
fn inbound_from(metrics: &str, principal: &str) -> u64 {
    let label = format!("source_principal=\"{principal}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("weft_requests_total{"))
        .filter(|l| l.contains("direction=\"inbound\"") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

const A_SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unaware_app_reaches_a_service_address_and_a_pod_ip_over_mtls() {
    require_netns!();
    let c = Cluster::start(Options {
        files: vec![("peer-auth.yaml", STRICT)],
        ..default_options()
    })
    .await;
    let before = inbound_from(&c.b[0].metrics().await, A_SPIFFE);

    // By the service address, which no interface owns: only A's proxy can resolve it.
    let vip = c.vip(8080);
    let mut h1 = c.a_h1(vip).await;
    let r = h1
        .get("/by-vip", &[("host", &vip.to_string())])
        .await
        .expect("answer through both proxies");
    assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");
    assert_eq!(r.header("x-app-saw-path"), Some("/by-vip"));

    // By B's pod IP, with the service's name as Host (a headless Service's DNS answer).
    let mut h1 = c.a_h1(c.b[0].addr(8080)).await;
    let r = h1
        .get(
            "/by-pod-ip",
            &[("host", "b.default.svc.cluster.local:8080")],
        )
        .await
        .expect("answer through both proxies");
    assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");

    // B's inbound proxy saw both requests arrive with A's SPIFFE identity: mTLS end to end
    // (and STRICT would have refused anything else).
    let after = inbound_from(&c.b[0].metrics().await, A_SPIFFE);
    assert!(
        after >= before + 2,
        "B's inbound saw {} requests from {A_SPIFFE}, expected 2 more than {before}:\n{}",
        after,
        c.b[0].metrics().await
    );
    assert_eq!(c.apps[0].requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_pod_reaches_a_v6_service_address_and_a_v6_pod_ip_over_mtls() {
    require_netns!();
    let c = Cluster::start(Options {
        files: vec![("peer-auth.yaml", STRICT)],
        v6: true,
        ..default_options()
    })
    .await;
    let before = inbound_from(&c.b[0].metrics().await, A_SPIFFE);

    // By the v6 service address: the app's connection to [VIP]:8080 is redirected by the
    // ip6 rules to A's outbound listener on [::1]:15001.
    let vip = c.node.addr6(u16::from(HOST_VIP), 8080);
    let mut h1 = c.a_h1(vip).await;
    let r = h1
        .get("/by-v6-vip", &[("host", &vip.to_string())])
        .await
        .expect("answer through both proxies");
    assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");
    assert_eq!(r.header("x-app-saw-path"), Some("/by-v6-vip"));

    // By B's v6 pod IP.
    let mut h1 = c.a_h1(c.b[0].addr6(8080)).await;
    let r = h1
        .get(
            "/by-v6-pod-ip",
            &[("host", "b.default.svc.cluster.local:8080")],
        )
        .await
        .expect("answer through both proxies");
    assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");

    let after = inbound_from(&c.b[0].metrics().await, A_SPIFFE);
    assert!(
        after >= before + 2,
        "B's inbound saw {} requests from {A_SPIFFE}, expected 2 more than {before}:\n{}",
        after,
        c.b[0].metrics().await
    );
    assert_eq!(c.apps[0].requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_pod_intercepts_v4_and_v6_calls_of_the_same_app() {
    require_netns!();
    // The proxies run with their v4 pod IP as --address, as a dual-stack pod's sidecar gets
    // the first pod IP, and so bind [::] dual-stack: the app's v6 connections are redirected
    // to [::1]:15001, its v4 ones to 127.0.0.1:15001 (a v4-mapped peer on the same socket).
    let c = Cluster::start(Options {
        files: vec![("peer-auth.yaml", STRICT)],
        v6_vip: true,
        ..default_options()
    })
    .await;
    let before = inbound_from(&c.b[0].metrics().await, A_SPIFFE);

    let v4 = c.vip(8080);
    let v6 = c.node.addr6(u16::from(HOST_VIP), 8080);
    let by_pod_ip = c.b[0].addr(8080);
    for (path, to, host) in [
        ("/v4-vip", v4, v4.to_string()),
        ("/v6-vip", v6, v6.to_string()),
        (
            "/v4-pod-ip",
            by_pod_ip,
            "b.default.svc.cluster.local:8080".into(),
        ),
    ] {
        let r = c
            .a_h1(to)
            .await
            .get(path, &[("host", &host)])
            .await
            .unwrap_or_else(|e| panic!("{path} through both proxies: {e}"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "b-v1"),
            "{path}: {r:?}"
        );
        assert_eq!(r.header("x-app-saw-path"), Some(path));
    }

    // B's inbound, on [::], got A's v4 mTLS connections as v4-mapped peers and still found
    // their original destination (SO_ORIGINAL_DST) and A's identity.
    let after = inbound_from(&c.b[0].metrics().await, A_SPIFFE);
    assert!(
        after >= before + 3,
        "B's inbound saw {} requests from {A_SPIFFE}, expected 3 more than {before}:\n{}",
        after,
        c.b[0].metrics().await
    );
    assert_eq!(c.apps[0].requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_without_a_proxy_is_refused_by_a_strict_pod() {
    require_netns!();
    let c = Cluster::start(Options {
        files: vec![("peer-auth.yaml", STRICT)],
        ..default_options()
    })
    .await;
    // The mesh path works.
    let vip = c.vip(8080);
    let r = c
        .a_h1(vip)
        .await
        .get("/meshed", &[("host", &vip.to_string())])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let served = c.apps[0].requests();

    // The outsider has no proxy and no rules: its plaintext goes straight to B's pod IP,
    // where B's rules hand it to B's inbound listener, which must refuse it.
    let to = c.b[0].addr(8080);
    let answer = match c.outsider.ns.connect(to).await {
        Err(e) => format!("connect error: {e}"),
        Ok(mut s) => {
            let req = format!("GET /plain HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(req.as_bytes()).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    println!("the outsider's plaintext got: {answer:?}");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "plaintext reached a STRICT pod: {answer}"
    );
    if answer.starts_with("HTTP/") {
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("mtls-required"),
            "refused as mtls-required: {answer}"
        );
    }
    assert_eq!(c.apps[0].requests(), served, "the app saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_grpc_and_a_server_first_protocol_work_through_interception() {
    require_netns!();
    let c = Cluster::start(default_options()).await;

    // h2c with prior knowledge to the service address.
    let stream = c.a.ns.connect(c.vip(8080)).await.expect("connect");
    let mut h2 = H2::over(stream).await.expect("h2 handshake");
    for i in 0..3 {
        let url = format!("http://{}/h2/{i}", c.vip(8080));
        let r = h2.get(&url, &[]).await.expect("h2 answer");
        assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");
        assert_eq!(r.header("x-app-saw-version"), Some("HTTP/2.0"), "{r:?}");
    }

    // gRPC (tonic) to the service address; the connection is made inside pod A.
    let ns = c.a.ns.handle();
    let vip = c.vip(9090);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{vip}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let ns = ns.clone();
            async move {
                let stream = ns.connect(vip).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("gRPC channel");
    let mut grpc = echo::echo_client::EchoClient::new(channel);
    let reply = grpc
        .say(echo::SayRequest {
            message: "hi".into(),
        })
        .await
        .expect("gRPC call")
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.served_by.as_str()),
        ("hi", "b-v1")
    );

    // Server-first on 3306: the greeting arrives without the client sending anything, well
    // before the detection timeout (5 s), because 3306 skips detection.
    let started = tokio::time::Instant::now();
    let stream = c.a.ns.connect(c.vip(3306)).await.expect("connect 3306");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
        .await
        .expect("the greeting arrives before the client speaks")
        .expect("read")
        .expect("a line");
    assert_eq!(greeting, "HELLO b-v1 5.7.0");
    assert!(started.elapsed() < Duration::from_secs(3));
    w.write_all(b"SELECT 1\n").await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("echo")
        .expect("read")
        .expect("a line");
    assert_eq!(echoed, "b-v1 SELECT 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_virtual_service_splits_intercepted_traffic() {
    require_netns!();
    let c = Cluster::start(Options {
        files: vec![("b-vs.yaml", SPLIT_80_20)],
        with_b_v2: true,
        ..default_options()
    })
    .await;
    let vip = c.vip(8080);
    let host = vip.to_string();
    // Both endpoints known to A's proxy before counting.
    eventually("A's proxy to reach both versions of b", || async {
        let mut h1 = c.a_h1(vip).await;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let r = h1.get("/warm", &[("host", &host)]).await.ok()?;
            seen.insert(r.text());
        }
        (seen.len() == 2).then_some(())
    })
    .await;

    let mut counts = BTreeMap::<String, usize>::new();
    let mut h1 = c.a_h1(vip).await;
    for i in 0..200 {
        let r = h1.get("/split", &[("host", &host)]).await.expect("answer");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        *counts.entry(r.text()).or_default() += 1;
    }
    let v1 = counts.get("b-v1").copied().unwrap_or(0);
    let v2 = counts.get("b-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "{counts:?}");
    assert!((140..=180).contains(&v1), "80 % +/- 10 % to v1: {counts:?}");
    assert!((20..=60).contains(&v2), "20 % +/- 10 % to v2: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    require_netns!();
    let mut c = Cluster::start(Options {
        b_proxy_args: vec!["--drain-time", "2s"],
        ..default_options()
    })
    .await;
    let to = c.b[0].addr(8080);
    // Before: an outsider's connection to B's pod is accepted (by B's inbound listener).
    c.outsider
        .ns
        .connect(to)
        .await
        .expect("B accepts connections before the drain");

    // In flight: 5 slow requests from A, each on its own connection.
    let vip = c.vip(8080);
    let mut inflight = Vec::new();
    for i in 0..5 {
        let mut h1 = c.a_h1(vip).await;
        let host = vip.to_string();
        inflight.push(tokio::spawn(async move {
            h1.get(
                &format!("/slow/{i}"),
                &[("host", &host), ("x-app-delay-ms", "1000")],
            )
            .await
        }));
    }
    eventually("the slow requests to reach B's app", || async {
        (c.apps[0].requests() >= 5).then_some(())
    })
    .await;

    let proxy = c.b[0].proxy.as_mut().expect("B has a proxy");
    let pid = proxy.id().expect("B's proxy runs") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    eventually("B's proxy to start draining", || async {
        proxy
            .logs()
            .contains("draining: listeners closed")
            .then_some(())
    })
    .await;

    // New connections are refused at once, during the drain...
    let refused = c.outsider.ns.connect(to).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during the drain"
    );
    // ...while the in-flight requests complete.
    for (i, task) in inflight.into_iter().enumerate() {
        let r = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("in-flight request {i} failed: {e}"));
        assert_eq!((r.status, r.text().as_str()), (200, "b-v1"), "{r:?}");
    }
    // The proxy exits 0 once nothing is open (at the latest after the 2 s drain time).
    let code = tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .expect("B's proxy exits after the drain");
    assert_eq!(code, Some(0), "logs:\n{}", proxy.logs());
    // And after it: still no connection.
    assert!(
        c.outsider.ns.connect(to).await.is_err(),
        "a new connection was accepted after the drain"
    );
}
