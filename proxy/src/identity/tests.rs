#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Identity rules as data: SPIFFE IDs, token files, CSRs, chain validation, secure naming,
//! failure reasons, and the rotation schedule (pure and in paused time).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::time::ASN1Time;

use super::tls::check_identity;
use super::*;
use crate::telemetry::Metrics;
use crate::transport::{ExpectedIdentities, TlsFailure, TlsReason};

const ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";

fn id() -> SpiffeId {
    SpiffeId::parse(ID).unwrap()
}

/// A throwaway CA that signs CSRs as the mesh CA would.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, "test root");
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Signs `csr_pem` for `valid_for` from now (backdated a minute); `san` overrides the
    /// CSR's SAN, as a buggy or hostile CA might.
    pub(crate) fn sign(
        &self,
        csr_pem: &str,
        valid_for: Duration,
        san: Option<&str>,
    ) -> Vec<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = unix(SystemTime::now());
        let valid = i64::try_from(valid_for.as_secs()).unwrap();
        csr.params.not_before = ASN1Time::from_timestamp(now - 60).unwrap().to_datetime();
        csr.params.not_after = ASN1Time::from_timestamp(now + valid).unwrap().to_datetime();
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(san) = san {
            csr.params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
        }
        let leaf = csr.signed_by(&self.issuer).unwrap();
        vec![leaf.pem(), self.issuer.pem()]
    }

    /// A validated certificate for `id`, as the rotation loop would hold it.
    pub(crate) fn certified(&self, id: &str) -> Certified {
        let id = SpiffeId::parse(id).unwrap();
        let kc = new_key_and_csr(&id).unwrap();
        let chain = self.sign(&kc.csr_pem, Duration::from_secs(3600), None);
        validate_chain(&id, &kc.key, &chain, SystemTime::now()).unwrap()
    }
}

// === SpiffeId, TokenFile ===

