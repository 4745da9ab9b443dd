//! Storage domain lifecycle: add (a host creates it on its connection), attach to a
//! data center (the first becomes the master: the pool is created), activate,
//! deactivate (maintenance), detach, remove (optionally formatting it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::info;

use crate::model::*;
use crate::state::Manager;
use crate::storage::{apply_domain_stats, check_storage_path, StorageOpError};

type Result<T> = std::result::Result<T, StorageOpError>;

/// What the API asks for when adding a domain.
#[derive(Debug, Clone)]
pub struct NewDomain {
    pub name: String,
    pub description: String,
    pub storage_type: String,
    pub address: String,
    pub path: String,
    pub vfs_type: String,
    pub mount_options: String,
    pub host: String,
}

fn failed(e: impl std::fmt::Display) -> StorageOpError {
    StorageOpError::Failed(e.to_string())
}

impl Manager {
    fn sd(&self, id: &str) -> Result<StorageDomain> {
        self.read()
            .storage_domains
            .get(id)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Storage domain {id} not found")))
    }

    /// Adds a data domain: the host connects the storage and creates the domain on it.
    pub async fn add_storage_domain(self: &Arc<Self>, n: NewDomain) -> Result<StorageDomain> {
        if !matches!(n.storage_type.as_str(), "localfs" | "posixfs" | "nfs") {
            return Err(StorageOpError::Bad(format!(
                "storage type {:?} is not supported (localfs, posixfs, nfs)",
                n.storage_type
            )));
        }
        check_storage_path(&n.path)?;
        if n.storage_type == "nfs"
            && (n.address.is_empty()
                || n.address
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || ".-:[]".contains(c))))
        {
            return Err(StorageOpError::Bad(
                "an NFS domain needs a server address (host name or IP)".into(),
            ));
        }
        if n.mount_options.chars().any(char::is_control)
            || n.vfs_type
                .chars()
                .any(|c| !c.is_ascii_alphanumeric() && c != '.')
        {
            return Err(StorageOpError::Bad(
                "vfs_type and mount_options must be plain text".into(),
            ));
        }
        let _g = self.write_lock.lock().await;
        let host = {
            let inv = self.read();
            if inv.storage_domains.values().any(|s| s.name == n.name) {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot add Storage. The name {:?} is already in use.",
                    n.name
                )));
            }
            let h = inv
                .hosts
                .values()
                .find(|h| h.id == n.host || h.name == n.host)
                .cloned()
                .ok_or_else(|| StorageOpError::Bad(format!("host {:?} does not exist", n.host)))?;
            let same = inv.storage_domains.values().find(|s| {
                s.storage_type == n.storage_type && s.address == n.address && s.path == n.path
            });
            if let Some(s) = same {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot add Storage. The path is already used by storage domain {}.",
                    s.name
                )));
            }
            h
        };
        if host.status != "up" {
            return Err(StorageOpError::Conflict(format!(
                "Cannot add Storage. Host {} is not up.",
                host.name
            )));
        }
        let c = self
            .host_client(&host.id)
            .await
            .ok_or_else(|| StorageOpError::Conflict("the host is not connected".into()))?;
        let mut sd = StorageDomain {
            id: uuid::Uuid::new_v4().to_string(),
            name: n.name,
            description: n.description,
            storage_type: n.storage_type,
            address: n.address,
            path: n.path,
            vfs_type: n.vfs_type,
            mount_options: n.mount_options,
            connection_id: uuid::Uuid::new_v4().to_string(),
            data_center: None,
            status: "unattached".into(),
            master: false,
            available: 0,
            used: 0,
        };
        self.connect_domain_server(&c, &sd).await?;
        let created = c
            .call_value(
                "StorageDomain.create",
                json!({"storagedomainID": sd.id, "domainType": sd.domain_type(), "typeArgs": sd.connection(),
                       "name": sd.name.chars().take(50).collect::<String>(), "domainClass": 1, "version": "5",
                       "blockSize": 512, "maxHosts": 250}),
            )
            .await;
        if let Err(e) = created {
            let _ = c
                .call_value(
                    "StoragePool.disconnectStorageServer",
                    json!({"storagepoolID": BLANK_TEMPLATE, "domainType": sd.domain_type(),
                           "connectionParams": [crate::storage::connection_params(&sd)]}),
                )
                .await;
            return Err(StorageOpError::Bad(format!(
                "Cannot add Storage Domain: the host could not create it: {e}"
            )));
        }
        if let Ok(st) = c
            .call_value("StorageDomain.getStats", json!({"storagedomainID": sd.id}))
            .await
        {
            apply_domain_stats(&mut sd, &st);
        }
        self.insert(&sd).await.map_err(failed)?;
        crate::api::kinds::companions(self, "StorageDomain", &sd.id)
            .await
            .map_err(failed)?;
        self.event(
            956,
            "normal",
            format!("Storage Domain {} was added by admin@internal.", sd.name),
            Some(&host.id),
            None,
        )
        .await;
        Ok(sd)
    }

    /// Attaches a domain to a data center; the first one becomes the master and the
    /// pool is created on it. Waits (bounded) for the SPM of a new pool.
    pub async fn attach_storage_domain(
        self: &Arc<Self>,
        dc: &str,
        sd_id: &str,
    ) -> Result<StorageDomain> {
        let first = {
            let _g = self.write_lock.lock().await;
            let sd = self.sd(sd_id)?;
            let d =
                self.read().data_centers.get(dc).cloned().ok_or_else(|| {
                    StorageOpError::NotFound(format!("Data center {dc} not found"))
                })?;
            if let Some(other) = &sd.data_center {
                let other_name = self
                    .read()
                    .data_centers
                    .get(other)
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                return Err(StorageOpError::Conflict(format!(
                    "Cannot attach Storage Domain {}: it is already attached to Data Center {other_name}.",
                    sd.name
                )));
            }
            if sd.storage_type == "localfs"
                && self
                    .read()
                    .storage_domains
                    .values()
                    .any(|s| s.data_center.as_deref() == Some(dc) && s.storage_type != "localfs")
            {
                return Err(StorageOpError::Conflict(
                    "Cannot attach a local storage domain next to shared ones.".into(),
                ));
            }
            if d.master_domain.is_none() {
                // Create the pool with this domain as master, on an up host of the DC.
                let hosts: Vec<Host> = self
                    .read()
                    .hosts_of_dc(dc)
                    .into_iter()
                    .filter(|h| h.status == "up")
                    .cloned()
                    .collect();
                let mut last = String::from("no host of the data center is up");
                let mut done = false;
                for h in hosts {
                    let Some(c) = self.host_client(&h.id).await else {
                        continue;
                    };
                    if let Err(e) = self.connect_domain_server(&c, &sd).await {
                        last = e.to_string();
                        continue;
                    }
                    match c
                        .call_value(
                            "StoragePool.create",
                            json!({"storagepoolID": dc, "name": d.name.chars().take(40).collect::<String>(),
                                   "masterSdUUID": sd.id, "masterVersion": 1, "domainList": [sd.id],
                                   "lockRenewalIntervalSec": 5, "leaseTimeSec": 60, "ioOpTimeoutSec": 10,
                                   "leaseRetries": 3}),
                        )
                        .await
                    {
                        Ok(_) => {
                            done = true;
                            break;
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                if !done {
                    return Err(StorageOpError::Conflict(format!(
                        "Cannot attach Storage Domain {}: the storage pool could not be created ({last}).",
                        sd.name
                    )));
                }
                self.update(&sd.id, |sd: &mut StorageDomain| {
                    sd.data_center = Some(dc.to_string());
                    sd.master = true;
                    sd.status = "active".into();
                })
                .await
                .map_err(failed)?;
                self.update(dc, |d: &mut DataCenter| {
                    d.master_domain = Some(sd.id.clone());
                    d.master_version = 1;
                    d.spm = None;
                    d.spm_lver = -1;
                    d.spm_prev_id = -1;
                    d.status = "contend".into();
                })
                .await
                .map_err(failed)?;
                true
            } else {
                self.spm_client(dc).await?;
                // Every connected host must reach it first.
                let hosts: Vec<Host> = self
                    .read()
                    .hosts_of_dc(dc)
                    .into_iter()
                    .filter(|h| self.pool_connected(dc, &h.id))
                    .cloned()
                    .collect();
                for h in &hosts {
                    if let Some(hc) = self.host_client(&h.id).await {
                        self.connect_domain_server(&hc, &sd).await.map_err(|e| {
                            StorageOpError::Conflict(format!(
                                "Cannot attach Storage Domain {}: host {} cannot reach it: {e}",
                                sd.name, h.name
                            ))
                        })?;
                    }
                }
                self.on_spm("StorageDomain.attach", &d, &sd.id).await?;
                self.on_spm("StorageDomain.activate", &d, &sd.id).await?;
                self.update(&sd.id, |sd: &mut StorageDomain| {
                    sd.data_center = Some(dc.to_string());
                    sd.status = "active".into();
                })
                .await
                .map_err(failed)?;
                // Hosts join its lockspace at their next pool connection.
                for h in &hosts {
                    self.pool_forget_host(&h.id);
                }
                false
            }
        };
        let sd = self.sd(sd_id)?;
        let dname = self
            .read()
            .data_centers
            .get(dc)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        self.event(
            962,
            "normal",
            format!(
                "Storage Domain {} was attached to Data Center {dname} by admin@internal{}.",
                sd.name,
                if first { " (master)" } else { "" }
            ),
            None,
            None,
        )
        .await;
        if first {
            // The pool monitor connects the hosts and elects the SPM; wait for it so
            // that the domain is usable when the call returns.
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if self
                    .read()
                    .data_centers
                    .get(dc)
                    .is_some_and(|d| d.spm.is_some())
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        info!(sd = %sd.name, dc = %dname, "storage domain attached");
        Ok(sd)
    }

    /// Activates a domain in maintenance.
    pub async fn activate_storage_domain(self: &Arc<Self>, dc: &str, sd_id: &str) -> Result<()> {
        let _g = self.write_lock.lock().await;
        let sd = self.attached(dc, sd_id)?;
        if sd.status == "active" {
            return Ok(());
        }
        let d = self
            .read()
            .data_centers
            .get(dc)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Data center {dc} not found")))?;
        if sd.master {
            // The whole pool comes back: hosts reconnect, an SPM is elected.
            self.update(dc, |d: &mut DataCenter| d.status = "contend".into())
                .await
                .map_err(failed)?;
        } else {
            self.on_spm("StorageDomain.activate", &d, &sd.id).await?;
        }
        self.update(sd_id, |sd: &mut StorageDomain| sd.status = "active".into())
            .await
            .map_err(failed)?;
        self.event(
            966,
            "normal",
            format!(
                "Storage Domain {} was activated by admin@internal.",
                sd.name
            ),
            None,
            None,
        )
        .await;
        Ok(())
    }

    /// A StorageDomain verb of the pool on the SPM (activate, deactivate, detach).
    async fn on_spm(&self, verb: &str, d: &DataCenter, sd: &str) -> Result<()> {
        let (_, c) = self.spm_client(&d.id).await?;
        c.call_value(
            verb,
            json!({"storagedomainID": sd, "storagepoolID": d.id,
                   "masterSdUUID": d.master_domain.clone().unwrap_or_default(),
                   "masterVersion": d.master_version, "force": false}),
        )
        .await
        .map_err(|e| StorageOpError::Conflict(format!("{verb}: {e}")))?;
        Ok(())
    }

    fn attached(&self, dc: &str, sd_id: &str) -> Result<StorageDomain> {
        let sd = self.sd(sd_id)?;
        if sd.data_center.as_deref() != Some(dc) {
            return Err(StorageOpError::NotFound(format!(
                "Storage domain {sd_id} is not attached to data center {dc}"
            )));
        }
        Ok(sd)
    }

    fn domain_in_use(&self, sd: &StorageDomain) -> Result<()> {
        let inv = self.read();
        let running = inv
            .disks
            .values()
            .filter(|d| d.storage_domain == sd.id)
            .any(|d| {
                d.status == "locked"
                    || d.vm
                        .as_ref()
                        .and_then(|v| inv.vms.get(v))
                        .is_some_and(|v| v.status != "down")
            });
        if running {
            return Err(StorageOpError::Conflict(format!(
                "Cannot deactivate Storage Domain {}: running VMs or locked disks use it.",
                sd.name
            )));
        }
        Ok(())
    }

    /// Maintenance. The master goes last: then the pool stops (spmStop, every host
    /// disconnects) and the data center is in maintenance.
    pub async fn deactivate_storage_domain(self: &Arc<Self>, dc: &str, sd_id: &str) -> Result<()> {
        let _g = self.write_lock.lock().await;
        let sd = self.attached(dc, sd_id)?;
        if sd.status == "maintenance" {
            return Ok(());
        }
        self.domain_in_use(&sd)?;
        let d = self
            .read()
            .data_centers
            .get(dc)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Data center {dc} not found")))?;
        if sd.master {
            let others_active = self.read().storage_domains.values().any(|s| {
                s.data_center.as_deref() == Some(dc) && s.id != sd.id && s.status == "active"
            });
            if others_active {
                return Err(StorageOpError::Conflict(format!(
                    "Cannot deactivate the master Storage Domain {} while other domains are active.",
                    sd.name
                )));
            }
            if !self.read().tasks.values().all(|t| t.data_center != dc) {
                return Err(StorageOpError::Conflict(
                    "Cannot deactivate the master Storage Domain while storage tasks run.".into(),
                ));
            }
            if let Some(spm) = d.spm.clone() {
                if let Some(c) = self.host_client(&spm).await {
                    c.call_value("StoragePool.spmStop", json!({"storagepoolID": dc}))
                        .await
                        .map_err(|e| StorageOpError::Failed(format!("spmStop: {e}")))?;
                }
            }
            self.update(dc, |d: &mut DataCenter| {
                d.spm = None;
                d.status = "maintenance".into();
            })
            .await
            .map_err(failed)?;
            let hosts: Vec<String> = self
                .read()
                .hosts_of_dc(dc)
                .iter()
                .map(|h| h.id.clone())
                .collect();
            for h in hosts {
                if let Some(c) = self.host_client(&h).await {
                    let _ = c
                        .call_value(
                            "StoragePool.disconnect",
                            json!({"storagepoolID": dc, "hostID": 0, "scsiKey": dc}),
                        )
                        .await;
                }
                self.pool_forget_host(&h);
            }
            self.set_spm_status(dc, None, None).await;
        } else {
            self.on_spm("StorageDomain.deactivate", &d, &sd.id).await?;
        }
        self.update(sd_id, |sd: &mut StorageDomain| {
            sd.status = "maintenance".into()
        })
        .await
        .map_err(failed)?;
        self.event(
            968,
            "normal",
            format!(
                "Storage Domain {} was deactivated and has moved to 'Maintenance'.",
                sd.name
            ),
            None,
            None,
        )
        .await;
        Ok(())
    }

    /// Detaches a domain in maintenance. Disks on it must be removed first.
    pub async fn detach_storage_domain(self: &Arc<Self>, dc: &str, sd_id: &str) -> Result<()> {
        let _g = self.write_lock.lock().await;
        let sd = self.attached(dc, sd_id)?;
        if sd.status != "maintenance" {
            return Err(StorageOpError::Conflict(format!(
                "Cannot detach Storage Domain {}: put it into maintenance first.",
                sd.name
            )));
        }
        if self
            .read()
            .disks
            .values()
            .any(|d| d.storage_domain == sd.id)
        {
            return Err(StorageOpError::Conflict(format!(
                "Cannot detach Storage Domain {}: it still holds disks.",
                sd.name
            )));
        }
        let d = self
            .read()
            .data_centers
            .get(dc)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("Data center {dc} not found")))?;
        if sd.master {
            // The pool ends with its master (it was stopped at deactivation); the
            // domain keeps the pool's id on storage until it is formatted or attached
            // again.
            self.update(dc, |d: &mut DataCenter| {
                d.master_domain = None;
                d.spm = None;
                d.status = "uninitialized".into();
            })
            .await
            .map_err(failed)?;
        } else {
            self.on_spm("StorageDomain.detach", &d, &sd.id).await?;
        }
        self.update(sd_id, |sd: &mut StorageDomain| {
            sd.data_center = None;
            sd.master = false;
            sd.status = "unattached".into();
        })
        .await
        .map_err(failed)?;
        self.event(
            964,
            "normal",
            format!("Storage Domain {} was detached by admin@internal.", sd.name),
            None,
            None,
        )
        .await;
        Ok(())
    }

    /// Removes an unattached domain; with `format`, the host given removes its data.
    pub async fn remove_storage_domain(
        self: &Arc<Self>,
        sd_id: &str,
        host: Option<&str>,
        format: bool,
    ) -> Result<()> {
        let _g = self.write_lock.lock().await;
        let sd = self.sd(sd_id)?;
        if sd.data_center.is_some() {
            return Err(StorageOpError::Conflict(format!(
                "Cannot remove Storage Domain {}: detach it first.",
                sd.name
            )));
        }
        if format {
            let host = host.ok_or_else(|| {
                StorageOpError::Bad("format=true needs the host that formats it (host=name)".into())
            })?;
            let h = self
                .read()
                .hosts
                .values()
                .find(|h| h.id == host || h.name == host)
                .cloned()
                .ok_or_else(|| StorageOpError::Bad(format!("host {host:?} does not exist")))?;
            let c = self
                .host_client(&h.id)
                .await
                .ok_or_else(|| StorageOpError::Conflict("the host is not connected".into()))?;
            self.connect_domain_server(&c, &sd).await?;
            c.call_value(
                "StorageDomain.format",
                json!({"storagedomainID": sd.id, "autoDetach": true}),
            )
            .await
            .map_err(|e| StorageOpError::Conflict(format!("StorageDomain.format: {e}")))?;
            let _ = c
                .call_value(
                    "StoragePool.disconnectStorageServer",
                    json!({"storagepoolID": BLANK_TEMPLATE, "domainType": sd.domain_type(),
                           "connectionParams": [crate::storage::connection_params(&sd)]}),
                )
                .await;
        }
        self.remove::<StorageDomain>(sd_id).await.map_err(failed)?;
        self.event(
            960,
            "normal",
            format!("Storage Domain {} was removed by admin@internal.", sd.name),
            None,
            None,
        )
        .await;
        Ok(())
    }
}
