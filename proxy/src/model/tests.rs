#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Proto -> model conversion and snapshot indexing. Rejections must name the field, because
//! that text becomes the NACK the operator reads.

use weft_api::mesh as pb;

use super::*;

fn regex_match(p: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(pb::string_match::Kind::Regex(p.into())),
    }
}

#[test]
fn nack_reasons_name_the_field() {
    let bad_regex = pb::Service {
        name: "reviews".into(),
        http: vec![pb::HttpRoute {
            matches: vec![pb::HttpMatch {
                uri: Some(regex_match("/(unclosed")),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = Service::try_from(&bad_regex).unwrap_err();
    assert_eq!(e.field, "http[0].matches[0].uri.regex");
    assert!(e.reason.contains("invalid regex \"/(unclosed\""), "{e}");

    let bad_ip = pb::Endpoints {
        cluster: "c".into(),
        endpoints: vec![pb::Endpoint {
            address: "10.0.0.300".into(),
            port: 9080,
            ..Default::default()
        }],
    };
    let e = endpoints_from_proto(&bad_ip).unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoints[0].address: \"10.0.0.300\" is not an IP address"
    );

    let bad_port = pb::Cluster {
        name: "c".into(),
        port: 70000,
        ..Default::default()
    };
    assert_eq!(
        ClusterSpec::try_from(&bad_port).unwrap_err().to_string(),
        "port: port 70000 is out of range"
    );

    let bad_header = pb::HttpMatch {
        headers: [("bad header".to_string(), pb::StringMatch::default())].into(),
        ..Default::default()
    };
    assert_eq!(
        HttpMatch::try_from(&bad_header).unwrap_err().field,
        "headers[bad header]"
    );
}

#[test]
fn regexes_are_anchored_and_dumped_as_written() {
    let m = HttpMatch::try_from(&pb::HttpMatch {
        uri: Some(regex_match("/v[0-9]")),
        ..Default::default()
    })
    .unwrap();
    let uri = m.uri.as_ref().unwrap();
    assert!(uri.matches("/v1"));
    assert!(!uri.matches("/v1/x"));
    assert_eq!(
        serde_json::to_string(uri).unwrap(),
        r#"{"regex":"/v[0-9]"}"#
    );
}

#[test]
fn endpoints_defaults() {
    let eps = endpoints_from_proto(&pb::Endpoints {
        cluster: "c".into(),
        endpoints: vec![pb::Endpoint {
            address: "127.0.0.3".into(),
            port: 9080,
            mesh_port: 15006,
            weight: 0,
            workload: "default/reviews-v1".into(),
            ..Default::default()
        }],
    })
    .unwrap();
    assert_eq!(eps[0].weight, 1, "weight 0 means 1");
    assert_eq!(eps[0].mesh_addr().unwrap().to_string(), "127.0.0.3:15006");
    assert_eq!(eps[0].workload_name(), ("reviews-v1", "default"));
}

#[test]
fn snapshot_indexes_names_and_aliases_and_joins_endpoints() {
    let mut parts = Parts::default();
    let svc = Service::try_from(&pb::Service {
        name: "reviews.default.svc.cluster.local".into(),
        aliases: vec!["reviews".into()],
        ..Default::default()
    })
    .unwrap();
    parts.services.insert(svc.name.clone(), Arc::new(svc));
    let c = ClusterSpec::try_from(&pb::Cluster {
        name: "outbound|9080||reviews".into(),
        port: 9080,
        ..Default::default()
    })
    .unwrap();
    parts.clusters.insert(c.name.clone(), Arc::new(c));
    let snap = Snapshot::build(&parts);
    assert!(snap.service_for_host("reviews").is_some());
    assert!(
        snap.service_for_host("REVIEWS.default.svc.cluster.local")
            .is_some()
    );
    assert!(snap.service_for_host("ratings").is_none());
    let cluster = snap.cluster("outbound|9080||reviews").unwrap();
    assert!(
        cluster.endpoints.is_empty(),
        "a cluster without Endpoints has none"
    );
}

#[test]
fn tls_fields_convert_and_only_malformed_ones_are_nacked() {
    let mut c = pb::Cluster {
        name: "outbound|9080||reviews".into(),
        port: 9080,
        identities: vec!["spiffe://cluster.local/ns/default/sa/reviews".into()],
        ..Default::default()
    };
    let spec = ClusterSpec::try_from(&c).unwrap();
    assert_eq!(spec.tls, UpstreamTlsMode::Auto);
    assert_eq!(spec.identities.len(), 1);
    for (mode, want) in [
        (pb::upstream_tls::Mode::Disable, UpstreamTlsMode::Disable),
        (
            pb::upstream_tls::Mode::IstioMutual,
            UpstreamTlsMode::IstioMutual,
        ),
    ] {
        c.tls = Some(pb::UpstreamTls {
            mode: mode as i32,
            ..Default::default()
        });
        assert_eq!(ClusterSpec::try_from(&c).unwrap().tls, want);
    }
    // SIMPLE and MUTUAL are accepted: what the proxy cannot do fails requests, not config.
    let tls = |mode: pb::upstream_tls::Mode, ca: &str, sni: &str| pb::UpstreamTls {
        mode: mode as i32,
        ca_certificates: ca.into(),
        sni: sni.into(),
        subject_alt_names: vec!["secure.example.com".into()],
        ..Default::default()
    };
    c.tls = Some(tls(
        pb::upstream_tls::Mode::Simple,
        "",
        "secure.example.com",
    ));
    let spec = ClusterSpec::try_from(&c).unwrap();
    assert_eq!(spec.tls, UpstreamTlsMode::Simple);
    let o = spec.origination.unwrap();
    assert_eq!(o.ca_certificates, CaCertificates::System);
    assert_eq!(o.sni, "secure.example.com");
    // Anything not starting with "-----BEGIN" is a path on the proxy (read later).
    c.tls = Some(tls(pb::upstream_tls::Mode::Mutual, "/etc/certs/ca.pem", ""));
    let spec = ClusterSpec::try_from(&c).unwrap();
    assert_eq!(spec.tls, UpstreamTlsMode::Mutual);
    assert_eq!(
        spec.origination.unwrap().ca_certificates,
        CaCertificates::File("/etc/certs/ca.pem".into())
    );
    // Malformed data is NACKed: inline PEM that does not parse, an SNI that is no name.
    c.tls = Some(tls(
        pb::upstream_tls::Mode::Simple,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        "",
    ));
    let e = ClusterSpec::try_from(&c).unwrap_err();
    assert_eq!(e.field, "tls.ca_certificates", "{e}");
    c.tls = Some(tls(pb::upstream_tls::Mode::Simple, "", "bad name!"));
    assert_eq!(ClusterSpec::try_from(&c).unwrap_err().field, "tls.sni");
    c.tls = Some(pb::UpstreamTls {
        mode: 99,
        ..Default::default()
    });
    assert_eq!(ClusterSpec::try_from(&c).unwrap_err().field, "tls.mode");

    let mut i = pb::Inbound {
        mtls_mode: pb::MtlsMode::Strict as i32,
        ..Default::default()
    };
    i.port_mtls.insert(8080, pb::MtlsMode::Disable as i32);
    i.port_mtls.insert(9090, pb::MtlsMode::Unspecified as i32);
    let inb = Inbound::try_from(&i).unwrap();
    assert_eq!(inb.mtls_mode_for(1), MtlsMode::Strict);
    assert_eq!(inb.mtls_mode_for(8080), MtlsMode::Disable);
    assert_eq!(inb.mtls_mode_for(9090), MtlsMode::Permissive);
    assert!(inb.any_port_allows(true) && inb.any_port_allows(false));
    i.port_mtls.clear();
    let strict = Inbound::try_from(&i).unwrap();
    assert!(strict.any_port_allows(true) && !strict.any_port_allows(false));
    i.port_mtls.insert(70000, pb::MtlsMode::Strict as i32);
    assert_eq!(Inbound::try_from(&i).unwrap_err().field, "port_mtls[70000]");

    let m = pb::Mesh {
        trust_bundle: vec!["not a certificate".into()],
        ..Default::default()
    };
    let e = Mesh::try_from(&m).unwrap_err();
    assert_eq!(e.field, "trust_bundle[0]");
}
