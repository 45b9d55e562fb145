//! `weft-proxy init`: the pod's NAT rules for transparent interception, as the init
//! container installs them before the app and the proxy start.
//!
//! - [`options`]: the flags (Istio's `traffic.sidecar.istio.io/*` annotations) validated into
//!   [`InitOptions`]; pure.
//! - [`rules`]: [`plan`], the rules as `iptables-restore` text per family and as one nft
//!   script; pure. Its docs list what is captured and why.
//! - [`backend`]: which of iptables-nft, iptables-legacy or native nft to write with, decided
//!   from [`backend::Facts`], and what a tool's failure means; pure.
//! - [`system`]: the thin I/O layer (find binaries, read tables, run the tools).
//!
//! [`run`] puts them together for the CLI.

pub mod backend;
pub mod options;
pub mod rules;
pub mod system;

use std::io::Write;

pub use backend::{Backend, SetupError};
pub use options::{InitOptions, OptionsError, RawOptions};
pub use rules::{Plan, plan};

/// Why `weft-proxy init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A bad flag: exit code 2, as for other usage errors.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The node cannot take the rules: exit code 1.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// What to do: the options, `--backend` (None = auto) and `--dry-run`.
#[derive(Debug, Clone)]
pub struct Request {
    pub options: RawOptions,
    pub backend: Option<Backend>,
    pub dry_run: bool,
}

/// Validates, plans, chooses the backend and installs the rules (or, with `dry_run`, prints
/// them). Reports go to `out`.
pub fn run(req: &Request, out: &mut dyn Write) -> Result<(), InitError> {
    let opts = req.options.validate()?;
    let plan = plan(&opts);
    let facts = system::gather_facts(opts.ipv6);
    let choice = backend::choose(&facts, req.backend, opts.ipv6);
    if req.dry_run {
        // Printing must not depend on what this machine has: without a usable backend the
        // rules of every backend are shown, with the reason none could be chosen.
        match choice {
            Ok(choice) => {
                let _ = writeln!(out, "# backend: {} ({})", choice.backend, choice.reason);
                for (cmd, script) in system::scripts(&choice, &plan) {
                    let _ = writeln!(out, "# {cmd}");
                    let _ = write!(out, "{script}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "# backend: none usable here: {e}");
                let _ = write!(out, "{}", plan.iptables_text());
                let _ = writeln!(out, "# nft -f -");
                let _ = write!(out, "{}", plan.nft);
            }
        }
        return Ok(());
    }
    let choice = choice?;
    let written = system::apply(&choice, &plan)?;
    let counts: Vec<String> = written
        .iter()
        .map(|(f, n)| format!("{f:?} {n} rules"))
        .collect();
    let _ = writeln!(
        out,
        "weft-proxy init: installed with {} ({}): {}; inbound TCP -> :{}, outbound TCP -> :{}, proxy uid {} gid {} exempt",
        choice.backend,
        choice.reason,
        counts.join(", "),
        opts.inbound_port,
        opts.outbound_port,
        opts.proxy_uid,
        opts.proxy_gid,
    );
    Ok(())
}
