//! Wire resources -> model types. This is the one place that decides what the proxy refuses,
//! so every NACK reason is written here and names the field at fault.
//!
//! (This module and `xds/` are the only ones that import `weft_api`: the model is meant to
//! become its own crate, `weft-proxy-model`, which owns these conversions.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderName;
use weft_api::mesh as pb;

use super::net::IpNet;
use super::types::*;

/// Why a resource cannot be applied; its `Display` becomes the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidResource {
    /// Path of the offending field inside the resource, e.g. `http[0].matches[1].uri.regex`.
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidResource {
    InvalidResource {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Prefixes nested field paths so an error reads from the resource root.
fn within(prefix: &str) -> impl Fn(InvalidResource) -> InvalidResource + '_ {
    move |e| InvalidResource {
        field: if e.field.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", e.field)
        },
        reason: e.reason,
    }
}

fn port_u16(field: &str, n: u32) -> Result<u16, InvalidResource> {
    u16::try_from(n).map_err(|_| invalid(field, format!("port {n} is out of range")))
}

// === Mesh, Inbound ===

impl TryFrom<&pb::Mesh> for Mesh {
    type Error = InvalidResource;
    fn try_from(m: &pb::Mesh) -> Result<Self, Self::Error> {
        for (n, pem) in m.trust_bundle.iter().enumerate() {
            check_pem_certs(pem).map_err(|r| invalid(format!("trust_bundle[{n}]"), r))?;
        }
        let outbound_traffic_policy =
            match pb::OutboundTrafficPolicy::try_from(m.outbound_traffic_policy) {
                Ok(pb::OutboundTrafficPolicy::AllowAny) => OutboundTrafficPolicy::AllowAny,
                Ok(pb::OutboundTrafficPolicy::RegistryOnly) => OutboundTrafficPolicy::RegistryOnly,
                // A mode from a newer control plane may be stricter than ALLOW_ANY; guessing would
                // let through traffic the operator meant to stop.
                Err(_) => {
                    return Err(invalid(
                        "outbound_traffic_policy",
                        format!(
                            "unknown outbound traffic policy {}",
                            m.outbound_traffic_policy
                        ),
                    ));
                }
            };
        Ok(Self {
            trust_domain: m.trust_domain.clone(),
            dns_domain: m.dns_domain.clone(),
            trust_bundle: m.trust_bundle.clone(),
            outbound_traffic_policy,
        })
    }
}

