//! Storage in the Manager: storage domains and their pool (one per data center, its id
//! is the data center's), host ids and pool connections, SPM election and failover,
//! and storage operations run as SPM tasks.
//!
//! The pool monitor ([`Manager::pool_loop`]) runs every `pool_check_secs`:
//! - every up host of a data center with a pool gets its host id, connects the
//!   storage servers of the data center's domains and the pool; a host that cannot is
//!   non_operational (retried);
//! - the SPM is checked with StoragePool.getSpmStatus every `spm_status_interval_secs`;
//!   without one, an election runs: connected up hosts by SPM priority (-1 never),
//!   random among equals; spmStart on one host at a time. sanlock decides when the
//!   role can move: spmStart succeeds only once the lease is free or expired;
//! - storage tasks are followed to their end, also after a Manager restart: the
//!   outcome is read from storage (the volume is LEGAL, or it is gone), never assumed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_client::{Client, ClientError};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::model::*;
use crate::state::Manager;

/// Why a storage operation cannot run (becomes an API fault).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageOpError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, StorageOpError>;

/// VDSM: Task.getStatus of an unknown task.
const UNKNOWN_TASK: i64 = 401;
/// VDSM: spmStart on the SPM.
const ALREADY_SPM: i64 = 656;

pub const VOL_COW: i64 = 4;
pub const VOL_RAW: i64 = 5;
pub const SPARSE: i64 = 2;
pub const PREALLOCATED: i64 = 1;
pub const SHARED_VOLUME: i64 = 6;
pub const LEAF_VOLUME: i64 = 8;

/// The largest disk accepted (oVirt's own limit is in this range).
pub const MAX_DISK_BYTES: u64 = 64 << 40;

/// Pool state kept in memory only (rebuilt after a restart).
#[derive(Default)]
pub struct PoolState {
    /// (data center, host) pairs whose pool connection succeeded.
    connected: HashSet<(String, String)>,
    /// Last failed connection attempt of a host.
    failed_at: HashMap<String, Instant>,
    /// Data centers with an election running.
    electing: HashSet<String>,
    /// Last SPM check per data center.
    checked: HashMap<String, Instant>,
    /// A host the admin chose (forceselectspm), per data center.
    forced: HashMap<String, String>,
    /// Storage tasks being sent right now.
    sending: HashSet<String>,
    /// Last refresh of domain sizes.
    sized: Option<Instant>,
}

fn blank() -> &'static str {
    BLANK_TEMPLATE
}

/// A hex-free pseudo random number for tie breaks among equal priorities.
fn tie_break() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// The order in which hosts are tried for the SPM role: highest priority first,
/// random among equals; priority -1 never.
pub fn spm_candidates(hosts: &[(String, i32)]) -> Vec<String> {
    let mut c: Vec<(i32, u128, String)> = hosts
        .iter()
        .filter(|(_, p)| *p >= 0)
        .map(|(h, p)| (*p, tie_break(), h.clone()))
        .collect();
    c.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    c.into_iter().map(|(_, _, h)| h).collect()
}

/// The lowest host id (1..250) not used in a data center.
pub fn free_host_id(used: &[u32]) -> Option<u32> {
    (1..=250).find(|i| !used.contains(i))
}

/// (spmStatus, spmLver) of a getSpmStatus answer (flat, or under `spm_st`).
fn spm_state(v: &Value) -> (String, i64) {
    let s = v.get("spm_st").unwrap_or(v);
    (
        s["spmStatus"].as_str().unwrap_or("").to_string(),
        s["spmLver"].as_i64().unwrap_or(0),
    )
}

fn rpc_code(e: &ClientError) -> Option<i64> {
    match e {
        ClientError::Rpc(r) => Some(r.code),
        _ => None,
    }
}

impl Manager {
    fn pools(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a host's pool connection (its agent restarted or stopped answering).
    pub fn pool_forget_host(&self, host_id: &str) {
        self.pools().connected.retain(|(_, h)| h != host_id);
    }

    /// Whether a host is connected to its data center's pool.
    pub fn pool_connected(&self, dc: &str, host_id: &str) -> bool {
        self.pools()
            .connected
            .contains(&(dc.to_string(), host_id.to_string()))
    }

    /// The pool monitor (spawned once at start).
    pub async fn pool_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.monitoring.pool_check_secs.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.recover_orphans().await;
        loop {
            tick.tick().await;
            let dcs: Vec<String> = self
                .read()
                .data_centers
                .values()
                .filter(|d| d.master_domain.is_some())
                .map(|d| d.id.clone())
                .collect();
            for dc in &dcs {
                self.pool_tick(dc).await;
            }
            self.follow_tasks().await;
            let refresh = self
                .pools()
                .sized
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
            if refresh {
                self.pools().sized = Some(Instant::now());
                for dc in &dcs {
                    self.refresh_domain_sizes(dc).await;
                }
            }
        }
    }

