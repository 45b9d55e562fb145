use super::*;

fn fields(errors: Vec<FieldError>) -> Vec<String> {
    errors
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

fn vs(yaml: &str) -> VirtualService {
    serde_saphyr::from_str(yaml).expect("valid test YAML")
}

#[test]
fn weights_are_relative_but_not_all_zero() {
    let ok = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: 3}, {destination: {host: b}, weight: 1}]}]\n",
    );
    assert!(virtual_service(&ok).is_empty());
    let zero =
        vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]\n");
    assert_eq!(
        fields(virtual_service(&zero)),
        vec![
            "spec.http[0].route: total destination weight is 0: give at least one destination a positive weight"
        ]
    );
}

#[test]
fn mesh_bound_wildcard_and_missing_action() {
    let bad = vs("hosts: ['*']\nhttp: [{match: [{uri: {}}]}]\n");
    let got = fields(virtual_service(&bad));
    assert!(
        got.iter()
            .any(|e| e.starts_with("spec.hosts[0]: wildcard host")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("spec.http[0]: one of route, redirect")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.starts_with("spec.http[0].match[0].uri: one of exact")),
        "{got:?}"
    );
}

#[test]
fn header_names_must_be_lower_case_and_may_match_presence() {
    let bad = vs(
        "hosts: [a]\nhttp: [{match: [{headers: {X-User: {exact: j}, x-ok: {}}}], route: [{destination: {host: a}}]}]\n",
    );
    assert_eq!(
        fields(virtual_service(&bad)),
        vec!["spec.http[0].match[0].headers.X-User: header name \"X-User\" must be lower case"]
    );
}

#[test]
fn fault_and_retry_values() {
    let bad = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {httpStatus: 99, percentage: {value: 101}}}, retries: {attempts: -1, perTryTimeout: 0s, retryOn: '5xx,bogus'}}]\n",
    );
    let got = fields(virtual_service(&bad));
    for want in [
        "spec.http[0].retries.attempts:",
        "spec.http[0].retries.perTryTimeout: duration \"0s\" is too short",
        "spec.http[0].retries.retryOn: \"bogus\" is not a valid retryOn policy",
        "spec.http[0].fault.abort.httpStatus: status 99",
        "spec.http[0].fault.abort.percentage.value:",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "missing {want}: {got:#?}"
        );
    }
}

#[test]
fn retry_on_takes_every_istio_condition_known_statuses_and_grpc_names() {
    let ok = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 3, retryOn: '5xx,gateway-error,reset,reset-before-request,connect-failure,envoy-ratelimited,retriable-4xx,refused-stream,retriable-status-codes,retriable-headers,http3-post-connect-failure,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable,503, 429'}}]\n",
    );
    assert!(
        virtual_service(&ok).is_empty(),
        "{:?}",
        virtual_service(&ok)
    );
    let bad = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 3, retryOn: '5XX,599,connect-failure,,gateway_error'}}]\n",
    );
    assert_eq!(
        fields(virtual_service(&bad)),
        vec![
            "spec.http[0].retries.retryOn: \"5XX\" is not a valid retryOn policy: expected an HTTP status code or one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable",
            "spec.http[0].retries.retryOn: \"599\" is not a valid retryOn policy: not a known HTTP status code",
            "spec.http[0].retries.retryOn: empty retry condition in \"5XX,599,connect-failure,,gateway_error\"",
            "spec.http[0].retries.retryOn: \"gateway_error\" is not a valid retryOn policy: expected an HTTP status code or one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable",
        ]
    );
}

#[test]
fn abort_grpc_status_must_be_a_grpc_code_name() {
    let ok = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}}]\n",
    );
    assert!(virtual_service(&ok).is_empty());
    let bad = vs(
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {grpcStatus: unavailable}}}]\n",
    );
    assert_eq!(
        fields(virtual_service(&bad)),
        vec![
            "spec.http[0].fault.abort.grpcStatus: \"unavailable\" is not a valid gRPC code: expected a name such as \"UNAVAILABLE\" or \"DEADLINE_EXCEEDED\""
        ]
    );
}

#[test]
fn service_entry_rules() {
    let se: ServiceEntry = serde_saphyr::from_str(
        "hosts: ['*']\nports: [{number: 80, name: http}, {number: 80, name: http, protocol: FOO}]\nresolution: DNS\naddresses: [10.0.0.0/8]\nworkloadSelector: {labels: {app: '*'}}\nendpoints: [{address: 1.2.3.4}]\n",
    )
    .expect("yaml");
    let got = fields(service_entry(&se));
    for want in [
        "spec.hosts[0]: hostname cannot be wildcard",
        "spec.addresses[0]: CIDR address",
        "spec.ports[1].number: port number 80 is used by more than one port",
        "spec.ports[1].name: port name \"http\" is used by more than one port",
        "spec.ports[1].protocol: Unsupported value: \"FOO\"",
        "spec.workloadSelector.labels.app: wildcard is not supported in selector",
        "spec.workloadSelector: only one of workloadSelector or endpoints",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "missing {want}: {got:#?}"
        );
    }
}

#[test]
fn destination_rule_rules() {
    let dr: DestinationRule = serde_saphyr::from_str(
        "host: a\nsubsets: [{name: V1}, {name: v2}, {name: v2}]\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}\n  tls: {mode: ISTIO_MUTUAL, caCertificates: /x}\n  outlierDetection: {maxEjectionPercent: 120, interval: 1x}\n",
    )
    .expect("yaml");
    let got = fields(destination_rule(&dr));
    for want in [
        "spec.subsets[0].name: invalid subset name \"V1\"",
        "spec.subsets[2].name: duplicate subset name \"v2\"",
        "spec.trafficPolicy.loadBalancer.simple: Unsupported value: \"FASTEST\"",
        "spec.trafficPolicy.tls: clientCertificate, privateKey",
        "spec.trafficPolicy.outlierDetection.interval: invalid duration",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 120",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "missing {want}: {got:#?}"
        );
    }
}

#[test]
fn export_to_entries() {
    let mut errors = Errors::default();
    rules::check_export_to(
        &mut errors,
        "spec.exportTo",
        &[".".into(), "*".into(), "Bad_NS".into()],
    );
    let got = fields(errors.0);
    assert_eq!(got.len(), 2, "{got:?}");
}

fn pa(yaml: &str) -> PeerAuthentication {
    serde_saphyr::from_str(yaml).expect("valid test YAML")
}

#[test]
fn peer_authentication_rules() {
    assert!(peer_authentication(&pa("{}")).is_empty());
    assert!(
        peer_authentication(&pa(
            "{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}, portLevelMtls: {80: {mode: DISABLE}, '8080': {}}}"
        ))
        .is_empty()
    );
    assert_eq!(
        fields(peer_authentication(&pa(
            "{selector: {matchLabels: {}}, portLevelMtls: {80: {mode: strict}}}"
        ))),
        vec![
            "spec.portLevelMtls: portLevelMtls requires selector: set spec.selector.matchLabels, or move the port settings to a workload-level policy",
            "spec.portLevelMtls.80.mode: Unsupported value: \"strict\": supported values: \"UNSET\", \"DISABLE\", \"PERMISSIVE\", \"STRICT\"",
        ]
    );
    assert_eq!(
        fields(peer_authentication(&pa(
            "{selector: {matchLabels: {app: '*'}}}"
        ))),
        vec!["spec.selector.matchLabels.app: wildcard is not supported in selector"]
    );
}
