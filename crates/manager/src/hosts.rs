//! Host monitoring: one task per host keeps a connection to its agent (mutual TLS,
//! STOMP, JSON-RPC), checks it every `ping_interval_secs` (Host.ping2), samples it
//! every `stats_interval_secs` (Host.getStats, Host.getAllVmStats), and follows its
//! `|virt|VM_status|` events in between. Missed checks make the host non_responsive and
//! its VMs unknown; when it answers again both recover.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_proto::vdsm::{exit_reason, VmStats};
use serde_json::{json, Value};
use tracing::{debug, info, warn, Instrument};

use crate::model::*;

/// The event a host agent sends when it refused a call (`halyard_hostd::authz`).
const ACCESS_DENIED_EVENT: &str = "|host|access_denied|";
use crate::state::Manager;

/// Handle of a host's monitor.
pub struct MonitorHandle {
    stop: tokio::sync::watch::Sender<bool>,
    client: Arc<tokio::sync::RwLock<Option<Arc<Client>>>>,
}

impl MonitorHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// VDSM status -> API status.
pub fn api_status(vdsm: &str) -> &'static str {
    match vdsm {
        "WaitForLaunch" => "wait_for_launch",
        "Powering up" => "powering_up",
        "Up" => "up",
        "Paused" => "paused",
        "Powering down" => "powering_down",
        "RebootInProgress" => "reboot_in_progress",
        "Migration Source" | "Migration Destination" => "migrating",
        "Saving State" => "saving_state",
        "Restoring state" => "restoring_state",
        "Down" => "down",
        _ => "unknown",
    }
}

/// The least time between two samples of a host whose events lagged.
const LAG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

impl Manager {
    /// Starts monitoring a host (idempotent).
    pub fn monitor(self: &Arc<Self>, host_id: &str) {
        let mut mons = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        if mons.contains_key(host_id) {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let client = Arc::new(tokio::sync::RwLock::new(None));
        mons.insert(
            host_id.to_string(),
            MonitorHandle {
                stop: tx,
                client: client.clone(),
            },
        );
        let me = self.clone();
        let id = host_id.to_string();
        tokio::spawn(
            async move { me.monitor_loop(id, rx, client).await }
                .instrument(tracing::info_span!("host", host_id = %host_id)),
        );
    }

    pub fn unmonitor(&self, host_id: &str) {
        if let Some(h) = self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host_id)
        {
            h.stop();
        }
    }