    /// At start, before any request: objects left locked by a Manager that died between
    /// recording them and recording their task get a task record without a VDSM task
    /// id, so that the storage decides their outcome like any unfinished task; jobs
    /// nothing works for any more end.
    async fn recover_orphans(self: &Arc<Self>) {
        let (disks, snaps, templates) = {
            let inv = self.read();
            let tasked = |d: &str| inv.tasks.values().any(|t| t.disk == d);
            let owned = |k: &str, id: &str| {
                inv.tasks
                    .values()
                    .any(|t| t.owner.as_ref().is_some_and(|(a, b)| a == k && b == id))
            };
            let disks: Vec<Disk> = inv
                .disks
                .values()
                .filter(|d| d.status == "locked" && !tasked(&d.id))
                .cloned()
                .collect();
            let snaps: Vec<Snapshot> = inv
                .snapshots
                .values()
                .filter(|s| s.status == "locked" && !owned("snapshot", &s.id))
                .cloned()
                .collect();
            let templates: Vec<Template> = inv
                .templates
                .values()
                .filter(|t| t.status == "locked" && !owned("template", &t.id))
                .cloned()
                .collect();
            (disks, snaps, templates)
        };
        for d in disks {
            let job = self
                .read()
                .jobs
                .values()
                .find(|j| j.description == format!("Adding Disk {}", d.name))
                .map(|j| j.id.clone());
            let job = match job {
                Some(j) => j,
                None => self.start_job(format!("Adding Disk {}", d.name)).await,
            };
            let mut t = StorageTask::for_disk(
                &d,
                &self.dc_of_domain(&d.storage_domain),
                "create_volume",
                &job,
                None,
            );
            warn!(disk = %d.name, "disk left locked by a Manager that stopped; its storage decides");
            // The step of the task that was lost (its record was gone, or never made) is
            // this task's: its end ends the step, and so the job.
            let stale_step = {
                let inv = self.read();
                inv.jobs.get(&job).and_then(|j| {
                    j.steps
                        .iter()
                        .find(|s| s.status == "started" && !inv.tasks.contains_key(&s.id))
                        .map(|s| s.id.clone())
                })
            };
            match stale_step {
                Some(step) => t.id = step,
                None => {
                    self.add_step(
                        &job,
                        &t.id,
                        format!("Checking the volume of disk {} on storage", d.name),
                    )
                    .await
                }
            }
            let _ = self.insert(&t).await;
        }
        for sn in snaps {
            warn!(snapshot = %sn.description, "snapshot left locked; rolled back");
            let job = self
                .start_job(format!("Recovering snapshot {}", sn.description))
                .await;
            self.snapshot_volumes_done(&sn.id, false, &job).await;
            self.finish_job(&job, true).await;
        }
        for t in templates {
            warn!(template = %t.name, "template left locked; illegal");
            let _ = self
                .update(&t.id, |t: &mut Template| t.status = "illegal".into())
                .await;
        }
        // Jobs nothing works for any more (looked at after the orphans got their tasks:
        // a job whose disk is being decided by storage is not ended here).
        let jobs: Vec<Job> = {
            let inv = self.read();
            inv.jobs
                .values()
                .filter(|j| j.status == "started" && !inv.tasks.values().any(|t| t.job == j.id))
                .cloned()
                .collect()
        };
        for j in jobs {
            let ok = !j.steps.is_empty() && j.steps.iter().all(|s| s.status == "finished");
            self.finish_job(&j.id, ok).await;
        }
    }

    /// One pass over a data center: connect hosts, check or elect the SPM, status.
    async fn pool_tick(self: &Arc<Self>, dc: &str) {
        if self
            .read()
            .data_centers
            .get(dc)
            .is_none_or(|d| d.status == "maintenance")
        {
            return;
        }
        let hosts: Vec<Host> = self
            .read()
            .hosts_of_dc(dc)
            .into_iter()
            .filter(|h| h.status == "up" || h.status == "non_operational")
            .cloned()
            .collect();
        for h in &hosts {
            if self.pool_connected(dc, &h.id) {
                continue;
            }
            let recent = self
                .pools()
                .failed_at
                .get(&h.id)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if recent {
                continue;
            }
            // After a failure, storage connections are made anew (a stale mount of an
            // unreachable server is not reused).
            let fresh = self.pools().failed_at.contains_key(&h.id);
            if let Err(e) = self.connect_host_to_pool(dc, &h.id, fresh).await {
                self.pools().failed_at.insert(h.id.clone(), Instant::now());
                self.host_cannot_reach_storage(dc, &h.id, &e.to_string())
                    .await;
            } else {
                self.pools().failed_at.remove(&h.id);
            }
        }
        let Some(d) = self.read().data_centers.get(dc).cloned() else {
            return;
        };
        let electing = self.pools().electing.contains(dc);
        match &d.spm {
            Some(spm) if !electing => {
                let due = self.pools().checked.get(dc).is_none_or(|t| {
                    t.elapsed()
                        >= Duration::from_secs(self.cfg.monitoring.spm_status_interval_secs.max(1))
                });
                let host_up = self
                    .read()
                    .hosts
                    .get(spm)
                    .is_some_and(|h| h.status == "up" || h.status == "non_operational");
                if due || !host_up {
                    self.pools().checked.insert(dc.to_string(), Instant::now());
                    self.check_spm(dc, spm, host_up).await;
                }
            }
            None if !electing
                && hosts.iter().any(|h| {
                    h.status == "up" && h.spm_priority >= 0 && self.pool_connected(dc, &h.id)
                }) =>
            {
                self.pools().electing.insert(dc.to_string());
                let me = self.clone();
                let dc = dc.to_string();
                tokio::spawn(async move {
                    me.elect_spm(&dc).await;
                    me.pools().electing.remove(&dc);
                });
            }
            _ => {}
        }
        self.update_dc_status(dc).await;
    }

    async fn update_dc_status(&self, dc: &str) {
        let (d, status) = {
            let inv = self.read();
            let Some(d) = inv.data_centers.get(dc).cloned() else {
                return;
            };
            let electing = self.pools().electing.contains(dc);
            let status = if d.status == "maintenance" {
                "maintenance"
            } else if let Some(spm) = &d.spm {
                match inv.hosts.get(spm).map(|h| h.status.as_str()) {
                    Some("up") => "up",
                    _ => "problematic",
                }
            } else if electing {
                "contend"
            } else {
                "problematic"
            };
            (d, status)
        };
        if d.status != status {
            let r = self
                .update(dc, |d: &mut DataCenter| {
                    // Maintenance is the admin's; it is not overwritten from a stale view.
                    if d.status != "maintenance" {
                        d.status = status.to_string();
                    }
                })
                .await;
            if let Err(e) = r {
                warn!(error = %e, "cannot store the data center status");
            }
        }
    }

    async fn client_of(&self, host_id: &str) -> Result<Arc<Client>> {
        self.host_client(host_id)
            .await
            .ok_or_else(|| StorageOpError::Failed(format!("host {host_id} is not connected")))
    }

