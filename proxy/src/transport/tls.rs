//! The TLS vocabulary shared by both sides of the mesh hop: why a handshake failed, and the two
//! small traits through which `identity` hands rustls configs to the transport.
//!
//! Why here and not in `identity`: the transport must not name the modules above it, yet it is
//! the one that dials and accepts. So it defines what it needs (a client config for a set of
//! expected identities; a server config and the peer's SPIFFE ID) and `identity` implements it.
//! Failure reasons are a closed set so they can be metric labels and stable error text.
//!
//! It also holds the one implementation of what every custom certificate verifier shares
//! ([`ChainVerifier`], [`handshake_signatures!`]): the chain check and the handshake
//! signature checks are always rustls' webpki helpers; only the name check differs.

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;

/// Why a TLS handshake (or a TLS decision) failed. `code()` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsReason {
    /// The peer's SPIFFE ID is not one we expected (secure naming).
    IdentityMismatch,
    /// The peer's ID is in another trust domain than any we expected.
    UnknownTrustDomain,
    /// The peer's chain does not lead to a root of the trust bundle.
    UnknownIssuer,
    /// TLS origination: the server's certificate is not valid for the SNI, or carries none of
    /// the `subject_alt_names` asked for.
    NameMismatch,
    /// The peer's certificate is expired (or not yet valid).
    ExpiredCertificate,
    /// Inbound: the client presented no certificate.
    NoClientCertificate,
    /// The peer's certificate carries no SPIFFE URI SAN.
    NoSpiffeId,
    /// The peer aborted the handshake (it refused our certificate, usually).
    PeerRejected,
    /// This proxy has no certificate yet (or no identity at all).
    NoLocalCertificate,
    /// Inbound: plaintext to a port whose mode is STRICT.
    PlaintextToStrict,
    /// Inbound: TLS to a port whose mode is DISABLE.
    TlsToDisabled,
    /// Anything else (protocol error, timeout, reset).
    HandshakeFailed,
}

impl TlsReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::IdentityMismatch => "identity-mismatch",
            Self::UnknownTrustDomain => "unknown-trust-domain",
            Self::UnknownIssuer => "unknown-issuer",
            Self::NameMismatch => "name-mismatch",
            Self::ExpiredCertificate => "expired-certificate",
            Self::NoClientCertificate => "no-client-certificate",
            Self::NoSpiffeId => "no-spiffe-id",
            Self::PeerRejected => "peer-rejected",
            Self::NoLocalCertificate => "no-local-certificate",
            Self::PlaintextToStrict => "plaintext-to-strict",
            Self::TlsToDisabled => "tls-to-disabled",
            Self::HandshakeFailed => "handshake-failed",
        }
    }
}

/// A refused handshake: the reason (for metrics) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct TlsFailure {
    pub reason: TlsReason,
    pub detail: String,
}

impl TlsFailure {
    pub fn new(reason: TlsReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// Recovers the reason from a failed `tokio-rustls` handshake (or the I/O that followed
    /// it): our own verifiers wrap a `TlsFailure` in the rustls error; webpki's verdicts and
    /// alerts are mapped to the closest reason.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(e) => Self::from_rustls(e),
            None => Self::new(TlsReason::HandshakeFailed, e.to_string()),
        }
    }

    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(C::Other(other)) => {
                if let Some(f) = other.0.downcast_ref::<TlsFailure>() {
                    return f.clone();
                }
                Self::new(TlsReason::HandshakeFailed, e.to_string())
            }
            E::InvalidCertificate(C::UnknownIssuer) => Self::new(
                TlsReason::UnknownIssuer,
                format!("the peer's certificate does not chain to the trust bundle: {e}"),
            ),
            // A forged chain, or a peer that does not hold the key of its certificate (the
            // handshake signature): either way nothing it sent is vouched for.
            E::InvalidCertificate(C::BadSignature) => Self::new(
                TlsReason::UnknownIssuer,
                format!("the peer's certificate chain or handshake signature does not verify: {e}"),
            ),
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => Self::new(
                TlsReason::ExpiredCertificate,
                format!("the peer's certificate is not valid now: {e}"),
            ),
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                Self::new(
                    TlsReason::NameMismatch,
                    format!("the server's certificate is not valid for the name asked for: {e}"),
                )
            }
            E::NoCertificatesPresented => Self::new(
                TlsReason::NoClientCertificate,
                "the client presented no certificate",
            ),
            // Alerts about negotiation, not about our certificate: e.g. a TLS 1.2-only peer.
            E::AlertReceived(
                a @ (rustls::AlertDescription::ProtocolVersion
                | rustls::AlertDescription::HandshakeFailure
                | rustls::AlertDescription::InsufficientSecurity
                | rustls::AlertDescription::NoApplicationProtocol),
            ) => Self::new(
                TlsReason::HandshakeFailed,
                format!(
                    "the peer aborted the handshake ({a:?}): no TLS version, cipher suite or \
                     ALPN protocol in common (the mesh hop is TLS 1.3, ALPN h2)"
                ),
            ),
            E::AlertReceived(a) => Self::new(
                TlsReason::PeerRejected,
                format!("the peer aborted the handshake ({a:?}); it may not trust our certificate"),
            ),
            _ => Self::new(TlsReason::HandshakeFailed, e.to_string()),
        }
    }

    /// Wraps this failure so it survives inside a rustls error (and comes back in `from_io`).
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }
}