#[test]
fn spiffe_ids() {
    let i = id();
    assert_eq!(i.trust_domain(), "cluster.local");
    assert_eq!(i.namespace(), Some("default"));
    for bad in [
        "",
        "spiffe://",
        "spiffe://td",
        "http://x/y",
        "spiffe:///ns/a",
        "spiffe://a/b c",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(spiffe_namespace("spiffe://td/other/x"), None);
}

#[test]
fn token_files() {
    let (t, i) = TokenFile::parse(
        "t.json",
        r#"{"token":"s3cret","identity":"spiffe://cluster.local/ns/default/sa/productpage","node_id":"productpage.default"}"#,
    )
    .unwrap();
    assert_eq!(i, id());
    assert_eq!(t.node_id, "productpage.default");
    assert!(
        !format!("{t:?}").contains("s3cret"),
        "the token must not be logged"
    );

    let e = TokenFile::parse("t.json", r#"{"token":"","identity":"spiffe://a/b"}"#).unwrap_err();
    assert!(e.to_string().contains("\"token\" is empty"), "{e}");
    let e = TokenFile::parse("t.json", r#"{"token":"x","identity":"reviews"}"#).unwrap_err();
    assert!(e.to_string().contains("not a SPIFFE ID"), "{e}");
    let e = TokenFile::parse("t.json", "nope").unwrap_err();
    assert!(e.to_string().starts_with("token file t.json:"), "{e}");
}

// === CSR and chain validation ===

#[test]
fn the_csr_asks_for_exactly_the_spiffe_id() {
    let kc = new_key_and_csr(&id()).unwrap();
    let csr = CertificateSigningRequestParams::from_pem(&kc.csr_pem).unwrap();
    assert_eq!(csr.params.subject_alt_names.len(), 1);
    assert!(matches!(&csr.params.subject_alt_names[0], SanType::URI(u) if u.as_str() == ID));
    assert!(
        !format!("{kc:?}").contains("PRIVATE"),
        "the key must not be logged"
    );
}

#[test]
fn a_good_chain_is_accepted_and_describes_itself() {
    let ca = TestCa::new();
    let kc = new_key_and_csr(&id()).unwrap();
    let chain = ca.sign(&kc.csr_pem, Duration::from_secs(3600), None);
    let c = validate_chain(&id(), &kc.key, &chain, SystemTime::now()).unwrap();
    assert_eq!(c.chain.len(), 2);
    let remaining = c.remaining(SystemTime::now());
    assert!(remaining > Duration::from_secs(3590) && remaining <= Duration::from_secs(3600));
    assert!(!c.serial.is_empty());
    let info = serde_json::to_string(&c.info()).unwrap();
    assert!(info.contains(ID) && !info.contains("PRIVATE"), "{info}");
    assert!(!format!("{c:?}").contains("PRIVATE"));
    assert_eq!(spiffe_id_of(&c.chain[0]).as_deref(), Some(ID));
}

#[test]
fn chains_that_do_not_fit_are_refused() {
    let ca = TestCa::new();
    let kc = new_key_and_csr(&id()).unwrap();
    let hour = Duration::from_secs(3600);

    let other = ca.sign(
        &kc.csr_pem,
        hour,
        Some("spiffe://cluster.local/ns/default/sa/admin"),
    );
    let e = validate_chain(&id(), &kc.key, &other, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("sa/admin"), "{e}");

    let not_ours = new_key_and_csr(&id()).unwrap();
    let chain = ca.sign(&not_ours.csr_pem, hour, None);
    let e = validate_chain(&id(), &kc.key, &chain, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("public key"), "{e}");

    let chain = ca.sign(&kc.csr_pem, hour, None);
    let later = SystemTime::now() + Duration::from_secs(7200);
    let e = validate_chain(&id(), &kc.key, &chain, later).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");

    let e = validate_chain(&id(), &kc.key, &[], SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = validate_chain(&id(), &kc.key, &["junk".into()], SystemTime::now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadChain(_)), "{e}");
}

// === Secure naming and failure reasons ===

#[test]
fn secure_naming_names_expected_and_presented() {
    let expected = ExpectedIdentities::new(vec![
        "spiffe://cluster.local/ns/default/sa/reviews".into(),
        "spiffe://cluster.local/ns/default/sa/reviews-v2".into(),
    ]);
    assert!(
        check_identity(
            &expected,
            Some("spiffe://cluster.local/ns/default/sa/reviews")
        )
        .is_ok()
    );

    let e = check_identity(
        &expected,
        Some("spiffe://cluster.local/ns/default/sa/ratings"),
    )
    .unwrap_err();
    assert_eq!(e.reason, TlsReason::IdentityMismatch);
    assert!(
        e.detail
            .contains("got spiffe://cluster.local/ns/default/sa/ratings"),
        "{e}"
    );
    assert!(e.detail.contains("sa/reviews-v2"), "{e}");

    let e = check_identity(
        &expected,
        Some("spiffe://evil.example/ns/default/sa/reviews"),
    )
    .unwrap_err();
    assert_eq!(e.reason, TlsReason::UnknownTrustDomain);

    let e = check_identity(&expected, None).unwrap_err();
    assert_eq!(e.reason, TlsReason::NoSpiffeId);
}

#[test]
fn rustls_errors_map_to_readable_reasons() {
    use rustls::{CertificateError as C, Error as E};
    let ours = TlsFailure::new(TlsReason::IdentityMismatch, "expected a, got b");
    assert_eq!(TlsFailure::from_rustls(&ours.clone().into_rustls()), ours);
    let cases = [
        (
            E::InvalidCertificate(C::UnknownIssuer),
            TlsReason::UnknownIssuer,
        ),
        (
            E::InvalidCertificate(C::Expired),
            TlsReason::ExpiredCertificate,
        ),
        (E::NoCertificatesPresented, TlsReason::NoClientCertificate),
        (
            E::AlertReceived(rustls::AlertDescription::BadCertificate),
            TlsReason::PeerRejected,
        ),
        (E::HandshakeNotComplete, TlsReason::HandshakeFailed),
        (
            E::AlertReceived(rustls::AlertDescription::ProtocolVersion),
            TlsReason::HandshakeFailed,
        ),
    ];
    for (e, want) in cases {
        assert_eq!(TlsFailure::from_rustls(&e).reason, want, "{e:?}");
    }
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, ours.clone().into_rustls());
    assert_eq!(TlsFailure::from_io(&io), ours);
}

// === Rotation ===

#[test]
fn refresh_is_about_half_the_remaining_lifetime() {
    let day = Duration::from_secs(86_400);
    assert_eq!(refresh_delay(day, 0.5), day / 2);
    assert!(refresh_delay(day, 0.0) >= day.mul_f64(0.449));
    assert!(refresh_delay(day, 0.999) <= day.mul_f64(0.551));
    assert_eq!(
        refresh_delay(Duration::ZERO, 0.5),
        Duration::from_millis(100)
    );
}

#[test]
fn retries_back_off_exponentially_with_a_cap() {
    let p = RetryPolicy {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
    };
    assert_eq!(retry_delay(&p, 1, 0.999_999).as_millis(), 499);
    assert_eq!(retry_delay(&p, 1, 0.0), Duration::from_millis(250));
    assert_eq!(retry_delay(&p, 3, 0.0), Duration::from_secs(1));
    assert_eq!(retry_delay(&p, 30, 0.0), Duration::from_secs(15));
    assert!(retry_delay(&p, 30, 0.999) <= Duration::from_secs(30));
}

/// A CA that signs with [`TestCa`] (or fails on demand) and counts calls.
struct FakeCa {
    ca: TestCa,
    calls: AtomicUsize,
    failing: AtomicBool,
    lifetime: Duration,
}

impl CaClient for std::sync::Arc<FakeCa> {
    fn create_certificate(
        &self,
        csr_pem: String,
        _validity: Duration,
    ) -> BoxFuture<'_, Result<Vec<String>, CaError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = if self.failing.load(Ordering::SeqCst) {
            Err(CaError("Unavailable: CA down".into()))
        } else {
            Ok(self.ca.sign(&csr_pem, self.lifetime, None))
        };
        Box::pin(async move { r })
    }
}

