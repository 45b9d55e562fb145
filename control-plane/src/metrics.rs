//! The control plane's Prometheus metrics: one registry, families named once, here.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set of per-type families: `type="Service"` (the short message name).
pub type TypeLabels = Vec<(&'static str, String)>;

/// Label set of `ca_certificates_total`: `result="issued"` or the reason of a refusal.
pub type ResultLabels = Vec<(&'static str, &'static str)>;

/// The control plane's metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open xDS streams.
    pub connected_proxies: Gauge,
    /// Responses sent, by type.
    pub pushes: Family<TypeLabels, Counter>,
    /// NACKs received, by type.
    pub nacks: Family<TypeLabels, Counter>,
    /// Error-severity diagnostics in the current config.
    pub config_errors: Gauge,
    /// How many times the model has been rebuilt from the sources.
    pub model_generation: Gauge,
    /// CreateCertificate calls by result: `issued`, or why the CA refused.
    pub ca_certificates: Family<ResultLabels, Counter>,
    /// The CA root's `notAfter`, in seconds since the Unix epoch.
    pub ca_root_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `weft_control_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_control");
        let connected_proxies = Gauge::default();
        let pushes = Family::<TypeLabels, Counter>::default();
        let nacks = Family::<TypeLabels, Counter>::default();
        let config_errors = Gauge::default();
        let model_generation = Gauge::default();
        let ca_certificates = Family::<ResultLabels, Counter>::default();
        let ca_root_expiry = Gauge::default();
        registry.register(
            "connected_proxies",
            "Open xDS streams",
            connected_proxies.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            pushes.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses rejected by proxies, by resource type",
            nacks.clone(),
        );
        registry.register(
            "config_errors",
            "Error diagnostics in the current configuration",
            config_errors.clone(),
        );
        registry.register(
            "model_generation",
            "Times the model was rebuilt from the config sources",
            model_generation.clone(),
        );
        registry.register(
            "ca_certificates",
            "CreateCertificate calls, by result: issued, or the reason of the refusal",
            ca_certificates.clone(),
        );
        registry.register(
            "ca_root_expiry_timestamp_seconds",
            "When the mesh CA's root certificate expires (notAfter, Unix seconds)",
            ca_root_expiry.clone(),
        );
        Self {
            registry,
            connected_proxies,
            pushes,
            nacks,
            config_errors,
            model_generation,
            ca_certificates,
            ca_root_expiry,
        }
    }

    /// The labels of a CreateCertificate result; `result` is one of a fixed set of names.
    pub fn result_labels(result: &'static str) -> ResultLabels {
        vec![("result", result)]
    }

    /// The labels of a type URL. Type URLs come from proxies' requests, so any URL that is not
    /// one of Weft's types is labelled `unknown`: a client cannot grow the families without
    /// bound.
    pub fn type_labels(type_url: &str) -> TypeLabels {
        let known = weft_api::type_url::ALL.contains(&type_url);
        let name = if known {
            weft_api::type_url::short_name(type_url)
        } else {
            "unknown"
        };
        vec![("type", name.to_string())]
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_families() {
        let m = Metrics::new();
        m.pushes
            .get_or_create(&Metrics::type_labels(weft_api::type_url::SERVICE))
            .inc();
        let text = m.encode().unwrap();
        assert!(
            text.contains("weft_control_xds_pushes_total{type=\"Service\"} 1"),
            "{text}"
        );
        assert!(text.contains("weft_control_connected_proxies 0"), "{text}");
        assert!(text.contains("weft_control_model_generation"), "{text}");
    }

    #[test]
    fn type_urls_outside_weft_share_one_label() {
        let m = Metrics::new();
        for i in 0..3 {
            m.nacks
                .get_or_create(&Metrics::type_labels(&format!("type.example/x{i}")))
                .inc();
        }
        let text = m.encode().unwrap();
        assert!(
            text.contains("weft_control_xds_nacks_total{type=\"unknown\"} 3"),
            "{text}"
        );
    }
}
