//! The bridge to `weft-config`: its `Index` as the file source's [`ConfigStore`], and its pure
//! translation as the xDS cache's [`Generator`]. The only module that names `weft_config`.
//!
//! The index has a single writer (the source); translation reads the last published
//! `Arc<Model>` through a `watch`, so generating config never waits for the index.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use weft_config::diag::{Diagnostic, Severity as ConfigSeverity};
use weft_config::index::Index;
use weft_config::model::{MeshSettings, Model};
use weft_config::translate::{self, OutboundKey, ProxyId};

use crate::app::Args;

use crate::sources::{ConfigDiagnostic, ConfigStore, Severity};
use crate::xds::cache::Generator;
use crate::xds::snapshot::{Snapshot, TypeResources};
/// Re-exported for the `--outbound-traffic-policy` flag, so that `weft_config` stays named
/// here only.
pub use weft_config::OutboundTrafficPolicy;

/// `weft_config::index::Index`, publishing its model to a [`ModelGenerator`].
#[derive(Debug)]
pub struct IndexStore {
    index: Index,
    model: watch::Sender<Arc<Model>>,
}

/// Translates the last published model for each proxy.
#[derive(Debug)]
pub struct ModelGenerator {
    model: watch::Receiver<Arc<Model>>,
    shared: Mutex<SharedOutbound>,
}

/// The outbound halves (services, clusters, endpoints) already built and hashed for one
/// model, by [`OutboundKey`]: a push to N proxies translates each distinct key once instead
/// of N times, and the proxies' snapshots share the result.
#[derive(Debug, Default)]
struct SharedOutbound {
    /// The model these were built from; another model empties the map.
    model: Option<Arc<Model>>,
    by_key: HashMap<OutboundKey, Outbound>,
}

