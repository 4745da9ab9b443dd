//! Highly available VMs, as the engine runs them (AutoStartVmsRunner, VM leases):
//!
//! - A VM with `high_availability.enabled` that goes down with an error (its QEMU
//!   crashed or was killed, the host lost it) is restarted, by priority, where the
//!   scheduler chooses; a shutdown from the guest or a stop through the API is not an
//!   error and does not restart it.
//! - A VM whose host stopped answering is `unknown`. If it has a VM lease
//!   (`lease.storage_domain`), the Manager starts it on another host at once and again
//!   every [`HA_EVERY`]: libvirt on the new host acquires the lease through sanlock
//!   before QEMU runs, which succeeds only after the old host released it or its
//!   sanlock host id expired — so the VM never runs twice, whatever the Manager
//!   believes. Until a start succeeds it stays `unknown` on its old host; if that host
//!   answers again with the VM running, the VM is simply there.
//! - Without a lease the Manager cannot know that the old copy is gone: such a VM is
//!   restarted only after its host was fenced (power management, see `fencing`) or
//!   an admin confirmed the host was rebooted; an event says so.
//!
//! VM leases live in the domain's `xleases` volume (VDSM's `Lease.create/delete`, run
//! by the SPM).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use crate::state::Manager;
use crate::vms::VmError;

/// How often the runner looks for VMs to restart.
pub const HA_EVERY: Duration = Duration::from_secs(2);
/// Between two restart attempts of a VM that went down (a leased VM of a
/// non-responsive host is tried at every round).
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// One event per failing VM in this time.
pub const TOLD_FOR: Duration = Duration::from_secs(600);

