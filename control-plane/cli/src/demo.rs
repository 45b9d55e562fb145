//! `weftctl demo`: local mode on a bundled bookinfo, with traffic, narrated.
//!
//! It writes the bundled config (control-plane/cli/demo/*.yaml) to a directory, runs `up` on it,
//! starts the demo apps next to their sidecars, and then shows, measured from real requests:
//! 1. the reviews split the VirtualService asks for (80/20 between v1 and v3);
//! 2. a header-matched route (`end-user: jason` always reaches v2);
//! 3. a live edit of the VirtualService file (everything to v3) and how soon the sidecars follow;
//! 4. per-edge request counts, read from every sidecar's `/metrics`;
//! 5. the SPIFFE identity each receiving sidecar verified over mutual TLS.
//!
//! It stops by itself when done, unless `--keep-running` is given.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::local::{self, Logs, Planned, Running, UpArgs};
use crate::proxy_client::Client;

/// The bundled example, embedded so `weftctl demo` needs nothing but its own binary.
const FILES: [(&str, &str); 4] = [
    ("services.yaml", include_str!("../demo/services.yaml")),
    ("workloads.yaml", include_str!("../demo/workloads.yaml")),
    (
        "destination-rules.yaml",
        include_str!("../demo/destination-rules.yaml"),
    ),
    (
        "reviews-routing.yaml",
        include_str!("../demo/reviews-routing.yaml"),
    ),
];

/// The app port every bookinfo service uses.
const APP_PORT: u16 = 9080;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// Where to write the demo's config (default: a fresh directory under the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Requests per measurement.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Keep the mesh running after the tour, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Print every log line of every component.
    #[arg(long, short)]
    verbose: bool,
}

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftctl demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("weft-demo-{}", std::process::id())),
    };
    write_bundle(&dir)?;
    let up = UpArgs {
        dir: dir.clone(),
        control_address: IpAddr::from([127, 0, 10, 1]),
        xds_port: 15012,
        admin_port: 15014,
        xds_mode: "delta".into(),
        log: "info".into(),
        verbose: args.verbose,
    };
    let workloads = local::load_workloads(&dir)?;
    let plan = local::plan(&up, &workloads)?;
    local::check_ports(&plan)?;
    crate::identity::write_tokens(&dir, &workloads)?;
    let logs = if args.verbose {
        Logs::All
    } else {
        Logs::Problems
    };

    println!("weft demo: bookinfo on loopback (productpage -> reviews v1/v2/v3 -> ratings)");
    let mut running = Running::start(&plan, logs).await?;
    let result = async {
        running.add(&app_plans(&workloads), logs).await?;
        local::print_summary(&plan);
        println!();
        let proxies: Vec<SocketAddr> = plan.proxies.iter().map(|(_, p)| p.admin).collect();
        tour(&dir, &args, &proxies).await?;
        if args.keep_running {
            println!("\nThe mesh keeps running; press Ctrl-C to stop it.");
            let stopped = running.wait().await;
            println!("weft: {stopped}");
        }
        anyhow::Ok(())
    }
    .await;
    running.stop().await;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("weft demo: everything stopped.");
    result
}

fn write_bundle(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One app process per workload that serves a bookinfo service (not the load generator).
fn app_plans(workloads: &[local::Workload]) -> Vec<Planned> {
    let mut plans = Vec::new();
    for w in workloads {
        let Some((kind, version)) = w.name.rsplit_once('-') else {
            continue;
        };
        if !matches!(kind, "productpage" | "reviews" | "ratings") {
            continue;
        }
        let listen = SocketAddr::new(w.address, APP_PORT);
        let proxy = SocketAddr::new(w.address, local::OUTBOUND_PORT);
        let args = [
            "app",
            "--kind",
            kind,
            "--version",
            version,
            "--listen",
            &listen.to_string(),
            "--proxy",
            &proxy.to_string(),
        ];
        plans.push(Planned {
            label: format!("app {}", w.name),
            args: args.iter().map(OsString::from).collect(),
            binds: vec![(listen, "demo app")],
            admin: listen,
        });
    }
    plans
}

async fn tour(dir: &Path, args: &DemoArgs, proxies: &[SocketAddr]) -> anyhow::Result<()> {
    // The demo talks to productpage through the load generator's sidecar, so the first hop
    // is meshed too: loadgen -> productpage -> reviews -> ratings.
    let loadgen = Client::new(SocketAddr::from(([127, 0, 10, 10], local::OUTBOUND_PORT)));
    let n = args.requests;

    println!("[1/5] reviews-routing.yaml splits reviews 80/20 between v1 and v3; {n} requests:");
    let split = measure(&loadgen, n, None).await?;
    print_split(&split, n);

    println!("\n[2/5] the same file sends `end-user: jason` to v2; 50 requests as jason:");
    let jason = measure(&loadgen, 50, Some("jason")).await?;
    print_split(&jason, 50);

    println!("\n[3/5] editing reviews-routing.yaml live: v1 0, v3 100 ...");
    let file = dir.join("reviews-routing.yaml");
    let text = std::fs::read_to_string(&file)?;
    let edited = text
        .replace("weight: 80", "weight: 0")
        .replace("weight: 20", "weight: 100");
    std::fs::write(&file, edited)?;
    let took = wait_for_only(&loadgen, "v3").await?;
    println!(
        "      the sidecars followed within {} ms of the write, with no failed request; {n} requests:",
        took.as_millis()
    );
    let after = measure(&loadgen, n, None).await?;
    print_split(&after, n);

    println!("\n[4/5] requests per edge, from the sidecars' /metrics:");
    let (outbound, inbound) = edges(proxies).await?;
    for ((from, to), count) in outbound {
        println!("      {from:<16} -> {to:<16} {count:>6}");
    }

    println!("\n[5/5] mutual TLS: the peer identity each receiving sidecar verified:");
    for ((principal, to), count) in inbound {
        let principal = if principal.is_empty() {
            "(plaintext: no peer identity)".to_string()
        } else {
            principal
        };
        println!("      {principal:<56} -> {to:<16} {count:>6}");
    }
    Ok(())
}

/// Sends `n` requests to productpage and counts which reviews version answered.
async fn measure(
    loadgen: &Client,
    n: usize,
    user: Option<&str>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let version = productpage(loadgen, user).await?;
        *counts.entry(version).or_insert(0) += 1;
    }
    Ok(counts)
}