#[tokio::test(start_paused = true)]
async fn rotation_runs_at_half_life_and_failures_keep_the_certificate() {
    // Paused time: tokio's clock jumps from timer to timer; certificate times are wall-clock
    // and do not move, so each certificate has ~100 s left whenever it is looked at.
    let ca = std::sync::Arc::new(FakeCa {
        ca: TestCa::new(),
        calls: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
        lifetime: Duration::from_secs(100),
    });
    let store = CertStore::default();
    let metrics = std::sync::Arc::new(Metrics::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        Rotator {
            ca: ca.clone(),
            id: id(),
            store: store.clone(),
            metrics: metrics.clone(),
            retry: RetryPolicy::default(),
            validity: Duration::ZERO,
        }
        .run(shutdown.clone()),
    );
    let mut rx = store.subscribe();
    rx.wait_for(Option::is_some).await.unwrap();
    let first = store.current().unwrap();
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);

    // Renewal falls in [45 s, 55 s] of ~100 s remaining.
    tokio::time::sleep(Duration::from_secs(44)).await;
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1, "renewed too early");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        ca.calls.load(Ordering::SeqCst),
        2,
        "not renewed at half life"
    );
    let second = store.current().unwrap();
    assert_ne!(first.serial, second.serial);

    // The CA goes down: the next renewal (at most 110 s in) fails, then retries back off
    // (0.25-0.5 s, 0.5-1 s, 1-2 s, ... capped at 15-30 s): between 7 and 10 attempts by
    // 156 s, while the valid certificate stays in place.
    ca.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let failures = ca.calls.load(Ordering::SeqCst) - 2;
    assert!((7..=10).contains(&failures), "{failures} failed attempts");
    assert_eq!(store.current().unwrap().serial, second.serial);
    let m = metrics.encode();
    assert!(
        m.contains(r#"weft_identity_cert_rotations_total{result="failure"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"weft_identity_cert_rotations_total{result="success"} 2"#),
        "{m}"
    );
    assert!(
        !m.contains("weft_identity_cert_expiry_timestamp_seconds 0"),
        "{m}"
    );

    // It comes back: the next retry succeeds and the backoff resets.
    ca.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_ne!(store.current().unwrap().serial, second.serial);
    shutdown.cancel();
}

