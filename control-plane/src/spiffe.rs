//! SPIFFE IDs (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), parsed once.
//!
//! The CA (what a CSR asks for, who a token says the caller is) and xDS authorization (who a
//! client certificate says the proxy is) compare identities; a parsed newtype makes "same
//! identity" mean the same thing in both places, and makes a malformed ID an error at the edge.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A Kubernetes-style SPIFFE ID: trust domain, namespace, service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string or certificate does not carry a usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// Not `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error(
        "{0:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Malformed(String),
    /// The certificate could not be parsed.
    #[error("cannot parse the certificate: {0}")]
    BadCertificate(String),
    /// The certificate has no URI SAN, or more than one.
    #[error("the certificate must carry exactly one URI SAN, it has {0}")]
    UriSanCount(usize),
}

// === impl SpiffeId ===

impl SpiffeId {
    /// The ID of `service_account` in `namespace` under `trust_domain`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; every part must be non-empty and free of `/`.
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        let malformed = || SpiffeError::Malformed(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa]
                if [td, ns, sa]
                    .iter()
                    .all(|p| !p.is_empty() && !p.contains(['?', '#', ':'])) =>
            {
                Ok(Self::new(*td, *ns, *sa))
            }
            _ => Err(malformed()),
        }
    }

    /// The single URI SAN of a DER certificate, parsed. Certificates the CA issues carry
    /// exactly one, so any other count means the certificate is not a Weft workload's.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, SpiffeError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(SpiffeError::BadCertificate(e.to_string())),
        };
        match uris.as_slice() {
            [uri] => Self::parse(uri),
            _ => Err(SpiffeError::UriSanCount(uris.len())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
