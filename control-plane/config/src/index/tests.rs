use std::path::Path;

use super::*;
use crate::Kind;

fn mk_index() -> Index {
    Index::new(MeshSettings::default())
}

const REGISTRY: &str = "\
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http, protocol: HTTP}]
";

fn mk_vs(subset: &str, weight_line: &str) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: {subset}
{weight_line}"
    )
}

const DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn vs_subset(index: &Index) -> Option<String> {
    let model = index.model();
    let vs =
        model
            .virtual_services
            .get(&ObjectRef::new(Kind::VirtualService, "default", "reviews"))?;
    vs.spec.http[0].route[0]
        .destination
        .as_ref()
        .and_then(|d| d.subset.clone())
}

fn errors(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect()
}

#[test]
fn dangling_subset_is_rejected_then_accepted_when_the_rule_arrives() {
    let mut index = mk_index();
    assert!(errors(&index.apply_file(Path::new("registry.yaml"), REGISTRY)).is_empty());
    let diags = index.apply_file(Path::new("reviews.yaml"), &mk_vs("v1", ""));
    assert_eq!(
        errors(&diags),
        vec![
            "reviews.yaml:11:9: VirtualService default/reviews: spec.http[0].route[0].destination.subset: \
             subset \"v1\" is not defined by any DestinationRule for host reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        vs_subset(&index),
        None,
        "a dangling VirtualService is not served"
    );
    assert_eq!(index.diagnostics().len(), 1);

    let generation = index.generation();
    assert!(errors(&index.apply_file(Path::new("dr.yaml"), DR)).is_empty());
    assert_eq!(
        vs_subset(&index).as_deref(),
        Some("v1"),
        "re-validated on change"
    );
    assert!(index.diagnostics().is_empty());
    assert!(index.generation() > generation);
}

#[test]
fn a_bad_edit_keeps_the_last_good_version() {
    let mut index = mk_index();
    index.apply_file(Path::new("registry.yaml"), REGISTRY);
    index.apply_file(Path::new("dr.yaml"), DR);
    assert!(errors(&index.apply_file(Path::new("vs.yaml"), &mk_vs("v1", ""))).is_empty());
    let generation = index.generation();

    // Schema error: negative weight.
    let diags = index.apply_file(Path::new("vs.yaml"), &mk_vs("v2", "      weight: -1\n"));
    assert_eq!(errors(&diags).len(), 1, "{diags:?}");
    assert!(errors(&diags)[0].starts_with(
        "vs.yaml:12:7: VirtualService default/reviews: spec.http[0].route[0].weight:"
    ));
    assert_eq!(vs_subset(&index).as_deref(), Some("v1"));

    // Reference error: unknown subset.
    let diags = index.apply_file(Path::new("vs.yaml"), &mk_vs("v9", ""));
    assert_eq!(errors(&diags).len(), 1);
    assert_eq!(vs_subset(&index).as_deref(), Some("v1"));
    assert_eq!(index.generation(), generation, "nothing served changed");

    // Fixed: the new version is served and the errors are gone.
    assert!(errors(&index.apply_file(Path::new("vs.yaml"), &mk_vs("v2", ""))).is_empty());
    assert_eq!(vs_subset(&index).as_deref(), Some("v2"));
    assert!(index.diagnostics().is_empty());
}

#[test]
fn an_unparseable_file_keeps_its_objects() {
    let mut index = mk_index();
    let text = format!("{REGISTRY}---\n{DR}");
    assert!(errors(&index.apply_file(Path::new("all.yaml"), &text)).is_empty());
    assert_eq!(index.model().destination_rules.len(), 1);

    let diags = index.apply_file(Path::new("all.yaml"), "kind: [unclosed\n");
    assert_eq!(errors(&diags).len(), 1);
    assert!(errors(&diags)[0].starts_with("all.yaml:1:"), "{diags:?}");
    let model = index.model();
    assert_eq!(model.service_entries.len(), 1);
    assert_eq!(model.destination_rules.len(), 1);
}

#[test]
fn one_bad_document_does_not_hide_the_others() {
    let mut index = mk_index();
    let text = format!("{REGISTRY}---\nkind: DestinationRule\n  bad: [indent\n---\n{DR}");
    let diags = index.apply_file(Path::new("all.yaml"), &text);
    assert_eq!(errors(&diags).len(), 1, "{diags:?}");
    assert!(
        errors(&diags)[0].starts_with("all.yaml:9:6: invalid YAML"),
        "{diags:?}"
    );
    assert_eq!(index.model().service_entries.len(), 1);
    assert_eq!(index.model().destination_rules.len(), 1);
}

#[test]
fn removing_documents_and_files_removes_their_objects() {
    let mut index = mk_index();
    index.apply_file(Path::new("all.yaml"), &format!("{REGISTRY}---\n{DR}"));
    assert_eq!(index.model().destination_rules.len(), 1);
    // The DR document was deleted from the file.
    index.apply_file(Path::new("all.yaml"), REGISTRY);
    assert_eq!(index.model().destination_rules.len(), 0);
    assert_eq!(index.model().service_entries.len(), 1);
    index.remove_file(Path::new("all.yaml"));
    assert!(index.model().service_entries.is_empty());
    assert!(index.diagnostics().is_empty());
}

#[test]
fn removing_a_dependency_keeps_the_dependent_and_reports_it() {
    let mut index = mk_index();
    index.apply_file(Path::new("registry.yaml"), REGISTRY);
    index.apply_file(Path::new("dr.yaml"), DR);
    index.apply_file(Path::new("vs.yaml"), &mk_vs("v1", ""));
    index.remove_file(Path::new("dr.yaml"));
    // Last good version keeps serving, but the problem is reported.
    assert_eq!(vs_subset(&index).as_deref(), Some("v1"));
    let diags = index.diagnostics();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].field, "spec.http[0].route[0].destination.subset");
}

