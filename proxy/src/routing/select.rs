//! From a request to a cluster: service by host, route, weighted cluster; then, per attempt,
//! the cluster's balancer picks the endpoint. Randomness is passed in so tests can seed it.

use std::sync::Arc;

use rand::RngExt;

use super::matches::{RequestView, match_route};
use crate::balance::PickCtx;
use crate::errors::{ErrorKind, ProxyError};
use crate::model::{Cluster, HttpRoute, Service, Snapshot, WeightedCluster};
use crate::resilience::{EndpointScope, Reason};

/// Where an HTTP request goes: the route that selected it and the weighted cluster drawn.
/// The endpoint is picked per attempt ([`pick_endpoint`]), since retries pick again.
#[derive(Debug, Clone)]
pub struct HttpDecision {
    pub service: Arc<Service>,
    /// Index into `service.http`; an index (not a clone) keeps the hot path allocation-free.
    route: usize,
    pub cluster: Arc<Cluster>,
}

/// Where an opaque TCP stream goes.
#[derive(Debug, Clone)]
pub struct TcpDecision {
    pub service: Option<Arc<Service>>,
    pub cluster: Arc<Cluster>,
}

impl HttpDecision {
    /// The route that selected the request (its retries, timeout and faults apply).
    pub fn route(&self) -> &HttpRoute {
        &self.service.http[self.route]
    }
}

/// Splits an authority into host and port; `default_port` when it names none.
/// IPv6 literals keep their brackets off: "[::1]:80" -> ("::1", 80).
pub fn parse_authority(authority: &str, default_port: u16) -> Result<(&str, u16), ProxyError> {
    let bad = || {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("{authority:?} is not a valid host[:port]"),
        )
    };
    if authority.is_empty() {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request names no host (no absolute URI, :authority or Host header)",
        ));
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, p.parse().map_err(|_| bad())?)),
            None if after.is_empty() => Ok((host, default_port)),
            None => Err(bad()),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() => Ok((host, p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None => Ok((authority, default_port)),
    }
}

/// Routes an HTTP request: host -> service -> first matching route -> weighted cluster.
pub fn select_http(
    snapshot: &Snapshot,
    host: &str,
    req: &RequestView<'_>,
    rng: &mut impl rand::Rng,
) -> Result<HttpDecision, ProxyError> {
    let service = service_for(snapshot, host, req.port)?;
    select_http_in(snapshot, service, req, rng)
}

/// [`select_http`] once the service is known (intercepted traffic: by original destination).
pub fn select_http_in(
    snapshot: &Snapshot,
    service: &Arc<Service>,
    req: &RequestView<'_>,
    rng: &mut impl rand::Rng,
) -> Result<HttpDecision, ProxyError> {
    let route_idx = match_route(service, req).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "no route of {} matches {} {}",
                origin_of(service),
                req.method,
                req.path
            ),
        )
    })?;
    let route = &service.http[route_idx];
    let wc = pick_weighted(&route.clusters, rng).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::NoCluster,
            format!(
                "route {:?} of {} has no destination",
                route.name,
                origin_of(service)
            ),
        )
    })?;
    let cluster = cluster_for(snapshot, &wc.cluster)?;
    Ok(HttpDecision {
        service: service.clone(),
        route: route_idx,
        cluster,
    })
}

/// Routes an opaque TCP stream (CONNECT): the service's first TCP route for the port, or
/// the service's default cluster `outbound|<port>||<host>` when it has none.
pub fn select_tcp(
    snapshot: &Snapshot,
    host: &str,
    port: u16,
    rng: &mut impl rand::Rng,
) -> Result<TcpDecision, ProxyError> {
    let service = service_for(snapshot, host, port)?;
    select_tcp_in(snapshot, service, port, rng)
}

