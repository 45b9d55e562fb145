//! `meshbench`: Weft's benchmark tool. One binary, several roles, so the harness starts the
//! same program in every network namespace:
//!
//! - `app`: the upstream application (HTTP echo, gRPC echo, TCP echo);
//! - `load`: the open-loop, coordinated-omission-corrected load generator;
//! - `probe`: wait until a URL answers 200 (readiness inside a namespace);
//! - `rtt`: a TCP ping-pong for the calibration block;
//! - `scale`: the control plane at scale (W8) and the sidecar's memory against config size (W7);
//! - `suite`: the whole run of PERFORMANCE.md §7 (namespaces, peers, rounds, report).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_bench::{app, load, probe, rtt, scale, suite};

#[derive(Debug, Parser)]
#[command(name = "meshbench", version, about = "Weft's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The upstream application: HTTP/1.1 + h2c echo (GET returns N bytes, POST echoes,
    /// gRPC unary echo) and a TCP echo.
    App(app::Args),
    /// Drive load at a target and print one JSON report on stdout.
    Load(load::Args),
    /// Poll a URL until it answers 200 (readiness of peers and proxies inside a namespace).
    Probe(probe::Args),
    /// TCP ping-pong round trips against a TCP echo (calibration).
    Rtt(rtt::Args),
    /// Control plane and config scale: W7 (sidecar RSS by config size) and W8 (N simulated
    /// proxies as xDS clients).
    Scale(scale::Args),
    /// The full side-by-side run (or `--smoke`), writing a Markdown report.
    Suite(suite::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::App(a) => app::main(a),
        Command::Load(a) => load::main(a),
        Command::Probe(a) => probe::main(a),
        Command::Rtt(a) => rtt::main(a),
        Command::Scale(a) => scale::main(a),
        Command::Suite(a) => suite::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
