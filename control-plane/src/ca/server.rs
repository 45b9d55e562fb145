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

/// The CA service.
#[derive(Clone)]
pub struct CaServer {
    authority: Arc<Authority>,
    authn: Arc<dyn Authenticator>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl CaServer {
    pub fn new(authority: Arc<Authority>, authn: Arc<dyn Authenticator>) -> Self {
        Self { authority, authn }
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
        let token = authn::bearer(header).map_err(|e| authn_status(&e))?;
        let caller = self.authn.authenticate(token).await.map_err(|e| {
            tracing::warn!(reason = %e, "CA request refused: not authenticated");
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
                sign_status(&e)
            })?;
        tracing::info!(identity = %caller.identity, node = ?caller.node_id, "issued a certificate");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: chain,
        }))
    }
}
