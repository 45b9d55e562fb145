//! The one RPC to the mesh CA: CSR in, PEM chain out, authenticated by the bearer token.
//!
//! Behind the [`CaClient`] trait so rotation is tested against a fake, in paused time. The
//! gRPC implementation verifies the control plane against `--ca-root` with the name
//! "weft-control" (the CA and xDS share 15012 over TLS).

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_service_client::CertificateServiceClient;

use super::CONTROL_PLANE_NAME;

/// Why the CA did not answer with a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaError(pub String);

/// Asks the CA to sign a CSR.
pub trait CaClient: Send + Sync + 'static {
    /// `validity`: requested lifetime (zero: the CA's default). Returns PEM, leaf first.
    fn create_certificate(
        &self,
        csr_pem: String,
        validity: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, CaError>>;
}

/// [`CaClient`] over TLS gRPC.
#[derive(Clone)]
pub struct GrpcCaClient {
    client: CertificateServiceClient<tonic::transport::Channel>,
    token: String,
}

impl std::fmt::Debug for GrpcCaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCaClient").finish_non_exhaustive()
    }
}

impl GrpcCaClient {
    /// `addr`: host:port; `ca_root_pem`: the roots the control plane's cert chains to.
    pub fn new(addr: &str, ca_root_pem: &str, token: String) -> Result<Self, CaError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_root_pem))
            .domain_name(CONTROL_PLANE_NAME);
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| CaError(format!("bad CA address {addr}: {e}")))?
            .tls_config(tls)
            .map_err(|e| CaError(format!("CA TLS config: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15));
        Ok(Self {
            client: CertificateServiceClient::new(endpoint.connect_lazy()),
            token,
        })
    }
}

impl CaClient for GrpcCaClient {
    fn create_certificate(
        &self,
        csr_pem: String,
        validity: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, CaError>> {
        Box::pin(async move {
            let mut req = tonic::Request::new(CreateCertificateRequest {
                csr: csr_pem,
                validity_seconds: i64::try_from(validity.as_secs()).unwrap_or(0),
            });
            let bearer = format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| CaError("the token is not a valid header value".into()))?;
            req.metadata_mut().insert("authorization", bearer);
            let rsp = self
                .client
                .clone()
                .create_certificate(req)
                .await
                .map_err(|s| CaError(status_text(&s)))?;
            Ok(rsp.into_inner().cert_chain)
        })
    }
}

/// A status with its causes: for transport failures (TLS, connect) tonic's message alone is
/// just "transport error", and the cause is what an operator needs.
fn status_text(s: &tonic::Status) -> String {
    let mut out = format!("{}: {}", s.code(), s.message());
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
