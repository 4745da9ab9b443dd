//! Host registration (the VDSM-REG role) and enrollment.
//!
//! Agent-initiated (`/ovirt-engine/services/host-register`):
//! - `command=get-version` -> `1`
//! - `command=get-pki-trust` -> the CA certificate (PEM); the agent checks its
//!   fingerprint (given by the admin, or shown for trust on first use)
//! - `command=register&name=&address=&port=&uniqueId=` with a CSR (PEM) as the body,
//!   optionally a one-time join token in the `Halyard-Join-Token` header -> the host
//!   appears `pending_approval`, or is approved at once when it presents a join token,
//!   or when the connection comes from an address matching `auto_approve` and the host
//!   asks to be reached at that same address
//! - `command=get-certificate&uniqueId=` -> the signed certificate once approved
//!   (409 while pending)
//!
//! What a registration claims (name, address) is never what approves it. A
//! registration of a known host that changes its address, port or key changes nothing:
//! it is recorded as the host's pending change, with an event, until an admin approves
//! it. Registrations that would wait for an admin are capped in number and per source.
//!
//! Manager-initiated (`POST /hosts` with an address and the agent's one-time enrollment
//! token as `root_password`): the Manager connects to the agent in enrollment mode, asks
//! for a CSR with the token, signs it and sends back the certificate and CA.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::info;

use crate::api::search::glob;
use crate::model::*;
use crate::state::Manager;

/// The header a join token travels in (never the query string: that ends in logs).
pub const JOIN_TOKEN_HEADER: &str = "halyard-join-token";

/// Largest CSR accepted.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [("content-type", "text/plain")], body.into()).into_response()
}

fn valid_field(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
}

/// A registration request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub unique_id: String,
    pub csr: String,
    /// `SHA256:...` of the CSR's key.
    pub key_fingerprint: String,
}

/// Why a registration is refused; each is an HTTP status with a text.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Failed(#[from] anyhow::Error),
}

