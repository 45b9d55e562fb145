//! `weftctl`: Weft's command line.
//!
//! Local mode lives here: `weftctl up DIR` supervises a control plane and one sidecar per
//! WorkloadEntry on loopback, and `weftctl demo` runs `up` on a bundled bookinfo-like example.
//!
//! `weftctl` is also a multi-call binary: `weftctl exec control|proxy ...` runs the very entry
//! points of `weft-control` and `weft-proxy` (their `main_with_args`), and `weftctl exec app ...`
//! runs a demo application. `up` re-executes itself that way, so `cargo run -p weftctl -- demo`
//! works on a fresh machine without first building the other two binaries, and every component
//! still runs in its own process, as it would in a pod.

mod apps;
mod demo;
mod identity;
mod local;
mod proxy_client;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Weft service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mesh locally: a control plane watching DIR and one sidecar per WorkloadEntry.
    Up(local::UpArgs),
    /// Run a bookinfo-like demo on loopback and show what the mesh does.
    Demo(demo::DemoArgs),
    /// Run a component in this process (used by `up`; same code as the standalone binaries).
    #[command(hide = true)]
    Exec {
        #[command(subcommand)]
        what: Exec,
    },
}

#[derive(Debug, Subcommand)]
enum Exec {
    /// The control plane: the same entry point as the `weft-control` binary.
    #[command(disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The sidecar: the same entry point as the `weft-proxy` binary.
    #[command(disable_help_flag = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A demo application.
    App(apps::AppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => local::up_main(args),
        Command::Demo(args) => demo::main(args),
        Command::Exec { what } => {
            // A child of `weftctl up` must not outlive its supervisor, even when the supervisor
            // is killed with SIGKILL and cannot clean up.
            local::die_with_parent();
            match what {
                Exec::Control { args } => {
                    weft_control::main_with_args(prepend("weft-control", args))
                }
                Exec::Proxy { args } => weft_proxy::main_with_args(prepend("weft-proxy", args)),
                Exec::App(args) => apps::main(args),
            }
        }
    }
}

/// Builds an argv whose program name is the standalone binary's, so help and errors read the same.
fn prepend(program: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(program))
        .chain(args)
        .collect()
}

/// The path of this executable, for re-executing it as a component.
fn self_exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}
