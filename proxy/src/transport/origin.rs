//! TLS origination (DestinationRule `tls.mode: SIMPLE`): the app speaks plaintext to its
//! sidecar, and the sidecar opens TLS to an endpoint (usually a server outside the mesh).
//!
//! - Verification: webpki's chain check against `ca_certificates` (or the compiled-in Mozilla
//!   roots), then either one of `subject_alt_names` (DNS or URI SAN) or, without them, the
//!   usual hostname check against the SNI. `insecure_skip_verify` checks nothing but the
//!   handshake signatures.
//! - ALPN: `h2` when the app spoke h2, else `http/1.1`; none for CONNECT (opaque bytes).
//! - Pooling: the connector's HTTP/1.1 and HTTP/2 pools key connections by (endpoint
//!   address, TLS settings, dial profile), so a connection verified under one cluster's
//!   settings never serves another's.
//!
//! The rustls config is built on a dial only; the snapshot already loaded the roots.

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::connect::AppProtocol;
use super::dial::TlsDial;
use super::tls::{ChainVerifier, TlsFailure, TlsReason, handshake_signatures};
use crate::model::{SimpleTls, TlsRoots};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mozilla's roots (webpki-roots), parsed once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut r = RootCertStore::empty();
            r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(r)
        })
        .clone()
}

fn roots(t: &SimpleTls) -> Result<Arc<RootCertStore>, TlsFailure> {
    match &t.roots {
        TlsRoots::System => Ok(system_roots()),
        TlsRoots::Certs(certs) => {
            let mut r = RootCertStore::empty();
            for c in certs.iter() {
                r.add(c.clone()).map_err(|e| {
                    TlsFailure::new(
                        TlsReason::HandshakeFailed,
                        format!("ca_certificates holds an unusable root: {e}"),
                    )
                })?;
            }
            Ok(Arc::new(r))
        }
    }
}

/// What a dial under `t` needs (for the pools' [`TlsConfigFn`](super::dial::TlsConfigFn)):
/// the config offering `alpn`, and the SNI. `proto` `None`: no ALPN (opaque CONNECT bytes).
pub(super) fn dial_settings(
    t: &SimpleTls,
    proto: Option<AppProtocol>,
) -> Result<TlsDial, TlsFailure> {
    let alpn: Option<&[u8]> = proto.map(|p| match p {
        AppProtocol::H2 => &b"h2"[..],
        AppProtocol::Http1 => &b"http/1.1"[..],
    });
    Ok((client_config(t, alpn)?, server_name(t)?))
}

/// The SNI (and name to verify): `UpstreamTls.sni`, else the cluster's service host.
pub(super) fn server_name(t: &SimpleTls) -> Result<ServerName<'static>, TlsFailure> {
    ServerName::try_from(t.server_name.clone()).map_err(|e| {
        TlsFailure::new(
            TlsReason::HandshakeFailed,
            format!(
                "{:?} cannot be used as the TLS server name: {e}",
                t.server_name
            ),
        )
    })
}

/// The rustls config for one dial under `t`, offering `alpn`.
pub fn client_config(
    t: &SimpleTls,
    alpn: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, TlsFailure> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(NoVerifier {
            provider: provider.clone(),
        })
    } else if !t.subject_alt_names.is_empty() {
        // Chain to the roots, then one of the wanted SANs instead of the hostname check.
        let sans = t.subject_alt_names.clone();
        Arc::new(ChainVerifier::new(
            roots(t)?,
            provider.clone(),
            "subject_alt_names",
            Box::new(move |leaf| check_sans(leaf, &sans)),
        ))
    } else {
        WebPkiServerVerifier::builder_with_provider(roots(t)?, provider.clone())
            .build()
            .map_err(|e| TlsFailure::new(TlsReason::HandshakeFailed, e.to_string()))?
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFailure::new(TlsReason::HandshakeFailed, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    Ok(Arc::new(cfg))
}

// === verifiers ===

/// Does the certificate carry one of `wanted` as a DNS SAN (wildcards honoured) or URI SAN?
pub fn check_sans(der: &CertificateDer<'_>, wanted: &[String]) -> Result<(), TlsFailure> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        TlsFailure::new(
            TlsReason::HandshakeFailed,
            format!("cannot parse the certificate: {e}"),
        )
    })?;
    let mut presented = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => presented.push(("dns", d.to_string())),
                GeneralName::URI(u) => presented.push(("uri", u.to_string())),
                _ => {}
            }
        }
    }
    let ok = wanted.iter().any(|w| {
        presented.iter().any(|(kind, p)| match *kind {
            "dns" => dns_matches(p, w),
            _ => p == w,
        })
    });
    if ok {
        return Ok(());
    }
    let shown: Vec<&str> = presented.iter().map(|(_, p)| p.as_str()).collect();
    Err(TlsFailure::new(
        TlsReason::NameMismatch,
        format!(
            "the server's certificate carries none of the subject_alt_names [{}] (it has [{}])",
            wanted.join(", "),
            shown.join(", ")
        ),
    ))
}

/// A DNS SAN `pattern` (possibly `*.domain`) against a wanted `name`, ignoring case.
fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(domain), Some((label, rest))) => {
            !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(domain)
        }
        _ => false,
    }
}

/// `insecure_skip_verify`: accepts any certificate. The handshake signatures are still
/// checked (the server must hold the key of the certificate it sent), though that proves
/// nothing about who it is.
#[derive(Debug)]
struct NoVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