impl TryFrom<&pb::Inbound> for Inbound {
    type Error = InvalidResource;
    fn try_from(i: &pb::Inbound) -> Result<Self, Self::Error> {
        let address =
            if i.address.is_empty() {
                None
            } else {
                Some(i.address.parse::<IpAddr>().map_err(|_| {
                    invalid("address", format!("{:?} is not an IP address", i.address))
                })?)
            };
        let ports = i
            .ports
            .iter()
            .enumerate()
            .map(|(n, p)| Port::try_from(p).map_err(within(&format!("ports[{n}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: i.name.clone(),
            namespace: i.namespace.clone(),
            address,
            labels: i
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            service_account: i.service_account.clone(),
            identity: i.identity.clone(),
            ports,
            mtls_mode: mtls_mode("mtls_mode", i.mtls_mode)?,
            port_mtls: i
                .port_mtls
                .iter()
                .map(|(p, m)| {
                    let field = format!("port_mtls[{p}]");
                    Ok((port_u16(&field, *p)?, mtls_mode(&field, *m)?))
                })
                .collect::<Result<_, InvalidResource>>()?,
        })
    }
}

/// A PEM string must hold at least one parseable certificate.
fn check_pem_certs(pem: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        c.map_err(|e| format!("not a PEM certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

fn mtls_mode(field: &str, m: i32) -> Result<MtlsMode, InvalidResource> {
    match pb::MtlsMode::try_from(m) {
        Ok(pb::MtlsMode::Unspecified | pb::MtlsMode::Permissive) => Ok(MtlsMode::Permissive),
        Ok(pb::MtlsMode::Strict) => Ok(MtlsMode::Strict),
        Ok(pb::MtlsMode::Disable) => Ok(MtlsMode::Disable),
        // A mode this proxy does not know could be stricter than anything it can enforce.
        Err(_) => Err(invalid(field, format!("unknown mTLS mode {m}"))),
    }
}

fn protocol(p: i32) -> Protocol {
    match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Http) => Protocol::Http,
        Ok(pb::Protocol::Http2) => Protocol::Http2,
        Ok(pb::Protocol::Grpc) => Protocol::Grpc,
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Tls) => Protocol::Tls,
        Ok(pb::Protocol::Https) => Protocol::Https,
        // Unknown values come from a newer control plane: treat them as "not declared".
        Ok(pb::Protocol::Unspecified) | Err(_) => Protocol::Unspecified,
    }
}

impl TryFrom<&pb::Port> for Port {
    type Error = InvalidResource;
    fn try_from(p: &pb::Port) -> Result<Self, Self::Error> {
        let number = port_u16("number", p.number)?;
        let target_port = match port_u16("target_port", p.target_port)? {
            0 => number,
            t => t,
        };
        Ok(Self {
            number,
            name: p.name.clone(),
            protocol: protocol(p.protocol),
            target_port,
        })
    }
}

// === Service ===

impl TryFrom<&pb::Service> for Service {
    type Error = InvalidResource;
    fn try_from(s: &pb::Service) -> Result<Self, Self::Error> {
        if s.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let ports = s
            .ports
            .iter()
            .enumerate()
            .map(|(n, p)| Port::try_from(p).map_err(within(&format!("ports[{n}]"))))
            .collect::<Result<_, _>>()?;
        let http = s
            .http
            .iter()
            .enumerate()
            .map(|(n, r)| HttpRoute::try_from(r).map_err(within(&format!("http[{n}]"))))
            .collect::<Result<_, _>>()?;
        let tcp = s
            .tcp
            .iter()
            .enumerate()
            .map(|(n, r)| TcpRoute::try_from(r).map_err(within(&format!("tcp[{n}]"))))
            .collect::<Result<_, _>>()?;
        let addresses = s
            .addresses
            .iter()
            .enumerate()
            .map(|(n, a)| IpNet::parse(a).map_err(|r| invalid(format!("addresses[{n}]"), r)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            aliases: s.aliases.clone(),
            ports,
            http,
            tcp,
            origin: s.origin.clone(),
            addresses,
        })
    }
}

fn weighted(clusters: &[pb::WeightedCluster]) -> Result<Vec<WeightedCluster>, InvalidResource> {
    clusters
        .iter()
        .enumerate()
        .map(|(n, c)| {
            if c.cluster.is_empty() {
                Err(invalid(
                    format!("clusters[{n}].cluster"),
                    "must not be empty",
                ))
            } else {
                Ok(WeightedCluster {
                    cluster: c.cluster.clone(),
                    weight: c.weight,
                })
            }
        })
        .collect()
}

impl TryFrom<&pb::HttpRoute> for HttpRoute {
    type Error = InvalidResource;
    fn try_from(r: &pb::HttpRoute) -> Result<Self, Self::Error> {
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(n, m)| HttpMatch::try_from(m).map_err(within(&format!("matches[{n}]"))))
            .collect::<Result<_, _>>()?;
        let timeout = crate::resilience::route_timeout(r.timeout.as_ref())
            .map_err(|e| invalid("timeout", e))?;
        let retries = crate::resilience::RetryPolicy::from_route(r.retries.as_ref())
            .map_err(|e| field_error("retries", e))?;
        let fault = r
            .fault
            .as_ref()
            .map(crate::resilience::Fault::from_proto)
            .transpose()
            .map_err(|e| field_error("fault", e))?
            .map(Arc::new);
        Ok(Self {
            name: r.name.clone(),
            matches,
            clusters: weighted(&r.clusters)?,
            timeout,
            retries: Arc::new(retries),
            fault,
        })
    }
}

/// A `"<field>: <why>"` error from a nested converter, rooted at `prefix`.
fn field_error(prefix: &str, e: String) -> InvalidResource {
    match e.split_once(": ") {
        Some((field, why)) if !field.contains(' ') && prefix.is_empty() => {
            invalid(field, why.to_string())
        }
        Some((field, why)) if !field.contains(' ') => {
            invalid(format!("{prefix}.{field}"), why.to_string())
        }
        _ => invalid(prefix, e),
    }
}

impl TryFrom<&pb::TcpRoute> for TcpRoute {
    type Error = InvalidResource;
    fn try_from(r: &pb::TcpRoute) -> Result<Self, Self::Error> {
        Ok(Self {
            port: match port_u16("port", r.port)? {
                0 => None,
                p => Some(p),
            },
            clusters: weighted(&r.clusters)?,
        })
    }
}

fn string_match(
    field: &str,
    m: &Option<pb::StringMatch>,
) -> Result<Option<StringMatch>, InvalidResource> {
    use pb::string_match::Kind;
    let Some(m) = m else { return Ok(None) };
    Ok(match &m.kind {
        // An empty StringMatch matches anything, like an absent one.
        None => None,
        Some(Kind::Exact(s)) => Some(StringMatch::Exact(s.clone())),
        Some(Kind::Prefix(s)) => Some(StringMatch::Prefix(s.clone())),
        Some(Kind::Regex(r)) => Some(StringMatch::Regex(compile_regex(field, r)?)),
    })
}

/// Compiles a regex with Istio's whole-value semantics (RE2 `FullMatch`).
fn compile_regex(field: &str, pattern: &str) -> Result<regex::Regex, InvalidResource> {
    regex::Regex::new(&format!("{ANCHOR_START}{pattern}{ANCHOR_END}")).map_err(|e| {
        // The regex crate's message spans lines; keep the NACK reason on one.
        let msg = e
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        invalid(
            format!("{field}.regex"),
            format!("invalid regex {pattern:?}: {msg}"),
        )
    })
}

fn header_matches(
    field: &str,
    map: &std::collections::BTreeMap<String, pb::StringMatch>,
) -> Result<Vec<HeaderMatch>, InvalidResource> {
    let mut out: Vec<HeaderMatch> = Vec::with_capacity(map.len());
    for (name, m) in map {
        let f = format!("{field}[{name}]");
        let header = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid(&f, format!("{name:?} is not a valid header name")))?;
        // An empty match means "header present with any value".
        let value = string_match(&f, &Some(m.clone()))?
            .unwrap_or_else(|| StringMatch::Prefix(String::new()));
        out.push(HeaderMatch {
            name: header,
            value,
        });
    }
    // Protobuf maps have no order; sort so dumps and tests are stable.
    out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(out)
}

