//! `meshbench rtt`: TCP ping-pong round trips over one connection against a TCP echo (the
//! calibration block of PERFORMANCE.md §5.1, and the opaque-TCP workload W6 through a proxy
//! pair). One message in flight, so every sample is a full round trip.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Command-line arguments of `meshbench rtt`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The TCP echo (IP:PORT).
    #[arg(long)]
    pub target: SocketAddr,
    /// Round trips to measure.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Give up after this long in total.
    #[arg(long, default_value = "60s", value_parser = crate::load::parse_duration)]
    pub timeout: Duration,
}

/// The JSON line `meshbench rtt` prints (microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RttReport {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Measures `count` round trips of `size` bytes on one connection to `target`.
pub async fn measure(target: SocketAddr, count: u64, size: usize) -> anyhow::Result<RttReport> {
    if count == 0 || size == 0 {
        bail!("rtt needs --count and --size of at least 1");
    }
    let mut stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to the echo at {target}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let ping = vec![0x5a_u8; size];
    let mut pong = vec![0u8; size];
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..count {
        let start = Instant::now();
        stream
            .write_all(&ping)
            .await
            .with_context(|| format!("sending ping {i} to {target}"))?;
        stream
            .read_exact(&mut pong)
            .await
            .with_context(|| format!("reading pong {i} from {target}"))?;
        samples.push(start.elapsed().as_nanos() as u64);
        if pong != ping {
            bail!("the echo at {target} answered different bytes in round trip {i}");
        }
    }
    Ok(summarize(&mut samples))
}

/// Nearest-rank percentiles of round-trip times in nanoseconds, reported in microseconds.
pub(crate) fn summarize(samples_ns: &mut [u64]) -> RttReport {
    samples_ns.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples_ns.is_empty() {
            return 0.0;
        }
        let rank = (q * samples_ns.len() as f64).ceil() as usize;
        samples_ns[rank.clamp(1, samples_ns.len()) - 1] as f64 / 1e3
    };
    RttReport {
        count: samples_ns.len() as u64,
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

/// `meshbench rtt`: one JSON line on stdout.
pub fn main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the rtt runtime")?;
    let report = runtime.block_on(async {
        tokio::time::timeout(args.timeout, measure(args.target, args.count, args.size))
            .await
            .with_context(|| format!("rtt against {} took over {:?}", args.target, args.timeout))?
    })?;
    println!(
        "{}",
        serde_json::to_string(&report).context("encoding the rtt report")?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut xs: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let r = summarize(&mut xs);
        assert_eq!(r.count, 100);
        assert_eq!(
            (r.p50_us, r.p90_us, r.p99_us, r.max_us),
            (50.0, 90.0, 99.0, 100.0)
        );
        let r = summarize(&mut [7_000]);
        assert_eq!((r.p50_us, r.max_us), (7.0, 7.0));
        assert_eq!(summarize(&mut []).count, 0);
    }
}
