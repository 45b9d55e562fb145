//! Key and CSR creation, and the checks on what the CA sends back. Pure: no I/O, no clock
//! except the `now` passed in, so every rule is a `#[test]`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Certified, IdentityError, SpiffeId};

/// A fresh key and the CSR that asks for `id` with it.
pub struct KeyAndCsr {
    pub key: KeyPair,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// ECDSA P-256 key and a CSR whose only SAN is the URI `id` (the CA contract) and whose
/// subject is empty (SPIFFE puts the identity in the SAN, not the subject).
pub fn new_key_and_csr(id: &SpiffeId) -> Result<KeyAndCsr, IdentityError> {
    let e = |e: rcgen::Error| IdentityError::Csr(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(e)?)];
    let csr = params.serialize_request(&key).map_err(e)?;
    let csr_pem = csr.pem().map_err(e)?;
    Ok(KeyAndCsr { key, csr_pem })
}

/// Checks the CA's answer and builds the [`Certified`]: the leaf must carry exactly `id` as
/// its URI SAN, be valid at `now`, and hold *our* public key (a CA bug or a mix-up of answers
/// must not leave us presenting a certificate we cannot sign for).
pub fn validate_chain(
    id: &SpiffeId,
    key: &KeyPair,
    chain_pem: &[String],
    now: SystemTime,
) -> Result<Certified, IdentityError> {
    let bad = |s: String| IdentityError::BadChain(s);
    let mut chain = Vec::new();
    for pem in chain_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(c.map_err(|e| bad(format!("not a PEM certificate: {e}")))?);
        }
    }
    let leaf_der = chain
        .first()
        .ok_or_else(|| bad("the chain is empty".into()))?;
    let (_, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| bad(format!("the leaf is not X.509: {e}")))?;

    let uris = uri_sans(&leaf);
    if uris != [id.as_str()] {
        return Err(bad(format!(
            "the leaf's URI SANs are {uris:?}, expected exactly [{:?}]",
            id.as_str()
        )));
    }
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad("the leaf does not hold this proxy's public key".into()));
    }
    let not_before = from_unix(leaf.validity().not_before.timestamp());
    let not_after = from_unix(leaf.validity().not_after.timestamp());
    if now >= not_after {
        return Err(bad(format!(
            "the leaf expired at {} (unix), before it arrived",
            leaf.validity().not_after.timestamp()
        )));
    }

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&key_der)
        .map_err(|e| IdentityError::Csr(format!("rustls refuses the key: {e}")))?;
    let serial = leaf.raw_serial_as_string().replace(':', "");
    let certified_key = Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), signer));
    Ok(Certified {
        id: id.clone(),
        chain_pem: chain_pem.join("\n"),
        chain,
        certified_key,
        key_pem: key.serialize_pem().into(),
        not_before,
        not_after,
        serial,
    })
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
