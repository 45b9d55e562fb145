//! The signing logic of the mesh CA: a CSR and an authenticated caller in, a leaf certificate
//! chain out. No I/O: the key material comes from a [`super::store::CaStore`], the caller from a
//! [`super::authn::Authenticator`], and the clock is a parameter so tests pin every date.
//!
//! What a leaf gets is decided here and nowhere else, so the rules read in one place:
//! - exactly the one URI SAN the CSR asks for, and only if it is a SPIFFE ID of this trust
//!   domain equal to the caller's identity (the CSR's other fields are ignored: a proxy cannot
//!   ask for a CA bit, a DNS name or a longer life);
//! - key usage digitalSignature + keyEncipherment, EKU serverAuth + clientAuth (the same
//!   certificate serves both ends of proxy-to-proxy mTLS and the xDS client side);
//! - `not_before` a few minutes in the past (peers whose clocks lag must accept it);
//! - `not_after` = the earliest of what was asked, the configured lifetime and the issuer's own
//!   `not_after` (a leaf outliving its issuer would fail verification anyway).
//!
//! No function here accepts or returns another party's private key: a CSR carries only the
//! public key. The control plane's own serving key ([`Authority::issue_serving`]) is made here
//! and never leaves the process.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::SpiffeId;

/// How far in the past a leaf's validity starts, so that peers with a slow clock accept it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Lifetime of a root made by [`new_root`]: long, because every proxy trusts it and replacing
/// it is a rotation (extra roots in the trust bundle), not a restart.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA's key material as stored: PEM, as Istio's `cacerts` files hold it.
#[derive(Clone)]
pub struct CaMaterial {
    /// The certificate that signs leaves: the root itself, or a plugged-in intermediate.
    pub issuer_cert_pem: String,
    /// The issuer's private key (PKCS#8 PEM). Only the store and the authority see it.
    pub issuer_key_pem: String,
    /// Certificates above a leaf, the issuer first and the root last (`[root]` for a
    /// self-signed root).
    pub chain: Vec<String>,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is left out on purpose: logs must never carry it.
        f.debug_struct("CaMaterial")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The CA: signs leaves with its issuer key.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// PEM certificates above a leaf: the issuer first, the root last.
    chain: Vec<String>,
    issuer_not_after: SystemTime,
    /// The root's `notAfter`: when every certificate of this mesh stops verifying.
    root_not_after: SystemTime,
    max_lifetime: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("issuer_not_after", &self.issuer_not_after)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// Why CA material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("cannot read the CA key: {0}")]
    Key(rcgen::Error),
    #[error("cannot read the CA certificate: {0}")]
    Cert(String),
    #[error("the CA certificate chain is empty")]
    EmptyChain,
    #[error("cannot make a certificate: {0}")]
    Generate(rcgen::Error),
}

/// Why a CSR was not signed; each maps to one gRPC status in [`super::server`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Not a PEM PKCS#10 request, or its signature does not verify.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR must ask for exactly one SAN, a URI.
    #[error("the CSR must carry exactly one subject alternative name, a spiffe:// URI; it has {0}")]
    SanCount(String),
    /// The one URI is not a SPIFFE ID.
    #[error("the CSR's URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(String),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("CSR asks for {asked}, but this CA serves trust domain {trust_domain}")]
    TrustDomain { asked: String, trust_domain: String },
    /// The SPIFFE ID is not the caller's.
    #[error("CSR asks for {asked} but the caller is {caller}")]
    NotCaller { asked: String, caller: String },
    /// A negative validity.
    #[error("validity_seconds must be 0 (the CA's default) or positive, got {0}")]
    BadValidity(i64),
    /// The issuer expires too soon to sign anything.
    #[error("the CA's issuing certificate expires too soon to sign")]
    IssuerExpiring,
    /// rcgen failed; not the caller's fault.
    #[error("cannot sign: {0}")]
    Internal(String),
}

