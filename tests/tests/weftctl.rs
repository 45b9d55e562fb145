//! `weftctl up` and `weftctl demo`, run as a user runs them.

use std::net::TcpListener;

use weft_e2e::apps;
use weft_e2e::client::H1;
use weft_e2e::mesh::{REGISTRY, served_by};
use weft_e2e::procs::{Process, bin};
use weft_e2e::{ConfigDir, Net, eventually};

fn up(net: Net, dir: &ConfigDir) -> Process {
    let args = vec![
        "up".to_string(),
        dir.path().display().to_string(),
        "--control-address".to_string(),
        net.ip(1).to_string(),
    ];
    Process::spawn("weftctl up", &bin("weftctl"), &args)
}

fn sigterm(p: &Process) {
    let pid = p
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        .expect("weftctl is running");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_mesh_and_stops_everything_on_sigterm() {
    let net = Net::new();
    let dir = ConfigDir::new(net);
    dir.write("registry.yaml", REGISTRY);
    let _apps = [
        apps::http(net.addr(11, 8080), "web-v1").await,
        apps::http(net.addr(12, 8080), "web-v2").await,
    ];
    let mut up = up(net, &dir);
    eventually("weftctl up to report the mesh is up", || {
        up.assert_running();
        let logs = up.logs();
        async move { logs.contains("mesh is up").then_some(()) }
    })
    .await;
    let logs = up.logs();
    assert!(
        logs.contains(&format!("{}:15012", net.ip(1))),
        "prints the xDS address:\n{logs}"
    );
    assert!(
        logs.contains(&net.ip(10).to_string()),
        "prints each sidecar:\n{logs}"
    );

    let mut c = H1::connect(net.addr(10, 15001)).await.unwrap();
    let counts = served_by(&mut c, 20, "http://web:8080/", &[]).await;
    assert_eq!(counts.values().sum::<usize>(), 20);
    drop(c);

    sigterm(&up);
    assert_eq!(up.wait().await, Some(0), "clean exit:\n{}", up.logs());
    // Every component is gone: its ports are free again.
    for (host, port) in [
        (1, 15012),
        (1, 15014),
        (10, 15001),
        (11, 15006),
        (13, 15020),
    ] {
        let addr = net.addr(host, port);
        eventually(&format!("{addr} to be released"), || async move {
            TcpListener::bind(addr).ok().map(|_| ())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_missing_or_invalid_directory() {
    let net = Net::new();
    let dir = ConfigDir::new(net);
    let missing = dir.path().join("nope");
    let mut p = Process::spawn(
        "weftctl up",
        &bin("weftctl"),
        &["up".to_string(), missing.display().to_string()],
    );
    assert_ne!(p.wait().await, Some(0));
    assert!(
        p.logs().contains("nope"),
        "names the directory: {}",
        p.logs()
    );

    dir.write("registry.yaml", REGISTRY);
    let bad = "apiVersion: networking.weft.dev/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  hosts: [web]\n  htp: []\n";
    dir.write("bad.yaml", bad);
    let mut p = up(net, &dir);
    assert_ne!(p.wait().await, Some(0));
    let logs = p.logs();
    assert!(logs.contains("bad.yaml:7"), "names file and line: {logs}");
    assert!(logs.contains("htp"), "names the field: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_taken_port_and_names_it() {
    let net = Net::new();
    let dir = ConfigDir::new(net);
    dir.write("registry.yaml", REGISTRY);
    let taken = net.addr(11, 15001);
    let _hold = TcpListener::bind(taken).unwrap();
    let mut p = up(net, &dir);
    assert_ne!(p.wait().await, Some(0));
    assert!(
        p.logs().contains(&taken.to_string()),
        "names {taken}: {}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_and_stops_by_itself() {
    let mut p = Process::spawn(
        "weftctl demo",
        &bin("weftctl"),
        &[
            "demo".to_string(),
            "--requests".to_string(),
            "200".to_string(),
        ],
    );
    assert_eq!(p.wait().await, Some(0), "demo output:\n{}", p.logs());
    let out = p.logs();
    for expected in [
        "reviews v1:",
        "reviews v3:",
        "reviews v2:    50 (100.0%)",
        "the sidecars followed within",
        "loadgen",
        "productpage-v1",
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "everything stopped",
    ] {
        assert!(
            out.contains(expected),
            "demo output lacks {expected:?}:\n{out}"
        );
    }
}
