//! The wired control plane with a fake store and generator: startup, readiness, errors.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use weft_control::app::{self, Args};
use weft_control::xds::cache::Generator;
use weft_control::xds::snapshot::Snapshot;

use common::{NoStore, http_get, mk_dir};

struct NoGen;

impl Generator for NoGen {
    fn generate(&self, _: &str) -> Result<Snapshot, String> {
        Ok(Snapshot::from_generated(Default::default()))
    }
}

fn mk_args(dir: &Path, xds: &str) -> Args {
    Args::try_parse_from([
        "weft-control",
        "--config-dir",
        dir.to_str().unwrap(),
        "--xds-addr",
        xds,
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .unwrap()
}

#[tokio::test]
async fn starts_ready_and_shuts_down() {
    let dir = mk_dir("app-ready");
    let running = app::start(&mk_args(&dir, "127.0.0.1:0"), NoStore, Arc::new(NoGen))
        .await
        .unwrap();
    let ready = http_get(running.admin_addr, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.ends_with("ready"), "{ready}");
    let metrics = http_get(running.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("weft_control_model_generation 1"),
        "{metrics}"
    );
    running.shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_taken_port_is_named() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = app::start(
        &mk_args(&mk_dir("app-taken"), &addr),
        NoStore,
        Arc::new(NoGen),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr} (xDS): address in use")
    );
}

#[tokio::test]
async fn a_missing_config_dir_is_named() {
    let missing = PathBuf::from("/nonexistent/weft-config-dir");
    let err = app::start(&mk_args(&missing, "127.0.0.1:0"), NoStore, Arc::new(NoGen))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/weft-config-dir"),
        "{err}"
    );
}

#[test]
fn flags_have_the_documented_defaults() {
    let args = Args::try_parse_from(["weft-control", "--config-dir", "x"]).unwrap();
    assert_eq!(args.xds_addr.to_string(), "127.0.0.1:15012");
    assert_eq!(args.admin_addr.to_string(), "127.0.0.1:15014");
    assert_eq!(args.debounce_ms, 100);
    assert_eq!(args.trust_domain, "cluster.local");
    assert_eq!(args.log, "info");
    assert!(!args.plaintext_xds);
    assert_eq!(
        args.cert_lifetime,
        std::time::Duration::from_secs(24 * 3600)
    );
    assert_eq!(args.ca_dir(), Path::new("x/.weft/ca"));
    assert_eq!(args.token_dir(), Path::new("x/.weft/tokens"));
    assert_eq!(args.plugin_ca_dir, None);
}

#[test]
fn cert_lifetime_accepts_short_values_and_refuses_nonsense() {
    let parse =
        |v: &str| Args::try_parse_from(["weft-control", "--config-dir", "x", "--cert-lifetime", v]);
    assert_eq!(parse("5s").unwrap().cert_lifetime.as_secs(), 5);
    assert_eq!(parse("90m").unwrap().cert_lifetime.as_secs(), 5400);
    assert!(parse("soon").is_err());
}
