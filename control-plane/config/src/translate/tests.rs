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

const MESH_OF_TWO: &str = "\
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: api, namespace: team}
spec:
  hosts: [api]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: api, namespace: team}
spec: {address: 127.0.0.2, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: client, namespace: team}
spec: {address: 127.0.0.3, labels: {app: client}}
";

#[test]
fn settings_reach_the_mesh_and_the_root_namespace_is_configurable() {
    let settings = MeshSettings {
        trust_bundle: vec!["-----BEGIN CERTIFICATE-----\nroot\n".into()],
        root_namespace: "istio-system".into(),
        ..MeshSettings::default()
    };
    let mut index = Index::new(settings);
    index.apply_file(std::path::Path::new("r.yaml"), MESH_OF_TWO);
    index.apply_file(
        std::path::Path::new("pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let t = translate(&index.model(), &ProxyId::new("api", "team"));
    assert_eq!(
        t.mesh.trust_bundle,
        vec!["-----BEGIN CERTIFICATE-----\nroot\n"]
    );
    let inbound = t.inbound.expect("api has a WorkloadEntry");
    assert_eq!(inbound.mtls_mode, mesh::MtlsMode::Strict as i32);
    // With the default root namespace (weft-system) the same policy is namespace-level
    // for istio-system only.
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("r.yaml"), MESH_OF_TWO);
    index.apply_file(
        std::path::Path::new("pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let t = translate(&index.model(), &ProxyId::new("api", "team"));
    let inbound = t.inbound.expect("api has a WorkloadEntry");
    assert_eq!(inbound.mtls_mode, mesh::MtlsMode::Permissive as i32);
    assert!(t.mesh.trust_bundle.is_empty());
}

#[test]
fn a_workload_policy_changes_only_the_inbound_of_the_workloads_it_selects() {
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("r.yaml"), MESH_OF_TWO);
    let api = ProxyId::new("api", "team");
    let client = ProxyId::new("client", "team");
    let before = (
        for_proxy(&index.model(), &api),
        for_proxy(&index.model(), &client),
    );
    index.apply_file(
        std::path::Path::new("pa.yaml"),
        "apiVersion: security.weft.dev/v1\nkind: PeerAuthentication\nmetadata: {name: api, namespace: team}\nspec: {selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
    );
    assert!(index.diagnostics().is_empty(), "{:?}", index.diagnostics());
    let after = (
        for_proxy(&index.model(), &api),
        for_proxy(&index.model(), &client),
    );
    assert_eq!(before.1, after.1, "the client's resources must not change");
    for (type_url, by_name) in &after.0.by_type {
        if *type_url != type_url::INBOUND {
            assert_eq!(Some(by_name), before.0.by_type.get(type_url), "{type_url}");
        }
    }
    let inbound = translate(&index.model(), &api).inbound.expect("inbound");
    assert_eq!(inbound.mtls_mode, mesh::MtlsMode::Strict as i32);
    assert_eq!(
        inbound.port_mtls,
        [(8080, mesh::MtlsMode::Disable as i32)]
            .into_iter()
            .collect()
    );
    assert_ne!(before.0, after.0);
}

#[test]
fn clusters_carry_identities_and_auto_tls_without_a_destination_rule() {
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("r.yaml"), MESH_OF_TWO);
    let t = translate(&index.model(), &ProxyId::new("client", "team"));
    let cluster = &t.clusters[0];
    assert_eq!(cluster.name, "outbound|80||api.team.svc.cluster.local");
    assert_eq!(
        cluster.identities,
        vec!["spiffe://cluster.local/ns/team/sa/api"]
    );
    assert_eq!(
        cluster.tls,
        Some(mesh::UpstreamTls {
            mode: mesh::upstream_tls::Mode::Auto as i32,
            ..Default::default()
        })
    );
}

/// Two workloads alike (`a1`, `a2`: same namespace, labels meeting the same conditions), one
/// selected by a DestinationRule's workloadSelector and a route's sourceLabels (`b`), one in
/// another namespace (`c`).
const KEYED: &str = "\
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: api, namespace: team}
spec:
  hosts: [api.team.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata: {name: api-for-b, namespace: team}
spec:
  host: api.team.svc.cluster.local
  workloadSelector: {matchLabels: {app: b}}
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {name: api, namespace: team}
spec:
  hosts: [api.team.svc.cluster.local]
  http:
  - match: [{sourceLabels: {app: b}}]
    route: [{destination: {host: api.team.svc.cluster.local}}]
    timeout: 1s
  - route: [{destination: {host: api.team.svc.cluster.local}}]
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: a1, namespace: team}
spec: {address: 10.0.0.1, labels: {app: a, version: v1}, serviceAccount: a}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: a2, namespace: team}
spec: {address: 10.0.0.2, labels: {app: a, version: v2}, serviceAccount: a}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: b, namespace: team}
spec: {address: 10.0.0.3, labels: {app: b}, serviceAccount: b}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: c, namespace: other}
spec: {address: 10.0.0.4, labels: {app: a}, serviceAccount: c}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: api, namespace: team}
spec: {address: 10.0.0.9, labels: {app: api}, serviceAccount: api}
";

