//! Istio's conformance corpus (../shared/conformance, beside the repository): every sample
//! is accepted, every invalid networking or PeerAuthentication document is rejected naming
//! the right field.
//!
//! Files under istio-invalid/ from Istio's `testdata/crds/` carry a top-level `_err:` key
//! (Istio's expected message); it is stripped before parsing, as Istio's own test does.

use std::path::{Path, PathBuf};

use weft_config::{Diagnostic, Severity, parse_str};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

#[test]
fn every_istio_sample_is_accepted() {
    let dir = corpus().join("istio-samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("conformance samples beside the repository")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 70,
        "expected the whole corpus, found {}",
        files.len()
    );
    let mut networking = 0;
    for file in files {
        let parsed = parse_str(&read(&file), Some(&file));
        let errs = errors(&parsed.diagnostics);
        assert!(
            errs.is_empty(),
            "{} was rejected:\n{}",
            file.display(),
            errs.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        networking += parsed.resources.len();
        for d in &parsed.diagnostics {
            println!("{d}");
        }
    }
    assert!(networking > 40, "only {networking} networking objects read");
}

/// (file, document index among networking documents, expected field, message fragment).
const INVALID: &[(&str, &[(&str, &str)])] = &[
    (
        "networking-v1alpha3-VirtualService-invalid.yaml",
        &[
            ("spec.hosts", "Required value"),
            ("spec.http[0].route[1].weight", "weight -15"),
        ],
    ),
    (
        "networking-v1beta-VirtualService-invalid.yaml",
        &[
            ("spec.hosts", "Required value"),
            ("spec.http[0].route[1].weight", "weight -15"),
        ],
    ),
    (
        "networking-v1alpha3-VirtualService-regexp-invalid.yaml",
        &[(
            "spec.http[0].match[0].uri.regex",
            "invalid RE2 regular expression",
        )],
    ),
    (
        "networking-v1beta-DestinationRule-invalid.yaml",
        &[("spec.host", "Required value")],
    ),
    (
        "destinationrule-invalid.yaml",
        &[
            (
                "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
                "Invalid value",
            ),
            (
                "spec.trafficPolicy.loadBalancer.warmup.duration",
                "Required value",
            ),
            (
                "spec.trafficPolicy.loadBalancer.warmup.aggression",
                "Invalid value",
            ),
        ],
    ),
    (
        "networking-v1alpha3-ServiceEntry-invalid.yaml",
        &[("spec.hosts", "Required value")],
    ),
    (
        "networking-v1beta1-ServiceEntry-invalid.yaml",
        &[("spec.ports[0].number", "port must be between 1-65535")],
    ),
    (
        "networking-v1alpha3-WorkloadEntry-invalid.yaml",
        &[("spec.address", "Address is required")],
    ),
    (
        "workloadentry-invalid.yaml",
        &[
            ("spec", "Required value"),
            ("spec.address", "Address is required"),
            ("spec.address", "UDS may not be a dir"),
            (
                "spec.address",
                "UDS must be an absolute path or abstract socket",
            ),
            ("spec.ports", "UDS may not include ports"),
            ("spec.ports.http", "port must be between 1-65535"),
            ("spec.ports", "Invalid value"),
        ],
    ),
    (
        "peerauth-invalid.yaml",
        &[
            ("spec.mtls.mode", "Unsupported value: \"BLAH\""),
            ("spec.portLevelMtls.acd", "type conversion error"),
            ("spec.portLevelMtls", "portLevelMtls requires selector"),
            ("spec.portLevelMtls", "must have at least 1 entry"),
            ("spec.portLevelMtls.0", "port must be between 1-65535"),
            (
                "spec.portLevelMtls.42949672",
                "port must be between 1-65535",
            ),
        ],
    ),
    (
        "security-v1beta1-PeerAuthentication-invalid.yaml",
        &[
            ("spec.portLevelMtls", "portLevelMtls requires selector"),
            ("spec.portLevelMtls", "must have at least 1 entry"),
        ],
    ),
];

fn strip_err(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("_err:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn every_invalid_networking_document_is_rejected_naming_the_field() {
    let dir = corpus().join("istio-invalid");
    for (file, expected) in INVALID {
        let path = dir.join(file);
        let parsed = parse_str(&strip_err(&read(&path)), Some(&path));
        assert!(
            parsed.resources.is_empty(),
            "{file}: accepted {:?}",
            parsed.resources
        );
        let errs = errors(&parsed.diagnostics);
        for (field, fragment) in *expected {
            assert!(
                errs.iter()
                    .any(|d| d.field == *field && d.message.contains(fragment)),
                "{file}: no error on {field} containing {fragment:?}; got:\n{}",
                errs.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for d in &errs {
            println!("{d}");
        }
        for d in &errs {
            assert!(d.object.is_some(), "{file}: {d} names no object");
            assert!(d.line > 0, "{file}: {d} has no line");
        }
    }
}

/// Every document of a PeerAuthentication file is rejected, not only the first.
#[test]
fn every_invalid_peer_authentication_document_is_rejected() {
    let path = corpus().join("istio-invalid/peerauth-invalid.yaml");
    let parsed = parse_str(&strip_err(&read(&path)), Some(&path));
    let mut rejected: Vec<String> = parsed.rejected.iter().map(|id| id.to_string()).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            "PeerAuthentication default/bad-mode",
            "PeerAuthentication default/bad-port",
            "PeerAuthentication default/empty-port-level",
            "PeerAuthentication default/high-port",
            "PeerAuthentication default/port-level-global",
            "PeerAuthentication default/zero-port",
        ]
    );
}

/// The PeerAuthentication samples (authn-policy-*, mtls-migration-*) are read, not skipped.
#[test]
fn peer_authentication_samples_are_read() {
    let dir = corpus().join("istio-samples");
    let mut read_count = 0;
    for file in [
        "authn-policy-01.yaml",
        "authn-policy-02.yaml",
        "authn-policy-03.yaml",
        "authn-policy-04.yaml",
        "authn-policy-05.yaml",
        "mtls-migration-01.yaml",
        "mtls-migration-02.yaml",
    ] {
        let path = dir.join(file);
        let parsed = parse_str(&read(&path), Some(&path));
        assert!(
            parsed.diagnostics.is_empty(),
            "{file}: {:?}",
            parsed.diagnostics
        );
        assert!(
            parsed
                .resources
                .iter()
                .all(|r| matches!(r, weft_config::Resource::PeerAuthentication(_))),
            "{file}"
        );
        read_count += parsed.resources.len();
    }
    assert_eq!(read_count, 7);
}

/// AuthorizationPolicy arrives with a later capability: skipped with a warning, never an
/// error.
#[test]
fn invalid_authorization_documents_are_skipped_for_now() {
    let dir = corpus().join("istio-invalid");
    for file in [
        "authz-invalid.yaml",
        "security-v1-AuthorizationPolicy-invalid.yaml",
        "security-v1beta1-AuthorizationPolicy-invalid.yaml",
    ] {
        let path = dir.join(file);
        let parsed = parse_str(&strip_err(&read(&path)), Some(&path));
        assert!(errors(&parsed.diagnostics).is_empty(), "{file}");
        assert!(parsed.resources.is_empty());
        assert!(
            parsed
                .diagnostics
                .iter()
                .all(|d| d.severity == Severity::Warning
                    && d.message.contains("arrives in a later release"))
        );
    }
}
