//! The peers of PERFORMANCE.md §7.2: an nginx pair (C2) and an HAProxy pair (C3), each with
//! one worker per proxy, mutual TLS between the two sides and the same TLS settings as Weft's
//! mesh hop (TLS 1.3 only, one cipher suite, X25519, ECDSA P-256 leaves from one test CA).
//!
//! The configs are rendered by pure functions (unit-tested for the settings §7 demands); the
//! processes are started in the namespaces with [`start`]. Each client side has two listeners:
//! the pooled one (upstream keep-alive / connection reuse) and one with pooling off, where
//! every request opens its own mTLS connection to the server side (W5b).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::certs::Pki;
use crate::topo::{Netns, Proc};

/// The TLS 1.3 cipher suite every pair uses. Weft is rustls with ring's defaults, whose client
/// prefers AES-256-GCM, and a rustls server follows the client's order; the peers are held to
/// the same suite so that the comparison is not one of ciphers.
pub const CIPHER_SUITE: &str = "TLS_AES_256_GCM_SHA384";
/// The key exchange group (rustls' first choice).
pub const GROUP: &str = "X25519";
/// The server name both peers' clients send and verify (a DNS SAN of the server leaf).
pub const SERVER_NAME: &str = "echo.default.svc.cluster.local";

/// nginx client side, pooled (in `cli`, on 127.0.0.1).
pub const NGINX_CLIENT_PORT: u16 = 10080;
/// nginx client side, pooling off.
pub const NGINX_CLIENT_NOPOOL_PORT: u16 = 10081;
/// nginx server side (in `srv`, on the veth address).
pub const NGINX_SERVER_PORT: u16 = 10443;
/// HAProxy client side, pooled.
pub const HAPROXY_CLIENT_PORT: u16 = 11080;
/// HAProxy client side, pooling off.
pub const HAPROXY_CLIENT_NOPOOL_PORT: u16 = 11081;
/// HAProxy server side.
pub const HAPROXY_SERVER_PORT: u16 = 11443;

/// Which peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Nginx,
    Haproxy,
}

/// Which half of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// In `cli`: plaintext from the load generator, mTLS to the server side.
    Client,
    /// In `srv`: mTLS from the client side, plaintext to the app.
    Server,
}

/// The certificate files one side presents and trusts.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The root CA, to verify the other side.
    pub ca: PathBuf,
    /// Leaf + intermediate.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Chain + key in one file (HAProxy's `crt`).
    pub pem: PathBuf,
}

impl TlsFiles {
    /// What `side` presents: the client leaf on the client side, the server leaf on the server.
    pub fn for_side(pki: &Pki, side: Side) -> Self {
        match side {
            Side::Client => Self {
                ca: pki.ca_cert.clone(),
                cert: pki.client_cert.clone(),
                key: pki.client_key.clone(),
                pem: pki.client_pem.clone(),
            },
            Side::Server => Self {
                ca: pki.ca_cert.clone(),
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                pem: pki.server_pem.clone(),
            },
        }
    }
}

/// Where one side of a pair listens and forwards to.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Client side: the pooled listener; server side: the mTLS listener.
    pub listen: SocketAddr,
    /// Client side only: the listener with pooling off.
    pub listen_nopool: Option<SocketAddr>,
    /// Client side: the server side's mTLS listener; server side: the app.
    pub upstream: SocketAddr,
    /// The run directory of this process (pid, temp files, error log).
    pub dir: PathBuf,
}

