//! rustls configs for the mesh hop, built on the *current* certificate and trust bundle.
//!
//! - Our certificate is picked per handshake by [`CurrentCert`] (a `ResolvesServerCert` and
//!   `ResolvesClientCert` reading the [`CertStore`]), so a rotation needs no config rebuild
//!   and established connections keep the certificate they were made with.
//! - The trust bundle is `Mesh.trust_bundle` from xDS (several roots during a root rotation),
//!   or the bootstrap `--ca-root` until xDS sends one; [`Trust`] caches the parsed roots per
//!   snapshot so a handshake parses nothing.
//! - Server verification (client side of the hop) is the transport's [`ChainVerifier`]:
//!   webpki's chain check against the bundle, *without* a DNS name check (mesh certificates
//!   carry only a SPIFFE URI SAN), followed by secure naming: the SPIFFE ID must be one of the
//!   identities expected for the destination, compared whole.
//! - Client verification (inbound) is webpki's client verifier on the current bundle, then a
//!   SPIFFE ID is required.
//! - A SPIFFE ID is the certificate's one and only URI SAN ([`spiffe_id_of`]).
//! - Handshake signatures are always rustls' webpki helpers (`handshake_signatures!`).
//! - TLS 1.3 only, ALPN "h2": both ends are Weft proxies. The client also offers
//!   [`MESH_ALPN`] first, so an intercepting inbound can tell the mesh hop from an
//!   application's own TLS; the server selects only "h2", so the wire protocol is unchanged.
//!
//! Failures are [`TlsFailure`]s wrapped in rustls errors, so both ends report a readable,
//! stable reason (identity mismatch names expected and presented IDs).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertStore;
use super::csr::uri_sans;
use crate::detect::MESH_ALPN;
use crate::model::{Mesh, SharedSnapshot};
use crate::transport::{
    ChainVerifier, ExpectedIdentities, MeshClientTls, MeshServerTls, TlsFailure, TlsReason,
    handshake_signatures,
};

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE ID of a DER certificate: its URI SAN, when it has exactly one and that one is
/// a `spiffe://` ID (an X.509-SVID carries exactly one URI SAN). A certificate with any other
/// URI SAN beside it has no SPIFFE ID: which of several names a peer "is" is not ours to pick.
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match uri_sans(&cert).as_slice() {
        [one] if super::SpiffeId::parse(one).is_ok() => Some((*one).to_string()),
        _ => None,
    }
}

// === TrustBundle, Trust ===

