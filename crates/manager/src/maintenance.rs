//! Host maintenance as the engine does it (MaintenanceNumberOfVdssCommand,
//! MaintenanceVdsCommand, HostMonitoring.moveVDSToMaintenanceIfNeeded): the host goes
//! `preparing_for_maintenance`; if it is the SPM the role is stopped there first (a
//! new SPM is elected among the up hosts); every running VM is migrated away (the
//! scheduler chooses, never this host); once none runs there the host is in
//! `maintenance`. A VM that cannot move keeps the host preparing, with an event naming
//! it, and is tried again every [`RETRY_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use crate::model::{DataCenter, Host};
use crate::state::Manager;
use crate::vms::VmError;

/// How often a VM that did not leave a host preparing for maintenance is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(30);

impl Manager {
    /// `POST /hosts/{id}/deactivate`.
    pub async fn host_deactivate(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        let c =
            |m: String| VmError::Conflict(format!("Cannot switch Host to Maintenance mode. {m}"));
        let (h, vms, dc) = {
            let inv = self.read();
            let h = inv
                .hosts
                .get(id)
                .cloned()
                .ok_or_else(|| VmError::NotFound(format!("Host {id} not found")))?;
            let vms: Vec<crate::model::Vm> = inv
                .vms_on(id)
                .filter(|v| v.status != "down")
                .cloned()
                .collect();
            let dc = inv.dc_of_cluster(&h.cluster).map(str::to_string);
            (h, vms, dc)
        };
        match h.status.as_str() {
            "maintenance" => return Err(c("Host is already in Maintenance mode.".into())),
            "preparing_for_maintenance" => return Ok(()),
            "non_responsive" | "connecting" if !vms.is_empty() => {
                return Err(c(format!(
                    "Host {} is not responding and runs VMs: their state is not known.",
                    h.name
                )))
            }
            _ => {}
        }
        let pinned: Vec<&str> = vms
            .iter()
            .filter(|v| v.placement.affinity == "pinned")
            .map(|v| v.name.as_str())
            .collect();
        if !pinned.is_empty() {
            return Err(c(format!(
                "One or more running VMs are indicated as non-migratable. The non-migratable VMs are: {}.",
                pinned.join(", ")
            )));
        }
        if !vms.is_empty() {
            let other_up = self
                .read()
                .hosts
                .values()
                .any(|o| o.id != id && o.cluster == h.cluster && o.status == "up");
            if !other_up {
                return Err(c(format!(
                    "There is no other host in the cluster of Host {} to migrate its VMs to.",
                    h.name
                )));
            }
        }
        if vms.is_empty() {
            self.stop_spm_on(id, dc.as_deref(), &h.name).await?;
            self.set_host_status(id, "maintenance").await;
            self.maintenance_done_event(id, &h.name).await;
            return Ok(());
        }
        self.set_host_status(id, "preparing_for_maintenance").await;
        if let Err(e) = self.stop_spm_on(id, dc.as_deref(), &h.name).await {
            self.set_host_status(id, &h.status).await;
            return Err(e);
        }
        info!(host = %h.name, vms = vms.len(), "preparing for maintenance");
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { me.empty_host(&id).await });
        Ok(())
    }

    /// The SPM role leaves this host before it goes (SpmStop; the pool monitor then
    /// elects an up host).
    async fn stop_spm_on(&self, id: &str, dc: Option<&str>, name: &str) -> Result<(), VmError> {
        let Some(dc) = dc else { return Ok(()) };
        let is_spm = self
            .read()
            .data_centers
            .get(dc)
            .is_some_and(|d| d.spm.as_deref() == Some(id));
        if !is_spm {
            return Ok(());
        }
        let cl = self
            .host_client(id)
            .await
            .ok_or_else(|| VmError::Failed(format!("Host {name} (the SPM) is not connected")))?;
        if let Err(e) = cl
            .call_value("StoragePool.spmStop", json!({"storagepoolID": dc}))
            .await
        {
            self.event(
                27,
                "error",
                format!("Failed to change status of host {name} due to a failure to stop the spm."),
                Some(id),
                None,
            )
            .await;
            return Err(VmError::Failed(format!("spmStop failed on {name}: {e}")));
        }
        let _ = self
            .update(dc, |d: &mut DataCenter| {
                if d.spm.as_deref() == Some(id) {
                    d.spm = None;
                }
            })
            .await;
        self.set_spm_status(dc, None, None).await;
        info!(host = %name, "SPM stopped for maintenance");
        Ok(())
    }

    /// Migrates the host's VMs away until none is left, then the host is in
    /// maintenance (unless it was activated meanwhile).
    async fn empty_host(self: &Arc<Self>, id: &str) {
        let name = self.host_name_of_id(id);
        let mut tried: std::collections::HashMap<String, std::time::Instant> = Default::default();
        let mut reported: std::collections::HashSet<String> = Default::default();
        loop {
            let status = self.read().hosts.get(id).map(|h| h.status.clone());
            if status.as_deref() != Some("preparing_for_maintenance") {
                info!(host = %name, ?status, "maintenance preparation ended");
                return;
            }
            let vms: Vec<(String, String, String)> = self
                .read()
                .vms_on(id)
                .filter(|v| v.status != "down")
                .map(|v| (v.id.clone(), v.name.clone(), v.status.clone()))
                .collect();
            if vms.is_empty() {
                self.set_host_status(id, "maintenance").await;
                self.maintenance_done_event(id, &name).await;
                return;
            }
            for (vm, vm_name, st) in vms {
                if st == "migrating" {
                    continue;
                }
                if tried.get(&vm).is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                    continue;
                }
                if tried.contains_key(&vm) && reported.insert(vm.clone()) {
                    self.event(
                        140,
                        "error",
                        format!(
                            "Migration failed while Host is in 'preparing for maintenance' state.\n  Consider manual intervention: stopping/migrating Vms as Host's state will not\n  turn to maintenance while VMs are still running on it.(VM: {vm_name}, Source: {name})."
                        ),
                        Some(id),
                        Some(&vm),
                    )
                    .await;
                }
                tried.insert(vm.clone(), std::time::Instant::now());
                if let Err(e) = self.vm_migrate(&vm, None, true).await {
                    warn!(host = %name, vm = %vm_name, error = %e, "cannot migrate for maintenance");
                    if reported.insert(vm.clone()) {
                        self.event(
                            1111,
                            "error",
                            format!(
                                "Migration failed{} while Source Host is in 'preparing for maintenance' state.\n  Consider manual intervention: stopping/migrating Vms as Host's state will not\n  turn to maintenance while VMs are still running on it.(VM: {vm_name}, Source: {name}).",
                                format_args!(" due to an error: {e}")
                            ),
                            Some(id),
                            Some(&vm),
                        )
                        .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn maintenance_done_event(&self, id: &str, name: &str) {
        info!(host = %name, "in maintenance");
        self.event(
            16,
            "normal",
            format!("Host {name} was switched to Maintenance Mode by admin@internal."),
            Some(id),
            None,
        )
        .await;
    }

    fn host_name_of_id(&self, id: &str) -> String {
        self.read()
            .hosts
            .get(id)
            .map(|h: &Host| h.name.clone())
            .unwrap_or_default()
    }
}
