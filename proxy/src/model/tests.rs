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

// === original destination: Service.addresses, Snapshot::service_for_addr ===

fn addressed(name: &str, ports: &[u32], addresses: &[&str]) -> pb::Service {
    pb::Service {
        name: name.into(),
        ports: ports
            .iter()
            .map(|&number| pb::Port {
                number,
                ..Default::default()
            })
            .collect(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn snapshot_of(services: &[pb::Service]) -> Snapshot {
    let mut parts = Parts::default();
    for s in services {
        let svc = Service::try_from(s).unwrap();
        parts.services.insert(svc.name.clone(), Arc::new(svc));
    }
    Snapshot::build(&parts)
}

fn found(snap: &Snapshot, ip: &str, port: u16) -> Option<String> {
    snap.service_for_addr(ip.parse().unwrap(), port)
        .map(|s| s.name.clone())
}

#[test]
fn exact_addresses_match_on_a_served_port() {
    let snap = snapshot_of(&[
        addressed("db", &[5432], &["192.0.2.10", "2001:db8::10"]),
        addressed("anyport", &[], &["192.0.2.20"]),
    ]);
    assert_eq!(found(&snap, "192.0.2.10", 5432).as_deref(), Some("db"));
    assert_eq!(found(&snap, "2001:db8::10", 5432).as_deref(), Some("db"));
    // A dual-stack socket reports an IPv4 destination as IPv4-mapped IPv6.
    assert_eq!(
        found(&snap, "::ffff:192.0.2.10", 5432).as_deref(),
        Some("db")
    );
    assert_eq!(found(&snap, "192.0.2.10", 80), None, "port not served");
    assert_eq!(found(&snap, "192.0.2.11", 5432), None, "unknown address");
    assert_eq!(found(&snap, "2001:db8::11", 5432), None);
    // A service that declares no ports takes every port (Service::has_port).
    assert_eq!(found(&snap, "192.0.2.20", 1).as_deref(), Some("anyport"));
}

#[test]
fn cidrs_match_most_specific_first_among_services_with_the_port() {
    let snap = snapshot_of(&[
        addressed("wide", &[80, 8080], &["10.0.0.0/8"]),
        addressed("narrow", &[80], &["10.1.0.0/16"]),
        addressed("narrower", &[80], &["10.1.2.3/24"]), // host bits ignored: 10.1.2.0/24
        addressed("host", &[80], &["10.1.2.7"]),
        addressed("v6", &[443], &["2001:db8:1::/48", "::ffff:172.16.0.0/108"]),
        addressed("everything", &[9999], &["0.0.0.0/0", "::/0"]),
    ]);
    assert_eq!(found(&snap, "10.1.2.7", 80).as_deref(), Some("host"));
    assert_eq!(found(&snap, "10.1.2.8", 80).as_deref(), Some("narrower"));
    assert_eq!(found(&snap, "10.1.3.1", 80).as_deref(), Some("narrow"));
    assert_eq!(found(&snap, "10.200.0.1", 80).as_deref(), Some("wide"));
    // A more specific service without the port does not hide a wider one with it.
    assert_eq!(found(&snap, "10.1.2.7", 8080).as_deref(), Some("wide"));
    assert_eq!(found(&snap, "11.0.0.1", 80), None);
    assert_eq!(
        found(&snap, "2001:db8:1:ffff::1", 443).as_deref(),
        Some("v6")
    );
    assert_eq!(found(&snap, "2001:db8:2::1", 443), None);
    // An IPv4-mapped prefix is the IPv4 one (172.16.0.0/12).
    assert_eq!(found(&snap, "172.31.255.255", 443).as_deref(), Some("v6"));
    // /0 matches its own family only... and every address of it.
    assert_eq!(
        found(&snap, "203.0.113.1", 9999).as_deref(),
        Some("everything")
    );
    assert_eq!(found(&snap, "fe80::1", 9999).as_deref(), Some("everything"));
    // IPv4 and IPv6 never match across families (10.0.0.0/8 is not ::a00:0/104).
    assert_eq!(found(&snap, "::a01:207", 80), None);
}

#[test]
fn services_sharing_an_address_go_to_the_first_name() {
    // Istio gives every host of a ServiceEntry all of its addresses.
    let snap = snapshot_of(&[
        addressed("legacy-b", &[8080], &["10.9.0.0/16", "10.9.9.9"]),
        addressed("legacy-a", &[8080], &["10.9.0.0/16", "10.9.9.9"]),
        addressed("other-port", &[9090], &["10.9.9.9"]),
    ]);
    assert_eq!(found(&snap, "10.9.9.9", 8080).as_deref(), Some("legacy-a"));
    assert_eq!(found(&snap, "10.9.1.1", 8080).as_deref(), Some("legacy-a"));
    assert_eq!(
        found(&snap, "10.9.9.9", 9090).as_deref(),
        Some("other-port")
    );
}

#[test]
fn malformed_addresses_are_nacked_naming_the_field() {
    for (bad, reason) in [
        (
            "10.0.0.300",
            "\"10.0.0.300\" is not an IP address or CIDR block",
        ),
        ("db.example.com", "is not an IP address or CIDR block"),
        ("10.0.0.0/33", "prefix length \"33\" is not 0-32"),
        ("2001:db8::/129", "prefix length \"129\" is not 0-128"),
        ("10.0.0.0/+8", "prefix length \"+8\" is not 0-32"),
        ("10.0.0.0/", "prefix length \"\" is not 0-32"),
        ("", "\"\" is not an IP address or CIDR block"),
    ] {
        let e = Service::try_from(&addressed("s", &[], &["10.0.0.1", bad])).unwrap_err();
        assert_eq!(e.field, "addresses[1]", "{bad}");
        assert!(e.reason.contains(reason), "{bad}: {e}");
        assert!(e.to_string().starts_with("addresses[1]: "), "{e}");
    }
}

#[test]
fn addresses_show_in_dumps_as_prefixes_without_host_bits() {
    let svc = Service::try_from(&addressed(
        "s",
        &[],
        &[
            "10.0.0.1",
            "10.0.0.1/32",
            "10.1.2.3/16",
            "2001:DB8::1",
            "2001:db8::/64",
        ],
    ))
    .unwrap();
    let json = serde_json::to_value(&svc).unwrap();
    assert_eq!(
        json["addresses"],
        serde_json::json!([
            "10.0.0.1",
            "10.0.0.1",
            "10.1.0.0/16",
            "2001:db8::1",
            "2001:db8::/64"
        ])
    );
}

#[test]
fn outbound_traffic_policy_converts_and_defaults_to_allow_any() {
    assert_eq!(
        Snapshot::default().outbound_traffic_policy(),
        OutboundTrafficPolicy::AllowAny,
        "no Mesh yet"
    );
    let mut m = pb::Mesh::default();
    assert_eq!(
        Mesh::try_from(&m).unwrap().outbound_traffic_policy,
        OutboundTrafficPolicy::AllowAny,
        "unset on the wire is ALLOW_ANY"
    );
    m.outbound_traffic_policy = pb::OutboundTrafficPolicy::RegistryOnly as i32;
    let mesh = Mesh::try_from(&m).unwrap();
    assert_eq!(
        mesh.outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(
        serde_json::to_value(&mesh).unwrap()["outbound_traffic_policy"],
        "REGISTRY_ONLY"
    );
    let parts = Parts {
        mesh: Some(Arc::new(mesh)),
        ..Default::default()
    };
    assert_eq!(
        Snapshot::build(&parts).outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );
    m.outbound_traffic_policy = 7;
    let e = Mesh::try_from(&m).unwrap_err();
    assert_eq!(
        e.to_string(),
        "outbound_traffic_policy: unknown outbound traffic policy 7"
    );
}
