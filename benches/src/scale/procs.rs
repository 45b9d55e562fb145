//! The real binaries as children (killed on drop), their admin endpoints, and what /proc says
//! about them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::agg;

/// A child process whose output is kept (last lines) for error messages; killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

const LOG_LINES: usize = 12;

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} ({})", name, program.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(keep_lines(out, Arc::clone(&log)));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_lines(err, Arc::clone(&log)));
        }
        Ok(Self {
            name: name.to_string(),
            pid,
            child,
            log,
        })
    }

    /// The last lines the process printed.
    pub fn tail(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Fails (with the log tail) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); last output:\n{}",
                self.name,
                self.tail()
            );
        }
        Ok(())
    }

    /// Polls the kept output for a line containing `needle`.
    pub async fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let found = self
                .log
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|x| x.contains(needle)).cloned());
            if let Some(line) = found {
                return Ok(line);
            }
            self.check_alive()?;
            if Instant::now() > end {
                bail!(
                    "{} printed no {needle:?} within {timeout:?}; last output:\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::sys::cpu_seconds(self.pid)
    }

    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        crate::sys::rss_kib(self.pid)
    }

    pub fn hwm_kib(&self) -> anyhow::Result<u64> {
        crate::sys::hwm_kib(self.pid)
    }
}

async fn keep_lines(r: impl tokio::io::AsyncRead + Unpin, log: Arc<Mutex<Vec<String>>>) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut l) = log.lock() {
            // Keep the first lines (the ready line) and the last ones (the error).
            if l.len() >= LOG_LINES {
                l.remove(LOG_LINES / 2);
            }
            l.push(line);
        }
    }
}

/// MemAvailable, KiB.
pub fn mem_available_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    agg::meminfo_available_kib(&text).ok_or_else(|| anyhow!("no MemAvailable in /proc/meminfo"))
}

/// GET `http://addr/path`: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
    let io = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .context("build request")?;
    let rsp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .map_err(|_| anyhow!("GET {addr}{path}: timed out"))?
        .with_context(|| format!("GET {addr}{path}"))?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("read body of {addr}{path}"))?
        .to_bytes();
    Ok((status, body))
}

/// Polls `GET /ready` until 200 (the child must stay alive), or fails after `timeout`.
pub async fn wait_ready(
    child: &mut Proc,
    admin: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        let last = match http_get(admin, "/ready").await {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => format!("{s} {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > end {
            bail!(
                "{} not ready within {timeout:?} (last: {last}); last output:\n{}",
                child.name,
                child.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running `weft-control`.
#[derive(Debug)]
pub struct ControlPlane {
    pub child: Proc,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
}

impl ControlPlane {
    /// Starts `weft-control` in plaintext on ephemeral ports of 127.0.0.1 and waits until its
    /// `/ready` answers 200; the bound addresses come from its ready line.
    pub async fn start(
        program: &Path,
        config_dir: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let args: Vec<String> = [
            "--config-dir",
            &config_dir.display().to_string(),
            "--xds-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--plaintext-xds",
            "--log",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = Proc::spawn("weft-control", program, &args)?;
        let line = child.wait_line("weft-control ready:", timeout).await?;
        let (xds, admin) = parse_ready_line(&line)
            .ok_or_else(|| anyhow!("cannot read the addresses in {line:?}"))?;
        wait_ready(&mut child, admin, timeout).await?;
        Ok(Self { child, xds, admin })
    }
}

/// `weft-control ready: xds=A (plaintext) admin=B config=...` -> (A, B).
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let field = |key: &str| -> Option<SocketAddr> {
        let start = line.find(key)? + key.len();
        line[start..].split_whitespace().next()?.parse().ok()
    };
    Some((field("xds=")?, field("admin=")?))
}

/// A free TCP port on `ip` (bound and released: good enough for a benchmark on one host).
pub fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// The directory of the current executable's siblings: where `weft-control` and
/// `weft-proxy` are looked for by default (`target/<profile>/`, also from `deps/`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let direct = dir.join(name);
    if direct.exists() {
        return direct;
    }
    match dir.file_name() {
        Some(d) if d == "deps" => dir.parent().map(|p| p.join(name)).unwrap_or(direct),
        _ => direct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_gives_both_addresses() {
        let line = "weft-control ready: xds=127.0.0.1:40001 (plaintext) admin=127.0.0.1:40002 config=/tmp/x ca-root=/tmp/x/.weft/ca/root-cert.pem";
        let (x, a) = parse_ready_line(line).unwrap();
        assert_eq!(x.port(), 40001);
        assert_eq!(a.port(), 40002);
        assert_eq!(parse_ready_line("weft-control ready: xds=nope"), None);
    }

    #[test]
    fn free_memory_is_readable_and_the_open_files_limit_raised() {
        assert!(mem_available_kib().unwrap() > 0);
        assert!(crate::sys::raise_nofile().is_none_or(|n| n >= 1024));
    }
}
