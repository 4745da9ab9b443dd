//! Live migration as the engine drives it (oVirt's MigrateVmCommand,
//! MigrateVmToServerCommand, CancelMigrateVmCommand): the checks, the destination
//! (given, or chosen by the scheduler without the source), `VM.migrate` on the
//! source host with the cluster's migration policy, and the hand-over when the hosts
//! report: the destination's `Up` (or the source's Down with "Migration succeeded")
//! moves the VM to the destination; the source's `Up` again means it failed.
//!
//! The VM keeps `status = migrating` and `migrating_to` (stored) meanwhile, so a
//! Manager that restarts mid-migration ends with the VM on exactly the host that
//! reports it running.

use std::sync::Arc;

use halyard_proto::vdsm::exit_reason;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::{now_ms, Vm};
use crate::state::Manager;
use crate::vms::VmError;

/// The convergence schedule of oVirt's "Minimal downtime" policy
/// (80554327-0569-496b-bdeb-fcbbf52b827b), the default of a cluster.
pub fn minimal_downtime_schedule() -> Value {
    let step = |limit: i64, ms: &str| json!({"limit": limit, "action": {"name": "setDowntime", "params": [ms]}});
    json!({
        "init": [{"name": "setDowntime", "params": ["100"]}],
        "stalling": [step(1, "150"), step(2, "200"), step(3, "300"), step(4, "400"), step(6, "500"),
                     {"limit": -1, "action": {"name": "abort", "params": []}}],
    })
}

/// The VM states a migration may start from (oVirt's isQualifyToMigrate).
const MIGRATABLE: &[&str] = &["up", "powering_up", "paused", "reboot_in_progress"];

impl Manager {
    /// `POST /vms/{id}/migrate`: to `host`, or where the scheduler says.
    pub async fn vm_migrate(
        self: &Arc<Self>,
        id: &str,
        host: Option<&str>,
        force: bool,
    ) -> Result<(), VmError> {
        let c = |m: &str| VmError::Conflict(format!("Cannot migrate VM. {m}"));
        let (vm, src, dst) = {
            let _g = self.write_lock.lock().await;
            let vm = self.vm(id)?;
            if vm.status == "migrating" {
                return Err(c("VM migration is in progress."));
            }
            if !MIGRATABLE.contains(&vm.status.as_str()) {
                return Err(c("VM is not running."));
            }
            match vm.placement.affinity.as_str() {
                "pinned" => return Err(c("VM is pinned to Host.")),
                "user_migratable" if !force => {
                    return Err(c(
                        "VM is non migratable and user did not specify the force-migration flag",
                    ))
                }
                _ => {}
            }
            let src = vm
                .host
                .clone()
                .ok_or_else(|| c("The VM runs on no host."))?;
            {
                let inv = self.read();
                if inv.disks_of(id).iter().any(|d| d.status == "locked")
                    || inv
                        .snapshots
                        .values()
                        .any(|s| s.vm == id && s.status == "locked")
                {
                    return Err(c("The VM's disks are locked (an operation on them runs)."));
                }
            }
            let dst = match host {
                Some(h) => {
                    let inv = self.read();
                    let d = inv.hosts.get(h).ok_or_else(|| c("Invalid Host Id."))?;
                    if d.id == src {
                        return Err(c("source and destination is the same."));
                    }
                    if d.cluster != vm.cluster {
                        return Err(c(
                            "Migration between two clusters is not supported: the destination host is in another cluster.",
                        ));
                    }
                    if d.status != "up" {
                        return Err(c("Operation can be performed only when Host status is Up."));
                    }
                    drop(inv);
                    // The same filters as a start, on that host only.
                    let others: Vec<String> = self
                        .read()
                        .hosts
                        .keys()
                        .filter(|k| k.as_str() != h)
                        .cloned()
                        .collect();
                    let except: Vec<&str> = others.iter().map(String::as_str).collect();
                    self.schedule_except(&vm, &except)
                        .map_err(|e| c(&e.to_string().replace("Cannot run VM. ", "")))?
                }
                None => self
                    .schedule_except(&vm, &[src.as_str()])
                    .map_err(|e| c(&e.to_string().replace("Cannot run VM. ", "")))?,
            };
            let started = now_ms();
            let placed = self
                .update(id, |v: &mut Vm| {
                    v.status = "migrating".into();
                    v.migrating_to = Some(dst.clone());
                    v.migration_start = Some(started);
                    v.migration_seen = crate::model::MigrationSeen {
                        local: true,
                        ..Default::default()
                    };
                })
                .await
                .map_err(|e| VmError::Failed(e.to_string()))?;
            if placed.is_none() {
                return Err(VmError::NotFound(format!("VM {id} not found")));
            }
            (vm, src, dst)
        };
        let (src_name, dst_name, dst_addr, dst_port) = {
            let inv = self.read();
            let name = |h: &str| inv.hosts.get(h).map(|h| h.name.clone()).unwrap_or_default();
            let d = inv.hosts.get(&dst);
            (
                name(&src),
                name(&dst),
                d.map(|h| h.address.clone()).unwrap_or_default(),
                d.map(|h| h.port).unwrap_or(54321),
            )
        };
        // The cluster's custom bandwidth (Mbps) as VDSM's maxBandwidth (MiB/s).
        let max_bandwidth = self
            .read()
            .clusters
            .get(&vm.cluster)
            .and_then(|c| c.migration_bandwidth_mbps)
            .map(|mbps| (mbps / 8).max(1));
        let mut params = json!({
            "dst": format!("{}:{dst_port}", bracket(&dst_addr)),
            "dstqemu": dst_addr,
            "src": src_name,
            "method": "online",
            "tunneled": "false",
            "abortOnError": "true",
            "autoConverge": "true",
            "compressed": "false",
            "encrypted": false,
            "enableGuestEvents": true,
            "outgoingLimit": 2,
            "incomingLimit": 2,
            "convergenceSchedule": minimal_downtime_schedule(),
        });
        if let Some(b) = max_bandwidth {
            params["maxBandwidth"] = json!(b);
        }
        let r = match self.host_client(&src).await {
            None => Err("the VM's host is not connected".to_string()),
            Some(cl) => cl
                .call_value("VM.migrate", json!({"vmID": id, "params": params}))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            self.migration_ended(id, &dst, false).await;
            self.set_status_after_migration(id, "up").await;
            self.event(
                65,
                "error",
                format!(
                    "Migration failed due to an error: {e} (VM: {}, Source: {src_name}).",
                    vm.name
                ),
                Some(&src),
                Some(id),
            )
            .await;
            return Err(VmError::Failed(format!("VM.migrate failed: {e}")));
        }
        self.update_memory(id, |v: &mut Vm| v.migration_seen.sent_ms = Some(now_ms()))
            .await;
        info!(vm = %vm.name, from = %src_name, to = %dst_name, "migration started");
        self.event(
            62,
            "normal",
            format!(
                "Migration started (VM: {}, Source: {src_name}, Destination: {dst_name}, User: admin@internal). ",
                vm.name
            ),
            Some(&src),
            Some(id),
        )
        .await;
        Ok(())
    }

