//! The host agent's core: VMs, their lifecycle through libvirt, events to subscribers,
//! the samplers, and recovery after a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use halyard_proto::jsonrpc::{Notification, RpcError};
use halyard_proto::vdsm::{
    errors, events, exit_reason, Capabilities, CreateParams, DestroyParams, HostStats,
    ShutdownParams, VmListEntry, VmStats, VmStatus,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, error, info, warn, Instrument};

use crate::clock;
use crate::config::Config;
use crate::domxml::{self, HalyardMeta, Prepare};
use crate::libvirt::{self, lifecycle, DomState, DomainEvent, Libvirt, VirtError};
use crate::monitor::host::{HostSampler, VmCounts};
use crate::vm::{Exit, VmEntry, VmSample};

/// Runs a blocking (libvirt) call on the blocking pool, in the caller's tracing span.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RpcError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        f()
    })
    .await
    .map_err(RpcError::internal)
}

/// A storage error as VDSM reports it.
pub fn storage_err(e: halyard_storage::StorageError) -> RpcError {
    RpcError::new(e.code(), e.to_string())
}

fn virt_err(code: halyard_proto::vdsm::ErrorCode, e: &VirtError) -> RpcError {
    code.rpc(Some(&e.message))
}

/// The agent.
pub struct Agent {
    pub cfg: Config,
    pub identity: Arc<crate::identity::Identity>,
    pub storage: Arc<halyard_storage::pool::StorageManager>,
    /// This agent's identity, kept in its state directory; written into the domains it
    /// starts so that recovery adopts exactly those.
    pub agent_id: String,
    pub virt: Arc<Libvirt>,
    vms: Mutex<HashMap<String, VmEntry>>,
    events: broadcast::Sender<Arc<Notification>>,
    ready: AtomicBool,
    host_stats: Mutex<Option<HostStats>>,
    host_sampler: Mutex<HostSampler>,
    caps: Mutex<Option<Capabilities>>,
    /// Image transfers: the data server, its tickets and NBD servers.
    pub images: Arc<crate::images::Images>,
    /// Serial consoles open now (one session per VM).
    pub consoles: Arc<crate::console::Consoles>,
    /// Migration slots.
    pub migrations: crate::migration::Migrations,
}

impl Agent {
    pub fn new(
        cfg: Config,
        identity: Arc<crate::identity::Identity>,
        agent_id: String,
        virt: Arc<Libvirt>,
    ) -> Arc<Agent> {
        let (events, _) = broadcast::channel(4096);
        let cfg_migration = cfg.migration.clone();
        let sampler = HostSampler::new(cfg.disk_stats_paths.clone());
        let storage =
            halyard_storage::pool::StorageManager::new(halyard_storage::pool::StorageConfig {
                run_dir: cfg.storage.run_dir.clone(),
                io_timeout: cfg.storage.io_timeout,
                monitor_interval: Duration::from_secs(cfg.storage.monitor_interval_secs),
                spm_watchdog_interval: Duration::from_secs(cfg.storage.spm_watchdog_interval_secs),
            });
        let images = crate::images::Images::new(
            &cfg.storage.run_dir,
            cfg.imageio.max_connections,
            cfg.imageio.max_nbd_servers,
        );
        Arc::new(Agent {
            cfg,
            identity,
            storage,
            agent_id,
            virt,
            vms: Mutex::new(HashMap::new()),
            events,
            ready: AtomicBool::new(false),
            host_stats: Mutex::new(None),
            host_sampler: Mutex::new(sampler),
            caps: Mutex::new(None),
            images,
            consoles: Arc::default(),
            migrations: crate::migration::Migrations::new(&cfg_migration),
        })
    }

