//! Schema-level validation: everything that can be decided from one object alone.
//!
//! The same functions serve the file source, the admission webhook and `weftctl analyze`
//! (DESIGN.md), so they take typed specs and return [`FieldError`]s (a field path plus a
//! message) with no positions; callers that have text attach lines and columns. Checks that
//! need other objects (does the destination host exist? the subset?) live in
//! [`crate::index`], because they must be re-run whenever any object changes.
//!
//! Rules follow Istio's validation (pkg/config/validation) and CRD schemas; where Weft is
//! stricter or looser, control-plane/config/README.md says so.

mod rules;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::kinds::*;
use crate::translate::resilience::{grpc_status_code, retry_on};
use rules::*;
pub(crate) use rules::{is_dns_label, is_ip_or_cidr};

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.http[0].route[1].weight`.
    pub field: String,
    pub message: String,
}

/// Collects field errors while walking a spec.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }
}

const MIN_DURATION: Duration = Duration::from_millis(1);

/// Validates metadata: a name is required; namespaces are DNS labels. WorkloadEntry names
/// may not contain dots because a proxy's node id is `<name>.<namespace>`.
pub fn metadata(kind: crate::Kind, meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errors = Errors::default();
    match meta.name.as_deref() {
        None | Some("") => errors.push("metadata.name", "Required value"),
        Some(name) => {
            if kind == crate::Kind::WorkloadEntry && name.contains('.') {
                errors.push(
                    "metadata.name",
                    format!(
                        "invalid name {name:?}: WorkloadEntry names may not contain '.' in Weft, because a proxy's node id is \"<name>.<namespace>\""
                    ),
                );
            } else if !rules::is_dns_subdomain(name) {
                errors.push(
                    "metadata.name",
                    format!(
                        "invalid name {name:?}: must be lower-case alphanumerics, '-' or '.', starting and ending with an alphanumeric"
                    ),
                );
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref()
        && !ns.is_empty()
        && !is_dns_label(ns)
    {
        errors.push(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: must be a DNS label"),
        );
    }
    check_labels(&mut errors, "metadata.labels", &meta.labels, false);
    errors.0
}

// === ServiceEntry ===

const PROTOCOLS: [&str; 11] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

/// Validates a ServiceEntry spec.
pub fn service_entry(se: &ServiceEntry) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let e = &mut errors;
    if se.hosts.is_empty() {
        e.push(
            "spec.hosts",
            "Required value: at least one host is required",
        );
    }
    for (i, host) in se.hosts.iter().enumerate() {
        check_host(e, &format!("spec.hosts[{i}]"), host, false);
    }
    let resolution = se.resolution.as_deref().unwrap_or("NONE");
    check_enum(
        e,
        "spec.resolution",
        se.resolution.as_ref(),
        &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"],
    );
    check_enum(
        e,
        "spec.location",
        se.location.as_ref(),
        &["MESH_EXTERNAL", "MESH_INTERNAL"],
    );
    for (i, address) in se.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        if !is_ip_or_cidr(address) {
            e.push(
                &path,
                format!("invalid address {address:?}: expected an IP or a CIDR block"),
            );
        } else if address.contains('/') && matches!(resolution, "DNS" | "DNS_ROUND_ROBIN") {
            e.push(
                &path,
                format!("CIDR address {address:?} is only allowed with resolution NONE or STATIC"),
            );
        }
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_required_port(e, &format!("{path}.number"), port.number);
        if let Some(n) = port.number
            && !numbers.insert(n)
        {
            e.push(
                &format!("{path}.number"),
                format!("port number {n} is used by more than one port"),
            );
        }
        if let Some(name) = &port.name
            && !names.insert(name.as_str())
        {
            e.push(
                &format!("{path}.name"),
                format!("port name {name:?} is used by more than one port"),
            );
        }
        if let Some(target) = port.target_port {
            check_port(e, &format!("{path}.targetPort"), target);
        }
        if let Some(protocol) = &port.protocol {
            let upper = protocol.to_ascii_uppercase();
            if !PROTOCOLS.contains(&upper.as_str()) {
                check_enum(e, &format!("{path}.protocol"), Some(protocol), &PROTOCOLS);
            } else if upper == "UDP" {
                e.push(&format!("{path}.protocol"), "UDP is not supported by Weft");
            }
        }
    }
    if let Some(selector) = &se.workload_selector {
        check_labels(e, "spec.workloadSelector.labels", &selector.labels, true);
        if !se.endpoints.is_empty() {
            e.push(
                "spec.workloadSelector",
                "only one of workloadSelector or endpoints may be set",
            );
        }
    }
    if resolution == "NONE" && !se.endpoints.is_empty() {
        e.push(
            "spec.endpoints",
            "no endpoints may be given with resolution NONE",
        );
    }
    if resolution == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
        e.push(
            "spec.endpoints",
            "resolution DNS_ROUND_ROBIN allows at most one endpoint",
        );
    }
    for (i, endpoint) in se.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload(e, &path, endpoint);
        if resolution == "STATIC"
            && let Some(address) = &endpoint.address
            && !address.starts_with("unix://")
            && address.parse::<std::net::IpAddr>().is_err()
        {
            e.push(
                &format!("{path}.address"),
                format!("address {address:?} must be an IP address with resolution STATIC"),
            );
        }
        for name in endpoint.ports.keys() {
            if !names.contains(name.as_str()) {
                e.push(
                    &crate::yaml::join_key(&format!("{path}.ports"), name),
                    format!("endpoint port {name:?} is not defined by the ServiceEntry's ports"),
                );
            }
        }
    }
    check_export_to(e, "spec.exportTo", &se.export_to);
    errors.0
}

// === WorkloadEntry ===

/// Validates a WorkloadEntry spec; `None` is a document without `spec`.
pub fn workload_entry(we: Option<&WorkloadEntry>) -> Vec<FieldError> {
    let mut errors = Errors::default();
    match we {
        None => errors.push("spec", "Required value"),
        Some(we) => workload(&mut errors, "spec", we),
    }
    errors.0
}

/// Shared by WorkloadEntry specs and ServiceEntry inline endpoints.
fn workload(e: &mut Errors, path: &str, we: &WorkloadEntry) {
    let address = we.address.as_deref().unwrap_or("");
    if address.is_empty() {
        e.push(
            &format!("{path}.address"),
            "Required value: Address is required",
        );
    } else if let Some(socket) = address.strip_prefix("unix://") {
        if socket.ends_with('/') {
            e.push(
                &format!("{path}.address"),
                format!("UDS may not be a dir: {address:?}"),
            );
        } else if !socket.starts_with('/') && !socket.starts_with('@') {
            e.push(
                &format!("{path}.address"),
                format!("UDS must be an absolute path or abstract socket: {address:?}"),
            );
        }
        if !we.ports.is_empty() {
            e.push(&format!("{path}.ports"), "UDS may not include ports");
        }
    } else if address.parse::<std::net::IpAddr>().is_err() {
        check_host(e, &format!("{path}.address"), address, false);
    }
    for (name, port) in &we.ports {
        let field = crate::yaml::join_key(&format!("{path}.ports"), name);
        if !is_dns_label(name) {
            e.push(
                &format!("{path}.ports"),
                format!("Invalid value: port name {name:?} must be a DNS label (lower-case alphanumerics and '-')"),
            );
        }
        check_port(e, &field, *port);
    }
    check_labels(e, &format!("{path}.labels"), &we.labels, false);
    if let Some(w) = we.weight
        && !(0..=i64::from(u32::MAX)).contains(&w)
    {
        e.push(
            &format!("{path}.weight"),
            format!("weight {w} is out of range"),
        );
    }
    if let Some(sa) = &we.service_account
        && !sa.is_empty()
        && !rules::is_dns_subdomain(sa)
    {
        e.push(
            &format!("{path}.serviceAccount"),
            format!("invalid service account {sa:?}: must be a DNS subdomain"),
        );
    }
}

// === VirtualService ===

/// Validates a VirtualService spec.
pub fn virtual_service(vs: &VirtualService) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let e = &mut errors;
    if vs.hosts.is_empty() {
        // Istio treats a host-less VirtualService as a delegate; Weft does not support
        // delegation yet, so a missing host is an error rather than a silent no-op.
        e.push(
            "spec.hosts",
            "Required value: at least one host is required (delegate VirtualServices are not supported yet)",
        );
    }
    let mesh_bound = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    for (i, host) in vs.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" && mesh_bound {
            e.push(
                &path,
                "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh",
            );
        } else {
            check_host(e, &path, host, true);
        }
    }
    for (i, gateway) in vs.gateways.iter().enumerate() {
        if gateway.is_empty() {
            e.push(
                &format!("spec.gateways[{i}]"),
                "gateway name must not be empty",
            );
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        e.push("spec", "http, tcp or tls routes are required");
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(e, &format!("spec.http[{i}]"), route);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            l4_match(e, &mp, m.port, &m.destination_subnets, &m.source_labels);
        }
        route_destinations(e, &path, &route.route);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        if route.matches.is_empty() {
            e.push(
                &format!("{path}.match"),
                "Required value: TLS routes must have at least one match",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            if m.sni_hosts.is_empty() {
                e.push(&format!("{mp}.sniHosts"), "Required value");
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                check_host(e, &format!("{mp}.sniHosts[{k}]"), sni, true);
            }
            l4_match(e, &mp, m.port, &m.destination_subnets, &m.source_labels);
        }
        route_destinations(e, &path, &route.route);
    }
    check_export_to(e, "spec.exportTo", &vs.export_to);
    errors.0
}

fn l4_match(
    e: &mut Errors,
    path: &str,
    port: Option<i64>,
    subnets: &[String],
    source_labels: &std::collections::BTreeMap<String, String>,
) {
    if let Some(port) = port {
        check_port(e, &format!("{path}.port"), port);
    }
    for (k, subnet) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(subnet) {
            e.push(
                &format!("{path}.destinationSubnets[{k}]"),
                format!("invalid subnet {subnet:?}: expected an IP or a CIDR block"),
            );
        }
    }
    check_labels(e, &format!("{path}.sourceLabels"), source_labels, true);
}

fn http_route(e: &mut Errors, path: &str, route: &HttpRoute) {
    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => e.push(
            path,
            "one of route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => e.push(
            path,
            "only one of route, redirect, directResponse or delegate may be set",
        ),
    }
    for (j, m) in route.matches.iter().enumerate() {
        http_match(e, &format!("{path}.match[{j}]"), m);
    }
    for (j, dest) in route.route.iter().enumerate() {
        let dp = format!("{path}.route[{j}]");
        match &dest.destination {
            Some(d) => destination(e, &format!("{dp}.destination"), d),
            None => e.push(&format!("{dp}.destination"), "Required value"),
        }
        weight(e, &format!("{dp}.weight"), dest.weight);
        headers(e, &format!("{dp}.headers"), dest.headers.as_ref());
    }
    total_weight(e, path, route.route.iter().map(|r| r.weight));
    if let Some(redirect) = &route.redirect {
        let rp = format!("{path}.redirect");
        if let Some(port) = redirect.port {
            check_port(e, &format!("{rp}.port"), port);
        }
        if redirect.port.is_some() && redirect.derive_port.is_some() {
            e.push(&rp, "only one of port or derivePort may be set");
        }
        check_enum(
            e,
            &format!("{rp}.derivePort"),
            redirect.derive_port.as_ref(),
            &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
        );
        if let Some(code) = redirect.redirect_code
            && !(300..=399).contains(&code)
        {
            e.push(
                &format!("{rp}.redirectCode"),
                format!("{code} is not a valid redirect code, must be 3xx"),
            );
        }
    }
    if let Some(direct) = &route.direct_response {
        let dp = format!("{path}.directResponse");
        match direct.status {
            None => e.push(&format!("{dp}.status"), "Required value"),
            Some(status) if !(200..=599).contains(&status) => e.push(
                &format!("{dp}.status"),
                format!("status {status} is out of range: must be between 200 and 599"),
            ),
            Some(_) => {}
        }
        if let Some(body) = &direct.body
            && body.string.is_some() == body.bytes.is_some()
        {
            e.push(
                &format!("{dp}.body"),
                "exactly one of string or bytes is required",
            );
        }
    }
    if let Some(delegate) = &route.delegate
        && delegate.name.as_deref().unwrap_or("").is_empty()
    {
        e.push(&format!("{path}.delegate.name"), "Required value");
    }
    if let Some(rewrite) = &route.rewrite {
        let rp = format!("{path}.rewrite");
        if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
            e.push(&rp, "only one of uri or uriRegexRewrite may be set");
        }
        if let Some(rr) = &rewrite.uri_regex_rewrite {
            match &rr.matches {
                Some(re) => check_regex(e, &format!("{rp}.uriRegexRewrite.match"), re),
                None => e.push(&format!("{rp}.uriRegexRewrite.match"), "Required value"),
            }
            if rr.rewrite.is_none() {
                e.push(&format!("{rp}.uriRegexRewrite.rewrite"), "Required value");
            }
        }
    }
    check_duration(e, &format!("{path}.timeout"), route.timeout.as_ref(), None);
    if let Some(retries) = &route.retries {
        let rp = format!("{path}.retries");
        check_non_negative(e, &format!("{rp}.attempts"), retries.attempts);
        check_duration(
            e,
            &format!("{rp}.perTryTimeout"),
            retries.per_try_timeout.as_ref(),
            Some(MIN_DURATION),
        );
        check_duration(
            e,
            &format!("{rp}.backoff"),
            retries.backoff.as_ref(),
            Some(MIN_DURATION),
        );
        if let Some(on) = &retries.retry_on {
            for cond in on.split(',').map(str::trim) {
                if cond.is_empty() {
                    e.push(
                        &format!("{rp}.retryOn"),
                        format!("empty retry condition in {on:?}"),
                    );
                } else if retry_on(cond).is_none() {
                    let why = if cond.bytes().all(|b| b.is_ascii_digit()) {
                        "not a known HTTP status code"
                    } else {
                        "expected an HTTP status code or one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"
                    };
                    e.push(
                        &format!("{rp}.retryOn"),
                        format!("{cond:?} is not a valid retryOn policy: {why}"),
                    );
                }
            }
        }
    }
    if let Some(fault) = &route.fault {
        let fp = format!("{path}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            e.push(&fp, "one of delay or abort is required");
        }
        if let Some(delay) = &fault.delay {
            let dp = format!("{fp}.delay");
            match (&delay.fixed_delay, &delay.exponential_delay) {
                (None, None) => e.push(&format!("{dp}.fixedDelay"), "Required value"),
                (Some(_), Some(_)) => {
                    e.push(&dp, "only one of fixedDelay or exponentialDelay may be set")
                }
                _ => {}
            }
            check_duration(
                e,
                &format!("{dp}.fixedDelay"),
                delay.fixed_delay.as_ref(),
                Some(MIN_DURATION),
            );
            check_duration(
                e,
                &format!("{dp}.exponentialDelay"),
                delay.exponential_delay.as_ref(),
                Some(MIN_DURATION),
            );
            check_percent(e, &format!("{dp}.percentage"), delay.percentage.as_ref());
            if let Some(p) = delay.percent
                && !(0..=100).contains(&p)
            {
                e.push(
                    &format!("{dp}.percent"),
                    format!("percentage {p} is out of range: must be between 0 and 100"),
                );
            }
        }
        if let Some(abort) = &fault.abort {
            let ap = format!("{fp}.abort");
            let set = [
                abort.http_status.is_some(),
                abort.grpc_status.is_some(),
                abort.http2_error.is_some(),
            ];
            match set.iter().filter(|s| **s).count() {
                0 => e.push(
                    &format!("{ap}.httpStatus"),
                    "Required value: one of httpStatus, grpcStatus or http2Error is required",
                ),
                1 => {}
                _ => e.push(
                    &ap,
                    "only one of httpStatus, grpcStatus or http2Error may be set",
                ),
            }
            if let Some(status) = abort.http_status
                && !(200..=599).contains(&status)
            {
                e.push(
                    &format!("{ap}.httpStatus"),
                    format!("status {status} is out of range: must be between 200 and 599"),
                );
            }
            if let Some(status) = &abort.grpc_status
                && grpc_status_code(status).is_none()
            {
                e.push(
                    &format!("{ap}.grpcStatus"),
                    format!(
                        "{status:?} is not a valid gRPC code: expected a name such as \"UNAVAILABLE\" or \"DEADLINE_EXCEEDED\""
                    ),
                );
            }
            check_percent(e, &format!("{ap}.percentage"), abort.percentage.as_ref());
        }
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        e.push(path, "only one of mirror or mirrors may be set");
    }
    if let Some(mirror) = &route.mirror {
        destination(e, &format!("{path}.mirror"), mirror);
    }
    for (j, m) in route.mirrors.iter().enumerate() {
        let mp = format!("{path}.mirrors[{j}]");
        match &m.destination {
            Some(d) => destination(e, &format!("{mp}.destination"), d),
            None => e.push(&format!("{mp}.destination"), "Required value"),
        }
        check_percent(e, &format!("{mp}.percentage"), m.percentage.as_ref());
    }
    check_percent(
        e,
        &format!("{path}.mirrorPercentage"),
        route.mirror_percentage.as_ref(),
    );
    if let Some(p) = route.mirror_percent
        && !(0..=100).contains(&p)
    {
        e.push(
            &format!("{path}.mirrorPercent"),
            format!("percentage {p} is out of range: must be between 0 and 100"),
        );
    }
    if let Some(cors) = &route.cors_policy {
        let cp = format!("{path}.corsPolicy");
        for (j, origin) in cors.allow_origins.iter().enumerate() {
            check_string_match(e, &format!("{cp}.allowOrigins[{j}]"), origin, false);
        }
        check_duration(e, &format!("{cp}.maxAge"), cors.max_age.as_ref(), None);
        check_enum(
            e,
            &format!("{cp}.unmatchedPreflights"),
            cors.unmatched_preflights.as_ref(),
            &["UNSPECIFIED", "FORWARD", "IGNORE"],
        );
    }
    headers(e, &format!("{path}.headers"), route.headers.as_ref());
}

fn http_match(e: &mut Errors, path: &str, m: &HttpMatchRequest) {
    for (name, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(value) = value {
            check_string_match(e, &format!("{path}.{name}"), value, false);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            let hp = crate::yaml::join_key(&format!("{path}.{field}"), name);
            if name.is_empty() {
                e.push(&hp, "header name must not be empty");
            } else if name.chars().any(|c| c.is_ascii_uppercase()) {
                e.push(&hp, format!("header name {name:?} must be lower case"));
            }
            // An empty match means "the header is present", as in Istio.
            check_string_match(e, &hp, value, true);
        }
    }
    for (name, value) in &m.query_params {
        let qp = crate::yaml::join_key(&format!("{path}.queryParams"), name);
        check_string_match(e, &qp, value, true);
    }
    if let Some(port) = m.port {
        check_port(e, &format!("{path}.port"), port);
    }
    check_labels(e, &format!("{path}.sourceLabels"), &m.source_labels, true);
    if let Some(ns) = &m.source_namespace
        && !is_dns_label(ns)
    {
        e.push(
            &format!("{path}.sourceNamespace"),
            format!("invalid namespace {ns:?}"),
        );
    }
}

fn destination(e: &mut Errors, path: &str, d: &Destination) {
    if d.host.is_empty() {
        e.push(&format!("{path}.host"), "Required value");
    } else {
        check_host(e, &format!("{path}.host"), &d.host, false);
        if d.host.starts_with("*.") {
            e.push(
                &format!("{path}.host"),
                "destination host may not be a wildcard",
            );
        }
    }
    if let Some(subset) = &d.subset
        && !is_dns_label(subset)
    {
        e.push(
            &format!("{path}.subset"),
            format!("invalid subset name {subset:?}: must be a DNS label"),
        );
    }
    if let Some(port) = d.port.as_ref().and_then(|p| p.number) {
        check_port(e, &format!("{path}.port.number"), port);
    }
}

fn weight(e: &mut Errors, path: &str, weight: Option<i64>) {
    if let Some(w) = weight
        && !(0..=i64::from(i32::MAX)).contains(&w)
    {
        e.push(
            path,
            format!("weight {w} is out of range: weights must be 0 or more"),
        );
    }
}

/// Weights are relative; with more than one destination at least one must be positive
/// (Istio: "total destination weight = 0").
fn total_weight(e: &mut Errors, path: &str, weights: impl Iterator<Item = Option<i64>>) {
    let weights: Vec<i64> = weights.map(|w| w.unwrap_or(0)).collect();
    if weights.len() > 1 && weights.iter().all(|w| *w >= 0) && weights.iter().sum::<i64>() == 0 {
        e.push(
            &format!("{path}.route"),
            "total destination weight is 0: give at least one destination a positive weight",
        );
    }
}

fn route_destinations(e: &mut Errors, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        e.push(&format!("{path}.route"), "Required value");
    }
    for (j, dest) in route.iter().enumerate() {
        let dp = format!("{path}.route[{j}]");
        match &dest.destination {
            Some(d) => destination(e, &format!("{dp}.destination"), d),
            None => e.push(&format!("{dp}.destination"), "Required value"),
        }
        weight(e, &format!("{dp}.weight"), dest.weight);
    }
    total_weight(e, path, route.iter().map(|r| r.weight));
}

fn headers(e: &mut Errors, path: &str, headers: Option<&Headers>) {
    let Some(headers) = headers else { return };
    for (side, ops) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        let Some(ops) = ops else { continue };
        let names = ops
            .set
            .keys()
            .chain(ops.add.keys())
            .chain(ops.remove.iter());
        for name in names {
            if name.is_empty() || name.contains([' ', ':']) && !name.starts_with(':') {
                e.push(
                    &format!("{path}.{side}"),
                    format!("invalid header name {name:?}"),
                );
            }
        }
    }
}

// === DestinationRule ===

/// Validates a DestinationRule spec.
pub fn destination_rule(dr: &DestinationRule) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let e = &mut errors;
    if dr.host.is_empty() {
        e.push("spec.host", "Required value");
    } else {
        check_host(e, "spec.host", &dr.host, false);
    }
    if let Some(policy) = &dr.traffic_policy {
        traffic_policy(e, "spec.trafficPolicy", policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let sp = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            e.push(&format!("{sp}.name"), "Required value");
        } else if !is_dns_label(&subset.name) {
            e.push(
                &format!("{sp}.name"),
                format!("invalid subset name {:?}: must be a DNS label", subset.name),
            );
        } else if !names.insert(subset.name.as_str()) {
            e.push(
                &format!("{sp}.name"),
                format!("duplicate subset name {:?}", subset.name),
            );
        }
        check_labels(e, &format!("{sp}.labels"), &subset.labels, true);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(e, &format!("{sp}.trafficPolicy"), policy);
        }
    }
    if let Some(selector) = &dr.workload_selector {
        check_labels(
            e,
            "spec.workloadSelector.matchLabels",
            &selector.match_labels,
            true,
        );
    }
    check_export_to(e, "spec.exportTo", &dr.export_to);
    errors.0
}

fn traffic_policy(e: &mut Errors, path: &str, policy: &TrafficPolicy) {
    load_balancer(
        e,
        &format!("{path}.loadBalancer"),
        policy.load_balancer.as_ref(),
    );
    connection_pool(
        e,
        &format!("{path}.connectionPool"),
        policy.connection_pool.as_ref(),
    );
    outlier_detection(
        e,
        &format!("{path}.outlierDetection"),
        policy.outlier_detection.as_ref(),
    );
    client_tls(e, &format!("{path}.tls"), policy.tls.as_ref());
    let mut ports = BTreeSet::new();
    for (i, plp) in policy.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match plp.port.as_ref().and_then(|p| p.number) {
            None => e.push(&format!("{pp}.port"), "Required value"),
            Some(n) => {
                check_port(e, &format!("{pp}.port.number"), n);
                if !ports.insert(n) {
                    e.push(
                        &format!("{pp}.port.number"),
                        format!("port {n} has more than one portLevelSettings entry"),
                    );
                }
            }
        }
        load_balancer(e, &format!("{pp}.loadBalancer"), plp.load_balancer.as_ref());
        connection_pool(
            e,
            &format!("{pp}.connectionPool"),
            plp.connection_pool.as_ref(),
        );
        outlier_detection(
            e,
            &format!("{pp}.outlierDetection"),
            plp.outlier_detection.as_ref(),
        );
        client_tls(e, &format!("{pp}.tls"), plp.tls.as_ref());
    }
    if let Some(tunnel) = &policy.tunnel {
        let tp = format!("{path}.tunnel");
        check_enum(
            e,
            &format!("{tp}.protocol"),
            tunnel.protocol.as_ref(),
            &["CONNECT", "POST"],
        );
        if tunnel.target_host.is_empty() {
            e.push(&format!("{tp}.targetHost"), "Required value");
        }
        check_required_port(e, &format!("{tp}.targetPort"), tunnel.target_port);
    }
    if let Some(pp) = &policy.proxy_protocol {
        check_enum(
            e,
            &format!("{path}.proxyProtocol.version"),
            pp.version.as_ref(),
            &["V1", "V2"],
        );
    }
    if let Some(budget) = &policy.retry_budget {
        if let Some(p) = budget.percent
            && !(0.0..=100.0).contains(&p)
        {
            e.push(
                &format!("{path}.retryBudget.percent"),
                format!("percentage {p} is out of range: must be between 0 and 100"),
            );
        }
        check_non_negative(
            e,
            &format!("{path}.retryBudget.minRetryConcurrency"),
            budget.min_retry_concurrency,
        );
    }
}

fn load_balancer(e: &mut Errors, path: &str, lb: Option<&LoadBalancerSettings>) {
    let Some(lb) = lb else { return };
    check_enum(
        e,
        &format!("{path}.simple"),
        lb.simple.as_ref(),
        &[
            "UNSPECIFIED",
            "RANDOM",
            "PASSTHROUGH",
            "ROUND_ROBIN",
            "LEAST_REQUEST",
            "LEAST_CONN",
        ],
    );
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        e.push(path, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{path}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            e.push(
                &cp,
                "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
            );
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                e.push(&format!("{cp}.httpCookie.name"), "Required value");
            }
            check_duration(
                e,
                &format!("{cp}.httpCookie.ttl"),
                cookie.ttl.as_ref(),
                None,
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            e.push(&cp, "only one of ringHash or maglev may be set");
        }
        check_non_negative(e, &format!("{cp}.minimumRingSize"), ch.minimum_ring_size);
    }
    if let Some(locality) = &lb.locality_lb_setting {
        let set = [
            !locality.distribute.is_empty(),
            !locality.failover.is_empty(),
            !locality.failover_priority.is_empty(),
        ];
        if !locality.distribute.is_empty() && set.iter().filter(|s| **s).count() > 1 {
            e.push(
                &format!("{path}.localityLbSetting"),
                "distribute may not be combined with failover or failoverPriority",
            );
        }
    }
    check_duration(
        e,
        &format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
        None,
    );
    if let Some(warmup) = &lb.warmup {
        let wp = format!("{path}.warmup");
        match &warmup.duration {
            None => e.push(&format!("{wp}.duration"), "Required value"),
            Some(d) => check_duration(e, &format!("{wp}.duration"), Some(d), Some(MIN_DURATION)),
        }
        if let Some(p) = warmup.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            e.push(
                &format!("{wp}.minimumPercent"),
                format!("Invalid value: {p}: must be between 0 and 100"),
            );
        }
        if let Some(a) = warmup.aggression
            && a < 1.0
        {
            e.push(
                &format!("{wp}.aggression"),
                format!("Invalid value: {a}: must be at least 1"),
            );
        }
    }
}

fn connection_pool(e: &mut Errors, path: &str, pool: Option<&ConnectionPoolSettings>) {
    let Some(pool) = pool else { return };
    if let Some(tcp) = &pool.tcp {
        let tp = format!("{path}.tcp");
        check_non_negative(e, &format!("{tp}.maxConnections"), tcp.max_connections);
        check_duration(
            e,
            &format!("{tp}.connectTimeout"),
            tcp.connect_timeout.as_ref(),
            Some(MIN_DURATION),
        );
        check_duration(
            e,
            &format!("{tp}.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
            Some(MIN_DURATION),
        );
        check_duration(
            e,
            &format!("{tp}.idleTimeout"),
            tcp.idle_timeout.as_ref(),
            None,
        );
        if let Some(ka) = &tcp.tcp_keepalive {
            check_non_negative(e, &format!("{tp}.tcpKeepalive.probes"), ka.probes);
            check_duration(
                e,
                &format!("{tp}.tcpKeepalive.time"),
                ka.time.as_ref(),
                Some(MIN_DURATION),
            );
            check_duration(
                e,
                &format!("{tp}.tcpKeepalive.interval"),
                ka.interval.as_ref(),
                Some(MIN_DURATION),
            );
        }
    }
    if let Some(http) = &pool.http {
        let hp = format!("{path}.http");
        check_non_negative(
            e,
            &format!("{hp}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        check_non_negative(
            e,
            &format!("{hp}.http2MaxRequests"),
            http.http2_max_requests,
        );
        check_non_negative(
            e,
            &format!("{hp}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        check_non_negative(e, &format!("{hp}.maxRetries"), http.max_retries);
        check_non_negative(
            e,
            &format!("{hp}.maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        check_duration(
            e,
            &format!("{hp}.idleTimeout"),
            http.idle_timeout.as_ref(),
            Some(MIN_DURATION),
        );
        check_enum(
            e,
            &format!("{hp}.h2UpgradePolicy"),
            http.h2_upgrade_policy.as_ref(),
            &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
        );
    }
}

fn outlier_detection(e: &mut Errors, path: &str, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    check_non_negative(
        e,
        &format!("{path}.consecutiveErrors"),
        od.consecutive_errors,
    );
    check_non_negative(
        e,
        &format!("{path}.consecutiveLocalOriginFailures"),
        od.consecutive_local_origin_failures,
    );
    check_non_negative(
        e,
        &format!("{path}.consecutiveGatewayErrors"),
        od.consecutive_gateway_errors,
    );
    check_non_negative(
        e,
        &format!("{path}.consecutive5xxErrors"),
        od.consecutive_5xx_errors,
    );
    check_duration(
        e,
        &format!("{path}.interval"),
        od.interval.as_ref(),
        Some(MIN_DURATION),
    );
    check_duration(
        e,
        &format!("{path}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
        Some(MIN_DURATION),
    );
    for (name, value) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            e.push(
                &format!("{path}.{name}"),
                format!("percentage {v} is out of range: must be between 0 and 100"),
            );
        }
    }
}

fn client_tls(e: &mut Errors, path: &str, tls: Option<&ClientTlsSettings>) {
    let Some(tls) = tls else { return };
    check_enum(
        e,
        &format!("{path}.mode"),
        tls.mode.as_ref(),
        &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
    );
    match tls.mode.as_deref() {
        Some("ISTIO_MUTUAL") => {
            let files = [
                &tls.client_certificate,
                &tls.private_key,
                &tls.ca_certificates,
                &tls.credential_name,
            ];
            if files.iter().any(|f| f.is_some()) {
                e.push(
                    path,
                    "clientCertificate, privateKey, caCertificates and credentialName may not be set with mode ISTIO_MUTUAL",
                );
            }
        }
        Some("MUTUAL") if tls.credential_name.is_none() => {
            if tls.client_certificate.is_none() {
                e.push(
                    &format!("{path}.clientCertificate"),
                    "Required value with mode MUTUAL",
                );
            }
            if tls.private_key.is_none() {
                e.push(
                    &format!("{path}.privateKey"),
                    "Required value with mode MUTUAL",
                );
            }
        }
        _ => {}
    }
}

// === PeerAuthentication ===

const MTLS_MODES: [&str; 4] = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

/// Validates a PeerAuthentication spec, as Istio's CRD rules and validation do: modes from
/// the enum; `portLevelMtls` only with a selector that has labels, never empty, keyed by
/// port numbers 1-65535.
pub fn peer_authentication(pa: &PeerAuthentication) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let e = &mut errors;
    if let Some(selector) = &pa.selector {
        check_labels(e, "spec.selector.matchLabels", &selector.match_labels, true);
    }
    if let Some(mtls) = &pa.mtls {
        check_enum(e, "spec.mtls.mode", mtls.mode.as_ref(), &MTLS_MODES);
    }
    let Some(ports) = &pa.port_level_mtls else {
        return errors.0;
    };
    if !pa.is_workload_level() {
        // Istio's CEL rule: a port is a property of a workload, so a namespace- or
        // mesh-wide policy cannot name one.
        e.push(
            "spec.portLevelMtls",
            "portLevelMtls requires selector: set spec.selector.matchLabels, or move the port settings to a workload-level policy",
        );
    }
    if ports.is_empty() {
        e.push(
            "spec.portLevelMtls",
            "Invalid value: portLevelMtls, if set, must have at least 1 entry",
        );
    }
    for (key, mtls) in ports {
        let field = crate::yaml::join_key("spec.portLevelMtls", key);
        match key.trim().parse::<i64>() {
            Ok(port) => check_port(e, &field, port),
            Err(_) => e.push(
                &field,
                format!("invalid port {key:?}: type conversion error, expected a port number"),
            ),
        }
        check_enum(e, &format!("{field}.mode"), mtls.mode.as_ref(), &MTLS_MODES);
    }
    errors.0
}
