//! The `weft.ca.v1.CertificateService` gRPC service: authenticate, sign, map errors to status
//! codes. It decides nothing itself ([`super::authority`] does), so the mapping below is the
//! whole of it.
//!
//! Served on the same TLS listener as ADS (`xds::server::serve`); a proxy calls it before it has
//! a certificate, which is why client certificates are optional at the TLS layer and the bearer
//! token is what authenticates here.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use weft_api::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use weft_api::ca::{CreateCertificateRequest, CreateCertificateResponse};

use super::authn::{self, Authenticator, AuthnError};
use super::authority::{Authority, SignError};
use crate::metrics::Metrics;

/// The CA service.
#[derive(Clone)]
pub struct CaServer {
    authority: Arc<Authority>,
    authn: Arc<dyn Authenticator>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl CaServer {
    /// The service; sets `ca_root_expiry_timestamp_seconds` from `authority`'s root.
    pub fn new(
        authority: Arc<Authority>,
        authn: Arc<dyn Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let expiry = authority
            .root_not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        metrics.ca_root_expiry.set(expiry);
        Self {
            authority,
            authn,
            metrics,
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .ca_certificates
            .get_or_create(&Metrics::result_labels(result))
            .inc();
    }

    /// The tonic service, ready to add to a router.
    pub fn into_service(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }
}

/// The status a caller sees for an authentication failure.
pub fn authn_status(e: &AuthnError) -> Status {
    match e {
        AuthnError::Backend(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// The status a caller sees for a refused CSR.
pub fn sign_status(e: &SignError) -> Status {
    match e {
        SignError::MalformedCsr(_)
        | SignError::SanCount(_)
        | SignError::NotSpiffe(_)
        | SignError::BadValidity(_) => Status::invalid_argument(e.to_string()),
        SignError::TrustDomain { .. } | SignError::NotCaller { .. } => {
            Status::permission_denied(e.to_string())
        }
        SignError::IssuerExpiring => Status::failed_precondition(e.to_string()),
        SignError::Internal(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl CertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default());
        let caller = match authn::bearer(header) {
            Ok(token) => self.authn.authenticate(token).await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            tracing::warn!(reason = %e, "CA request refused: not authenticated");
            self.count(e.reason());
            authn_status(&e)
        })?;
        let req = request.into_inner();
        let chain = self
            .authority
            .sign_csr(
                &req.csr,
                &caller.identity,
                req.validity_seconds,
                SystemTime::now(),
            )
            .map_err(|e| {
                tracing::warn!(caller = %caller.identity, reason = %e, "CA request refused");
                self.count(e.reason());
                sign_status(&e)
            })?;
        self.count("issued");
        tracing::info!(identity = %caller.identity, node = ?caller.node_id, "issued a certificate");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};
    use tonic::Code;

    use super::*;
    use crate::ca::authn::Caller;
    use crate::ca::authority::new_root;
    use crate::spiffe::SpiffeId;

    const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

    /// One token, `good`, for `reviews`.
    struct OneToken;

    #[tonic::async_trait]
    impl Authenticator for OneToken {
        async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
            match token {
                "good" => Ok(Caller {
                    identity: SpiffeId::parse(REVIEWS).unwrap(),
                    node_id: None,
                }),
                _ => Err(AuthnError::Unknown),
            }
        }
    }

    fn csr(uri: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn request(token: Option<&str>, csr: String) -> Request<CreateCertificateRequest> {
        let mut req = Request::new(CreateCertificateRequest {
            csr,
            validity_seconds: 0,
        });
        if let Some(token) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        req
    }

    #[tokio::test]
    async fn results_are_counted_and_the_root_expiry_exposed() {
        let root = new_root("cluster.local", SystemTime::now()).unwrap();
        let authority = Arc::new(
            Authority::new(&root, "cluster.local", std::time::Duration::from_secs(3600)).unwrap(),
        );
        let metrics = Arc::new(Metrics::new());
        let ca = CaServer::new(Arc::clone(&authority), Arc::new(OneToken), metrics.clone());
        let ratings = "spiffe://cluster.local/ns/default/sa/ratings";

        ca.create_certificate(request(Some("good"), csr(REVIEWS)))
            .await
            .unwrap();
        let cases = [
            (request(Some("good"), csr(ratings)), Code::PermissionDenied),
            (request(Some("bad"), csr(REVIEWS)), Code::Unauthenticated),
            (request(None, csr(REVIEWS)), Code::Unauthenticated),
            (request(Some("good"), "junk".into()), Code::InvalidArgument),
        ];
        for (req, code) in cases {
            assert_eq!(ca.create_certificate(req).await.unwrap_err().code(), code);
        }

        let text = metrics.encode().unwrap();
        for line in [
            "weft_control_ca_certificates_total{result=\"issued\"} 1",
            "weft_control_ca_certificates_total{result=\"not_caller\"} 1",
            "weft_control_ca_certificates_total{result=\"unauthenticated\"} 2",
            "weft_control_ca_certificates_total{result=\"malformed_csr\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let expiry = authority
            .root_not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let line = format!("weft_control_ca_root_expiry_timestamp_seconds {expiry}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
