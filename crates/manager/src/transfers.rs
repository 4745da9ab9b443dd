//! Image transfers (oVirt's TransferDiskImageCommand): a client uploads into or
//! downloads a disk over HTTPS, with the unmodified ovirt-imageio client.
//!
//! Adding a transfer locks the disk and answers at once (phase `initializing`). In the
//! background the Manager picks a host of the disk's data center, has it prepare the
//! volume (`Image.prepare`), start qemu-nbd for guest data (`NBD.start_server`, format
//! raw) or serve the volume file as it is (format cow), and add a ticket
//! (`Host.add_image_ticket`); it adds the same ticket to its own proxy, naming the
//! host's URL. Then the phase is `transferring`, with `transfer_url` (the host's data
//! server, port 54322) and `proxy_url` (the Manager's proxy, port 54323).
//!
//! While it runs, the Manager polls the host's ticket (`Host.get_image_ticket`): the
//! bytes transferred, and the time without a request. After `inactivity_timeout`
//! seconds of that, the timeout policy acts: `legacy`/`pause` pause it
//! (`paused_system`, resumable), `cancel` cancels it. `finalize` removes the tickets,
//! stops qemu-nbd and, for an upload, checks what the client wrote
//! (`Volume.verify_untrusted`) before the disk is usable again: `finished_success`, or
//! `finished_failure` with the disk removed. `cancel` ends an upload with its disk
//! removed (as oVirt: the transfer owns the disk), a download with the disk untouched.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::*;
use crate::state::Manager;
use crate::storage::StorageOpError;

type Result<T> = std::result::Result<T, StorageOpError>;

/// Seconds a ticket lives without being extended (the Manager extends it while the
/// transfer runs).
pub const TICKET_TIMEOUT: u64 = 300;
/// The most a transfer may wait for a client (`inactivity_timeout`).
pub const MAX_INACTIVITY_TIMEOUT: u64 = 86_400;

/// A transfer as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub disk: String,
    pub direction: String,
    pub format: Option<String>,
    pub host: Option<String>,
    pub inactivity_timeout: Option<u64>,
    pub timeout_policy: String,
    pub shallow: bool,
    /// The host name the client reached the Manager at (for proxy_url).
    pub proxy_host: String,
}

/// Phases in which the transfer's tickets exist (or are being made).
fn live(phase: &str) -> bool {
    matches!(phase, "initializing" | "transferring" | "resuming")
}