impl TryFrom<&pb::HttpMatch> for HttpMatch {
    type Error = InvalidResource;
    fn try_from(m: &pb::HttpMatch) -> Result<Self, Self::Error> {
        let mut query_params = Vec::with_capacity(m.query_params.len());
        for (name, v) in &m.query_params {
            let f = format!("query_params[{name}]");
            let value = string_match(&f, &Some(v.clone()))?
                .unwrap_or_else(|| StringMatch::Prefix(String::new()));
            query_params.push(QueryMatch {
                name: name.clone(),
                value,
            });
        }
        query_params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            name: m.name.clone(),
            uri: string_match("uri", &m.uri)?,
            scheme: string_match("scheme", &m.scheme)?,
            method: string_match("method", &m.method)?,
            authority: string_match("authority", &m.authority)?,
            headers: header_matches("headers", &m.headers)?,
            without_headers: header_matches("without_headers", &m.without_headers)?,
            query_params,
            port: match port_u16("port", m.port)? {
                0 => None,
                p => Some(p),
            },
            ignore_uri_case: m.ignore_uri_case,
        })
    }
}

// === Cluster, Endpoints ===

impl TryFrom<&pb::Cluster> for ClusterSpec {
    type Error = InvalidResource;
    fn try_from(c: &pb::Cluster) -> Result<Self, Self::Error> {
        if c.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let lb = match &c.load_balancer {
            Some(lb) => crate::balance::LbConfig::from_proto(lb)
                .map_err(|e| field_error("load_balancer", e))?,
            None => crate::balance::LbConfig::default(),
        };
        let outlier = c
            .outlier_detection
            .as_ref()
            .map(crate::balance::OutlierConfig::from_proto)
            .transpose()
            .map_err(|e| field_error("outlier_detection", e))?;
        let (tls, origination) = upstream_tls(c.tls.as_ref())?;
        let policy =
            crate::resilience::ClusterPolicy::from_proto(c).map_err(|e| field_error("", e))?;
        Ok(Self {
            name: c.name.clone(),
            service: c.service.clone(),
            port: port_u16("port", c.port)?,
            subset: c.subset.clone(),
            protocol: protocol(c.protocol),
            lb,
            outlier,
            tls,
            origination,
            identities: c.identities.clone(),
            policy,
        })
    }
}