impl RegisterError {
    fn status(&self) -> StatusCode {
        match self {
            RegisterError::Bad(_) => StatusCode::BAD_REQUEST,
            RegisterError::Conflict(_) => StatusCode::CONFLICT,
            RegisterError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            RegisterError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Checks the fields of `command=register` (query and body). Untrusted input: every
/// field is bounded and limited to plain characters, the body must be a CSR whose key
/// can be read.
pub fn parse_registration(
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<Registration, RegisterError> {
    let arg = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let (name, address, unique) = (arg("name"), arg("address"), arg("uniqueId"));
    if !valid_field(name, 255) || !valid_field(address, 255) || !valid_field(unique, 128) {
        return Err(RegisterError::Bad(
            "name, address and uniqueId are required (letters, digits, - . _ :)".into(),
        ));
    }
    let port = match q.get("port").or_else(|| q.get("vdsPort")) {
        None => 54321,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(RegisterError::Bad(format!("bad port {:?}", trunc(p)))),
        },
    };
    if body.len() > MAX_CSR_BYTES {
        return Err(RegisterError::Bad(format!(
            "the certificate request is larger than {MAX_CSR_BYTES} bytes"
        )));
    }
    let csr = std::str::from_utf8(body)
        .map_err(|_| RegisterError::Bad("the certificate request is not text".into()))?;
    let key_fingerprint = halyard_pki::csr_key_fingerprint(csr).ok_or_else(|| {
        RegisterError::Bad("a PEM certificate signing request is required as the body".into())
    })?;
    Ok(Registration {
        name: name.into(),
        address: address.into(),
        port,
        unique_id: unique.into(),
        csr: csr.into(),
        key_fingerprint,
    })
}

fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `/ovirt-engine/services/host-register`; `peer` is the connection's address.
pub async fn handle(
    m: &Arc<Manager>,
    peer: IpAddr,
    q: &HashMap<String, String>,
    join_token: Option<&str>,
    body: &[u8],
) -> Response {
    let arg = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    match arg("command") {
        "get-version" => text(StatusCode::OK, "1"),
        "get-pki-trust" => (
            StatusCode::OK,
            [("content-type", "application/x-x509-ca-cert")],
            m.pki.ca.cert_pem().to_string(),
        )
            .into_response(),
        "register" => {
            let r = match parse_registration(q, body) {
                Ok(r) => register(m, peer, r, join_token).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(id) => text(StatusCode::OK, id),
                Err(e) => text(e.status(), e.to_string()),
            }
        }
        "get-certificate" => {
            let unique = arg("uniqueId");
            let h = m
                .read()
                .hosts
                .values()
                .find(|h| h.unique_id == unique)
                .cloned();
            match h {
                None => text(StatusCode::NOT_FOUND, "unknown host"),
                Some(h) if h.pending_change.is_some() => {
                    text(StatusCode::CONFLICT, "pending approval")
                }
                Some(h) => match h.certificate {
                    Some(c) if h.status != "pending_approval" => (
                        StatusCode::OK,
                        [("content-type", "application/x-pem-file")],
                        c,
                    )
                        .into_response(),
                    _ => text(StatusCode::CONFLICT, "pending approval"),
                },
            }
        }
        other => text(
            StatusCode::BAD_REQUEST,
            format!("unknown command {:?}", trunc(other)),
        ),
    }
}

/// The key of the CSR a host was approved with (or is pending with).
fn key_of(csr: Option<&str>) -> Option<String> {
    csr.and_then(halyard_pki::csr_key_fingerprint)
}

/// Whether a registration from `peer` that asks to be reached at `address` is
/// approved by the `auto_approve` patterns.
pub fn auto_approved(patterns: &[String], peer: IpAddr, address: &str) -> bool {
    let peer = halyard_common::net::canonical(peer);
    let same = address
        .parse::<IpAddr>()
        .is_ok_and(|a| halyard_common::net::canonical(a) == peer);
    same && patterns.iter().any(|p| glob(p, &peer.to_string()))
}

fn hash_token(t: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(t.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A valid join token for this registration: consumed (it works once), its cluster
/// returned.
async fn use_join_token(
    m: &Arc<Manager>,
    peer: IpAddr,
    token: &str,
    name: &str,
) -> Result<String, RegisterError> {
    let guard = &m.throttles.join_tokens;
    if let Err(wait) = guard.check(&peer) {
        return Err(RegisterError::TooMany(format!(
            "too many wrong join tokens from {peer}; retry in {} s",
            wait.as_secs().max(1)
        )));
    }
    let hash = hash_token(token);
    let now = now_ms();
    let found = m
        .read()
        .join_tokens
        .values()
        .find(|t| halyard_common::text::constant_eq(t.hash.as_bytes(), hash.as_bytes()))
        .cloned();
    let t = match found {
        Some(t) if t.expiration_time > now && (t.host_name.is_empty() || t.host_name == name) => t,
        _ => {
            guard.failure(&peer);
            m.event(
                10006,
                "warning",
                format!("A registration from {peer} presented a join token that is not valid (unknown, expired, used, or for another host)."),
                None,
                None,
            )
            .await;
            return Err(RegisterError::Conflict(
                "the join token is not valid (unknown, expired, used, or for another host)".into(),
            ));
        }
    };
    guard.success(&peer);
    // One use: it goes before the host is made.
    m.remove::<JoinToken>(&t.id).await?;
    Ok(t.cluster)
}

fn cluster_named(m: &Manager, name: &str) -> Result<String, RegisterError> {
    m.read()
        .cluster_by_name(name)
        .map(|c| c.id.clone())
        .ok_or_else(|| {
            RegisterError::Conflict(format!(
                "the cluster for registered hosts ({name:?}, auto_approve_cluster) does not exist"
            ))
        })
}

async fn register(
    m: &Arc<Manager>,
    peer: IpAddr,
    r: Registration,
    join_token: Option<&str>,
) -> Result<String, RegisterError> {
    let peer = halyard_common::net::canonical(peer);
    let by_token = match join_token {
        Some(t) => Some(use_join_token(m, peer, t, &r.name).await?),
        None => None,
    };
    let by_address = auto_approved(&m.cfg.auto_approve, peer, &r.address);
    let approved = by_token.is_some() || by_address;
    let _g = m.write_lock.lock().await;
    let existing = m
        .read()
        .hosts
        .values()
        .find(|h| h.unique_id == r.unique_id)
        .cloned();
    let waiting = {
        let inv = m.read();
        inv.hosts
            .values()
            .filter(|h| h.status == "pending_approval" || h.pending_change.is_some())
            .count()
    };
    // What waits for an admin is bounded, in all and per source.
    let admit_pending = |m: &Manager| -> Result<(), RegisterError> {
        if waiting >= m.cfg.max_pending_hosts {
            return Err(RegisterError::TooMany(format!(
                "{waiting} registrations already wait for approval; approve or remove some first"
            )));
        }
        if !m.throttles.registrations.admit(&peer) {
            return Err(RegisterError::TooMany(format!(
                "too many registrations from {peer}; retry in a minute"
            )));
        }
        Ok(())
    };
    let id = match existing {
        Some(h) => {
            let same_key = key_of(h.csr.as_deref()).as_deref() == Some(r.key_fingerprint.as_str());
            if same_key && h.address == r.address && h.port == r.port {
                // The same agent asking again (it restarted while waiting): nothing new.
                return Ok(h.id);
            }
            if h.status == "pending_approval" {
                drop(_g);
                m.event(
                    10004,
                    "warning",
                    format!(
                        "Host {} (pending approval) registered again from {peer} with a different key or address ({} {}:{}); refused: remove the pending host to register it anew.",
                        h.name, r.key_fingerprint, r.address, r.port
                    ),
                    Some(&h.id),
                    None,
                )
                .await;
                return Err(RegisterError::Conflict(format!(
                    "host {} already waits for approval with another key or address; an admin must remove it first",
                    h.name
                )));
            }
            admit_pending(m)?;
            let change = PendingRegistration {
                address: r.address.clone(),
                port: r.port,
                csr: r.csr.clone(),
                key_fingerprint: r.key_fingerprint.clone(),
                from: peer.to_string(),
                time: now_ms(),
            };
            m.update(&h.id, |x: &mut Host| x.pending_change = Some(change))
                .await?;
            drop(_g);
            m.event(
                10003,
                "warning",
                format!(
                    "Host {} registered again from {peer} asking to change its address {}:{} -> {}:{} and key {} -> {}; nothing changes until an admin approves it.",
                    h.name,
                    h.address,
                    h.port,
                    r.address,
                    r.port,
                    key_of(h.csr.as_deref()).unwrap_or_else(|| "(none)".into()),
                    r.key_fingerprint
                ),
                Some(&h.id),
                None,
            )
            .await;
            return Ok(h.id);
        }
        None => {
            if m.read().host_by_name(&r.name).is_some() {
                return Err(RegisterError::Conflict(format!(
                    "a host named {} exists already",
                    r.name
                )));
            }
            if !approved {
                admit_pending(m)?;
            }
            let cluster = match &by_token {
                Some(c) => c.clone(),
                None => cluster_named(m, &m.cfg.auto_approve_cluster)?,
            };
            let mut h = new_host(
                &r.name,
                &r.address,
                r.port,
                &r.unique_id,
                &cluster,
                Some(r.csr.clone()),
            );
            h.registered_from = peer.to_string();
            m.insert(&h).await?;
            drop(_g);
            m.event(
                10000,
                "normal",
                format!(
                    "Host {} ({}:{}) registered from {peer} with key {}; {}",
                    r.name,
                    r.address,
                    r.port,
                    r.key_fingerprint,
                    if by_token.is_some() {
                        "it presented a join token."
                    } else if by_address {
                        "its address is auto-approved."
                    } else {
                        "it is pending approval."
                    }
                ),
                Some(&h.id),
                None,
            )
            .await;
            h.id
        }
    };
    if approved {
        approve(m, &id, None).await.map_err(|e| {
            RegisterError::Conflict(format!("the registration could not be approved: {e}"))
        })?;
    }
    Ok(id)
}

pub(crate) fn new_host(
    name: &str,
    address: &str,
    port: u16,
    unique: &str,
    cluster: &str,
    csr: Option<String>,
) -> Host {
    Host {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        address: address.to_string(),
        port,
        status: "pending_approval".into(),
        cluster: cluster.to_string(),
        unique_id: unique.to_string(),
        csr,
        certificate: None,
        cert_not_after: 0,
        spm_priority: 5,
        spm_status: "none".into(),
        spm_id: 0,
        pm_enabled: false,
        pm_automatic: true,
        fenced_ms: 0,
        domains_bad: Vec::new(),
        samples: Vec::new(),
        memory: 0,
        free_memory: 0,
        cpu_model: String::new(),
        cpu_cores: 0,
        cpu_sockets: 0,
        cpu_threads: 0,
        cpu_speed: String::new(),
        libvirt_version: String::new(),
        vdsm_version: String::new(),
        os_name: String::new(),
        kernel: String::new(),
        hardware_uuid: String::new(),
        cpu_idle: 100.0,
        status_detail: String::new(),
        enroll_token_hash: None,
        registered_from: String::new(),
        pending_change: None,
        tags: Vec::new(),
        networks: Vec::new(),
        update_available: false,
        imageio_port: 0,
    }
}

/// Signs a host's CSR for the address the Manager connects to. The CA refuses the
/// Manager's own names: a host certificate for them would let that host answer as the
/// Manager to every CLI and SDK user.
pub fn sign_host_csr(m: &Manager, csr: &str, address: &str) -> anyhow::Result<String> {
    if is_own_name(&m.pki.own_names, address) {
        anyhow::bail!(
            "{address} is one of the Manager's own names ({}); the CA does not sign host certificates for them (register the host with another address)",
            m.pki.own_names.join(", ")
        );
    }
    Ok(m.pki.ca.sign_csr(
        csr,
        &[address.to_string()],
        halyard_pki::Usage::Host,
        m.cfg.host_cert_days,
    )?)
}

/// Whether `name` is among `own` (names compared case-insensitively, addresses as
/// addresses).
pub fn is_own_name(own: &[String], name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let ip = name
        .parse::<IpAddr>()
        .ok()
        .map(halyard_common::net::canonical);
    own.iter().any(|o| {
        *o == n
            || (ip.is_some() && o.parse::<IpAddr>().ok().map(halyard_common::net::canonical) == ip)
    })
}

/// Approves a host: a pending registration (its CSR is signed, monitoring starts), or
/// a known host's pending change (new address, port or key).
pub async fn approve(m: &Arc<Manager>, id: &str, cluster: Option<String>) -> anyhow::Result<()> {
    let _g = m.write_lock.lock().await;
    let h = m
        .read()
        .hosts
        .get(id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("host {id} not found"))?;
    if let Some(c) = &cluster {
        if !m.read().clusters.contains_key(c) {
            anyhow::bail!("cluster {c} not found");
        }
    }
    let not_after = now_ms() + m.cfg.host_cert_days * 86_400_000;
    if h.status == "pending_approval" {
        let csr = h
            .csr
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the host sent no certificate request"))?;
        let cert = sign_host_csr(m, &csr, &h.address)?;
        m.update(id, |x: &mut Host| {
            if let Some(c) = cluster {
                x.cluster = c;
            }
            x.certificate = Some(cert);
            x.cert_not_after = not_after;
            x.status = "connecting".into();
        })
        .await?;
        drop(_g);
        info!(host = %h.name, "host approved");
        m.event(
            10001,
            "normal",
            format!(
                "Host {} was approved (key {}).",
                h.name,
                key_of(h.csr.as_deref()).unwrap_or_default()
            ),
            Some(id),
            None,
        )
        .await;
        m.monitor(id);
        return Ok(());
    }
    let Some(change) = h.pending_change.clone() else {
        anyhow::bail!(
            "Cannot approve Host {}: it is {}, not pending approval, and no change of it waits.",
            h.name,
            h.status
        );
    };
    let cert = sign_host_csr(m, &change.csr, &change.address)?;
    m.update(id, |x: &mut Host| {
        if let Some(c) = cluster {
            x.cluster = c;
        }
        x.address = change.address.clone();
        x.port = change.port;
        x.csr = Some(change.csr.clone());
        x.certificate = Some(cert);
        x.cert_not_after = not_after;
        x.pending_change = None;
        x.status = "connecting".into();
    })
    .await?;
    drop(_g);
    m.event(
        10005,
        "normal",
        format!(
            "The change of Host {} was approved: address {}:{}, key {}.",
            h.name, change.address, change.port, change.key_fingerprint
        ),
        Some(id),
        None,
    )
    .await;
    // Reconnect to where it is now.
    m.unmonitor(id);
    m.monitor(id);
    Ok(())
}

/// A new join token: its secret (shown once) and its record.
pub async fn create_join_token(
    m: &Arc<Manager>,
    host_name: &str,
    cluster: Option<String>,
    lifetime_secs: u64,
) -> anyhow::Result<(String, JoinToken)> {
    let cluster = match cluster {
        Some(c) => c,
        None => cluster_named(m, &m.cfg.auto_approve_cluster)?,
    };
    let secret = crate::state::random_hex(32);
    let now = now_ms();
    let t = JoinToken {
        id: uuid::Uuid::new_v4().to_string(),
        hash: hash_token(&secret),
        host_name: host_name.to_string(),
        cluster,
        creation_time: now,
        expiration_time: now + (lifetime_secs.min(7 * 86_400) as i64) * 1000,
    };
    m.insert(&t).await?;
    m.event(
        10007,
        "normal",
        format!(
            "A join token{} was created by admin@internal.",
            if host_name.is_empty() {
                String::new()
            } else {
                format!(" for host {host_name}")
            }
        ),
        None,
        None,
    )
    .await;
    Ok((secret, t))
}

/// `POST /hosts`: enrolls an agent that waits with a one-time token.
pub async fn enroll_host(
    m: &Arc<Manager>,
    name: &str,
    address: &str,
    port: u16,
    cluster: &str,
    token: &str,
) -> anyhow::Result<Host> {
    if token.is_empty() {
        anyhow::bail!(
            "root_password must be the agent's enrollment token (halyard-hostd --enroll-token)"
        );
    }
    if is_own_name(&m.pki.own_names, address) {
        anyhow::bail!(
            "{address} is one of the Manager's own names; the CA does not sign host certificates for them"
        );
    }
    // The agent in enrollment mode has a self-signed certificate: the token it demands
    // is what makes this contact trustworthy.
    let tls = halyard_pki::client_config_unverified(None)?;
    let c = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        halyard_client::Client::connect(address, port, tls),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{address}:{port} did not answer"))?
    .map_err(|e| anyhow::anyhow!("cannot reach the agent at {address}:{port}: {e}"))?;
    let csr = c
        .call_value("Host.getCertificateRequest", json!({"token": token}))
        .await
        .map_err(|e| anyhow::anyhow!("the agent refused enrollment: {e}"))?;
    let csr = csr.as_str().unwrap_or_default().to_string();
    let cert = sign_host_csr(m, &csr, address)?;
    c.call_value(
        "Host.setCertificate",
        json!({"token": token, "certificate": cert, "ca": m.pki.ca.cert_pem()}),
    )
    .await
    .map_err(|e| anyhow::anyhow!("the agent refused the certificate: {e}"))?;
    c.close().await;
    let mut h = new_host(
        name,
        address,
        port,
        &uuid::Uuid::new_v4().to_string(),
        cluster,
        Some(csr),
    );
    h.certificate = Some(cert);
    h.cert_not_after = now_ms() + m.cfg.host_cert_days * 86_400_000;
    h.status = "connecting".into();
    m.insert(&h).await?;
    m.event(
        10002,
        "normal",
        format!("Host {name} ({address}) was enrolled by admin@internal."),
        Some(&h.id),
        None,
    )
    .await;
    m.monitor(&h.id);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_approval_is_on_the_peer_not_the_claim() {
        let p = vec!["127.0.0.1".to_string(), "10.1.*".to_string()];
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(auto_approved(&p, lo, "127.0.0.1"));
        // Claims an approved address from elsewhere: no.
        assert!(!auto_approved(&p, other, "127.0.0.1"));
        // From an approved address, asks to be reached elsewhere: no.
        assert!(!auto_approved(&p, lo, "10.1.0.5"));
        assert!(!auto_approved(&p, lo, "myhost"));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert!(auto_approved(&p, mapped, "10.1.2.3"));
    }

    #[test]
    fn own_names() {
        let own = vec![
            "localhost".to_string(),
            "mgr.example".to_string(),
            "::1".into(),
        ];
        assert!(is_own_name(&own, "LOCALHOST"));
        assert!(is_own_name(&own, "0:0:0:0:0:0:0:1"));
        assert!(!is_own_name(&own, "127.0.0.1"));
        assert!(!is_own_name(&own, "host1.example"));
    }

    #[test]
    fn registration_fields() {
        let (csr, _) = halyard_pki::make_csr(&["h".into()]).expect("csr");
        let q = |s: &str| crate::server::form_decode(s);
        let ok = parse_registration(
            &q("name=h1&address=10.0.0.1&port=54321&uniqueId=abc"),
            csr.as_bytes(),
        )
        .expect("ok");
        assert_eq!(ok.port, 54321);
        assert!(ok.key_fingerprint.starts_with("SHA256:"));
        for bad in [
            "name=&address=a&uniqueId=u",
            "name=a b&address=a&uniqueId=u",
            "name=a&address=a&uniqueId=u&port=0",
            "name=a&address=a&uniqueId=u&port=99999",
            "name=a&address=a;rm&uniqueId=u",
        ] {
            assert!(
                parse_registration(&q(bad), csr.as_bytes()).is_err(),
                "{bad}"
            );
        }
        let q1 = q("name=h1&address=10.0.0.1&uniqueId=abc");
        assert!(parse_registration(&q1, b"not a csr").is_err());
        assert!(parse_registration(&q1, &vec![b'a'; MAX_CSR_BYTES + 1]).is_err());
        assert!(parse_registration(&q1, &[0xff, 0xfe]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_registration_never_panics(q in "[a-zA-Z=&%0-9._:-]{0,200}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_registration(&crate::server::form_decode(&q), &body);
        }
    }
}
