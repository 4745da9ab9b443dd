//! Halyard's PKI: a certificate authority that signs host and client certificates, and
//! the rustls configurations for mutual TLS (the host agent requires a client
//! certificate signed by the configured CA, as VDSM does).
//!
//! Keys are ECDSA P-256. Files are PEM; keys are written 0600 and crash-safe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::PublicKeyData;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::{Duration, OffsetDateTime};

/// PKI errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key found in {0}")]
    NoKey(PathBuf),
    #[error("invalid PEM in {path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

pub type Result<T> = std::result::Result<T, PkiError>;

/// What a certificate is for. The CA writes the role; a host agent reads it from the
/// certificate of whoever connects to it (see [`role_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server without a Halyard role (the Manager's HTTPS certificate).
    Server,
    /// A host agent: a TLS server only (no host-to-host verb needs client
    /// authentication yet), role [`Role::Host`].
    Host,
    /// The Manager's client identity towards host agents (also the administrator's
    /// `halyard rpc` identity): a TLS client only, role [`Role::Manager`].
    ManagerClient,
}

/// Who a certificate speaks for, written by the CA as a URI subject alternative name
/// (`urn:halyard:role:manager`, `urn:halyard:role:host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Manager: may call every verb of a host agent.
    Manager,
    /// A host agent: may call only the verbs hosts need from each other.
    Host,
}

impl Role {
    pub const fn uri(self) -> &'static str {
        match self {
            Role::Manager => "urn:halyard:role:manager",
            Role::Host => "urn:halyard:role:host",
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Host => "host",
        }
    }
}

impl Usage {
    fn role(self) -> Option<Role> {
        match self {
            Usage::Server => None,
            Usage::Host => Some(Role::Host),
            Usage::ManagerClient => Some(Role::Manager),
        }
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<dir>/<name>.pem` (0644) and `<dir>/<name>.key` (0600).
    pub fn save(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write(&key, self.key_pem.as_bytes(), 0o600)?;
        write(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

/// A certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Makes a new self-signed CA valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Halyard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Loads a CA from its certificate and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_pem = read_string(cert_path)?;
        let key_pem = read_string(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Pem {
            path: key_path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Pem {
            path: cert_path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `<dir>/ca.pem` and `<dir>/ca.key`.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
        }
        .save(dir, "ca")
    }

    /// Issues a certificate with a fresh key. `names` become subject alternative names
    /// (IP addresses where they parse as such); the first is also the common name.
    pub fn issue(&self, names: &[String], usage: Usage, days: i64) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let params = leaf_params(names, usage, days)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request (the host-registration flow), keeping the
    /// requester's key; the names come from the caller, not from the request.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        names: &[String],
        usage: Usage,
        days: i64,
    ) -> Result<String> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Pem {
                path: PathBuf::from("<csr>"),
                detail: e.to_string(),
            })?;
        let params = leaf_params(names, usage, days)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }
}

fn leaf_params(names: &[String], usage: Usage, days: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "halyard".into()),
    );
    dn.push(DnType::OrganizationName, "Halyard");
    params.distinguished_name = dn;
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        // A host is a client too: of another host's agent and libvirtd, when it
        // migrates a VM there.
        Usage::Host => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Usage::ManagerClient => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    if let Some(role) = usage.role() {
        params
            .subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
    }
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn random_serial() -> Result<SerialNumber> {
    // A fresh key pair's public key is a good enough source of 16 random bytes without
    // adding a RNG dependency.
    let k = KeyPair::generate()?;
    let raw = k.public_key_raw();
    let mut bytes: Vec<u8> = raw.iter().rev().take(16).copied().collect();
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    halyard_common::fsutil::write_atomic(path, data, mode).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Paths of the PEM files of one TLS identity plus the CA that peers must be signed by.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|_| PkiError::NoKey(path.to_path_buf()))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        store.add(c)?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration that requires a client certificate signed by `files.ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca)?),
        provider(),
    )
    .build()
    .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// A client configuration presenting `files.cert` and trusting only `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// A client configuration without a client certificate (for tests of refusal, and for
/// the Manager's public HTTPS endpoints).
pub fn client_config_anonymous(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Parses a host name or address for TLS server-name verification.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|_| PkiError::ServerName(host.to_string()))
}

