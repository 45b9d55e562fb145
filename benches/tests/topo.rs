//! The namespaces and process guards of `topo` against the real kernel. Namespace tests need
//! root, `ip` and a kernel that allows them (skipped with the reason otherwise); the process
//! tests run anywhere.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_bench::sys;
use weft_bench::topo::{self, CLI_IP, Proc, SRV_IP, Topology};

fn skip() -> bool {
    match topo::unsupported() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// A tag unique to this test process (namespaces are global to the machine).
fn tag(test: &str) -> String {
    format!("mbt{}{test}", std::process::id())
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

fn has_ns(name: &str) -> bool {
    namespaces()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

/// Whether `pid` is gone (or a zombie nobody reaps: it runs no more).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
    }
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn topology_connects_and_cleans_up() {
    if skip() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let t = tag("a");
    let topo = Topology::create(&t).unwrap();
    assert_eq!(topo.cli.name, format!("{t}-cli"));
    assert!(
        has_ns(&topo.cli.name) && has_ns(&topo.srv.name),
        "{}",
        namespaces()
    );

    let cli_addrs = topo.cli.ip(&["-o", "addr"]).unwrap();
    assert!(cli_addrs.contains(&format!("{CLI_IP}/30")), "{cli_addrs}");
    assert!(
        topo.srv
            .run("ip", &["-o", "addr"])
            .unwrap()
            .contains(&format!("{SRV_IP}/30"))
    );
    let lo = topo.srv.ip(&["-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP") || lo.contains("UNKNOWN"), "{lo}");
    // Nothing of ours in the root namespace.
    let root = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!root.contains("198.18.0."), "{root}");
    assert!(topo.cli.run("false", &[]).is_err());

    if Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        // A listener in srv pinned to CPU 0, a connection from cli across the veth.
        let script = format!(
            "import socket\n\
             s = socket.socket()\n\
             s.bind(('{SRV_IP}', 7777))\n\
             s.listen(1)\n\
             print('listening', flush=True)\n\
             c, a = s.accept()\n\
             print('accepted from', a[0], flush=True)\n"
        );
        let cmd = topo
            .srv
            .command(Some(0), Path::new("python3"), &["-c".into(), script]);
        let mut listener = Proc::spawn("listener", cmd, logs.path()).unwrap();
        listener
            .wait_for_line("listening", Duration::from_secs(20))
            .unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", listener.pid)).unwrap();
        assert!(status.contains("Cpus_allowed_list:\t0\n"), "{status}");
        topo.cli
            .run("bash", &["-c", &format!("exec 3<>/dev/tcp/{SRV_IP}/7777")])
            .unwrap();
        let line = listener
            .wait_for_line("accepted", Duration::from_secs(10))
            .unwrap();
        assert_eq!(line, format!("accepted from {CLI_IP}"));
    } else {
        eprintln!("connectivity part skipped: python3 is not installed");
    }

    let (cli, srv) = (topo.cli.name.clone(), topo.srv.name.clone());
    drop(topo);
    assert!(!has_ns(&cli) && !has_ns(&srv), "{}", namespaces());
}

#[test]
fn create_replaces_a_crashed_runs_namespaces() {
    if skip() {
        return;
    }
    let t = tag("b");
    let first = Topology::create(&t).unwrap();
    // A crash: nothing deletes the namespaces.
    std::mem::forget(first);
    let second = Topology::create(&t).unwrap();
    let addrs = second.srv.ip(&["-o", "addr"]).unwrap();
    assert_eq!(addrs.matches(SRV_IP).count(), 1, "{addrs}");
    let name = second.srv.name.clone();
    drop(second);
    assert!(!has_ns(&name));
}

#[test]
fn wait_for_line_returns_the_line() {
    let logs = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(
        "ok",
        sh("echo starting; echo warn >&2; sleep 0.2; echo ready on 1.2.3.4:5; exec sleep 60"),
        logs.path(),
    )
    .unwrap();
    let line = p.wait_for_line("ready", Duration::from_secs(10)).unwrap();
    assert_eq!(line, "ready on 1.2.3.4:5");
    // Any earlier line can still be awaited.
    assert_eq!(
        p.wait_for_line("warn", Duration::from_secs(1)).unwrap(),
        "warn"
    );
    assert!(p.alive());
    assert!(
        p.log_tail(2).ends_with("ready on 1.2.3.4:5"),
        "{}",
        p.log_tail(2)
    );
    let pid = p.pid;
    drop(p);
    wait_dead(pid);
}

#[test]
fn early_exit_fails_with_the_log_tail() {
    let logs = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(
        "dies",
        sh("echo starting; echo 'bad config' >&2; exit 3"),
        logs.path(),
    )
    .unwrap();
    let started = Instant::now();
    let err = p
        .wait_for_line("ready", Duration::from_secs(30))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "failed early");
    assert!(msg.contains("exited with") && msg.contains("3"), "{msg}");
    assert!(msg.contains("bad config"), "{msg}");
    assert!(!p.alive());
    assert_eq!(p.exit_status().and_then(|s| s.code()), Some(3));
}

#[test]
fn timeout_fails_with_the_log_tail() {
    let logs = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn("slow", sh("echo booting; exec sleep 60"), logs.path()).unwrap();
    let err = p
        .wait_for_line("ready", Duration::from_millis(300))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("did not print") && msg.contains("booting"),
        "{msg}"
    );
    p.stop();
    assert!(!p.alive());
    p.stop();
}

#[test]
fn stop_kills_what_ignores_sigterm_and_its_children() {
    let logs = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(
        "stubborn",
        sh("trap '' TERM; sleep 60 & echo armed; wait"),
        logs.path(),
    )
    .unwrap();
    p.wait_for_line("armed", Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let tree = loop {
        let t = sys::tree(p.pid);
        if t.len() >= 2 || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(tree.len(), 2, "sh and sleep: {tree:?}");
    let started = Instant::now();
    p.stop_with(Duration::from_millis(300));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "SIGTERM was ignored, so it waited: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    for pid in tree {
        wait_dead(pid);
    }
    assert!(!p.alive());
}

#[test]
fn sigterm_is_enough_for_a_well_behaved_process() {
    let logs = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn("polite", sh("echo up; exec sleep 60"), logs.path()).unwrap();
    p.wait_for_line("up", Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    p.stop();
    assert!(started.elapsed() < Duration::from_secs(2));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(p.exit_status().and_then(|s| s.signal()), Some(15));
}

#[test]
fn wait_http_ok_probes_from_inside_the_namespace() {
    if skip() {
        return;
    }
    if !Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let meshbench = Path::new(env!("CARGO_BIN_EXE_meshbench"));
    let logs = tempfile::tempdir().unwrap();
    let topo = Topology::create(&tag("c")).unwrap();
    let url = format!("http://{SRV_IP}:8088/");
    // Nothing listens yet: the probe gives up and says so.
    let err = topo::wait_http_ok_with(meshbench, &topo.cli, &url, Duration::from_millis(300))
        .unwrap_err();
    assert!(format!("{err:#}").contains("not ready"), "{err:#}");

    let args: Vec<String> = ["-m", "http.server", "--bind", SRV_IP, "8088"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cmd = topo.srv.command(None, Path::new("python3"), &args);
    let _server = Proc::spawn("http", cmd, logs.path()).unwrap();
    topo::wait_http_ok_with(meshbench, &topo.cli, &url, Duration::from_secs(20)).unwrap();
}
