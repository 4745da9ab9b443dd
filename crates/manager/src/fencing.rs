//! Power management and fencing, as oVirt's engine does them:
//!
//! - A host's fence agents (`hosts/{id}/fenceagents`, tried by `order`) say how its
//!   power is controlled. The Manager never talks to a fence device itself: another
//!   host, up, of the same cluster first and then of the same data center, runs the
//!   agent (VDSM's `Host.fenceNode`), as the engine's fence proxy.
//! - `fence` actions: `status` (the power state), `stop` (off, then the status until
//!   it is off), `start`, `restart` (stop, then start), `manual` (the admin confirms
//!   the host was rebooted). Once a host is known to be off (or confirmed rebooted),
//!   its VMs are down — none of them can still run — and highly available ones are
//!   restarted elsewhere by the HA runner, also those without a VM lease.
//! - Automatic fencing: a host with `power_management.enabled` and
//!   `automatic_pm_enabled`, in a cluster whose `fencing_policy` is enabled, that has
//!   been `non_responsive` for `fencing.grace_secs`, is restarted. With the cluster's
//!   `skip_if_sd_active`, the fence proxy first asks its sanlock whether the host still
//!   renews its host id on the data center's domains (VDSM's fencing policy): if it
//!   does, it is alive and only cut off from the Manager, and it is not fenced. A host
//!   is fenced once until it answers again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_proto::vdsm::FenceNodeResult;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::now_ms;
use crate::model::{FenceAgent, Host, Vm};
use crate::state::Manager;
use crate::vms::VmError;

/// The fence agents whose `port` is an IP port passed as `ipport` (the engine's
/// `VdsFenceOptionMapping`); for the others `port` is the plug.
const IPPORT_AGENTS: &[&str] = &[
    "ipmilan", "ilo", "ilo2", "ilo3", "ilo4", "ilo5", "idrac", "drac7", "ilo_ssh", "ilo3_ssh",
    "ilo4_ssh",
];

impl Manager {
    /// A host's fence agents, by order.
    pub fn fence_agents_of(&self, host: &str) -> Vec<FenceAgent> {
        let mut v: Vec<FenceAgent> = self
            .read()
            .fence_agents
            .values()
            .filter(|a| a.host == host)
            .cloned()
            .collect();
        v.sort_by_key(|a| (a.order, a.id.clone()));
        v
    }

    /// Hosts that may run a fence agent for `host`: up, not itself, its cluster's
    /// first, then its data center's.
    fn fence_proxies(&self, host: &Host) -> Vec<(String, String)> {
        let inv = self.read();
        let dc = inv.dc_of_cluster(&host.cluster).map(str::to_string);
        let mut v: Vec<(u8, String, String)> = inv
            .hosts
            .values()
            .filter(|h| h.id != host.id && h.status == "up")
            .filter_map(|h| {
                if h.cluster == host.cluster {
                    Some((0, h.id.clone(), h.name.clone()))
                } else if dc.is_some() && inv.dc_of_cluster(&h.cluster) == dc.as_deref() {
                    Some((1, h.id.clone(), h.name.clone()))
                } else {
                    None
                }
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, id, name)| (id, name)).collect()
    }

    /// VDSM's fencing policy for `host`: its host id on the data center's shared
    /// domains.
    fn fencing_policy(&self, host: &Host) -> Value {
        let inv = self.read();
        let dc = inv.dc_of_cluster(&host.cluster);
        let map: BTreeMap<String, u32> = inv
            .storage_domains
            .values()
            .filter(|d| {
                d.data_center.as_deref() == dc
                    && d.storage_type != "localfs"
                    && d.status == "active"
            })
            .map(|d| (d.id.clone(), host.spm_id))
            .collect();
        json!({"storageDomainHostIdMap": map})
    }

