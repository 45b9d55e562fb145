//! `weft-proxy init` golden tests: for each option combination, the rules as
//! `iptables-restore` input (`tests/golden/init/<case>.iptables`, both families) and as the
//! native nft script (`<case>.nft`). Options are given as command-line flags, so the flag
//! parsing is covered too.
//!
//! To accept new output after an intended change, run
//! `WEFT_BLESS=1 cargo test -p weft-proxy --test init_golden` and review the diff.

use std::path::PathBuf;

use clap::Parser;
use weft_proxy::cli::{Cli, Command};
use weft_proxy::init;

/// (case name, flags after `weft-proxy init`).
const CASES: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    (
        "exclude-inbound-ports",
        &["--exclude-inbound-ports", "22, 9090"],
    ),
    (
        "include-inbound-ports",
        &["--include-inbound-ports", "9080,8080"],
    ),
    (
        "exclude-outbound-ports",
        &["--exclude-outbound-ports", "3306,5432"],
    ),
    (
        "cidrs",
        &[
            "--include-outbound-ip-ranges",
            "10.0.0.0/8,172.16.0.0/12,fd00::/8",
            "--exclude-outbound-ip-ranges",
            "10.96.0.10/32,fd00:10::/64",
        ],
    ),
    (
        "ipv6-off",
        &[
            "--ipv6",
            "false",
            "--exclude-outbound-ip-ranges",
            "169.254.169.254",
        ],
    ),
    (
        "no-capture-custom-ids",
        &[
            "--include-inbound-ports",
            "",
            "--include-outbound-ip-ranges",
            "",
            "--proxy-uid",
            "1000",
            "--proxy-gid",
            "2000",
            "--inbound-port",
            "16006",
            "--outbound-port",
            "16001",
        ],
    ),
];

fn plan_for(flags: &[&str]) -> init::Plan {
    let cli = Cli::try_parse_from(["weft-proxy", "init"].iter().chain(flags))
        .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"));
    let Command::Init(args) = cli.command else {
        panic!("not init")
    };
    let opts = args
        .request()
        .options
        .validate()
        .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"));
    init::plan(&opts)
}

#[test]
fn init_golden_rule_sets() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/init");
    let bless = std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1");
    let mut failed = Vec::new();
    for (name, flags) in CASES {
        let plan = plan_for(flags);
        assert_eq!(plan, plan_for(flags), "{name}: planning is deterministic");
        let header = format!("# weft-proxy init {}\n", shell_words(flags));
        let outputs = [
            ("iptables", format!("{header}{}", plan.iptables_text())),
            ("nft", format!("{header}{}", plan.nft)),
        ];
        for (ext, got) in outputs {
            let golden = dir.join(format!("{name}.{ext}"));
            if bless {
                std::fs::write(&golden, &got).expect("write golden");
                continue;
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != got {
                eprintln!("--- {} differs; got:\n{got}", golden.display());
                failed.push(golden);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "golden files differ (rerun with WEFT_BLESS=1 to accept): {failed:?}"
    );
}

fn shell_words(flags: &[&str]) -> String {
    flags
        .iter()
        .map(|f| {
            if f.is_empty() || f.contains([' ', ',', '*']) {
                format!("'{f}'")
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