type Outbound = Arc<[(&'static str, Arc<TypeResources>)]>;

/// The real store and generator for `args`; `trust_bundle` (the CA's PEM roots) reaches
/// every proxy as `Mesh.trust_bundle`.
pub fn real(args: &Args, trust_bundle: Vec<String>) -> (IndexStore, Arc<dyn Generator>) {
    let settings = MeshSettings {
        trust_domain: args.trust_domain.clone(),
        trust_bundle,
        outbound_traffic_policy: args.outbound_traffic_policy,
        ..MeshSettings::default()
    };
    let index = Index::new(settings);
    let (model, rx) = watch::channel(index.model());
    (
        IndexStore { index, model },
        Arc::new(ModelGenerator {
            model: rx,
            shared: Mutex::default(),
        }),
    )
}

fn convert(d: &Diagnostic) -> ConfigDiagnostic {
    ConfigDiagnostic {
        file: d.file.as_ref().map(|f| f.display().to_string()),
        line: d.line,
        column: d.column,
        object: d.object.as_ref().map(ToString::to_string),
        field: d.field.clone(),
        message: d.message.clone(),
        severity: match d.severity {
            ConfigSeverity::Error => Severity::Error,
            ConfigSeverity::Warning => Severity::Warning,
        },
        text: d.to_string(),
    }
}

impl ConfigStore for IndexStore {
    fn apply_file(&mut self, path: &Path, text: &str) -> Vec<ConfigDiagnostic> {
        self.index
            .apply_file(path, text)
            .iter()
            .map(convert)
            .collect()
    }

    fn remove_file(&mut self, path: &Path) {
        self.index.remove_file(path);
    }

    fn diagnostics(&self) -> Vec<ConfigDiagnostic> {
        self.index.all_diagnostics().iter().map(convert).collect()
    }

    fn publish(&mut self) {
        self.model.send_replace(self.index.model());
    }
}

impl Generator for ModelGenerator {
    fn generate(&self, node_id: &str) -> Result<Snapshot, String> {
        let id = ProxyId::from_node_id(node_id).map_err(|e| e.to_string())?;
        let model = Arc::clone(&self.model.borrow());
        let key = translate::outbound_key(&model, &id);
        let known = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if !shared
                .model
                .as_ref()
                .is_some_and(|m| Arc::ptr_eq(m, &model))
            {
                shared.model = Some(Arc::clone(&model));
                shared.by_key.clear();
            }
            shared.by_key.get(&key).cloned()
        };
        // Translation runs outside the lock; two callers missing the same key at once both
        // translate it (the same result), which is rarer and cheaper than serialising them.
        let (outbound, own) = match known {
            Some(outbound) => (outbound, translate::translate_own(&model, &id).pack_own()),
            None => {
                let t = translate::translate(&model, &id);
                let outbound: Outbound = t
                    .pack_outbound()
                    .into_iter()
                    .map(|(ty, r)| (ty, Arc::new(TypeResources::build(r))))
                    .collect();
                let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                if shared
                    .model
                    .as_ref()
                    .is_some_and(|m| Arc::ptr_eq(m, &model))
                {
                    shared.by_key.insert(key, Arc::clone(&outbound));
                }
                (outbound, t.pack_own())
            }
        };
        let own = own
            .into_iter()
            .map(|(ty, r)| (ty, Arc::new(TypeResources::build(r))));
        Ok(Snapshot::from_parts(outbound.iter().cloned().chain(own)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const WORKLOAD: &str = "apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: productpage, namespace: default}
spec:
  address: 127.0.0.5
  labels: {app: productpage}
  serviceAccount: productpage
";

    fn mk() -> (IndexStore, Arc<dyn Generator>) {
        real(
            &Args::parse_from(["weft-control", "--config-dir", "."]),
            vec!["ROOT".into()],
        )
    }

    #[test]
    fn translation_sees_only_published_models() {
        let (mut store, generator) = mk();
        assert!(store.apply_file(Path::new("we.yaml"), WORKLOAD).is_empty());
        let before = generator.generate("productpage.default").unwrap();
        store.publish();
        let after = generator.generate("productpage.default").unwrap();
        assert_ne!(before, after);
        assert!(!after.get(weft_api::type_url::INBOUND).resources.is_empty());
    }

    const SERVICE: &str = "apiVersion: networking.weft.dev/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.weft.dev/v1
kind: WorkloadEntry
metadata: {name: reviews, namespace: default}
spec: {address: 127.0.0.6, labels: {app: reviews}, serviceAccount: reviews}
";

    #[test]
    fn proxies_alike_share_one_outbound_half_until_the_model_changes() {
        use weft_api::type_url::{CLUSTER, ENDPOINTS, INBOUND, SERVICE as SVC};
        let (mut store, generator) = mk();
        assert!(store.apply_file(Path::new("we.yaml"), WORKLOAD).is_empty());
        assert!(store.apply_file(Path::new("svc.yaml"), SERVICE).is_empty());
        store.publish();
        let a = generator.generate("productpage.default").unwrap();
        let b = generator.generate("reviews.default").unwrap();
        for t in [SVC, CLUSTER, ENDPOINTS] {
            assert!(!a.get(t).resources.is_empty(), "{t}");
            assert!(
                std::ptr::eq(a.get(t), b.get(t)),
                "{t} is built once, shared"
            );
        }
        assert_ne!(a.get(INBOUND).version, b.get(INBOUND).version);

        let moved = SERVICE.replace("127.0.0.6", "127.0.0.7");
        assert!(store.apply_file(Path::new("svc.yaml"), &moved).is_empty());
        store.publish();
        let c = generator.generate("productpage.default").unwrap();
        assert!(!std::ptr::eq(a.get(ENDPOINTS), c.get(ENDPOINTS)));
        assert_ne!(a.get(ENDPOINTS).version, c.get(ENDPOINTS).version);
        // Shared or not, a snapshot is exactly the proxy's own full translation.
        let mut index = Index::new(MeshSettings {
            trust_bundle: vec!["ROOT".into()],
            ..MeshSettings::default()
        });
        index.apply_file(Path::new("we.yaml"), WORKLOAD);
        index.apply_file(Path::new("svc.yaml"), &moved);
        let alone = translate::for_proxy(&index.model(), &ProxyId::new("productpage", "default"));
        assert_eq!(c, Snapshot::from_generated(alone.by_type));
    }

    #[test]
    fn diagnostics_carry_file_line_and_field() {
        let (mut store, _) = mk();
        let bad = WORKLOAD.replace("  address:", "  bogus: 1\n  address:");
        let diags = store.apply_file(Path::new("we.yaml"), &bad);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].is_error());
        assert!(diags[0].text.starts_with("we.yaml:5:"), "{}", diags[0].text);
        assert_eq!(diags[0].field, "spec.bogus");
        assert_eq!(store.diagnostics(), diags);
    }

    #[test]
    fn the_ca_roots_reach_proxies_in_mesh() {
        use weft_api::type_url::{MESH, MESH_NAME, Resource as _};
        let (_, generator) = mk();
        let generated = generator.generate("anyone.default").unwrap();
        let mesh =
            weft_api::mesh::Mesh::from_any(&generated.get(MESH).resources[MESH_NAME].resource)
                .unwrap();
        assert_eq!(mesh.trust_bundle, vec!["ROOT".to_string()]);
    }

    #[test]
    fn the_outbound_traffic_policy_flag_reaches_proxies_in_mesh() {
        use weft_api::mesh::{Mesh, OutboundTrafficPolicy as Wire};
        use weft_api::type_url::{MESH, MESH_NAME, Resource as _};
        let policy = |extra: &[&str]| {
            let args = Args::try_parse_from(
                ["weft-control", "--config-dir", "."]
                    .iter()
                    .chain(extra)
                    .copied(),
            )
            .map_err(|e| e.to_string())?;
            let (_, generator) = real(&args, Vec::new());
            let generated = generator.generate("anyone.default")?;
            let mesh = Mesh::from_any(&generated.get(MESH).resources[MESH_NAME].resource)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(mesh.outbound_traffic_policy())
        };
        assert_eq!(policy(&[]), Ok(Wire::AllowAny));
        assert_eq!(
            policy(&["--outbound-traffic-policy", "REGISTRY_ONLY"]),
            Ok(Wire::RegistryOnly)
        );
        assert_eq!(
            policy(&["--outbound-traffic-policy", "allow_any"]),
            Ok(Wire::AllowAny)
        );
        let err = policy(&["--outbound-traffic-policy", "DENY"]).unwrap_err();
        assert!(err.contains("expected ALLOW_ANY or REGISTRY_ONLY"), "{err}");
    }

    #[test]
    fn a_malformed_node_id_is_refused() {
        let (_, generator) = mk();
        let err = generator.generate("nodot").unwrap_err();
        assert!(err.contains("nodot"), "{err}");
    }
}
