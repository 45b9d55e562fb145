//! Parsing and diagnostics: positions, per-document isolation, skipped kinds.

use std::path::Path;

use weft_config::{Diagnostic, Kind, Resource, Severity, parse_str};

fn render(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(ToString::to_string).collect()
}

#[test]
fn unknown_fields_are_errors_pointing_at_the_key() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    lables: {version: v1}
";
    let parsed = parse_str(text, Some(Path::new("dr.yaml")));
    assert!(parsed.resources.is_empty());
    assert_eq!(parsed.rejected.len(), 1);
    let d = &parsed.diagnostics[0];
    assert_eq!((d.line, d.column), (9, 5));
    assert_eq!(d.field, "spec.subsets[0].lables");
    assert!(
        d.message.starts_with("unknown field `lables`"),
        "{}",
        d.message
    );
    assert!(d.to_string().starts_with(
        "dr.yaml:9:5: DestinationRule default/reviews: spec.subsets[0].lables: unknown field"
    ));
}

#[test]
fn type_errors_name_the_field() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: prod}
spec:
  hosts: [r]
  http:
  - route:
    - destination: {host: r}
    timeout: [1s]
";
    let parsed = parse_str(text, None);
    let d = &parsed.diagnostics[0];
    assert_eq!(d.line, 9, "{d}");
    assert_eq!(d.field, "spec.http[0].timeout");
    assert_eq!(
        d.object.as_ref().map(|o| o.to_string()).as_deref(),
        Some("VirtualService prod/r")
    );
}

#[test]
fn semantic_errors_point_at_the_field_in_later_documents() {
    let text = "\
# leading comment
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ok}
spec:
  hosts: [ok]
  http: [{route: [{destination: {host: ok}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [bad]
  http:
  - match:
    - uri:
        regex: \"(?<=x)y\"
    route:
    - destination: {host: bad}
      weight: 100
    timeout: 10 seconds
";
    let parsed = parse_str(text, Some(Path::new("vs.yaml")));
    assert_eq!(parsed.resources.len(), 1);
    assert_eq!(parsed.resources[0].id().name, "ok");
    let got = render(&parsed.diagnostics);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].starts_with(
            "vs.yaml:18:9: VirtualService default/bad: spec.http[0].match[0].uri.regex: invalid RE2"
        ),
        "{}",
        got[0]
    );
    assert!(got[1].starts_with("vs.yaml:22:5: VirtualService default/bad: spec.http[0].timeout: invalid duration \"10 seconds\""), "{}", got[1]);
}

#[test]
fn service_entry_addresses_must_be_ips_or_cidrs() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: prod}
spec:
  hosts: [db.example.com]
  addresses:
  - 10.1.0.0/16
  - 2001:db8::1
  - 10.0.0.300
  - 10.0.0.0/33
  - db.example.com
  - 10.0.0.0/+8
  ports: [{number: 5432, name: tcp, protocol: TCP}]
";
    let parsed = parse_str(text, Some(Path::new("se.yaml")));
    assert!(parsed.resources.is_empty());
    let got = render(&parsed.diagnostics);
    let want = [
        (9, "spec.addresses[2]", "10.0.0.300"),
        (10, "spec.addresses[3]", "10.0.0.0/33"),
        (11, "spec.addresses[4]", "db.example.com"),
        (12, "spec.addresses[5]", "10.0.0.0/+8"),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (d, (line, field, value)) in parsed.diagnostics.iter().zip(want) {
        assert_eq!((d.line, d.field.as_str()), (line, field), "{d}");
        assert_eq!(
            d.to_string(),
            format!(
                "se.yaml:{line}:5: ServiceEntry prod/db: {field}: invalid address {value:?}: expected an IP or a CIDR block"
            )
        );
    }
}

