//! Translation golden tests: each `tests/golden/<case>.yaml` is rendered for one proxy and
//! compared with `tests/golden/<case>.golden`.
//!
//! A case file starts with header comments:
//! - `# proxy: <name>.<namespace>`: the node id to translate for (required);
//! - `# include: <path>`: other files applied first, each as its own file; paths are
//!   relative to this crate, or start with `conformance/` for Istio's corpus beside the
//!   repository (../shared/conformance);
//! - `# outbound-traffic-policy: ALLOW_ANY|REGISTRY_ONLY`: the mesh setting (a control-plane
//!   flag, not YAML); ALLOW_ANY when absent.
//!
//! The rest of the case file is applied as one more file. The golden output is the
//! resources rendered by `weft_config::translate::to_json` (pretty JSON), preceded by every
//! diagnostic, so a case that stops validating shows up as a diff too.
//!
//! To accept new output after an intended change, run
//! `WEFT_BLESS=1 cargo test -p weft-config --test golden` and review the diff.

use std::path::{Path, PathBuf};

use weft_config::translate::{self, ProxyId};
use weft_config::{Index, MeshSettings};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn resolve(include: &str) -> PathBuf {
    match include.strip_prefix("conformance/") {
        Some(rest) => crate_dir().join("../../../shared/conformance").join(rest),
        None => crate_dir().join(include),
    }
}

fn render_case(case: &Path) -> String {
    let text = std::fs::read_to_string(case).expect("read case");
    let mut proxy = None;
    let mut includes = Vec::new();
    let mut settings = MeshSettings::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(p) = line.strip_prefix("# proxy:") {
            proxy = Some(ProxyId::from_node_id(p.trim()).expect("valid proxy id"));
        } else if let Some(i) = line.strip_prefix("# include:") {
            includes.push(i.trim().to_string());
        } else if let Some(p) = line.strip_prefix("# outbound-traffic-policy:") {
            settings.outbound_traffic_policy = p.trim().parse().expect("a policy name");
        }
    }
    let proxy = proxy.expect("case needs a `# proxy:` header");
    let mut index = Index::new(settings);
    let mut out = String::new();
    let mut diagnostics = Vec::new();
    for include in &includes {
        let path = resolve(include);
        let body = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // Diagnostics name files relative to the case, so goldens do not depend on where
        // the repository is checked out.
        diagnostics.extend(index.apply_file(Path::new(include), &body));
    }
    let case_name = case.file_name().expect("file name");
    diagnostics.extend(index.apply_file(Path::new(case_name), &text));
    for d in &diagnostics {
        out.push_str(&format!("# {d}\n"));
    }
    let resources = translate::for_proxy(&index.model(), &proxy);
    let json = translate::to_json(&resources).expect("resources decode");
    out.push_str(&serde_json::to_string_pretty(&json).expect("render json"));
    out.push('\n');
    out
}

#[test]
fn golden_cases() {
    let dir = crate_dir().join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let bless = std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1");
    let mut failed = Vec::new();
    for case in cases {
        let got = render_case(&case);
        // Rendering twice must give the same text: translation is deterministic.
        assert_eq!(
            got,
            render_case(&case),
            "{} is not deterministic",
            case.display()
        );
        let golden = case.with_extension("golden");
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
    assert!(
        failed.is_empty(),
        "golden files differ (rerun with WEFT_BLESS=1 to accept): {failed:?}"
    );
}
