use x509_parser::extensions::GeneralName;

use super::*;

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    // A fixed clock: every date in these tests is exact.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn mk_authority(lifetime: Duration) -> Authority {
    let root = new_root(TD, now()).unwrap();
    Authority::new(&root, TD, lifetime).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn parse(pem: &str) -> Vec<u8> {
    pem_to_der(pem).unwrap().to_vec()
}

#[test]
fn signs_a_leaf_with_exactly_the_spiffe_id() {
    let ca = mk_authority(DAY);
    let chain = ca
        .sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), 0, now())
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], ca.root_pem());
    let der = parse(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let sans = &leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(sans.general_names, vec![GeneralName::URI(REVIEWS)]);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
    let v = leaf.validity();
    let secs = |t: SystemTime| {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    };
    assert_eq!(v.not_before.timestamp(), secs(now() - CLOCK_SKEW));
    assert_eq!(v.not_after.timestamp(), secs(now() + DAY));
    // The SPIFFE ID reads back the way xDS authorization reads it.
    assert_eq!(SpiffeId::from_cert_der(&der).unwrap(), id(REVIEWS));
}

#[test]
fn lifetime_is_the_shortest_of_request_config_and_issuer() {
    let ca = mk_authority(DAY);
    let not_after = |validity: i64, at: SystemTime| {
        let chain = ca
            .sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), validity, at)
            .unwrap();
        super::not_after(&parse(&chain[0])).unwrap()
    };
    assert_eq!(not_after(5, now()), now() + Duration::from_secs(5));
    assert_eq!(not_after(10 * 86_400, now()), now() + DAY);
    // Near the root's end, the leaf ends with the root.
    let late = now() + ROOT_LIFETIME - Duration::from_secs(60);
    assert_eq!(not_after(0, late), now() + ROOT_LIFETIME);
    let dead = now() + ROOT_LIFETIME;
    assert_eq!(
        ca.sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), 0, dead),
        Err(SignError::IssuerExpiring)
    );
}

#[test]
fn a_csr_for_another_identity_is_refused_naming_both() {
    let ca = mk_authority(DAY);
    let err = ca
        .sign_csr(
            &csr(vec![uri("spiffe://cluster.local/ns/default/sa/ratings")]),
            &id(REVIEWS),
            0,
            now(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR asks for spiffe://cluster.local/ns/default/sa/ratings but the caller is \
         spiffe://cluster.local/ns/default/sa/reviews"
    );
}

#[test]
fn another_trust_domain_is_refused() {
    let ca = mk_authority(DAY);
    let other = "spiffe://evil.example/ns/default/sa/reviews";
    let err = ca
        .sign_csr(&csr(vec![uri(other)]), &id(other), 0, now())
        .unwrap_err();
    assert!(matches!(err, SignError::TrustDomain { .. }), "{err}");
}

#[test]
fn malformed_csrs_are_refused() {
    let ca = mk_authority(DAY);
    let me = id(REVIEWS);
    for garbage in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(
            matches!(
                ca.sign_csr(garbage, &me, 0, now()),
                Err(SignError::MalformedCsr(_))
            ),
            "{garbage:?}"
        );
    }
    // A well-formed CSR whose signature does not verify: its subject changed after signing.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(REVIEWS)];
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "aaaaaaaa");
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    let at = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
    der[at] = b'b';
    let tampered = pem_of_csr(&der);
    // The same bytes untampered are accepted, so the refusal is the signature's.
    der[at] = b'a';
    assert!(ca.sign_csr(&pem_of_csr(&der), &me, 0, now()).is_ok());
    let err = ca.sign_csr(&tampered, &me, 0, now()).unwrap_err();
    assert!(
        matches!(&err, SignError::MalformedCsr(m) if m.contains("signature")),
        "{err}"
    );
}

fn pem_of_csr(der: &[u8]) -> String {
    pem_encode("CERTIFICATE REQUEST", der)
}