impl SignError {
    /// A short name of the refusal: the `result` label of `ca_certificates_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedCsr(_) => "malformed_csr",
            Self::SanCount(_) => "bad_san",
            Self::NotSpiffe(_) => "not_spiffe",
            Self::TrustDomain { .. } => "wrong_trust_domain",
            Self::NotCaller { .. } => "not_caller",
            Self::BadValidity(_) => "bad_validity",
            Self::IssuerExpiring => "issuer_expiring",
            Self::Internal(_) => "internal",
        }
    }
}

// === impl Authority ===

impl Authority {
    /// An authority over `material`, signing for `trust_domain`, leaves living at most
    /// `max_lifetime`.
    pub fn new(
        material: &CaMaterial,
        trust_domain: impl Into<String>,
        max_lifetime: Duration,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::from_pem(&material.issuer_key_pem).map_err(AuthorityError::Key)?;
        let issuer_der = pem_to_der(&material.issuer_cert_pem)?;
        let issuer_not_after = not_after(&issuer_der)?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key)
            .map_err(|e| AuthorityError::Cert(e.to_string()))?;
        let root_pem = material.chain.last().ok_or(AuthorityError::EmptyChain)?;
        let root_not_after = not_after(&pem_to_der(root_pem)?)?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            issuer,
            chain: material.chain.clone(),
            issuer_not_after,
            root_not_after,
            max_lifetime,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root this CA chains to (PEM): what proxies trust.
    pub fn root_pem(&self) -> &str {
        // `new` refuses an empty chain.
        self.chain.last().map(String::as_str).unwrap_or_default()
    }

