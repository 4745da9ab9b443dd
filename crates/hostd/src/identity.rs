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

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::errors;
use tracing::{info, warn};

use crate::config::Config;

pub struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    names: Vec<String>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    enroll_token: Mutex<Option<String>>,
    pending_key: Mutex<Option<String>>,
}

fn read(p: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
}

fn denied(msg: &str) -> RpcError {
    errors::INVALID_PARAMETER.rpc(Some(msg))
}

impl Identity {
    fn new(cfg: &Config, server: Arc<rustls::ServerConfig>, token: Option<String>) -> Identity {
        let mut names = vec![cfg.manager.address.clone(), cfg.manager.host_name.clone()];
        names.retain(|n| !n.is_empty());
        if names.is_empty() {
            names = halyard_pki::default_host_names(&[]);
        }
        Identity {
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
            ca: cfg.tls.ca.clone(),
            names,
            current: RwLock::new(server),
            enroll_token: Mutex::new(token),
            pending_key: Mutex::new(None),
        }
    }

    /// From the configured files.
    pub fn load(cfg: &Config) -> anyhow::Result<Identity> {
        let server = halyard_pki::server_config_pem(
            &read(&cfg.tls.cert)?,
            &read(&cfg.tls.key)?,
            Some(&read(&cfg.tls.ca)?),
        )?;
        Ok(Identity::new(cfg, server, None))
    }

    /// Enrollment mode: a self-signed certificate, no client authentication.
    pub fn enrollment(cfg: &Config, token: String) -> anyhow::Result<Identity> {
        if token.len() < 8 {
            anyhow::bail!("the enrollment token must have at least 8 characters");
        }
        let names = halyard_pki::default_host_names(std::slice::from_ref(&cfg.manager.address));
        let s = halyard_pki::self_signed(&names)?;
        let server = halyard_pki::server_config_pem(&s.cert_pem, &s.key_pem, None)?;
        Ok(Identity::new(cfg, server, Some(token)))
    }

    pub fn files_exist(cfg: &Config) -> bool {
        cfg.tls.cert.exists() && cfg.tls.key.exists() && cfg.tls.ca.exists()
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn enrolling(&self) -> bool {
        self.enroll_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn check_token(&self, token: Option<&str>) -> Result<(), RpcError> {
        let t = self.enroll_token.lock().unwrap_or_else(|p| p.into_inner());
        match (t.as_deref(), token) {
            (None, _) => Ok(()),
            (Some(want), Some(got)) if constant_eq(want, got) => Ok(()),
            _ => Err(denied("wrong or missing enrollment token")),
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
            read(&self.ca).map_err(RpcError::internal)?
        };
        if !halyard_pki::issued_by(cert, &ca_pem) {
            return Err(denied("the certificate is not signed by the CA"));
        }
        let server = halyard_pki::server_config_pem(cert, &key, Some(&ca_pem))
            .map_err(RpcError::internal)?;
        for (p, data, mode) in [
            (&self.key, key.as_str(), 0o600),
            (&self.ca, ca_pem.as_str(), 0o644),
            (&self.cert, cert, 0o644),
        ] {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            halyard_common::fsutil::write_atomic(p, data.as_bytes(), mode)
                .map_err(RpcError::internal)?;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = server;
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

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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
    // 2. The CSR.
    let mut names = vec![cfg.manager.address.clone(), cfg.manager.host_name.clone()];
    names.retain(|n| !n.is_empty());
    let (csr, key) = halyard_pki::make_csr(&names)?;
    let q = halyard_common::text::percent_encode;
    let reg = format!(
        "{base}?command=register&name={}&address={}&port={}&uniqueId={}",
        q(&cfg.manager.host_name),
        q(&cfg.manager.address),
        port,
        q(unique_id)
    );
    let r = halyard_client::http::request(
        trusted.clone(),
        "POST",
        &reg,
        &[("Content-Type", "application/x-pem-file")],
        csr.as_bytes(),
    )
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
                for (p, data, mode) in [
                    (&cfg.tls.key, key.as_str(), 0o600),
                    (&cfg.tls.ca, ca.as_str(), 0o644),
                    (&cfg.tls.cert, cert.as_str(), 0o644),
                ] {
                    if let Some(d) = p.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    halyard_common::fsutil::write_atomic(p, data.as_bytes(), mode)?;
                }
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
