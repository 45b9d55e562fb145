//! W7: one real `weft-proxy` against a control plane holding K services x 3 endpoints; its
//! memory once it holds the whole config, and the slope per service and per endpoint.
//!
//! Readiness is the proxy's `/ready` (every type applied once) and then the control plane's
//! `/debug/syncz` showing the proxy's stream with every type ACKed at the version last sent
//! (the config was fully loaded before the CP said ready, so that version is the whole
//! config). `/config_dump` is read only after the memory figures, since rendering it
//! allocates in the proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::agg::{fit1, fit2};
use super::config::Mesh;
use super::procs::{self, ControlPlane, Proc};
use super::{Skip, Spec, W7Report, W7Row};

/// Endpoints per service of the main series (PERFORMANCE.md §7.3 W7).
pub const ENDPOINTS_PER_SERVICE: usize = 3;

pub async fn run(spec: &Spec) -> W7Report {
    let mut report = W7Report {
        endpoints_per_service: ENDPOINTS_PER_SERVICE,
        rows: Vec::new(),
        skipped: Vec::new(),
        kib_per_service: None,
        kib_per_endpoint: None,
        kib_per_service_with_endpoints: None,
    };
    let mut sizes = spec.config_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    // The main series, then one point with 1 endpoint per service at the largest size, so
    // that the per-service and per-endpoint slopes can be told apart.
    let mut points: Vec<(usize, usize)> = sizes
        .iter()
        .map(|&k| (k, k * ENDPOINTS_PER_SERVICE))
        .collect();
    if let Some(&largest) = sizes.last()
        && sizes.len() >= 2
    {
        points.push((largest, largest));
    }
    for (i, &(services, endpoints)) in points.iter().enumerate() {
        // The extra point is only worth its time if the main series reached that size.
        if endpoints == services
            && !report
                .rows
                .iter()
                .any(|r| r.services == services && r.endpoints > endpoints)
        {
            report.skipped.push(Skip {
                what: format!("W7 {services} services x {endpoints} endpoints"),
                reason: "the main series did not complete at this size".into(),
            });
            continue;
        }
        let what = format!("W7 {services} services x {endpoints} endpoints");
        eprintln!("meshbench scale: {what} ...");
        let dir = spec.work_dir.join(format!("w7-{services}-{endpoints}"));
        // A distinct loopback address per run, so a lingering socket of a previous proxy
        // cannot collide.
        let ip = Ipv4Addr::new(127, 0, 0, 100 + (i % 100) as u8);
        let result = run_one(spec, &dir, services, endpoints, ip).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(row) => report.rows.push(row),
            Err(e) => {
                eprintln!("meshbench scale: {what} failed: {e:#}");
                report.skipped.push(Skip {
                    what,
                    reason: format!("failed: {e:#}"),
                });
            }
        }
    }
    let kib = |r: &W7Row| r.rss_kib as f64;
    let pts: Vec<(f64, f64, f64)> = report
        .rows
        .iter()
        .map(|r| (r.services as f64, r.endpoints as f64, kib(r)))
        .collect();
    if let Some((_, per_service, per_endpoint)) = fit2(&pts) {
        report.kib_per_service = Some(per_service);
        report.kib_per_endpoint = Some(per_endpoint);
    }
    let main: Vec<(f64, f64)> = report
        .rows
        .iter()
        .filter(|r| r.endpoints == r.services * ENDPOINTS_PER_SERVICE)
        .map(|r| (r.services as f64, kib(r)))
        .collect();
    report.kib_per_service_with_endpoints = fit1(&main).map(|(_, b)| b);
    report
}