/// Parsed roots, and the client verifier built on them (building it is not free).
#[derive(Debug)]
pub struct TrustBundle {
    pub roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustBundle {
    pub fn from_pems<S: AsRef<str>>(pems: &[S]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for pem in pems {
            for c in CertificateDer::pem_slice_iter(pem.as_ref().as_bytes()) {
                let c = c.map_err(|e| format!("not a PEM certificate: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("not a usable root: {e}"))?;
            }
        }
        if roots.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("cannot build a verifier: {e}"))?;
        Ok(Self {
            roots,
            client_verifier,
        })
    }
}

/// The trust bundle in force: xDS's `Mesh.trust_bundle` when it has one, else the bootstrap.
#[derive(Debug)]
pub struct Trust {
    bootstrap: Arc<TrustBundle>,
    snapshot: SharedSnapshot,
    /// The bundle parsed from the last `Mesh` seen, keyed by that `Arc<Mesh>`.
    cache: ArcSwapOption<(Arc<Mesh>, Arc<TrustBundle>)>,
}

impl Trust {
    pub fn new(bootstrap: TrustBundle, snapshot: SharedSnapshot) -> Self {
        Self {
            bootstrap: Arc::new(bootstrap),
            snapshot,
            cache: ArcSwapOption::empty(),
        }
    }

    pub fn current(&self) -> Arc<TrustBundle> {
        let snap = self.snapshot.load();
        let Some(mesh) = snap.mesh.as_ref().filter(|m| !m.trust_bundle.is_empty()) else {
            return self.bootstrap.clone();
        };
        if let Some(c) = self.cache.load().as_ref()
            && Arc::ptr_eq(&c.0, mesh)
        {
            return c.1.clone();
        }
        match TrustBundle::from_pems(&mesh.trust_bundle) {
            Ok(b) => {
                let b = Arc::new(b);
                self.cache.store(Some(Arc::new((mesh.clone(), b.clone()))));
                b
            }
            Err(e) => {
                // Validated at apply time, so this is not expected; keep the bootstrap roots.
                tracing::warn!(error = %e, "unusable trust bundle from xDS; using --ca-root");
                self.bootstrap.clone()
            }
        }
    }
}

// === CurrentCert ===

/// Presents whatever certificate the store holds at handshake time.
#[derive(Debug)]
struct CurrentCert(CertStore);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === secure naming ===

/// Secure naming, pure: is `presented` one of `expected`? The failure names both.
pub fn check_identity(
    expected: &ExpectedIdentities,
    presented: Option<&str>,
) -> Result<(), TlsFailure> {
    let Some(id) = presented else {
        return Err(TlsFailure::new(
            TlsReason::NoSpiffeId,
            format!(
                "expected {expected}, but the peer's certificate has no SPIFFE ID (exactly one \
                 spiffe:// URI SAN)"
            ),
        ));
    };
    if expected.contains(id) {
        return Ok(());
    }
    let td = super::trust_domain(id);
    let reason = if expected.ids().iter().any(|e| super::trust_domain(e) == td) {
        TlsReason::IdentityMismatch
    } else {
        TlsReason::UnknownTrustDomain
    };
    Err(TlsFailure::new(
        reason,
        format!("expected {expected}, got {id}"),
    ))
}

/// Client side of the hop: chain to the bundle, then secure naming (no DNS name check: the
/// SPIFFE ID is the name).
fn server_verifier(
    roots: Arc<RootCertStore>,
    expected: ExpectedIdentities,
    provider: Arc<CryptoProvider>,
) -> ChainVerifier {
    ChainVerifier::new(
        roots,
        provider,
        "secure naming",
        Box::new(move |leaf| check_identity(&expected, spiffe_id_of(leaf).as_deref())),
    )
}

// === SpiffeClientVerifier ===

/// Inbound: a client certificate is required, chaining to the current bundle, with a SPIFFE ID.
#[derive(Debug)]
struct SpiffeClientVerifier {
    trust: Arc<Trust>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle changes at run time and hints are optional; our clients ignore them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        if spiffe_id_of(end_entity).is_none() {
            return Err(TlsFailure::new(
                TlsReason::NoSpiffeId,
                "the client's certificate has no SPIFFE ID",
            )
            .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

// === MeshTls ===

/// Both sides of mesh mTLS for one proxy.
#[derive(Debug)]
pub struct MeshTls {
    store: CertStore,
    trust: Arc<Trust>,
    provider: Arc<CryptoProvider>,
    /// Built once: its resolver and verifier read the current certificate and bundle.
    server: Arc<rustls::ServerConfig>,
}

impl MeshTls {
    pub fn new(store: CertStore, trust: Arc<Trust>) -> Result<Self, rustls::Error> {
        let provider = provider();
        let verifier = Arc::new(SpiffeClientVerifier {
            trust: trust.clone(),
            provider: provider.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCert(store.clone())));
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            store,
            trust,
            provider,
            server: Arc::new(server),
        })
    }

    pub fn store(&self) -> &CertStore {
        &self.store
    }
}

impl MeshClientTls for MeshTls {
    fn client_config(
        &self,
        expected: &ExpectedIdentities,
    ) -> Result<Arc<rustls::ClientConfig>, TlsFailure> {
        if self.store.current().is_none() {
            return Err(TlsFailure::new(
                TlsReason::NoLocalCertificate,
                "this proxy has no certificate yet (the CA has not answered)",
            ));
        }
        let verifier = Arc::new(server_verifier(
            self.trust.current().roots.clone(),
            expected.clone(),
            self.provider.clone(),
        ));
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsFailure::new(TlsReason::HandshakeFailed, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentCert(self.store.clone())));
        // The marker first, then what the server selects (it never selects the marker).
        cfg.alpn_protocols = vec![MESH_ALPN.to_vec(), ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl MeshServerTls for MeshTls {
    fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.store.current().map(|_| self.server.clone())
    }

    fn peer_identity(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<str>> {
        chain.first().and_then(spiffe_id_of).map(Arc::from)
    }
}
