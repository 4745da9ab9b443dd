//! The agent's TLS identity: its certificate and key, the CA its clients must be signed
//! by, and how it gets them:
//!
//! - from files (`halyard-hostd pki init`, or kept from an earlier registration);
//! - by registering with a Manager (`[manager] url`): fetch the Manager's CA (checking
//!   its fingerprint when configured), send a CSR, wait for approval, store the signed
//!   certificate;
//! - by enrollment (`--enroll-token`): serve a self-signed certificate without client
//!   authentication, answer only the enrollment verbs for a Manager that knows the
//!   token, then switch to the certificate and CA it sends.
//!
//! The server configuration is swapped in place (certificate renewal, enrollment), so
//! established connections are not dropped.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use halyard_common::limits::Backoff;
use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::errors;
use tracing::{info, warn};

use crate::config::Config;

pub struct Identity {
    files: IdentityFiles,
    names: Vec<String>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The same certificate without client authentication: the image data server's
    /// (imageio clients present none; their ticket is the capability).
    image: RwLock<Arc<rustls::ServerConfig>>,
    enroll_token: Mutex<Option<String>>,
    pending_key: Mutex<Option<String>>,
    /// Wrong enrollment tokens: after 5, each doubles the wait (up to a minute).
    enroll_failures: Backoff<()>,
}

/// The agent's key, certificate and CA: three configured paths, replaced as one unit.
/// A journal with all three is written first (atomically), then each file, then the
/// journal goes; after a crash in between, [`IdentityFiles::recover`] finishes the
/// installation, so the files never hold a key of one identity and the certificate of
/// another.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    key: String,
    cert: String,
    ca: String,
}

impl IdentityFiles {
    pub fn of(cfg: &Config) -> IdentityFiles {
        IdentityFiles {
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
            ca: cfg.tls.ca.clone(),
        }
    }

    fn journal(&self) -> PathBuf {
        let mut p = self.key.clone().into_os_string();
        p.push(".install");
        PathBuf::from(p)
    }

    /// Where a registering agent keeps the key of its request until it is approved
    /// (so that a restart while waiting asks with the same key).
    pub fn pending_key_path(&self) -> PathBuf {
        let mut p = self.key.clone().into_os_string();
        p.push(".pending");
        PathBuf::from(p)
    }

