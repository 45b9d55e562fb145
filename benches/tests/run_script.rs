//! `benches/run`, the suite's one command: valid bash, and it refuses to run without root
//! (namespaces need it) before it installs or builds anything.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("run")
}

#[test]
fn the_script_is_valid_bash() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .expect("run bash -n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_script_refuses_to_run_without_root() {
    let root = rustix::process::geteuid().is_root();
    let mut cmd = if root {
        // Drop to nobody for this one run; without setpriv there is no way to test it here.
        let found = Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("SKIPPED: running as root and `setpriv` is not installed");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    // From another directory: the script must not depend on the caller's CWD.
    let out = cmd
        .arg(script())
        .arg("--smoke")
        .current_dir("/")
        .output()
        .expect("run benches/run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}