/// The identities a mesh-hop server may present; sorted, so equal sets give equal pool keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ExpectedIdentities(Arc<[String]>);

impl ExpectedIdentities {
    pub fn new(mut ids: Vec<String>) -> Self {
        ids.sort();
        ids.dedup();
        Self(ids.into())
    }

    pub fn ids(&self) -> &[String] {
        &self.0
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|e| e == id)
    }
}

impl fmt::Debug for ExpectedIdentities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for ExpectedIdentities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() == 1 {
            return f.write_str(&self.0[0]);
        }
        write!(f, "one of [{}]", self.0.join(", "))
    }
}

/// Client side of the mesh hop: a rustls config that presents our current certificate and
/// accepts only a server whose SPIFFE ID is in `expected`.
pub trait MeshClientTls: Send + Sync + fmt::Debug + 'static {
    fn client_config(
        &self,
        expected: &ExpectedIdentities,
    ) -> Result<Arc<rustls::ClientConfig>, TlsFailure>;
}

/// Server side: a config requiring a client certificate from the trust bundle (`None` while
/// this proxy has no certificate), and the SPIFFE ID of a verified peer.
pub trait MeshServerTls: Send + Sync + fmt::Debug + 'static {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>>;
    fn peer_identity(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<str>>;
}

/// How the mesh hop to one peer is secured (decided by `outbound`, applied by `Connector`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MeshSecurity {
    /// h2c: no identity on this proxy, or the DestinationRule says DISABLE.
    Plaintext,
    /// mTLS, accepting only these server identities.
    Mutual(ExpectedIdentities),
}

// === verifier building blocks ===

/// The three handshake-signature methods of a custom `ServerCertVerifier` or
/// `ClientCertVerifier`, delegated to rustls' webpki helpers with `self.provider`'s
/// algorithms. A verifier that checks certificates its own way must still prove the peer
/// holds the key (`CertificateVerify`), so no verifier writes these by hand.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use handshake_signatures;

/// What a [`ChainVerifier`] checks of the leaf once its chain is verified (in place of
/// webpki's DNS name check): secure naming for the mesh hop, `subject_alt_names` for SIMPLE.
pub type LeafCheck = Box<dyn Fn(&CertificateDer<'_>) -> Result<(), TlsFailure> + Send + Sync>;

/// A server verifier: webpki's chain check against `roots` (signatures, validity period,
/// the serverAuth EKU), then `check` on the leaf instead of a DNS name check.
pub struct ChainVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// For `Debug`: what `check` checks.
    what: &'static str,
    check: LeafCheck,
}

impl ChainVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        what: &'static str,
        check: LeafCheck,
    ) -> Self {
        Self {
            roots,
            provider,
            what,
            check,
        }
    }
}

impl fmt::Debug for ChainVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainVerifier")
            .field("roots", &self.roots.len())
            .field("check", &self.what)
            .finish()
    }
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        (self.check)(end_entity).map_err(TlsFailure::into_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