/// One request through the mesh; returns the reviews version that served it.
async fn productpage(loadgen: &Client, user: Option<&str>) -> anyhow::Result<String> {
    let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
    let resp = loadgen
        .get("http://productpage:9080/productpage", &headers)
        .await?;
    if resp.status != 200 {
        bail!(
            "productpage answered {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    let page: serde_json::Value = serde_json::from_slice(&resp.body)?;
    Ok(page["reviews"]["version"]
        .as_str()
        .unwrap_or("unknown")
        .to_string())
}

/// Sends requests until 20 in a row are served by `version`, failing on any error; returns how
/// long that took. At the old 20% share, 20 in a row by chance is a one-in-10^14 event.
async fn wait_for_only(loadgen: &Client, version: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut streak = 0;
    let mut first_of_streak = start;
    while streak < 20 {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the edit did not take effect within 30 s");
        }
        if productpage(loadgen, None).await? == version {
            if streak == 0 {
                first_of_streak = Instant::now();
            }
            streak += 1;
        } else {
            streak = 0;
        }
    }
    Ok(first_of_streak - start)
}

fn print_split(counts: &BTreeMap<String, usize>, n: usize) {
    for (version, count) in counts {
        let pct = *count as f64 * 100.0 / n.max(1) as f64;
        let bar = "#".repeat((pct / 2.5).round() as usize);
        println!("      reviews {version}: {count:>5} ({pct:5.1}%) {bar}");
    }
}

type Edges = BTreeMap<(String, String), u64>;

/// Sums `weft_requests_total` over every sidecar: outbound by source and destination workload,
/// inbound by the peer identity (SPIFFE ID) the receiving sidecar verified.
async fn edges(proxies: &[SocketAddr]) -> anyhow::Result<(Edges, Edges)> {
    let mut edges = BTreeMap::new();
    let mut principals = BTreeMap::new();
    for admin in proxies {
        let resp = Client::new(*admin)
            .get(&format!("http://{admin}/metrics"), &[])
            .await?;
        let text = String::from_utf8_lossy(&resp.body);
        for (labels, value) in samples(&text, "weft_requests_total") {
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            match labels.get("direction").map(String::as_str) {
                Some("outbound") => {
                    let key = (label("source_workload"), label("destination_workload"));
                    *edges.entry(key).or_insert(0) += value as u64;
                }
                Some("inbound") => {
                    let key = (label("source_principal"), label("destination_workload"));
                    *principals.entry(key).or_insert(0) += value as u64;
                }
                _ => {}
            }
        }
    }
    Ok((edges, principals))
}

/// Parses the samples of one metric from Prometheus text exposition format.
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue, // another metric sharing the prefix
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        out.push((labels, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let text = "# HELP weft_requests_total Requests.\n\
            weft_requests_total{direction=\"outbound\",source_workload=\"a\",destination_workload=\"b\"} 7\n\
            weft_requests_total_created 1\n\
            weft_requests_total{direction=\"inbound\",source_workload=\"a\"} 3\n";
        let s = samples(text, "weft_requests_total");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0["destination_workload"], "b");
        assert_eq!(s[0].1, 7.0);
        assert_eq!(s[1].0["direction"], "inbound");
    }

    #[test]
    fn plans_an_app_per_bookinfo_workload() {
        let w = |name: &str, last: u8| local::Workload {
            name: name.into(),
            namespace: "default".into(),
            address: IpAddr::from([127, 0, 10, last]),
            identity: format!("spiffe://cluster.local/ns/default/sa/{name}"),
        };
        let plans = app_plans(&[w("loadgen", 10), w("reviews-v2", 22)]);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].admin, "127.0.10.22:9080".parse().unwrap());
        let args: Vec<_> = plans[0]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2).any(|w| w == ["--version", "v2"]),
            "{args:?}"
        );
    }
}