    /// `POST /vms/{id}/cancelmigration`.
    pub async fn vm_cancel_migration(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        let vm = self.vm(id)?;
        if vm.status != "migrating" {
            return Err(VmError::Conflict(
                "Cannot cancel migration for non migrating VM.".into(),
            ));
        }
        let src = vm.host.clone().unwrap_or_default();
        let cl = self
            .host_client(&src)
            .await
            .ok_or_else(|| VmError::Failed("the VM's host is not connected".into()))?;
        if let Err(e) = cl.call_value("VM.migrateCancel", json!({"vmID": id})).await {
            self.event(
                162,
                "error",
                format!("Failed to cancel migration for VM: {}", vm.name),
                Some(&src),
                Some(id),
            )
            .await;
            return Err(VmError::Failed(format!("VM.migrateCancel failed: {e}")));
        }
        let src_name = self
            .read()
            .hosts
            .get(&src)
            .map(|h| h.name.clone())
            .unwrap_or_default();
        self.event(
            161,
            "normal",
            format!(
                "Migration cancelled (VM: {}, Source: {src_name}, User: admin@internal).",
                vm.name
            ),
            Some(&src),
            Some(id),
        )
        .await;
        Ok(())
    }

    /// Leaves the migrating state: on success the VM is the destination's.
    async fn migration_ended(&self, id: &str, dst: &str, success: bool) -> Option<Vm> {
        self.update(id, |v: &mut Vm| {
            if v.migrating_to.as_deref() != Some(dst) {
                return None;
            }
            v.migrating_to = None;
            v.migration_start = None;
            if success {
                v.host = Some(dst.to_string());
                v.migration_seen.handing_over = true;
            }
            Some(v.clone())
        })
        .await
        .ok()
        .flatten()
        .flatten()
    }

