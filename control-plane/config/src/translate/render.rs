//! A stable text form of a proxy's resources, for golden tests and `weftctl proxy-config`.
//!
//! The generated protobuf types have no serde support; this renders every message to JSON
//! by hand, with maps sorted, after decoding the packed `Any`s (so the packing is checked
//! too).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use weft_api::mesh;
use weft_api::type_url::{self, Resource as _, UnpackError};

use super::ProxyResources;

/// Decodes and renders every resource: `{ "<short type>": { "<name>": {...} } }`.
pub fn to_json(resources: &ProxyResources) -> Result<Value, UnpackError> {
    let mut out = Map::new();
    for (type_url, by_name) in &resources.by_type {
        let mut rendered = Map::new();
        for (name, any) in by_name {
            let value = match *type_url {
                type_url::MESH => mesh_json(&mesh::Mesh::from_any(any)?),
                type_url::INBOUND => inbound_json(&mesh::Inbound::from_any(any)?),
                type_url::SERVICE => service_json(&mesh::Service::from_any(any)?),
                type_url::CLUSTER => cluster_json(&mesh::Cluster::from_any(any)?),
                type_url::ENDPOINTS => endpoints_json(&mesh::Endpoints::from_any(any)?),
                other => json!({ "unknown type": other }),
            };
            rendered.insert(name.clone(), value);
        }
        out.insert(
            type_url::short_name(type_url).to_string(),
            Value::Object(rendered),
        );
    }
    Ok(Value::Object(out))
}

fn sorted<'a, V: 'a>(
    map: impl IntoIterator<Item = (&'a String, &'a V)>,
) -> BTreeMap<&'a String, &'a V> {
    map.into_iter().collect()
}

fn mesh_json(m: &mesh::Mesh) -> Value {
    json!({
        "trust_domain": m.trust_domain,
        "dns_domain": m.dns_domain,
        "trust_bundle": m.trust_bundle,
    })
}

fn mtls_mode(m: i32) -> &'static str {
    mesh::MtlsMode::try_from(m).map_or("?", |m| m.as_str_name())
}

fn protocol(p: i32) -> &'static str {
    mesh::Protocol::try_from(p).map_or("?", |p| p.as_str_name())
}

fn port_json(p: &mesh::Port) -> Value {
    json!({
        "number": p.number,
        "name": p.name,
        "protocol": protocol(p.protocol),
        "target_port": p.target_port,
    })
}

fn inbound_json(i: &mesh::Inbound) -> Value {
    json!({
        "name": i.name,
        "namespace": i.namespace,
        "address": i.address,
        "labels": sorted(&i.labels),
        "service_account": i.service_account,
        "identity": i.identity,
        "ports": i.ports.iter().map(port_json).collect::<Vec<_>>(),
        "mtls_mode": mtls_mode(i.mtls_mode),
        "port_mtls": i.port_mtls.iter().map(|(port, mode)| (port.to_string(), json!(mtls_mode(*mode)))).collect::<Map<_, _>>(),
    })
}

/// The mode always; other fields only when set, to keep goldens readable.
fn upstream_tls_json(tls: Option<&mesh::UpstreamTls>) -> Value {
    let Some(tls) = tls else {
        return Value::Null;
    };
    let mode = mesh::upstream_tls::Mode::try_from(tls.mode).map_or("?", |m| m.as_str_name());
    let mut out = Map::new();
    out.insert("mode".into(), json!(mode));
    if !tls.sni.is_empty() {
        out.insert("sni".into(), json!(tls.sni));
    }
    if !tls.subject_alt_names.is_empty() {
        out.insert("subject_alt_names".into(), json!(tls.subject_alt_names));
    }
    if !tls.ca_certificates.is_empty() {
        out.insert("ca_certificates".into(), json!(tls.ca_certificates));
    }
    if tls.insecure_skip_verify {
        out.insert("insecure_skip_verify".into(), json!(true));
    }
    Value::Object(out)
}

fn string_match_json(m: &mesh::StringMatch) -> Value {
    use mesh::string_match::Kind;
    match &m.kind {
        Some(Kind::Exact(v)) => json!({ "exact": v }),
        Some(Kind::Prefix(v)) => json!({ "prefix": v }),
        Some(Kind::Regex(v)) => json!({ "regex": v }),
        None => json!({}),
    }
}

fn match_map_json<'a>(m: impl IntoIterator<Item = (&'a String, &'a mesh::StringMatch)>) -> Value {
    Value::Object(
        sorted(m)
            .into_iter()
            .map(|(k, v)| (k.clone(), string_match_json(v)))
            .collect(),
    )
}

fn http_match_json(m: &mesh::HttpMatch) -> Value {
    let mut out = Map::new();
    if !m.name.is_empty() {
        out.insert("name".into(), json!(m.name));
    }
    for (key, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), string_match_json(v));
        }
    }
    if !m.headers.is_empty() {
        out.insert("headers".into(), match_map_json(&m.headers));
    }
    if !m.without_headers.is_empty() {
        out.insert("without_headers".into(), match_map_json(&m.without_headers));
    }
    if !m.query_params.is_empty() {
        out.insert("query_params".into(), match_map_json(&m.query_params));
    }
    if m.port != 0 {
        out.insert("port".into(), json!(m.port));
    }
    if m.ignore_uri_case {
        out.insert("ignore_uri_case".into(), json!(true));
    }
    Value::Object(out)
}

fn clusters_json(c: &[mesh::WeightedCluster]) -> Value {
    c.iter()
        .map(|c| json!({ "cluster": c.cluster, "weight": c.weight }))
        .collect()
}

fn service_json(s: &mesh::Service) -> Value {
    json!({
        "name": s.name,
        "namespace": s.namespace,
        "aliases": s.aliases,
        "ports": s.ports.iter().map(port_json).collect::<Vec<_>>(),
        "http": s.http.iter().map(|r| {
            let mut route = json!({
                "name": r.name,
                "matches": r.matches.iter().map(http_match_json).collect::<Vec<_>>(),
                "clusters": clusters_json(&r.clusters),
            });
            if let (Some(t), Some(obj)) = (&r.timeout, route.as_object_mut()) {
                obj.insert("timeout".into(), json!(format!("{}s+{}ns", t.seconds, t.nanos)));
            }
            route
        }).collect::<Vec<_>>(),
        "tcp": s.tcp.iter().map(|r| json!({ "port": r.port, "clusters": clusters_json(&r.clusters) })).collect::<Vec<_>>(),
        "origin": s.origin,
    })
}

fn cluster_json(c: &mesh::Cluster) -> Value {
    let lb = c
        .load_balancer
        .as_ref()
        .and_then(|lb| mesh::load_balancer::Simple::try_from(lb.simple).ok())
        .map_or("none", |s| s.as_str_name());
    json!({
        "name": c.name,
        "service": c.service,
        "port": c.port,
        "subset": c.subset,
        "protocol": protocol(c.protocol),
        "load_balancer": lb,
        "tls": upstream_tls_json(c.tls.as_ref()),
        "identities": c.identities,
    })
}

fn endpoints_json(e: &mesh::Endpoints) -> Value {
    json!({
        "cluster": e.cluster,
        "endpoints": e.endpoints.iter().map(|ep| json!({
            "address": ep.address,
            "port": ep.port,
            "labels": sorted(&ep.labels),
            "identity": ep.identity,
            "weight": ep.weight,
            "mesh_port": ep.mesh_port,
            "workload": ep.workload,
        })).collect::<Vec<_>>(),
    })
}