    /// Runs `action` (status, on, off, reboot) on `host`'s fence agents through a
    /// proxy: the first agent that succeeds answers; with `policy`, VDSM's fencing
    /// policy goes along (the proxy may skip it).
    pub async fn fence_node(
        &self,
        host_id: &str,
        action: &str,
        policy: bool,
    ) -> Result<FenceNodeResult, VmError> {
        let host = self
            .read()
            .hosts
            .get(host_id)
            .cloned()
            .ok_or_else(|| VmError::NotFound(format!("Host {host_id} not found")))?;
        if !host.pm_enabled {
            return Err(VmError::Conflict(format!(
                "Cannot fence Host {}: power management is not enabled on it.",
                host.name
            )));
        }
        let agents = self.fence_agents_of(host_id);
        if agents.is_empty() {
            return Err(VmError::Conflict(format!(
                "Cannot fence Host {}: it has no fence agent.",
                host.name
            )));
        }
        let proxies = self.fence_proxies(&host);
        if proxies.is_empty() {
            return Err(VmError::Conflict(format!(
                "Cannot fence Host {}: no other host is up in its cluster or data center to run its fence agent.",
                host.name
            )));
        }
        let policy = policy.then(|| self.fencing_policy(&host));
        let mut errors = Vec::new();
        for (proxy, proxy_name) in &proxies {
            let Some(c) = self.host_client(proxy).await else {
                errors.push(format!("{proxy_name}: not connected"));
                continue;
            };
            // Whether a fence device answered through this proxy (then another proxy
            // would get the same answer).
            let mut answered = false;
            for a in &agents {
                let mut options: Vec<String> = a
                    .options
                    .iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.clone()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect();
                let mut port = Value::String(String::new());
                if let Some(p) = a.port {
                    if IPPORT_AGENTS.contains(&a.agent_type.as_str()) {
                        options.push(format!("ipport={p}"));
                    } else {
                        port = json!(p);
                    }
                }
                let params = json!({
                    "addr": a.address,
                    "port": port,
                    "agent": a.agent_type,
                    "username": a.username,
                    "password": a.password,
                    "action": action,
                    "secure": a.encrypt_options,
                    "options": options.join(","),
                    "policy": policy,
                });
                match c.call_value("Host.fenceNode", params).await {
                    Ok(v) => match serde_json::from_value::<FenceNodeResult>(v) {
                        Ok(r) if r.code == 0 => {
                            info!(host = %host.name, proxy = %proxy_name, agent = %a.agent_type, action, power = %r.power, "fence agent answered");
                            return Ok(r);
                        }
                        Ok(r) => {
                            answered = true;
                            errors.push(format!(
                                "{proxy_name}, agent {} at {}: exit code {}: {}",
                                a.agent_type, a.address, r.code, r.message
                            ))
                        }
                        Err(e) => errors.push(format!("{proxy_name}: a malformed answer: {e}")),
                    },
                    Err(e) => errors.push(format!(
                        "{proxy_name}, agent {} at {}: {e}",
                        a.agent_type, a.address
                    )),
                }
            }
            if answered {
                break;
            }
        }
        Err(VmError::Failed(format!(
            "Fence operation {action} on Host {} failed: {}",
            host.name,
            errors.join("; ")
        )))
    }

    /// The host's power status through its fence agents: on, off or unknown.
    pub async fn power_status(&self, host_id: &str) -> Result<String, VmError> {
        Ok(self.fence_node(host_id, "status", false).await?.power)
    }