    /// Installs a new identity as one unit.
    pub fn install(&self, key: &str, cert: &str, ca: &str) -> anyhow::Result<()> {
        for p in [&self.key, &self.cert, &self.ca] {
            if let Some(d) = p.parent() {
                if !d.as_os_str().is_empty() && !d.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(d)?;
                }
            }
        }
        let j = serde_json::to_vec(&Journal {
            key: key.into(),
            cert: cert.into(),
            ca: ca.into(),
        })?;
        halyard_common::fsutil::write_atomic(&self.journal(), &j, 0o600)?;
        halyard_common::fsutil::crash_point("identity-journal-written");
        self.write_files(key, cert, ca)?;
        std::fs::remove_file(self.journal())?;
        Ok(())
    }

    fn write_files(&self, key: &str, cert: &str, ca: &str) -> anyhow::Result<()> {
        halyard_common::fsutil::write_atomic(&self.key, key.as_bytes(), 0o600)?;
        halyard_common::fsutil::crash_point("identity-key-written");
        halyard_common::fsutil::write_atomic(&self.ca, ca.as_bytes(), 0o600)?;
        halyard_common::fsutil::crash_point("identity-ca-written");
        halyard_common::fsutil::write_atomic(&self.cert, cert.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Finishes an installation a crash interrupted; true when there was one.
    pub fn recover(&self) -> anyhow::Result<bool> {
        let j = match std::fs::read(self.journal()) {
            Ok(j) => j,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice::<Journal>(&j) {
            Ok(j)
                if halyard_pki::cert_matches_key(&j.cert, &j.key)
                    && halyard_pki::issued_by(&j.cert, &j.ca) =>
            {
                self.write_files(&j.key, &j.cert, &j.ca)?;
                std::fs::remove_file(self.journal())?;
                warn!(journal = %self.journal().display(), "finished installing an identity a crash had interrupted");
                Ok(true)
            }
            _ => {
                // Written atomically, so this is not ours half-written: it is no identity.
                warn!(journal = %self.journal().display(), "an identity journal that is not valid; ignored and removed");
                std::fs::remove_file(self.journal())?;
                Ok(false)
            }
        }
    }

    pub fn exist(&self) -> bool {
        self.cert.exists() && self.key.exists() && self.ca.exists()
    }
}

fn read(p: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
}

fn denied(msg: &str) -> RpcError {
    errors::INVALID_PARAMETER.rpc(Some(msg))
}

impl Identity {
    fn new(
        cfg: &Config,
        server: Arc<rustls::ServerConfig>,
        image: Arc<rustls::ServerConfig>,
        token: Option<String>,
    ) -> Identity {
        let mut names = vec![cfg.manager.address.clone(), cfg.manager.host_name.clone()];
        names.retain(|n| !n.is_empty());
        if names.is_empty() {
            names = halyard_pki::default_host_names(&[]);
        }
        Identity {
            files: IdentityFiles::of(cfg),
            names,
            current: RwLock::new(server),
            image: RwLock::new(image),
            enroll_token: Mutex::new(token),
            pending_key: Mutex::new(None),
            enroll_failures: Backoff::new(5, Duration::from_secs(1), Duration::from_secs(60), 1),
        }
    }

    /// From the configured files.
    pub fn load(cfg: &Config) -> anyhow::Result<Identity> {
        let (cert, key) = (read(&cfg.tls.cert)?, read(&cfg.tls.key)?);
        let server = halyard_pki::server_config_pem(&cert, &key, Some(&read(&cfg.tls.ca)?))?;
        let image = halyard_pki::server_config_pem(&cert, &key, None)?;
        Ok(Identity::new(cfg, server, image, None))
    }

    /// Enrollment mode: a self-signed certificate, no client authentication.
    pub fn enrollment(cfg: &Config, token: String) -> anyhow::Result<Identity> {
        if token.len() < 8 {
            anyhow::bail!("the enrollment token must have at least 8 characters");
        }
        let names = halyard_pki::default_host_names(std::slice::from_ref(&cfg.manager.address));
        let s = halyard_pki::self_signed(&names)?;
        let server = halyard_pki::server_config_pem(&s.cert_pem, &s.key_pem, None)?;
        Ok(Identity::new(cfg, server.clone(), server, Some(token)))
    }

    /// The identity files are there (after finishing an interrupted installation).
    pub fn files_exist(cfg: &Config) -> anyhow::Result<bool> {
        let f = IdentityFiles::of(cfg);
        f.recover()?;
        Ok(f.exist())
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The image data server's TLS configuration of the moment.
    pub fn image_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.image.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn enrolling(&self) -> bool {
        self.enroll_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn check_token(&self, token: Option<&str>) -> Result<(), RpcError> {
        let t = self.enroll_token.lock().unwrap_or_else(|p| p.into_inner());
        let Some(want) = t.as_deref() else {
            return Ok(());
        };
        if let Err(wait) = self.enroll_failures.check(&()) {
            return Err(denied(&format!(
                "too many wrong enrollment tokens; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        if token.is_some_and(|got| token_eq(want, got)) {
            self.enroll_failures.success(&());
            Ok(())
        } else {
            self.enroll_failures.failure(&());
            Err(denied("wrong or missing enrollment token"))
        }
    }

    /// Host.getCertificateRequest: a new key (kept until the certificate comes) and its
    /// CSR.
    pub fn certificate_request(&self, token: Option<&str>) -> Result<String, RpcError> {
        self.check_token(token)?;
        let (csr, key) = halyard_pki::make_csr(&self.names).map_err(RpcError::internal)?;
        *self.pending_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(csr)
    }

    /// Host.setCertificate: installs a certificate for the pending key (and the CA, on
    /// enrollment), then serves with it.
    pub fn set_certificate(
        &self,
        token: Option<&str>,
        cert: &str,
        ca: Option<&str>,
    ) -> Result<(), RpcError> {
        self.check_token(token)?;
        let key = self
            .pending_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| denied("no certificate request is pending"))?;
        if !halyard_pki::cert_matches_key(cert, &key) {
            return Err(denied("the certificate is not for the requested key"));
        }
        let ca_pem = if self.enrolling() {
            ca.ok_or_else(|| denied("enrollment needs the CA certificate"))?
                .to_string()
        } else {
            read(&self.files.ca).map_err(RpcError::internal)?
        };
        if !halyard_pki::issued_by(cert, &ca_pem) {
            return Err(denied("the certificate is not signed by the CA"));
        }
        let server = halyard_pki::server_config_pem(cert, &key, Some(&ca_pem))
            .map_err(RpcError::internal)?;
        let image = halyard_pki::server_config_pem(cert, &key, None).map_err(RpcError::internal)?;
        self.files
            .install(&key, cert, &ca_pem)
            .map_err(|e| RpcError::internal(e.to_string()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = server;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = image;
        *self.pending_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let was_enrolling = self
            .enroll_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        info!(enrolled = was_enrolling, "new certificate installed");
        Ok(())
    }
}

/// Compares a token with the expected one through their SHA-256 (fixed length): the
/// time taken says nothing about the token's length or where it differs.
fn token_eq(want: &str, got: &str) -> bool {
    use sha2::Digest;
    let a = sha2::Sha256::digest(want.as_bytes());
    let b = sha2::Sha256::digest(got.as_bytes());
    halyard_common::text::constant_eq(&a, &b)
}

/// Registers with the Manager at `cfg.manager.url` and stores the signed certificate,
/// the key and the Manager's CA in the configured files. Waits for approval.
pub async fn register(cfg: &Config, unique_id: &str, port: u16) -> anyhow::Result<()> {
    let url = cfg.manager.url.trim_end_matches('/').to_string();
    let base = format!("{url}/ovirt-engine/services/host-register");
    // 1. The Manager's CA, checked against the configured fingerprint.
    let first = halyard_pki::client_config_unverified(None)?;
    let r = halyard_client::http::request(
        first,
        "GET",
        &format!("{base}?command=get-pki-trust"),
        &[],
        b"",
    )
    .await?;
    if r.status != 200 {
        anyhow::bail!("get-pki-trust: HTTP {}: {}", r.status, r.text());
    }
    let ca = r.text();
    let fp = halyard_pki::fingerprint(&ca);
    match cfg.manager.ca_fingerprint.as_deref() {
        Some(want) if !want.eq_ignore_ascii_case(&fp) => {
            anyhow::bail!("the Manager's CA fingerprint is {fp}, not the configured {want}: refusing to register")
        }
        Some(_) => info!(fingerprint = %fp, "Manager CA matches the configured fingerprint"),
        None => {
            warn!(fingerprint = %fp, "trusting the Manager's CA on first use (set manager.ca_fingerprint to pin it)")
        }
    }
    let trusted = halyard_pki::client_config_trusting(&ca)?;
    // 2. The CSR, with a key kept (0600) until the certificate comes: a restart while
    //    waiting registers the same key, which the Manager recognises.
    let files = IdentityFiles::of(cfg);
    let pending = files.pending_key_path();
    let key = match std::fs::read_to_string(&pending) {
        Ok(k) if halyard_pki::private_key_fingerprint(&k).is_some() => k,
        _ => {
            let k = halyard_pki::new_key_pem()?;
            if let Some(d) = pending.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)?;
            }
            halyard_common::fsutil::write_atomic(&pending, k.as_bytes(), 0o600)?;
            k
        }
    };
    let mut names = vec![cfg.manager.address.clone()];
    names.retain(|n| !n.is_empty());
    let csr = halyard_pki::make_csr_for_key(&names, &key)?;
    info!(
        key = %halyard_pki::private_key_fingerprint(&key).unwrap_or_default(),
        "registering with the Manager; an admin approves this key"
    );
    let q = halyard_common::text::percent_encode;
    let reg = format!(
        "{base}?command=register&name={}&address={}&port={}&uniqueId={}",
        q(&cfg.manager.host_name),
        q(&cfg.manager.address),
        port,
        q(unique_id)
    );
    let mut headers = vec![("Content-Type", "application/x-pem-file")];
    let token = cfg.manager.join_token.clone().unwrap_or_default();
    if !token.is_empty() {
        headers.push(("Halyard-Join-Token", token.as_str()));
    }
    let r = halyard_client::http::request(trusted.clone(), "POST", &reg, &headers, csr.as_bytes())
        .await?;
    if r.status != 200 {
        anyhow::bail!("register: HTTP {}: {}", r.status, r.text());
    }
    info!(host_id = %r.text().trim(), "registered with the Manager; waiting for approval");
    // 3. Wait for the certificate.
    let get = format!("{base}?command=get-certificate&uniqueId={}", q(unique_id));
    loop {
        match halyard_client::http::request(trusted.clone(), "GET", &get, &[], b"").await {
            Ok(r) if r.status == 200 => {
                let cert = r.text();
                if !halyard_pki::cert_matches_key(&cert, &key)
                    || !halyard_pki::issued_by(&cert, &ca)
                {
                    anyhow::bail!(
                        "the Manager sent a certificate that does not match our key or its CA"
                    );
                }
                files.install(&key, &cert, &ca)?;
                let _ = std::fs::remove_file(&pending);
                info!("approved: certificate installed");
                return Ok(());
            }
            Ok(r) if r.status == 409 => {}
            Ok(r) => warn!(status = r.status, body = %r.text(), "get-certificate"),
            Err(e) => warn!(error = %e, "cannot reach the Manager"),
        }
        tokio::time::sleep(Duration::from_secs(cfg.manager.poll_secs.max(1))).await;
    }
}
