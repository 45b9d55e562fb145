use super::*;
use crate::{Index, MeshSettings};

#[test]
fn node_ids_split_at_the_first_dot() {
    assert_eq!(
        ProxyId::from_node_id("reviews-v1.default"),
        Ok(ProxyId::new("reviews-v1", "default"))
    );
    for bad in ["nodot", ".ns", "name.", "a.b.c"] {
        assert!(ProxyId::from_node_id(bad).is_err(), "{bad}");
    }
    assert_eq!(ProxyId::new("a", "b").node_id(), "a.b");
}

#[test]
fn every_type_is_present_even_when_empty() {
    let model = Model::new(MeshSettings::default());
    let resources = for_proxy(&model, &ProxyId::new("x", "default"));
    assert_eq!(resources.by_type.len(), type_url::ALL.len());
    assert_eq!(resources.by_type[type_url::MESH].len(), 1);
    assert!(resources.by_type[type_url::INBOUND].is_empty());
    assert!(resources.by_type[type_url::SERVICE].is_empty());
}

const REGISTRY: &str = "\
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: api, namespace: team}
spec:
  hosts: [api]
  exportTo: [\".\", other]
  ports: [{number: 80, name: http, protocol: HTTP}]
";

#[test]
fn export_to_limits_visibility() {
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("r.yaml"), REGISTRY);
    let model = index.model();
    let seen = |ns: &str| translate(&model, &ProxyId::new("p", ns)).services.len();
    assert_eq!(seen("team"), 1);
    assert_eq!(seen("other"), 1);
    assert_eq!(seen("default"), 0);
    let t = translate(&model, &ProxyId::new("p", "other"));
    assert_eq!(t.services[0].aliases, vec!["api.team", "api.team.svc"]);
}

#[test]
fn resources_without_maps_are_byte_identical_across_runs() {
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("r.yaml"), REGISTRY);
    let a = for_proxy(&index.model(), &ProxyId::new("p", "team"));
    let b = for_proxy(&index.model(), &ProxyId::new("p", "team"));
    assert_eq!(a, b);
}

#[test]
fn targets_that_no_longer_resolve_are_dropped() {
    let mut index = Index::new(MeshSettings::default());
    let path = std::path::Path::new;
    index.apply_file(path("r.yaml"), REGISTRY);
    index.apply_file(
        path("dr.yaml"),
        "apiVersion: networking.weft.dev/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: team}\nspec: {host: api, subsets: [{name: v1, labels: {v: '1'}}]}\n",
    );
    index.apply_file(
        path("vs.yaml"),
        "apiVersion: networking.weft.dev/v1\nkind: VirtualService\nmetadata: {name: api, namespace: team}\nspec: {hosts: [api], http: [{route: [{destination: {host: api, subset: v1}}]}]}\n",
    );
    let routes = |index: &Index| {
        translate(&index.model(), &ProxyId::new("p", "team")).services[0]
            .http
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(routes(&index), vec!["api.http[0]", "default"]);
    index.remove_file(path("dr.yaml"));
    // The VirtualService is kept (last good) but its target is gone: only the default stays.
    assert_eq!(index.model().virtual_services.len(), 1);
    assert_eq!(routes(&index), vec!["default"]);
}