/// Keep-alive limits that never end a connection during a run (nginx closes a client
/// connection after 1,000 requests by default, which would turn W1 into a churn test).
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// nginx's config for one side. One worker, access log off, TLS 1.3 with [`CIPHER_SUITE`] and
/// [`GROUP`], client certificate required on the server side, the server verified (name and
/// chain) on the client side; upstream keep-alive on the pooled path.
pub fn nginx_conf(side: Side, layout: &Layout, tls: &TlsFiles) -> String {
    let dir = p(&layout.dir);
    let mut c = String::new();
    // `user root` keeps the worker able to read the keys whatever their mode; the harness
    // runs as root anyway (namespaces need it).
    let _ = writeln!(
        c,
        "worker_processes 1;\ndaemon off;\nmaster_process on;\nuser root;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{\n    worker_connections 16384;\n}}\nhttp {{\n    access_log off;\n    \
         client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n    \
         fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    \
         scgi_temp_path {dir}/scgi;\n    keepalive_requests {KEEPALIVE_REQUESTS};\n    \
         keepalive_timeout 300s;\n    gzip off;"
    );
    match side {
        Side::Client => {
            let _ = writeln!(
                c,
                "    upstream mesh_pooled {{\n        server {up};\n        keepalive 64;\n        \
                 keepalive_requests {KEEPALIVE_REQUESTS};\n        keepalive_timeout 300s;\n    }}\n    \
                 upstream mesh_nopool {{\n        server {up};\n    }}",
                up = layout.upstream
            );
            let tls_client = format!(
                "        proxy_ssl_certificate {cert};\n        proxy_ssl_certificate_key {key};\n        \
                 proxy_ssl_trusted_certificate {ca};\n        proxy_ssl_verify on;\n        \
                 proxy_ssl_verify_depth 3;\n        proxy_ssl_name {SERVER_NAME};\n        \
                 proxy_ssl_server_name on;\n        proxy_ssl_protocols TLSv1.3;\n        \
                 proxy_ssl_conf_command Ciphersuites {CIPHER_SUITE};\n        \
                 proxy_ssl_conf_command Groups {GROUP};\n        proxy_next_upstream off;",
                cert = p(&tls.cert),
                key = p(&tls.key),
                ca = p(&tls.ca),
            );
            let _ = writeln!(
                c,
                "    server {{\n        listen {listen};\n        location / {{\n            \
                 proxy_pass https://mesh_pooled;\n            proxy_http_version 1.1;\n            \
                 proxy_set_header Connection \"\";\n{tls_client}\n        }}\n    }}",
                listen = layout.listen,
            );
            if let Some(nopool) = layout.listen_nopool {
                // No upstream keep-alive: nginx closes the upstream connection after each
                // response, so each request pays a full connection and handshake.
                let _ = writeln!(
                    c,
                    "    server {{\n        listen {nopool};\n        location / {{\n            \
                     proxy_pass https://mesh_nopool;\n            proxy_http_version 1.1;\n            \
                     proxy_set_header Connection close;\n            \
                     proxy_ssl_session_reuse off;\n{tls_client}\n        }}\n    }}"
                );
            }
        }
        Side::Server => {
            let _ = writeln!(
                c,
                "    upstream app {{\n        server {up};\n        keepalive 64;\n        \
                 keepalive_requests {KEEPALIVE_REQUESTS};\n        keepalive_timeout 300s;\n    }}\n    \
                 server {{\n        listen {listen} ssl;\n        ssl_certificate {cert};\n        \
                 ssl_certificate_key {key};\n        ssl_client_certificate {ca};\n        \
                 ssl_verify_client on;\n        ssl_verify_depth 3;\n        \
                 ssl_protocols TLSv1.3;\n        ssl_conf_command Ciphersuites {CIPHER_SUITE};\n        \
                 ssl_ecdh_curve {GROUP};\n        location / {{\n            \
                 proxy_pass http://app;\n            proxy_http_version 1.1;\n            \
                 proxy_set_header Connection \"\";\n            proxy_next_upstream off;\n        \
                 }}\n    }}",
                up = layout.upstream,
                listen = layout.listen,
                cert = p(&tls.cert),
                key = p(&tls.key),
                ca = p(&tls.ca),
            );
        }
    }
    c.push_str("}\n");
    c
}

/// HAProxy's config for one side: `nbthread 1`, no logs, no retries, TLS 1.3 with
/// [`CIPHER_SUITE`] and [`GROUP`], `verify required` on both ends of the mesh hop,
/// `http-reuse always` on the pooled path and `never` on the other.
pub fn haproxy_cfg(side: Side, layout: &Layout, tls: &TlsFiles) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "global\n    nbthread 1\n    maxconn 4096\n    \
         ssl-default-bind-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n    \
         ssl-default-bind-ciphersuites {CIPHER_SUITE}\n    \
         ssl-default-server-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n    \
         ssl-default-server-ciphersuites {CIPHER_SUITE}\n\n\
         defaults\n    mode http\n    no log\n    retries 0\n    maxconn 4096\n    \
         option http-keep-alive\n    timeout connect 5s\n    timeout client 300s\n    \
         timeout server 300s\n    timeout http-keep-alive 300s\n    timeout http-request 30s\n"
    );
    match side {
        Side::Client => {
            // HAProxy 2.6 has no `curves` on server lines; the server sides (all of which
            // accept X25519 only) settle the group.
            let server = |name: &str, extra: &str| {
                format!(
                    "    server {name} {up} ssl crt {pem} ca-file {ca} verify required \
                     verifyhost {SERVER_NAME} sni str({SERVER_NAME}){extra}",
                    up = layout.upstream,
                    pem = p(&tls.pem),
                    ca = p(&tls.ca),
                )
            };
            let _ = writeln!(
                c,
                "frontend pooled\n    bind {listen}\n    default_backend mesh_pooled\n\n\
                 backend mesh_pooled\n    http-reuse always\n{server}\n",
                listen = layout.listen,
                server = server("srv", ""),
            );
            if let Some(nopool) = layout.listen_nopool {
                let _ = writeln!(
                    c,
                    "frontend nopool\n    bind {nopool}\n    default_backend mesh_nopool\n\n\
                     backend mesh_nopool\n    http-reuse never\n    option httpclose\n{server}\n",
                    server = server("srv", " no-ssl-reuse"),
                );
            }
        }
        Side::Server => {
            let _ = writeln!(
                c,
                "frontend mesh\n    bind {listen} ssl crt {pem} ca-file {ca} verify required \
                 curves {GROUP}\n    default_backend app\n\n\
                 backend app\n    http-reuse always\n    server app {up}\n",
                listen = layout.listen,
                pem = p(&tls.pem),
                ca = p(&tls.ca),
                up = layout.upstream,
            );
        }
    }
    c
}

