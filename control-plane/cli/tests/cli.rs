//! The `weftctl` command line itself: its commands and their errors.
//!
//! (Being an integration test of this package also makes `cargo test --workspace` build the
//! `weftctl` binary, which the end-to-end tests in `tests/` run.)

use std::process::Command;

fn weftctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .expect("run weftctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_lists_the_user_commands_but_not_the_internal_ones() {
    let (ok, text) = weftctl(&["--help"]);
    assert!(ok, "{text}");
    assert!(text.contains("up"), "{text}");
    assert!(text.contains("demo"), "{text}");
    assert!(!text.contains("exec"), "exec is internal: {text}");
}

#[test]
fn up_needs_a_directory() {
    let (ok, text) = weftctl(&["up"]);
    assert!(!ok);
    assert!(text.contains("<DIR>"), "{text}");
}

#[test]
fn exec_runs_the_standalone_entry_points() {
    // `weftctl exec proxy` and `exec control` are the weft-proxy and weft-control programs.
    let (ok, text) = weftctl(&["exec", "proxy", "--help"]);
    assert!(ok, "{text}");
    assert!(text.contains("weft-proxy"), "{text}");
    let (ok, text) = weftctl(&["exec", "control", "--help"]);
    assert!(ok, "{text}");
    assert!(text.contains("--config-dir"), "{text}");
}