/// [`select_tcp`] once the service is known (intercepted traffic: by original destination).
pub fn select_tcp_in(
    snapshot: &Snapshot,
    service: &Arc<Service>,
    port: u16,
    rng: &mut impl rand::Rng,
) -> Result<TcpDecision, ProxyError> {
    let route = service
        .tcp
        .iter()
        .find(|r| r.port.is_none_or(|p| p == port));
    let cluster_name = match route {
        Some(r) => pick_weighted(&r.clusters, rng)
            .map(|wc| wc.cluster.clone())
            .ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::NoCluster,
                    format!("a tcp route of {} has no destination", origin_of(service)),
                )
            })?,
        None => format!("outbound|{port}||{}", service.name),
    };
    let cluster = cluster_for(snapshot, &cluster_name)?;
    Ok(TcpDecision {
        service: Some(service.clone()),
        cluster,
    })
}

/// The endpoint (an index into `cluster.endpoints`) for one attempt, by the cluster's
/// balancer: skipping ejected endpoints, avoiding `ctx.exclude` when it can, following the
/// request's affinity hash. None left: 503 `no_healthy_endpoints(subset=..|cluster=..)`.
pub fn pick_endpoint(
    cluster: &Cluster,
    ctx: &PickCtx<'_>,
    rng: &mut impl rand::Rng,
) -> Result<usize, ProxyError> {
    cluster
        .balancer
        .pick(ctx, rng)
        .filter(|i| *i < cluster.endpoints.len())
        .ok_or_else(|| no_endpoints(cluster, ctx))
}

fn service_for<'s>(
    snapshot: &'s Snapshot,
    host: &str,
    port: u16,
) -> Result<&'s Arc<Service>, ProxyError> {
    let service = snapshot.service_for_host(host).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::NoRoute,
            format!("no service named {host}:{port} is known to this proxy"),
        )
    })?;
    if !service.has_port(port) {
        let ports: Vec<String> = service.ports.iter().map(|p| p.number.to_string()).collect();
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "service {} has no port {port} (it serves {})",
                service.name,
                ports.join(", ")
            ),
        ));
    }
    Ok(service)
}

fn cluster_for(snapshot: &Snapshot, name: &str) -> Result<Arc<Cluster>, ProxyError> {
    snapshot.cluster(name).cloned().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::NoCluster,
            format!("no cluster named {name} is known to this proxy"),
        )
    })
}

fn no_endpoints(cluster: &Cluster, ctx: &PickCtx<'_>) -> ProxyError {
    let spec = &cluster.spec;
    let scope = if spec.subset.is_empty() {
        EndpointScope::Cluster(spec.name.clone())
    } else {
        EndpointScope::Subset(spec.subset.clone())
    };
    let detail = if cluster.endpoints.is_empty() {
        format!("cluster {} has no endpoints", spec.name)
    } else {
        format!(
            "every endpoint of cluster {} is ejected by outlier detection ({} endpoints)",
            spec.name,
            cluster.balancer.ejected(ctx.now)
        )
    };
    ProxyError::new(ErrorKind::NoHealthyUpstream, detail)
        .with_reason(Reason::NoHealthyEndpoints(scope))
}

fn origin_of(svc: &Service) -> String {
    if svc.origin.is_empty() {
        format!("service {}", svc.name)
    } else {
        format!("service {} ({})", svc.name, svc.origin)
    }
}

/// Weighted choice among clusters. Weights are relative; zero-weight entries are never chosen
/// unless every weight is zero, in which case the choice is uniform (a lone destination with
/// no weight is the common case of that).
pub fn pick_weighted<'c>(
    clusters: &'c [WeightedCluster],
    rng: &mut impl rand::Rng,
) -> Option<&'c WeightedCluster> {
    match clusters {
        [] => None,
        [only] => Some(only),
        _ => {
            let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                return clusters.get(rng.random_range(0..clusters.len()));
            }
            let mut roll = rng.random_range(0..total);
            clusters.iter().find(|c| {
                let w = u64::from(c.weight);
                if roll < w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
        }
    }
}