    /// A host's report about a VM that is migrating (from its source or its
    /// destination). Returns true when the report was the migration's and is handled.
    pub(crate) async fn migration_report(
        self: &Arc<Self>,
        host_id: &str,
        vm_id: &str,
        st: &Value,
        asked_at: Option<i64>,
    ) -> bool {
        let Some((src, dst, name, started, seen)) = self.read().vms.get(vm_id).and_then(|v| {
            v.migrating_to.clone().map(|d| {
                (
                    v.host.clone().unwrap_or_default(),
                    d,
                    v.name.clone(),
                    v.migration_start,
                    v.migration_seen.clone(),
                )
            })
        }) else {
            return false;
        };
        let vdsm = st.get("status").and_then(Value::as_str).unwrap_or("");
        let reason = st.get("exitReason").and_then(Value::as_i64).unwrap_or(-1);
        let names = {
            let inv = self.read();
            let n = |h: &str| inv.hosts.get(h).map(|h| h.name.clone()).unwrap_or_default();
            (n(&src), n(&dst))
        };
        if host_id == dst {
            match vdsm {
                "Migration Destination" | "WaitForLaunch" => true,
                "Down" => {
                    // The copy that did not arrive; the source reports how it ended.
                    if let Some(cl) = self.host_client(&dst).await {
                        let _ = cl.call_value("VM.destroy", json!({"vmID": vm_id})).await;
                    }
                    true
                }
                _ => {
                    // It runs there: the destination's now.
                    if self.migration_ended(vm_id, &dst, true).await.is_some() {
                        self.handed_over(vm_id, &src, &name, &names, started).await;
                        self.set_status_after_migration(vm_id, crate::hosts::api_status(vdsm))
                            .await;
                    }
                    true
                }
            }
        } else if host_id == src {
            // Is a running source newer than the migration's start?
            let fresh = match asked_at {
                None => seen.source_said,
                Some(t) if seen.local => seen.sent_ms.is_some_and(|s| t > s),
                Some(t) => started.is_some_and(|s| t > s),
            };
            match vdsm {
                "Migration Source" => {
                    self.update_memory(vm_id, |v: &mut Vm| v.migration_seen.source_said = true)
                        .await;
                    true
                }
                "Down" if reason == exit_reason::MIGRATION_SUCCEEDED => {
                    // Done on the source; the destination runs it.
                    if self.migration_ended(vm_id, &dst, true).await.is_some() {
                        self.handed_over(vm_id, &src, &name, &names, started).await;
                        self.set_status_after_migration(vm_id, "up").await;
                    }
                    true
                }
                "Down" => false,
                _ if !fresh => true,
                _ => {
                    // Running on the source again: the migration failed.
                    let why = match self.host_client(&src).await {
                        Some(cl) => cl
                            .call_value("VM.getMigrationStatus", json!({"vmID": vm_id}))
                            .await
                            .ok()
                            .and_then(|s| s["status"]["message"].as_str().map(str::to_string))
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    if self.migration_ended(vm_id, &dst, false).await.is_some() {
                        let new = crate::hosts::api_status(vdsm);
                        warn!(vm = %name, error = %why, "migration failed");
                        let due = if why.is_empty() {
                            String::new()
                        } else {
                            format!(" due to an error: {why}")
                        };
                        self.event(
                            65,
                            "error",
                            format!("Migration failed{due} (VM: {name}, Source: {}).", names.0),
                            Some(&src),
                            Some(vm_id),
                        )
                        .await;
                        if let Some(cl) = self.host_client(&dst).await {
                            let _ = cl.call_value("VM.destroy", json!({"vmID": vm_id})).await;
                        }
                        self.set_status_after_migration(vm_id, new).await;
                    }
                    true
                }
            }
        } else {
            false
        }
    }

    /// The VM's status once its migration ended (unless it went down meanwhile).
    async fn set_status_after_migration(&self, id: &str, status: &str) {
        let _ = self
            .update(id, |v: &mut Vm| {
                v.migration_seen.handing_over = false;
                if v.status == "migrating" {
                    v.status = status.to_string();
                }
            })
            .await;
    }

    async fn handed_over(
        &self,
        vm_id: &str,
        src: &str,
        name: &str,
        names: &(String, String),
        started: Option<i64>,
    ) {
        // The source's Down copy goes, as the engine's handOverVm does.
        let mut downtime = String::from("(N/A)");
        if let Some(cl) = self.host_client(src).await {
            // The source learns the downtime when libvirt's job ends, about when the
            // destination reports the VM up: a moment's wait for it.
            for _ in 0..20 {
                let s = cl
                    .call_value("VM.getMigrationStatus", json!({"vmID": vm_id}))
                    .await;
                match s.ok().and_then(|s| s["downtime"].as_u64()) {
                    Some(d) => {
                        downtime = format!("{d}ms");
                        break;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
            let _ = cl.call_value("VM.destroy", json!({"vmID": vm_id})).await;
        }
        let secs = started.map(|t| (now_ms() - t) / 1000).unwrap_or(0);
        info!(vm = %name, to = %names.1, secs, %downtime, "migration done");
        self.event(
            63,
            "normal",
            format!(
                "Migration completed (VM: {name}, Source: {}, Destination: {}, Duration: {secs} seconds, Total: {secs} seconds, Actual downtime: {downtime})",
                names.0, names.1
            ),
            None,
            Some(vm_id),
        )
        .await;
    }
}

fn bracket(a: &str) -> String {
    if a.contains(':') && !a.starts_with('[') {
        format!("[{a}]")
    } else {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_minimal_downtime() {
        let s = minimal_downtime_schedule();
        assert_eq!(s["init"][0]["params"][0], "100");
        let st = s["stalling"].as_array().expect("stalling");
        assert_eq!(st.len(), 6);
        assert_eq!(st[4]["limit"], 6);
        assert_eq!(st[5]["action"]["name"], "abort");
        assert_eq!(bracket("fd00::1"), "[fd00::1]");
        assert_eq!(bracket("10.0.0.1"), "10.0.0.1");
    }
}
