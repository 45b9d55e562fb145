use super::*;
use crate::diag::{Kind, ObjectRef};
use crate::kinds::ObjectMeta;
use crate::parse::Origin;

use MtlsMode::{Disable, Permissive, Strict};

const ROOT: &str = "weft-system";

fn pa(namespace: &str, name: &str, spec: &str) -> Object<PeerAuthentication> {
    Object {
        id: ObjectRef::new(Kind::PeerAuthentication, namespace, name),
        metadata: ObjectMeta::default(),
        spec: serde_saphyr::from_str(spec).expect("valid test spec"),
        origin: Origin::default(),
    }
}

/// One row: policies as (namespace, name, spec), then the expected mode and port modes for
/// a workload in namespace `app` labelled `app: web, version: v1`.
struct Row {
    what: &'static str,
    policies: &'static [(&'static str, &'static str, &'static str)],
    mode: MtlsMode,
    ports: &'static [(u32, MtlsMode)],
}

const TABLE: &[Row] = &[
    Row {
        what: "no policy: PERMISSIVE",
        policies: &[],
        mode: Permissive,
        ports: &[],
    },
    Row {
        what: "mesh STRICT",
        policies: &[(ROOT, "default", "{mtls: {mode: STRICT}}")],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "mesh UNSET written out: PERMISSIVE",
        policies: &[(ROOT, "default", "{mtls: {mode: UNSET}}")],
        mode: Permissive,
        ports: &[],
    },
    Row {
        what: "namespace overrides mesh",
        policies: &[
            (ROOT, "default", "{mtls: {mode: STRICT}}"),
            ("app", "default", "{mtls: {mode: DISABLE}}"),
        ],
        mode: Disable,
        ports: &[],
    },
    Row {
        what: "namespace UNSET inherits mesh",
        policies: &[
            (ROOT, "default", "{mtls: {mode: STRICT}}"),
            ("app", "default", "{}"),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "workload overrides namespace and mesh",
        policies: &[
            (ROOT, "default", "{mtls: {mode: DISABLE}}"),
            ("app", "default", "{mtls: {mode: PERMISSIVE}}"),
            (
                "app",
                "web",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
            ),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "workload UNSET inherits namespace",
        policies: &[
            ("app", "default", "{mtls: {mode: STRICT}}"),
            ("app", "web", "{selector: {matchLabels: {app: web}}}"),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "a selector that does not match is ignored",
        policies: &[
            ("app", "default", "{mtls: {mode: STRICT}}"),
            (
                "app",
                "db",
                "{selector: {matchLabels: {app: db}}, mtls: {mode: DISABLE}}",
            ),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "policies of other namespaces are ignored, even with a matching selector",
        policies: &[
            ("other", "default", "{mtls: {mode: STRICT}}"),
            (
                "other",
                "web",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
            ),
        ],
        mode: Permissive,
        ports: &[],
    },
    Row {
        what: "a selector in the root namespace does not reach other namespaces",
        policies: &[(
            ROOT,
            "web",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
        )],
        mode: Permissive,
        ports: &[],
    },
    Row {
        what: "an empty matchLabels is namespace level",
        policies: &[
            (ROOT, "default", "{mtls: {mode: DISABLE}}"),
            (
                "app",
                "all",
                "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}",
            ),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "two namespace policies: the first by name wins (Istio: the oldest)",
        policies: &[
            ("app", "b", "{mtls: {mode: DISABLE}}"),
            ("app", "a", "{mtls: {mode: STRICT}}"),
        ],
        mode: Strict,
        ports: &[],
    },
    Row {
        what: "two workload policies: the first by name wins, ports included",
        policies: &[
            (
                "app",
                "z-web",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}, portLevelMtls: {80: {mode: STRICT}}}",
            ),
            (
                "app",
                "a-web",
                "{selector: {matchLabels: {version: v1}}, mtls: {mode: STRICT}, portLevelMtls: {9080: {mode: DISABLE}}}",
            ),
        ],
        mode: Strict,
        ports: &[(9080, Disable)],
    },
    Row {
        what: "port level overrides; an UNSET port inherits the workload's mode",
        policies: &[(
            "app",
            "web",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {80: {mode: DISABLE}, \"8080\": {mode: UNSET}, 9090: {}}}",
        )],
        mode: Strict,
        ports: &[(80, Disable), (8080, Strict), (9090, Strict)],
    },
    Row {
        what: "an UNSET port of an UNSET workload inherits from the namespace",
        policies: &[
            ("app", "default", "{mtls: {mode: DISABLE}}"),
            (
                "app",
                "web",
                "{selector: {matchLabels: {app: web}}, portLevelMtls: {9000: {mode: UNSET}, 9001: {mode: PERMISSIVE}}}",
            ),
        ],
        mode: Disable,
        ports: &[(9000, Disable), (9001, Permissive)],
    },
];

#[test]
fn peer_authentication_precedence_table() {
    let labels: BTreeMap<String, String> = [("app", "web"), ("version", "v1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for row in TABLE {
        let mut policies: Vec<Object<PeerAuthentication>> = row
            .policies
            .iter()
            .map(|(ns, name, spec)| pa(ns, name, spec))
            .collect();
        // The model hands policies over sorted by namespace/name; the result must not
        // depend on it anyway.
        for order in 0..2 {
            if order == 1 {
                policies.reverse();
            }
            let got = resolve_peer_authentication(ROOT, "app", &labels, &policies);
            assert_eq!(got.mode, row.mode, "{}", row.what);
            let want: BTreeMap<u32, MtlsMode> = row.ports.iter().copied().collect();
            assert_eq!(got.ports, want, "{}", row.what);
        }
    }
}

#[test]
fn a_workload_in_the_root_namespace_gets_the_mesh_policy() {
    let policies = [pa(ROOT, "default", "{mtls: {mode: STRICT}}")];
    let got = resolve_peer_authentication(ROOT, ROOT, &BTreeMap::new(), &policies);
    assert_eq!(got.mode, Strict);
}

fn dr(yaml: &str) -> DestinationRule {
    serde_saphyr::from_str(yaml).expect("valid test DestinationRule")
}

#[test]
fn upstream_tls_precedence_and_mapping() {
    use mesh::upstream_tls::Mode;
    let rule = dr("\
host: web
trafficPolicy:
  tls: {mode: ISTIO_MUTUAL, sni: web.example}
  portLevelSettings:
  - {port: {number: 8443}, tls: {mode: SIMPLE, sni: api.example, caCertificates: /etc/ca.pem, subjectAltNames: [api.example]}}
  - {port: {number: 9000}, tls: {}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    tls: {mode: DISABLE}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    portLevelSettings:
    - {port: {number: 80}, tls: {mode: MUTUAL, clientCertificate: /c, privateKey: /k, insecureSkipVerify: true}}
- name: v3
  labels: {version: v3}
");
    let subset = |name: &str| rule.subsets.iter().find(|s| s.name == name);
    let mode = |t: &mesh::UpstreamTls| Mode::try_from(t.mode).expect("known mode");

    assert_eq!(upstream_tls(None, None, 80), mesh::UpstreamTls::default());
    assert_eq!(mode(&upstream_tls(None, None, 80)), Mode::Auto);

    let top = upstream_tls(Some(&rule), None, 80);
    assert_eq!(
        (mode(&top), top.sni.as_str()),
        (Mode::IstioMutual, "web.example")
    );

    // Port-level replaces the whole tls block (no field merging).
    let port = upstream_tls(Some(&rule), None, 8443);
    assert_eq!(mode(&port), Mode::Simple);
    assert_eq!(port.sni, "api.example");
    assert_eq!(port.ca_certificates, "/etc/ca.pem");
    assert_eq!(port.subject_alt_names, vec!["api.example"]);

    // A tls block without mode is DISABLE (Istio's zero value).
    assert_eq!(mode(&upstream_tls(Some(&rule), None, 9000)), Mode::Disable);

    // Subset policy overrides the rule, even its port-level settings.
    let v1 = upstream_tls(Some(&rule), subset("v1"), 8443);
    assert_eq!(
        v1,
        mesh::UpstreamTls {
            mode: Mode::Disable as i32,
            ..Default::default()
        }
    );

    // Subset port-level overrides everything for its port; other ports keep the rule's.
    let v2 = upstream_tls(Some(&rule), subset("v2"), 80);
    assert_eq!(mode(&v2), Mode::Mutual);
    assert!(v2.insecure_skip_verify);
    assert_eq!(
        mode(&upstream_tls(Some(&rule), subset("v2"), 81)),
        Mode::IstioMutual
    );

    // A subset without policy inherits the rule's.
    assert_eq!(upstream_tls(Some(&rule), subset("v3"), 80), top);
}

#[test]
fn identities_are_sorted_unique_and_skip_endpoints_without_sidecar() {
    let sans = vec!["spiffe://cluster.local/ns/a/sa/x".to_string()];
    let got = service_identities(
        [
            "spiffe://cluster.local/ns/a/sa/y",
            "",
            "spiffe://cluster.local/ns/a/sa/x",
            "spiffe://cluster.local/ns/a/sa/y",
        ],
        &sans,
    );
    assert_eq!(
        got,
        vec![
            "spiffe://cluster.local/ns/a/sa/x",
            "spiffe://cluster.local/ns/a/sa/y"
        ]
    );
    assert!(service_identities([], &[]).is_empty());
}