/// Final phases.
pub fn finished(phase: &str) -> bool {
    matches!(
        phase,
        "finished_success" | "finished_failure" | "finished_cleanup" | "cancelled"
    )
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// A file name for downloads (the ticket's Content-Disposition).
fn file_name(disk: &Disk, format: &str) -> String {
    let base: String = disk
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    let base = if base.is_empty() {
        disk.id.clone()
    } else {
        base
    };
    format!("{base}.{}", if format == "cow" { "qcow2" } else { "raw" })
}

impl Manager {
    fn transfer(&self, id: &str) -> Result<ImageTransfer> {
        self.read()
            .image_transfers
            .get(id)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Image transfer {id} not found")))
    }

    /// Adds a transfer; it initialises in the background.
    pub async fn add_transfer(self: &Arc<Self>, n: NewTransfer) -> Result<ImageTransfer> {
        if !matches!(n.direction.as_str(), "upload" | "download") {
            return Err(StorageOpError::Bad(format!(
                "direction {:?}: upload or download",
                n.direction
            )));
        }
        if !matches!(n.timeout_policy.as_str(), "legacy" | "pause" | "cancel") {
            return Err(StorageOpError::Bad(format!(
                "timeout_policy {:?}: legacy, pause or cancel",
                n.timeout_policy
            )));
        }
        if n.shallow {
            return Err(StorageOpError::Bad(
                "shallow transfers (one volume of a chain) are not supported yet: Halyard transfers a disk's whole chain".into(),
            ));
        }
        let inactivity = n
            .inactivity_timeout
            .unwrap_or(self.cfg.imageio.inactivity_timeout_secs);
        if inactivity == 0 || inactivity > MAX_INACTIVITY_TIMEOUT {
            return Err(StorageOpError::Bad(format!(
                "inactivity_timeout must be 1..{MAX_INACTIVITY_TIMEOUT} seconds"
            )));
        }
        if !ident_ok(&n.proxy_host) {
            return Err(StorageOpError::Bad("bad Host header".into()));
        }
        let _g = self.write_lock.lock().await;
        let (d, host) = {
            let inv = self.read();
            let d =
                inv.disks.get(&n.disk).cloned().ok_or_else(|| {
                    StorageOpError::NotFound(format!("Disk {} not found", n.disk))
                })?;
            let running = inv
                .image_transfers
                .values()
                .filter(|t| !finished(&t.phase))
                .count();
            if running >= self.cfg.imageio.max_transfers {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot transfer Virtual Disk: {running} transfers run already (at most {}).",
                    self.cfg.imageio.max_transfers
                )));
            }
            if d.status != "ok" {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot transfer Virtual Disk: The following disks are locked: {}. Please try again in a few minutes.",
                    d.name
                )));
            }
            if n.direction == "upload" && d.template.is_some() {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot transfer Virtual Disk: disk {} is a template's disk; uploads go to VM or floating disks.",
                    d.name
                )));
            }
            if let Some(v) = d.vm.as_ref().and_then(|v| inv.vms.get(v)) {
                if v.status != "down" {
                    return Err(StorageOpError::Conflict(format!(
                        "Cannot transfer Virtual Disk: Disk {} is attached to VM {}, which is {}. The VM must be down.",
                        d.name, v.name, v.status
                    )));
                }
            }
            let dc = inv
                .storage_domains
                .get(&d.storage_domain)
                .and_then(|s| s.data_center.clone())
                .ok_or_else(|| {
                    StorageOpError::Conflict(
                        "Cannot transfer Virtual Disk: its storage domain is not in a data center."
                            .into(),
                    )
                })?;
            let usable = |h: &Host| {
                h.status == "up"
                    && h.imageio_port != 0
                    && inv.dc_of_cluster(&h.cluster) == Some(dc.as_str())
                    && self.pool_connected(&dc, &h.id)
            };
            let host = match &n.host {
                Some(x) => {
                    let h = inv
                        .hosts
                        .values()
                        .find(|h| &h.id == x || &h.name == x)
                        .ok_or_else(|| StorageOpError::NotFound(format!("Host {x} not found")))?;
                    if !usable(h) {
                        return Err(StorageOpError::Conflict(format!(
                            "Cannot transfer Virtual Disk: host {} is not up in the disk's data center, or serves no image transfers.",
                            h.name
                        )));
                    }
                    h.id.clone()
                }
                None => inv
                    .hosts
                    .values()
                    .find(|h| usable(h))
                    .map(|h| h.id.clone())
                    .ok_or_else(|| {
                        StorageOpError::Conflict(
                            "Cannot transfer Virtual Disk: no host is up in the disk's data center to serve it."
                                .into(),
                        )
                    })?,
            };
            (d, host)
        };
        let format = n.format.clone().unwrap_or_else(|| d.format.clone());
        match format.as_str() {
            "raw" => {}
            "cow" if d.format == "cow" && d.volumes.len() == 1 && d.template_base.is_none() => {}
            "cow" => {
                return Err(StorageOpError::Bad(format!(
                    "format cow transfers a disk's qcow2 volume as it is: disk {} is {} with {} volume(s); use format raw (guest data, converted as imageio does)",
                    d.name,
                    d.format,
                    d.volumes.len() + usize::from(d.template_base.is_some())
                )))
            }
            f => return Err(StorageOpError::Bad(format!("format {f:?}: raw or cow"))),
        }
        let t = ImageTransfer {
            id: uuid::Uuid::new_v4().to_string(),
            disk: d.id.clone(),
            direction: n.direction.clone(),
            format: format.clone(),
            phase: "initializing".into(),
            host: Some(host),
            ticket: String::new(),
            transfer_url: String::new(),
            proxy_url: String::new(),
            proxy_host: n.proxy_host.clone(),
            inactivity_timeout: inactivity,
            timeout_policy: n.timeout_policy.clone(),
            transferred: 0,
            active: false,
            shallow: false,
            nbd: format == "raw",
            size: 0,
            creation_time: now_ms(),
            end_time: None,
            error: String::new(),
        };
        self.update(&d.id, |x: &mut Disk| x.status = "locked".into())
            .await
            .map_err(|e| StorageOpError::Failed(e.to_string()))?;
        if let Err(e) = self.insert(&t).await {
            let _ = self
                .update(&d.id, |x: &mut Disk| x.status = "ok".into())
                .await;
            return Err(StorageOpError::Failed(e.to_string()));
        }
        self.event(
            1031,
            "normal",
            format!(
                "Image {} transfer of disk {} was initiated by admin@internal.",
                if n.direction == "upload" {
                    "Upload"
                } else {
                    "Download"
                },
                d.name
            ),
            t.host.as_deref(),
            d.vm.as_deref(),
        )
        .await;
        let me = self.clone();
        let id = t.id.clone();
        tokio::spawn(async move {
            if let Err(e) = me.open_tickets(&id, false).await {
                warn!(transfer = %id, error = %e, "image transfer could not start");
                me.fail_transfer(&id, &e.to_string()).await;
            }
        });
        Ok(t)
    }

    /// Makes the transfer's tickets (and qemu-nbd), at the start or on resume.
    async fn open_tickets(self: &Arc<Self>, id: &str, resume: bool) -> Result<()> {
        let t = self.transfer(id)?;
        let d = self.disk_of(&t)?;
        let host_id = t.host.clone().unwrap_or_default();
        let (address, port) = {
            let inv = self.read();
            let h = inv
                .hosts
                .get(&host_id)
                .ok_or_else(|| StorageOpError::NotFound("the transfer's host is gone".into()))?;
            (h.address.clone(), h.imageio_port)
        };
        let c = self
            .host_client(&host_id)
            .await
            .ok_or_else(|| StorageOpError::Failed("the transfer's host is not connected".into()))?;
        let dc = self.dc_of_domain(&d.storage_domain);
        let vol = d.leaf().to_string();
        let call = |m: &'static str, p: Value| {
            let c = c.clone();
            async move {
                c.call_value(m, p)
                    .await
                    .map_err(|e| StorageOpError::Failed(format!("{m}: {e}")))
            }
        };
        let prepared = call(
            "Image.prepare",
            json!({"storagepoolID": dc, "storagedomainID": d.storage_domain, "imageID": d.id,
                   "volumeID": vol, "allowIllegal": false}),
        )
        .await?;
        let path = prepared["path"]
            .as_str()
            .ok_or_else(|| StorageOpError::Failed("Image.prepare gave no path".into()))?
            .to_string();
        let download = t.direction == "download";
        let url = if t.nbd {
            if resume {
                let _ = call("NBD.stop_server", json!({"server_id": t.id})).await;
            }
            let u = call(
                "NBD.start_server",
                json!({"server_id": t.id, "config": {"sd_id": d.storage_domain, "img_id": d.id,
                       "vol_id": vol, "readonly": download, "discard": true,
                       "detect_zeroes": !download, "backing_chain": true}}),
            )
            .await?;
            u.as_str()
                .ok_or_else(|| StorageOpError::Failed("NBD.start_server gave no URL".into()))?
                .to_string()
        } else {
            format!("file://{path}")
        };
        let size = if t.nbd {
            d.provisioned_size
        } else if download {
            let info = call(
                "Volume.getInfo",
                json!({"storagepoolID": dc, "storagedomainID": d.storage_domain,
                       "imageID": d.id, "volumeID": vol}),
            )
            .await?;
            info["apparentsize"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(d.provisioned_size)
        } else {
            // A qcow2 file holding a full disk: its data, L1/L2 tables and refcounts.
            d.provisioned_size + d.provisioned_size / 64 + (16 << 20)
        };
        let ticket = uuid::Uuid::new_v4().to_string();
        let ops = vec![if download { "read" } else { "write" }.to_string()];
        let host_ticket = json!({
            "uuid": ticket, "size": size, "url": url, "ops": ops, "timeout": TICKET_TIMEOUT,
            "inactivity_timeout": t.inactivity_timeout, "transfer_id": t.id,
            "sparse": d.sparse, "dirty": false,
            "filename": download.then(|| file_name(&d, &t.format)),
        });
        call("Host.add_image_ticket", json!({"ticket": host_ticket})).await?;
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address
        };
        let transfer_url = format!("https://{host}:{port}/images/{ticket}");
        let proxy = halyard_imageio::TicketSpec {
            uuid: ticket.clone(),
            size,
            url: transfer_url.clone(),
            ops,
            timeout: TICKET_TIMEOUT,
            inactivity_timeout: Some(t.inactivity_timeout),
            transfer_id: Some(t.id.clone()),
            filename: None,
            sparse: d.sparse,
            dirty: false,
        };
        if let Err(e) = self.imageio.tickets().add(proxy) {
            let _ = call("Host.remove_image_ticket", json!({"uuid": ticket})).await;
            return Err(StorageOpError::Failed(format!("proxy ticket: {e}")));
        }
        let proxy_port = self.imageio_port();
        let proxy_url = format!("https://{}:{proxy_port}/images/{ticket}", t.proxy_host);
        let ok = self
            .update(id, |x: &mut ImageTransfer| {
                if !live(&x.phase) {
                    return false;
                }
                x.phase = "transferring".into();
                x.ticket = ticket.clone();
                x.transfer_url = transfer_url.clone();
                x.proxy_url = proxy_url.clone();
                x.size = size;
                true
            })
            .await
            .map_err(|e| StorageOpError::Failed(e.to_string()))?;
        if ok != Some(true) {
            // Cancelled meanwhile: take the new tickets back.
            let mut made = t.clone();
            made.ticket = ticket.clone();
            self.close_tickets(&made, false).await;
        }
        info!(transfer = %id, direction = %t.direction, format = %t.format, "image transfer ready");
        Ok(())
    }

    fn disk_of(&self, t: &ImageTransfer) -> Result<Disk> {
        self.read()
            .disks
            .get(&t.disk)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Disk {} not found", t.disk)))
    }

    /// The proxy's port (the configured one, or the one bound when it is 0).
    pub fn imageio_port(&self) -> u16 {
        match self.cfg.imageio.port {
            0 => std::fs::read_to_string(self.cfg.data_dir.join("imageio.addr"))
                .ok()
                .and_then(|s| s.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
                .unwrap_or(0),
            p => p,
        }
    }

    /// Removes the transfer's tickets (host and proxy) and its NBD server; with
    /// `keep_nbd`, qemu-nbd stays (a pause).
    async fn close_tickets(&self, t: &ImageTransfer, keep_nbd: bool) {
        if !t.ticket.is_empty() {
            self.imageio.tickets().remove(&t.ticket);
        }
        let Some(c) = self.host_client(t.host.as_deref().unwrap_or("")).await else {
            return;
        };
        if !t.ticket.is_empty() {
            if let Err(e) = c
                .call_value("Host.remove_image_ticket", json!({"uuid": t.ticket}))
                .await
            {
                warn!(transfer = %t.id, error = %e, "removing the host's ticket");
            }
        }
        if t.nbd && !keep_nbd {
            if let Err(e) = c
                .call_value("NBD.stop_server", json!({"server_id": t.id}))
                .await
            {
                warn!(transfer = %t.id, error = %e, "stopping the NBD server");
            }
        }
    }

    async fn set_phase(&self, id: &str, phase: &str, error: Option<&str>) {
        let r = self
            .update(id, |x: &mut ImageTransfer| {
                x.phase = phase.to_string();
                x.active = false;
                if let Some(e) = error {
                    x.error = e.chars().take(1024).collect();
                }
                if finished(phase) {
                    x.end_time = Some(now_ms());
                }
            })
            .await;
        if let Err(e) = r {
            warn!(transfer = id, error = %e, "cannot store the transfer's phase");
        }
    }

    /// The transfer failed: tickets go, the disk is usable again as it was (download),
    /// or removed (upload: its content is unknown).
    async fn fail_transfer(self: &Arc<Self>, id: &str, why: &str) {
        let Ok(t) = self.transfer(id) else { return };
        self.set_phase(id, "finalizing_failure", Some(why)).await;
        self.close_tickets(&t, false).await;
        self.release_disk(&t, t.direction == "upload").await;
        self.set_phase(id, "finished_failure", None).await;
        let name = self
            .disk_of(&t)
            .map(|d| d.name)
            .unwrap_or_else(|_| t.disk.clone());
        self.event(
            1034,
            "error",
            format!(
                "Image {} transfer of disk {name} failed: {why}",
                dir_word(&t)
            ),
            t.host.as_deref(),
            None,
        )
        .await;
    }

    /// Unlocks the disk, or removes it (`remove`: an upload that did not end well).
    async fn release_disk(self: &Arc<Self>, t: &ImageTransfer, remove: bool) {
        let r = self
            .update(&t.disk, |x: &mut Disk| {
                x.status = if remove { "illegal" } else { "ok" }.into()
            })
            .await;
        if let Err(e) = r {
            warn!(transfer = %t.id, error = %e, "cannot store the disk's status");
        }
        if remove {
            // It leaves as any disk does (an SPM task deletes its image); an illegal
            // disk is not locked.
            if let Err(e) = self.remove_disk(&t.disk).await {
                warn!(transfer = %t.id, error = %e, "cannot remove the transfer's disk");
            }
        }
    }

    /// The actions of /imagetransfers/{id}: pause, resume, cancel, finalize, extend.
    pub async fn transfer_action(self: &Arc<Self>, id: &str, action: &str) -> Result<()> {
        let t = self.transfer(id)?;
        let conflict = |what: &str| {
            Err(StorageOpError::Conflict(format!(
                "Cannot {what} the image transfer: it is {}.",
                t.phase
            )))
        };
        match action {
            "finalize" => {
                if !matches!(
                    t.phase.as_str(),
                    "transferring" | "paused_user" | "paused_system"
                ) {
                    return conflict("finalize");
                }
                self.set_phase(id, "finalizing_success", None).await;
                let me = self.clone();
                let id = id.to_string();
                tokio::spawn(async move { me.finalize(&id).await });
            }
            "cancel" => {
                if finished(&t.phase)
                    || t.phase.starts_with("finalizing")
                    || t.phase.starts_with("cancelled")
                {
                    return conflict("cancel");
                }
                self.set_phase(id, "cancelled_user", None).await;
                let me = self.clone();
                let id = id.to_string();
                tokio::spawn(async move { me.cancel(&id, "cancelled_user").await });
            }
            "pause" => {
                if t.phase != "transferring" {
                    return conflict("pause");
                }
                self.set_phase(id, "paused_user", None).await;
                self.close_tickets(&t, true).await;
            }
            "resume" => {
                if !matches!(t.phase.as_str(), "paused_user" | "paused_system") {
                    return conflict("resume");
                }
                self.set_phase(id, "resuming", None).await;
                let me = self.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = me.open_tickets(&id, true).await {
                        warn!(transfer = %id, error = %e, "cannot resume the image transfer");
                        me.set_phase(&id, "paused_system", Some(&e.to_string()))
                            .await;
                    }
                });
            }
            "extend" => {
                if t.phase != "transferring" {
                    return conflict("extend");
                }
                self.extend_tickets(&t).await?;
            }
            other => {
                return Err(StorageOpError::NotFound(format!(
                    "No action {other} on image transfers"
                )))
            }
        }
        Ok(())
    }

    async fn extend_tickets(&self, t: &ImageTransfer) -> Result<()> {
        let _ = self.imageio.tickets().extend(&t.ticket, TICKET_TIMEOUT);
        let c = self
            .host_client(t.host.as_deref().unwrap_or(""))
            .await
            .ok_or_else(|| StorageOpError::Failed("the transfer's host is not connected".into()))?;
        c.call_value(
            "Host.extend_image_ticket",
            json!({"uuid": t.ticket, "timeout": TICKET_TIMEOUT}),
        )
        .await
        .map_err(|e| StorageOpError::Failed(format!("Host.extend_image_ticket: {e}")))?;
        Ok(())
    }

    async fn finalize(self: &Arc<Self>, id: &str) {
        let Ok(t) = self.transfer(id) else { return };
        self.close_tickets(&t, false).await;
        if t.direction == "download" {
            self.release_disk(&t, false).await;
            self.set_phase(id, "finished_success", None).await;
            self.transfer_done_event(&t).await;
            return;
        }
        let verified = match (
            self.disk_of(&t),
            self.host_client(t.host.as_deref().unwrap_or("")).await,
        ) {
            (Ok(d), Some(c)) => {
                let dc = self.dc_of_domain(&d.storage_domain);
                c.call_value(
                    "Volume.verify_untrusted",
                    json!({"storagepoolID": dc, "storagedomainID": d.storage_domain, "imageID": d.id,
                           "volumeID": d.leaf(), "content": d.content_type}),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            (Err(e), _) => Err(e.to_string()),
            (_, None) => Err("the transfer's host is not connected".into()),
        };
        match verified {
            Ok(()) => {
                self.release_disk(&t, false).await;
                self.refresh_disk_size(&t).await;
                self.set_phase(id, "finished_success", None).await;
                self.transfer_done_event(&t).await;
            }
            Err(e) => {
                warn!(transfer = %id, error = %e, "the uploaded image was refused");
                self.fail_transfer(id, &format!("the uploaded image was refused: {e}"))
                    .await;
            }
        }
    }

    async fn refresh_disk_size(&self, t: &ImageTransfer) {
        let Ok(d) = self.disk_of(t) else { return };
        let Some(c) = self.host_client(t.host.as_deref().unwrap_or("")).await else {
            return;
        };
        let dc = self.dc_of_domain(&d.storage_domain);
        if let Ok(info) = c
            .call_value(
                "Volume.getInfo",
                json!({"storagepoolID": dc, "storagedomainID": d.storage_domain,
                       "imageID": d.id, "volumeID": d.leaf()}),
            )
            .await
        {
            if let Some(n) = info["truesize"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                let _ = self.update(&d.id, |x: &mut Disk| x.actual_size = n).await;
            }
        }
    }

    async fn transfer_done_event(&self, t: &ImageTransfer) {
        let name = self
            .disk_of(t)
            .map(|d| d.name)
            .unwrap_or_else(|_| t.disk.clone());
        self.event(
            1032,
            "normal",
            format!("Image {} transfer of disk {name} succeeded.", dir_word(t)),
            t.host.as_deref(),
            None,
        )
        .await;
    }

    async fn cancel(self: &Arc<Self>, id: &str, phase: &str) {
        let Ok(t) = self.transfer(id) else { return };
        self.close_tickets(&t, false).await;
        self.set_phase(id, "finalizing_cleanup", None).await;
        self.release_disk(&t, t.direction == "upload").await;
        self.set_phase(id, "finished_cleanup", None).await;
        let name = self
            .disk_of(&t)
            .map(|d| d.name)
            .unwrap_or_else(|_| t.disk.clone());
        self.event(
            1033,
            "normal",
            format!(
                "Image {} transfer of disk {name} was cancelled{}.",
                dir_word(&t),
                if phase == "cancelled_system" {
                    " by the system (no client activity)"
                } else {
                    ""
                }
            ),
            t.host.as_deref(),
            None,
        )
        .await;
    }

    /// One pass over the transfers: progress, inactivity, extension, forgetting.
    pub async fn poll_transfers(self: &Arc<Self>) {
        let now = now_ms();
        let keep_ms = (self.cfg.imageio.keep_finished_secs * 1000) as i64;
        let ts: Vec<ImageTransfer> = self.read().image_transfers.values().cloned().collect();
        for t in ts {
            if finished(&t.phase) {
                if t.end_time.is_some_and(|e| now - e > keep_ms) {
                    let _ = self.remove_only::<ImageTransfer>(&t.id).await;
                }
                continue;
            }
            if t.phase != "transferring" {
                continue;
            }
            let Some(c) = self.host_client(t.host.as_deref().unwrap_or("")).await else {
                continue;
            };
            let info = match c
                .call_value("Host.get_image_ticket", json!({"uuid": t.ticket}))
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    warn!(transfer = %t.id, error = %e, "reading the host's ticket");
                    if e.to_string().contains("No such ticket") {
                        // The agent restarted (tickets live in its memory): paused,
                        // resumable with new tickets.
                        self.set_phase(&t.id, "paused_system", Some("the host lost the ticket"))
                            .await;
                        self.close_tickets(&t, true).await;
                    }
                    continue;
                }
            };
            let host_idle = info["idle_time"].as_u64().unwrap_or(0);
            let proxy = self.imageio.tickets().info(&t.ticket).ok();
            let idle = proxy
                .as_ref()
                .map(|p| p.idle_time.min(host_idle))
                .unwrap_or(host_idle);
            let active = info["active"].as_bool().unwrap_or(false)
                || proxy.as_ref().is_some_and(|p| p.active);
            let transferred = info["transferred"]
                .as_u64()
                .unwrap_or(0)
                .max(proxy.as_ref().and_then(|p| p.transferred).unwrap_or(0));
            self.update_memory(&t.id, |x: &mut ImageTransfer| {
                x.transferred = transferred;
                x.active = active;
            })
            .await;
            if !active && idle >= t.inactivity_timeout {
                info!(transfer = %t.id, idle, policy = %t.timeout_policy, "image transfer inactive");
                if t.timeout_policy == "cancel" {
                    self.set_phase(&t.id, "cancelled_system", None).await;
                    self.cancel(&t.id, "cancelled_system").await;
                } else {
                    self.set_phase(&t.id, "paused_system", Some("no client activity"))
                        .await;
                    self.close_tickets(&t, true).await;
                    self.event(
                        1035,
                        "warning",
                        format!(
                            "Image transfer {} was paused by the system: no client activity for {idle} s.",
                            t.id
                        ),
                        t.host.as_deref(),
                        None,
                    )
                    .await;
                }
                continue;
            }
            if info["expires"].as_u64().unwrap_or(0) < TICKET_TIMEOUT / 2 {
                if let Err(e) = self.extend_tickets(&t).await {
                    warn!(transfer = %t.id, error = %e, "extending the tickets");
                }
            }
        }
    }

    /// After a restart: transfers that were running have lost their proxy tickets;
    /// they are paused (resumable), as oVirt pauses them.
    pub async fn pause_interrupted_transfers(self: &Arc<Self>) {
        let ts: Vec<ImageTransfer> = self
            .read()
            .image_transfers
            .values()
            .filter(|t| !finished(&t.phase) && !t.phase.starts_with("paused"))
            .cloned()
            .collect();
        for t in ts {
            if t.phase.starts_with("finalizing") || t.phase.starts_with("cancelled") {
                // It was ending: end it as a failure, nothing half-checked is kept.
                self.fail_transfer(&t.id, "the Manager restarted while it ended")
                    .await;
            } else {
                self.set_phase(&t.id, "paused_system", Some("the Manager restarted"))
                    .await;
                self.close_tickets(&t, true).await;
            }
        }
    }

    /// Polls transfers until the process ends.
    pub async fn watch_transfers(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.imageio.poll_secs.max(1));
        loop {
            tokio::time::sleep(every).await;
            self.poll_transfers().await;
        }
    }
}

fn dir_word(t: &ImageTransfer) -> &'static str {
    if t.direction == "upload" {
        "Upload"
    } else {
        "Download"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_file_names_are_safe() {
        let d = Disk {
            id: "d1".into(),
            name: "my disk;\"x/../y".into(),
            description: String::new(),
            provisioned_size: 1,
            actual_size: 0,
            format: "cow".into(),
            sparse: true,
            storage_domain: String::new(),
            status: "ok".into(),
            volumes: vec!["v".into()],
            template_base: None,
            vm: None,
            bootable: false,
            interface: "virtio".into(),
            template: None,
            quota: None,
            creation_time: 0,
            inactive: false,
            content_type: "data".into(),
        };
        assert_eq!(file_name(&d, "cow"), "my_disk__x_.._y.qcow2");
        assert_eq!(file_name(&d, "raw"), "my_disk__x_.._y.raw");
        assert!(!ident_ok("host\r\nx"));
        assert!(ident_ok("[::1]"));
        assert!(ident_ok("engine.example.com"));
    }
}