impl Manager {
    /// Lease.create on the data center's SPM for VM `vm` on domain `sd`, waited for.
    /// A lease that exists already is fine (a Manager that died after creating it).
    pub async fn lease_create(&self, dc: &str, sd: &str, vm: &str) -> Result<(), VmError> {
        let (_, c) = self
            .spm_client(dc)
            .await
            .map_err(|e| VmError::Conflict(e.to_string()))?;
        let lease = json!({"lease": {"sd_id": sd, "lease_id": vm}});
        let task = c
            .call_value("Lease.create", lease.clone())
            .await
            .map_err(|e| VmError::Failed(format!("Lease.create on the SPM: {e}")))?;
        match crate::storage::wait_task(&c, task.as_str().unwrap_or_default()).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("exists") => Ok(()),
            Err(e) => Err(VmError::Failed(format!("creating the VM lease: {e}"))),
        }
    }

    /// Lease.delete on the SPM; a lease already gone is fine.
    pub async fn lease_delete(&self, dc: &str, sd: &str, vm: &str) -> Result<(), VmError> {
        let (_, c) = self
            .spm_client(dc)
            .await
            .map_err(|e| VmError::Conflict(e.to_string()))?;
        let task = match c
            .call_value(
                "Lease.delete",
                json!({"lease": {"sd_id": sd, "lease_id": vm}}),
            )
            .await
        {
            Ok(t) => t,
            Err(e) if e.to_string().contains("No such lease") => return Ok(()),
            Err(e) => return Err(VmError::Failed(format!("Lease.delete on the SPM: {e}"))),
        };
        crate::storage::wait_task(&c, task.as_str().unwrap_or_default())
            .await
            .map_err(|e| VmError::Failed(format!("removing the VM lease: {e}")))
    }

    /// Marks an HA VM for a restart (it went down with an error).
    pub(crate) async fn ha_vm_failed(&self, vm_id: &str) {
        let r = self
            .update(vm_id, |v: &mut crate::model::Vm| {
                if v.ha_enabled && v.status == "down" {
                    v.ha_pending = true;
                    Some(v.name.clone())
                } else {
                    None
                }
            })
            .await;
        if let Ok(Some(Some(name))) = r {
            self.event(
                9602,
                "error",
                format!("Highly Available VM {name} failed. It will be restarted automatically."),
                None,
                Some(vm_id),
            )
            .await;
        }
    }

    /// Whether a failure to restart VM `vm_id` is news (one event per VM in
    /// [`TOLD_FOR`], not one per try).
    fn ha_news(&self, vm_id: &str) -> bool {
        let mut t = self.ha_told.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, at| at.elapsed() < TOLD_FOR);
        t.insert(vm_id.to_string(), Instant::now()).is_none()
    }

    /// A restart of a leased VM on another host ended before it ran: libvirt could
    /// not acquire the lease (the old host's still lives) or the start failed.
    pub(crate) async fn ha_try_failed(
        &self,
        vm_id: &str,
        name: &str,
        tried: Option<&str>,
        message: &str,
    ) {
        let host = tried
            .and_then(|h| self.read().hosts.get(h).map(|h| h.name.clone()))
            .unwrap_or_default();
        info!(vm_id, host = %host, message, "HA restart on another host did not take; retried");
        if self.ha_news(vm_id) {
            self.event(
                9603,
                "error",
                format!("Restart of the Highly Available VM {name} on Host {host} failed: {message}. Its lease may still be held by the host that stopped responding; it is tried again until the lease is free."),
                tried,
                Some(vm_id),
            )
            .await;
        }
    }

    /// The HA runner: restarts failed HA VMs and moves leased HA VMs off hosts that
    /// stopped answering.
    pub async fn ha_loop(self: Arc<Self>) {
        let mut last_try: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(HA_EVERY).await;
            self.ha_once(&mut last_try).await;
        }
    }

    async fn ha_once(self: &Arc<Self>, last_try: &mut HashMap<String, Instant>) {
        // (priority, id, restart from a dead host)
        let mut due: Vec<(i32, String, Option<String>)> = Vec::new();
        {
            let inv = self.read();
            for v in inv.vms.values().filter(|v| v.ha_enabled) {
                if v.status == "down" && v.ha_pending {
                    due.push((v.ha_priority, v.id.clone(), None));
                    continue;
                }
                let dead_host = v.status == "unknown"
                    && v.ha_from.is_none()
                    && v.host.as_ref().is_some_and(|h| {
                        inv.hosts
                            .get(h)
                            .is_some_and(|h| h.status == "non_responsive")
                    });
                if !dead_host {
                    continue;
                }
                if v.lease_domain.is_some() {
                    due.push((v.ha_priority, v.id.clone(), v.host.clone()));
                } else if self.ha_news(&v.id) {
                    let name = v.name.clone();
                    let id = v.id.clone();
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.event(
                            9603,
                            "error",
                            format!("Restart of the Highly Available VM {name} is pending: its host is not responding and the VM has no lease; it is restarted once the host was fenced (power management) or an admin confirmed that the host was rebooted (fence_type=manual)."),
                            None,
                            Some(&id),
                        )
                        .await;
                    });
                }
            }
        }
        due.sort_by_key(|d| std::cmp::Reverse(d.0));
        last_try.retain(|_, t| t.elapsed() < RETRY_EVERY * 2);
        for (_, id, from) in due {
            // A leased VM's start on another host fails fast while the old host's
            // lease lives: tried at every round, to take the lease soon after it expired.
            let every = if from.is_some() {
                HA_EVERY
            } else {
                RETRY_EVERY
            };
            if last_try
                .get(&id)
                .is_some_and(|t| t.elapsed() + Duration::from_millis(500) < every)
            {
                continue;
            }
            last_try.insert(id.clone(), Instant::now());
            let r = match &from {
                None => {
                    let _ = self
                        .update(&id, |v: &mut crate::model::Vm| v.ha_pending = false)
                        .await;
                    let r = self.vm_start_ha(&id).await;
                    if r.is_err() {
                        let _ = self
                            .update(&id, |v: &mut crate::model::Vm| {
                                if v.status == "down" && v.ha_enabled {
                                    v.ha_pending = true;
                                }
                            })
                            .await;
                    }
                    r
                }
                Some(old) => self.vm_start_ha_elsewhere(&id, old).await,
            };
            match r {
                Ok(()) => info!(vm_id = %id, from = ?from, "HA restart started"),
                Err(e) => {
                    warn!(vm_id = %id, error = %e, "HA restart failed; retried");
                    if self.ha_news(&id) {
                        let name = self.read().vms.get(&id).map(|v| v.name.clone());
                        self.event(
                            9603,
                            "error",
                            format!(
                                "Restart of the Highly Available VM {} failed: {e} It is tried again.",
                                name.unwrap_or_default()
                            ),
                            None,
                            Some(&id),
                        )
                        .await;
                    }
                }
            }
        }
    }
}