// === Verifiers, through real (in-memory) TLS handshakes ===

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use crate::model::{Parts, SharedSnapshot, Snapshot};
use crate::transport::{ChainVerifier, MeshClientTls, MeshServerTls};

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// A leaf with exactly `sans`, both EKUs, valid from `from` to `to` seconds from now,
    /// signed by this CA; with its key (as a rustls signer) or, given `signer`, another one.
    fn leaf(&self, sans: &[SanType], from: i64, to: i64, signer: Option<&KeyPair>) -> CertifiedKey {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans.to_vec();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = unix(SystemTime::now());
        p.not_before = ASN1Time::from_timestamp(now + from).unwrap().to_datetime();
        p.not_after = ASN1Time::from_timestamp(now + to).unwrap().to_datetime();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::try_from(signer.unwrap_or(&key).serialize_der()).unwrap();
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der).unwrap();
        CertifiedKey::new(vec![cert.der().clone()], signer)
    }

    fn mesh_tls(&self, me: &str) -> MeshTls {
        let store = CertStore::default();
        store.publish(Arc::new(self.certified(me)));
        let bundle = TrustBundle::from_pems(&[self.issuer.pem()]).unwrap();
        let snap = SharedSnapshot::new(Snapshot::build(&Parts::default()));
        MeshTls::new(store, Arc::new(Trust::new(bundle, snap))).unwrap()
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A TLS 1.3 server presenting `key` (no client auth).
fn server_with(key: CertifiedKey) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// A TLS 1.3 client presenting `key` that trusts any server chaining to `ca`.
fn client_with(ca: &TestCa, key: CertifiedKey) -> Arc<rustls::ClientConfig> {
    let bundle = TrustBundle::from_pems(&[ca.issuer.pem()]).unwrap();
    let verifier = ChainVerifier::new(bundle.roots, provider(), "any", Box::new(|_| Ok(())));
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    Arc::new(cfg)
}

/// One handshake over an in-memory pipe, plus one byte each way (TLS 1.3 clients learn of a
/// refused certificate only after their side is done). Returns each side's verdict; the
/// server's carries the client's SPIFFE ID as `MeshTls` reads it.
async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> (Result<(), TlsFailure>, Result<Option<String>, TlsFailure>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let client = async move {
        let mut t = tokio_rustls::TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        t.write_all(b"x")
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        let mut b = [0u8; 1];
        t.read_exact(&mut b)
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        Ok(())
    };
    let server = async move {
        let mut t = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        let id = t
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().and_then(spiffe_id_of));
        let mut b = [0u8; 1];
        t.read_exact(&mut b)
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        t.write_all(b"y")
            .await
            .map_err(|e| TlsFailure::from_io(&e))?;
        t.flush().await.map_err(|e| TlsFailure::from_io(&e))?;
        Ok(id)
    };
    tokio::join!(client, server)
}

#[test]
fn a_spiffe_id_is_the_one_and_only_uri_san() {
    let ca = TestCa::new();
    let id_of = |sans: &[SanType]| {
        let k = ca.leaf(sans, -60, 3600, None);
        spiffe_id_of(&k.cert[0])
    };
    assert_eq!(id_of(&[uri(SERVER)]).as_deref(), Some(SERVER));
    // DNS SANs beside it do not matter; another URI SAN does.
    assert_eq!(
        id_of(&[SanType::DnsName("reviews".try_into().unwrap()), uri(SERVER)]).as_deref(),
        Some(SERVER)
    );
    assert_eq!(id_of(&[uri(SERVER), uri("https://reviews.example/")]), None);
    assert_eq!(id_of(&[uri("https://reviews.example/"), uri(SERVER)]), None);
    assert_eq!(id_of(&[uri(SERVER), uri(ID)]), None);
    assert_eq!(id_of(&[uri("spiffe://cluster.local")]), None);
    assert_eq!(id_of(&[]), None);
}

#[tokio::test]
async fn the_mesh_client_verifies_chain_key_validity_and_the_one_spiffe_id() {
    let ca = TestCa::new();
    let client = ca.mesh_tls(ID);
    let expected = ExpectedIdentities::new(vec![SERVER.into()]);
    let cfg = || client.client_config(&expected).unwrap();

    let (c, s) = handshake(cfg(), server_with(ca.leaf(&[uri(SERVER)], -60, 3600, None))).await;
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(None), "this server asked for no client certificate");

    // The expected ID, plus a second URI SAN: not an SVID, so no SPIFFE ID.
    let two = ca.leaf(
        &[uri(SERVER), uri("https://evil.example/")],
        -60,
        3600,
        None,
    );
    let (c, _) = handshake(cfg(), server_with(two)).await;
    assert_eq!(c.unwrap_err().reason, TlsReason::NoSpiffeId);

    // The right certificate, but the server does not hold its key: CertificateVerify fails.
    let thief = ca.leaf(
        &[uri(SERVER)],
        -60,
        3600,
        Some(&KeyPair::generate().unwrap()),
    );
    let (c, _) = handshake(cfg(), server_with(thief)).await;
    let e = c.unwrap_err();
    assert_eq!(e.reason, TlsReason::UnknownIssuer, "{e}");

    let expired = ca.leaf(&[uri(SERVER)], -7200, -3600, None);
    let (c, _) = handshake(cfg(), server_with(expired)).await;
    assert_eq!(c.unwrap_err().reason, TlsReason::ExpiredCertificate);

    let other_root = TestCa::new().leaf(&[uri(SERVER)], -60, 3600, None);
    let (c, _) = handshake(cfg(), server_with(other_root)).await;
    assert_eq!(c.unwrap_err().reason, TlsReason::UnknownIssuer);

    // TLS 1.2 is refused between proxies, whatever the certificate.
    let tls12 = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(ca.leaf(
            &[uri(SERVER)],
            -60,
            3600,
            None,
        ))));
    let (c, _) = handshake(cfg(), Arc::new(tls12)).await;
    assert_eq!(c.unwrap_err().reason, TlsReason::HandshakeFailed);
}

