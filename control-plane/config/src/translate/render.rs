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
        "outbound_traffic_policy": mesh::OutboundTrafficPolicy::try_from(m.outbound_traffic_policy)
            .map_or("?", |p| p.as_str_name()),
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
    let mut out = json!({
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
            if let Some(obj) = route.as_object_mut() {
                if let Some(t) = &r.timeout {
                    obj.insert("timeout".into(), json!(duration(t)));
                }
                if let Some(retries) = &r.retries {
                    obj.insert("retries".into(), retry_json(retries));
                }
                if let Some(fault) = &r.fault {
                    obj.insert("fault".into(), fault_json(fault));
                }
            }
            route
        }).collect::<Vec<_>>(),
        "tcp": s.tcp.iter().map(|r| json!({ "port": r.port, "clusters": clusters_json(&r.clusters) })).collect::<Vec<_>>(),
        "origin": s.origin,
    });
    // Only when set, so the goldens of services reached by name alone stay as they were.
    if !s.addresses.is_empty()
        && let Some(obj) = out.as_object_mut()
    {
        obj.insert("addresses".into(), json!(s.addresses));
    }
    out
}

fn cluster_json(c: &mesh::Cluster) -> Value {
    let lb = c
        .load_balancer
        .as_ref()
        .and_then(|lb| mesh::load_balancer::Simple::try_from(lb.simple).ok())
        .map_or("none", |s| s.as_str_name());
    let mut out = json!({
        "name": c.name,
        "service": c.service,
        "port": c.port,
        "subset": c.subset,
        "protocol": protocol(c.protocol),
        "load_balancer": lb,
        "tls": upstream_tls_json(c.tls.as_ref()),
        "identities": c.identities,
    });
    if let Some(obj) = out.as_object_mut() {
        if let Some(ch) = c
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.consistent_hash.as_ref())
        {
            obj.insert("consistent_hash".into(), consistent_hash_json(ch));
        }
        if let Some(w) = c.load_balancer.as_ref().and_then(|lb| lb.warmup.as_ref()) {
            obj.insert(
                "warmup".into(),
                json!({
                    "duration": opt_duration(w.duration.as_ref()),
                    "minimum_percent": w.minimum_percent,
                    "aggression": w.aggression,
                }),
            );
        }
        if let Some(pool) = &c.connection_pool {
            obj.insert("connection_pool".into(), connection_pool_json(pool));
        }
        if let Some(od) = &c.outlier_detection {
            obj.insert("outlier_detection".into(), outlier_json(od));
        }
        obj.insert(
            "retry_budget".into(),
            match &c.retry_budget {
                None => Value::Null,
                // Weft's default budget on every cluster: one word keeps goldens short.
                Some(b) if !b.configured && b.percent == 20.0 && b.min_retry_concurrency == 3 => {
                    json!("default")
                }
                Some(b) => json!({
                    "percent": b.percent,
                    "min_retry_concurrency": b.min_retry_concurrency,
                    "configured": b.configured,
                }),
            },
        );
    }
    out
}

/// Durations as the existing `timeout` rendering: `<seconds>s+<nanos>ns`.
fn duration(d: &prost_types::Duration) -> String {
    format!("{}s+{}ns", d.seconds, d.nanos)
}

fn opt_duration(d: Option<&prost_types::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(duration(d)))
}

/// Istio's default policy (not written, default numbers) renders as one word, with the
/// consistent-hash variant named, so every default route stays one line in goldens.
fn retry_json(r: &mesh::RetryPolicy) -> Value {
    use mesh::retry_policy::{Condition, GrpcCondition};
    let default = super::resilience::retry_policy(None, !r.retry_ignore_previous_hosts);
    if !r.configured && *r == default {
        return json!(if r.retry_ignore_previous_hosts {
            "istio-default"
        } else {
            "istio-default(consistent-hash: no previous-hosts predicate)"
        });
    }
    json!({
        "attempts": r.attempts,
        "per_try_timeout": opt_duration(r.per_try_timeout.as_ref()),
        "retry_on": r.retry_on.iter().map(|c| Condition::try_from(*c).map_or("?", |c| c.as_str_name())).collect::<Vec<_>>(),
        "retriable_status_codes": r.retriable_status_codes,
        "grpc_retry_on": r.grpc_retry_on.iter().map(|c| GrpcCondition::try_from(*c).map_or("?", |c| c.as_str_name())).collect::<Vec<_>>(),
        "backoff": [opt_duration(r.backoff_base_interval.as_ref()), opt_duration(r.backoff_max_interval.as_ref())],
        "retry_ignore_previous_hosts": r.retry_ignore_previous_hosts,
        "retry_remote_localities": r.retry_remote_localities,
        "configured": r.configured,
    })
}

