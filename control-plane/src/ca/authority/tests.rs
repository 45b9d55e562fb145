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
    // A CSR whose signature does not match its key: swap in another request's key bytes.
    let good = csr(vec![uri(REVIEWS)]);
    let tampered = good.replacen('A', "B", 1);
    assert!(ca.sign_csr(&tampered, &me, 0, now()).is_err());
}

#[test]
fn exactly_one_uri_san_is_required() {
    let ca = mk_authority(DAY);
    let me = id(REVIEWS);
    let dns = SanType::DnsName("reviews".try_into().unwrap());
    for sans in [
        vec![],
        vec![dns.clone()],
        vec![uri(REVIEWS), dns],
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
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int_params_for_cert = int_params.clone();
    let int = int_params_for_cert.signed_by(&int_key, &root).unwrap();
    let material = CaMaterial {
        issuer_cert_pem: int.pem(),
        issuer_key_pem: int_key.serialize_pem(),
        chain: vec![int.pem(), root.pem()],
    };
    let ca = Authority::new(&material, TD, DAY).unwrap();
    let chain = ca
        .sign_csr(&csr(vec![uri(REVIEWS)]), &id(REVIEWS), 0, now())
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1], int.pem());
    assert_eq!(chain[2], root.pem());
    let der = parse(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let int_der = parse(&int.pem());
    let (_, int_cert) = X509Certificate::from_der(&int_der).unwrap();
    assert_eq!(leaf.issuer(), int_cert.subject());
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
