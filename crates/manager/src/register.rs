//! Host registration (the VDSM-REG role) and enrollment.
//!
//! Agent-initiated (`/ovirt-engine/services/host-register`):
//! - `command=get-version` -> `1`
//! - `command=get-pki-trust` -> the CA certificate (PEM); the agent checks its
//!   fingerprint (given by the admin, or shown for trust on first use)
//! - `command=register&name=&address=&port=&uniqueId=` with a CSR (PEM) as the body ->
//!   the host appears `pending_approval` (or is approved at once when it matches an
//!   auto-approve pattern)
//! - `command=get-certificate&uniqueId=` -> the signed certificate once approved
//!   (409 while pending)
//!
//! Manager-initiated (`POST /hosts` with an address and the agent's one-time enrollment
//! token as `root_password`): the Manager connects to the agent in enrollment mode, asks
//! for a CSR with the token, signs it and sends back the certificate and CA.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::info;

use crate::api::search::glob;
use crate::model::*;
use crate::state::Manager;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [("content-type", "text/plain")], body.into()).into_response()
}

fn valid_field(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
}

/// `/ovirt-engine/services/host-register`.
pub async fn handle(m: &Arc<Manager>, q: &HashMap<String, String>, body: &[u8]) -> Response {
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
            let (name, address, unique) = (arg("name"), arg("address"), arg("uniqueId"));
            let port: u16 = q
                .get("port")
                .or_else(|| q.get("vdsPort"))
                .and_then(|p| p.parse().ok())
                .unwrap_or(54321);
            if !valid_field(name, 255) || !valid_field(address, 255) || !valid_field(unique, 128) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "name, address and uniqueId are required (letters, digits, - . _ :)",
                );
            }
            let csr = String::from_utf8_lossy(body).to_string();
            if !csr.contains("BEGIN CERTIFICATE REQUEST") || csr.len() > 16 * 1024 {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a PEM certificate signing request is required as the body",
                );
            }
            match register(m, name, address, port, unique, csr).await {
                Ok(id) => text(StatusCode::OK, id),
                Err(e) => text(StatusCode::CONFLICT, e.to_string()),
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
            format!("unknown command {other:?}"),
        ),
    }
}

async fn register(
    m: &Arc<Manager>,
    name: &str,
    address: &str,
    port: u16,
    unique: &str,
    csr: String,
) -> anyhow::Result<String> {
    let _g = m.write_lock.lock().await;
    let existing = m
        .read()
        .hosts
        .values()
        .find(|h| h.unique_id == unique)
        .cloned();
    let id = match existing {
        Some(h) => {
            // A host registering again (new key): back to pending unless auto-approved.
            m.update(&h.id, |h: &mut Host| {
                h.csr = Some(csr);
                h.address = address.to_string();
                h.port = port;
                if h.status == "pending_approval" || h.certificate.is_none() {
                    h.status = "pending_approval".into();
                }
            })
            .await?;
            h.id
        }
        None => {
            if m.read().host_by_name(name).is_some() {
                anyhow::bail!("a host named {name} exists already");
            }
            let cluster = m
                .cfg
                .auto_approve_cluster
                .as_ref()
                .and_then(|n| m.read().cluster_by_name(n).map(|c| c.id.clone()))
                .or_else(|| m.read().clusters.keys().next().cloned())
                .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
            let h = new_host(name, address, port, unique, &cluster, Some(csr));
            m.insert(&h).await?;
            m.event(
                10000,
                "normal",
                format!("Host {name} ({address}) registered; it is pending approval."),
                Some(&h.id),
                None,
            )
            .await;
            h.id
        }
    };
    drop(_g);
    let auto = m
        .cfg
        .auto_approve
        .iter()
        .any(|p| glob(p, name) || glob(p, address));
    let status = m
        .read()
        .hosts
        .get(&id)
        .map(|h| h.status.clone())
        .unwrap_or_default();
    if auto && status == "pending_approval" {
        approve(m, &id, None).await?;
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
        domains_bad: Vec::new(),
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
    }
}

/// Approves a pending host: signs its CSR and starts monitoring it.
pub async fn approve(m: &Arc<Manager>, id: &str, cluster: Option<String>) -> anyhow::Result<()> {
    let _g = m.write_lock.lock().await;
    let mut h = m
        .read()
        .hosts
        .get(id)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("host {id} not found"))?;
    if h.status != "pending_approval" {
        anyhow::bail!(
            "Cannot approve Host {}: it is {}, not pending approval.",
            h.name,
            h.status
        );
    }
    if let Some(c) = cluster {
        if !m.read().clusters.contains_key(&c) {
            anyhow::bail!("cluster {c} not found");
        }
        h.cluster = c;
    }
    let csr = h
        .csr
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the host sent no certificate request"))?;
    let names = vec![h.address.clone(), h.name.clone()];
    let cert = m
        .pki
        .ca
        .sign_csr(&csr, &names, halyard_pki::Usage::Host, m.cfg.host_cert_days)?;
    let not_after = now_ms() + m.cfg.host_cert_days * 86_400_000;
    m.update(id, |x: &mut Host| {
        x.cluster = h.cluster.clone();
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
        format!("Host {} was approved.", h.name),
        Some(id),
        None,
    )
    .await;
    m.monitor(id);
    Ok(())
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
    let names = vec![address.to_string(), name.to_string()];
    let cert = m
        .pki
        .ca
        .sign_csr(&csr, &names, halyard_pki::Usage::Host, m.cfg.host_cert_days)?;
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
        None,
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