/// The client-side TLS mode and, for SIMPLE/MUTUAL, its settings. Only malformed data is
/// refused (an unknown mode, inline PEM that does not parse, an SNI that is no server name):
/// a NACK rejects the whole response, so anything the proxy merely cannot do (MUTUAL, an
/// unreadable CA file) fails that cluster's requests instead.
fn upstream_tls(
    t: Option<&pb::UpstreamTls>,
) -> Result<(UpstreamTlsMode, Option<OriginationTls>), InvalidResource> {
    use pb::upstream_tls::Mode;
    let Some(t) = t else {
        return Ok((UpstreamTlsMode::Auto, None));
    };
    let mode = match Mode::try_from(t.mode) {
        Ok(Mode::Auto) => return Ok((UpstreamTlsMode::Auto, None)),
        Ok(Mode::Disable) => return Ok((UpstreamTlsMode::Disable, None)),
        Ok(Mode::IstioMutual) => return Ok((UpstreamTlsMode::IstioMutual, None)),
        Ok(Mode::Simple) => UpstreamTlsMode::Simple,
        Ok(Mode::Mutual) => UpstreamTlsMode::Mutual,
        Err(_) => return Err(invalid("tls.mode", format!("unknown mode {}", t.mode))),
    };
    if !t.sni.is_empty() {
        rustls_pki_types::ServerName::try_from(t.sni.as_str())
            .map_err(|e| invalid("tls.sni", format!("{:?} is not a server name: {e}", t.sni)))?;
    }
    let ca = t.ca_certificates.trim();
    let ca_certificates = if ca.is_empty() {
        CaCertificates::System
    } else if ca.starts_with("-----BEGIN") {
        check_pem_certs(ca).map_err(|r| invalid("tls.ca_certificates", r))?;
        CaCertificates::Inline(ca.to_string())
    } else {
        CaCertificates::File(ca.to_string())
    };
    Ok((
        mode,
        Some(OriginationTls {
            sni: t.sni.clone(),
            subject_alt_names: t.subject_alt_names.clone(),
            ca_certificates,
            insecure_skip_verify: t.insecure_skip_verify,
        }),
    ))
}

/// Converts an `Endpoints` resource into its endpoint list.
pub fn endpoints_from_proto(e: &pb::Endpoints) -> Result<Vec<Endpoint>, InvalidResource> {
    e.endpoints
        .iter()
        .enumerate()
        .map(|(n, ep)| Endpoint::try_from(ep).map_err(within(&format!("endpoints[{n}]"))))
        .collect()
}

impl TryFrom<&pb::Endpoint> for Endpoint {
    type Error = InvalidResource;
    fn try_from(e: &pb::Endpoint) -> Result<Self, Self::Error> {
        let ip: IpAddr = e
            .address
            .parse()
            .map_err(|_| invalid("address", format!("{:?} is not an IP address", e.address)))?;
        let port = port_u16("port", e.port)?;
        if port == 0 {
            return Err(invalid("port", "must not be 0"));
        }
        let mesh_port = match port_u16("mesh_port", e.mesh_port)? {
            0 => None,
            p => Some(p),
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            mesh_port,
            identity: e.identity.clone(),
            weight: e.weight.max(1),
            workload: e.workload.clone(),
            labels: e
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}