/// PEM armour around `der` (base64, 64 columns).
fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[test]
fn only_the_public_key_is_taken_from_the_csr() {
    // A CSR asking for everything a workload must not get: CA:true, certificate signing,
    // any EKU, a subject of its own choosing.
    let ca = mk_authority(DAY);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(REVIEWS)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::Any,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Evil root");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let chain = ca.sign_csr(&csr, &id(REVIEWS), 0, now()).unwrap();
    let der = parse(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert!(!leaf.is_ca());
    let bc = leaf.basic_constraints().unwrap();
    assert!(bc.as_ref().is_none_or(|bc| !bc.value.ca), "{bc:?}");
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
    assert!(
        !leaf.subject().to_string().contains("Evil"),
        "{}",
        leaf.subject()
    );
    // The key is the CSR's.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn exactly_one_uri_san_is_required() {
    let ca = mk_authority(DAY);
    let me = id(REVIEWS);
    let dns = SanType::DnsName("reviews".try_into().unwrap());
    let ip = SanType::IpAddress("10.0.0.1".parse().unwrap());
    let email = SanType::Rfc822Name("a@b.c".try_into().unwrap());
    for sans in [
        vec![],
        vec![dns.clone()],
        vec![uri(REVIEWS), dns.clone()],
        vec![dns, uri(REVIEWS)],
        vec![uri(REVIEWS), ip.clone()],
        vec![ip],
        vec![uri(REVIEWS), email],
        vec![uri(REVIEWS), uri(REVIEWS)],
    ] {
        let err = ca.sign_csr(&csr(sans.clone()), &me, 0, now()).unwrap_err();
        assert!(matches!(err, SignError::SanCount(_)), "{sans:?}: {err}");
    }
    let err = ca
        .sign_csr(&csr(vec![uri("https://reviews")]), &me, 0, now())
        .unwrap_err();
    assert!(matches!(err, SignError::NotSpiffe(_)), "{err}");
}

#[test]
fn a_negative_validity_is_refused() {
    let ca = mk_authority(DAY);
    assert_eq!(
        ca.sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), -1, now()),
        Err(SignError::BadValidity(-1))
    );
}

#[test]
fn an_intermediate_signs_and_the_chain_runs_to_the_root() {
    let t = test_intermediate();
    let material = CaMaterial {
        issuer_cert_pem: t.int_pem.clone(),
        issuer_key_pem: t.int_key_pem.clone(),
        chain: vec![t.int_pem.clone(), t.root_pem.clone()],
    };
    let ca = Authority::new(&material, TD, DAY).unwrap();
    let chain = ca
        .sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), 0, now())
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1], t.int_pem);
    assert_eq!(chain[2], t.root_pem);
    let der = parse(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let int_der = parse(&t.int_pem);
    let (_, int_cert) = X509Certificate::from_der(&int_der).unwrap();
    assert_eq!(leaf.issuer(), int_cert.subject());
    // The root's expiry, not the intermediate's, is what the metric reports.
    assert_eq!(
        ca.root_not_after(),
        super::not_after(&parse(&t.root_pem)).unwrap()
    );
}

#[test]
fn the_serving_certificate_names_what_proxies_dial() {
    let ca = mk_authority(DAY);
    let sans = ServingSans {
        dns: vec!["weft-control".into(), "localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        identity: id("spiffe://cluster.local/ns/weft-system/sa/weft-control"),
    };
    let cert = ca.issue_serving(&sans, 7 * DAY, now()).unwrap();
    assert_eq!(cert.chain.len(), 1, "the root is not sent");
    // Not capped by the (workload) leaf lifetime.
    assert_eq!(cert.not_after, now() + 7 * DAY);
    let (_, leaf) = X509Certificate::from_der(&cert.chain[0]).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(names.contains(&GeneralName::DNSName("weft-control")));
    assert!(names.contains(&GeneralName::URI(
        "spiffe://cluster.local/ns/weft-system/sa/weft-control"
    )));
}

#[test]
fn split_pem_reads_every_block() {
    let a = new_root(TD, now()).unwrap().issuer_cert_pem;
    let b = new_root(TD, now()).unwrap().issuer_cert_pem;
    let both = split_pem(&format!("# comment\n{a}\n{b}")).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(parse(&both[0]), parse(&a));
    assert_eq!(parse(&both[1]), parse(&b));
}
