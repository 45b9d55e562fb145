//! The generated PKI as OpenSSL (which nginx and HAProxy are built on) sees it: the chains
//! verify for the right purpose and names and only through the intermediate, the keys are
//! P-256 and match their certificates, and a real mutual-TLS 1.3 handshake succeeds.
//! Skipped (with a message) when `openssl` is not installed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use weft_bench::certs::{self, Pki};
use weft_bench::topo::Proc;

fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: `openssl` is not installed");
    }
    found
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The leaf alone (the first block of a chain file), written next to it.
fn leaf_of(chain: &Path) -> PathBuf {
    let all = std::fs::read_to_string(chain).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let first = &all[..all.find(end).unwrap() + end.len()];
    let path = chain.with_extension("leaf.pem");
    std::fs::write(&path, first).unwrap();
    path
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `openssl verify` of `leaf` against the root, with the intermediate offered as untrusted.
fn verify(pki: &Pki, leaf: &Path, extra: &[&str]) -> Output {
    let inter = pki.intermediate_cert();
    let mut args = vec![
        "verify",
        "-CAfile",
        p(&pki.ca_cert),
        "-untrusted",
        p(&inter),
    ];
    args.extend_from_slice(extra);
    args.push(p(leaf));
    openssl(&args)
}

fn generated() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::generate(
        &dir.path().join("pki"),
        &["srv.bench", "198.18.0.2"],
        &["cli.bench", "198.18.0.1"],
    )
    .unwrap();
    (dir, pki)
}

#[test]
fn chains_verify_with_openssl() {
    if !have_openssl() {
        return;
    }
    let (_dir, pki) = generated();
    let server = leaf_of(&pki.server_cert);
    let client = leaf_of(&pki.client_cert);

    for (leaf, args) in [
        (
            &server,
            &["-purpose", "sslserver", "-verify_hostname", "srv.bench"][..],
        ),
        (
            &server,
            &["-purpose", "sslserver", "-verify_ip", "198.18.0.2"][..],
        ),
        (
            &client,
            &["-purpose", "sslclient", "-verify_ip", "198.18.0.1"][..],
        ),
    ] {
        let out = verify(&pki, leaf, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }

    // The checks can fail: wrong purpose, wrong name, missing intermediate.
    let wrong_purpose = verify(&pki, &client, &["-purpose", "sslserver"]);
    assert!(!wrong_purpose.status.success(), "{}", text(&wrong_purpose));
    let wrong_name = verify(&pki, &server, &["-verify_hostname", "other.bench"]);
    assert!(!wrong_name.status.success(), "{}", text(&wrong_name));
    let no_inter = openssl(&["verify", "-CAfile", p(&pki.ca_cert), p(&server)]);
    assert!(!no_inter.status.success(), "2-tier: {}", text(&no_inter));
}

#[test]
fn keys_are_p256_and_match() {
    if !have_openssl() {
        return;
    }
    let (_dir, pki) = generated();
    for (cert, key, pem) in [
        (&pki.server_cert, &pki.server_key, &pki.server_pem),
        (&pki.client_cert, &pki.client_key, &pki.client_pem),
    ] {
        let details = openssl(&["pkey", "-in", p(key), "-noout", "-text"]);
        assert!(details.status.success(), "{}", text(&details));
        assert!(text(&details).contains("prime256v1"), "{}", text(&details));
        let from_key = openssl(&["pkey", "-in", p(key), "-pubout"]);
        let from_cert = openssl(&["x509", "-in", p(cert), "-noout", "-pubkey"]);
        assert!(from_key.status.success() && from_cert.status.success());
        assert_eq!(from_key.stdout, from_cert.stdout);
        // HAProxy's bundle: the same key is found in it.
        let from_pem = openssl(&["pkey", "-in", p(pem), "-pubout"]);
        assert_eq!(from_pem.stdout, from_key.stdout, "{}", text(&from_pem));
    }
}

/// `openssl s_client` sending one GET; its exit status and everything it printed.
fn s_client(port: u16, pki: &Pki, with_cert: bool) -> (bool, String) {
    let cert = if with_cert {
        format!(
            "-cert {c} -cert_chain {c} -key {k}",
            c = p(&pki.client_cert),
            k = p(&pki.client_key)
        )
    } else {
        String::new()
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:{port} \
             -servername srv.bench -verify_hostname srv.bench -CAfile {ca} {cert} \
             -verify_return_error -tls1_3 -brief -ign_eof",
            ca = p(&pki.ca_cert),
        ))
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn mutual_tls13_handshake() {
    if !have_openssl() {
        return;
    }
    let (dir, pki) = generated();
    // A free port: bind, note it, release it (s_server cannot report the one it picked).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server_cmd = Command::new("openssl");
    // `-cert` alone would send the leaf only; nginx and HAProxy send the whole file.
    server_cmd.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
        p(&pki.server_cert),
        "-cert_chain",
        p(&pki.server_cert),
        "-key",
        p(&pki.server_key),
        "-CAfile",
        p(&pki.ca_cert),
        "-Verify",
        "2",
        "-verify_return_error",
        "-tls1_3",
        "-www",
        "-naccept",
        "2",
    ]);
    let mut server = Proc::spawn("s_server", server_cmd, dir.path()).unwrap();
    server
        .wait_for_line("ACCEPT", Duration::from_secs(10))
        .unwrap();

    // Without a client certificate the server refuses to answer.
    let (_, said) = s_client(port, &pki, false);
    assert!(!said.contains("HTTP/1.0 200"), "{said}");

    let (ok, said) = s_client(port, &pki, true);
    assert!(ok, "{said}");
    assert!(said.contains("Protocol version: TLSv1.3"), "{said}");
    assert!(said.contains("Verification: OK"), "{said}");
    assert!(said.contains("HTTP/1.0 200"), "{said}");
    server.stop_with(Duration::from_secs(2));
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("CN = cli.bench"),
        "the client leaf was checked: {log}"
    );
}