async fn run_one(
    spec: &Spec,
    dir: &Path,
    services: usize,
    endpoints: usize,
    ip: Ipv4Addr,
) -> anyhow::Result<W7Row> {
    let mesh = Mesh::new(services, endpoints);
    mesh.write_all(dir)?;
    let node_id = mesh
        .node_id(0)
        .ok_or_else(|| anyhow!("no workload to run the proxy as"))?;
    // Generous for the size, but bounded: past it the proxy is not converging (it gives up
    // on a stream whose answer takes more than 15 s and retries, which restarts the CP's
    // translation) and the row reports that instead of hanging the run.
    let timeout = Duration::from_secs(90) + Duration::from_millis(6 * services as u64);
    let cp = ControlPlane::start(&spec.control, dir, timeout)
        .await
        .context("start weft-control")?;
    let ipa = IpAddr::V4(ip);
    let (outbound, inbound, admin_port) = (
        procs::free_port(ipa)?,
        procs::free_port(ipa)?,
        procs::free_port(ipa)?,
    );
    let args: Vec<String> = [
        "run",
        "--node-id",
        &node_id,
        "--address",
        &ip.to_string(),
        "--xds-addr",
        &cp.xds.to_string(),
        "--concurrency",
        "1",
        "--outbound-port",
        &outbound.to_string(),
        "--inbound-port",
        &inbound.to_string(),
        "--admin-port",
        &admin_port.to_string(),
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t0 = Instant::now();
    let mut proxy = Proc::spawn("weft-proxy", &spec.proxy, &args)?;
    let admin = SocketAddr::new(ipa, admin_port);
    procs::wait_ready(&mut proxy, admin, timeout).await?;
    wait_acked(&cp, &node_id, &mut proxy, timeout).await?;
    let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_kib = proxy.rss_kib()?;
    let hwm_kib = proxy.hwm_kib()?;
    let cp_rss_kib = cp.child.rss_kib()?;
    let (status, body) = procs::http_get(admin, "/config_dump").await?;
    if status != 200 {
        bail!("/config_dump answered {status}");
    }
    let dump: serde_json::Value =
        serde_json::from_slice(&body).context("/config_dump is not JSON")?;
    let count = |key: &str| dump[key].as_array().map_or(0, Vec::len);
    let row = W7Row {
        services,
        endpoints,
        ready_ms,
        rss_kib,
        hwm_kib,
        services_in_dump: count("services"),
        clusters_in_dump: count("clusters"),
        cp_rss_kib,
    };
    proxy.kill().await;
    cp.child.kill().await;
    Ok(row)
}

/// Waits until `/debug/syncz` shows `node_id`'s stream with every type ACKed at the version
/// last sent.
async fn wait_acked(
    cp: &ControlPlane,
    node_id: &str,
    proxy: &mut Proc,
    timeout: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        proxy.check_alive()?;
        let last: String = match procs::http_get(cp.admin, "/debug/syncz").await {
            Ok((200, body)) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) if all_acked(&v, node_id) => return Ok(()),
                Ok(_) => String::from_utf8_lossy(&body).chars().take(2000).collect(),
                Err(e) => format!("not JSON: {e}"),
            },
            Ok((s, _)) => format!("status {s}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > end {
            bail!("{node_id} did not ACK its config within {timeout:?}; /debug/syncz: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `/debug/syncz` shows a stream of `node_id` with all five types ACKed at the
/// version last sent.
pub fn all_acked(syncz: &serde_json::Value, node_id: &str) -> bool {
    let Some(streams) = syncz.as_array() else {
        return false;
    };
    streams.iter().any(|s| {
        s["node_id"] == node_id
            && weft_api::type_url::ALL.iter().all(|t| {
                let ty = &s["types"][*t];
                !ty["last_sent_version"].is_null() && ty["acked_version"] == ty["last_sent_version"]
            })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weft_api::type_url::ALL;

    use super::*;

    #[test]
    fn syncz_counts_only_fully_acked_streams_of_the_node() {
        let types = |acked: &str| {
            let mut m = serde_json::Map::new();
            for t in ALL {
                m.insert(
                    t.to_string(),
                    json!({"last_sent_version": "v2", "acked_version": acked}),
                );
            }
            serde_json::Value::Object(m)
        };
        let stream = |node: &str, acked: &str| json!({"node_id": node, "stream": "delta", "types": types(acked)});
        assert!(all_acked(&json!([stream("a.bench", "v2")]), "a.bench"));
        assert!(!all_acked(&json!([stream("a.bench", "v1")]), "a.bench"));
        assert!(!all_acked(&json!([stream("b.bench", "v2")]), "a.bench"));
        let mut partial = stream("a.bench", "v2");
        partial["types"]
            .as_object_mut()
            .unwrap()
            .remove(weft_api::type_url::SERVICE);
        assert!(!all_acked(&json!([partial]), "a.bench"));
        assert!(!all_acked(&json!({}), "a.bench"));
    }
}