/// The default names a host certificate carries: the host name, localhost and the
/// loopback addresses, plus `extra`.
pub fn default_host_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = extra.to_vec();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_string();
        if !h.is_empty() {
            names.push(h);
        }
    }
    for n in ["localhost", "127.0.0.1", "::1"] {
        names.push(n.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Creates a development PKI in `dir`: `ca.{pem,key}`, `hostd.{pem,key}` (server) and
/// `client.{pem,key}` (client). Existing files are kept unless `force`.
pub fn init_dev_pki(dir: &Path, host_names: &[String], force: bool) -> Result<DevPki> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() && !force {
        Ca::load(&ca_cert, &ca_key)?
    } else {
        let ca = Ca::generate("Halyard development CA", 3650)?;
        ca.save(dir)?;
        ca
    };
    let host = dir.join("hostd.pem");
    if force || !host.exists() {
        ca.issue(host_names, Usage::Host, 825)?.save(dir, "hostd")?;
    }
    let client = dir.join("client.pem");
    if force || !client.exists() {
        ca.issue(&["halyard-client".to_string()], Usage::ManagerClient, 825)?
            .save(dir, "client")?;
    }
    Ok(DevPki {
        hostd: TlsFiles {
            cert: dir.join("hostd.pem"),
            key: dir.join("hostd.key"),
            ca: ca_cert.clone(),
        },
        client: TlsFiles {
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
            ca: ca_cert,
        },
    })
}

/// The files [`init_dev_pki`] made.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub hostd: TlsFiles,
    pub client: TlsFiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_builds_tls_configs() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = init_dev_pki(d.path(), &default_host_names(&[]), false).expect("pki");
        server_config(&p.hostd).expect("server config");
        client_config(&p.client).expect("client config");
        // Loading again keeps the CA.
        let before = std::fs::read(d.path().join("ca.pem")).expect("read");
        init_dev_pki(d.path(), &default_host_names(&[]), false).expect("again");
        assert_eq!(
            before,
            std::fs::read(d.path().join("ca.pem")).expect("read")
        );
    }

    #[test]
    fn csr_signing() {
        let ca = Ca::generate("t", 1).expect("ca");
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(vec!["h1".to_string()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = ca
            .sign_csr(&csr, &["h1".into()], Usage::Host, 1)
            .expect("signed");
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(role_of_pem(&pem), Some(Role::Host));
        assert!(ca
            .sign_csr("garbage", &["h1".into()], Usage::Host, 1)
            .is_err());
    }
}

/// A new private key (PEM).
pub fn new_key_pem() -> Result<String> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// A certificate signing request for `names` with an existing key (PEM).
pub fn make_csr_for_key(names: &[String], key_pem: &str) -> Result<String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
        path: PathBuf::from("<key>"),
        detail: e.to_string(),
    })?;
    csr_with(names, &key)
}

fn csr_with(names: &[String], key: &KeyPair) -> Result<String> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "halyard-host".into()),
    );
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}

/// A new key and a certificate signing request for `names` (PEM: csr, key).
pub fn make_csr(names: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((csr_with(names, &key)?, key.serialize_pem()))
}

/// The DER of the first certificate in a PEM text.
fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .map(|c| c.to_vec())
}

/// Whether the certificate carries the public key of the private key.
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(der) = first_cert_der(cert_pem) else {
        return false;
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        Err(_) => false,
    }
}

/// The role the CA wrote into a certificate (DER), if any. Only meaningful for a
/// certificate whose chain was verified against the CA.
pub fn role_of(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    let mut found = None;
    for n in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = n {
            let r = [Role::Manager, Role::Host]
                .into_iter()
                .find(|r| r.uri() == *u);
            match (found, r) {
                // Two different roles in one certificate: no role.
                (Some(a), Some(b)) if a != b => return None,
                (_, Some(b)) => found = Some(b),
                _ => {}
            }
        }
    }
    found
}

/// The role in a PEM certificate.
pub fn role_of_pem(pem: &str) -> Option<Role> {
    role_of(&first_cert_der(pem)?)
}

/// The DNS names and IP addresses a PEM certificate is valid for (its subject
/// alternative names), lower case.
pub fn cert_names(pem: &str) -> Vec<String> {
    let Some(der) = first_cert_der(pem) else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in &san.value.general_names {
        match n {
            x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    _ => None,
                };
                if let Some(ip) = ip {
                    out.push(ip.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// SHA-256 of the public key of a CSR (its SubjectPublicKeyInfo), as
/// `SHA256:<base64>` like OpenSSH prints key fingerprints: what an administrator
/// compares before approving a host.
pub fn csr_key_fingerprint(csr_pem: &str) -> Option<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).ok()?;
    Some(key_fingerprint(&csr.public_key.subject_public_key_info()))
}

/// [`csr_key_fingerprint`] of the key of a private key (PEM).
pub fn private_key_fingerprint(key_pem: &str) -> Option<String> {
    let k = KeyPair::from_pem(key_pem).ok()?;
    Some(key_fingerprint(&k.subject_public_key_info()))
}

fn key_fingerprint(spki_der: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let d = sha2::Sha256::digest(spki_der);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
    )
}

/// Seconds since the epoch at which the certificate expires.
pub fn cert_not_after(cert_pem: &str) -> Option<i64> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether `cert_pem` was issued by the CA in `ca_pem` (signature check).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Some(c), Some(a)) = (first_cert_der(cert_pem), first_cert_der(ca_pem)) else {
        return false;
    };
    match (
        x509_parser::parse_x509_certificate(&c),
        x509_parser::parse_x509_certificate(&a),
    ) {
        (Ok((_, cert)), Ok((_, ca))) => cert.verify_signature(Some(ca.public_key())).is_ok(),
        _ => false,
    }
}