/// The program of a peer (Debian's paths first, then `$PATH`).
pub fn program(peer: Peer) -> PathBuf {
    let (name, debian) = match peer {
        Peer::Nginx => ("nginx", "/usr/sbin/nginx"),
        Peer::Haproxy => ("haproxy", "/usr/sbin/haproxy"),
    };
    if Path::new(debian).exists() {
        return PathBuf::from(debian);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Why `peer` cannot run here (not installed), or None.
pub fn unavailable(peer: Peer) -> Option<String> {
    let prog = program(peer);
    let flag = match peer {
        Peer::Nginx => "-v",
        Peer::Haproxy => "-v",
    };
    match std::process::Command::new(&prog).arg(flag).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`{} {flag}` fails: {}",
            prog.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("{} is not installed ({e})", prog.display())),
    }
}

/// The name a peer's process gets in logs and reports, e.g. `nginx-client`.
pub fn label(peer: Peer, side: Side) -> String {
    let p = match peer {
        Peer::Nginx => "nginx",
        Peer::Haproxy => "haproxy",
    };
    let s = match side {
        Side::Client => "client",
        Side::Server => "server",
    };
    format!("{p}-{s}")
}

/// Writes the config of one side into `layout.dir`, checks it with the peer's own `-t`/`-c`,
/// and starts the peer in the foreground in `ns` pinned to `cpu`. Readiness is the caller's
/// (a request through the pair, since the server side only speaks mTLS).
pub fn start(
    peer: Peer,
    side: Side,
    ns: &Netns,
    cpu: usize,
    layout: &Layout,
    tls: &TlsFiles,
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(&layout.dir)
        .with_context(|| format!("create {}", layout.dir.display()))?;
    let name = label(peer, side);
    let prog = program(peer);
    let (conf, check, run): (PathBuf, Vec<String>, Vec<String>) = match peer {
        Peer::Nginx => {
            let conf = layout.dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(side, layout, tls))
                .with_context(|| format!("write {}", conf.display()))?;
            let base = vec![
                "-p".to_string(),
                p(&layout.dir),
                "-c".to_string(),
                p(&conf),
                "-e".to_string(),
                p(&layout.dir.join("error.log")),
            ];
            let mut check = base.clone();
            check.push("-t".to_string());
            (conf, check, base)
        }
        Peer::Haproxy => {
            let conf = layout.dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_cfg(side, layout, tls))
                .with_context(|| format!("write {}", conf.display()))?;
            let check = vec!["-c".to_string(), "-f".to_string(), p(&conf)];
            let run = vec!["-f".to_string(), p(&conf), "-db".to_string()];
            (conf, check, run)
        }
    };
    // The check runs in the namespace too: the listen addresses only exist there.
    let out = ns
        .command(None, &prog, &check)
        .output()
        .with_context(|| format!("run {} to check {}", prog.display(), conf.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{name}: {} rejects {}: {}{}",
            prog.display(),
            conf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut proc = Proc::spawn(&name, ns.command(Some(cpu), &prog, &run), log_dir)?;
    // A bad certificate or a taken port shows up within moments; catch it here with the log.
    std::thread::sleep(Duration::from_millis(200));
    if !proc.alive() {
        anyhow::bail!("{name} exited at start:\n{}", proc.log_tail(30));
    }
    Ok(proc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca: "/pki/ca.pem".into(),
            cert: "/pki/leaf.pem".into(),
            key: "/pki/leaf.key".into(),
            pem: "/pki/leaf-all.pem".into(),
        }
    }

    fn client() -> Layout {
        Layout {
            listen: "127.0.0.1:10080".parse().unwrap(),
            listen_nopool: Some("127.0.0.1:10081".parse().unwrap()),
            upstream: "198.18.0.2:10443".parse().unwrap(),
            dir: "/run/x".into(),
        }
    }

    fn server() -> Layout {
        Layout {
            listen: "198.18.0.2:10443".parse().unwrap(),
            listen_nopool: None,
            upstream: "127.0.0.1:8080".parse().unwrap(),
            dir: "/run/y".into(),
        }
    }

    /// Every line of `conf` with the leading blanks removed, for exact directive matches.
    fn lines(conf: &str) -> Vec<String> {
        conf.lines().map(|l| l.trim().to_string()).collect()
    }

    fn has(conf: &str, directive: &str) -> bool {
        lines(conf).iter().any(|l| l == directive)
    }

    #[test]
    fn nginx_client_has_one_worker_tls13_the_cipher_verification_and_keepalive() {
        let c = nginx_conf(Side::Client, &client(), &tls());
        for d in [
            "worker_processes 1;",
            "daemon off;",
            "access_log off;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_ssl_protocols TLSv1.3;",
            "proxy_ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;",
            "proxy_ssl_conf_command Groups X25519;",
            "proxy_ssl_verify on;",
            "proxy_ssl_name echo.default.svc.cluster.local;",
            "proxy_ssl_certificate /pki/leaf.pem;",
            "proxy_ssl_certificate_key /pki/leaf.key;",
            "proxy_ssl_trusted_certificate /pki/ca.pem;",
            "listen 127.0.0.1:10080;",
            "listen 127.0.0.1:10081;",
            "server 198.18.0.2:10443;",
            "proxy_pass https://mesh_pooled;",
            "proxy_pass https://mesh_nopool;",
            "pid /run/x/nginx.pid;",
        ] {
            assert!(has(&c, d), "missing `{d}` in:\n{c}");
        }
        // Only the pooled upstream keeps connections.
        assert_eq!(c.matches("keepalive 64;").count(), 1, "{c}");
        assert!(!c.contains("ssl_verify_client"), "{c}");
        // Braces balance (a cheap syntax check; `nginx -t` is the real one at start).
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn nginx_server_requires_and_verifies_client_certificates() {
        let c = nginx_conf(Side::Server, &server(), &tls());
        for d in [
            "worker_processes 1;",
            "access_log off;",
            "listen 198.18.0.2:10443 ssl;",
            "ssl_verify_client on;",
            "ssl_client_certificate /pki/ca.pem;",
            "ssl_protocols TLSv1.3;",
            "ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;",
            "ssl_ecdh_curve X25519;",
            "server 127.0.0.1:8080;",
            "keepalive 64;",
            "proxy_set_header Connection \"\";",
        ] {
            assert!(has(&c, d), "missing `{d}` in:\n{c}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn haproxy_client_verifies_the_server_and_reuses_only_on_the_pooled_path() {
        let c = haproxy_cfg(Side::Client, &client(), &tls());
        for d in [
            "nbthread 1",
            "no log",
            "retries 0",
            "ssl-default-server-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3",
            "ssl-default-server-ciphersuites TLS_AES_256_GCM_SHA384",
            "bind 127.0.0.1:11080",
            "http-reuse always",
            "http-reuse never",
        ]
        .iter()
        .map(|d| d.replace("11080", "10080"))
        {
            assert!(has(&c, &d), "missing `{d}` in:\n{c}");
        }
        let servers: Vec<_> = lines(&c)
            .into_iter()
            .filter(|l| l.starts_with("server "))
            .collect();
        assert_eq!(servers.len(), 2, "{c}");
        for s in &servers {
            for part in [
                "198.18.0.2:10443 ssl",
                "crt /pki/leaf-all.pem",
                "ca-file /pki/ca.pem",
                "verify required",
                "verifyhost echo.default.svc.cluster.local",
            ] {
                assert!(s.contains(part), "`{part}` missing in `{s}`");
            }
        }
        assert!(servers[1].contains("no-ssl-reuse"), "{c}");
    }

    #[test]
    fn haproxy_server_requires_client_certificates() {
        let c = haproxy_cfg(Side::Server, &server(), &tls());
        assert!(has(&c, "nbthread 1"), "{c}");
        assert!(
            has(
                &c,
                "bind 198.18.0.2:10443 ssl crt /pki/leaf-all.pem ca-file /pki/ca.pem verify required curves X25519"
            ),
            "{c}"
        );
        assert!(has(
            &c,
            "ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384"
        ));
        assert!(has(&c, "server app 127.0.0.1:8080"), "{c}");
        assert!(has(&c, "http-reuse always"), "{c}");
    }
}