#[test]
fn other_kinds_are_skipped_with_a_warning() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec: {replicas: 1, whatever: true}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: y}
spec: {}
---
---
# only a comment
";
    let parsed = parse_str(text, Some(Path::new("mixed.yaml")));
    assert!(parsed.resources.is_empty());
    assert_eq!(
        render(&parsed.diagnostics),
        vec![
            "mixed.yaml:1:1: warning: kind Deployment is not read by the file source; document skipped",
            "mixed.yaml:6:1: warning: AuthorizationPolicy arrives in a later release of Weft; document skipped",
        ]
    );
    assert!(
        parsed
            .diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
}

#[test]
fn metadata_is_lenient_and_namespace_defaults() {
    let text = "\
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata:
  name: w
  uid: 1234
  resourceVersion: \"5\"
  creationTimestamp: 2024-01-01T00:00:00Z
  managedFields: [{manager: kubectl}]
spec:
  address: 127.0.0.2
  ports: {http: \"8080\"}
status: {}
";
    let parsed = parse_str(text, None);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let Resource::WorkloadEntry(we) = &parsed.resources[0] else {
        panic!("expected a WorkloadEntry")
    };
    assert_eq!(we.id.namespace, "default");
    assert_eq!(
        we.spec.ports.get("http"),
        Some(&8080),
        "ints may be strings"
    );
    assert_eq!(we.id.kind, Kind::WorkloadEntry);
}

#[test]
fn identity_problems() {
    let cases = [
        (
            "apiVersion: v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {}\n",
            "apiVersion",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n",
            "metadata.name",
        ),
        (
            "apiVersion: networking.istio.io/v1\nmetadata: {name: a}\n",
            "kind",
        ),
        (
            "apiVersion: networking.weft.dev/v1\nkind: WorkloadEntry\nmetadata: {name: a.b}\nspec: {address: 1.2.3.4}\n",
            "metadata.name",
        ),
        ("- just\n- a list\n", ""),
    ];
    for (text, field) in cases {
        let parsed = parse_str(text, None);
        assert!(parsed.resources.is_empty(), "{text}");
        assert_eq!(
            parsed.diagnostics.len(),
            1,
            "{text}: {:?}",
            parsed.diagnostics
        );
        assert_eq!(parsed.diagnostics[0].field, field, "{text}");
        assert_eq!(
            parsed.diagnostics[0].line,
            1.max(parsed.diagnostics[0].line)
        );
    }
}

#[test]
fn duplicate_objects_in_one_file() {
    let doc = "apiVersion: networking.weft.dev/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 1.2.3.4}\n";
    let parsed = parse_str(&format!("{doc}---\n{doc}"), Some(Path::new("f.yaml")));
    assert_eq!(parsed.resources.len(), 1);
    assert_eq!(parsed.diagnostics.len(), 1);
    assert!(
        parsed.diagnostics[0]
            .message
            .contains("defined twice in this file (first at line 1)")
    );
}

#[test]
fn peer_authentication_api_versions_and_typos() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: PeerAuthentication
metadata: {name: wrong-group}
spec: {}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: typo, namespace: shop}
spec:
  mtls: {mod: STRICT}
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: ok, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {8080: {mode: DISABLE}}
";
    let parsed = parse_str(text, Some(Path::new("pa.yaml")));
    let got = render(&parsed.diagnostics);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("pa.yaml:1:")
            && got[0]
                .contains("PeerAuthentication default/wrong-group: apiVersion: Unsupported value")
            && got[0].contains("security.istio.io/v1beta1"),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with("pa.yaml:10:")
            && got[1].contains("PeerAuthentication shop/typo: spec.mtls")
            && got[1].contains("mod"),
        "{}",
        got[1]
    );
    assert_eq!(parsed.resources.len(), 1);
    let Resource::PeerAuthentication(pa) = &parsed.resources[0] else {
        panic!("expected a PeerAuthentication");
    };
    assert_eq!(pa.spec.port_level().get(&8080), Some(&Some("DISABLE")));
}