#[tokio::test]
async fn the_mesh_server_verifies_chain_key_validity_and_the_one_spiffe_id() {
    let ca = TestCa::new();
    let server = ca.mesh_tls(SERVER);
    let cfg = || server.server_config().unwrap();

    let (c, s) = handshake(
        client_with(&ca, ca.leaf(&[uri(ID)], -60, 3600, None)),
        cfg(),
    )
    .await;
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(Some(ID.to_string())));

    let refused = |leaf: CertifiedKey| {
        let client = client_with(&ca, leaf);
        async { handshake(client, cfg()).await.1.unwrap_err().reason }
    };
    let two = ca.leaf(&[uri(ID), uri("https://evil.example/")], -60, 3600, None);
    assert_eq!(refused(two).await, TlsReason::NoSpiffeId);
    let thief = ca.leaf(&[uri(ID)], -60, 3600, Some(&KeyPair::generate().unwrap()));
    assert_eq!(refused(thief).await, TlsReason::UnknownIssuer);
    let expired = ca.leaf(&[uri(ID)], -7200, -3600, None);
    assert_eq!(refused(expired).await, TlsReason::ExpiredCertificate);
    let other_root = TestCa::new().leaf(&[uri(ID)], -60, 3600, None);
    assert_eq!(refused(other_root).await, TlsReason::UnknownIssuer);

    // A TLS 1.2 client is refused.
    let tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainVerifier::new(
            TrustBundle::from_pems(&[ca.issuer.pem()]).unwrap().roots,
            provider(),
            "any",
            Box::new(|_| Ok(())),
        )))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ca.leaf(
            &[uri(ID)],
            -60,
            3600,
            None,
        ))));
    let (_, s) = handshake(Arc::new(tls12), cfg()).await;
    assert_eq!(s.unwrap_err().reason, TlsReason::HandshakeFailed);
}

#[tokio::test]
async fn a_rotation_changes_new_handshakes_only() {
    let ca = TestCa::new();
    let server = ca.mesh_tls(SERVER);
    let client = ca.mesh_tls(ID);
    let expected = ExpectedIdentities::new(vec![SERVER.into()]);
    let serial_seen = |cfg: Arc<rustls::ClientConfig>, srv: Arc<rustls::ServerConfig>| async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (c, s) = tokio::join!(
            tokio_rustls::TlsConnector::from(cfg).connect(name, c),
            tokio_rustls::TlsAcceptor::from(srv).accept(s)
        );
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let leaf: CertificateDer<'static> = c.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let serial = x.raw_serial_as_string().replace(':', "");
        // Keep the connection and prove it still carries bytes later.
        c.write_all(b"1").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        (serial, c, s)
    };
    let before = server.store().current().unwrap().serial.clone();
    let (seen, mut c1, mut s1) = serial_seen(
        client.client_config(&expected).unwrap(),
        server.server_config().unwrap(),
    )
    .await;
    assert_eq!(seen, before);

    server.store().publish(Arc::new(ca.certified(SERVER)));
    let after = server.store().current().unwrap().serial.clone();
    assert_ne!(before, after);
    let (seen, _c2, _s2) = serial_seen(
        client.client_config(&expected).unwrap(),
        server.server_config().unwrap(),
    )
    .await;
    assert_eq!(seen, after, "a new handshake presents the new certificate");
    let shown = format!("{server:?}");
    assert!(
        !shown.contains("PRIVATE") && !shown.contains(server.store().current().unwrap().key_pem()),
        "Debug of the TLS state must not show the key: {shown}"
    );

    // The connection made before the rotation is untouched.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s1.write_all(b"2").await.unwrap();
    s1.flush().await.unwrap();
    let mut b = [0u8; 1];
    c1.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"2");
}
