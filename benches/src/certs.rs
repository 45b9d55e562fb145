//! The run's test PKI (PERFORMANCE.md §7.2, TLS parity): one root CA, one intermediate, and
//! ECDSA P-256 server and client leaves signed by the intermediate, written as PEM files that
//! ours, nginx and HAProxy all read.
//!
//! Every configuration gets the same 2-tier chain so that no peer verifies a shorter chain
//! than another. Files:
//!
//! | file | content | used by |
//! |---|---|---|
//! | `ca.pem` | root | every verifier (`ssl_client_certificate`, `ca-file`) |
//! | `intermediate.pem` | intermediate | `openssl verify -untrusted` |
//! | `server.crt`, `client.crt` | leaf + intermediate | nginx `ssl_certificate`, ours |
//! | `server.key`, `client.key` | PKCS#8 PEM key | nginx `ssl_certificate_key`, ours |
//! | `server.pem`, `client.pem` | leaf + intermediate + key | HAProxy `crt` |
//!
//! Files are 0644 and the directory at least 0755: the keys are throwaway, and peers' workers may drop
//! root before reading them.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Paths of the generated files (see the module docs).
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Leaf + intermediate + key, for HAProxy.
    pub server_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_pem: PathBuf,
}

impl Pki {
    /// The intermediate CA certificate alone.
    pub fn intermediate_cert(&self) -> PathBuf {
        self.dir.join("intermediate.pem")
    }
}

/// Validity of everything: from an hour ago (clock skew between namespaces is nil, but a
/// peer's notion of "now" may be cached) to a week ahead, far beyond any run.
const BACKDATE: Duration = Duration::from_secs(3600);
const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Writes a fresh PKI into `dir` (created if missing). `server_names` and `client_names` are
/// the SANs of the two leaves (an entry that parses as an IP address becomes an IP SAN); the
/// first name is also the leaf's common name.
pub fn generate(dir: &Path, server_names: &[&str], client_names: &[&str]) -> anyhow::Result<Pki> {
    if server_names.is_empty() || client_names.is_empty() {
        bail!("a leaf certificate needs at least one name");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // Only add r-x for everyone: `dir` may be a shared directory whose other bits matter.
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .permissions()
        .mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;

    let root_key = KeyPair::generate().context("generate the root key")?;
    let root = CertifiedIssuer::self_signed(
        ca_params("meshbench root CA", BasicConstraints::Unconstrained)?,
        root_key,
    )
    .context("self-sign the root CA")?;
    let inter_key = KeyPair::generate().context("generate the intermediate key")?;
    let inter = CertifiedIssuer::signed_by(
        ca_params(
            "meshbench intermediate CA",
            BasicConstraints::Constrained(0),
        )?,
        inter_key,
        &root,
    )
    .context("sign the intermediate CA")?;

    let pki = Pki {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        server_pem: dir.join("server.pem"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        client_pem: dir.join("client.pem"),
    };
    write(&pki.ca_cert, &root.pem())?;
    write(&pki.intermediate_cert(), &inter.pem())?;
    for (names, purpose, cert, key, pem) in [
        (
            server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            &pki.server_cert,
            &pki.server_key,
            &pki.server_pem,
        ),
        (
            client_names,
            ExtendedKeyUsagePurpose::ClientAuth,
            &pki.client_cert,
            &pki.client_key,
            &pki.client_pem,
        ),
    ] {
        let (leaf_pem, key_pem) = leaf(names, purpose, &inter)?;
        let chain = format!("{leaf_pem}{}", inter.pem());
        write(cert, &chain)?;
        write(key, &key_pem)?;
        write(pem, &format!("{chain}{key_pem}"))?;
    }
    Ok(pki)
}

fn ca_params(name: &str, constraints: BasicConstraints) -> anyhow::Result<CertificateParams> {
    let mut params = base_params(name)?;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn base_params(common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft meshbench");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LIFETIME;
    params.serial_number = Some(random_serial());
    // OpenSSL builds chains by key identifier when present; give it both.
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// An ECDSA P-256 leaf for `names` signed by `issuer`: (certificate PEM, PKCS#8 key PEM).
fn leaf(
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<(String, String)> {
    let mut params = base_params(names[0])?;
    params.subject_alt_names = names
        .iter()
        .map(|name| san(name))
        .collect::<anyhow::Result<_>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().context("generate a leaf key")?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("sign the leaf for {names:?}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An IP SAN when `name` parses as an address, a DNS SAN otherwise.
pub fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.to_string()
                .try_into()
                .with_context(|| format!("{name:?} is not a valid DNS name"))?,
        ),
    })
}

/// 16 random bytes with the top bit clear, so the DER integer is positive (RFC 5280 4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_kinds() {
        assert!(matches!(san("198.18.0.2").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(san("::1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(san("srv.bench").unwrap(), SanType::DnsName(_)));
    }

    #[test]
    fn files_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(
            &dir.path().join("pki"),
            &["srv.bench", "198.18.0.2"],
            &["cli"],
        )
        .unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let count = |t: &str, what: &str| t.matches(&format!("-----BEGIN {what}-----")).count();
        assert_eq!(count(&read(&pki.ca_cert), "CERTIFICATE"), 1);
        for (cert, key, pem) in [
            (&pki.server_cert, &pki.server_key, &pki.server_pem),
            (&pki.client_cert, &pki.client_key, &pki.client_pem),
        ] {
            assert_eq!(count(&read(cert), "CERTIFICATE"), 2, "leaf + intermediate");
            assert_eq!(count(&read(key), "PRIVATE KEY"), 1, "PKCS#8");
            assert_eq!(read(pem), format!("{}{}", read(cert), read(key)));
            for f in [cert, key, pem] {
                let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o644, "{}", f.display());
            }
        }
        // The intermediate in the chain files is the one on disk.
        assert!(read(&pki.server_cert).ends_with(&read(&pki.intermediate_cert())));
        let dir_mode = std::fs::metadata(&pki.dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o755, 0o755);
        assert!(generate(dir.path(), &[], &["c"]).is_err());
    }
}