fn fault_json(f: &mesh::FaultInjection) -> Value {
    use mesh::fault_injection::abort::Error;
    let mut out = Map::new();
    if let Some(d) = &f.delay {
        out.insert(
            "delay".into(),
            json!({ "fixed_delay": opt_duration(d.fixed_delay.as_ref()), "percentage": d.percentage }),
        );
    }
    if let Some(a) = &f.abort {
        let error = match &a.error {
            Some(Error::HttpStatus(s)) => json!({ "http_status": s }),
            Some(Error::GrpcStatus(s)) => json!({ "grpc_status": s }),
            None => Value::Null,
        };
        out.insert(
            "abort".into(),
            json!({ "error": error, "percentage": a.percentage }),
        );
    }
    Value::Object(out)
}

fn consistent_hash_json(ch: &mesh::ConsistentHash) -> Value {
    use mesh::consistent_hash::{Algorithm, HashKey};
    let key = match &ch.hash_key {
        Some(HashKey::HttpHeaderName(h)) => json!({ "http_header_name": h }),
        Some(HashKey::HttpCookie(c)) => json!({ "http_cookie": {
            "name": c.name,
            "path": c.path,
            "ttl": opt_duration(c.ttl.as_ref()),
            "attributes": sorted(&c.attributes),
        } }),
        Some(HashKey::UseSourceIp(b)) => json!({ "use_source_ip": b }),
        Some(HashKey::HttpQueryParameterName(q)) => json!({ "http_query_parameter_name": q }),
        None => Value::Null,
    };
    let algorithm = match &ch.algorithm {
        Some(Algorithm::RingHash(r)) => {
            json!({ "ring_hash": { "minimum_ring_size": r.minimum_ring_size } })
        }
        Some(Algorithm::Maglev(m)) => json!({ "maglev": { "table_size": m.table_size } }),
        None => Value::Null,
    };
    json!({ "key": key, "algorithm": algorithm })
}

fn connection_pool_json(p: &mesh::ConnectionPool) -> Value {
    use mesh::connection_pool::http::H2UpgradePolicy;
    json!({
        "tcp": p.tcp.as_ref().map(|t| json!({
            "max_connections": t.max_connections,
            "connect_timeout": opt_duration(t.connect_timeout.as_ref()),
            "tcp_keepalive": t.tcp_keepalive.as_ref().map(|k| json!({
                "probes": k.probes,
                "time": opt_duration(k.time.as_ref()),
                "interval": opt_duration(k.interval.as_ref()),
            })),
            "max_connection_duration": opt_duration(t.max_connection_duration.as_ref()),
            "idle_timeout": opt_duration(t.idle_timeout.as_ref()),
        })),
        "http": p.http.as_ref().map(|h| json!({
            "http1_max_pending_requests": h.http1_max_pending_requests,
            "http2_max_requests": h.http2_max_requests,
            "max_requests_per_connection": h.max_requests_per_connection,
            "max_retries": h.max_retries,
            "idle_timeout": opt_duration(h.idle_timeout.as_ref()),
            "max_concurrent_streams": h.max_concurrent_streams,
            "h2_upgrade_policy": H2UpgradePolicy::try_from(h.h2_upgrade_policy).map_or("?", |p| p.as_str_name()),
            "use_client_protocol": h.use_client_protocol,
        })),
    })
}

fn outlier_json(o: &mesh::OutlierDetection) -> Value {
    json!({
        "consecutive_5xx_errors": o.consecutive_5xx_errors,
        "consecutive_gateway_errors": o.consecutive_gateway_errors,
        "consecutive_local_origin_failures": o.consecutive_local_origin_failures,
        "split_external_local_origin_errors": o.split_external_local_origin_errors,
        "interval": opt_duration(o.interval.as_ref()),
        "base_ejection_time": opt_duration(o.base_ejection_time.as_ref()),
        "max_ejection_percent": o.max_ejection_percent,
        "min_health_percent": o.min_health_percent,
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
