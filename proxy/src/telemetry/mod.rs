//! Prometheus metrics. One [`Metrics`] per proxy, shared by the data path, xDS and admin.
//!
//! Label values come from config (service and workload names), not from requests, so the
//! label cardinality is bounded by the mesh's size rather than by traffic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `weft_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// "outbound" or "inbound".
    pub direction: &'static str,
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_subset: String,
    /// Inbound: the caller's SPIFFE ID from mTLS; empty for plaintext (and outbound).
    pub source_principal: String,
    pub response_code: u16,
    /// Why the proxy answered itself (`x-weft-reason`'s short name: `timeout`,
    /// `upstream_overflow`, `fault_abort`, `no_route`...); empty when the upstream answered.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    xds_updates: Family<XdsLabels, Counter>,
    xds_connected: Gauge,
    tls_failures: Family<TlsLabels, Counter>,
    cert_expiry: Gauge,
    cert_rotations: Family<ResultLabels, Counter>,
    protocol_detect: Family<DetectLabels, Counter>,
    outbound_refused: Family<RefusedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let xds_updates = Family::<XdsLabels, Counter>::default();
        let xds_connected = Gauge::default();
        registry.register(
            "weft_requests",
            "Requests handled, by direction, source, destination and response code",
            requests.clone(),
        );
        registry.register(
            "weft_xds_updates",
            "xDS responses applied (ack) or rejected (nack), by type",
            xds_updates.clone(),
        );
        registry.register(
            "weft_xds_connected",
            "1 while the ADS stream to the control plane is up",
            xds_connected.clone(),
        );
        let tls_failures = Family::<TlsLabels, Counter>::default();
        let cert_expiry = Gauge::default();
        let cert_rotations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "weft_tls_handshake_failures",
            "Refused or failed mTLS handshakes and TLS-mode refusals, by direction and reason",
            tls_failures.clone(),
        );
        registry.register(
            "weft_identity_cert_expiry_timestamp_seconds",
            "Unix time at which the proxy's current certificate expires (0: none yet)",
            cert_expiry.clone(),
        );
        registry.register(
            "weft_identity_cert_rotations",
            "Certificate requests to the CA, by result (success, failure)",
            cert_rotations.clone(),
        );
        let protocol_detect = Family::<DetectLabels, Counter>::default();
        registry.register(
            "weft_protocol_detect",
            "Protocol detection on intercepted connections, by outcome (http1, h2, tls_mesh, \
             tls_app, opaque, timeout, skipped)",
            protocol_detect.clone(),
        );
        let outbound_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "weft_outbound_refused",
            "Intercepted outbound connections and requests refused, by reason (registry_only: \
             unknown destination under REGISTRY_ONLY; loop: the destination is this proxy)",
            outbound_refused.clone(),
        );
        Self {
            registry,
            outbound_refused,
            requests,
            xds_updates,
            xds_connected,
            tls_failures,
            cert_expiry,
            cert_rotations,
            protocol_detect,
        }
    }

    pub fn request(&self, labels: RequestLabels) {
        self.requests.get_or_create(&labels).inc();
    }

    /// `short_type` is the resource's short name ("Service"); `acked` false means NACK.
    pub fn xds_update(&self, short_type: &'static str, acked: bool) {
        self.xds_updates
            .get_or_create(&XdsLabels {
                r#type: short_type,
                result: if acked { "ack" } else { "nack" },
            })
            .inc();
    }

    pub fn set_xds_connected(&self, up: bool) {
        self.xds_connected.set(i64::from(up));
    }

    /// `direction` is "inbound" or "outbound"; `reason` a `TlsReason` code.
    pub fn tls_handshake_failure(&self, direction: &'static str, reason: &'static str) {
        self.tls_failures
            .get_or_create(&TlsLabels { direction, reason })
            .inc();
    }

    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    pub fn cert_rotation(&self, ok: bool) {
        self.cert_rotations
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// One connection's protocol detection ended with `outcome`.
    pub fn protocol_detected(&self, outcome: crate::detect::DetectOutcome) {
        self.protocol_detect
            .get_or_create(&DetectLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// An intercepted connection or request was refused for `reason` (`registry_only`, `loop`).
    pub fn outbound_refused(&self, reason: &'static str) {
        self.outbound_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
