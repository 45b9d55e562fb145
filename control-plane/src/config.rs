//! The bridge to `weft-config`: its `Index` as the file source's [`ConfigStore`], and its pure
//! translation as the xDS cache's [`Generator`]. The only module that names `weft_config`.
//!
//! The index has a single writer (the source); translation reads the last published
//! `Arc<Model>` through a `watch`, so generating config never waits for the index.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use weft_config::diag::{Diagnostic, Severity as ConfigSeverity};
use weft_config::index::Index;
use weft_config::model::{MeshSettings, Model};
use weft_config::translate::{self, ProxyId};

use crate::app::Args;

use crate::sources::{ConfigDiagnostic, ConfigStore, Severity};
use crate::xds::cache::Generator;
use crate::xds::snapshot::Generated;
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
}

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
        Arc::new(ModelGenerator { model: rx }),
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
    fn generate(&self, node_id: &str) -> Result<Generated, String> {
        let id = ProxyId::from_node_id(node_id).map_err(|e| e.to_string())?;
        let model = Arc::clone(&self.model.borrow());
        Ok(translate::for_proxy(&model, &id).by_type)
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
        assert!(after.contains_key(weft_api::type_url::INBOUND));
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
        let mesh = weft_api::mesh::Mesh::from_any(&generated[MESH][MESH_NAME]).unwrap();
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
            let mesh = Mesh::from_any(&generated[MESH][MESH_NAME]).map_err(|e| e.to_string())?;
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