    /// When the root expires (`ca_root_expiry_timestamp_seconds`).
    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    /// The certificates above a leaf (PEM), issuer first, root last.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// A validity window of at most `lifetime` from `now`, ending no later than the issuer.
    fn window(
        &self,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(SystemTime, SystemTime), SignError> {
        let until = (now + lifetime).min(self.issuer_not_after);
        // A leaf that is already (nearly) dead is worse than a refusal: the caller retries.
        if until <= now + Duration::from_secs(1) {
            return Err(SignError::IssuerExpiring);
        }
        Ok((now - CLOCK_SKEW, until))
    }

    /// Signs `csr_pem` for `caller`: the leaf chain, leaf first and root last.
    ///
    /// `validity_seconds` is the request's field: 0 asks for the configured lifetime.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        validity_seconds: i64,
        now: SystemTime,
    ) -> Result<Vec<String>, SignError> {
        let requested = match validity_seconds {
            0 => None,
            s if s < 0 => return Err(SignError::BadValidity(s)),
            s => Some(Duration::from_secs(s.unsigned_abs())),
        };
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::MalformedCsr(e.to_string()))?;
        let asked = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_string(),
            [] => return Err(SignError::SanCount("none".into())),
            [other] => {
                return Err(SignError::SanCount(format!(
                    "one, but not a URI: {other:?}"
                )));
            }
            many => return Err(SignError::SanCount(many.len().to_string())),
        };
        let asked = SpiffeId::parse(&asked).map_err(|e| SignError::NotSpiffe(e.to_string()))?;
        if asked.trust_domain() != self.trust_domain {
            return Err(SignError::TrustDomain {
                asked: asked.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if &asked != caller {
            return Err(SignError::NotCaller {
                asked: asked.to_string(),
                caller: caller.to_string(),
            });
        }
        let lifetime = requested.map_or(self.max_lifetime, |r| r.min(self.max_lifetime));
        let (from, until) = self.window(lifetime, now)?;
        let params = leaf_params(
            vec![uri_san(&asked.to_string())?],
            &asked.to_string(),
            from,
            until,
        );
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(leaf.pem());
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// The control plane's own serving certificate: a fresh key (kept in this process) and its
    /// chain, leaf first. Not served by any API; it is what the xDS/CA listener presents.
    /// `lifetime` is not capped by the workload lifetime: short test lifetimes should not make
    /// the control plane renew every few seconds.
    pub fn issue_serving(
        &self,
        sans: &ServingSans,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<ServingCert, SignError> {
        let (from, until) = self.window(lifetime, now)?;
        let mut names = Vec::new();
        for dns in &sans.dns {
            let dns = dns
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Internal(e.to_string()))?;
            names.push(SanType::DnsName(dns));
        }
        names.extend(sans.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        names.push(uri_san(&sans.identity.to_string())?);
        let params = leaf_params(names, "weft-control", from, until);
        let key = KeyPair::generate().map_err(|e| SignError::Internal(e.to_string()))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        // The root is left out: a verifier has it already, and sending it only costs bytes.
        for pem in self.chain.iter().take(self.chain.len().saturating_sub(1)) {
            chain.push(pem_to_der(pem).map_err(|e| SignError::Internal(e.to_string()))?);
        }
        Ok(ServingCert {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after: until,
        })
    }
}

/// Names the control plane's serving certificate carries.
#[derive(Debug, Clone)]
pub struct ServingSans {
    /// DNS names proxies dial (`weft-control`, `localhost`, the Service name in Kubernetes).
    pub dns: Vec<String>,
    /// IP addresses proxies may dial directly.
    pub ips: Vec<IpAddr>,
    /// The control plane's own SPIFFE ID.
    pub identity: SpiffeId,
}

/// A certificate and key for the control plane's TLS listener.
#[derive(Debug)]
pub struct ServingCert {
    /// DER certificates, leaf first (no root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key; it stays in this process.
    pub key: PrivateKeyDer<'static>,
    /// When the leaf expires: renewal is scheduled from it.
    pub not_after: SystemTime,
}

fn uri_san(uri: &str) -> Result<SanType, SignError> {
    let uri = uri
        .try_into()
        .map_err(|e: rcgen::Error| SignError::Internal(e.to_string()))?;
    Ok(SanType::URI(uri))
}

/// Parameters of every leaf: fixed usages, a random serial, the window given.
fn leaf_params(
    sans: Vec<SanType>,
    common_name: &str,
    from: SystemTime,
    until: SystemTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    // Informational only: identity is the URI SAN, never the CN.
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = from.into();
    params.not_after = until.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// 16 random bytes with the top bit clear, so the DER integer is positive (RFC 5280 4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed root for `trust_domain`: ECDSA P-256, valid from `now` for
/// [`ROOT_LIFETIME`]. The store keeps it; a restart loads it instead of calling this again.
pub fn new_root(trust_domain: &str, now: SystemTime) -> Result<CaMaterial, AuthorityError> {
    let key = KeyPair::generate().map_err(AuthorityError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(DnType::CommonName, format!("Weft root CA ({trust_domain})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(AuthorityError::Generate)?;
    let pem = cert.pem();
    Ok(CaMaterial {
        issuer_cert_pem: pem.clone(),
        issuer_key_pem: key.serialize_pem(),
        chain: vec![pem],
    })
}

/// The first certificate of a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| AuthorityError::Cert(e.to_string()))
}

/// Every certificate of a PEM text as its own PEM block (files like `cert-chain.pem` hold
/// several). Each block must parse; text between blocks is dropped, as PEM readers do.
pub fn split_pem(pem: &str) -> Result<Vec<String>, AuthorityError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after
            .find(END)
            .ok_or_else(|| AuthorityError::Cert("a certificate block has no END line".into()))?;
        let block = format!("{}\n", &after[..end + END.len()]);
        pem_to_der(&block)?;
        out.push(block);
        rest = &after[end + END.len()..];
    }
    Ok(out)
}

/// A certificate's `notAfter`.
pub fn not_after(der: &[u8]) -> Result<SystemTime, AuthorityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| AuthorityError::Cert(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs)
        .map_err(|_| AuthorityError::Cert(format!("notAfter before 1970 ({secs})")))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// An intermediate signed by a fresh root, as Istio's `cacerts` holds them; for tests.
#[cfg(test)]
pub(crate) struct TestIntermediate {
    pub int_pem: String,
    pub int_key_pem: String,
    pub root_pem: String,
}

#[cfg(test)]
pub(crate) fn test_intermediate() -> TestIntermediate {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = int_params.signed_by(&int_key, &root).unwrap();
    TestIntermediate {
        int_pem: int.pem(),
        int_key_pem: int_key.serialize_pem(),
        root_pem: root.pem(),
    }
}

#[cfg(test)]
mod tests;