    /// Waits until the power status is `want`.
    async fn wait_power(&self, host_id: &str, want: &str) -> Result<(), VmError> {
        let deadline = Instant::now() + Duration::from_secs(self.cfg.fencing.wait_secs.max(1));
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.power_status(host_id).await {
                Ok(p) if p == want => return Ok(()),
                Ok(p) => last = p,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(VmError::Failed(format!(
            "the power status did not become {want} within {} s (last: {last})",
            self.cfg.fencing.wait_secs
        )))
    }

    /// `stop`: power off, confirmed by the status; then its VMs are down. `Ok(false)`:
    /// skipped by the fencing policy (the host still renews its storage lease).
    pub async fn fence_stop(&self, host_id: &str, by: &str, policy: bool) -> Result<bool, VmError> {
        let r = self.fence_node(host_id, "off", policy).await?;
        if r.operation_status.as_deref() == Some("skipped") {
            return Ok(false);
        }
        self.wait_power(host_id, "off").await?;
        let name = self.host_name(host_id);
        self.event(
            9007,
            "normal",
            format!("Host {name} was stopped by {by}."),
            Some(host_id),
            None,
        )
        .await;
        self.host_fenced(host_id, "down").await;
        Ok(true)
    }

    /// `start`: power on, confirmed by the status; the Manager connects to the host
    /// when its agent answers.
    pub async fn fence_start(&self, host_id: &str, by: &str) -> Result<(), VmError> {
        self.fence_node(host_id, "on", false).await?;
        self.wait_power(host_id, "on").await?;
        let _ = self
            .update(host_id, |h: &mut Host| {
                if h.status == "down" {
                    h.status = "non_responsive".into();
                }
            })
            .await;
        let name = self.host_name(host_id);
        self.event(
            9008,
            "normal",
            format!("Host {name} was started by {by}."),
            Some(host_id),
            None,
        )
        .await;
        Ok(())
    }

    /// `restart`: stop, then start. `Ok(false)`: skipped by the fencing policy.
    pub async fn fence_restart(
        &self,
        host_id: &str,
        by: &str,
        policy: bool,
    ) -> Result<bool, VmError> {
        if !self.fence_stop(host_id, by, policy).await? {
            return Ok(false);
        }
        self.fence_start(host_id, by).await?;
        let name = self.host_name(host_id);
        self.event(
            9009,
            "normal",
            format!("Host {name} was restarted by {by}."),
            Some(host_id),
            None,
        )
        .await;
        Ok(true)
    }

    /// `manual`: the admin confirms the host was rebooted (oVirt's "Confirm 'Host has
    /// been Rebooted'"): refused for a host that answers.
    pub async fn fence_manual(&self, host_id: &str) -> Result<(), VmError> {
        let h = self
            .read()
            .hosts
            .get(host_id)
            .cloned()
            .ok_or_else(|| VmError::NotFound(format!("Host {host_id} not found")))?;
        if h.status != "non_responsive" && h.status != "down" {
            return Err(VmError::Conflict(format!(
                "Cannot confirm that Host {} was rebooted: it is {}, not non_responsive.",
                h.name, h.status
            )));
        }
        self.event(
            9010,
            "normal",
            format!(
                "Manual fence for Host {} was started: admin@internal confirmed that it was rebooted.",
                h.name
            ),
            Some(host_id),
            None,
        )
        .await;
        self.host_fenced(host_id, &h.status).await;
        Ok(())
    }

    /// The host is off (or was rebooted): none of its VMs runs any more. They are down
    /// (not by an admin: HA VMs are restarted); the host's status becomes `status`.
    async fn host_fenced(&self, host_id: &str, status: &str) {
        let _ = self
            .update(host_id, |h: &mut Host| {
                h.status = status.to_string();
                h.spm_status = String::new();
                h.fenced_ms = now_ms();
            })
            .await;
        let name = self.host_name(host_id);
        let vms: Vec<String> = self
            .read()
            .vms_on(host_id)
            .filter(|v: &&Vm| v.status != "down")
            .map(|v| v.id.clone())
            .collect();
        for id in vms {
            if self
                .vm_down(&id, format!("Host {name} was fenced"), false)
                .await
            {
                self.ha_vm_failed(&id).await;
            }
        }
    }

    /// The fencing monitor: restarts non-responsive hosts with automatic power
    /// management after the grace period, once until they answer again.
    pub async fn fencing_loop(self: Arc<Self>) {
        let mut since: HashMap<String, Instant> = HashMap::new();
        let mut told: HashMap<String, Instant> = HashMap::new();
        let grace = Duration::from_secs(self.cfg.fencing.grace_secs);
        loop {
            tokio::time::sleep(Duration::from_secs(self.cfg.fencing.check_secs.max(1))).await;
            let due: Vec<(String, String, bool)> = {
                let inv = self.read();
                let mut due = Vec::new();
                for h in inv.hosts.values() {
                    if h.status != "non_responsive" {
                        since.remove(&h.id);
                        continue;
                    }
                    let first = *since.entry(h.id.clone()).or_insert_with(Instant::now);
                    let cluster = inv.clusters.get(&h.cluster);
                    if h.fenced_ms != 0
                        || !h.pm_enabled
                        || !h.pm_automatic
                        || !cluster.is_some_and(|c| c.fencing_enabled)
                        || first.elapsed() < grace
                        || !inv.fence_agents.values().any(|a| a.host == h.id)
                    {
                        continue;
                    }
                    let skip = cluster.is_some_and(|c| c.fencing_skip_if_sd_active);
                    due.push((h.id.clone(), h.name.clone(), skip));
                }
                due
            };
            // A host that answered again may be fenced again later.
            let answered: Vec<String> = self
                .read()
                .hosts
                .values()
                .filter(|h| h.fenced_ms != 0 && h.status == "up")
                .map(|h| h.id.clone())
                .collect();
            for id in answered {
                let _ = self.update(&id, |h: &mut Host| h.fenced_ms = 0).await;
            }
            told.retain(|_, t| t.elapsed() < Duration::from_secs(600));
            for (id, name, skip) in due {
                info!(host = %name, "fencing a non-responsive host");
                match self
                    .fence_restart(&id, "the system (the host is not responding)", skip)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        if told.insert(id.clone(), Instant::now()).is_none() {
                            self.event(
                                9011,
                                "warning",
                                format!("Fencing of Host {name} was skipped: it still renews its storage lease (the cluster's fencing policy skips hosts with a live lease)."),
                                Some(&id),
                                None,
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        warn!(host = %name, error = %e, "fencing failed; retried");
                        if told.insert(id.clone(), Instant::now()).is_none() {
                            self.event(9012, "error", format!("{e}"), Some(&id), None)
                                .await;
                        }
                    }
                }
            }
        }
    }
}