    pub(crate) fn host_name(&self, host_id: &str) -> String {
        self.read()
            .hosts
            .get(host_id)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| host_id.to_string())
    }

    fn dc_name(&self, dc: &str) -> String {
        self.read()
            .data_centers
            .get(dc)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| dc.to_string())
    }

    /// connectStorageServer for a domain's connection on a host.
    pub async fn connect_domain_server(&self, c: &Client, sd: &StorageDomain) -> Result<()> {
        let r = c
            .call_value(
                "StoragePool.connectStorageServer",
                json!({"storagepoolID": blank(), "domainType": sd.domain_type(),
                       "connectionParams": [connection_params(sd)]}),
            )
            .await
            .map_err(|e| StorageOpError::Failed(format!("connectStorageServer: {e}")))?;
        let status = r[0]["status"].as_i64().unwrap_or(-1);
        if status != 0 {
            return Err(StorageOpError::Failed(format!(
                "the host cannot connect to {} (status {status})",
                sd.connection()
            )));
        }
        Ok(())
    }

    /// The data center, its domains, the host and the host ids others use.
    #[allow(clippy::type_complexity)]
    fn pool_view(
        &self,
        dc: &str,
        host_id: &str,
    ) -> Result<(DataCenter, Vec<StorageDomain>, Host, Vec<u32>)> {
        let inv = self.read();
        let d = inv
            .data_centers
            .get(dc)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("data center {dc}")))?;
        let sds: Vec<StorageDomain> = inv
            .storage_domains
            .values()
            .filter(|s| s.data_center.as_deref() == Some(dc))
            .cloned()
            .collect();
        let h = inv
            .hosts
            .get(host_id)
            .cloned()
            .ok_or_else(|| StorageOpError::NotFound(format!("host {host_id}")))?;
        let used: Vec<u32> = inv
            .hosts_of_dc(dc)
            .iter()
            .filter(|x| x.id != host_id)
            .map(|x| x.spm_id)
            .collect();
        Ok((d, sds, h, used))
    }

    /// Gives the host its id, connects every domain of the data center and the pool.
    async fn connect_host_to_pool(&self, dc: &str, host_id: &str, fresh: bool) -> Result<()> {
        let c = self.client_of(host_id).await?;
        let (d, sds, spm_id) = {
            let _g = self.write_lock.lock().await;
            let (d, sds, h, used) = self.pool_view(dc, host_id)?;
            let mut spm_id = h.spm_id;
            if spm_id == 0 || used.contains(&spm_id) {
                spm_id = free_host_id(&used).ok_or_else(|| {
                    StorageOpError::Conflict(
                        "250 hosts already have ids in this data center".into(),
                    )
                })?;
                self.update(host_id, |h: &mut Host| h.spm_id = spm_id)
                    .await
                    .map_err(|e| StorageOpError::Failed(e.to_string()))?;
            }
            (d, sds, spm_id)
        };
        let Some(master) = d.master_domain.clone() else {
            return Ok(());
        };
        for sd in &sds {
            if fresh {
                let _ = c
                    .call_value(
                        "StoragePool.disconnectStorageServer",
                        json!({"storagepoolID": blank(), "domainType": sd.domain_type(),
                               "connectionParams": [connection_params(sd)]}),
                    )
                    .await;
            }
            self.connect_domain_server(&c, sd).await?;
        }
        let dict: serde_json::Map<String, Value> = sds
            .iter()
            .map(|s| {
                let st = if s.status == "active" || s.status == "locked" {
                    "active"
                } else {
                    "attached"
                };
                (s.id.clone(), Value::from(st))
            })
            .collect();
        let r = c
            .call_value(
                "StoragePool.connect",
                json!({"storagepoolID": dc, "hostID": spm_id, "scsiKey": dc, "masterSdUUID": master,
                       "masterVersion": d.master_version.max(1), "domainDict": dict}),
            )
            .await;
        if let Err(e) = r {
            // A host still connected from before (the Manager restarted) is fine.
            let pools = c
                .call_value("Host.getConnectedStoragePools", json!({}))
                .await
                .unwrap_or(Value::Null);
            let already = pools
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(dc)));
            if !already {
                return Err(StorageOpError::Failed(format!("StoragePool.connect: {e}")));
            }
        }
        self.pools()
            .connected
            .insert((dc.to_string(), host_id.to_string()));
        info!(host = %self.host_name(host_id), host_id = spm_id, "connected to the storage pool");
        let back = self
            .update(host_id, |h: &mut Host| {
                let was = h.status == "non_operational";
                if was {
                    h.status = "up".into();
                    h.status_detail.clear();
                }
                (was, h.name.clone())
            })
            .await;
        if let Ok(Some((true, name))) = back {
            {
                self.event(
                    9002,
                    "normal",
                    format!(
                        "Host {name} reaches every storage domain of Data Center {} again; it is up.",
                        self.dc_name(dc)
                    ),
                    Some(host_id),
                    None,
                )
                .await;
            }
        }
        Ok(())
    }

    async fn host_cannot_reach_storage(&self, dc: &str, host_id: &str, why: &str) {
        let r = self
            .update(host_id, |h: &mut Host| {
                if h.status == "non_operational" {
                    return None;
                }
                h.status = "non_operational".into();
                h.status_detail = "storage_domain_unreachable".into();
                Some(h.name.clone())
            })
            .await;
        let Ok(Some(Some(name))) = r else { return };
        warn!(host = %name, error = why, "host cannot reach the pool");
        self.event(
            9001,
            "error",
            format!(
                "Host {name} cannot access the Storage Domain(s) attached to the Data Center {}. Setting Host state to Non-Operational. ({why})",
                self.dc_name(dc)
            ),
            Some(host_id),
            None,
        )
        .await;
    }

    /// Each host of the data center's SPM status: `spm`, `contending` or none.
    pub(crate) async fn set_spm_status(
        &self,
        dc: &str,
        spm: Option<&str>,
        contending: Option<&str>,
    ) {
        let hosts: Vec<String> = self
            .read()
            .hosts_of_dc(dc)
            .into_iter()
            .map(|h| h.id.clone())
            .collect();
        for h in hosts {
            let s = if Some(h.as_str()) == spm {
                "spm"
            } else if Some(h.as_str()) == contending {
                "contending"
            } else {
                "none"
            };
            // Only the SPM status: a concurrent change of the host stays.
            let _ = self
                .update(&h, |h: &mut Host| h.spm_status = s.into())
                .await;
        }
    }

    /// The SPM still holds its role? If not (or it does not answer), the role is free
    /// for an election.
    async fn check_spm(self: &Arc<Self>, dc: &str, spm: &str, host_up: bool) {
        let name = self.host_name(spm);
        let lost = if !host_up {
            Some(format!("Host {name} is not responding"))
        } else {
            match self.host_client(spm).await {
                None => Some(format!("Host {name} is not connected")),
                Some(c) => match c
                    .call_value("StoragePool.getSpmStatus", json!({"storagepoolID": dc}))
                    .await
                {
                    Ok(v) if spm_state(&v).0 == "SPM" => {
                        let lver = spm_state(&v).1;
                        let _ = self
                            .update(dc, |d: &mut DataCenter| d.spm_lver = lver)
                            .await;
                        None
                    }
                    Ok(v) => Some(format!(
                        "Host {name} reports SPM status {:?}",
                        spm_state(&v).0
                    )),
                    Err(e) => Some(format!("Host {name} did not answer getSpmStatus: {e}")),
                },
            }
        };
        let Some(why) = lost else { return };
        let d = self
            .update(dc, |d: &mut DataCenter| {
                // Only if it is still the SPM we checked.
                if d.spm.as_deref() == Some(spm) {
                    d.spm = None;
                }
                d.clone()
            })
            .await;
        let Ok(Some(d)) = d else { return };
        self.set_spm_status(dc, None, None).await;
        self.event(
            9010,
            "warning",
            format!(
                "{why}: Data Center {} has no SPM; electing a new one. A new SPM can start only once sanlock lets it take the lease (released, or expired on the old host).",
                d.name
            ),
            Some(spm),
            None,
        )
        .await;
    }

    /// Elects an SPM: candidates one at a time until one holds the role.
    async fn elect_spm(self: &Arc<Self>, dc: &str) {
        let (d, hosts) = {
            let inv = self.read();
            let Some(d) = inv.data_centers.get(dc).cloned() else {
                return;
            };
            let hosts: Vec<(String, i32)> = inv
                .hosts_of_dc(dc)
                .into_iter()
                .filter(|h| h.status == "up")
                .map(|h| (h.id.clone(), h.spm_priority))
                .collect();
            (d, hosts)
        };
        if d.spm.is_some() {
            return;
        }
        let hosts: Vec<(String, i32)> = hosts
            .into_iter()
            .filter(|(h, _)| self.pool_connected(dc, h))
            .collect();
        let mut order = spm_candidates(&hosts);
        if let Some(f) = self.pools().forced.remove(dc) {
            order.retain(|h| *h != f);
            order.insert(0, f);
        }
        if order.is_empty() {
            return;
        }
        // A host that already is SPM (the Manager restarted, or a lost answer) is adopted.
        for h in &order {
            if let Some(c) = self.host_client(h).await {
                if let Ok(v) = c
                    .call_value("StoragePool.getSpmStatus", json!({"storagepoolID": dc}))
                    .await
                {
                    if spm_state(&v).0 == "SPM" {
                        let lver = spm_state(&v).1;
                        self.became_spm(dc, h, lver).await;
                        return;
                    }
                }
            }
        }
        for h in order {
            match self.try_spm_start(&d, &h).await {
                Ok(lver) => {
                    self.became_spm(dc, &h, lver).await;
                    return;
                }
                Err(e) => {
                    self.set_spm_status(dc, None, None).await;
                    self.event(
                        9011,
                        "warning",
                        format!(
                            "Failed to start the SPM on Host {} of Data Center {}: {e}",
                            self.host_name(&h),
                            d.name
                        ),
                        Some(&h),
                        None,
                    )
                    .await;
                }
            }
        }
    }

    async fn became_spm(&self, dc: &str, host: &str, lver: i64) {
        let spm_id = self.read().hosts.get(host).map(|h| h.spm_id).unwrap_or(0);
        let d = self
            .update(dc, |d: &mut DataCenter| {
                d.spm = Some(host.to_string());
                d.spm_lver = lver;
                d.spm_prev_id = i64::from(spm_id);
                d.clone()
            })
            .await;
        let Ok(Some(d)) = d else { return };
        self.pools().checked.insert(dc.to_string(), Instant::now());
        self.set_spm_status(dc, Some(host), None).await;
        let addr = self
            .read()
            .hosts
            .get(host)
            .map(|h| h.address.clone())
            .unwrap_or_default();
        self.event(
            204,
            "normal",
            format!(
                "Storage Pool Manager runs on Host {} (Address: {addr}), Data Center {}.",
                self.host_name(host),
                d.name
            ),
            Some(host),
            None,
        )
        .await;
    }

    /// spmStart on a host and wait for its task; returns the lease version.
    async fn try_spm_start(&self, d: &DataCenter, host: &str) -> Result<i64> {
        let c = self.client_of(host).await?;
        self.set_spm_status(&d.id, None, Some(host)).await;
        let prev_id = if d.spm_prev_id > 0 { d.spm_prev_id } else { -1 };
        let task = match c
            .call_value(
                "StoragePool.spmStart",
                json!({"storagepoolID": d.id, "prevID": prev_id, "prevLver": d.spm_lver.to_string(),
                       "enableScsiFencing": "false", "maxHostID": 250, "domVersion": "5"}),
            )
            .await
        {
            Ok(t) => t.as_str().unwrap_or_default().to_string(),
            Err(e) if rpc_code(&e) == Some(ALREADY_SPM) => String::new(),
            Err(e) => return Err(StorageOpError::Failed(e.to_string())),
        };
        let started = Instant::now();
        let mut told = false;
        while !task.is_empty() {
            let st = c
                .call_value("Task.getStatus", json!({"taskID": task}))
                .await
                .map_err(|e| StorageOpError::Failed(format!("following spmStart: {e}")))?;
            if st["taskState"] == "finished" {
                let _ = c.call_value("Task.clear", json!({"taskID": task})).await;
                if st["taskResult"] != "success" {
                    return Err(StorageOpError::Failed(
                        st["message"]
                            .as_str()
                            .unwrap_or("spmStart failed")
                            .to_string(),
                    ));
                }
                break;
            }
            if !told && started.elapsed() > Duration::from_secs(3) {
                told = true;
                self.event(
                    9012,
                    "normal",
                    format!(
                        "Host {} is contending for the SPM of Data Center {}: sanlock grants the lease only when the previous holder released it or its host id expired.",
                        self.host_name(host),
                        d.name
                    ),
                    Some(host),
                    None,
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let v = c
            .call_value("StoragePool.getSpmStatus", json!({"storagepoolID": d.id}))
            .await
            .map_err(|e| StorageOpError::Failed(e.to_string()))?;
        let (status, lver) = spm_state(&v);
        if status != "SPM" {
            return Err(StorageOpError::Failed(format!(
                "spmStart ended but the host reports {status:?}"
            )));
        }
        Ok(lver)
    }

    /// forceselectspm: the admin's choice becomes SPM: the current one (if it answers)
    /// stops first, then the chosen host contends (sanlock still decides).
    pub async fn force_select_spm(self: &Arc<Self>, host_id: &str) -> Result<()> {
        let (dc, h) = {
            let inv = self.read();
            let h = inv
                .hosts
                .get(host_id)
                .cloned()
                .ok_or_else(|| StorageOpError::NotFound(format!("Host {host_id} not found")))?;
            let dc = inv
                .dc_of_cluster(&h.cluster)
                .map(str::to_string)
                .ok_or_else(|| StorageOpError::Conflict("the host has no data center".into()))?;
            (dc, h)
        };
        if h.status != "up" || !self.pool_connected(&dc, host_id) {
            return Err(StorageOpError::Conflict(format!(
                "Cannot force select SPM. Host {} is not up or not connected to the storage pool.",
                h.name
            )));
        }
        if h.spm_priority < 0 {
            return Err(StorageOpError::Conflict(format!(
                "Cannot force select SPM. Host {} has SPM priority -1 (never).",
                h.name
            )));
        }
        let d = self.read().data_centers.get(&dc).cloned();
        let Some(d) = d else {
            return Err(StorageOpError::NotFound("data center".into()));
        };
        if d.spm.as_deref() == Some(host_id) {
            return Ok(());
        }
        if self.pools().electing.contains(&dc) {
            return Err(StorageOpError::Conflict(
                "Cannot force select SPM: an SPM election is running.".into(),
            ));
        }
        if let Some(old) = d.spm.clone() {
            if let Some(c) = self.host_client(&old).await {
                c.call_value("StoragePool.spmStop", json!({"storagepoolID": dc}))
                    .await
                    .map_err(|e| {
                        StorageOpError::Conflict(format!(
                            "Cannot force select SPM: the current SPM did not stop: {e}"
                        ))
                    })?;
            }
            let _ = self
                .update(&dc, |d: &mut DataCenter| {
                    if d.spm.as_deref() == Some(old.as_str()) {
                        d.spm = None;
                    }
                })
                .await;
        }
        self.pools().forced.insert(dc.clone(), host_id.to_string());
        self.event(
            9013,
            "normal",
            format!(
                "Host {} was force selected by admin@internal to become the SPM of Data Center {}.",
                h.name, d.name
            ),
            Some(host_id),
            None,
        )
        .await;
        Ok(())
    }

    /// The SPM of a data center and its client, or a clear fault.
    pub async fn spm_client(&self, dc: &str) -> Result<(String, Arc<Client>)> {
        let (spm, name) = {
            let inv = self.read();
            let d = inv
                .data_centers
                .get(dc)
                .ok_or_else(|| StorageOpError::NotFound(format!("data center {dc}")))?;
            (d.spm.clone(), d.name.clone())
        };
        let spm = spm.ok_or_else(|| {
            StorageOpError::Conflict(format!(
                "Cannot run the storage operation: Data Center {name} has no SPM right now (its status is being resolved; retry shortly)."
            ))
        })?;
        let c = self.host_client(&spm).await.ok_or_else(|| {
            StorageOpError::Conflict(format!("the SPM of Data Center {name} is not connected"))
        })?;
        Ok((spm, c))
    }

    async fn refresh_domain_sizes(&self, dc: &str) {
        let Ok((_, c)) = self.spm_client(dc).await else {
            return;
        };
        let sds: Vec<String> = self
            .read()
            .storage_domains
            .values()
            .filter(|s| s.data_center.as_deref() == Some(dc) && s.status == "active")
            .map(|s| s.id.clone())
            .collect();
        for sd in sds {
            if let Ok(st) = c
                .call_value("StorageDomain.getStats", json!({"storagedomainID": sd}))
                .await
            {
                let _ = self
                    .update(&sd, |sd: &mut StorageDomain| apply_domain_stats(sd, &st))
                    .await;
            }
        }
    }

    // ----- storage tasks ---------------------------------------------------------------

    /// Sends an SPM verb that returns a task, recording it first so that a restarted
    /// Manager finishes it.
    pub async fn submit_task(&self, mut t: StorageTask, verb: &str, params: Value) -> Result<()> {
        let (spm, c) = self.spm_client(&t.data_center).await?;
        t.host = Some(spm.clone());
        self.pools().sending.insert(t.id.clone());
        let saved = self.insert(&t).await;
        if let Err(e) = saved {
            self.pools().sending.remove(&t.id);
            return Err(StorageOpError::Failed(e.to_string()));
        }
        let r = c.call_value(verb, params).await;
        let out = match r {
            Ok(v) => {
                let vt = v.as_str().map(str::to_string);
                self.update(&t.id, |t: &mut StorageTask| t.vdsm_task = vt)
                    .await
                    .map(|_| ())
                    .map_err(|e| StorageOpError::Failed(e.to_string()))
            }
            Err(e) => {
                let _ = self.remove::<StorageTask>(&t.id).await;
                Err(StorageOpError::Failed(format!("{verb} on the SPM: {e}")))
            }
        };
        self.pools().sending.remove(&t.id);
        out
    }

    /// One pass over the storage tasks.
    async fn follow_tasks(self: &Arc<Self>) {
        let tasks: Vec<StorageTask> = self.read().tasks.values().cloned().collect();
        for t in tasks {
            if self.pools().sending.contains(&t.id) {
                continue;
            }
            if let Err(e) = self.follow_task(&t).await {
                debug!(task = %t.id, error = %e, "task not resolved yet");
            }
        }
    }

    async fn follow_task(self: &Arc<Self>, t: &StorageTask) -> Result<()> {
        let (spm, c) = self.spm_client(&t.data_center).await?;
        if t.host.as_deref() == Some(spm.as_str()) {
            if let Some(vt) = &t.vdsm_task {
                match c.call_value("Task.getStatus", json!({"taskID": vt})).await {
                    Ok(st) if st["taskState"] != "finished" => return Ok(()),
                    Ok(_) => {
                        let _ = c.call_value("Task.clear", json!({"taskID": vt})).await;
                    }
                    Err(e) if rpc_code(&e) == Some(UNKNOWN_TASK) => {}
                    Err(e) => return Err(StorageOpError::Failed(e.to_string())),
                }
            } else if spm_busy(&c).await? {
                return Ok(());
            }
        } else if spm_busy(&c).await? {
            // A new SPM: its garbage collection rolled back the old one's half-done
            // work before it took tasks; what exists now is the truth.
            return Ok(());
        }
        self.resolve_task(t, &c).await
    }

    /// Decides a task's outcome from storage, cleans up after a failure, and updates
    /// the objects it worked for.
    async fn resolve_task(self: &Arc<Self>, t: &StorageTask, c: &Client) -> Result<()> {
        let info = c
            .call_value(
                "Volume.getInfo",
                json!({"storagepoolID": t.data_center, "storagedomainID": t.domain,
                       "imageID": t.image, "volumeID": t.volume}),
            )
            .await;
        let ok = match t.kind.as_str() {
            "delete_image" => match &info {
                Err(e) if rpc_code(e).is_some() => true,
                Ok(_) => false,
                Err(e) => return Err(StorageOpError::Failed(e.to_string())),
            },
            _ => match &info {
                Ok(v) if v["legality"] == "LEGAL" => true,
                Ok(_) => {
                    // Half made: remove it (the SPM is idle, nothing writes it).
                    let verb = if t.kind == "create_snapshot_volume" {
                        json!(["Volume.delete", {"storagepoolID": t.data_center, "storagedomainID": t.domain,
                               "imageID": t.image, "volumeID": t.volume, "postZero": false, "force": true}])
                    } else {
                        json!(["Image.delete", {"storagepoolID": t.data_center, "storagedomainID": t.domain,
                               "imageID": t.image, "postZero": false, "force": true}])
                    };
                    let vt = c
                        .call_value(verb[0].as_str().unwrap_or_default(), verb[1].clone())
                        .await
                        .map_err(|e| StorageOpError::Failed(format!("cleanup: {e}")))?;
                    wait_task(c, vt.as_str().unwrap_or_default()).await?;
                    false
                }
                Err(e) if rpc_code(e).is_some() => false,
                Err(e) => return Err(StorageOpError::Failed(e.to_string())),
            },
        };
        let actual = info
            .as_ref()
            .ok()
            .and_then(|v| v["truesize"].as_str().and_then(|s| s.parse::<u64>().ok()));
        // The objects, the step and the job first, the task record last: a Manager that
        // dies in between resolves the task again (every part of task_done can be done
        // twice), instead of leaving a job whose step nobody ends.
        self.task_done(t, ok, actual).await;
        self.remove::<StorageTask>(&t.id)
            .await
            .map_err(|e| StorageOpError::Failed(e.to_string()))?;
        Ok(())
    }

    /// Applies a task's end to the objects it worked for, the job and the events.
    async fn task_done(self: &Arc<Self>, t: &StorageTask, ok: bool, actual: Option<u64>) {
        info!(task = %t.id, kind = %t.kind, ok, "storage task ended");
        let disk = self.read().disks.get(&t.disk).cloned();
        // The step (and a job of disk tasks alone) ends before the disk shows its
        // outcome: whoever sees the disk ok or gone finds its job ended too.
        self.finish_step(&t.job, &t.id, ok).await;
        if t.owner.is_none() {
            self.close_job_if_done(&t.job).await;
        }
        match t.kind.as_str() {
            "delete_image" => {
                if ok {
                    let _ = self.remove::<Disk>(&t.disk).await;
                } else {
                    let _ = self
                        .update(&t.disk, |d: &mut Disk| d.status = "illegal".into())
                        .await;
                }
            }
            "extend_volume" => {
                let _ = self
                    .update(&t.disk, |d: &mut Disk| {
                        if let (true, Some(n)) = (ok, t.new_size) {
                            d.provisioned_size = n;
                        }
                        d.status = "ok".into();
                    })
                    .await;
            }
            "create_snapshot_volume" => {
                let _ = self
                    .update(&t.disk, |d: &mut Disk| {
                        if ok && !d.volumes.contains(&t.volume) {
                            d.volumes.push(t.volume.clone());
                        }
                        d.status = "ok".into();
                    })
                    .await;
            }
            _ => {
                if ok {
                    let _ = self
                        .update(&t.disk, |d: &mut Disk| {
                            d.status = "ok".into();
                            if let Some(a) = actual {
                                d.actual_size = a;
                            }
                        })
                        .await;
                } else {
                    let _ = self.remove::<Disk>(&t.disk).await;
                }
            }
        }
        let name = disk.as_ref().map(|d| d.name.clone()).unwrap_or_default();
        let gib = |n: Option<u64>| n.unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let (code, sev, text) = match (t.kind.as_str(), ok) {
            ("extend_volume", true) => (
                371,
                "normal",
                format!(
                    "Size of the disk '{name}' was successfully updated to {} GB by admin@internal.",
                    gib(t.new_size)
                ),
            ),
            ("extend_volume", false) => (
                370,
                "error",
                format!(
                    "Failed to extend size of the disk '{name}' to {} GB, User: admin@internal.",
                    gib(t.new_size)
                ),
            ),
            ("delete_image", true) => (2014, "normal", format!("Disk {name} was removed.")),
            ("delete_image", false) => (
                2015,
                "error",
                format!("Removal of disk {name} failed; the disk is illegal."),
            ),
            (_, true) => (
                2021,
                "normal",
                format!("The volume of disk {name} was created."),
            ),
            (_, false) => (
                2022,
                "error",
                format!(
                    "Creation of a volume of disk {name} failed; what was written was cleaned up."
                ),
            ),
        };
        let vm = disk.as_ref().and_then(|d| d.vm.clone());
        self.event(code, sev, text, None, vm.as_deref()).await;
        // The owner finishes when its last task ended.
        if let Some((kind, id)) = &t.owner {
            let pending = self
                .read()
                .tasks
                .values()
                .any(|x| x.id != t.id && x.owner.as_ref() == Some(&(kind.clone(), id.clone())));
            if !pending {
                self.owner_done(kind, id, &t.job).await;
            }
        }
    }

    /// A step per task in the job.
    pub async fn add_step(&self, job: &str, step: &str, description: String) {
        let _ = self
            .update(job, |j: &mut Job| {
                let number = j.steps.len() as u32 + 1;
                j.steps.push(Step {
                    id: step.to_string(),
                    description,
                    step_type: "executing".into(),
                    status: "started".into(),
                    number,
                    start_time: now_ms(),
                    end_time: None,
                });
            })
            .await;
    }

    async fn finish_step(&self, job: &str, step: &str, ok: bool) {
        let _ = self
            .update(job, |j: &mut Job| {
                for s in j.steps.iter_mut().filter(|s| s.id == step) {
                    s.status = if ok { "finished" } else { "failed" }.into();
                    s.end_time = Some(now_ms());
                }
            })
            .await;
    }

    /// Ends a job once none of its steps runs; failed if one failed.
    pub async fn close_job_if_done(&self, job: &str) {
        let j = self.read().jobs.get(job).cloned();
        let Some(j) = j else { return };
        if j.status != "started" || j.steps.iter().any(|s| s.status == "started") {
            return;
        }
        let ok = j.steps.iter().all(|s| s.status == "finished");
        self.finish_job(job, ok).await;
    }

    /// All tasks of a snapshot, template or VM ended.
    async fn owner_done(self: &Arc<Self>, kind: &str, id: &str, job: &str) {
        let failed = self
            .read()
            .jobs
            .get(job)
            .is_some_and(|j| j.steps.iter().any(|s| s.status == "failed"));
        match kind {
            "snapshot" => self.snapshot_volumes_done(id, !failed, job).await,
            "template" => {
                let t = self
                    .update(id, |t: &mut Template| {
                        t.status = if failed { "illegal" } else { "ok" }.into();
                        t.clone()
                    })
                    .await;
                if let Ok(Some(t)) = t {
                    self.event(
                        if failed { 2017 } else { 2016 },
                        if failed { "error" } else { "normal" },
                        if failed {
                            format!("Creation of Template {} failed.", t.name)
                        } else {
                            format!(
                                "Creation of Template {} from VM has been completed.",
                                t.name
                            )
                        },
                        None,
                        None,
                    )
                    .await;
                }
            }
            _ => {}
        }
        self.close_job_if_done(job).await;
    }

    /// The new leaves of a snapshot exist: a running VM switches to them (VM.snapshot);
    /// the snapshot is ok, or rolled back.
    async fn snapshot_volumes_done(self: &Arc<Self>, snap_id: &str, ok: bool, job: &str) {
        let s = self.read().snapshots.get(snap_id).cloned();
        // Done once: a task resolved again after a restart finds it decided.
        let Some(mut s) = s.filter(|s| s.status == "locked") else {
            return;
        };
        let vm = self.read().vms.get(&s.vm).cloned();
        let mut ok = ok;
        let mut why = String::new();
        if ok {
            if let Some(v) = vm.as_ref().filter(|v| v.status != "down") {
                let drives: Vec<Value> = {
                    let inv = self.read();
                    s.volumes
                        .iter()
                        .filter_map(|(disk, base)| {
                            let d = inv.disks.get(disk)?;
                            Some(json!({"domainID": d.storage_domain, "imageID": d.id,
                                        "volumeID": d.leaf(), "baseVolumeID": base}))
                        })
                        .collect()
                };
                let host = v.host.clone().unwrap_or_default();
                match self.host_client(&host).await {
                    Some(c) => {
                        if let Err(e) = c
                            .call_value("VM.snapshot", json!({"vmID": v.id, "snapDrives": drives}))
                            .await
                        {
                            ok = false;
                            why = format!("VM.snapshot: {e}");
                        }
                    }
                    None => {
                        ok = false;
                        why = "the VM's host is not connected".into();
                    }
                }
                s.live = true;
            }
        }
        if !ok {
            // Roll back: the new leaves go, the taken volumes are the leaves again.
            let disks: Vec<Disk> = {
                let inv = self.read();
                s.volumes
                    .iter()
                    .filter_map(|(d, _)| inv.disks.get(d).cloned())
                    .collect()
            };
            for d in disks {
                let base = s
                    .volumes
                    .iter()
                    .find(|(x, _)| *x == d.id)
                    .map(|(_, b)| b.clone());
                if let Some(base) = base {
                    if d.leaf() != base {
                        let top = d.leaf().to_string();
                        if let Ok((_, c)) =
                            self.spm_client(&self.dc_of_domain(&d.storage_domain)).await
                        {
                            if let Ok(t) = c
                                .call_value(
                                    "Volume.delete",
                                    json!({"storagepoolID": self.dc_of_domain(&d.storage_domain),
                                           "storagedomainID": d.storage_domain, "imageID": d.id,
                                           "volumeID": top, "postZero": false, "force": true}),
                                )
                                .await
                            {
                                let _ = wait_task(&c, t.as_str().unwrap_or_default()).await;
                            }
                        }
                        let _ = self
                            .update(&d.id, |d: &mut Disk| d.volumes.retain(|v| *v != top))
                            .await;
                    }
                }
            }
            let _ = self.remove::<Snapshot>(snap_id).await;
            self.event(
                10802,
                "error",
                format!(
                    "Failed to complete snapshot '{}' creation for VM {}. {why}",
                    s.description,
                    vm.as_ref().map(|v| v.name.as_str()).unwrap_or("")
                ),
                None,
                vm.as_ref().map(|v| v.id.as_str()),
            )
            .await;
            let _ = self
                .update(job, |j: &mut Job| {
                    if let Some(st) = j.steps.last_mut() {
                        st.status = "failed".into();
                    }
                })
                .await;
            return;
        }
        let live = s.live;
        let _ = self
            .update(snap_id, |s: &mut Snapshot| {
                s.status = "ok".into();
                s.live = live;
            })
            .await;
        self.event(
            68,
            "normal",
            format!(
                "Snapshot '{}' creation for VM {} has been completed.",
                s.description,
                vm.as_ref().map(|v| v.name.as_str()).unwrap_or("")
            ),
            None,
            vm.as_ref().map(|v| v.id.as_str()),
        )
        .await;
    }

    pub fn dc_of_domain(&self, sd: &str) -> String {
        self.read()
            .storage_domains
            .get(sd)
            .and_then(|s| s.data_center.clone())
            .unwrap_or_default()
    }
}

/// Whether the SPM runs any task (Host.getAllTasksStatuses).
async fn spm_busy(c: &Client) -> Result<bool> {
    let all = c
        .call_value("Host.getAllTasksStatuses", json!({}))
        .await
        .map_err(|e| StorageOpError::Failed(e.to_string()))?;
    Ok(all
        .as_object()
        .is_some_and(|m| m.values().any(|t| t["taskState"] != "finished")))
}

/// Waits for a task the Manager runs inline (cleanups), up to 5 minutes.
pub(crate) async fn wait_task(c: &Client, task: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = c
            .call_value("Task.getStatus", json!({"taskID": task}))
            .await
            .map_err(|e| StorageOpError::Failed(e.to_string()))?;
        if st["taskState"] == "finished" {
            let _ = c.call_value("Task.clear", json!({"taskID": task})).await;
            return if st["taskResult"] == "success" {
                Ok(())
            } else {
                Err(StorageOpError::Failed(
                    st["message"].as_str().unwrap_or("task failed").to_string(),
                ))
            };
        }
        if Instant::now() > deadline {
            return Err(StorageOpError::Failed(format!("task {task} did not end")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The connection of a domain as connectStorageServer takes it.
pub fn connection_params(sd: &StorageDomain) -> Value {
    let mut p = json!({"id": sd.connection_id, "connection": sd.connection()});
    if sd.storage_type == "posixfs" {
        p["vfs_type"] = json!(sd.vfs_type);
        p["mnt_options"] = json!(sd.mount_options);
    } else if sd.storage_type == "nfs" {
        p["vfs_type"] = json!("nfs");
        p["mnt_options"] = json!(sd.mount_options);
    }
    p
}

/// StorageDomain.getStats -> available / used.
pub fn apply_domain_stats(sd: &mut StorageDomain, st: &Value) {
    let n = |k: &str| {
        st[k]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| st[k].as_u64())
    };
    if let (Some(total), Some(free)) = (n("disktotal"), n("diskfree")) {
        sd.available = free;
        sd.used = total.saturating_sub(free);
    }
}

/// Checks a storage path the API was given: absolute, no `..`, no control characters.
pub fn check_storage_path(p: &str) -> Result<()> {
    if p.is_empty() || p.len() > 4096 {
        return Err(StorageOpError::Bad(
            "the storage path must have 1 to 4096 characters".into(),
        ));
    }
    if !p.starts_with('/') {
        return Err(StorageOpError::Bad(format!(
            "the storage path {p:?} must be absolute"
        )));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(StorageOpError::Bad(format!(
            "the storage path {p:?} must not contain '.' or '..' components"
        )));
    }
    if p.chars().any(|c| c.is_control() || c == ',' || c == '\\') {
        return Err(StorageOpError::Bad(format!(
            "the storage path {p:?} contains characters that are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_by_priority_never_minus_one() {
        let hosts = vec![
            ("a".to_string(), 5),
            ("b".to_string(), 10),
            ("c".to_string(), -1),
            ("d".to_string(), 5),
        ];
        let mut firsts_after_b = HashSet::new();
        for _ in 0..64 {
            let o = spm_candidates(&hosts);
            assert_eq!(o.len(), 3);
            assert_eq!(o[0], "b");
            assert!(!o.contains(&"c".to_string()));
            firsts_after_b.insert(o[1].clone());
        }
        // Random among equals: both 5s come second sometimes.
        assert_eq!(firsts_after_b.len(), 2);
    }

    #[test]
    fn host_ids() {
        assert_eq!(free_host_id(&[]), Some(1));
        assert_eq!(free_host_id(&[1, 2, 4]), Some(3));
        let all: Vec<u32> = (1..=250).collect();
        assert_eq!(free_host_id(&all), None);
    }

    #[test]
    fn storage_paths() {
        assert!(check_storage_path("/data/sd1").is_ok());
        for bad in ["", "data", "/data/../etc", "/data/./x", "/a\nb", "/a,b"] {
            assert!(check_storage_path(bad).is_err(), "{bad:?}");
        }
    }
}