/// SHA-256 fingerprint of a PEM certificate, as `AB:CD:...`.
pub fn fingerprint(pem: &str) -> String {
    use sha2::Digest;
    let der = first_cert_der(pem).unwrap_or_default();
    sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A self-signed certificate (the agent's identity before it is enrolled).
pub fn self_signed(names: &[String]) -> Result<Issued> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(names.to_vec())?;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server configuration from PEM texts, requiring client certificates signed by `ca`
/// (or none when `ca` is `None`: enrollment mode).
pub fn server_config_pem(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            path: PathBuf::from("<certificate>"),
            detail: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| PkiError::NoKey(PathBuf::from("<key>")))?;
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let cfg = match ca_pem {
        Some(ca) => {
            let mut store = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let c = c.map_err(|e| PkiError::Pem {
                    path: PathBuf::from("<ca>"),
                    detail: e.to_string(),
                })?;
                store.add(c)?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            )
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
            b.with_client_cert_verifier(v)
                .with_single_cert(certs, key)?
        }
        None => b.with_no_client_auth().with_single_cert(certs, key)?,
    };
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts `ca_pem` only, presenting no certificate.
pub fn client_config_trusting(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| PkiError::Pem {
            path: PathBuf::from("<ca>"),
            detail: e.to_string(),
        })?;
        store.add(c)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate. Only for a first contact whose trust comes from
/// elsewhere: the CA fingerprint an agent checks, or the one-time token an agent in
/// enrollment mode demands.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// See [`AcceptAny`]; `client` adds a client certificate.
pub fn client_config_unverified(client: Option<&TlsFiles>) -> Result<Arc<rustls::ClientConfig>> {
    let p = provider();
    let b = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)));
    let cfg = match client {
        Some(f) => b.with_client_auth_cert(load_certs(&f.cert)?, load_key(&f.key)?)?,
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn csr_key_match_and_issuer() {
        let ca = Ca::generate("t", 1).expect("ca");
        let (csr, key) = make_csr(&["h1".into()]).expect("csr");
        let cert = ca
            .sign_csr(&csr, &["h1".into(), "10.0.0.1".into()], Usage::Host, 1)
            .expect("signed");
        assert!(cert_matches_key(&cert, &key));
        assert_eq!(cert_names(&cert), vec!["h1", "10.0.0.1"]);
        assert_eq!(
            csr_key_fingerprint(&csr),
            private_key_fingerprint(&key),
            "the CSR carries the key"
        );
        assert!(csr_key_fingerprint(&csr)
            .expect("fingerprint")
            .starts_with("SHA256:"));
        let (_, other) = make_csr(&["h1".into()]).expect("csr");
        assert!(!cert_matches_key(&cert, &other));
        assert!(issued_by(&cert, ca.cert_pem()));
        let ca2 = Ca::generate("t2", 1).expect("ca");
        assert!(!issued_by(&cert, ca2.cert_pem()));
        assert!(cert_not_after(&cert).expect("date") > 0);
        assert_eq!(fingerprint(ca.cert_pem()).len(), 95);
        server_config_pem(&cert, &key, Some(ca.cert_pem())).expect("server config");
        let s = self_signed(&["x".into()]).expect("self-signed");
        server_config_pem(&s.cert_pem, &s.key_pem, None).expect("enrollment config");
    }

    #[test]
    fn roles_are_written_by_the_ca_and_read_back() {
        let ca = Ca::generate("t", 1).expect("ca");
        let m = ca
            .issue(&["m".into()], Usage::ManagerClient, 1)
            .expect("issue");
        assert_eq!(role_of_pem(&m.cert_pem), Some(Role::Manager));
        let h = ca.issue(&["h".into()], Usage::Host, 1).expect("issue");
        assert_eq!(role_of_pem(&h.cert_pem), Some(Role::Host));
        let e = ca.issue(&["e".into()], Usage::Server, 1).expect("issue");
        assert_eq!(role_of_pem(&e.cert_pem), None);
        // A CSR asking for the Manager's role gets the role the CA chooses.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["x".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(Role::Manager.uri().try_into().expect("uri")));
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let c = ca
            .sign_csr(&csr, &["x".into()], Usage::Host, 1)
            .expect("sign");
        assert_eq!(role_of_pem(&c), Some(Role::Host));
    }
}
