//! The thin I/O layer: finds binaries, reads the current tables and capabilities into
//! [`Facts`], and feeds the planned scripts to `iptables-restore` / `nft` on stdin. Every
//! decision is in [`super::backend`] and [`super::rules`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::backend::{
    self, BINARIES, Backend, CAP_NET_ADMIN, CAP_NET_RAW, Choice, Facts, SaveSummary, SetupError,
    Tools,
};
use super::rules::{Family, IptablesRules, NFT_TABLE, Plan};

/// Finds `name` in PATH, then in the sbin directories (an init container's or a test's PATH
/// may lack them, and that is where every distribution puts these tools).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `tool args`, returning stdout on success and `(status, stderr)` on failure.
fn output(tool: &str, args: &[&str]) -> Result<String, (String, String)> {
    match Command::new(tool).args(args).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err((
            o.status.to_string(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Err(e) => Err(("not started".into(), e.to_string())),
    }
}

/// Reads what the decision needs. Never fails: what cannot be read is left unknown (a
/// non-root `--dry-run` cannot read the tables and still prints the rules).
pub fn gather_facts(ipv6: bool) -> Facts {
    let binaries: BTreeMap<String, String> = BINARIES
        .iter()
        .filter_map(|b| Some((b.to_string(), which(b)?.to_string_lossy().into_owned())))
        .collect();
    let default_iptables = which("iptables")
        .and_then(|p| output(&p.to_string_lossy(), &["--version"]).ok())
        .and_then(|v| backend::variant_of(&v));
    let summary = |v4: &str, v6: &str| -> Option<SaveSummary> {
        let mut text = output(binaries.get(v4)?, &[]).ok()?;
        if ipv6 && let Some(t) = binaries.get(v6).and_then(|b| output(b, &[]).ok()) {
            text.push_str(&t);
        }
        Some(SaveSummary::of(&text))
    };
    let legacy_save = summary("iptables-legacy-save", "ip6tables-legacy-save");
    let nft_save = summary("iptables-nft-save", "ip6tables-nft-save");
    let nft_weft_table = binaries
        .get("nft")
        .and_then(|n| output(n, &["list", "tables"]).ok())
        .is_some_and(|t| t.lines().any(|l| l.trim() == format!("table {NFT_TABLE}")));
    Facts {
        binaries,
        default_iptables,
        legacy_save,
        nft_save,
        nft_weft_table,
    }
}

/// The nat table as `save` prints it now; empty when unreadable (then every jump is
/// written, which is right for a table that cannot hold one).
pub fn current_nat(save: &str) -> String {
    output(save, &["-t", "nat"]).unwrap_or_default()
}

/// The exact scripts `apply` would feed, tool by tool (for `--dry-run`).
pub fn scripts(choice: &Choice, plan: &Plan) -> Vec<(String, String)> {
    match &choice.tools {
        Tools::Nft { nft } => vec![(format!("{nft} -f -"), plan.nft.clone())],
        Tools::Iptables {
            restore4,
            save4,
            v6,
        } => {
            let mut out = vec![(
                format!("{restore4} --noflush --wait"),
                plan.v4.restore_script(&current_nat(save4)),
            )];
            if let (Some((restore6, save6)), Some(rules6)) = (v6, &plan.v6) {
                out.push((
                    format!("{restore6} --noflush --wait"),
                    rules6.restore_script(&current_nat(save6)),
                ));
            }
            out
        }
    }
}

/// Checks the capabilities the backend needs; unknown (no /proc) is not an error, the tool
/// will say.
fn check_capabilities(backend: Backend) -> Result<(), SetupError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if backend::has_capability(&status, CAP_NET_ADMIN) == Some(false) {
        return Err(SetupError::MissingCapability {
            cap: "CAP_NET_ADMIN",
        });
    }
    // The legacy tools talk to the kernel over a raw socket.
    if backend == Backend::IptablesLegacy
        && backend::has_capability(&status, CAP_NET_RAW) == Some(false)
    {
        return Err(SetupError::MissingCapability { cap: "CAP_NET_RAW" });
    }
    Ok(())
}

fn feed(
    backend: Backend,
    family: Family,
    tool: &str,
    args: &[&str],
    script: &str,
) -> Result<(), SetupError> {
    let spawn_err = |e: std::io::Error| SetupError::Spawn {
        tool: tool.to_string(),
        error: e.to_string(),
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the tool exited early; its status and stderr say why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    Err(backend::diagnose(
        backend,
        family,
        tool,
        &out.status.to_string(),
        &String::from_utf8_lossy(&out.stderr),
    ))
}

fn restore(
    backend: Backend,
    rules: &IptablesRules,
    restore: &str,
    save: &str,
) -> Result<(), SetupError> {
    // Read the table first so a jump already there is not added twice.
    let script = rules.restore_script(&current_nat(save));
    feed(
        backend,
        rules.family,
        restore,
        &["--noflush", "--wait"],
        &script,
    )
}

/// Installs `plan` with the chosen backend. Returns the number of rules written per family.
pub fn apply(choice: &Choice, plan: &Plan) -> Result<Vec<(Family, usize)>, SetupError> {
    check_capabilities(choice.backend)?;
    match &choice.tools {
        Tools::Nft { nft } => {
            feed(choice.backend, Family::V4, nft, &["-f", "-"], &plan.nft)?;
            let mut out = vec![(Family::V4, plan.v4.jumps.len() + plan.v4.rules.len())];
            if let Some(v6) = &plan.v6 {
                out.push((Family::V6, v6.jumps.len() + v6.rules.len()));
            }
            Ok(out)
        }
        Tools::Iptables {
            restore4,
            save4,
            v6,
        } => {
            restore(choice.backend, &plan.v4, restore4, save4)?;
            let mut out = vec![(Family::V4, plan.v4.jumps.len() + plan.v4.rules.len())];
            if let (Some((restore6, save6)), Some(rules6)) = (v6, &plan.v6) {
                restore(choice.backend, rules6, restore6, save6)?;
                out.push((Family::V6, rules6.jumps.len() + rules6.rules.len()));
            }
            Ok(out)
        }
    }
}
