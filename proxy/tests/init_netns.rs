//! `weft-proxy init` for real, in a throwaway network namespace, once per backend: the
//! binary runs twice and the tables must then hold Weft's rules exactly once.
//!
//! Needs root, `ip`, and the backend's tools (CI installs iptables and nftables). Without
//! them, or when the kernel lacks a module the backend needs, the test (or that backend)
//! is skipped with the precise reason printed; it never fails for what the machine lacks.

use std::process::{Command, Output};

use weft_proxy::init::backend::{self, Backend, Facts, Tools};
use weft_proxy::init::{self, system};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

/// Deletes the namespace when dropped, so a failing assertion never leaves it behind.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Result<Netns, String> {
        let out = run("ip", &["netns", "add", &name]);
        if out.status.success() {
            Ok(Netns(name))
        } else {
            Err(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.0]);
    }
}

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

fn skip(reason: &str) {
    eprintln!("SKIPPED init_netns: {reason}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// What is installed, for `backend::tools` (binaries only; the host's tables are not read).
fn installed() -> Facts {
    // The variants only: plain `iptables` is whatever the host points it to.
    let names = &weft_proxy::init::backend::BINARIES[4..];
    Facts {
        binaries: names
            .iter()
            .filter_map(|n| Some((n.to_string(), system::which(n)?.display().to_string())))
            .collect(),
        ..Facts::default()
    }
}

/// Weft's lines in a save output: chain declarations without counters, and rules.
fn weft_lines(save: &str) -> Vec<String> {
    let mut lines: Vec<String> = save
        .lines()
        .filter(|l| l.contains("WEFT_"))
        .map(|l| match l.split_once(" [") {
            Some((decl, _)) if l.starts_with(':') => decl.to_string(),
            _ => l.to_string(),
        })
        .collect();
    lines.sort();
    lines
}

/// Runs `weft-proxy init --backend b` in `ns`; `Err` carries a reason to skip (a missing
/// kernel module or capability), a panic anything else.
fn init_in(ns: &Netns, b: Backend) -> Result<(), String> {
    let out = ns.exec(&[BIN, "init", "--backend", &b.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        return Ok(());
    }
    if stderr.contains("missing kernel module") || stderr.contains("missing capability") {
        return Err(stderr.trim().to_string());
    }
    panic!(
        "weft-proxy init --backend {b} failed ({}): {stderr}",
        out.status
    );
}

fn check_backend(b: Backend, tools: &Tools, expected: &init::Plan) -> Result<(), String> {
    let ns = Netns::create(format!("weft-init-test-{}-{b}", std::process::id()))?;
    let _ = ns.exec(&["ip", "link", "set", "lo", "up"]);
    let dump = |ns: &Netns| -> Vec<Vec<String>> {
        match tools {
            Tools::Iptables { save4, v6, .. } => {
                let mut d = vec![weft_lines(&ns.stdout(&[save4, "-t", "nat"]))];
                if let Some((_, save6)) = v6 {
                    d.push(weft_lines(&ns.stdout(&[save6, "-t", "nat"])));
                }
                d
            }
            Tools::Nft { nft } => vec![
                ns.stdout(&[nft, "list", "tables"])
                    .lines()
                    .map(str::to_string)
                    .collect(),
                ns.stdout(&[nft, "list", "table", "inet", "weft"])
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ],
        }
    };
    init_in(&ns, b)?;
    let first = dump(&ns);
    init_in(&ns, b)?;
    let second = dump(&ns);
    assert_eq!(first, second, "{b}: a second run changed the rules");

    match tools {
        Tools::Iptables { .. } => {
            let families = std::iter::once(&expected.v4).chain(expected.v6.as_ref());
            for (got, want) in second.iter().zip(families) {
                let mut want_lines: Vec<String> = init::rules::CHAINS
                    .iter()
                    .map(|c| format!(":{c} -"))
                    .chain(want.jumps.iter().cloned())
                    .chain(want.rules.iter().cloned())
                    .collect();
                want_lines.sort();
                assert_eq!(
                    got, &want_lines,
                    "{b} {:?}: the table holds exactly the planned rules, once",
                    want.family
                );
            }
        }
        Tools::Nft { .. } => {
            let tables = &second[0];
            assert_eq!(
                tables
                    .iter()
                    .filter(|t| t.trim() == "table inet weft")
                    .count(),
                1,
                "{b}: one table: {tables:?}"
            );
            let table = second[1].join("\n");
            for needle in [
                "redirect to :15006",
                "redirect to :15001",
                "jump WEFT_INBOUND",
                "jump WEFT_OUTPUT",
            ] {
                assert_eq!(
                    table.matches(needle).count(),
                    1,
                    "{b}: {needle} once in\n{table}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn init_in_a_netns_twice_installs_rules_once() {
    if !is_root() {
        return skip("not root (needs `ip netns` and CAP_NET_ADMIN)");
    }
    if system::which("ip").is_none() {
        return skip("`ip` (iproute2) is not installed");
    }
    // Probe: can this machine make a network namespace at all (a sandbox may forbid it)?
    match Netns::create(format!("weft-init-test-{}", std::process::id())) {
        Ok(ns) => drop(ns),
        Err(e) => return skip(&e),
    }
    let expected = init::plan(&init::InitOptions::default());
    let facts = installed();
    let mut ran = Vec::new();
    for b in [Backend::IptablesNft, Backend::IptablesLegacy, Backend::Nft] {
        let tools = match backend::tools(b, &facts, true) {
            Ok(t) => t,
            Err(e) => {
                skip(&format!("backend {b}: {e}"));
                continue;
            }
        };
        match check_backend(b, &tools, &expected) {
            Ok(()) => ran.push(b),
            Err(reason) => skip(&format!("backend {b}: {reason}")),
        }
    }
    eprintln!("init_netns: checked backends {ran:?}");
}