#[test]
fn proxies_with_equal_outbound_keys_get_identical_outbound_resources() {
    let mut index = Index::new(MeshSettings::default());
    let diags = index.apply_file(std::path::Path::new("k.yaml"), KEYED);
    assert!(diags.is_empty(), "{diags:?}");
    let model = index.model();
    let id = |name: &str, ns: &str| ProxyId::new(name, ns);
    let key = |p: &ProxyId| outbound_key(&model, p);
    let outbound = |p: &ProxyId| translate(&model, p).pack_outbound();
    let (a1, a2, b, c) = (
        id("a1", "team"),
        id("a2", "team"),
        id("b", "team"),
        id("c", "other"),
    );

    // Alike: one key, one outbound half (though their labels and inbound differ).
    assert_eq!(key(&a1), key(&a2));
    assert_eq!(outbound(&a1), outbound(&a2));
    assert_ne!(
        translate(&model, &a1).pack_own(),
        translate(&model, &a2).pack_own()
    );

    // The selected workload and the other namespace get keys of their own, and their
    // outbound halves really differ, so sharing across keys would be wrong.
    assert_ne!(key(&a1), key(&b));
    assert_ne!(outbound(&a1), outbound(&b));
    assert_ne!(key(&a1), key(&c));
    assert_ne!(outbound(&a1), outbound(&c));
}

#[test]
fn the_own_half_alone_equals_the_own_half_of_a_full_translation() {
    let mut index = Index::new(MeshSettings::default());
    index.apply_file(std::path::Path::new("k.yaml"), KEYED);
    let model = index.model();
    for (name, ns) in [
        ("a1", "team"),
        ("b", "team"),
        ("c", "other"),
        ("nobody", "team"),
    ] {
        let p = ProxyId::new(name, ns);
        let full = translate(&model, &p);
        assert_eq!(
            translate_own(&model, &p).pack_own(),
            full.pack_own(),
            "{name}.{ns}"
        );
        let mut merged = full.pack_own();
        merged.extend(full.pack_outbound());
        assert_eq!(merged, for_proxy(&model, &p).by_type, "{name}.{ns}");
    }
}

#[test]
fn selectors_pick_entries_of_their_namespace_carrying_every_label() {
    let yaml = "\
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: two, namespace: team}
spec:
  hosts: [two.team.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: api, tier: back}}
---
apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: all, namespace: team}
spec:
  hosts: [all.team.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: w1, namespace: team}
spec: {address: 10.0.0.1, labels: {app: api, tier: back}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: w2, namespace: team}
spec: {address: 10.0.0.2, labels: {app: api, tier: front}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: w3, namespace: elsewhere}
spec: {address: 10.0.0.3, labels: {app: api, tier: back}}
";
    let mut index = Index::new(MeshSettings::default());
    let diags = index.apply_file(std::path::Path::new("s.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let t = translate(&index.model(), &ProxyId::new("p", "team"));
    let addresses = |cluster: &str| -> Vec<String> {
        t.endpoints
            .iter()
            .find(|e| e.cluster == cluster)
            .map(|e| e.endpoints.iter().map(|ep| ep.address.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        addresses("outbound|80||two.team.svc.cluster.local"),
        ["10.0.0.1"]
    );
    assert_eq!(
        addresses("outbound|80||all.team.svc.cluster.local"),
        ["10.0.0.1", "10.0.0.2"]
    );
}