    /// The connected client of a host, if any.
    pub async fn host_client(&self, host_id: &str) -> Option<Arc<Client>> {
        let c = self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host_id)
            .map(|h| h.client.clone())?;
        let g = c.read().await;
        g.clone()
    }

    pub async fn set_host_status(&self, host_id: &str, status: &str) -> bool {
        let r = self
            .update(host_id, |h: &mut Host| {
                (h.status != status).then(|| std::mem::replace(&mut h.status, status.to_string()))
            })
            .await;
        match r {
            Ok(Some(Some(old))) => {
                info!(from = %old, to = status, "host status");
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = %e, "cannot store the host status");
                false
            }
        }
    }

    async fn monitor_loop(
        self: Arc<Self>,
        host_id: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
        slot: Arc<tokio::sync::RwLock<Option<Arc<Client>>>>,
    ) {
        let mc = self.cfg.monitoring.clone();
        let ping_every = Duration::from_secs(mc.ping_interval_secs.max(1));
        let stats_every = Duration::from_secs(mc.stats_interval_secs.max(1));
        let timeout = Duration::from_secs(mc.ping_timeout_secs.max(1));
        let mut missed = 0u32;
        let mut last_stats: Option<Instant> = None;
        let mut tick = tokio::time::interval(ping_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    *slot.write().await = None;
                    return;
                }
            }
            let Some(host) = self.read().hosts.get(&host_id).cloned() else {
                return;
            };
            if matches!(
                host.status.as_str(),
                "pending_approval" | "maintenance" | "installing"
            ) {
                continue;
            }
            let current = slot.read().await.clone();
            let ok = match current {
                None => match tokio::time::timeout(
                    timeout,
                    Client::connect(&host.address, host.port, self.pki.host_client.clone()),
                )
                .await
                {
                    Ok(Ok(mut c)) => {
                        // No verb the Manager sends takes long (storage work runs
                        // as tasks): a host that does not answer in time is treated
                        // as not answering, not waited for.
                        c.set_timeout(Duration::from_secs(60));
                        let c = Arc::new(c);
                        *slot.write().await = Some(c.clone());
                        self.on_connected(&host_id, &c).await;
                        last_stats = None;
                        true
                    }
                    Ok(Err(e)) => {
                        debug!(error = %e, "cannot connect");
                        false
                    }
                    Err(_) => false,
                },
                Some(c) => {
                    match tokio::time::timeout(timeout, c.call_value("Host.ping2", json!({}))).await
                    {
                        Ok(Ok(_)) => true,
                        Ok(Err(e)) => {
                            debug!(error = %e, "ping failed");
                            *slot.write().await = None;
                            false
                        }
                        Err(_) => false,
                    }
                }
            };
            if ok {
                if missed >= mc.missed_pings {
                    self.event(
                        14,
                        "normal",
                        format!("Host {} is responding again.", host.name),
                        Some(&host_id),
                        None,
                    )
                    .await;
                }
                missed = 0;
                // Sample before marking the host up, so the scheduler sees its free memory.
                if last_stats.is_none_or(|t| t.elapsed() >= stats_every) {
                    if let Some(c) = slot.read().await.clone() {
                        self.sample(&host_id, &c).await;
                        self.maybe_renew_certificate(&host_id, &c).await;
                    }
                    last_stats = Some(Instant::now());
                }
                // Up only once its capabilities (memory, CPUs) are known: the
                // scheduler needs them.
                let known = self
                    .read()
                    .hosts
                    .get(&host_id)
                    .is_some_and(|h| h.memory > 0);
                let known = known
                    || match slot.read().await.clone() {
                        Some(c) => self.load_caps(&host_id, &c).await,
                        None => false,
                    };
                if known
                    && !matches!(
                        host.status.as_str(),
                        "up" | "non_operational" | "preparing_for_maintenance"
                    )
                {
                    self.set_host_status(&host_id, "up").await;
                    if host.status != "up" {
                        self.event(
                            13,
                            "normal",
                            format!("Host {} is up.", host.name),
                            Some(&host_id),
                            None,
                        )
                        .await;
                    }
                }
            } else {
                missed += 1;
                if missed == mc.missed_pings && host.status != "non_responsive" {
                    // Its VMs first: whoever sees the host non_responsive sees them unknown.
                    self.vms_unknown(&host_id).await;
                    self.set_host_status(&host_id, "non_responsive").await;
                    self.pool_forget_host(&host_id);
                    self.event(
                        12,
                        "error",
                        format!("Host {} is not responding.", host.name),
                        Some(&host_id),
                        None,
                    )
                    .await;
                }
            }
        }
    }

    /// A new connection: host details, certificate renewal when due, events.
    async fn on_connected(self: &Arc<Self>, host_id: &str, c: &Arc<Client>) {
        info!("connected to the host agent");
        // A new connection may be a restarted agent: it connects to its pool again.
        self.pool_forget_host(host_id);
        self.load_caps(host_id, c).await;
        // Follow VM status events.
        let mut rx = c.events();
        let me = self.clone();
        let hid = host_id.to_string();
        // Weak: the task must not keep a replaced connection alive (it ends when the
        // connection's events end).
        let client = Arc::downgrade(c);
        tokio::spawn(
            async move {
                let mut last_lag_sample: Option<Instant> = None;
                loop {
                    match rx.recv().await {
                        Ok(n) => {
                            if let Some(vm_id) = n.method.strip_prefix("|virt|VM_status|") {
                                if let Some(st) = n.params.get(vm_id) {
                                    me.vm_report(&hid, vm_id, st, None).await;
                                }
                            }
                            me.on_event(&hid, &n).await;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            // Events were dropped (a burst larger than the queue): the
                            // host's stats tell now what they would have told (at most
                            // once per LAG_SAMPLE_EVERY: a host flooding events does
                            // not get the Manager to sample it without pause).
                            let due = last_lag_sample
                                .is_none_or(|t: Instant| t.elapsed() >= LAG_SAMPLE_EVERY);
                            warn!(dropped = n, sampling = due, "host events lagged");
                            if due {
                                last_lag_sample = Some(Instant::now());
                                if let Some(c) = client.upgrade() {
                                    me.sample(&hid, &c).await;
                                }
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Host.getCapabilities into the host's record; false when the agent did not
    /// answer them (e.g. 99 while it recovers after a restart).
    async fn load_caps(&self, host_id: &str, c: &Arc<Client>) -> bool {
        let Ok(caps) = c.call_value("Host.getCapabilities", json!({})).await else {
            return false;
        };
        let s = |k: &str| {
            caps.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let n = |k: &str| s(k).parse::<u32>().unwrap_or(0);
        let pkg = |k: &str| {
            caps["packages2"][k]["version"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let networks = reported_networks(&caps);
        let r = self
            .update(host_id, |h: &mut Host| {
                h.networks = networks;
                h.cpu_model = s("cpuModel");
                h.cpu_speed = s("cpuSpeed");
                h.cpu_threads = n("cpuThreads");
                h.cpu_sockets = n("cpuSockets");
                h.cpu_cores = (n("cpuCores") / h.cpu_sockets.max(1)).max(1);
                h.memory = s("memSize").parse::<u64>().unwrap_or(0) * 1024 * 1024;
                h.hardware_uuid = s("uuid");
                h.imageio_port = caps["halyardImageioPort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0);
                h.libvirt_version = pkg("libvirt");
                h.vdsm_version = pkg("vdsm");
                h.kernel = pkg("kernel");
                h.os_name = caps["operatingSystem"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "cannot store the host's capabilities");
        }
        self.read().hosts.get(host_id).is_some_and(|h| h.memory > 0)
    }

    /// Other event kinds: a host that refused a caller tells the Manager.
    async fn on_event(&self, host_id: &str, n: &halyard_proto::jsonrpc::Notification) {
        if n.method == ACCESS_DENIED_EVENT {
            let field = |k: &str| -> String {
                n.params
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect()
            };
            let host = self.host_name_of(host_id);
            let suppressed = n
                .params
                .get("suppressed")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.event(
                10500,
                "warning",
                format!(
                    "Host {host} refused {} from {} ({}): only the Manager may command a host.{}",
                    field("what"),
                    field("caller"),
                    field("peer"),
                    if suppressed > 0 {
                        format!(" ({suppressed} more refusals were not reported.)")
                    } else {
                        String::new()
                    }
                ),
                Some(host_id),
                None,
            )
            .await;
        }
    }

    fn host_name_of(&self, host_id: &str) -> String {
        self.read()
            .hosts
            .get(host_id)
            .map(|h| h.name.clone())
            .unwrap_or_default()
    }

    async fn sample(self: &Arc<Self>, host_id: &str, c: &Arc<Client>) {
        if let Ok(st) = c.call_value("Host.getStats", json!({})).await {
            let free = st["memFree"].as_u64().unwrap_or(0) * 1024 * 1024;
            let idle = st["cpuIdle"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(100.0);
            let bad: Vec<String> = st["storageDomains"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| v["valid"] == false)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            let sample = <halyard_proto::vdsm::HostStats as serde::Deserialize>::deserialize(&st)
                .ok()
                .map(|stats| HostSample::of(now_ms(), &stats));
            // Stats are kept in memory only.
            self.update_memory(host_id, |h: &mut Host| {
                h.free_memory = free;
                h.cpu_idle = idle;
                h.domains_bad = bad;
                if let Some(s) = sample {
                    h.samples.push(s);
                    if h.samples.len() > 2 {
                        h.samples.remove(0);
                    }
                }
            })
            .await;
        }
        // The VMs that were on this host, launched, before the host was asked: only
        // those can be missing from its answer. A VM placed while the call is in flight
        // may already be powering up when the answer is read, yet absent from it.
        let before: HashMap<String, Option<i64>> = self
            .read()
            .vms_on(host_id)
            .filter(|v| !v.creating && v.status != "down")
            .map(|v| (v.id.clone(), v.start_time))
            .collect();
        let asked_at = now_ms();
        let Ok(list) = c.call_value("Host.getAllVmStats", json!({})).await else {
            return;
        };
        // Taken apart, not copied: 25 VMs of VDSM-sized stats per host and sample.
        let reported: Vec<(String, Value)> = match list {
            Value::Array(a) => a
                .into_iter()
                .filter_map(|v| Some((v.get("vmId")?.as_str()?.to_string(), v)))
                .collect(),
            _ => Vec::new(),
        };
        for (id, st) in &reported {
            self.vm_report(host_id, id, st, Some(asked_at)).await;
        }
        // VMs that ran there before the call, still placed there the same way (not
        // stopped and started again meanwhile), that the host does not report went down.
        let reported: HashSet<&str> = reported.iter().map(|(id, _)| id.as_str()).collect();
        let gone: Vec<String> = {
            let inv = self.read();
            inv.vms_on(host_id)
                .filter(|v| {
                    let launching = v.creating
                        || (v.status == "wait_for_launch"
                            && v.start_time.is_some_and(|t| now_ms() - t < 60_000));
                    !reported.contains(v.id.as_str())
                        && before.get(&v.id) == Some(&v.start_time)
                        && !launching
                        && v.status != "down"
                })
                .map(|v| v.id.clone())
                .collect()
        };
        for id in gone {
            if self
                .vm_down(&id, "The VM is no longer on its host".into(), false)
                .await
            {
                self.ha_vm_failed(&id).await;
            }
        }
    }

    /// A VM's status as a host reports it: an event (`asked_at` none), or stats asked
    /// for at `asked_at`, which do not override a status an event set since then (the
    /// Up event of a VM may arrive while the stats saying PoweringUp are on their way).
    pub async fn vm_report(
        self: &Arc<Self>,
        host_id: &str,
        vm_id: &str,
        st: &Value,
        asked_at: Option<i64>,
    ) {
        let from_event = asked_at.is_none();
        let Some(vdsm) = st.get("status").and_then(Value::as_str) else {
            return;
        };
        // A migrating VM is reported by two hosts; the migration decides.
        if self.migration_report(host_id, vm_id, st, asked_at).await {
            return;
        }
        let (on_host, stale) = self
            .read()
            .vms
            .get(vm_id)
            .map(|v| {
                (
                    v.host.as_deref() == Some(host_id),
                    asked_at.is_some_and(|t| v.status_event_ms >= t),
                )
            })
            .unwrap_or((false, false));
        if !on_host {
            return;
        }
        let new = api_status(vdsm);
        if new == "down" && !stale {
            let reason = st.get("exitReason").and_then(Value::as_i64).unwrap_or(-1);
            let msg = st
                .get("exitMessage")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let admin = reason == exit_reason::ADMIN_SHUTDOWN;
            // exitCode 1: it ended with an error (QEMU crashed or was killed, failed to
            // start), not by a shutdown: an HA VM is restarted.
            let error = st.get("exitCode").and_then(Value::as_i64) == Some(1);
            // Release it on the host (as the engine does after Down).
            if let Some(c) = self.host_client(host_id).await {
                let _ = c.call_value("VM.destroy", json!({"vmID": vm_id})).await;
            }
            if self.vm_down(vm_id, msg, admin).await && error && !admin {
                self.ha_vm_failed(vm_id).await;
            }
            return;
        }
        // Guest details change without a status change: memory only.
        let stats = <VmStats as serde::Deserialize>::deserialize(st).ok();
        let agent = self
            .update_memory(vm_id, |v: &mut Vm| {
                let before = v.guest.agent;
                if let Some(stats) = &stats {
                    crate::vms::apply_guest_info(&mut v.guest, stats);
                    if !from_event {
                        v.sample = Some(VmSample::of(now_ms(), stats));
                    }
                }
                (before, v.guest.agent, v.name.clone())
            })
            .await;
        let Some((agent_before, agent_now, name)) = agent else {
            return;
        };
        if agent_now != agent_before && agent_now.is_some() {
            let (code, sev, text) = if agent_now == Some(true) {
                (
                    9030,
                    "normal",
                    format!("The guest agent of VM {name} is available."),
                )
            } else {
                (
                    9031,
                    "warning",
                    format!("The guest agent of VM {name} is not responding."),
                )
            };
            self.event(code, sev, text, Some(host_id), Some(vm_id))
                .await;
        }
        let changed = self
            .update(vm_id, |v: &mut Vm| {
                // Still there and not down meanwhile (a Down event may have won), and
                // not older than what an event said.
                if v.host.as_deref() != Some(host_id)
                    || v.status == new
                    || v.status == "down"
                    || v.migration_seen.handing_over
                    || asked_at.is_some_and(|t| v.status_event_ms >= t)
                {
                    return None;
                }
                if from_event {
                    v.status_event_ms = now_ms();
                }
                let from = std::mem::replace(&mut v.status, new.to_string());
                if matches!(new, "up" | "powering_up") {
                    // An HA restart elsewhere took: the VM runs here now.
                    v.ha_from = None;
                }
                if new == "up" && v.start_time.is_none() {
                    v.start_time = Some(now_ms());
                }
                Some(from)
            })
            .await;
        let from = match changed {
            Ok(Some(Some(from))) => from,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "cannot store a VM status");
                return;
            }
        };
        debug!(vm = %name, %from, to = new, from_event, "VM status");
        if new == "up" {
            let host = self
                .read()
                .hosts
                .get(host_id)
                .map(|h| h.name.clone())
                .unwrap_or_default();
            self.event(
                32,
                "normal",
                format!("VM {name} started on Host {host}"),
                Some(host_id),
                Some(vm_id),
            )
            .await;
        }
    }

    /// Marks a VM down.
    /// Whether it went down now (not before, nor back to `unknown` on the host an HA
    /// restart moves it from).
    pub async fn vm_down(&self, vm_id: &str, message: String, admin: bool) -> bool {
        // Check and set in one step: the host's Down event and the action that caused
        // it may both get here.
        let r = self
            .update(vm_id, |v: &mut Vm| {
                if v.status == "down" {
                    return None;
                }
                if admin {
                    v.ha_pending = false;
                    v.ha_from = None;
                } else if let Some(old) = v.ha_from.take() {
                    // An HA restart on another host failed (its lease is still held):
                    // the VM is where it was, unknown on the host that does not answer.
                    v.status = "unknown".into();
                    let tried = v.host.replace(old);
                    return Some(Err((v.name.clone(), tried)));
                }
                let host = v.host.take();
                v.status = "down".into();
                v.stop_time = Some(now_ms());
                v.stop_reason = message.clone();
                Some(Ok((v.clone(), host)))
            })
            .await;
        let (v, host) = match r {
            Ok(Some(Some(Ok(x)))) => x,
            Ok(Some(Some(Err((name, tried))))) => {
                self.ha_try_failed(vm_id, &name, tried.as_deref(), &message)
                    .await;
                return false;
            }
            Ok(_) => return false,
            Err(e) => {
                warn!(error = %e, "cannot store a VM status");
                return false;
            }
        };
        let desc = if admin || message.is_empty() {
            format!("VM {} is down.", v.name)
        } else {
            format!("VM {} is down. Exit message: {message}", v.name)
        };
        self.event(61, "normal", desc, host.as_deref(), Some(vm_id))
            .await;
        true
    }

    /// A host stopped answering: its VMs are unknown until it answers again.
    async fn vms_unknown(&self, host_id: &str) {
        let vms: Vec<String> = self
            .read()
            .vms_on(host_id)
            .filter(|v| v.status != "down")
            .map(|v| v.id.clone())
            .collect();
        for id in vms {
            let _ = self
                .update(&id, |v: &mut Vm| {
                    if v.host.as_deref() == Some(host_id) && v.status != "down" {
                        v.status = "unknown".into();
                    }
                })
                .await;
        }
    }

    /// Renews the host's certificate when a third of its validity is left: the agent
    /// makes a new key and CSR, the Manager signs it, the agent switches to it without
    /// dropping connections.
    /// Renews the host's certificate when a third of its life is left.
    async fn maybe_renew_certificate(&self, host_id: &str, c: &Arc<Client>) {
        let Some(not_after) = self.read().hosts.get(host_id).map(|h| h.cert_not_after) else {
            return;
        };
        let life = self.cfg.host_cert_days * 86_400_000;
        if !renewal_due(not_after, now_ms(), life) {
            return;
        }
        if let Err(e) = self.renew_certificate_over(host_id, c).await {
            warn!(error = %e, "certificate renewal failed");
        }
    }

    /// Renews a host's certificate now (API action `enrollcertificate`), over the
    /// monitoring connection: no maintenance, no reconnect.
    pub async fn renew_certificate(&self, host_id: &str) -> Result<(), String> {
        let c = self
            .host_client(host_id)
            .await
            .ok_or_else(|| "the host is not connected".to_string())?;
        self.renew_certificate_over(host_id, &c).await
    }

    /// The agent makes a new key and CSR (Host.getCertificateRequest), the CA signs
    /// it, the agent installs it (Host.setCertificate) for new connections; running
    /// connections and VMs are not touched.
    async fn renew_certificate_over(&self, host_id: &str, c: &Arc<Client>) -> Result<(), String> {
        let Some(h) = self.read().hosts.get(host_id).cloned() else {
            return Err("no such host".into());
        };
        let life = self.cfg.host_cert_days * 86_400_000;
        let csr = c
            .call_value("Host.getCertificateRequest", json!({}))
            .await
            .map_err(|e| e.to_string())?;
        let csr = csr.as_str().unwrap_or_default().to_string();
        let cert =
            crate::register::sign_host_csr(self, &csr, &h.address).map_err(|e| e.to_string())?;
        c.call_value(
            "Host.setCertificate",
            json!({"certificate": cert, "ca": self.pki.ca.cert_pem()}),
        )
        .await
        .map_err(|e| e.to_string())?;
        // Only the certificate fields: a PUT meanwhile keeps what it changed.
        self.update(host_id, |x: &mut Host| {
            x.csr = Some(csr);
            x.certificate = Some(cert);
            x.cert_not_after = now_ms() + life;
        })
        .await
        .map_err(|e| e.to_string())?;
        self.event(
            9000,
            "normal",
            format!("Certificate of host {} was renewed.", h.name),
            Some(host_id),
            None,
        )
        .await;
        Ok(())
    }
}

/// A certificate is renewed when a third of its life (`life_ms`) or less is left.
pub fn renewal_due(not_after_ms: i64, now_ms: i64, life_ms: i64) -> bool {
    not_after_ms != 0 && not_after_ms - now_ms <= life_ms / 3
}

/// The agent's own update: due when the Manager is of another version (a Halyard host
/// runs the agent of the Manager's build). `None`: up to date.
pub fn agent_update(agent_version: &str) -> Option<String> {
    let mine = env!("CARGO_PKG_VERSION");
    (agent_version != mine).then(|| format!("halyard-hostd {agent_version} -> {mine}"))
}

/// oVirt's check for available updates (HostUpgradeCheckCommand, HostUpdatesChecker):
/// event 884 now, then in the background the host's answer (its platform packages
/// with updates, `Host.getAvailableUpdates`, and its agent against the Manager's
/// version) as event 885 and `update_available`, or 839 when the host cannot tell;
/// 887 for a host in a status that cannot be checked.
pub async fn check_for_updates(m: &Arc<Manager>, id: &str) {
    let Some(h) = m.read().hosts.get(id).cloned() else {
        return;
    };
    if !matches!(h.status.as_str(), "up" | "maintenance" | "non_operational") {
        m.event(
            887,
            "warning",
            format!(
                "Failed to check for available updates on host {}: Unsupported host status ({}).",
                h.name, h.status
            ),
            Some(id),
            None,
        )
        .await;
        return;
    }
    m.event(
        884,
        "normal",
        format!("Started to check for available updates on host {}.", h.name),
        Some(id),
        None,
    )
    .await;
    let m = m.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let asked = match m.host_client(&id).await {
            Some(c) => c
                .call::<halyard_proto::vdsm::verbs::HostGetAvailableUpdates>(
                    &halyard_proto::vdsm::NoParams {},
                )
                .await
                .map_err(|e| e.to_string()),
            None => Err("the host is not connected".to_string()),
        };
        // The host's answer is bounded here too: at most MAX_UPDATES entries of
        // MAX_UPDATE_TEXT characters each.
        let found = asked.map(|u| {
            let mut p: Vec<String> = u
                .packages
                .into_iter()
                .take(MAX_UPDATES)
                .map(|x| x.chars().take(MAX_UPDATE_TEXT).collect())
                .collect();
            p.extend(agent_update(&h.vdsm_version));
            p
        });
        let (code, severity, text) = match &found {
            Err(e) => (
                839,
                "error",
                format!(
                    "Failed to check for available updates on host {} with message '{}'.",
                    h.name,
                    e.chars().take(300).collect::<String>()
                ),
            ),
            Ok(p) => {
                let message = if p.is_empty() {
                    "no updates found.".to_string()
                } else {
                    format!("found updates for packages {}", p.join(", "))
                };
                (
                    885,
                    "normal",
                    format!(
                        "Check for available updates on host {} was completed successfully with message '{message}'.",
                        h.name
                    ),
                )
            }
        };
        if let Ok(p) = &found {
            let available = !p.is_empty();
            if let Err(e) = m
                .update(&id, |x: &mut Host| x.update_available = available)
                .await
            {
                warn!(error = %e, "cannot store the host's update check");
            }
        }
        m.event(code, severity, text, Some(&id), None).await;
    });
}

/// At most this many packages of a host's answer are kept, each at most
/// MAX_UPDATE_TEXT characters.
pub const MAX_UPDATES: usize = 256;
pub const MAX_UPDATE_TEXT: usize = 384;

/// At most this many network names are kept of a host's report, each at most
/// [`MAX_NETWORK_NAME`] bytes (the report comes from the host: bounded, not trusted).
pub const MAX_NETWORKS: usize = 1024;
pub const MAX_NETWORK_NAME: usize = 256;

/// The networks a host's capabilities name: `networks` (VDSM's configured networks)
/// and `bridges` (a bridged network is a bridge of its name), sorted, without repeats.
pub fn reported_networks(caps: &Value) -> Vec<String> {
    let mut out: Vec<String> = ["networks", "bridges"]
        .iter()
        .filter_map(|k| caps.get(*k).and_then(Value::as_object))
        .flat_map(|m| m.keys())
        .filter(|n| !n.is_empty() && n.len() <= MAX_NETWORK_NAME)
        .take(MAX_NETWORKS)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_when_a_third_is_left() {
        let day = 86_400_000;
        let life = 365 * day;
        let issued = 1_000 * day;
        let not_after = issued + life;
        assert!(!renewal_due(not_after, issued, life));
        assert!(!renewal_due(not_after, issued + 240 * day, life));
        assert!(renewal_due(not_after, issued + 244 * day, life));
        assert!(renewal_due(not_after, not_after + day, life));
        // Hosts without a certificate the Manager signed are never renewed.
        assert!(!renewal_due(0, issued, life));
    }

    /// A host's networks: both maps' names, once each; what is not a map, empty or too
    /// long is left out, and at most MAX_NETWORKS are kept.
    #[test]
    fn reported_networks_are_bounded() {
        let caps = serde_json::json!({
            "networks": {"ovirtmgmt": {"bridged": true}, "storage": {}},
            "bridges": {"ovirtmgmt": {}, "virbr0": {}, "": {}, "x".repeat(MAX_NETWORK_NAME + 1): {}},
        });
        assert_eq!(reported_networks(&caps), ["ovirtmgmt", "storage", "virbr0"]);
        assert!(
            reported_networks(&serde_json::json!({"networks": ["a"], "bridges": 3})).is_empty()
        );
        let many: serde_json::Map<String, Value> = (0..MAX_NETWORKS + 10)
            .map(|i| (format!("n{i}"), serde_json::json!({})))
            .collect();
        let caps = serde_json::json!({ "bridges": many });
        assert_eq!(reported_networks(&caps).len(), MAX_NETWORKS);
    }

    /// An agent of the Manager's own version has nothing to update; any other has.
    #[test]
    fn the_agent_of_another_version_is_an_update() {
        assert_eq!(agent_update(env!("CARGO_PKG_VERSION")), None);
        let found = agent_update("0.0.1").expect("an older agent");
        assert!(found.starts_with("halyard-hostd 0.0.1 -> "), "{found}");
    }
}