#[test]
fn destination_rule_for_an_unknown_host_is_rejected() {
    let mut index = mk_index();
    let diags = index.apply_file(Path::new("dr.yaml"), DR);
    assert_eq!(
        errors(&diags),
        vec![
            "dr.yaml:5:3: DestinationRule default/reviews: spec.host: host \"reviews\" \
             (reviews.default.svc.cluster.local) is not defined by any ServiceEntry"
        ]
    );
    assert!(index.model().destination_rules.is_empty());
    index.apply_file(Path::new("registry.yaml"), REGISTRY);
    assert_eq!(index.model().destination_rules.len(), 1);
}

#[test]
fn object_api_apply_delete_reset() {
    let mut index = mk_index();
    let parse = |text: &str| crate::parse_str(text, None).resources;
    for r in parse(REGISTRY) {
        assert!(index.apply(r).is_empty());
    }
    let vs = parse(&mk_vs("v1", "")).remove(0);
    let diags = index.apply(vs);
    assert_eq!(diags.len(), 1);
    assert!(
        diags[0]
            .to_string()
            .starts_with("line 11:9: VirtualService default/reviews")
    );
    for r in parse(DR) {
        index.apply(r);
    }
    assert_eq!(index.model().virtual_services.len(), 1);
    index.delete(&ObjectRef::new(Kind::DestinationRule, "default", "reviews"));
    assert!(index.model().destination_rules.is_empty());

    // A relist replaces everything: the VirtualService is gone, the registry stays.
    index.reset(parse(REGISTRY));
    let model = index.model();
    assert_eq!(model.service_entries.len(), 1);
    assert!(model.virtual_services.is_empty());
    assert!(index.diagnostics().is_empty());
}

#[test]
fn generation_ignores_moves_within_a_file() {
    let mut index = mk_index();
    index.apply_file(Path::new("registry.yaml"), REGISTRY);
    let generation = index.generation();
    index.apply_file(
        Path::new("registry.yaml"),
        &format!("# a comment\n\n{REGISTRY}"),
    );
    assert_eq!(index.generation(), generation);
    let model = index.model();
    let se = model.service_entries.values().next().expect("one");
    assert_eq!(se.origin.line, 3, "positions still follow the text");
}

#[test]
fn short_names_resolve_in_the_object_namespace() {
    let mut index = mk_index();
    index.apply_file(Path::new("registry.yaml"), REGISTRY);
    // A rule in another namespace: `reviews` there means reviews.prod..., which is unknown.
    let dr = DR.replace(
        "metadata: {name: reviews}",
        "metadata: {name: reviews, namespace: prod}",
    );
    let diags = index.apply_file(Path::new("dr.yaml"), &dr);
    assert!(errors(&diags)[0].contains("reviews.prod.svc.cluster.local"));
    // The FQDN works from anywhere.
    let dr = dr.replace("host: reviews", "host: reviews.default.svc.cluster.local");
    assert!(errors(&index.apply_file(Path::new("dr.yaml"), &dr)).is_empty());
}

#[test]
fn new_settings_are_a_new_generation() {
    let mut index = Index::new(MeshSettings::default());
    let generation = index.generation();
    index.set_settings(MeshSettings::default());
    assert_eq!(index.generation(), generation, "same settings: no change");
    index.set_settings(MeshSettings {
        trust_bundle: vec!["-----BEGIN CERTIFICATE-----\nnew root\n".into()],
        ..MeshSettings::default()
    });
    assert_eq!(index.generation(), generation + 1);
    assert_eq!(index.model().settings.trust_bundle.len(), 1);
    assert_eq!(index.settings().trust_bundle.len(), 1);
}