    pub(crate) fn vms(&self) -> MutexGuard<'_, HashMap<String, VmEntry>> {
        // A panic while holding the lock must not take the agent down with it.
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Events for STOMP subscribers of `jms.queue.events`.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<Notification>> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, method: String, mut params: serde_json::Map<String, Value>) {
        if !self.is_ready() {
            debug!(%method, "not ready yet, dropping event");
            return;
        }
        params.insert("notify_time".into(), json!(clock::event_time()));
        let _ = self.events.send(Arc::new(Notification {
            method,
            params: Value::Object(params),
        }));
    }

    /// A refused call: a warning (rate-limited) and a `|host|access_denied|` event for
    /// the Manager (rate-limited too: a refused client cannot flood either).
    pub fn access_denied(&self, caller: &crate::authz::Caller, peer: &str, what: &str) {
        static LOG: halyard_common::limits::RateLimit =
            halyard_common::limits::RateLimit::new(10, std::time::Duration::from_secs(10));
        static EVENTS: halyard_common::limits::RateLimit =
            halyard_common::limits::RateLimit::new(10, std::time::Duration::from_secs(10));
        let who = caller.describe();
        if let Some(suppressed) = LOG.admit() {
            warn!(%peer, caller = %who, what, suppressed, "access denied");
        }
        if let Some(suppressed) = EVENTS.admit() {
            let mut p = serde_json::Map::new();
            p.insert("peer".into(), json!(peer));
            p.insert("caller".into(), json!(who));
            p.insert(
                "what".into(),
                json!(what.chars().take(200).collect::<String>()),
            );
            p.insert("suppressed".into(), json!(suppressed));
            self.emit(crate::authz::ACCESS_DENIED_EVENT.to_string(), p);
        }
    }

    /// `|virt|VM_status|<id>` with the VM's full stats or only its status.
    pub(crate) fn emit_vm_status(&self, vm: &VmEntry, full: bool) {
        let body = if full || vm.status == VmStatus::Down {
            serde_json::to_value(vm.stats()).unwrap_or(Value::Null)
        } else {
            json!({"status": vm.status})
        };
        let mut params = serde_json::Map::new();
        params.insert(vm.id.clone(), body);
        info!(vm_id = %vm.id, status = %vm.status, "VM status event");
        self.emit(events::vm_status(&vm.id), params);
    }

    pub(crate) fn update<R>(&self, id: &str, f: impl FnOnce(&mut VmEntry) -> R) -> Option<R> {
        let mut vms = self.vms();
        vms.get_mut(id).map(f)
    }

    // ----- startup -------------------------------------------------------------------

    /// Adopts the running domains this agent started (they carry its metadata); stops
    /// none of them. Until it finishes, every verb answers "recovering" (99).
    pub async fn recover(self: &Arc<Self>) -> Result<usize, RpcError> {
        let virt = self.virt.clone();
        let found = blocking(
            move || -> Result<Vec<(String, DomState, Option<u32>)>, VirtError> {
                let mut out = Vec::new();
                for d in virt.list_active()? {
                    let xml = match d.xml_desc(0) {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "cannot read a domain's XML during recovery");
                            continue;
                        }
                    };
                    let state = libvirt::dom_state(&d);
                    let name = d.name().unwrap_or_default();
                    out.push((xml, state, libvirt::qemu_pid(&name)));
                }
                Ok(out)
            },
        )
        .await?
        .map_err(|e| virt_err(errors::RECOVERY, &e))?;
        let mut adopted = 0;
        {
            let mut vms = self.vms();
            for (xml, state, pid) in found {
                let info = match domxml::parse(&xml) {
                    Ok(i) => i,
                    Err(e) => {
                        warn!(error = %e, "skipping a domain with unreadable XML");
                        continue;
                    }
                };
                let Some(meta) = info.halyard.clone().filter(|m| m.agent_id == self.agent_id)
                else {
                    debug!(name = %info.name, "not ours, leaving it alone");
                    continue;
                };
                let mut e = VmEntry::new(info, xml, meta.start_time);
                e.pid = pid;
                e.guest_agent_up = true;
                e.set_status(match state {
                    DomState::Paused => VmStatus::Paused,
                    _ => VmStatus::Up,
                });
                info!(vm_id = %e.id, name = %e.name, status = %e.status, "recovered VM");
                vms.insert(e.id.clone(), e);
                adopted += 1;
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(adopted)
    }

    /// Starts the event processor and the samplers.
    pub fn spawn_background(self: &Arc<Self>, mut rx: mpsc::UnboundedReceiver<DomainEvent>) {
        let weak = Arc::downgrade(self);
        self.storage.set_event_sink(Arc::new(move |method, params| {
            if let (Some(me), Value::Object(m)) = (weak.upgrade(), params) {
                me.emit(method, m);
            }
        }));
        self.storage.spawn_background();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                me.on_domain_event(ev);
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(me.cfg.monitoring.vm_stats_interval_secs);
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                me.sample_vms().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            // A first sample after one second, then on the configured interval.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let every = Duration::from_secs(me.cfg.monitoring.host_stats_interval_secs);
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                me.sample_host().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                me.poll_guests().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                me.powering_up_timeouts();
            }
        });
    }

    fn powering_up_timeouts(self: &Arc<Self>) {
        let limit = self.cfg.monitoring.powering_up_timeout_secs as f64;
        let dest_limit = self.cfg.migration.destination_timeout_secs as f64;
        let now = clock::monotonic_secs();
        let mut changed = Vec::new();
        {
            let mut vms = self.vms();
            for e in vms.values_mut() {
                // An incoming migration that never ended (VDSM's
                // migration_destination_timeout): the half-arrived VM goes.
                if e.status == VmStatus::MigrationDestination
                    && e.incoming
                        .as_ref()
                        .is_some_and(|i| now - i.since_mono >= dest_limit)
                {
                    e.incoming = None;
                    e.set_down(Exit::new(
                        1,
                        exit_reason::MIGRATION_FAILED,
                        Some(format!(
                            "the incoming migration did not end within {dest_limit} s"
                        )),
                    ));
                    warn!(vm_id = %e.id, "incoming migration timed out; destroying it");
                    let virt = self.virt.clone();
                    let id = e.id.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Ok(d) = virt.lookup(&id) {
                            let _ = d.destroy();
                        }
                    });
                    changed.push(e.clone());
                    continue;
                }
                if e.status == VmStatus::PoweringUp && now - e.start_mono >= limit {
                    e.set_status(VmStatus::Up);
                    changed.push(e.clone());
                }
            }
        }
        for e in changed {
            self.emit_vm_status(&e, true);
        }
    }

    /// Asks the guest agents what is due (see [`crate::guestinfo`]); a change of the
    /// agent's availability or of what it reports is published as a VM_status event.
    async fn poll_guests(self: &Arc<Self>) {
        use crate::guestinfo::{self, Kind};
        let now = clock::monotonic_secs();
        let todo: Vec<(String, Vec<Kind>)> = self
            .vms()
            .values()
            .filter(|e| matches!(e.status, VmStatus::Up | VmStatus::PoweringUp))
            .map(|e| (e.id.clone(), guestinfo::due(&e.guest, e.start_mono, now)))
            .filter(|(_, k)| !k.is_empty())
            .collect();
        // One task per VM (each waits at most 1 s per command); the round ends when
        // all did, so rounds never overlap.
        let mut set = tokio::task::JoinSet::new();
        for (id, kinds) in todo {
            let me = self.clone();
            set.spawn(async move { me.poll_guest(id, kinds, now).await });
        }
        while set.join_next().await.is_some() {}
    }

    async fn poll_guest(&self, id: String, kinds: Vec<crate::guestinfo::Kind>, now: f64) {
        use crate::guestinfo::{self, Kind};
        let virt = self.virt.clone();
        let vid = id.clone();
        let answers = blocking(move || -> Vec<(Kind, Result<Value, String>)> {
            let dom = match virt.lookup(&vid) {
                Ok(d) => d,
                Err(e) => return kinds.iter().map(|k| (*k, Err(e.to_string()))).collect(),
            };
            let mut out = Vec::new();
            for (i, k) in kinds.iter().enumerate() {
                let cmd = json!({"execute": k.command()}).to_string();
                let r = dom
                    .qemu_agent_command(&cmd, 1, 0)
                    .map_err(|e| e.to_string())
                    .and_then(|a| guestinfo::result_of(&a));
                if i == 0 {
                    if let Err(e) = &r {
                        // No agent: do not wait for each command to time out.
                        return kinds.iter().map(|k| (*k, Err(e.clone()))).collect();
                    }
                }
                out.push((*k, r));
            }
            out
        })
        .await
        .unwrap_or_default();
        let changed = self.update(&id, |e| {
            let before = e.guest.clone();
            let any_ok = answers.iter().any(|(_, r)| r.is_ok());
            for (k, r) in &answers {
                match r {
                    Ok(v) => guestinfo::apply(&mut e.guest, *k, now, v),
                    Err(_) => guestinfo::mark_asked(&mut e.guest, *k, now),
                }
            }
            e.guest.agent_ok = Some(any_ok);
            if before.agent_ok != e.guest.agent_ok {
                info!(vm_id = %e.id, available = any_ok, "guest agent availability changed");
            }
            let mut a = before;
            let mut b = e.guest.clone();
            a.asked = [0.0; 7];
            b.asked = [0.0; 7];
            (a != b).then(|| e.clone())
        });
        if let Some(Some(e)) = changed {
            self.emit_vm_status(&e, true);
        }
    }

    async fn sample_vms(&self) {
        let virt = self.virt.clone();
        let stats = match blocking(move || virt.bulk_stats()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(error = %e, "bulk stats failed");
                return;
            }
            Err(e) => {
                warn!(error = %e, "bulk stats task failed");
                return;
            }
        };
        let now = clock::monotonic_secs();
        let mut vms = self.vms();
        for raw in stats {
            if let Some(e) = vms.get_mut(&raw.uuid) {
                let s = VmSample::new(raw, now, e.sample.as_ref());
                e.sample = Some(s);
            }
        }
    }

    async fn sample_host(self: &Arc<Self>) {
        let me = self.clone();
        let counts = self.vm_counts();
        let r = blocking(move || {
            let mut s = me.host_sampler.lock().unwrap_or_else(|p| p.into_inner());
            s.sample(counts)
        })
        .await;
        if let Ok(stats) = r {
            *self.host_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        }
    }

    fn vm_counts(&self) -> VmCounts {
        let vms = self.vms();
        VmCounts {
            total: vms.len() as u64,
            active: vms.values().filter(|v| v.status.is_running()).count() as u64,
            migrating: vms
                .values()
                .filter(|v| v.status == VmStatus::MigrationSource)
                .count() as u64,
        }
    }

    // ----- libvirt events --------------------------------------------------------------

    fn on_domain_event(self: &Arc<Self>, ev: DomainEvent) {
        debug!(?ev, "libvirt event");
        match ev {
            DomainEvent::Lifecycle {
                uuid,
                event,
                detail,
            } => self.on_lifecycle(&uuid, event, detail),
            DomainEvent::Reboot { uuid } => {
                let limit = self.cfg.monitoring.powering_up_timeout_secs;
                let e = self.update(&uuid, |e| {
                    e.guest_agent_up = false;
                    e.start_mono = clock::monotonic_secs();
                    let target = if limit == 0 {
                        VmStatus::Up
                    } else {
                        VmStatus::PoweringUp
                    };
                    e.set_status(target).then(|| e.clone())
                });
                if let Some(Some(e)) = e {
                    self.emit_vm_status(&e, true);
                }
            }
            DomainEvent::Agent { uuid, connected } => {
                let e = self.update(&uuid, |e| {
                    e.guest_agent_up = connected;
                    if connected && e.status == VmStatus::PoweringUp {
                        e.set_status(VmStatus::Up);
                        return Some(e.clone());
                    }
                    None
                });
                if let Some(Some(e)) = e {
                    self.emit_vm_status(&e, true);
                }
            }
            DomainEvent::JobCompleted { uuid, stats } => self.on_job_completed(&uuid, &stats),
            DomainEvent::ConnectionClosed { reason } => {
                // VDSM's answer too: without libvirt the agent cannot manage VMs; exit so
                // the supervisor restarts it, and recovery adopts the running VMs.
                error!(reason, "the libvirt connection was closed; exiting");
                std::process::exit(2);
            }
        }
    }

    fn on_lifecycle(self: &Arc<Self>, uuid: &str, event: i32, detail: i32) {
        let limit = self.cfg.monitoring.powering_up_timeout_secs as f64;
        let mut adopt = false;
        let changed = self.update(uuid, |e| {
            let before = e.status;
            match event {
                lifecycle::STARTED if e.status == VmStatus::WaitForLaunch => {
                    e.set_status(VmStatus::PoweringUp);
                }
                // The source pauses at the switch-over and resumes if it fails: the
                // migration's end decides its status.
                lifecycle::SUSPENDED | lifecycle::RESUMED
                    if e.status == VmStatus::MigrationSource => {}
                // An arriving VM runs here now (or arrived paused).
                lifecycle::RESUMED if e.status == VmStatus::MigrationDestination => {
                    e.incoming = None;
                    e.arriving_from = None;
                    e.set_status(VmStatus::Up);
                    adopt = true;
                }
                lifecycle::SUSPENDED
                    if e.status == VmStatus::MigrationDestination
                        && detail != lifecycle::SUSPENDED_MIGRATED =>
                {
                    e.incoming = None;
                    e.arriving_from = None;
                    e.set_status(VmStatus::Paused);
                    adopt = true;
                }
                lifecycle::STOPPED if e.status == VmStatus::MigrationDestination => {
                    e.incoming = None;
                    e.set_down(Exit::new(1, exit_reason::MIGRATION_FAILED, None));
                }
                lifecycle::SUSPENDED if e.status.is_running() => {
                    e.set_status(VmStatus::Paused);
                }
                lifecycle::RESUMED
                    if e.status.is_running() && e.status != VmStatus::PoweringDown =>
                {
                    let up = e.guest_agent_up || clock::monotonic_secs() - e.start_mono >= limit;
                    e.set_status(if up {
                        VmStatus::Up
                    } else {
                        VmStatus::PoweringUp
                    });
                }
                lifecycle::STOPPED => {
                    let exit = if e.admin_stop {
                        Exit::new(0, exit_reason::ADMIN_SHUTDOWN, None)
                    } else {
                        match detail {
                            lifecycle::STOPPED_SHUTDOWN => {
                                Exit::new(0, exit_reason::USER_SHUTDOWN, None)
                            }
                            lifecycle::STOPPED_DESTROYED => Exit::new(
                                1,
                                exit_reason::GENERIC_ERROR,
                                Some("VM was destroyed outside the host agent".into()),
                            ),
                            lifecycle::STOPPED_MIGRATED => {
                                Exit::new(0, exit_reason::MIGRATION_SUCCEEDED, None)
                            }
                            lifecycle::STOPPED_SAVED => {
                                Exit::new(0, exit_reason::SAVE_STATE_SUCCEEDED, None)
                            }
                            _ => Exit::new(
                                1,
                                exit_reason::LOST_QEMU_CONNECTION,
                                Some(format!("QEMU process ended (libvirt detail {detail})")),
                            ),
                        }
                    };
                    if e.status != VmStatus::Down {
                        e.set_down(exit);
                    }
                }
                _ => {}
            }
            (e.status != before).then(|| e.clone())
        });
        if adopt {
            self.adopt_incoming(uuid);
        }
        if let Some(Some(e)) = changed {
            let full = matches!(e.status, VmStatus::Up | VmStatus::PoweringUp);
            self.emit_vm_status(&e, full);
        }
    }

    // ----- verbs -------------------------------------------------------------------------

    pub(crate) fn entry(&self, id: &str) -> Result<VmEntry, RpcError> {
        self.vms().get(id).cloned().ok_or_else(|| errors::no_vm(id))
    }

    pub fn vm_list(&self, filter: &[String], with_xml: bool) -> Vec<VmListEntry> {
        let vms = self.vms();
        let mut out: Vec<VmListEntry> = vms
            .values()
            .filter(|v| filter.is_empty() || filter.iter().any(|f| f == &v.id))
            .map(|v| v.list_entry(with_xml))
            .collect();
        out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        out
    }

    pub fn vm_stats(&self, id: &str) -> Result<VmStats, RpcError> {
        Ok(self.entry(id)?.stats())
    }

    pub fn all_vm_stats(&self) -> Vec<VmStats> {
        let vms = self.vms();
        let mut out: Vec<VmStats> = vms.values().map(VmEntry::stats).collect();
        out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        out
    }

    pub async fn host_stats(self: &Arc<Self>) -> HostStats {
        let cached = self
            .host_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut s = match cached {
            Some(s) => s,
            None => {
                self.sample_host().await;
                self.host_stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default()
            }
        };
        s.storage_domains = match self.storage.repo_stats() {
            Value::Object(m) => m.into_iter().collect(),
            _ => Default::default(),
        };
        let c = self.vm_counts();
        s.vm_count = c.total;
        s.vm_active = c.active;
        s.vm_migrating = c.migrating;
        s
    }

    pub async fn capabilities(self: &Arc<Self>) -> Result<Capabilities, RpcError> {
        if let Some(c) = self.caps.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let me = self.clone();
        let mut caps = blocking(move || crate::caps::collect(&me.virt, &me.cfg)).await??;
        caps.imageio_port = self.images.port();
        *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps.clone());
        Ok(caps)
    }

    /// Where VMs' payload images are built (VDSM's /run/vdsm/payload).
    pub fn payload_dir(&self) -> std::path::PathBuf {
        self.cfg.storage.run_dir.join("payload")
    }

    /// The domain XML to start from the engine's (or, `incoming`, from a migration
    /// source's): its drives prepared and pointed at, its payloads built, checked
    /// against the host's policy.
    pub(crate) async fn build_definition(
        &self,
        xml: String,
        info: &domxml::DomainInfo,
        incoming: bool,
    ) -> Result<String, RpcError> {
        // Drives named by (pool, domain, image, volume): prepare them, fill in paths.
        let mut policy = self.cfg.vm_policy();
        let mut sources = HashMap::new();
        {
            for d in &info.drives {
                let path = self
                    .storage
                    .image_prepare(&d.domain, &d.image, &d.volume, false)
                    .await
                    .map_err(storage_err)?;
                let format = self
                    .storage
                    .volume_format(&d.domain, &d.image, &d.volume)
                    .map_err(storage_err)?;
                let path = path.to_string_lossy().into_owned();
                policy.prepared.insert(path.clone());
                sources.insert(
                    d.name.clone(),
                    domxml::DiskSource {
                        path,
                        format: format.qemu().to_string(),
                    },
                );
            }
        }
        // Payloads (cloud-init's config drive, sysprep's floppy): built here, for the
        // disks whose source is the engine's PAYLOAD: placeholder.
        for pl in &info.payloads {
            let disk = info
                .disks
                .iter()
                .find(|d| {
                    d.target == pl.name
                        && (incoming || d.source.as_deref() == Some(crate::payload::PLACEHOLDER))
                        && matches!(d.device.as_str(), "cdrom" | "floppy")
                })
                .ok_or_else(|| {
                    errors::INVALID_PARAMETER.rpc(Some(&format!(
                        "payload for {:?}: no CD-ROM or floppy of that target has the source {}",
                        pl.name,
                        crate::payload::PLACEHOLDER
                    )))
                })?;
            let floppy = disk.device == "floppy";
            let (dir, id, r) = (self.payload_dir(), info.uuid.clone(), pl.clone());
            let path = blocking(move || crate::payload::build(&dir, &id, &r, floppy))
                .await?
                .map_err(|e| match e {
                    crate::payload::PayloadError::Invalid(_) => {
                        errors::INVALID_PARAMETER.rpc(Some(&e.to_string()))
                    }
                    _ => errors::CREATE_ERR.rpc(Some(&e.to_string())),
                })?;
            let path = path.to_string_lossy().into_owned();
            info!(vm_id = %info.uuid, device = %pl.name, files = pl.files.len(), "payload image built");
            policy.prepared.insert(path.clone());
            sources.insert(
                pl.name.clone(),
                domxml::DiskSource {
                    path,
                    format: "raw".into(),
                },
            );
        }
        let xml = if sources.is_empty() {
            xml
        } else {
            domxml::set_disk_sources(&xml, &sources)
                .map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))?
        };
        // VM leases: resolved from the domain's xleases index (whatever path and offset
        // the caller wrote), only the VM's own, and only where libvirt enforces them.
        let xml = if info.leases.is_empty() {
            xml
        } else {
            let conf = self.cfg.libvirt.qemu_conf.clone();
            if !blocking(move || sanlock_lock_manager(&conf)).await? {
                return Err(errors::CREATE_ERR.rpc(Some(&format!(
                    "this host cannot hold VM leases: libvirt's lock manager is not sanlock ({} has no lock_manager = \"sanlock\")",
                    self.cfg.libvirt.qemu_conf.display()
                ))));
            }
            let mut targets = HashMap::new();
            for l in &info.leases {
                if !l.key.eq_ignore_ascii_case(&info.uuid) {
                    return Err(errors::CREATE_ERR.rpc(Some(&format!(
                        "a VM may hold only its own lease (key {:?}, VM {})",
                        l.key.chars().take(40).collect::<String>(),
                        info.uuid
                    ))));
                }
                let li = self
                    .storage
                    .lease_info(&l.lockspace, &l.key)
                    .await
                    .map_err(storage_err)?;
                let lpath = li["path"].as_str().unwrap_or_default().to_string();
                let off = li["offset"].as_u64().unwrap_or_default();
                policy.leases.insert((
                    l.key.clone(),
                    l.lockspace.clone(),
                    lpath.clone(),
                    off.to_string(),
                ));
                targets.insert(l.key.clone(), (lpath, off));
            }
            domxml::set_lease_targets(&xml, &targets)
                .map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))?
        };
        // What libvirt would do as root on the caller's word: only what the host's
        // policy allows.
        if let Err(refused) = crate::vmpolicy::check(&xml, &policy) {
            warn!(vm_id = %info.uuid, element = %refused.element, reason = %refused.reason, "VM definition refused");
            return Err(errors::CREATE_ERR.rpc(Some(&refused.to_string())));
        }
        // Serial console logs go to files whose directory may not exist yet (the policy
        // put them under the console log directory).
        if let Some(log) = domxml::parse(&xml).ok().and_then(|i| i.serial_log) {
            if let Some(dir) = std::path::Path::new(&log).parent() {
                if !dir.as_os_str().is_empty() && !dir.exists() {
                    let made = std::os::unix::fs::DirBuilderExt::mode(
                        std::fs::DirBuilder::new().recursive(true),
                        0o700,
                    )
                    .create(dir);
                    if let Err(e) = made {
                        warn!(dir = %dir.display(), error = %e, "cannot create the console log directory");
                    }
                }
            }
        }
        Ok(xml)
    }

    /// The XML to hand libvirt: this host's domain type, this agent's metadata with the
    /// VM's start time.
    pub(crate) fn with_agent_meta(&self, xml: &str, start_wall: f64) -> Result<String, RpcError> {
        domxml::prepare(
            xml,
            &Prepare {
                domain_type: &self.cfg.libvirt.domain_type,
                meta: HalyardMeta {
                    start_time: start_wall,
                    agent_id: self.agent_id.clone(),
                },
            },
        )
        .map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))
    }

    pub async fn vm_create(self: &Arc<Self>, p: CreateParams) -> Result<VmListEntry, RpcError> {
        let xml = p
            .vm_params
            .xml
            .clone()
            .ok_or_else(|| errors::MISS_PARAM.rpc(Some("{'name': 'xml'}")))?;
        let info =
            domxml::parse(&xml).map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))?;
        for given in [&p.vm_id, &p.vm_params.vm_id].into_iter().flatten() {
            if !given.eq_ignore_ascii_case(&info.uuid) {
                return Err(errors::INVALID_PARAMETER.rpc(Some(&format!(
                    "vmID {given} does not match the domain's uuid {}",
                    info.uuid
                ))));
            }
        }
        let xml = self.build_definition(xml, &info, false).await?;
        let start_wall = clock::wall_secs();
        let prepared = self.with_agent_meta(&xml, start_wall)?;
        let entry = {
            let mut vms = self.vms();
            if vms.contains_key(&info.uuid) {
                return Err(errors::EXIST.rpc(None));
            }
            let e = VmEntry::new(info.clone(), xml, start_wall);
            vms.insert(e.id.clone(), e.clone());
            e
        };
        info!(vm_id = %entry.id, name = %entry.name, "creating VM");
        let me = self.clone();
        let id = entry.id.clone();
        let paused = info.launch_paused;
        tokio::spawn(
            async move {
                let virt = me.virt.clone();
                let r = blocking(move || -> Result<(String, Option<u32>), VirtError> {
                    let d = virt.create(&prepared, paused)?;
                    let live = d.xml_desc(0).unwrap_or(prepared);
                    let pid = libvirt::qemu_pid(&d.name().unwrap_or_default());
                    Ok((live, pid))
                })
                .await
                .unwrap_or_else(|e| Err(VirtError::new(e.message)));
                let limit = me.cfg.monitoring.powering_up_timeout_secs;
                let e = me.update(&id, |e| {
                    match r {
                        Ok((live, pid)) => {
                            if let Ok(li) = domxml::parse(&live) {
                                e.info = li;
                            }
                            e.xml = live;
                            e.pid = pid;
                            e.start_mono = clock::monotonic_secs();
                            let s = if paused {
                                VmStatus::Paused
                            } else if limit == 0 || e.guest_agent_up {
                                VmStatus::Up
                            } else {
                                VmStatus::PoweringUp
                            };
                            // The STARTED event may have set it already; report anyway.
                            e.set_status(s);
                            info!(vm_id = %e.id, pid = ?pid, "VM started");
                        }
                        Err(err) => {
                            error!(vm_id = %e.id, error = %err, "VM failed to start");
                            e.set_down(Exit::new(
                                1,
                                exit_reason::LIBVIRT_START_FAILED,
                                Some(err.message),
                            ));
                        }
                    }
                    e.clone()
                });
                if let Some(e) = e {
                    me.emit_vm_status(&e, true);
                }
            }
            .in_current_span(),
        );
        let mut le = entry.list_entry(true);
        le.status = VmStatus::WaitForLaunch;
        Ok(le)
    }

    pub async fn vm_destroy(self: &Arc<Self>, p: DestroyParams) -> Result<bool, RpcError> {
        let was = self
            .update(&p.vm_id, |e| {
                e.admin_stop = true;
                e.shutdown_gen += 1;
                e.status
            })
            .ok_or_else(|| errors::no_vm(&p.vm_id))?;
        if was != VmStatus::Down {
            let virt = self.virt.clone();
            let id = p.vm_id.clone();
            let graceful = p.graceful_attempts.unwrap_or(1) > 0;
            let r = blocking(move || -> Result<(), VirtError> {
                let d = match virt.lookup(&id) {
                    Ok(d) => d,
                    Err(e) if e.is_no_domain() => return Ok(()),
                    Err(e) => return Err(e),
                };
                if graceful
                    && d.destroy_flags(virt_sys::VIR_DOMAIN_DESTROY_GRACEFUL)
                        .is_ok()
                {
                    return Ok(());
                }
                match d.destroy() {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let e = VirtError::from(e);
                        // Already gone is what we wanted.
                        if e.is_no_domain() || e.is_operation_invalid() {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }
                }
            })
            .await?;
            if let Err(e) = r {
                self.update(&p.vm_id, |e| e.admin_stop = false);
                return Err(virt_err(errors::DESTROY_ERR, &e));
            }
        }
        let removed = self.vms().remove(&p.vm_id);
        crate::payload::remove_for(&self.payload_dir(), &p.vm_id);
        if let Some(mut e) = removed {
            info!(vm_id = %e.id, "VM destroyed");
            if e.status != VmStatus::Down {
                e.set_down(Exit::new(0, exit_reason::ADMIN_SHUTDOWN, None));
                self.emit_vm_status(&e, false);
            }
        }
        Ok(true)
    }

    pub async fn vm_shutdown(self: &Arc<Self>, p: ShutdownParams) -> Result<bool, RpcError> {
        let target = if p.reboot {
            VmStatus::RebootInProgress
        } else {
            VmStatus::PoweringDown
        };
        let (before, gen, e) = self
            .update(&p.vm_id, |e| {
                if e.status == VmStatus::Down {
                    return Err(errors::DOWN.rpc(None));
                }
                let before = e.status;
                e.shutdown_gen += 1;
                if !p.reboot {
                    e.admin_stop = true;
                }
                e.set_status(target);
                Ok((before, e.shutdown_gen, e.clone()))
            })
            .ok_or_else(|| errors::no_vm(&p.vm_id))??;
        self.emit_vm_status(&e, false);
        info!(vm_id = %p.vm_id, reboot = p.reboot, message = ?p.message, "shutting down VM");

        // First attempt now, so that a VM that can do neither is reported at once.
        let first = self.shutdown_attempt(&p.vm_id, p.reboot, true).await?;
        let first = match first {
            Ok(()) => Ok(()),
            Err(_) => self.shutdown_attempt(&p.vm_id, p.reboot, false).await?,
        };
        if let Err(err) = first {
            let e = self.update(&p.vm_id, |e| {
                e.admin_stop = false;
                e.set_status(before);
                e.clone()
            });
            if let Some(e) = e {
                self.emit_vm_status(&e, false);
            }
            return Err(errors::UNEXPECTED.rpc(Some(&format!(
                "neither the guest agent nor ACPI could shut the VM down: {}",
                err.message
            ))));
        }
        let me = self.clone();
        let total = p
            .timeout
            .filter(|t| *t > 0)
            .map(|t| t as u64)
            .unwrap_or(self.cfg.vm.shutdown_timeout_secs);
        let retry = p
            .delay
            .filter(|d| *d > 0)
            .map(|d| d as u64)
            .unwrap_or(self.cfg.vm.shutdown_retry_secs)
            .min(total.max(1));
        let id = p.vm_id.clone();
        let force = p.force;
        let reboot = p.reboot;
        tokio::spawn(
            async move {
                let deadline = clock::monotonic_secs() + total as f64;
                let mut next_retry = clock::monotonic_secs() + retry as f64;
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let state = me.vms().get(&id).map(|e| (e.status, e.shutdown_gen));
                    match state {
                        None => return,
                        Some((_, g)) if g != gen => return,
                        Some((s, _)) if s != target => return, // done (Down, or rebooted)
                        _ => {}
                    }
                    let now = clock::monotonic_secs();
                    if now >= deadline {
                        break;
                    }
                    if now >= next_retry {
                        // The first ACPI press after boot can be lost; press again.
                        debug!(vm_id = %id, "shutdown retry through ACPI");
                        let _ = me.shutdown_attempt(&id, reboot, false).await;
                        next_retry = now + retry as f64;
                    }
                }
                if force && !reboot {
                    warn!(vm_id = %id, "shutdown timed out; forcing it off");
                    let _ = me
                        .vm_destroy(DestroyParams {
                            vm_id: id,
                            graceful_attempts: Some(0),
                        })
                        .await;
                    return;
                }
                warn!(vm_id = %id, "shutdown timed out; the VM keeps running");
                let e = me.update(&id, |e| {
                    if e.shutdown_gen == gen && e.status == target {
                        e.admin_stop = false;
                        e.set_status(VmStatus::Up);
                        Some(e.clone())
                    } else {
                        None
                    }
                });
                if let Some(Some(e)) = e {
                    me.emit_vm_status(&e, false);
                }
            }
            .in_current_span(),
        );
        Ok(true)
    }

    /// One shutdown or reboot request through the guest agent or ACPI.
    async fn shutdown_attempt(
        &self,
        id: &str,
        reboot: bool,
        agent: bool,
    ) -> Result<Result<(), VirtError>, RpcError> {
        let virt = self.virt.clone();
        let id = id.to_string();
        blocking(move || -> Result<(), VirtError> {
            let d = virt.lookup(&id)?;
            if reboot {
                let flags = if agent {
                    virt_sys::VIR_DOMAIN_REBOOT_GUEST_AGENT
                } else {
                    virt_sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN
                };
                d.reboot(flags)?;
            } else {
                let flags = if agent {
                    virt_sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
                } else {
                    virt_sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
                };
                d.shutdown_flags(flags)?;
            }
            Ok(())
        })
        .await
    }

    /// libvirt's live XML of a running VM of this agent.
    pub async fn live_xml(&self, id: &str) -> Result<String, RpcError> {
        let e = self.entry(id)?;
        if e.status == VmStatus::Down {
            return Err(errors::DOWN.rpc(None));
        }
        let virt = self.virt.clone();
        let id = id.to_string();
        blocking(move || -> Result<String, VirtError> {
            let d = virt.lookup(&id)?;
            d.xml_desc(0).map_err(VirtError::from)
        })
        .await?
        .map_err(|e| virt_err(errors::NO_VM, &e))
    }

    async fn domain_call(
        &self,
        id: &str,
        f: impl FnOnce(&virt::domain::Domain) -> Result<(), virt::error::Error> + Send + 'static,
    ) -> Result<(), RpcError> {
        let e = self.entry(id)?;
        if e.status == VmStatus::Down {
            return Err(errors::DOWN.rpc(None));
        }
        let virt = self.virt.clone();
        let id = id.to_string();
        blocking(move || -> Result<(), VirtError> {
            let d = virt.lookup(&id)?;
            f(&d).map_err(VirtError::from)
        })
        .await?
        .map_err(|e| virt_err(errors::UNEXPECTED, &e))
    }

    /// VM.updateDevice of a graphics device: a console password valid for `ttl`
    /// seconds (VDSM's ticket), set on the running VM.
    pub async fn vm_update_graphics(
        &self,
        id: &str,
        p: &serde_json::Value,
    ) -> Result<(), RpcError> {
        let bad = |m: &str| errors::INVALID_PARAMETER.rpc(Some(m));
        if p["deviceType"].as_str() != Some("graphics") {
            return Err(errors::NOT_IMPLEMENTED.rpc(Some(
                "VM.updateDevice: Halyard updates graphics devices only (deviceType graphics)",
            )));
        }
        let kind = match p["graphicsType"].as_str() {
            Some(k @ ("vnc" | "spice")) => k,
            _ => return Err(bad("graphicsType must be vnc or spice")),
        };
        let pw = p["password"].as_str().unwrap_or("");
        let max = if kind == "vnc" { 8 } else { 64 };
        if pw.is_empty() || pw.len() > max || !pw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "password must be printable ASCII, 1-8 characters for VNC, 1-64 for SPICE",
            ));
        }
        let ttl = p["ttl"].as_u64().unwrap_or(120);
        if ttl == 0 || ttl > 7 * 86_400 {
            return Err(bad("ttl must be 1..604800 seconds"));
        }
        let connected = match p["existingConnAction"].as_str().unwrap_or("keep") {
            c @ ("keep" | "disconnect" | "fail") => c,
            _ => return Err(bad("existingConnAction must be keep, disconnect or fail")),
        };
        let g = self
            .entry(id)?
            .info
            .graphics
            .iter()
            .find(|g| g.kind == kind)
            .cloned()
            .ok_or_else(|| bad("the VM has no such graphics device"))?;
        let until = halyard_common::text::iso8601_utc(
            (clock::wall_secs() as i64).saturating_add(ttl as i64),
        );
        let ports = if kind == "spice" && g.tls_port > 0 {
            format!(" port=\"{}\" tlsPort=\"{}\"", g.port, g.tls_port)
        } else {
            format!(" port=\"{}\"", g.port)
        };
        let xml = format!(
            "<graphics type=\"{kind}\"{ports} autoport=\"yes\" passwd=\"{}\" passwdValidTo=\"{until}\" connected=\"{connected}\"><listen type=\"address\" address=\"{}\"/></graphics>",
            quick_xml::escape::escape(pw),
            quick_xml::escape::escape(g.listen.as_str()),
        );
        self.domain_call(id, move |d| {
            d.update_device_flags(&xml, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                .map(|_| ())
        })
        .await?;
        info!(vm = id, kind, ttl, "console ticket set");
        Ok(())
    }

    /// VM.changeCD: new media (an ISO volume, prepared here) in the running VM's CD-ROM,
    /// or none.
    pub async fn vm_change_cd(&self, id: &str, spec: &serde_json::Value) -> Result<(), RpcError> {
        let bad = |m: &str| errors::INVALID_PARAMETER.rpc(Some(m));
        let name = spec["name"].as_str().unwrap_or("");
        if !(3..=4).contains(&name.len())
            || !name.bytes().all(|b| b.is_ascii_lowercase())
            || !matches!(&name[..2], "hd" | "sd")
        {
            return Err(bad(
                "cdromspec name must be the CD-ROM's device (hdX or sdX)",
            ));
        }
        let bus = match spec["iface"].as_str() {
            Some(b @ ("ide" | "sata" | "scsi")) => b,
            _ => return Err(bad("cdromspec iface must be ide, sata or scsi")),
        };
        let source = match &spec["path"] {
            serde_json::Value::String(s) if s.is_empty() => String::new(),
            serde_json::Value::Object(o) => {
                let f = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                let (sd, img, vol) = (f("domainID"), f("imageID"), f("volumeID"));
                for x in [&sd, &img, &vol] {
                    if !halyard_proto::vdsm::is_uuid(x) {
                        return Err(bad("cdromspec path needs domainID, imageID and volumeID"));
                    }
                }
                let path = self
                    .storage
                    .image_prepare(&sd, &img, &vol, false)
                    .await
                    .map_err(storage_err)?;
                format!(
                    "<source file=\"{}\"/>",
                    quick_xml::escape::escape(path.to_string_lossy().as_ref())
                )
            }
            _ => return Err(bad("cdromspec path must be an ISO volume or \"\"")),
        };
        let xml = format!(
            "<disk type=\"file\" device=\"cdrom\"><driver name=\"qemu\" type=\"raw\" error_policy=\"report\"/>{source}<target dev=\"{name}\" bus=\"{bus}\"/><readonly/></disk>"
        );
        self.domain_call(id, move |d| {
            d.update_device_flags(&xml, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                .map(|_| ())
        })
        .await?;
        info!(vm = id, media = !source.is_empty(), "CD changed");
        Ok(())
    }

    /// VM.snapshot: a live external disk snapshot onto the new volumes (already created
    /// by the SPM on top of the current leaves).
    pub async fn vm_snapshot(
        self: &Arc<Self>,
        p: halyard_proto::vdsm::storage::SnapshotParams,
    ) -> Result<bool, RpcError> {
        let e = self.entry(&p.vm_id)?;
        if !e.status.is_running() {
            return Err(errors::DOWN.rpc(None));
        }
        if p.snap_drives.is_empty() {
            return Err(errors::MISS_PARAM.rpc(Some("{'snapDrives': []}")));
        }
        let mut disks_xml = String::new();
        for d in &p.snap_drives {
            let path = self
                .storage
                .image_prepare(&d.sd, &d.img, &d.vol, false)
                .await
                .map_err(storage_err)?;
            let marker = format!("/images/{}/", d.img);
            let dev = e
                .info
                .disks
                .iter()
                .find(|x| x.source.as_deref().is_some_and(|s| s.contains(&marker)))
                .map(|x| x.target.clone())
                .ok_or_else(|| {
                    errors::INVALID_PARAMETER
                        .rpc(Some(&format!("the VM has no disk of image {}", d.img)))
                })?;
            let fmt = self
                .storage
                .volume_format(&d.sd, &d.img, &d.vol)
                .map_err(storage_err)?
                .qemu();
            disks_xml.push_str(&format!(
                "<disk name='{dev}' snapshot='external' type='file'><source file='{}'/><driver type='{fmt}'/></disk>",
                path.display()
            ));
        }
        let snap = format!("<domainsnapshot><disks>{disks_xml}</disks></domainsnapshot>");
        let virt = self.virt.clone();
        let id = p.vm_id.clone();
        let live = blocking(move || -> Result<String, VirtError> {
            let d = virt.lookup(&id)?;
            let flags = virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
                | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                | virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
            d.create_snapshot_xml(&snap, flags)?;
            Ok(d.xml_desc(0)?)
        })
        .await?
        .map_err(|e| errors::UNEXPECTED.rpc(Some(&format!("snapshot failed: {}", e.message))))?;
        self.update(&p.vm_id, |e| {
            if let Ok(li) = domxml::parse(&live) {
                e.info = li;
            }
            e.xml = live;
        });
        info!(vm_id = %p.vm_id, drives = p.snap_drives.len(), "live snapshot taken");
        Ok(true)
    }

    pub async fn vm_reset(&self, id: &str) -> Result<bool, RpcError> {
        self.domain_call(id, |d| d.reset().map(|_| ()))
            .await
            .map_err(|e| {
                if e.code == errors::UNEXPECTED.code {
                    errors::RESET_FAILED.rpc(Some(&e.message))
                } else {
                    e
                }
            })?;
        info!(vm_id = %id, "VM reset");
        Ok(true)
    }

    pub async fn vm_pause(&self, id: &str) -> Result<(), RpcError> {
        self.domain_call(id, |d| d.suspend().map(|_| ())).await?;
        let e = self.update(id, |e| e.set_status(VmStatus::Paused).then(|| e.clone()));
        if let Some(Some(e)) = e {
            self.emit_vm_status(&e, false);
        }
        Ok(())
    }

    pub async fn vm_cont(&self, id: &str) -> Result<(), RpcError> {
        self.domain_call(id, |d| d.resume().map(|_| ())).await?;
        let limit = self.cfg.monitoring.powering_up_timeout_secs as f64;
        let e = self.update(id, |e| {
            let up = e.guest_agent_up || clock::monotonic_secs() - e.start_mono >= limit;
            e.set_status(if up {
                VmStatus::Up
            } else {
                VmStatus::PoweringUp
            })
            .then(|| e.clone())
        });
        if let Some(Some(e)) = e {
            self.emit_vm_status(&e, false);
        }
        Ok(())
    }
}

/// Whether libvirt's QEMU driver uses sanlock as its lock manager (`lock_manager =
/// "sanlock"` in qemu.conf, outside comments).
pub(crate) fn sanlock_lock_manager(qemu_conf: &std::path::Path) -> bool {
    std::fs::read_to_string(qemu_conf).is_ok_and(|t| {
        t.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("").trim();
            l.split_once('=').is_some_and(|(k, v)| {
                k.trim() == "lock_manager" && v.trim().trim_matches('"') == "sanlock"
            })
        })
    })
}
